"""``OnlineFeatures.rehearse`` (keep-warm runs it between bars): any bar rehearsed, at any point of
any generated sequence, leaves every value the stream holds as it was, so the windows that follow
are bit-identical to those of a stream that never rehearsed."""

from __future__ import annotations

from collections import deque

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_props import bar_frames

from barsignal.engine.move import MoveSpec
from barsignal.engine.move_registry import build
from barsignal.errors import BadMessage
from barsignal.features.bar import INTERVAL_MS, Bar
from barsignal.features.normalize import Normalizer
from barsignal.features.online import OnlineFeatures
from barsignal.features.spec import N_FEATURES


def _state(f: OnlineFeatures) -> list:
    """Every value the stream holds, deque contents and arrays included."""
    e = f.engine
    vals = []
    for k, v in sorted(e.__dict__.items()):
        if isinstance(v, deque):
            vals.append((k, id(v), list(v)))
        elif isinstance(v, np.ndarray):
            vals.append((k, id(v), v.tobytes()))
        elif isinstance(v, list):
            vals.append((k, id(v), list(v)))
        else:
            vals.append((k, v))
    w = f.window
    return [vals, w._pos, w.count, w._buf.tobytes(), id(w._buf)]


NORM = Normalizer(np.zeros(N_FEATURES), np.full(N_FEATURES, 0.01), clip=5.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=st.one_of(bar_frames(min_size=1, max_size=60), bar_frames(min_size=150, max_size=260)),
       policy=st.sampled_from(["continue", "reset"]), every=st.integers(1, 7),
       kind=st.sampled_from(["next", "gap", "stale", "bad"]))
def test_rehearsing_any_bar_changes_nothing(frame, policy, every, kind):
    plain, rehearsed = OnlineFeatures(NORM, 12, policy), OnlineFeatures(NORM, 12, policy)
    windows = [0]  # rehearsals that pushed a row into the window (the engine was warm)
    for i, bar in enumerate(frame.bars()):
        if i % every == 0 and rehearsed.engine.last_open_time is not None:
            t = rehearsed.engine.last_open_time
            fake = {"next": Bar(t + INTERVAL_MS, bar.open, bar.high, bar.low, bar.close, bar.volume),
                    "gap": Bar(t + 5 * INTERVAL_MS, bar.open, bar.high, bar.low, bar.close, bar.volume),
                    "stale": Bar(t, bar.open, bar.high, bar.low, bar.close, bar.volume),
                    "bad": Bar(t + INTERVAL_MS, bar.open, bar.low * 0.5, bar.high * 2, bar.close, bar.volume)}[kind]
            before = _state(rehearsed)
            pushed = []
            push = rehearsed.window.push
            rehearsed.window.push = lambda row, pushed=pushed, push=push: (pushed.append(1), push(row))[-1]
            rehearsed.rehearse(fake)
            del rehearsed.window.push
            assert _state(rehearsed) == before
            windows[0] += bool(pushed)
        try:
            a = plain.update(bar)
        except BadMessage:
            a = "bad"
        try:
            b = rehearsed.update(bar)
        except BadMessage:
            b = "bad"
        if isinstance(a, np.ndarray):
            assert isinstance(b, np.ndarray) and a.tobytes() == b.tobytes()
        else:
            assert not isinstance(b, np.ndarray) and a == b  # both None (warming up) or both refused
    assert _values(plain) == _values(rehearsed)
    if len(frame) >= 150 and kind == "next" and every == 1 and policy == "continue":
        assert windows[0] > 0  # the long sequences rehearse with a warm engine too


def test_the_long_sequences_reach_a_warm_engine():
    from barsignal.features.spec import WARMUP_BARS

    assert WARMUP_BARS < 150  # bar_frames(min_size=150) above warms the engine up


def _values(f: OnlineFeatures) -> list:
    """``_state`` without object identities: what two streams fed the same bars must share."""
    vals, *rest = _state(f)
    return [[v[::2] if len(v) == 3 else v for v in vals], *rest[:-1]]


def test_rehearse_runs_the_update_on_the_real_state():
    """The rehearsal is not a no-op: while it runs, the stream's own deques hold the rehearsed bar."""
    f = OnlineFeatures(NORM, 12)
    t = 1_600_000_020_000 - 1_600_000_020_000 % INTERVAL_MS
    for i in range(150):
        f.update(Bar(t + i * INTERVAL_MS, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 10.0))
    seen = []
    real_compute = f.engine._compute

    def spy(*args):
        seen.append(list(f.engine._c99)[-1])
        out = real_compute(*args)
        seen.append(list(f.engine._c99)[-1])
        return out

    f.engine._compute = spy
    f.rehearse(Bar(t + 150 * INTERVAL_MS, 1.0, 2.0, 0.5, 1.5, 1.0))
    del f.engine._compute
    assert seen == [249.5, 1.5]  # the real close deque took the rehearsed close, then got it back
    assert list(f.engine._c99)[-1] == 249.5


# Arbitrary (not fitted) parameters: the property holds for any a and b.
_MOVE = MoveSpec(15, 10.0, "rvol_logistic", {"a": 1.5, "b": 0.25})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=st.one_of(bar_frames(min_size=1, max_size=60), bar_frames(min_size=60, max_size=160)),
       every=st.integers(1, 7), kind=st.sampled_from(["next", "gap", "stale"]), times=st.integers(1, 3))
def test_rehearsing_the_move_forecaster_changes_nothing(frame, every, kind, times):
    """The pipeline's rehearsal of the move forecaster (snapshot, update on the rehearsed bar, restore),
    any number of times at any point: every later forecast is bit-identical to a plain run's."""
    plain, rehearsed = build(_MOVE), build(_MOVE)
    got, want = [], []
    last = None
    for i, bar in enumerate(frame.bars()):
        if i % every == 0 and last is not None:
            t = last.open_time
            fake = {"next": Bar(t + INTERVAL_MS, bar.open, bar.high, bar.low, bar.close, bar.volume),
                    "gap": Bar(t + 5 * INTERVAL_MS, bar.open, bar.high, bar.low, bar.close, bar.volume),
                    "stale": Bar(t, bar.open, bar.high, bar.low, bar.close, bar.volume)}[kind]
            before = rehearsed.snapshot()
            for _ in range(times):
                snap = rehearsed.snapshot()
                rehearsed.update(fake)
                rehearsed.restore(snap)
            assert rehearsed.snapshot() == before
        want.append(plain.update(bar))
        got.append(rehearsed.update(bar))
        last = bar
    assert np.array_equal(np.array(got), np.array(want), equal_nan=True)
