"""Keep the hot path hot around the next closed bar's expected arrival.

Between bars the daemon sleeps, and on this class of machine the first ``score()`` after a sleep
costs 3 to 5 times a back-to-back one (``barsignal bench scoring --idle-ms 5``): the caches the
model needs are cold again; features and the outbox commit show the same. A busy spin alone does not
help; running the same code shortly before does. So, from ``lead`` before the expected arrival (the
last arrival plus the median of the recent intervals between closed bars) until the bar arrives or
``lead`` after it, this task busy-polls the event loop and calls ``warm`` every ``period`` seconds
(100 µs after the end of the last rehearsal: against 50 and 250 µs, the one with the fastest
tick-to-signal, docs/BENCHMARKS.md): the daemon's ``warm`` rehearses the hot path without changing
any state (the frame decoder and the sequencer's live case, values put back; the features on their
own state, values put back; the scorer on the current window; the rule on a copy; the outbox's
bookkeeping and the sink queues on shadows), discarding all of it. It never wakes the writer thread:
a writer job per rehearsal kept that thread contending for the GIL with the loop (score +8 µs,
docs/BENCHMARKS.md).

The cost is CPU: about ``2 * lead`` of one core per bar at most (live 1-minute bars with the
default 100 ms: 0.3 % of a core). ``[engine] keep_warm_ms = 0`` turns it off. A rehearsal that
raises stops keep-warm (the real path reports its own trouble): ``errors`` counts it
(``barsignal_keep_warm_errors_total``) and ``on_error`` is called once with the error (the daemon
logs it). A rehearsal in progress when the frame arrives delays it by at most one rehearsal; none
starts once ``busy()`` says a frame is on its way (bytes on the socket, a message buffered, a
receive not yet handled): the frame's trip through the loop takes several loop turns, and before
this check a rehearsal could run in each of them (measured: 536 µs p50 from the frame handed to the
kernel to the feed client, 285 µs with keep-warm off; docs/BENCHMARKS.md). Nothing here touches the
features, the rule or any state a signal depends on: signals are identical with it on or off.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from barsignal.daemon.binance.ws import decode, stream_name


class KeepWarm:
    """``arrived()`` after each live closed bar; ``run()`` as a task. ``warm()`` is one rehearsal."""

    def __init__(self, warm: Callable[[], None], lead_s: float, period_s: float = 100e-6,
                 clock: Callable[[], float] = time.perf_counter, history: int = 8,
                 on_error: Callable[[str], None] | None = None,
                 busy: Callable[[], bool] | None = None) -> None:
        self.warm = warm
        self.busy = busy  # True while a frame is on its way through the loop: no rehearsal then
        self.skipped = 0  # rehearsals not run because busy() said a frame was on its way
        self.lead_s = lead_s
        self.period_s = period_s
        self.clock = clock
        self.arrivals: deque[float] = deque(maxlen=history + 1)
        self.busy_s = 0.0  # time spent busy-polling (the CPU it costs)
        self.calls = 0  # warm() calls (rehearsals) run
        self.error: str | None = None  # set when a warm() call failed: keep-warm stops
        self.errors = 0  # warm() calls that raised
        self.on_error = on_error
        self._seen = 0
        self._wake = asyncio.Event()

    def arrived(self, t: float | None = None) -> None:
        """A live closed bar arrived (at ``t``, default now): ends a busy window, re-plans the next."""
        self.arrivals.append(self.clock() if t is None else t)
        self._seen += 1
        self._wake.set()

    def window(self) -> tuple[float, float] | None:
        """(start, end) of the next busy window, or None until three intervals were seen."""
        if len(self.arrivals) < 4:
            return None
        a = list(self.arrivals)
        interval = statistics.median(b - x for x, b in itertools.pairwise(a))
        if interval <= 0:
            return None
        lead = min(self.lead_s, interval / 4)
        expected = a[-1] + interval
        return expected - lead, expected + lead

    async def run(self) -> None:
        while self.error is None:
            self._wake.clear()
            w = self.window()
            now = self.clock()
            if w is None or w[1] <= now:  # no plan yet, or the bar is overdue: wait for the next one
                await self._wake.wait()
                continue
            if w[0] > now:
                try:  # sleep until the window opens, unless a bar arrives first (re-plan then)
                    await asyncio.wait_for(self._wake.wait(), w[0] - now)
                    continue
                except TimeoutError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():  # 3.11's wait_for can turn a cancel
                        raise asyncio.CancelledError from None  # into a timeout: stop, never hang a shutdown
            await self._busy(w[1])

    async def _busy(self, end: float) -> None:
        seen, t0 = self._seen, self.clock()
        next_warm = t0
        now = t0
        while self._seen == seen and now < end:
            if now >= next_warm and self.busy is not None and self.busy():
                self.skipped += 1  # the frame first: a rehearsal now would hold it back by its length
            elif now >= next_warm:
                try:
                    self.warm()
                    self.calls += 1
                except Exception as exc:  # the real path reports its own trouble; stop warming
                    self.error = f"{type(exc).__name__}: {exc}"
                    self.errors += 1
                    if self.on_error is not None:
                        self.on_error(self.error)
                    return
                next_warm = self.clock() + self.period_s
            await asyncio.sleep(0)  # lets the loop poll the socket with a zero timeout
            now = self.clock()
        self.busy_s += now - t0
        if self._seen == seen:  # no bar in the window: wait for one before planning again
            await self._wake.wait()


class FeedRehearsal:
    """The receive half of the hot path, rehearsed: the closed-kline frame of the feed's first
    symbol's next bar, as the exchange words it, is decoded and run through the feed's own
    sequencer with every value it changed put back (``Sequencer.rehearse``: the live case only).
    The frame decoder and the sequencer are the hot path's first steps; measured cold at live
    cadence they cost about 5 times their back-to-back time (docs/BENCHMARKS.md). Nothing the feed
    emits or counts changes."""

    def __init__(self, feed: Any, max_frame_bytes: int = 65536) -> None:
        self.feed = feed
        self.symbol: str = feed.symbols[0]
        self.symbols = frozenset(feed.symbols)
        self.interval = getattr(getattr(feed, "cfg", None), "interval", "1m")
        self.stream = stream_name(self.symbol, self.interval)
        self.max_frame_bytes = max_frame_bytes

    def __call__(self) -> None:
        seq = self.feed.seq
        last = seq.last(self.symbol)
        if last is None:
            return
        step = seq.step_ms
        t = last + step
        px = "1.00000000"  # any plausible bar: what is rehearsed is the code, not these values
        k = {"t": t, "T": t + step - 1, "s": self.symbol, "i": self.interval, "f": -1, "L": -1, "o": px, "c": px,
             "h": px, "l": px, "v": "1.00000000", "n": 0, "x": True, "q": "0.00000000", "V": "0.00000000",
             "Q": "0.00000000", "B": "0"}
        frame = orjson.dumps({"stream": self.stream, "data": {"e": "kline", "E": t + step, "s": self.symbol,
                                                               "k": k}})
        ev = decode(frame, symbols=self.symbols, max_bytes=self.max_frame_bytes)
        if ev is None:
            return
        clock = getattr(self.feed, "exchange_clock", None)
        if clock is not None and clock.known:  # the limit the real frame will meet: its E plus the tolerance
            seq.rehearse(ev, ev.event_time + int(clock.rate * clock.tolerance_ms))
        else:
            seq.rehearse(ev)
