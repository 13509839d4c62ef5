"""A new user's Binance client against ``feed serve``: ccxt's own ``binance`` class, with only its URLs
changed, runs ``load_markets``, ``fetch_ohlcv`` and (ccxt.pro) ``watch_ohlcv`` on real bars of three
symbols. No mocks: ccxt's parsing, its SUBSCRIBE on ``/ws/<n>``, its candle cache."""

from __future__ import annotations

import asyncio

import ccxt.pro  # imported up front (seconds), not while the feed runs
import numpy as np
import pytest

from barsignal.data import Loaded, load
from barsignal.sim.series import Series
from barsignal.sim.simulator import FeedSimulator
from tests.conftest import DATA

SYMBOLS = {"BTC/USDT": DATA / "klines" / "spot_1m" / "BTC_USDT-1m_2023-03-16_2023-05-01.json",
           "ETH/USDT": DATA / "multi" / "spot_1m" / "ETH_USDT-1m.json",
           "XRP/USDT": DATA / "multi" / "spot_1m" / "XRP_USDT-1m.json"}


@pytest.fixture(scope="module")
def real() -> dict[str, Loaded]:
    return {s: load(p) for s, p in SYMBOLS.items()}


def _sim(real: dict[str, Loaded], **kw) -> FeedSimulator:
    series = [Series(s.replace("/", ""), ld.frame, ld.extra) for s, ld in real.items()]
    xrp0 = int(real["XRP/USDT"].frame.open_time[0])
    probe = FeedSimulator(series)
    start = int(np.searchsorted(probe.times, xrp0)) + 2000  # all three trade here
    return FeedSimulator(series, start_index=start, **kw)


def _client(sim: FeedSimulator) -> ccxt.pro.binance:
    ex = ccxt.pro.binance()
    ex.urls["api"]["public"] = f"{sim.rest_url}/api/v3"  # spot REST
    ex.urls["api"]["fapiPublic"] = f"{sim.rest_url}/fapi/v1"  # load_markets also asks for futures markets
    ex.urls["api"]["dapiPublic"] = f"{sim.rest_url}/dapi/v1"
    ex.urls["api"]["ws"]["spot"] = f"{sim.ws_url}/ws"  # spot market streams
    return ex


def _row(ld: Loaded, t: int) -> list[float]:
    f = ld.frame
    i = int(np.searchsorted(f.open_time, t))
    assert f.open_time[i] == t
    return [t, f.open[i], f.high[i], f.low[i], f.close[i], f.volume[i]]


def test_load_markets_and_fetch_ohlcv(real) -> None:
    async def main():
        async with _sim(real, speed=0.2, intrabar=1) as sim:  # 5 s a bar: the fetches land mid-bar
            ex = _client(sim)
            try:
                markets = await ex.load_markets()
                while sim.now_ms() < int(sim.times[sim.start_index]) + 3000:
                    await asyncio.sleep(0.01)
                t_now = int(sim.times[sim.start_index])
                since = t_now - 30 * 60_000
                candles = {s: await ex.fetch_ohlcv(s, "1m", since=since, limit=100) for s in SYMBOLS}
                recent = await ex.fetch_ohlcv("XRP/USDT", "1m", limit=5)
                assert sim.closed_upto == sim.start_index, "the bar closed during the test: too slow a machine"
            finally:
                await ex.close()
        return markets, t_now, since, candles, recent

    markets, t_now, since, candles, recent = asyncio.run(main())
    assert set(markets) == set(SYMBOLS)
    for s, m in markets.items():
        assert m["id"] == s.replace("/", "") and m["spot"] and m["active"] and m["type"] == "spot"
        assert (m["base"], m["quote"]) == tuple(s.split("/"))
        assert m["precision"]["price"] == float(m["info"]["filters"][0]["tickSize"]) > 0
    assert markets["BTC/USDT"]["precision"]["price"] == 0.01  # the 2023 BTC file's prices have 2 decimals
    for s, rows in candles.items():
        assert [r[0] for r in rows] == list(range(since, t_now + 1, 60_000))  # 30 closed, then the forming one
        assert rows[:-1] == [_row(real[s], r[0]) for r in rows[:-1]]
        forming, full = rows[-1], _row(real[s], t_now)
        assert forming[1] == full[1] and forming[5] < full[5]  # same open, part of the volume so far
    assert [r[0] for r in recent] == list(range(t_now - 4 * 60_000, t_now + 1, 60_000))


def test_watch_ohlcv_streams_each_symbols_candles(real) -> None:
    async def main():
        async with _sim(real, speed=4, intrabar=2, ping_interval_s=None) as sim:
            ex = _client(sim)
            seen: dict[str, set[int]] = {"BTC/USDT": set(), "ETH/USDT": set()}
            try:
                async def watch(symbol: str) -> None:
                    while len(seen[symbol]) < 4:
                        for c in await ex.watch_ohlcv(symbol, "1m"):
                            seen[symbol].add(c[0])

                await asyncio.wait_for(asyncio.gather(watch("BTC/USDT"), watch("ETH/USDT")), 30)
                cache = {s: [list(c) for c in ex.ohlcvs[s]["1m"]] for s in seen}
            finally:
                await ex.close()
            return cache, sim.control_messages, sim.connections_total

    cache, control, connections = asyncio.run(main())
    assert control == 2 and connections == 1  # one connection, one SUBSCRIBE per watched symbol
    for s, candles in cache.items():
        times = [c[0] for c in candles]
        assert times == sorted(times) and len(times) >= 4 and np.all(np.diff(times) == 60_000)
        # every bar but the newest has closed: ccxt holds the closed kline, equal to the file's bar
        assert candles[:-1] == [_row(real[s], t) for t in times[:-1]]
