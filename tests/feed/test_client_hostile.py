"""The feed client (asyncio driver + sequencer) against the hostile loopback server (tests/hostile.py)
on real bars: issue 13 #1, #2, #7, #8, #9, #11b and issue 12 #4, each a case that the client before
the sequencer split got wrong."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from barsignal.daemon.feed.client import FeedClient
from barsignal.errors import ConfigError
from barsignal.features.bar import Bar
from tests.feed.conftest import feed_cfg
from tests.hostile import HostileServer


async def take(client: FeedClient, until: Callable[[list[Bar]], bool], timeout_s: float,
               probe: Callable[[], None] | None = None) -> list[Bar]:
    bars: list[Bar] = []

    async def run() -> None:
        async for b in client:
            bars.append(b)
            if until(bars):
                return

    async def watch() -> None:
        while probe is not None:
            probe()
            await asyncio.sleep(0.02)

    w = asyncio.ensure_future(watch())
    try:
        await asyncio.wait_for(run(), timeout_s)
    except TimeoutError:
        pytest.fail(f"{len(bars)} bars in {timeout_s} s (last {bars[-1].open_time if bars else None}); "
                    f"{client.stats}")
    finally:
        w.cancel()
    return bars


def exactly_once(bars: list[Bar], t: np.ndarray, first: int, last: int) -> None:
    got = [b.open_time for b in bars]
    assert got == [int(x) for x in t[first:last + 1]], "not every real bar exactly once, in order"


def test_future_dated_bars_are_dropped_and_the_stream_goes_on(spot) -> None:
    """#1: one closed kline five years ahead (honest E), one with E ahead too; then normal bars."""
    t = spot.frame.open_time

    async def main() -> tuple[list[Bar], Any]:
        async with HostileServer(spot.frame, start=300, end=330, speed=20,
                                 plan={305: "future", 310: "future_e"}) as srv:
            c = FeedClient(feed_cfg(srv.ws_url, srv.rest_url), warmup_bars=5, stale_after_s=5)
            bars = await take(c, lambda b: b[-1].open_time >= int(t[325]), 20)
            return bars, c.stats

    bars, st = asyncio.run(main())
    exactly_once(bars, t, int(np.searchsorted(t, bars[0].open_time)), 325)
    assert bars[0].open_time <= int(t[300]) - 4 * 60_000  # the warm-up came first
    assert st.future_bars == 2 and st.gaps == 0 and max(b.open_time for b in bars) == int(t[325])


def test_absurd_frames_and_bad_rest_rows_are_dropped_never_raised(spot) -> None:
    """#2: 1e13 / 1e-13 prices and a 1e19 volume over ws; NaN, negative, misaligned rows over REST."""
    t = spot.frame.open_time

    async def main() -> tuple[list[Bar], Any]:
        async with HostileServer(spot.frame, start=300, end=330, speed=20,
                                 plan={304: "price_high", 308: "price_low", 312: "volume_high", 316: "garbage"},
                                 rest_plan=lambda n: "bad_rows") as srv:
            c = FeedClient(feed_cfg(srv.ws_url, srv.rest_url), warmup_bars=20, stale_after_s=5)
            bars = await take(c, lambda b: b[-1].open_time >= int(t[325]), 20)
            return bars, c.stats

    bars, st = asyncio.run(main())
    exactly_once(bars, t, 280, 325)  # the absurd ws bars came over REST instead, with the real values
    by_t = {b.open_time: b for b in bars}
    for i in (304, 308, 312):
        assert by_t[int(t[i])].source == "rest" and by_t[int(t[i])].high == spot.frame.high[i]
    assert st.invalid_bars >= 3 + 3 and st.invalid_by_reason.get("out_of_range", 0) >= 3
    assert st.invalid_by_reason.get("not_finite", 0) >= 1 and st.invalid_by_reason.get("misaligned", 0) >= 1
    assert st.bad_frames >= 2  # the garbage frames


def test_418_with_a_long_retry_after_stops_rest_until_the_ban_ends_then_warms_up(spot) -> None:
    """#7: 418 with Retry-After 120 s: one REST call in the ban, then the warm-up is retried and
    succeeds; ``ready`` is false until then. Time runs 60x faster through the injected clock/sleep."""
    t = spot.frame.open_time
    scale = 60.0
    t0 = time.monotonic()
    seen: dict[str, Any] = {"banned": 0.0, "ready_during_ban": False}

    def clock() -> float:
        return (time.monotonic() - t0) * scale

    async def sleep(s: float) -> None:
        await asyncio.sleep(s / scale)

    async def main() -> tuple[list[Bar], Any, HostileServer]:
        async with HostileServer(spot.frame, start=300, end=340, speed=10, rest_plan={0: "418"},
                                 retry_after_s=120) as srv:
            c = FeedClient(feed_cfg(srv.ws_url, srv.rest_url, reconnect_min_s=1.0, reconnect_max_s=60.0,
                                    healthy_reset_s=600.0), warmup_bars=30, clock=clock, sleep=sleep,
                           stale_after_s=600)

            def probe() -> None:
                if c.stats.rest_banned_until:
                    seen["banned"] = max(seen["banned"], c.stats.rest_banned_until - time.time())
                    seen["ready_during_ban"] |= c.ready

            bars = await take(c, lambda b: b[-1].open_time >= int(t[330]), 30, probe)
            return bars, c.stats, srv

    bars, st, srv = asyncio.run(main())
    (t_ban, what), (t_next, _) = srv.rest_requests[:2]
    assert what == "418"
    assert (t_next - t_ban) * scale >= 119, "a REST call went out during the 120 s ban"
    assert not seen["ready_during_ban"] and 100 < seen["banned"] <= 121  # the gauge's source, in unix seconds
    assert st.warmup_bars == 30 and st.rest_rate_limited == 1 and st.gaps == 0
    first = int(np.searchsorted(t, bars[0].open_time))
    exactly_once(bars, t, first, 330)
    # the 30 warm-up bars came over REST once the ban ended; the live bars held meanwhile followed them
    assert [b.source for b in bars[:30]] == ["rest"] * 30 and bars[30].source == "ws"
    assert st.connects == 1  # the ban never touched the websocket


def test_rest_failure_never_closes_a_healthy_websocket(spot) -> None:
    """Issue 12 #4: a backfill whose REST calls fail six times in a row: the websocket stays up."""
    t = spot.frame.open_time

    async def main() -> tuple[list[Bar], Any, HostileServer]:
        async with HostileServer(spot.frame, start=300, end=330, speed=20, plan={305: "drop"},
                                 rest_plan=lambda n: "500" if 1 <= n <= 6 else "ok") as srv:
            c = FeedClient(feed_cfg(srv.ws_url, srv.rest_url), warmup_bars=5, stale_after_s=5)
            bars = await take(c, lambda b: b[-1].open_time >= int(t[325]), 20)
            return bars, c.stats, srv

    bars, st, srv = asyncio.run(main())
    exactly_once(bars, t, 295, 325)
    assert st.rest_failures == 6 and st.connects == 1 and srv.connections == 1 and st.reconnects == 0


def test_server_shutdown_on_every_connect_backs_off() -> None:
    """#8: a server that sends serverShutdown on every connect: no reconnect storm."""
    from barsignal.data import load
    from tests.feed.conftest import SPOT_NOV

    frame = load(SPOT_NOV).frame

    async def main() -> tuple[HostileServer, Any]:
        async with HostileServer(frame, start=300, end=400, speed=1, shutdown_on_connect=True) as srv:
            c = FeedClient(feed_cfg(srv.ws_url, srv.rest_url, reconnect_min_s=0.05, reconnect_max_s=0.5),
                           stale_after_s=5)

            async def run() -> None:
                async for _ in c:
                    pass

            task = asyncio.ensure_future(run())
            await asyncio.sleep(3.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return srv, c.stats

    srv, st = asyncio.run(main())
    # backoff 0.05, 0.1, 0.2, 0.4, 0.5, 0.5 ... (jittered down to half): at most ~20 in 3 s; the old
    # client reconnected at once, hundreds of times (Binance allows 300 per 5 minutes).
    assert 3 <= srv.connections <= 20, srv.connections
    assert st.reconnects_by_reason.get("server_shutdown", 0) >= srv.connections - 2  # (the last may be in flight)


def test_resent_old_bars_do_not_keep_a_stale_stream_alive(spot) -> None:
    """#9: after bar 305 the feed keeps re-sending its last closed bar: stale, reconnect, backfill."""
    t = spot.frame.open_time

    async def main() -> tuple[list[Bar], Any]:
        async with HostileServer(spot.frame, start=300, end=340, speed=5,
                                 plan=lambda i: "resend" if 306 <= i <= 315 else "ok") as srv:
            c = FeedClient(feed_cfg(srv.ws_url, srv.rest_url), warmup_bars=3, stale_after_s=1.0)
            bars = await take(c, lambda b: b[-1].open_time >= int(t[320]), 20)
            return bars, c.stats

    bars, st = asyncio.run(main())
    assert st.reconnects_by_reason.get("stale", 0) >= 1 and st.duplicates + st.late >= 3
    exactly_once(bars, t, 297, 320)  # the re-sent stretch came over REST after the reconnect


def test_invalid_symbol_from_rest_is_a_config_error() -> None:
    """#11b: HTTP 400, code -1121 is fatal (ConfigError, exit 2), not 'no network?' forever."""
    from barsignal.data import load
    from tests.feed.conftest import SPOT_NOV

    frame = load(SPOT_NOV).frame

    async def main() -> None:
        async with HostileServer(frame, start=300, end=400, speed=20, rest_plan=lambda n: "invalid_symbol") as srv:
            c = FeedClient(feed_cfg(srv.ws_url, srv.rest_url), warmup_bars=5, stale_after_s=5)
            await asyncio.wait_for(take(c, lambda b: False, 15), 15)

    with pytest.raises(ConfigError, match="-1121"):
        asyncio.run(main())
