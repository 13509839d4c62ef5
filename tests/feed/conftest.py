"""Real bar slices and helpers for the feed tests (a real loopback simulator, real REST over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from barsignal.daemon.config import FeedConfig
from barsignal.data import Loaded, load
from barsignal.features.bar import Bar
from tests.conftest import FUTURES_1M, SPOT_1M

# Spot BTC/USDT 1m, 2021-11-11..12-11: no gaps (PROVENANCE.md).
SPOT_NOV = next(p for p in SPOT_1M if "2021-11-11" in p.name)
# Spot 1m 2021-04-20..05-20: a real 284-bar maintenance gap on 2021-04-25 04:00 -> 08:45.
SPOT_APR = next(p for p in SPOT_1M if "2021-04-20" in p.name)
FUT_0529 = next(p for p in FUTURES_1M if p.name == "BTCUSDT-1m-2022-05-29.csv")


@pytest.fixture(scope="session")
def spot() -> Loaded:
    return load(SPOT_NOV)


@pytest.fixture(scope="session")
def spot_apr() -> Loaded:
    return load(SPOT_APR)


@pytest.fixture(scope="session")
def fut_day() -> Loaded:
    return load(FUT_0529)


def feed_cfg(ws_url: str, rest_url: str, **kw: Any) -> FeedConfig:
    base: dict[str, Any] = dict(reconnect_min_s=0.02, reconnect_max_s=0.2, healthy_reset_s=5.0,
                                rest_timeout_s=5.0)
    return FeedConfig(ws_url=ws_url, rest_url=rest_url, **{**base, **kw})


async def collect(source: Any, *, until: Callable[[list[Bar]], bool], timeout_s: float) -> list[Bar]:
    """Bars from ``source`` until ``until(bars)`` holds; fails the test after ``timeout_s``."""
    bars: list[Bar] = []

    async def run() -> None:
        async for bar in source:
            bars.append(bar)
            if until(bars):
                return

    try:
        await asyncio.wait_for(run(), timeout_s)
    except TimeoutError:
        got = f"{len(bars)} bars, last open {bars[-1].open_time if bars else None}"
        pytest.fail(f"feed did not deliver in {timeout_s} s ({got}); stats: {getattr(source, 'stats', None)}")
    return bars


def expected_times(loaded: Loaded, start: int, stop: int) -> list[int]:
    return [int(t) for t in loaded.frame.open_time[start:stop]]



class Collecting:
    """Consumes ``stream`` (what a client yields) in a task, handing each item to ``take``; a test
    awaits conditions on what arrived (``wait_until``: no sleeping) and ``close``s it."""

    def __init__(self, client: Any, stream: Any) -> None:
        self.client = client
        self._cond = asyncio.Condition()
        self.task = asyncio.create_task(self._run(stream))

    def take(self, item: Any) -> None:
        raise NotImplementedError

    async def _run(self, stream: Any) -> None:
        async for item in stream:
            async with self._cond:
                self.take(item)
                self._cond.notify_all()

    async def wait_until(self, ready: Callable[[], bool], timeout_s: float, why: Callable[[], str]) -> None:
        """Until ``ready()`` or the task ended (its error is raised); fail with ``why()`` after
        ``timeout_s``."""
        async def _w() -> None:
            async with self._cond:
                await self._cond.wait_for(lambda: ready() or self.task.done())
            if self.task.done():
                self.task.result()

        try:
            await asyncio.wait_for(_w(), timeout_s)
        except TimeoutError:
            pytest.fail(why())

    async def close(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
