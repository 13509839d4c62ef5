"""Many symbols over several websocket connections (issue 14 #1): at most
``[feed] max_streams_per_connection`` streams each (Binance: 1024), each connection with its own
lifecycle, paced SUBSCRIBE messages beyond what a URL can carry. Real loopback ``feed serve``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from barsignal.daemon import config as cfgmod
from barsignal.daemon.binance.ws import MAX_SUBSCRIBE_STREAMS, MAX_URL_CHARS, connection_plan, groups, stream_name
from barsignal.daemon.config import FeedConfig
from barsignal.daemon.feed.client import FeedClient
from barsignal.errors import ConfigError
from barsignal.features.bar import Bar
from barsignal.sim.series import Series, shifted_copies
from barsignal.sim.simulator import FeedSimulator
from tests.feed.conftest import Collecting, feed_cfg


def _fake(n: int) -> list[str]:
    """Symbols the simulator does not serve (exchangeInfo would refuse them: the tests here turn the
    check off with ``check_symbols=False``, as for a server that lists none)."""
    return [f"ZZ{i:04d}USDT" for i in range(n)]


def test_1025_streams_make_two_connections_each_within_binance_limits() -> None:
    syms = _fake(1025)
    assert [len(g) for g in groups(syms)] == [1024, 1]
    assert [len(g) for g in groups(syms[:10], 4)] == [4, 4, 2]
    with pytest.raises(ValueError):
        groups(syms, 1025)
    client = FeedClient(FeedConfig(symbols=tuple(syms)))
    assert [len(link.symbols) for link in client.links] == [1024, 1]
    assert client.stats.connections_wanted == 2
    seen: list[str] = []
    for link in client.links:
        assert len(link.url) <= MAX_URL_CHARS
        in_url = link.url.split("?streams=", 1)[1].split("/")
        subscribed = []
        for rid, msg in link.subscribes:
            req = orjson.loads(msg)
            assert req["method"] == "SUBSCRIBE" and req["id"] == rid
            assert 1 <= len(req["params"]) <= MAX_SUBSCRIBE_STREAMS
            subscribed += req["params"]
        streams = in_url + subscribed
        assert len(streams) == len(link.symbols) <= 1024
        seen += streams
    assert seen == [stream_name(s) for s in syms]  # every stream once, in config order
    # 1024 streams do not fit in one URL: most go by SUBSCRIBE (5 messages of <= 200)
    assert len(client.links[0].subscribes) == 5
    assert client.links[1].subscribes == [] and client.links[1].url.endswith("?streams=zz1024usdt@kline_1m")


def test_a_few_symbols_keep_one_url_and_no_messages() -> None:
    url, msgs = connection_plan("ws://h:1/", ["BTCUSDT", "ETHUSDT"])
    assert url == "ws://h:1/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m" and msgs == []


def test_config_bounds_streams_per_connection_and_rest_budget() -> None:
    assert cfgmod.loads("").feed.max_streams_per_connection == 1024
    assert cfgmod.loads("").feed.rest_weight_per_minute == 2400
    for bad in ("max_streams_per_connection = 1025", "max_streams_per_connection = 0",
                "rest_weight_per_minute = 6001", "rest_weight_per_minute = 1"):
        with pytest.raises(ConfigError, match=bad.split(" ")[0]):
            cfgmod.loads(f"[feed]\n{bad}\n")


class PerSymbol(Collecting):
    """A many-symbol client's bars (``client.stream()``), per symbol."""

    def __init__(self, client: FeedClient) -> None:
        self.bars: dict[str, list[Bar]] = {s: [] for s in client.symbols}
        super().__init__(client, client.stream())

    def take(self, item: tuple[str, Bar]) -> None:
        self.bars[item[0]].append(item[1])

    async def wait(self, pred: Callable[[dict[str, list[Bar]]], bool], timeout_s: float, what: str) -> None:
        await self.wait_until(lambda: pred(self.bars), timeout_s, lambda: (
            f"timed out waiting for {what}: { {s: len(b) for s, b in self.bars.items()} }; {self.client.stats}"))


def _series(spot: Any, n: int, rows: int) -> list[Series]:
    """``n`` symbols from the real BTC file, each copy 1000 bars later (different bars, one clock)."""
    return shifted_copies([Series("BTCUSDT", spot.frame)], n, rows=rows, shift=1000)


def _once_in_order(bars: list[Bar], times: list[int]) -> None:
    got = [b.open_time for b in bars]
    assert got, "no bars"
    i = times.index(got[0])
    assert got == times[i:i + len(got)], "a bar missing, repeated or out of order"


def test_ten_symbols_on_three_connections_one_killed_the_others_carry_on(spot) -> None:
    start, end = 100, 260
    series = _series(spot, 10, end + 5)
    syms = tuple(s.symbol for s in series)
    held = asyncio.Event()  # set: the reconnect backoff of the killed connection waits for `release`
    release = asyncio.Event()
    backing_off = asyncio.Event()

    async def sleep(s: float) -> None:
        if held.is_set():
            backing_off.set()
            await release.wait()
        else:
            await asyncio.sleep(s)

    async def main() -> tuple[PerSymbol, FeedSimulator, list[int], dict[str, int]]:
        async with FeedSimulator(series, speed=40, start_index=start, end_index=end, intrabar=1) as sim:
            times = [int(t) for t in sim.times]
            client = FeedClient(feed_cfg(sim.ws_url, sim.rest_url, symbols=syms, max_streams_per_connection=4),
                                warmup_bars=5, stale_after_s=5, sleep=sleep)
            assert [link.symbols for link in client.links] == [syms[0:4], syms[4:8], syms[8:10]]
            col = PerSymbol(client)
            await col.wait(lambda b: all(len(v) >= 15 for v in b.values()), 20, "15 bars of every symbol")
            assert sim.connections_total == 3 and client.stats.connections == 3 and client.stats.connected
            # kill the connection that carries symbols 4..7, server side
            victim = [c for c, st in sim._conns.items() if stream_name(syms[4]) in st.session.streams]
            assert len(victim) == 1 and len(sim._conns[victim[0]].session.streams) == 4
            held.set()
            victim[0].transport.abort()
            await asyncio.wait_for(backing_off.wait(), 10)
            assert client.links[1].ws is None and client.stats.connections == 2 and not client.stats.connected
            during = {s: len(col.bars[s]) for s in syms}
            others = syms[:4] + syms[8:]
            # while it is down, the other two connections' symbols keep getting live bars
            await col.wait(lambda b: all(len(b[s]) >= during[s] + 10 for s in others), 20,
                           "10 more bars on the live connections")
            assert all(len(col.bars[s]) == during[s] for s in syms[4:8])  # its symbols wait, nothing invented
            assert client.links[1].ws is None
            held.clear()
            release.set()
            last = times[end - 1]
            await col.wait(lambda b: all(v and v[-1].open_time == last for v in b.values()), 30,
                           "every symbol's last bar")
            await col.close()
            return col, sim, times, {"links": [link.connects for link in client.links], **client.stats.__dict__}

    col, sim, times, st = asyncio.run(main())
    for s in col.bars:
        _once_in_order(col.bars[s], times)
        assert [b.source for b in col.bars[s][:5]] == ["rest"] * 5  # each symbol's own warm-up
    for sym, ser in zip(col.bars, series, strict=True):  # each symbol's own values, not another's
        for b in col.bars[sym][::7]:
            i = int(ser.frame.open_time.searchsorted(b.open_time))
            assert (b.open, b.close, b.volume) == (ser.frame.open[i], ser.frame.close[i], ser.frame.volume[i])
    assert st["links"] == [1, 2, 1]  # only the killed connection reconnected
    assert st["reconnects_by_reason"] == {"closed": 1} and st["gaps"] == 0
    # what closed while it was down came over REST, for its own symbols only
    assert st["backfilled"] >= 4 * 10
    assert sim.connections_total == 4


def test_subscribe_messages_are_paced_under_the_servers_message_limit(spot) -> None:
    """702 streams on one connection: about 200 in the URL, the rest in 6 SUBSCRIBE messages of 100.
    The simulator closes a connection that sends more than 3 messages a second (Binance: 5, a ping
    and a pong included); sent at once, these 6 would be closed."""
    series = _series(spot, 2, 300)
    syms = (series[0].symbol, *_fake(700), series[1].symbol)  # the second served symbol comes last

    async def main() -> tuple[PerSymbol, FeedSimulator, FeedClient, int]:
        async with FeedSimulator(series, speed=20, start_index=100, end_index=280, intrabar=1,
                                 max_incoming_per_s=3) as sim:
            client = FeedClient(feed_cfg(sim.ws_url, sim.rest_url, check_symbols=False, symbols=syms), warmup_bars=3,
                                stale_after_s=5,
                                max_subscribe_streams=100)
            (link,) = client.links
            assert len(link.subscribes) == 6 and stream_name(syms[-1]) in orjson.loads(link.subscribes[-1][1])["params"]
            col = PerSymbol(client)
            await col.wait(lambda b: len(b[syms[-1]]) >= 10 and len(b[syms[0]]) >= 10, 30,
                           "bars of the symbol subscribed last")
            (conn,) = sim._conns.values()
            subscribed = len(conn.session.streams)
            await col.close()
            return col, sim, client, subscribed

    col, sim, client, subscribed = asyncio.run(main())
    assert sim.rate_limited == 0 and client.stats.reconnects == 0 and sim.connections_total == 1
    assert sim.control_messages == 6 and subscribed == 702
    assert not client.links[0].awaiting  # every SUBSCRIBE was answered {"result": null, "id": N}
    assert client.stats.bad_frames == 0  # replies are not bad frames
    for s in (syms[0], syms[-1]):
        assert any(b.source == "ws" for b in col.bars[s])
    assert all(not col.bars[s] for s in syms[1:-1])  # unserved streams carry nothing


def test_a_refused_subscribe_is_logged_and_the_connection_replaced(spot) -> None:
    """The server answers an error to a SUBSCRIBE (here: past its 300 streams a connection): one
    ``feed.subscribe_failed`` line with Binance's message, then a reconnect with backoff."""
    from structlog.testing import capture_logs

    series = _series(spot, 1, 300)
    syms = (series[0].symbol, *_fake(400))

    async def main() -> FeedClient:
        async with FeedSimulator(series, speed=20, start_index=100, end_index=280, intrabar=1,
                                 max_streams=300) as sim:
            client = FeedClient(feed_cfg(sim.ws_url, sim.rest_url, check_symbols=False, symbols=syms), warmup_bars=3,
                                stale_after_s=5)
            col = PerSymbol(client)
            for _ in range(400):  # no bar comes (each connection ends at its refusal): poll the counter
                if client.stats.reconnects_by_reason.get("subscribe_failed", 0) >= 2 or col.task.done():
                    break
                await asyncio.sleep(0.05)
            await col.close()
            return client

    with capture_logs() as logs:
        client = asyncio.run(main())
    failed = [e for e in logs if e["event"] == "feed.subscribe_failed"]
    assert client.stats.reconnects_by_reason.get("subscribe_failed", 0) >= 2
    assert len(failed) >= 2 and "too many streams" in failed[0]["error"] and failed[0]["log_level"] == "error"
    assert client.stats.bad_frames == 0 and client.stats.connect_failures == 0
    assert set(client.stats.reconnects_by_reason) == {"subscribe_failed"}


def test_live_cadence_three_connections_each_minute_from_every_one(spot) -> None:
    """At live cadence (a bar a second, updates at Binance's ~2 s of exchange time with jitter),
    6 symbols on 3 connections: every symbol's bars once, in order, each minute from all three."""
    start = 100
    series = _series(spot, 6, start + 20)
    syms = tuple(s.symbol for s in series)

    async def main() -> tuple[PerSymbol, FeedSimulator, list[int], FeedClient]:
        async with FeedSimulator(series, speed=1.0, start_index=start, end_index=start + 8, update_ms=2000,
                                 jitter_ms=500) as sim:
            times = [int(t) for t in sim.times]
            client = FeedClient(feed_cfg(sim.ws_url, sim.rest_url, symbols=syms, max_streams_per_connection=2),
                                warmup_bars=3)
            col = PerSymbol(client)
            last = times[start + 4]
            await col.wait(lambda b: all(v and v[-1].open_time >= last for v in b.values()), 20,
                           "4 live minutes of every symbol")
            await col.close()
            return col, sim, times, client

    col, sim, times, client = asyncio.run(main())
    assert [link.connects for link in client.links] == [1, 1, 1] and sim.connections_total == 3
    live: dict[int, set[str]] = {}
    for s, bars in col.bars.items():
        _once_in_order(bars, times)
        assert [b.source for b in bars[:3]] == ["rest"] * 3
        for b in bars:
            if b.source == "ws":
                live.setdefault(b.open_time, set()).add(s)
    full = [t for t, got in live.items() if got == set(syms)]
    assert len(full) >= 3  # minutes whose closed frames came over all three connections
    assert client.stats.reconnects == 0 and client.stats.bad_frames == 0


def test_connections_and_rest_weight_are_exported() -> None:
    from barsignal.daemon.feed.sequencer import FeedStats
    from barsignal.daemon.metrics import DaemonMetrics

    m = DaemonMetrics("BTCUSDT")
    st = FeedStats(connections=2, connections_wanted=3, rest_weight_spent=10, rest_paced=4)
    m.bind(feed_stats=lambda: st)
    text = m.render().decode()
    for line in ("barsignal_feed_connections 2.0", "barsignal_feed_connections_wanted 3.0",
                 "barsignal_rest_weight_spent_total 10.0", "barsignal_rest_paced_total 4.0",
                 "barsignal_feed_connected 0.0"):
        assert line in text.splitlines(), line
