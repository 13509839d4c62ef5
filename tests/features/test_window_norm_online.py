"""RollingWindow (zero copy), Normalizer (round trip, row == batch), OnlineFeatures (== batch windows)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _data import SPOT_1M, features_of

from barsignal.errors import ArtifactError
from barsignal.features import spec
from barsignal.features.bar import INTERVAL_MS, BarFrame
from barsignal.features.batch import compute_with_ready, window_ends
from barsignal.features.normalize import Normalizer
from barsignal.features.online import OnlineFeatures
from barsignal.features.window import RollingWindow


def test_window_is_a_zero_copy_c_contiguous_view_of_the_last_rows() -> None:
    w = RollingWindow(5, 3)
    assert not w.ready
    rows = [np.full(3, i, dtype=np.float32) for i in range(13)]
    for i, r in enumerate(rows):
        w.push(r)
        v = w.view()
        assert v.shape == (5, 3) and v.dtype == np.float32 and v.flags.c_contiguous
        assert np.shares_memory(v, w._buf) and v.base is w._buf  # a view, not a copy
        want = np.zeros((5, 3), dtype=np.float32)
        last = np.array(rows[max(0, i - 4): i + 1])
        want[5 - len(last):] = last
        assert np.array_equal(v, want)
        assert w.ready == (i >= 4)
    w.reset()
    assert not w.ready and not w.view().any()


def test_window_shape_comes_from_the_caller() -> None:
    w = RollingWindow(7, 2)
    assert w.view().shape == (7, 2)
    with pytest.raises(ValueError):
        RollingWindow(0, 33)


@pytest.fixture(scope="module")
def fitted() -> tuple[Normalizer, np.ndarray]:
    _, X, ready = features_of(SPOT_1M[2])
    split = len(X) * 3 // 4
    return Normalizer.fit(X[:split][ready[:split]]), X


def test_normalizer_round_trip_through_json(fitted) -> None:
    norm, X = fitted
    d = json.loads(json.dumps(norm.to_dict()))
    assert d["schema_hash"] == spec.schema_hash() and d["method"] == "robust" and d["clip"] == 5.0
    back = Normalizer.from_dict(d)
    assert np.array_equal(back.center, norm.center) and np.array_equal(back.scale, norm.scale)
    assert back.clip == norm.clip
    assert np.array_equal(back.transform(X[-500:]), norm.transform(X[-500:]))


def test_normalizer_row_equals_batch_and_clips(fitted) -> None:
    norm, X = fitted
    Z = norm.transform(X)
    assert Z.dtype == np.float32 and np.isfinite(Z).all()
    assert Z.max() <= norm.clip and Z.min() >= -norm.clip
    assert (np.abs(Z) == norm.clip).any()  # real data has outliers beyond the bound
    out = np.empty(spec.N_FEATURES, dtype=np.float32)
    for i in range(0, len(X), 997):
        assert np.array_equal(norm.transform_row(X[i], out=out), Z[i])
        assert np.array_equal(norm.transform_row(X[i]), Z[i])
    # robust statistics: the median row maps to ~0
    assert np.abs(norm.transform(norm.center[None, :])).max() == 0.0


def test_normalizer_refuses_other_schema_and_malformed(fitted) -> None:
    norm, _ = fitted
    d = norm.to_dict()
    with pytest.raises(ArtifactError, match="does not match"):
        Normalizer.from_dict({**d, "schema_hash": "0" * 64})
    with pytest.raises(ArtifactError, match="malformed"):
        Normalizer.from_dict({**d, "center": d["center"][:-1]})
    with pytest.raises(ArtifactError, match="malformed"):
        Normalizer.from_dict({k: v for k, v in d.items() if k != "scale"})
    with pytest.raises(ValueError):
        Normalizer.fit(np.zeros((10, 5)))


def test_schema_hash_is_stable_and_covers_parameters(monkeypatch) -> None:
    h = spec.schema_hash()
    assert h == spec.schema_hash() and len(h) == 64
    monkeypatch.setitem(spec.PARAMS, "rsi", [7, 14])
    assert spec.schema_hash() != h


@pytest.mark.parametrize("policy", ["continue", "reset"])
def test_online_windows_equal_batch_windows(fitted, policy: str) -> None:
    norm, _ = fitted
    frame_all, _, _ = features_of(SPOT_1M[0])
    # a slice around the real 284-bar maintenance gap of 2021-04-25
    gap = int(np.flatnonzero(np.diff(frame_all.open_time) > INTERVAL_MS)[0]) + 1
    frame = frame_all.slice(gap - 400, gap + 400)
    T = 30
    X, ready = compute_with_ready(frame, policy)
    Z = norm.transform(X)
    ends = set(window_ends(ready, T).tolist())
    online = OnlineFeatures(norm, T, policy)
    got_any = 0
    for i, bar in enumerate(frame.bars()):
        w = online.update(bar)
        if i == 400:
            assert online.last_gap == 284
        if i in ends:
            assert w is not None and w.shape == (T, spec.N_FEATURES) and w.dtype == np.float32
            assert np.array_equal(w, Z[i - T + 1: i + 1])
            got_any += 1
        else:
            assert w is None
    # "continue" runs across the gap; "reset" warms up again and loses WARMUP_BARS + T - 1 windows
    first = spec.WARMUP_BARS + T - 1  # bars until the first window
    expected = 800 - first + 1 if policy == "continue" else 2 * (400 - first + 1)
    assert got_any == expected
    assert online.bars_to_fetch == spec.RESTART_WARMUP_BARS + T - 1


def test_window_ends_runs() -> None:
    r = np.array([0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=bool)
    assert window_ends(r, 3).tolist() == [3, 7, 8]
    assert window_ends(r, 1).tolist() == [1, 2, 3, 5, 6, 7, 8]


def test_online_on_a_synthetic_flat_stream_never_emits_non_finite() -> None:
    n = 200
    t = 1_700_000_000_000 + INTERVAL_MS * np.arange(n, dtype=np.int64)
    p = np.full(n, 5.0)
    frame = BarFrame(t, p, p, p, p, np.zeros(n))
    X, ready = compute_with_ready(frame)
    norm = Normalizer.fit(X[ready])
    online = OnlineFeatures(norm, 10)
    outs = [online.update(b) for b in frame.bars()]
    assert all(o is None or np.isfinite(o).all() for o in outs)
    assert outs[-1] is not None
