"""The REST weight budget (issue 14 #1): many symbols' warm-ups stay inside
``[feed] rest_weight_per_minute``, spread out, and respect the server's ``X-MBX-USED-WEIGHT-1M``.

The limiter is sans I/O (unit tests with a fake clock); the end-to-end tests run the client against
a real loopback ``feed serve`` whose REST counts weight per minute as Binance does (klines: 2) and
answers 429 past its limit. Time runs 30x faster through the injected clocks and sleep."""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest

from barsignal.daemon.binance.rest import fetch_page
from barsignal.daemon.feed.backoff import KLINES_WEIGHT, WeightLimiter
from barsignal.daemon.feed.client import FeedClient
from barsignal.sim.series import Series, shifted_copies
from barsignal.sim.simulator import FeedSimulator
from tests.feed.conftest import feed_cfg
from tests.feed.test_connections import PerSymbol


class FakeTime:
    def __init__(self, t: float = 1_000_020.0) -> None:  # the start of a wall-clock minute (16667 * 60)
        self.t = t

    def __call__(self) -> float:
        return self.t


def _greedy(lim: WeightLimiter, now: FakeTime, seconds: float, cost: int = KLINES_WEIGHT) -> list[float]:
    """Spend as fast as the limiter allows for ``seconds``; the times of the calls."""
    calls, end = [], now.t + seconds
    while now.t < end:
        w = lim.wait_s(cost)
        if w > 0:
            now.t += w
            continue
        lim.spend(cost)
        calls.append(now.t)
    return calls


def test_limiter_bursts_a_quarter_then_spreads_and_never_passes_the_budget() -> None:
    now = FakeTime()
    lim = WeightLimiter(2400, clock=now, wall=now)
    assert lim.burst == 600 and lim.rate == pytest.approx(30.0)  # weight a second after the burst
    calls = _greedy(lim, now, 300)
    t0 = calls[0]
    assert sum(1 for t in calls if t == t0) == 300  # 600 weight at once: 300 klines calls
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(calls[300:])}
    assert gaps == {round(2 / 30, 6)}  # then evenly, 15 calls a second
    for t in calls:  # any 60 s window, so any wall-clock minute, carries at most the budget
        assert sum(KLINES_WEIGHT for u in calls if t <= u < t + 60) <= 2400
    per_minute = Counter(int(t // 60) for t in calls)
    assert max(per_minute.values()) * KLINES_WEIGHT <= 2400
    assert lim.spent == len(calls) * KLINES_WEIGHT


def test_limiter_slows_down_when_the_server_counts_more_than_we_spent() -> None:
    now = FakeTime()
    lim = WeightLimiter(100, clock=now, wall=now)  # burst 25
    assert lim.wait_s() == 0
    lim.spend()
    lim.observe(62)  # another client on this IP used 60 this minute
    calls = _greedy(lim, now, 59)
    assert all(t < 1_000_080 for t in calls)
    assert 2 * (1 + len(calls)) + 60 == 100  # ours plus theirs fill the budget this minute, no more
    assert now.t >= 1_000_080  # then it waited for the minute's end (the tokens alone would allow more)
    assert lim.wait_s() == 0  # a new minute: the server's count starts again
    lim.observe(None)  # a page without the header changes nothing
    assert lim.wait_s() == 0


def test_limiter_a_call_dearer_than_the_burst_still_goes() -> None:
    now = FakeTime()
    lim = WeightLimiter(8, clock=now, wall=now)  # burst 2
    assert lim.wait_s(6) == 0  # a 3-page fetch waits for a full bucket, not forever
    lim.spend(6)
    assert lim.wait_s(2) == pytest.approx((2 + 4) / lim.rate)


def _scaled(k: float) -> tuple[Any, Any, Any]:
    m0, w0 = time.monotonic(), time.time()

    def clock() -> float:
        return (time.monotonic() - m0) * k

    def wall() -> float:
        return w0 + (time.time() - w0) * k

    async def sleep(s: float) -> None:
        await asyncio.sleep(s / k)

    return clock, wall, sleep


K = 10.0  # a minute lasts 6 s (at 30x, a loaded machine's 30 ms latency is a second of server time)


def _series(spot: Any, n: int) -> list[Series]:
    return shifted_copies([Series("BTCUSDT", spot.frame)], n, rows=400, shift=1000)


def _used_weight(url: str) -> int:
    with urllib.request.urlopen(url, None, 5) as r:
        r.read()
        return int(r.headers["X-MBX-USED-WEIGHT-1M"])


async def _run(spot: Any, n: int, *, budget: int, burn: int = 0) -> tuple[list[tuple[float, str]], Any, PerSymbol,
                                                                         int | None]:
    clock, wall, sleep = _scaled(K)
    series = _series(spot, n)
    syms = tuple(s.symbol for s in series)
    calls: list[tuple[float, str]] = []
    burn_minute = None

    async def fetch(rest_url: str, symbol: str, *a: Any, **kw: Any) -> Any:
        calls.append((wall(), symbol))
        return await fetch_page(rest_url, symbol, *a, max_retries=0, **kw)

    async with FeedSimulator(series, speed=20, start_index=100, end_index=390, intrabar=1, weight_limit=40,
                             wall_clock=wall) as sim:
        if burn:
            while wall() % 60 > 3:  # start at the top of a server minute
                await asyncio.sleep(0.01)
            used = 0
            while used < burn:  # another client on this IP: exchangeInfo costs 20, time 1
                path = "/api/v3/exchangeInfo" if burn - used >= 20 else "/api/v3/time"
                used = await asyncio.to_thread(_used_weight, sim.rest_url + path)
            burn_minute = int(wall() // 60)
        client = FeedClient(feed_cfg(sim.ws_url, sim.rest_url, symbols=syms, rest_weight_per_minute=budget,
                                     reconnect_min_s=0.5, reconnect_max_s=5.0, healthy_reset_s=150.0),
                            warmup_bars=5, fetch=fetch, clock=clock, wall_clock=wall, sleep=sleep,
                            stale_after_s=300)
        col = PerSymbol(client)
        await col.wait(lambda b: client.ready and all(len(v) >= 8 for v in b.values()), 40,
                       "every symbol's warm-up and live bars")
        await col.close()
        return calls, client.stats, col, burn_minute


def _check_warmups(col: PerSymbol, st: Any, n: int) -> None:
    assert st.rest_rate_limited == 0 and st.rest_failures == 0  # never a 429
    assert st.warmup_bars == 5 * n
    for bars in col.bars.values():  # every symbol's warm-up came, none abandoned
        assert [b.source for b in bars[:5]] == ["rest"] * 5
        got = [b.open_time for b in bars]
        assert got == sorted(set(got))


def test_many_warmups_under_a_low_server_limit_spread_over_minutes_without_a_429(spot) -> None:
    n = 30  # 30 warm-ups = 60 weight: more than the server's 40 a minute
    calls, st, col, _ = asyncio.run(_run(spot, n, budget=36))
    _check_warmups(col, st, n)
    warm = [t for t, _ in calls[:n]]
    assert sorted({s for _, s in calls[:n]}) == sorted(col.bars)  # one warm-up call per symbol first
    per_minute = Counter(int(t // 60) for t, _ in calls)
    assert max(per_minute.values()) * KLINES_WEIGHT <= 36  # inside our budget in every server minute
    assert warm[-1] - warm[0] >= 60  # so the warm-ups took more than a minute...
    # ...after a burst of a quarter of the budget (9 weight: 4 calls), at the budget's even rate
    # ((36 - 9) / 60 weight a second: a call every 4.4 s), not in bursts
    interval = KLINES_WEIGHT / ((36 - 9) / 60)
    assert (warm[-1] - warm[4]) / (n - 5) >= 0.95 * interval
    assert st.rest_paced >= n - 8 and st.rest_weight_spent == KLINES_WEIGHT * len(calls)
    assert 0 < st.rest_server_weight <= 40


def test_weight_used_by_another_client_slows_us_down(spot) -> None:
    """Another client spent 25 of the server's 40 this minute: the header says so, and our budget
    of 40 shrinks to what is left. Without reading it, the 10-weight burst plus the steady rate
    would pass 40 within this minute and get a 429."""
    n = 12
    calls, st, col, burn_minute = asyncio.run(_run(spot, n, budget=40, burn=25))
    _check_warmups(col, st, n)
    per_minute = Counter(int(t // 60) for t, _ in calls)
    assert burn_minute is not None and per_minute[burn_minute] >= 1
    assert 25 + KLINES_WEIGHT * per_minute[burn_minute] <= 40  # theirs and ours fit in the server's minute
    assert max(per_minute) > burn_minute and st.rest_paced > 0  # the rest waited for the next one
