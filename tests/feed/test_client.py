"""The websocket client against a real loopback ``feed serve`` on real bars, with real REST:
every closed bar exactly once and in order, through faults, kills, stalls, shutdowns and rollovers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from barsignal.daemon.config import FeedConfig
from barsignal.daemon.feed.client import FeedClient
from barsignal.errors import ConfigError
from barsignal.features.bar import Bar
from barsignal.sim.faults import Faults
from barsignal.sim.simulator import FeedSimulator
from tests.conftest import free_port
from tests.feed.conftest import Collecting, collect, expected_times, feed_cfg


class Collector(Collecting):
    """A one-symbol client's bars, in arrival order."""

    def __init__(self, client: FeedClient) -> None:
        self.bars: list[Bar] = []
        super().__init__(client, client)

    def take(self, bar: Bar) -> None:
        self.bars.append(bar)

    async def wait(self, pred: Callable[[list[Bar]], bool], timeout_s: float) -> None:
        await self.wait_until(lambda: pred(self.bars), timeout_s, lambda: (
            f"timed out with {len(self.bars)} bars (last {self.bars[-1].open_time if self.bars else None}); "
            f"{self.client.stats}"))


def _has(t: int) -> Callable[[list[Bar]], bool]:
    return lambda bars: bool(bars) and bars[-1].open_time >= t


def _assert_exactly_once(bars: list[Bar], want: list[int]) -> None:
    got = [b.open_time for b in bars]
    assert len(got) == len(set(got)), "a bar was delivered twice"
    assert got == sorted(got), "bars out of order"
    missing = sorted(set(want) - set(got))
    assert not missing, f"{len(missing)} bars missing, first {missing[:5]}"
    assert got == want


def test_every_closed_bar_once_in_order_through_faults(spot) -> None:
    faults = Faults.parse("drop=0.1,dup=0.1,ooo=0.05,late=0.05,malformed=0.25,delay=0.05,delay_s=0.05,"
                          "rest5xx=0.2,rest_timeout=0.15,rest_timeout_s=1,seed=11")

    async def main() -> tuple[list[Bar], Any, FeedSimulator]:
        async with FeedSimulator(spot.frame, speed=40, start_index=300, end_index=800, intrabar=1,
                                 faults=faults) as sim:
            cfg = feed_cfg(sim.ws_url, sim.rest_url, rest_timeout_s=0.5)
            client = FeedClient(cfg, warmup_bars=50, stale_after_s=5)
            bars = await collect(client, until=_has(int(spot.frame.open_time[419])), timeout_s=40)
            return bars, client.stats, sim

    bars, stats, _ = asyncio.run(main())
    first = int(np.searchsorted(spot.frame.open_time, bars[0].open_time))
    assert 250 <= first < 300  # 50 warm-up bars before the first frame the client saw
    _assert_exactly_once(bars, expected_times(spot, first, 420))
    assert [b.source for b in bars[:50]] == ["rest"] * 50 and stats.warmup_bars == 50
    # (a backfill batch may run past the last bar the test waited for)
    assert stats.bars_ws + stats.bars_rest >= len(bars) and stats.bars_ws > 10
    assert stats.backfilled > 0  # dropped and held-back closed frames came over REST
    assert stats.bad_frames > 0 and sum(stats.bad_by_reason.values()) == stats.bad_frames
    assert stats.duplicates > 0 and stats.late > 0
    assert stats.rest_failures > 0  # 503s and timeouts were retried
    assert stats.gaps == 0 and stats.missing_bars == 0
    for b in bars[::17]:  # values are the file's, whichever path they came by
        i = int(np.searchsorted(spot.frame.open_time, b.open_time))
        f = spot.frame
        assert (b.open, b.high, b.low, b.close, b.volume) == (f.open[i], f.high[i], f.low[i], f.close[i],
                                                              f.volume[i])


def test_server_killed_and_restarted_later_missing_bars_backfilled(spot) -> None:
    port = free_port()

    async def main() -> tuple[list[Bar], Any]:
        sim = await FeedSimulator(spot.frame, port=port, speed=40, start_index=300, intrabar=1).start()
        backing_off = asyncio.Event()

        async def sleep(s: float) -> None:  # the real sleep, and a signal that the client backs off
            backing_off.set()
            await asyncio.sleep(s)

        client = FeedClient(feed_cfg(sim.ws_url, sim.rest_url), warmup_bars=20, stale_after_s=5, sleep=sleep)
        col = Collector(client)
        await col.wait(_has(int(spot.frame.open_time[330])), 20)
        await sim.stop()  # the feed dies; 15 more bars close while it is down
        k = sim.closed_upto
        backing_off.clear()
        await asyncio.wait_for(backing_off.wait(), 10)
        sim2 = await FeedSimulator(spot.frame, port=port, speed=40, start_index=k + 15, intrabar=1).start()
        await col.wait(_has(int(spot.frame.open_time[k + 40])), 20)
        await col.close()
        await sim2.stop()
        return col.bars, client.stats, k

    bars, stats, k = asyncio.run(main())
    first = int(np.searchsorted(spot.frame.open_time, bars[0].open_time))
    _assert_exactly_once(bars, expected_times(spot, first, k + 41)[: len(bars)])
    assert bars[-1].open_time >= int(spot.frame.open_time[k + 40])
    by_time = {b.open_time: b.source for b in bars}
    assert all(by_time[int(t)] == "rest" for t in spot.frame.open_time[k:k + 15])  # closed while down
    assert stats.backfilled >= 15 and stats.reconnects >= 1 and stats.connect_failures >= 1
    assert stats.gaps == 0


def test_stale_stream_forces_reconnect(spot) -> None:
    async def main() -> tuple[list[Bar], Any]:
        async with FeedSimulator(spot.frame, speed=40, start_index=300, end_index=400, intrabar=1,
                                 faults=Faults.parse("stall=320")) as sim:
            client = FeedClient(feed_cfg(sim.ws_url, sim.rest_url), stale_after_s=0.4)
            bars = await collect(client, until=_has(int(spot.frame.open_time[399])), timeout_s=30)
            return bars, client.stats

    bars, stats = asyncio.run(main())
    _assert_exactly_once(bars, [t for t in expected_times(spot, 300, 400) if t >= bars[0].open_time])
    assert stats.reconnects_by_reason.get("stale", 0) >= 1 and stats.backfilled > 0


def test_server_shutdown_and_24h_rollover_reconnect_with_overlap(spot) -> None:
    async def main() -> tuple[list[Bar], Any]:
        # the server pings every 50 ms and drops a client that does not pong within 0.5 s
        async with FeedSimulator(spot.frame, speed=40, start_index=300, end_index=420, intrabar=2,
                                 faults=Faults.parse("shutdown=330"), ping_interval_s=0.05,
                                 ping_timeout_s=0.5) as sim:
            cfg = feed_cfg(sim.ws_url, sim.rest_url, rollover_s=0.7)  # 24 h shrunk to 0.7 s
            client = FeedClient(cfg, warmup_bars=10, stale_after_s=5)
            bars = await collect(client, until=_has(int(spot.frame.open_time[419])), timeout_s=30)
            return bars, client.stats

    bars, stats = asyncio.run(main())
    first = int(np.searchsorted(spot.frame.open_time, bars[0].open_time))
    _assert_exactly_once(bars, expected_times(spot, first, 420))
    assert stats.reconnects_by_reason.get("server_shutdown") == 1
    assert stats.reconnects_by_reason.get("rollover", 0) >= 2
    assert stats.connect_failures == 0 and stats.gaps == 0
    assert "closed" not in stats.reconnects_by_reason  # pings were answered: never dropped


def test_real_exchange_halt_is_a_counted_gap_never_invented(spot_apr) -> None:
    t = spot_apr.frame.open_time
    g = int(np.flatnonzero(np.diff(t) > 60_000)[0])  # 2021-04-25 04:00 -> 08:45, 284 bars missing
    assert (t[g + 1] - t[g]) // 60_000 - 1 == 284

    async def main() -> tuple[list[Bar], Any]:
        async with FeedSimulator(spot_apr.frame, speed=40, start_index=g - 10, end_index=g + 40,
                                 intrabar=1, faults=Faults.parse("drop=0.3,seed=2")) as sim:
            client = FeedClient(feed_cfg(sim.ws_url, sim.rest_url), warmup_bars=20, stale_after_s=5)
            bars = await collect(client, until=_has(int(t[g + 29])), timeout_s=30)
            return bars, client.stats

    bars, stats = asyncio.run(main())
    first = int(np.searchsorted(spot_apr.frame.open_time, bars[0].open_time))
    assert first <= g - 10
    _assert_exactly_once(bars, expected_times(spot_apr, first, g + 30))
    assert stats.gaps == 1 and stats.missing_bars == 284  # logged, counted, passed on


def test_unreachable_feed_logs_one_line_per_attempt_and_backs_off() -> None:
    port = free_port()  # nothing listens there
    delays: list[float] = []

    class Enough(Exception):
        pass

    async def fake_sleep(s: float) -> None:
        delays.append(s)
        if len(delays) >= 8:
            raise Enough

    # check_symbols off: the exchangeInfo retries would share the injected sleep counted here
    cfg = FeedConfig(ws_url=f"ws://127.0.0.1:{port}", rest_url=f"http://127.0.0.1:{port}",
                     reconnect_min_s=1.0, reconnect_max_s=8.0, check_symbols=False)
    client = FeedClient(cfg, sleep=fake_sleep)

    async def main() -> None:
        async for _ in client:
            pass

    with capture_logs() as logs, pytest.raises(Enough):
        asyncio.run(main())
    failed = [e for e in logs if e["event"] == "feed.connect_failed"]
    assert len(failed) == 8 == client.stats.connect_failures
    assert all(e["log_level"] == "warning" and "exc_info" not in e for e in failed)
    assert all("refused" in e["error"].lower() and e["url"].startswith("ws://127.0.0.1") for e in failed)
    ceilings = [min(8.0, 2.0**i) for i in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert [e["retry_in_s"] for e in failed] == [round(d, 3) for d in delays]


def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="ws_url"):
        FeedClient(FeedConfig(ws_url="https://example.invalid"))
    with pytest.raises(ConfigError, match="stream"):
        FeedClient(FeedConfig(symbols=("BTCUSDT", "ETHUSDT"))).__aiter__()


def test_refused_handshakes_honour_retry_after(spot) -> None:
    delays: list[float] = []

    async def sleep(s: float) -> None:  # record what the client asks for; wait only briefly
        delays.append(s)
        await asyncio.sleep(min(s, 0.05))

    async def main() -> tuple[list[Bar], Any]:
        async with FeedSimulator(spot.frame, speed=40, start_index=300, end_index=400, intrabar=1,
                                 faults=Faults.parse("refuse=2,retry_after_s=7")) as sim:
            client = FeedClient(feed_cfg(sim.ws_url, sim.rest_url), sleep=sleep)
            bars = await collect(client, until=lambda b: len(b) >= 5, timeout_s=20)
            return bars, client.stats

    bars, stats = asyncio.run(main())
    assert stats.connect_failures == 2 and delays[:2] == [7.0, 7.0]  # Binance's Retry-After, not 0.02 s
    _assert_exactly_once(bars, [t for t in expected_times(spot, 300, 400) if bars[0].open_time <= t
                                <= bars[-1].open_time])


def test_multi_symbol_stream_yields_symbol_and_bar(spot) -> None:
    async def main() -> tuple[list[tuple[str, Bar]], FeedClient]:
        async with FeedSimulator(spot.frame, speed=40, start_index=300, end_index=400, intrabar=1) as sim:
            # ETHUSDT is not served: exchangeInfo would refuse it (exit 2), so the check is off here
            cfg = feed_cfg(sim.ws_url, sim.rest_url, symbols=("BTCUSDT", "ETHUSDT"), check_symbols=False)
            client = FeedClient(cfg, warmup_bars=5, stale_after_s=5)
            assert client.url.endswith("/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m")
            got: list[tuple[str, Bar]] = []
            async for symbol, bar in client.stream():
                got.append((symbol, bar))
                if len(got) >= 15:
                    break
            return got, client

    got, client = asyncio.run(main())
    assert {s for s, _ in got} == {"BTCUSDT"}  # this feed only carries BTCUSDT; ETHUSDT stays unsynced
    times = [b.open_time for _, b in got]
    assert times == sorted(set(times)) and [b.source for _, b in got[:5]] == ["rest"] * 5
    assert client.stats.bad_frames == 0


def test_a_burst_of_buffered_frames_is_read_without_waiting_on_the_loop() -> None:
    """``_message_ready`` reads websockets' own frame queue on a real loopback connection: True while
    whole messages are buffered (``recv`` returns them at once, so the client hands a burst out in one
    go), False once drained. A websockets release that moves that queue makes this fail, not the
    client silently go back to one loop round trip a frame."""
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    from barsignal.daemon.feed.client import _message_ready

    async def handler(ws: Any) -> None:
        for i in range(20):
            await ws.send(f'{{"n":{i}}}')
        await ws.wait_closed()

    async def main() -> list[bool]:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}") as ws:
                first = await ws.recv(decode=False)
                await asyncio.sleep(0.2)  # the other 19 are in by now
                ready = [_message_ready(ws)]
                got = [first]
                while _message_ready(ws):
                    got.append(await ws.recv(decode=False))
                ready.append(_message_ready(ws))
                assert got == [f'{{"n":{i}}}'.encode() for i in range(20)]
                return ready

    assert asyncio.run(main()) == [True, False]


def test_frame_pending_sees_bytes_on_the_socket_and_messages_in_websockets() -> None:
    """``frame_pending`` (asked by keep-warm before each rehearsal) on a real loopback connection:
    True from the moment a frame's bytes wait on the socket, through websockets' buffer, until the
    client has handed it out; False before and after."""
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    from barsignal.daemon.feed.client import _readable

    go = asyncio.Event()

    async def handler(ws: Any) -> None:
        await go.wait()
        await ws.send('{"n":1}')
        await ws.wait_closed()

    async def main() -> list[bool]:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}") as ws:
                client = FeedClient(FeedConfig(ws_url=f"ws://127.0.0.1:{port}"), warmup_bars=0)
                link = client.links[0]
                link.ws = ws
                seen = [client.frame_pending()]  # nothing sent yet
                try:
                    ws.transport.pause_reading()  # the loop leaves the bytes on the socket
                    go.set()
                    for _ in range(200):
                        await asyncio.sleep(0.005)
                        if _readable(ws):
                            break
                    seen.append(client.frame_pending())  # bytes on the socket
                    ws.transport.resume_reading()
                    await asyncio.sleep(0.05)
                    seen.append(client.frame_pending())  # the message in websockets' buffer
                    link.recv = asyncio.ensure_future(ws.recv(decode=False))
                    await asyncio.sleep(0.01)
                    seen.append(client.frame_pending())  # received, not handled yet
                    assert link.recv.result() == b'{"n":1}'
                    link.recv = None
                    seen.append(client.frame_pending())  # handed out
                finally:
                    link.ws = None
                return seen

    assert asyncio.run(main()) == [False, True, True, True, False]
