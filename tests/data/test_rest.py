"""REST klines through ccxt against a loopback /api/v3/klines serving real bars, and the pure
row encoder / query answerer that ``feed serve`` reuses."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from barsignal.daemon.binance.rest import (
    RateLimited,
    decode_kline_rows,
    encode_klines,
    fetch_bars,
    fetch_bars_sync,
    klines_response,
)
from barsignal.errors import BadMessage, ConfigError, TransientError
from barsignal.features.bar import BarFrame
from tests.conftest import WIRE, free_port

SAMPLE = json.loads((WIRE / "real_rest_klines_btcusdt_1h_sample.json").read_text())["response"]


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, s: float) -> None:
        self.calls.append(s)


def test_paginated_fetch_returns_the_real_bars(klines_server) -> None:
    f = klines_server.frame
    since, until = int(f.open_time[100]), int(f.open_time[2600])
    bars = asyncio.run(fetch_bars(klines_server.base_url, "BTCUSDT", since, until, limit=1000))
    assert bars == list(f.slice(100, 2600).bars(source="rest"))
    assert [int(r["startTime"]) for r in klines_server.requests] == [
        since, int(f.open_time[1099]) + 1, int(f.open_time[2099]) + 1]
    assert {r["limit"] for r in klines_server.requests} == {"1000"}
    assert {r["endTime"] for r in klines_server.requests} == {str(until - 1)}


def test_only_closed_bars(klines_server) -> None:
    f = klines_server.frame
    now = int(f.open_time[2000]) + 30_000  # bar 2000 is still open
    bars = asyncio.run(fetch_bars(klines_server.base_url, "BTCUSDT", int(f.open_time[0]), now + 3_600_000,
                            limit=700, now_ms=now))
    assert len(bars) == 2000 and bars[-1].open_time == int(f.open_time[1999])
    assert all(b.source == "rest" for b in bars)


def test_429_waits_retry_after_then_succeeds(klines_server) -> None:
    klines_server.fail = [(429, {"Retry-After": "3"}), (429, {"Retry-After": "2"})]
    sleeps = Sleeps()
    f = klines_server.frame
    bars = asyncio.run(fetch_bars(klines_server.base_url, "BTCUSDT", int(f.open_time[0]),
                                  int(f.open_time[10]), sleep=sleeps))
    assert sleeps.calls == [3.0, 2.0] and len(bars) == 10


def test_418_and_long_429_raise_rate_limited(klines_server) -> None:
    f = klines_server.frame
    klines_server.fail = [(418, {"Retry-After": "7200"})]
    with pytest.raises(RateLimited) as err:
        asyncio.run(fetch_bars(klines_server.base_url, "BTCUSDT", int(f.open_time[0]), int(f.open_time[5]),
                         sleep=Sleeps()))
    assert err.value.status == 418 and err.value.retry_after_s == 7200.0
    assert isinstance(err.value, TransientError)
    klines_server.fail = [(429, {"Retry-After": "120"})]
    with pytest.raises(RateLimited) as err:
        asyncio.run(fetch_bars(klines_server.base_url, "BTCUSDT", int(f.open_time[0]), int(f.open_time[5]),
                         sleep=Sleeps(), max_wait_s=60))
    assert err.value.status == 429


def test_network_trouble_is_transient_and_bad_symbol_is_a_config_error(klines_server) -> None:
    with pytest.raises(TransientError):
        asyncio.run(fetch_bars(f"http://127.0.0.1:{free_port()}", "BTCUSDT", 0, 60_000, timeout_s=2))
    with pytest.raises(ConfigError, match=r"'NOPEUSDT'.*-1121"):  # fatal: retrying cannot help (issue 13 #11)
        asyncio.run(fetch_bars(klines_server.base_url, "NOPEUSDT", 0, 60_000))


def test_sync_wrapper(klines_server) -> None:
    f = klines_server.frame
    bars = fetch_bars_sync(klines_server.base_url, "btcusdt", int(f.open_time[5]), int(f.open_time[8]))
    assert [b.open_time for b in bars] == f.open_time[5:8].tolist()


def test_encode_matches_real_binance_rows() -> None:
    bars = decode_kline_rows(SAMPLE)
    assert [b.open_time for b in bars] == [r[0] for r in SAMPLE] and bars[0].open == 16823.24
    frame = BarFrame.from_bars(bars)
    extra = {"quote_volume": np.array([float(r[7]) for r in SAMPLE]),
             "count": np.array([r[8] for r in SAMPLE]),
             "taker_buy_volume": np.array([float(r[9]) for r in SAMPLE]),
             "taker_buy_quote_volume": np.array([float(r[10]) for r in SAMPLE])}
    assert encode_klines(frame, 3_600_000, extra=extra) == SAMPLE
    plain = encode_klines(frame, 3_600_000)
    assert [r[:7] for r in plain] == [r[:7] for r in SAMPLE]
    assert plain[0][7:] == ["0.00000000", 0, "0.00000000", "0.00000000", "0"]
    dropped: dict[str, int] = {}
    assert decode_kline_rows([[1, "x"]], dropped=dropped) == [] and dropped == {"malformed": 1}  # dropped, counted
    with pytest.raises(BadMessage):
        decode_kline_rows({"code": -1})


def test_klines_response_semantics(spot_frame) -> None:
    f = spot_frame
    t = f.open_time

    def q(**p: object) -> tuple[int, object]:
        params = {"symbol": "BTCUSDT", "interval": "1m", **{k: str(v) for k, v in p.items()}}
        return klines_response(f, params, symbol="BTCUSDT", interval="1m")

    code, rows = q(startTime=t[10], limit=5)
    assert code == 200 and [r[0] for r in rows] == t[10:15].tolist()
    assert rows == encode_klines(f, 60_000, start=10, stop=15)
    code, rows = q(startTime=t[10], endTime=t[12])
    assert [r[0] for r in rows] == t[10:13].tolist()
    code, rows = q(endTime=t[100], limit=3)
    assert [r[0] for r in rows] == t[98:101].tolist()
    code, rows = q()
    assert len(rows) == 500 and rows[-1][0] == t[-1]
    code, rows = q(limit=5000, startTime=t[0])
    assert len(rows) == 1000
    code, rows = q(startTime=t[-1] + 60_000)
    assert (code, rows) == (200, [])
    code, rows = klines_response(f, {"symbol": "BTCUSDT", "interval": "1m"}, symbol="BTCUSDT", interval="1m",
                                 visible_until_ms=int(t[50]) + 59_999)
    assert rows[-1][0] == t[49]  # bar 49 closes at t[50] - 1; bar 50 at t[50] + 59_999, not yet
    assert klines_response(f, {"interval": "1m"}, symbol="BTCUSDT", interval="1m")[1]["code"] == -1102
    assert klines_response(f, {"symbol": "ETHUSDT", "interval": "1m"}, symbol="BTCUSDT",
                           interval="1m")[1]["code"] == -1121
    assert klines_response(f, {"symbol": "BTCUSDT", "interval": "5m"}, symbol="BTCUSDT",
                           interval="1m") == (400, {"code": -1120, "msg": "Invalid interval."})
    assert q(limit=0)[0] == 400 and q(startTime="abc")[0] == 400
