"""The one pipeline: bar -> online features -> window -> scorer -> signal rule -> ``Signal``.

Beside the features, the model's move forecaster (``engine/move.py``; none when the artifact has no
``move`` section) sees every bar the features accept, warm-up and already-signalled bars included,
and gives each signal its ``p_move`` and ``sigma_bp``; the rule turns ``p_move`` into the regime.

Live (``barsignal run``), replay and parity plug different bar sources into the same
:class:`Pipeline` (assembled by ``barsignal.node.build_node``). ``process(bar)`` handles one bar,
always through the scorer's batch-1 ``score``: there is no batched path (ONNX Runtime's
dynamic-batch graph differs from the batch-1 graph by up to 1 ulp, which would break float32-exact
parity, and a loop over ``score`` is what replay runs anyway).

A bar the features refuse (not finite, inconsistent, out of range, off the interval grid:
``BadMessage``) is dropped and counted (``stats.invalid``) without touching any state, live and in
replay alike, so parity skips it exactly as live did.

No I/O and no sockets here: the clock is injected (only for the latency breakdown, never for a
decision). Bars at or before ``last_signalled`` (a restart's warm-up) only feed the features: they
are neither scored nor signalled again, and the rule state is restored from the outbox instead.

The move forecaster's learned state (its online correction: ``MoveForecaster.persisted``) is stored
with the rule state (:attr:`Pipeline.rule_state` carries it in ``RuleState.move``). A restart
restores it in this order (``Node.restore``, live and in replay/parity alike): it is resumed before
the first warm-up bar, and resumed again after every bar at or before ``last_signalled``, so the
warm-up bars (already learned from by the run that stored it) rebuild the forecaster's window
without learning twice; after the last of them the correction is exactly the stored one, and the
bars after it learn from there (their first h outcomes are scored against forecasts the warm-up
recomputed with the stored correction: only the correction is stored, not the last h forecasts).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from barsignal.daemon.recent import BarRing
from barsignal.engine.move import MoveForecaster, tag_state
from barsignal.engine.scorer import Scorer
from barsignal.engine.signal import RuleState, Signal, SignalRule, signal_id
from barsignal.errors import BadMessage
from barsignal.features.bar import Bar

NAN = float("nan")
_NO_MOVE = (NAN, NAN)


class WindowFeatures(Protocol):
    """What the pipeline needs from ``barsignal.features.online.OnlineFeatures``."""

    def update(self, bar: Bar) -> np.ndarray | None:
        """Take one closed bar; return the (T, F) float32 window once warm, else None."""
        ...

    def rehearse(self, bar: Bar) -> None:
        """Run ``update(bar)`` and put every value back (keep-warm): nothing later can differ."""
        ...


@dataclass(slots=True)
class Model:
    """Everything a SIGHUP hot swap replaces at once: features (they carry the artifact's
    normalization), scorer, rule, and the artifact hash that signal ids carry."""

    features: WindowFeatures
    scorer: Scorer
    rule: SignalRule
    artifact_hash: str
    horizon: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    move: MoveForecaster | None = None  # the artifact's move forecaster (per symbol), if it has one


@dataclass(slots=True)
class PipelineStats:
    bars: int = 0
    warmup: int = 0  # bars with no window yet
    already_signalled: int = 0  # restart warm-up bars not signalled again
    out_of_order: int = 0  # bars not after the last one, ignored
    invalid: int = 0  # bars the features refused (BadMessage), dropped
    signals: int = 0


@dataclass(slots=True)
class Prepared:
    """A bar between :meth:`Pipeline.prepare` and :meth:`Pipeline.finish`: its window and timings."""

    bar: Bar
    window: np.ndarray
    recv_ns: int | None
    t0: int
    t1: int
    p_up: float = 0.0
    score_ns: int = 0
    move: tuple[float, float] = _NO_MOVE  # the forecaster's (p_move, sigma_bp) for this bar


class Pipeline:
    """bar -> features -> window -> scorer -> rule -> Signal. Bounded state; no I/O."""

    def __init__(self, symbol: str, model: Model, *, last_signalled: int | None = None, min_bars: int = 0,
                 clock_ns: Callable[[], int] = time.perf_counter_ns, keep_bars: int = 0) -> None:
        """``min_bars``: no signal before this many bars were fed (live: ``OnlineFeatures.bars_to_fetch``,
        so the first window is as exact as an uninterrupted run's). ``keep_bars``: recent bars kept for
        a hot swap's warm-up."""
        self.symbol = symbol
        self.min_bars = min_bars
        self.model = model
        self.last_signalled = last_signalled
        self.last_open_time: int | None = None
        self.warm = False  # the features have produced a window
        self.last_window: np.ndarray | None = None  # the newest window (a view: copy to keep)
        self.stats = PipelineStats()
        self._clock = clock_ns
        # The last bars seen, so a hot swap can warm up the new model's features (bounded).
        self.recent = BarRing(keep_bars)
        self._rehearsal: tuple[tuple[int, int], Any, int] | None = None  # (bar, rule id), rule copy, time
        self.move_out: tuple[float, float] = _NO_MOVE  # the forecaster's output for the newest bar
        self.move_hold: dict[str, Any] | None = None  # the restored move state, held through the warm-up

    # -- one bar -------------------------------------------------------------------------------
    def process(self, bar: Bar, recv_ns: int | None = None) -> Signal | None:
        """Process one closed bar; return its signal, or None during warm-up or for a bar already
        signalled. ``recv_ns`` is when its closing frame arrived (same clock), for the latency."""
        t0 = self._clock()
        window = self._features(bar)
        if window is None:
            return None
        t1 = self._clock()
        p_up = float(np.float32(self.model.scorer.score(window)))
        t2 = self._clock()
        sig = self._signal(bar, p_up, self.move_out)
        _stamp(sig, recv_ns, t0, t1, t2 - t1, t2, self._clock())
        return sig

    # -- one bar in three steps: a burst of many pipelines' bars, a replay chunk (node.compute_many)
    def prepare(self, bar: Bar, recv_ns: int | None = None) -> Prepared | None:
        """The features step of :meth:`process`: the bar's window (a copy: the next bar overwrites the
        view), or None where ``process`` returns None. Then :meth:`score_prepared` and :meth:`finish`."""
        t0 = self._clock()
        window = self._features(bar)
        if window is None:
            return None
        t1 = self._clock()
        return Prepared(bar, np.array(window, dtype=np.float32, copy=True), recv_ns, t0, t1, move=self.move_out)

    def score_prepared(self, p: Prepared) -> None:
        """The score step: the same batch-1 ``score`` call on the same window as :meth:`process`."""
        t1 = self._clock()
        p.p_up = float(np.float32(self.model.scorer.score(p.window)))
        p.score_ns = self._clock() - t1

    def finish(self, p: Prepared) -> Signal:
        """The rule step: the bar's signal, as :meth:`process` returns it (latency fields included)."""
        t2 = self._clock()
        sig = self._signal(p.bar, p.p_up, p.move)
        _stamp(sig, p.recv_ns, p.t0, p.t1, p.score_ns, t2, self._clock())
        return sig

    # -- keep-warm ------------------------------------------------------------------------------
    def rehearse(self) -> tuple[Signal, RuleState] | None:
        """Run the hot path and discard the results: the features on a synthetic next bar (their own
        state, every value put back: this stream's data is warm too), the move forecaster on the same
        bar (snapshot, update, restore), the scorer on the current window, a copy of the rule and a
        signal built from both, returned with the copy's state for the node's own rehearsal
        (:meth:`Node.rehearse`). Keep-warm (``daemon/keepwarm.py``) calls this just before a bar is
        due, so that the bar finds code and data hot. Nothing the signals depend on changes."""
        if self.last_window is None or not self.recent:
            return None
        last = self.recent[-1]
        key = (last.open_time, id(self.model.rule))
        if self._rehearsal is None or self._rehearsal[0] != key:  # a copy of the rule, once a bar
            step = last.open_time - self.recent[-2].open_time if len(self.recent) > 1 else 60_000
            self._rehearsal = key, copy.deepcopy(self.model.rule), last.open_time + step
        _, rule, t = self._rehearsal
        bar = Bar(t, last.open, last.high, last.low, last.close, last.volume, last.source)
        self.model.features.rehearse(bar)
        mv = self.model.move
        p_move, sigma = _NO_MOVE
        if mv is not None:
            snap = mv.snapshot()
            try:
                p_move, sigma = mv.update(bar)
            finally:
                mv.restore(snap)
        p_up = float(np.float32(self.model.scorer.score(self.last_window)))
        action = rule.update(p_up, p_move)
        known = p_move == p_move
        return Signal(id=signal_id(self.symbol, t, self.model.artifact_hash), symbol=self.symbol,
                      open_time=t, bar_open=last.open, bar_close=last.close, p_up=p_up, action=action,
                      artifact=self.model.artifact_hash, source=last.source, latency_us={},
                      p_move=p_move if known else None, sigma_bp=sigma if sigma == sigma else None,
                      regime=rule.state.regime if known else None), rule.state

    # -- hot swap ------------------------------------------------------------------------------
    def swap(self, model: Model) -> None:
        """Replace features, move forecaster, scorer, rule and artifact hash in one step; the rule
        resumes from the current rule state. The caller warms the new model's features and forecaster
        on ``self.recent`` first (see :func:`warm`)."""
        st = self.model.rule.state
        self.model = model
        move = self._move_state()  # the new forecaster's state, tagged with its artifact
        model.rule.state = st if move is None and st.move is None else replace(st, move=move)
        self.move_hold = None

    # -- internals -----------------------------------------------------------------------------
    def _features(self, bar: Bar) -> np.ndarray | None:
        if self.last_open_time is not None and bar.open_time <= self.last_open_time:
            self.stats.out_of_order += 1
            return None
        try:
            window = self.model.features.update(bar)  # refuses a bad bar before changing any state
        except BadMessage:
            self.stats.invalid += 1
            return None
        mv = self.model.move
        self.move_out = mv.update(bar) if mv is not None else _NO_MOVE  # a swap may drop the move head
        self.last_open_time = bar.open_time
        self.stats.bars += 1
        if self.recent.maxlen:
            self.recent.append(bar)
        self.last_window = window
        if window is not None:
            self.warm = True
        if self.last_signalled is not None and bar.open_time <= self.last_signalled:
            self.stats.already_signalled += 1
            if self.move_hold is not None and mv is not None:
                mv.resume(self.move_hold)  # a warm-up bar: learned from before the restart
            return None
        if window is None or self.stats.bars < self.min_bars:
            self.stats.warmup += 1
            return None
        return window

    def _signal(self, bar: Bar, p_up: float, move: tuple[float, float]) -> Signal:
        m = self.model
        p_move, sigma = move
        action = m.rule.update(p_up, p_move, self._move_state())
        self.last_signalled = bar.open_time
        self.stats.signals += 1
        known = p_move == p_move  # not NaN: JSON has no NaN, a signal carries None (null) instead
        return Signal(
            id=signal_id(self.symbol, bar.open_time, m.artifact_hash), symbol=self.symbol,
            open_time=bar.open_time, bar_open=bar.open, bar_close=bar.close, p_up=p_up, action=action,
            artifact=m.artifact_hash, source=bar.source, latency_us={},
            p_move=p_move if known else None, sigma_bp=sigma if sigma == sigma else None,
            regime=m.rule.state.regime if known else None,
        )

    @property
    def rule_state(self) -> RuleState:
        """The rule's state, with the move forecaster's persisted state tagged with the artifact
        (``RuleState.move``: one float for ``har_seasonal``, handed to the rule at each signal), as the
        outbox and the bar record store it."""
        return self.model.rule.state

    def _move_state(self) -> dict[str, Any] | None:
        mv = self.model.move
        d = mv.persisted() if mv is not None else None
        return None if d is None else tag_state(self.model.artifact_hash, d)


def _stamp(sig: Signal, recv_ns: int | None, t0: int, t1: int, score_ns: int, t2: int, t3: int) -> None:
    """The signal's latency fields (µs): frame -> bar (t0), features (t0..t1), score, rule (t2..t3)."""
    sig.latency_us.update(recv_to_bar=(t0 - recv_ns) / 1e3 if recv_ns is not None else 0.0,
                          features=(t1 - t0) / 1e3, score=score_ns / 1e3, emit=(t3 - t2) / 1e3)


def warm(features: WindowFeatures, bars: Iterable[Bar], move: MoveForecaster | None = None) -> bool:
    """Feed ``bars`` to fresh features (and the model's move forecaster, as the pipeline does); True
    when they produce a window (the model is warm)."""
    ready = False
    for b in bars:
        ready = features.update(b) is not None
        if move is not None:
            move.update(b)
    return ready
