"""``feed serve`` in-process: its frames match Binance's real recorded frames field for field, its
stream is intra-bar updates then the closed kline, and its /api/v3/klines answers like Binance's."""

from __future__ import annotations

import asyncio
import urllib.request

import orjson
import websockets
from websockets.asyncio.client import connect

from barsignal.daemon.binance.ws import KlineEvent, decode, encode_kline
from barsignal.sim.faults import Faults
from barsignal.sim.simulator import FeedSimulator
from tests.conftest import WIRE

REAL = orjson.loads((WIRE / "real_kline_ws_samples.jsonl").read_text().splitlines()[0])["raw"]
REAL_REST = orjson.loads((WIRE / "real_rest_klines_btcusdt_1h_sample.json").read_bytes())["response"]


def _shape(x):
    """Keys (in order) and JSON types, recursively: what "field for field" means."""
    if isinstance(x, dict):
        return [(k, _shape(v)) for k, v in x.items()]
    if isinstance(x, list):
        return [_shape(v) for v in x]
    return type(x).__name__


def test_frames_match_the_real_recorded_frame_field_for_field(fut_day) -> None:
    real = orjson.loads(REAL)
    t = real["data"]["k"]["t"]  # 2022-05-29 10:06 UTC: the futures file has that minute
    i = int((fut_day.frame.open_time == t).nonzero()[0][0])
    sim = FeedSimulator(fut_day.frame, extra=fut_day.extra)
    for frac in (0.5, 1.0):
        ours = orjson.loads(encode_kline(sim.event(i, frac)))
        assert _shape(ours) == _shape(real)
        assert list(orjson.dumps(ours)) and ours["stream"] == real["stream"]
        assert ours["data"]["k"]["t"] == t and ours["data"]["k"]["T"] == real["data"]["k"]["T"]
        # prices carry 8 decimals as on spot
        assert all(len(ours["data"]["k"][f].split(".")[1]) == 8 for f in "ochlvqVQ")
    closed = sim.event(i)
    row = fut_day.frame
    assert (closed.open, closed.high, closed.low, closed.close, closed.volume) == (
        row.open[i], row.high[i], row.low[i], row.close[i], row.volume[i])
    assert closed.trades == int(fut_day.extra["count"][i]) and closed.trades > 0
    assert closed.last_trade_id - closed.first_trade_id + 1 == closed.trades
    # the real frame is within 5 bp of the futures bar at that minute (PROVENANCE.md): same market
    assert abs(float(real["data"]["k"]["o"]) / closed.open - 1) < 5e-4


def test_intrabar_path_stays_inside_the_bar(spot) -> None:
    sim = FeedSimulator(spot.frame)
    for i in range(0, 2000, 7):
        evs = [sim.event(i, f) for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
        assert [e.closed for e in evs] == [False] * 4 + [True]
        for e in evs:
            assert isinstance(decode(encode_kline(e)), KlineEvent)  # valid for our own decoder
            assert e.low >= spot.frame.low[i] - 1e-9 and e.high <= spot.frame.high[i] + 1e-9
        assert [e.volume for e in evs] == sorted(e.volume for e in evs)
        assert [e.event_time for e in evs] == sorted(e.event_time for e in evs)
        assert evs[-1].event_time > evs[-1].close_time  # closed frames arrive after T, as observed


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, dict(r.headers), orjson.loads(r.read())


def test_stream_and_rest_over_loopback(spot) -> None:
    async def main():
        sim = FeedSimulator(spot.frame, speed=40, start_index=100, end_index=110, intrabar=3,
                            ping_interval_s=0.05)
        async with sim:
            url = f"{sim.ws_url}/stream?streams=btcusdt@kline_1m"
            frames = []
            async with connect(url, proxy=None) as ws:
                while True:
                    ev = decode(await ws.recv())
                    frames.append(ev)
                    if ev.closed and ev.open_time == int(spot.frame.open_time[109]):
                        break
                pong = await ws.ping()  # the server answers pings; it pings us every 50 ms
                await asyncio.wait_for(pong, 2)
            # raw stream path works too
            async with connect(f"{sim.ws_url}/ws/btcusdt@kline_1m", proxy=None) as ws:
                await asyncio.wait_for(sim.done.wait(), 5)
            # REST: closed bars only, Binance's row shape
            base = f"{sim.rest_url}/api/v3/klines?symbol=BTCUSDT&interval=1m"
            status, headers, rows = await asyncio.to_thread(_get, base + "&limit=1000")
            _, _, window = await asyncio.to_thread(
                _get, base + f"&startTime={int(spot.frame.open_time[50])}&limit=5")
            bad_symbol = await asyncio.to_thread(_fails, base.replace("BTCUSDT", "ETHUSDT"))
            wrong_stream = await _ws_fails(f"{sim.ws_url}/stream?streams=ethusdt@kline_1m")
        return frames, status, headers, rows, window, bad_symbol, wrong_stream

    frames, status, headers, rows, window, bad_symbol, wrong_stream = asyncio.run(main())
    # every bar: 3 intra-bar updates (x:false) then the closed frame
    by_bar: dict[int, list[bool]] = {}
    for e in frames:
        by_bar.setdefault(e.open_time, []).append(e.closed)
    assert [t for t in by_bar] == [int(t) for t in spot.frame.open_time[100:110]][-len(by_bar):]
    assert all(v == [False, False, False, True] for v in list(by_bar.values())[1:])
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert len(rows) == 110 and rows[-1][0] == int(spot.frame.open_time[109])  # only closed bars
    assert _shape(rows[0]) == _shape(REAL_REST[0])
    assert [r[0] for r in window] == [int(t) for t in spot.frame.open_time[50:55]]
    assert float(window[0][4]) == spot.frame.close[50]
    assert bad_symbol == 400 and wrong_stream


def _fails(url: str) -> int:
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


async def _ws_fails(url: str) -> bool:
    try:
        async with connect(url, proxy=None):
            return False
    except websockets.InvalidStatus:
        return True


def test_rest_faults_and_exchange_halt(spot) -> None:
    async def main():
        sim = FeedSimulator(spot.frame, speed=1, start_index=200,
                            faults=Faults.parse("gap=100:5,rest429=1,retry_after_s=3"))
        async with sim:
            code = await asyncio.to_thread(_fails, f"{sim.rest_url}/api/v3/klines?symbol=BTCUSDT&interval=1m")
            sim.faults = Faults.parse("gap=100:5")
            _, _, rows = await asyncio.to_thread(
                _get, f"{sim.rest_url}/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1000")
        return code, rows

    code, rows = asyncio.run(main())
    assert code == 429
    times = [r[0] for r in rows]
    assert len(times) == 195 and int(spot.frame.open_time[102]) not in times  # the halt is not served


def test_virtual_clock_matches_the_stream(spot) -> None:
    async def main():
        sim = FeedSimulator(spot.frame, speed=50, start_index=100, end_index=110, intrabar=1)
        async with sim:
            t_mid = sim.now_ms()
            _, _, body = await asyncio.to_thread(_get, f"{sim.rest_url}/api/v3/time")
            await asyncio.wait_for(sim.done.wait(), 5)
            return t_mid, body["serverTime"], sim.now_ms()

    t_mid, server_time, t_end = asyncio.run(main())
    t = spot.frame.open_time
    assert t[100] <= t_mid < t[101]  # inside the first bar, which is being built
    assert t[100] <= server_time <= t[110]
    assert t_end == t[109] + 60_000  # after the last bar: its close
