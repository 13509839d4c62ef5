"""Invariants of FeatureEngine on generated bar sequences, flat, zero-volume and gapped ones included."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barsignal.errors import BadMessage, ConfigError
from barsignal.features.bar import INTERVAL_MS, Bar, BarFrame
from barsignal.features.batch import compute, compute_with_ready
from barsignal.features.engine import FeatureEngine
from barsignal.features.spec import N_FEATURES, WARMUP, WARMUP_BARS

T0 = 1_600_000_020_000 - 1_600_000_020_000 % INTERVAL_MS

# one step: (kind, move, gap, volume). kind 0 normal, 1 flat (h == l == o == c), 2 repeat previous bar
_step = st.tuples(
    st.sampled_from([0, 0, 0, 1, 2]),
    st.floats(-0.02, 0.02, allow_nan=False),
    st.sampled_from([0] * 12 + [1, 3, 250]),
    st.sampled_from([0.0, 0.0, 1e-300, 1e-8, 0.5, 3.0, 250.0, 1e17]),
    st.floats(0.0, 0.01, allow_nan=False),
)


@st.composite
def bar_frames(draw, min_size: int = 1, max_size: int = 260) -> BarFrame:
    steps = draw(st.lists(_step, min_size=min_size, max_size=max_size))
    price = draw(st.sampled_from([2e-12, 0.001234, 1.0, 27_345.67, 64_000.0, 5e11]))
    t = T0
    rows = []
    prev = None
    for kind, move, gap, vol, wick in steps:
        t += (gap + 1) * INTERVAL_MS if rows else 0
        if kind == 2 and prev is not None:
            rows.append((t, *prev[1:]))
            continue
        o = price
        c = min(max(price * math.exp(move), 1e-12), 1e12)
        if kind == 1:
            o = c = h = l = price
        else:
            h = min(max(o, c) * (1 + wick), 1e12)
            l = max(min(o, c) * (1 - wick / 2), 1e-12)
            c = min(max(c, l), h)
        price = c
        prev = (t, o, h, l, c, vol)
        rows.append(prev)
    a = np.array(rows, dtype=np.float64)
    return BarFrame(a[:, 0].astype(np.int64), *(np.ascontiguousarray(a[:, k]) for k in range(1, 6)))


def _incremental(frame: BarFrame, policy: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    eng = FeatureEngine(policy)
    X = np.empty((len(frame), N_FEATURES))
    ready = np.empty(len(frame), dtype=bool)
    gaps = []
    for i, bar in enumerate(frame.bars()):
        X[i] = eng.update(bar)
        ready[i] = eng.ready
        gaps.append(eng.last_gap)
    return X, ready, gaps


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(bar_frames(), st.sampled_from(["continue", "reset"]))
def test_incremental_equals_batch_bit_for_bit_and_finite(frame: BarFrame, policy: str) -> None:
    X, ready = compute_with_ready(frame, policy)
    Y, ready_inc, gaps = _incremental(frame, policy)
    assert X.dtype == np.float64 and X.shape == (len(frame), N_FEATURES)
    assert np.array_equal(X.view(np.int64), Y.view(np.int64))  # bit for bit, -0.0 included
    assert np.array_equal(ready, ready_inc)
    assert np.isfinite(X).all()
    expected_gaps = [0] + [int(d) // INTERVAL_MS - 1 for d in np.diff(frame.open_time)]
    assert gaps == expected_gaps
    # bounded features stay in their ranges
    for k in (10, 19, 20, 21, 22, 26):
        assert (X[:, k] >= 0).all() and (X[:, k] <= 1 + 1e-12).all()
    assert (X[:, 23] <= 0).all() and (X[:, 23] >= -1 - 1e-12).all()


@SETTINGS
@given(bar_frames(min_size=2), st.data())
def test_reset_then_replay_equals_fresh(frame: BarFrame, data) -> None:
    cut = data.draw(st.integers(1, len(frame) - 1))
    eng = FeatureEngine()
    for bar in frame.slice(0, cut).bars():
        eng.update(bar)
    eng.reset()
    assert not eng.ready and eng.bars_seen == 0
    replay = np.array([eng.update(b).copy() for b in frame.bars()])
    fresh = compute(frame)
    assert np.array_equal(replay.view(np.int64), fresh.view(np.int64))


@settings(max_examples=25, deadline=None)
@given(bar_frames(min_size=120, max_size=200))
def test_reset_policy_warms_up_again_after_a_gap(frame: BarFrame) -> None:
    _, ready = compute_with_ready(frame, "reset")
    gap_at = np.flatnonzero(np.diff(frame.open_time) > INTERVAL_MS) + 1
    for g in gap_at:
        assert not ready[g]
    # ready exactly when WARMUP_BARS bars have been seen since the start or the last gap
    start = 0
    for i in range(len(frame)):
        if i in set(gap_at.tolist()):
            start = i
        assert ready[i] == (i - start + 1 >= WARMUP_BARS)


def test_flat_zero_volume_sequence_has_defined_values() -> None:
    n = 300
    t = T0 + INTERVAL_MS * np.arange(n, dtype=np.int64)
    p = np.full(n, 100.0)
    X = compute(BarFrame(t, p, p, p, p, np.zeros(n)))
    assert np.isfinite(X).all()
    last = X[-1]
    assert last[10] == 0.5  # close_pos on h == l
    assert last[28] == 0.5  # %B of a collapsed band
    for k in (0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18, 24, 29, 30, 31, 32):
        assert last[k] == 0.0, k
    # TA-Lib's conventions for an empty range / no movement: 0
    assert last[19] == last[20] == last[21] == last[22] == last[23] == last[26] == 0.0


def test_warmup_table_matches_first_nonzero_values() -> None:
    """Before its declared warm-up a feature is 0.0; at it, the feature is defined (non-zero here)."""
    rng = np.random.default_rng(7)
    n = 150
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    o = np.r_[100.0, c[:-1]]
    h = np.maximum(o, c) * (1 + rng.uniform(0.0001, 0.002, n))
    l = np.minimum(o, c) * (1 - rng.uniform(0.0001, 0.002, n))
    v = rng.uniform(1, 10, n)
    X = compute(BarFrame(T0 + INTERVAL_MS * np.arange(n, dtype=np.int64), o, h, l, c, v))
    for k, w in enumerate(WARMUP):
        assert (X[: w - 1, k] == 0.0).all(), k
        assert X[w - 1, k] != 0.0, k


def test_bad_bars_raise_and_leave_state_untouched() -> None:
    eng = FeatureEngine()
    eng.update(Bar(T0, 10.0, 11.0, 9.0, 10.5, 1.0))
    row = eng.update(Bar(T0 + INTERVAL_MS, 10.5, 11.0, 10.0, 10.8, 2.0)).copy()
    for bad in (Bar(T0 + INTERVAL_MS, 10.5, 11.0, 10.0, 10.8, 2.0),      # duplicate
                Bar(T0, 10.5, 11.0, 10.0, 10.8, 2.0),                       # out of order
                Bar(T0 + INTERVAL_MS + 1000, 10.5, 11.0, 10.0, 10.8, 2.0),  # off the grid
                Bar(T0 + 2 * INTERVAL_MS, 10.0, 9.0, 10.0, 10.0, 1.0),      # high < low
                Bar(T0 + 2 * INTERVAL_MS, 10.0, 11.0, 9.0, float("nan"), 1.0),
                Bar(T0 + 2 * INTERVAL_MS, 10.0, float("inf"), 9.0, 10.0, 1.0),
                Bar(T0 + 2 * INTERVAL_MS, 10.0, 11.0, 9.0, 10.0, -1.0),
                Bar(T0 + 2 * INTERVAL_MS, 0.0, 11.0, 0.0, 10.0, 1.0),
                Bar(T0 + 2 * INTERVAL_MS, 10.0, 11.0, 9.0, 10.0, 1e30)):
        with pytest.raises(BadMessage):
            eng.update(bad)
    assert eng.bars_seen == 2 and eng.last_open_time == T0 + INTERVAL_MS
    fresh = FeatureEngine()
    fresh.update(Bar(T0, 10.0, 11.0, 9.0, 10.5, 1.0))
    assert np.array_equal(fresh.update(Bar(T0 + INTERVAL_MS, 10.5, 11.0, 10.0, 10.8, 2.0)), row)
    nxt = Bar(T0 + 2 * INTERVAL_MS, 10.8, 11.2, 10.6, 11.0, 3.0)
    assert np.array_equal(eng.update(nxt), fresh.update(nxt))


def test_unknown_gap_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gap_policy"):
        FeatureEngine("skip")


def test_state_is_bounded() -> None:
    """The deques have fixed lengths: state size after 5,000 bars equals that after 200."""
    import sys

    def size(e: FeatureEngine) -> int:
        return sum(sys.getsizeof(x) for x in vars(e).values())

    rng = np.random.default_rng(1)
    n = 5000
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    f = BarFrame(T0 + INTERVAL_MS * np.arange(n, dtype=np.int64), c, c * 1.001, c * 0.999, c, np.ones(n))
    eng = FeatureEngine()
    sizes = []
    for i, bar in enumerate(f.bars()):
        eng.update(bar)
        if i in (199, n - 1):
            sizes.append(size(eng))
    assert sizes[0] == sizes[1]
