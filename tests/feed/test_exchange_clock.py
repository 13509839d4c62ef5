"""The exchange clock (daemon/feed/clock.py) with the sequencer, sans I/O, on real bars of three symbols:
hypothesis draws sequences of forged frames (single and repeated, dated years ahead, with forged event
times, from any symbol) interleaved with the real bars, at real-time and at simulator speeds. No bar
the source did not have is ever emitted; every real bar of every symbol is emitted once; no forged
frame asks REST for more than the real bars; the forging symbol is back to normal at once."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barsignal.daemon.binance.ws import KlineEvent
from barsignal.daemon.feed.clock import ExchangeClock
from barsignal.daemon.feed.sequencer import Emit, Fetch, Gap, Output, Sequencer
from barsignal.data import load
from barsignal.features.bar import Bar
from tests.conftest import REPO

STEP = 60_000
YEARS_5 = 5 * 365 * 86_400_000
MULTI = REPO.parent / "shared" / "data" / "multi" / "spot_1m"
SYMS = ("ETHUSDT", "SOLUSDT", "ADAUSDT")
_BARS: dict[str, list[Bar]] = {}


def real_bars(n: int = 120, start: int = 200) -> dict[str, list[Bar]]:
    """``n`` consecutive real 1-minute bars of each symbol, on the same minutes (gap-free there)."""
    if not _BARS:
        for s in SYMS:
            fr = load(MULTI / f"{s[:-4]}_USDT-1m.json").frame
            _BARS[s] = list(fr.slice(start, start + 400).bars(source="file"))
    out = {s: b[:n] for s, b in _BARS.items()}
    assert len({tuple(x.open_time for x in b) for b in out.values()}) == 1
    return out


def kev(sym: str, bar: Bar, *, closed: bool, e: int) -> KlineEvent:
    return KlineEvent(symbol=sym, interval="1m", open_time=bar.open_time, close_time=bar.open_time + STEP - 1,
                      open=bar.open, high=bar.high, low=bar.low, close=bar.close, volume=bar.volume,
                      closed=closed, event_time=e)


@dataclass
class World:
    """A true exchange (real bars of SYMS, a true clock running ``rate`` times the local one), the
    driver's exchange clock and the sequencer; checks every output."""

    bars: dict[str, list[Bar]]
    warmup: int
    rate: float
    seed: int = 0
    seq: Sequencer = field(init=False)
    clock: ExchangeClock = field(init=False)
    now: int = 0
    emitted: dict[str, list[Bar]] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    fetches: list[Fetch] = field(default_factory=list)
    fetched_bars: int = 0

    def __post_init__(self) -> None:
        self.seq = Sequencer(SYMS, step_ms=STEP, warmup_bars=self.warmup, bounded=True)
        self.clock = ExchangeClock(tolerance_ms=5_000.0)
        self.true = {s: {b.open_time: b for b in bs} for s, bs in self.bars.items()}
        self.t0 = self.bars[SYMS[0]][0].open_time - 2 * STEP
        self.rng = random.Random(self.seed)
        self.emitted = {s: [] for s in SYMS}

    def local_ms(self) -> float:
        """When a frame stamped with the true clock now arrives: up to 30 ms of local latency."""
        return (self.now - self.t0) / self.rate + self.rng.uniform(0.0, 30.0)

    def handle(self, outs: list[Output]) -> None:
        for o in outs:
            if isinstance(o, Emit):
                b = o.bar
                assert b.open_time <= self.now - self.now % STEP, "emitted a bar past the exchange's minute"
                t = self.true[o.symbol].get(b.open_time)
                assert t is not None, f"emitted a bar {o.symbol} never had: {b}"
                assert (b.open, b.high, b.low, b.close, b.volume) == (t.open, t.high, t.low, t.close, t.volume)
                em = self.emitted[o.symbol]
                assert not em or b.open_time > em[-1].open_time, "out of order or twice"
                em.append(b)
            elif isinstance(o, Gap):
                self.gaps.append(o)
            else:
                assert isinstance(o, Fetch) and o.since_ms < o.until_ms
                assert o.until_ms <= self.now + STEP, f"a fetch reaches past the exchange's clock: {o}"
                self.fetches.append(o)

    def frame(self, e: KlineEvent, local: float | None = None) -> None:
        loc = self.local_ms() if local is None else local
        self.clock.observe(e.event_time, loc, e.symbol)
        self.handle(self.seq.kline(e, self.clock.limit_ms(loc)))

    def tick(self, i: int, order: list[str], forge: dict[str, tuple[str, int]]) -> None:
        """Bar ``i`` of every symbol: two forming updates and the closed frame, each symbol's forged
        frames (``forge[sym] = (kind, count)``) right after its real closed frame."""
        for frac in (0.3, 0.7):
            for s in order:
                b = self.bars[s][i]
                self.now = max(self.now, b.open_time + int(STEP * frac))
                self.frame(kev(s, b, closed=False, e=self.now))
        for s in order:
            b = self.bars[s][i]
            self.now = max(self.now, b.open_time + STEP + 250)
            self.frame(kev(s, b, closed=True, e=self.now))
            kind, count = forge.get(s, ("", 0))
            for k in range(count):
                ahead = YEARS_5 + k * STEP
                fake = Bar(b.open_time + ahead, 2.0, 3.0, 1.0, 2.0, 5.0)
                e = self.now + (ahead if kind == "forged_e" else 0)
                self.frame(kev(s, fake, closed=True, e=e))
        self.answer_all()

    def answer_all(self) -> None:
        while self.fetches:
            f = self.fetches.pop(0)
            rows = [b for b in self.bars[f.symbol] if f.since_ms <= b.open_time < f.until_ms
                    and b.open_time + STEP - 1 < self.now]
            self.fetched_bars += (f.until_ms - f.since_ms) // STEP
            self.handle(self.seq.rest_page(f, rows, server_time_ms=self.now))


FORGE = st.sampled_from(["forged_e", "forged_e", "future"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), warmup=st.integers(0, 5), rate=st.sampled_from([1.0, 60.0, 600.0]),
       n=st.integers(30, 60), seed=st.integers(0, 1000))
def test_forged_frames_never_make_a_bar_and_every_real_bar_of_every_symbol_goes_out_once(
        data, warmup, rate, n, seed) -> None:
    bars = real_bars()
    w = World(bars, warmup, rate, seed)
    for i in range(n):
        order = data.draw(st.permutations(SYMS), label="order")
        forge: dict[str, tuple[str, int]] = {}
        if i >= 1 and data.draw(st.integers(0, 3), label="forges?") == 0:
            liar = data.draw(st.sampled_from(SYMS), label="liar")
            forge[liar] = (data.draw(FORGE, label="kind"), data.draw(st.sampled_from([1, 2, 2, 3, 8]), label="count"))
        w.tick(i, list(order), forge)
    last = n + 4
    for i in range(n, last + 1):  # honest frames only, then every fetch answered
        w.tick(i, list(SYMS), {})
    start = bars[SYMS[0]][0].open_time
    for s in SYMS:
        got = [b.open_time for b in w.emitted[s]]
        assert got, f"{s}: nothing emitted"
        want = [b.open_time for b in bars[s] if got[0] <= b.open_time <= bars[s][last].open_time]
        assert got == want, f"{s}: a real bar is missing or twice"
        assert got[0] <= start + 3 * STEP, f"{s}: the clock took too long to be trusted"
    assert not w.gaps
    # REST was asked for no more than the real bars (the warm-ups, and what the frames showed)
    assert w.fetched_bars <= len(SYMS) * (warmup + last + 1)
    assert w.seq.stats.gaps == 0


def test_the_forged_pair_moves_neither_the_clock_nor_another_symbol_nor_rest() -> None:
    """The issue's case: two back-to-back closed frames of one symbol dated five years ahead, with
    forged event times, in the middle of honest frames at live cadence."""
    bars = real_bars()
    w = World(bars, 3, 1.0)
    for i in range(20):
        w.tick(i, list(SYMS), {"SOLUSDT": ("forged_e", 2)} if i == 10 else {})
    st_ = w.seq.stats
    assert st_.future_bars == 2 and st_.future_by_symbol == {"SOLUSDT": 2} and st_.clock_ahead == 2
    assert w.seq.trusted_now() is not None and w.seq.trusted_now() <= w.now + 5_000
    for s in SYMS:
        assert [b.open_time for b in w.emitted[s]][-10:] == [b.open_time for b in bars[s][10:20]]
    assert st_.gaps == 0 and w.fetched_bars <= 3 * (3 + 20)


@pytest.mark.parametrize("rate", [1.0, 60.0, 2400.0])
def test_the_clock_fits_the_rate_and_ignores_outliers(rate: float) -> None:
    """Honest samples of one symbol with latency jitter: the fitted clock is within the tolerance of the
    truth, runs of forged samples do not move it, and nothing is believed before the rate is measured."""
    c = ExchangeClock(tolerance_ms=5_000.0)
    rng = random.Random(1)
    t0 = 1_679_061_360_000
    step_local = 500.0 / max(1.0, rate / 60)  # two frames a bar, at the simulator's speed
    unknown_at = None
    for k in range(300):
        loc = k * step_local + rng.uniform(0, 30)
        e = int(t0 + rate * k * step_local)
        if k in (100, 101, 102, 150, 151, 200):  # three forged frames in a row, then two, then one
            e += YEARS_5
        if c.limit_ms(loc) is None:
            unknown_at = k
        c.observe(e, loc)
        if c.known and e < t0 + YEARS_5:
            est = c.now_ms(loc)
            assert est is not None and abs(est - (t0 + rate * loc)) <= rate * 100, (k, est)
            lim = c.limit_ms(loc)
            assert lim is not None and e <= lim < t0 + rate * (loc + 6_000), (k, lim)
    assert unknown_at is not None and unknown_at < max(8, 2_000 / step_local)  # known within 8 frames or 2 s
    assert c.rate == rate if rate == 1.0 else abs(c.rate / rate - 1) < 0.02


def test_frames_read_in_a_burst_behind_a_busy_loop_do_not_make_honest_frames_look_ahead() -> None:
    """Three symbols at 120x real time; the loop is blocked for 8 s (twice the tolerance) and reads the
    frames queued meanwhile at once: every honest frame after it is believed."""
    c = ExchangeClock(tolerance_ms=5_000.0)
    t0, rate = 1_679_061_360_000, 120.0
    rejected = []
    for k in range(400):  # a frame of each symbol every 250 ms of local time
        sent = k * 250.0
        read = 20_000.0 if 20_000.0 - 8_000.0 <= sent < 20_000.0 else sent  # blocked from 12 s to 20 s
        for j, s in enumerate(SYMS):
            e = int(t0 + rate * sent)
            loc = read + 0.1 * j + (0.05 * k if read != sent else 0.0)
            c.observe(e, loc, s)
            lim = c.limit_ms(loc)
            if lim is not None and e > lim:
                rejected.append(k)
    assert c.known and not rejected


def test_bars_held_before_the_clock_was_known_go_out_when_it_is_even_if_no_frame_follows() -> None:
    """A stream that ends before the clock is known (a fast simulator): its held bars are not stranded."""
    bars = real_bars()
    seq = Sequencer(SYMS, step_ms=STEP, warmup_bars=0, bounded=True)
    now = 0
    for i in range(5):
        for s in SYMS:
            b = bars[s][i]
            now = b.open_time + STEP + 250
            assert seq.kline(kev(s, b, closed=True, e=now), None) == []  # no clock yet: held
    out = seq.clock_known(now, now + 5_000)
    got = {s: [o.bar.open_time for o in out if isinstance(o, Emit) and o.symbol == s] for s in SYMS}
    assert all(got[s] == [b.open_time for b in bars[s][:5]] for s in SYMS), got
    assert not [o for o in out if isinstance(o, (Fetch, Gap))]
