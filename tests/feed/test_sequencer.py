"""The sans-I/O feed sequencer on real bars: any interleaving of duplicate, out-of-order, late,
gapped, garbage and future frames, with REST pages answered late (or with garbage and future rows), yields each
bar once, in order, never past the exchange's current minute (hypothesis), plus the unit cases of
issue 13 #1, #2 and #9 at the sequencer level."""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barsignal.daemon.binance.ws import KlineEvent
from barsignal.daemon.feed.sequencer import Emit, Fetch, Gap, Output, Sequencer
from barsignal.data import load
from barsignal.features.bar import Bar
from tests.feed.conftest import SPOT_NOV

STEP = 60_000
SYM = "BTCUSDT"
YEARS_5 = 5 * 365 * 86_400_000
_SPOT = None


def real_bars(n: int = 400, start: int = 5000) -> list[Bar]:
    global _SPOT
    if _SPOT is None:
        _SPOT = load(SPOT_NOV)
    return list(_SPOT.frame.slice(start, start + n).bars(source="file"))


def ev(bar: Bar, *, closed: bool, e: int, **over: float) -> KlineEvent:
    v = {"open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close, "volume": bar.volume, **over}
    return KlineEvent(symbol=SYM, interval="1m", open_time=bar.open_time, close_time=bar.open_time + STEP - 1,
                      closed=closed, event_time=e, **v)


@dataclass
class World:
    """A true exchange (real bars, a true clock) and a sequencer under test; checks every emit."""

    bars: list[Bar]
    warmup: int
    seq: Sequencer = field(init=False)
    now: int = 0  # the true exchange clock
    emitted: list[Bar] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    fetches: deque[Fetch] = field(default_factory=deque)
    first_fetch: Fetch | None = None
    fast: int = 0  # frames that took kline's fast path

    def __post_init__(self) -> None:
        self.seq = Sequencer((SYM,), step_ms=STEP, warmup_bars=self.warmup)
        self.true = {b.open_time: b for b in self.bars}

    def handle(self, outs: list[Output]) -> None:
        for o in outs:
            if isinstance(o, Emit):
                b = o.bar
                assert b.open_time <= self.now - self.now % STEP, "emitted a bar past the exchange's minute"
                t = self.true.get(b.open_time)
                assert t is not None, f"emitted a bar the exchange never had: {b}"
                assert (b.open, b.high, b.low, b.close, b.volume) == (t.open, t.high, t.low, t.close, t.volume)
                assert not self.emitted or b.open_time > self.emitted[-1].open_time, "out of order or twice"
                self.emitted.append(b)
            elif isinstance(o, Gap):
                self.gaps.append(o)
            else:
                assert isinstance(o, Fetch) and o.since_ms < o.until_ms
                self.first_fetch = self.first_fetch or o
                self.fetches.append(o)

    def frame(self, e: KlineEvent) -> None:
        last = self.seq.last(SYM)
        if last is not None:  # keep-warm's rehearsal of the next bar, in whatever state: changes nothing
            before = copy.deepcopy(self.seq)
            nxt = Bar(last + STEP, 1.0, 1.0, 1.0, 1.0, 1.0)
            self.seq.rehearse(ev(nxt, closed=True, e=last + 2 * STEP))
            assert _state(self.seq) == _state(before), "a rehearsal changed the sequencer"
        ref = copy.deepcopy(self.seq)  # the general path on the same state: the live fast path agrees
        ref._observe(e.event_time)
        s = ref._syms.get(e.symbol)
        want = [] if s is None else ref._kline(e, s)
        with mock.patch.object(Sequencer, "_kline", autospec=True, side_effect=Sequencer._kline) as general:
            outs = self.seq.kline(e)
        assert outs == want and _state(self.seq) == _state(ref), f"kline's fast path differs on {e}"
        self.fast += general.call_count == 0
        self.handle(outs)

    def closed(self, i: int, *, delay_ms: int = 300) -> None:
        b = self.bars[i]
        self.now = max(self.now, b.open_time + STEP - 1 + delay_ms)
        self.frame(ev(b, closed=True, e=self.now))

    def forming(self, i: int, frac: float = 0.5) -> None:
        b = self.bars[i]
        self.now = max(self.now, b.open_time + int(STEP * frac))
        self.frame(ev(b, closed=False, e=self.now))

    def answer(self, *, garbage: str = "", future: bool = False, partial: bool = False) -> None:
        """Answer the oldest fetch the way a (possibly hostile) REST would, with the true clock."""
        f = self.fetches.popleft()
        rows = [b for b in self.bars if f.since_ms <= b.open_time < f.until_ms
                and b.open_time + STEP - 1 < self.now]
        if partial and len(rows) > 1:  # a page cut short: the rest must be asked for again or be a gap
            rows = rows[: len(rows) // 2]
        if garbage and rows:  # "replace": the real row is absurd (lost); "extra": an absurd copy first
            g = rows[0]
            bad = Bar(g.open_time, g.open, 1e13, g.low, g.close, g.volume, "rest")
            rows[:1] = [bad] if garbage == "replace" else [bad, g]
        if future:
            rows.append(Bar(self.now + YEARS_5 - self.now % STEP, 1.0, 1.0, 1.0, 1.0, 1.0, "rest"))
        self.handle(self.seq.rest_page(f, [Bar(*(getattr(b, k) for k in
                                                  ("open_time", "open", "high", "low", "close", "volume")),
                                               "rest") for b in rows], server_time_ms=self.now))

    def drain_rest(self) -> None:
        while self.fetches:
            self.answer()


def _state(seq: Sequencer) -> dict:
    return {k: (vars(v) if k == "stats" else v) for k, v in vars(seq).items()}


HOSTILE = ("normal", "normal", "drop", "dup", "late", "swap", "future", "future_e", "garbage", "forming",
           "disconnect", "rest_now", "rest_garbage", "rest_future")  # a REST page cut short is a halt: a gap


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), warmup=st.integers(0, 8), n=st.integers(5, 40))
def test_any_interleaving_yields_each_bar_once_in_order_never_past_the_exchange_minute(data, warmup, n) -> None:
    bars = real_bars()
    w = World(bars, warmup)
    k0 = 10  # the first bar the stream shows (warm-up comes from before it)
    held: list[int] = []
    for i in range(k0, k0 + n):
        act = data.draw(st.sampled_from(HOSTILE), label=f"bar {i}")
        if act != "forming" and data.draw(st.booleans(), label="forming first"):
            w.forming(i, 0.3)
        if act == "normal" or act == "rest_now":
            w.closed(i)
        elif act == "dup":
            w.closed(i)
            w.closed(i, delay_ms=900)
        elif act == "late":
            w.closed(i)
            w.closed(max(k0, i - data.draw(st.integers(1, 5))))
        elif act == "swap":
            held.append(i)  # delivered after the next bar
            continue
        elif act == "future":  # a closed kline stamped five years ahead, E honest
            w.closed(i)
            fb = Bar(bars[i].open_time + YEARS_5, 2.0, 3.0, 1.0, 2.0, 5.0)
            w.frame(ev(fb, closed=True, e=w.now))
        elif act == "future_e":  # ... and its event time too; a normal frame follows
            fb = Bar(bars[i].open_time + YEARS_5, 2.0, 3.0, 1.0, 2.0, 5.0)
            w.frame(ev(fb, closed=True, e=w.now + YEARS_5))
            w.closed(i)
        elif act == "garbage":  # the real bar's frame, with an absurd price: dropped, REST fills it
            b = bars[i]
            w.now = max(w.now, b.open_time + STEP)
            w.frame(ev(b, closed=True, e=w.now, high=1e13))
        elif act == "forming":  # the closed frame never comes; the next bar is well under way
            w.forming(i + 1, 0.5)
        elif act == "disconnect":
            w.seq.disconnected()
            w.seq.connected()
            w.closed(i)
        elif act == "drop":
            w.now = max(w.now, bars[i].open_time + STEP)
        for j in held:
            w.closed(j)
        held.clear()
        if act.startswith("rest") and w.fetches:
            w.answer(garbage="extra" if act == "rest_garbage" else "", future=act == "rest_future")
    # The source is healthy again: a few normal bars, every fetch answered.
    last = k0 + n + 3
    for i in range(k0 + n, last + 1):
        w.forming(i, 0.2)
        w.closed(i)
        w.drain_rest()
    w.drain_rest()
    got = [b.open_time for b in w.emitted]
    assert got, "nothing emitted"
    assert got[-1] == bars[last].open_time, "the last closed bar was not emitted"
    first = bars.index(next(b for b in bars if b.open_time == got[0]))
    assert got == [b.open_time for b in bars[first:last + 1]], "a bar is missing"
    assert not w.gaps  # every hole was fillable from REST
    if warmup:
        f = w.first_fetch
        assert f is not None and f.warmup and f.until_ms - f.since_ms == warmup * STEP and got[0] == f.since_ms
    assert w.seq.ready
    assert w.fast  # the healthy tail alone goes through the fast path


def _warm_world(warmup: int = 3) -> World:
    w = World(real_bars(), warmup)
    w.forming(10, 0.2)
    w.forming(10, 0.6)  # a second frame: the clock is trusted
    w.drain_rest()
    return w


def test_one_future_dated_closed_bar_is_dropped_counted_and_the_feed_goes_on() -> None:
    """Issue 13 #1: one closed kline stamped five years ahead, then normal bars."""
    w = _warm_world()
    w.closed(10)
    fb = Bar(w.bars[11].open_time + YEARS_5, 2.0, 3.0, 1.0, 2.0, 5.0)
    w.frame(ev(fb, closed=True, e=w.now))
    w.frame(ev(fb, closed=True, e=w.now + YEARS_5))  # its E stamped ahead too: one frame, no clock jump
    for i in range(11, 20):
        w.closed(i)
    w.drain_rest()
    assert [b.open_time for b in w.emitted] == [b.open_time for b in w.bars[7:20]]
    assert w.seq.stats.future_bars == 2 and w.seq.stats.gaps == 0
    assert w.seq.now_ms is not None and w.seq.now_ms < w.bars[21].open_time  # the clock did not jump


def test_a_real_clock_jump_is_believed_once_a_second_frame_agrees() -> None:
    """After a long outage the exchange really is hours ahead: two frames that agree move the clock."""
    w = _warm_world()
    for i in range(10, 13):
        w.closed(i)
    w.seq.disconnected()
    w.seq.connected()
    far = 300  # 287 bars later
    w.closed(far)  # untrusted on its own word: held, not dropped
    w.forming(far + 1, 0.1)  # agrees: the clock jumps, the hole [13, 300) is fetched
    w.drain_rest()
    w.closed(far + 1)
    assert [b.open_time for b in w.emitted] == [b.open_time for b in w.bars[7:far + 2]]
    assert w.seq.stats.future_bars == 0 and w.seq.stats.backfilled == far - 13


def test_absurd_values_are_dropped_and_counted_never_raised() -> None:
    """Issue 13 #2: price 1e13 or 1e-13, volume 1e19, over ws and REST."""
    w = _warm_world()
    b = w.bars[10]
    w.now = b.open_time + STEP
    for over in ({"high": 1e13}, {"low": 1e-13}, {"volume": 1e19}):
        w.frame(ev(b, closed=True, e=w.now, **over))
    w.closed(11)
    w.answer(garbage="replace")  # the hole [10, 11) over REST: that row is absurd too, so it stays a gap
    w.closed(12)
    assert [x.open_time for x in w.emitted] == [x.open_time for x in w.bars[7:10]] + [w.bars[11].open_time,
                                                                                      w.bars[12].open_time]
    assert w.seq.stats.invalid_bars == 4 and w.seq.stats.gaps == 1
    assert w.seq.stats.invalid_by_reason == {"out_of_range": 4}


def test_resent_old_bars_are_not_progress() -> None:
    """Issue 13 #9: the stale detector counts NEW closed bars, so duplicates must not move it."""
    w = _warm_world()
    w.closed(10)
    p = w.seq.progress
    for _ in range(50):
        w.closed(10)
        w.closed(9)
    assert w.seq.progress == p and w.seq.stats.duplicates == 50 and w.seq.stats.late == 50
    w.closed(11)
    assert w.seq.progress == p + 1


def test_a_backfill_given_up_is_a_gap_but_a_warmup_never_is() -> None:
    w = World(real_bars(), 3)
    w.forming(10, 0.2)
    w.forming(10, 0.6)
    warm = w.fetches[0]
    assert warm.warmup and w.seq.rest_gave_up(warm) == [] and not w.seq.ready
    w.answer()
    assert w.seq.ready
    w.closed(10)
    w.closed(14)  # 11..13 missing
    f = w.fetches[0]
    assert (f.since_ms, f.until_ms) == (w.bars[11].open_time, w.bars[14].open_time)
    w.handle(w.seq.rest_gave_up(w.fetches.popleft()))
    assert [b.open_time for b in w.emitted][-2:] == [w.bars[10].open_time, w.bars[14].open_time]
    assert [(g.missing) for g in w.gaps] == [3]


@pytest.mark.parametrize("jump", [YEARS_5, 20 * STEP])
def test_duplicated_future_frame_does_not_confirm_its_own_clock(jump: int) -> None:
    w = _warm_world()
    w.closed(10)
    fb = Bar(w.bars[10].open_time + jump, 2.0, 3.0, 1.0, 2.0, 5.0)
    e = w.now + jump
    for _ in range(3):  # the same frame three times: the same E, no second opinion
        w.frame(ev(fb, closed=True, e=e))
    w.closed(11)
    assert w.emitted[-1].open_time == w.bars[11].open_time and w.seq.stats.future_bars >= 1
