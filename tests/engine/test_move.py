"""The move forecaster (kind rvol_logistic) on real bars, and the artifact's ``move`` section."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barsignal.engine import move_persistence as mp
from barsignal.engine.artifact import MANIFEST, load_artifact
from barsignal.engine.metrics import roc_auc
from barsignal.engine.move import MoveSpec
from barsignal.engine.move_registry import REGISTRY, build
from barsignal.errors import ArtifactError
from barsignal.features.bar import Bar
from tests.engine.conftest import SPOT_FILE

H, C = 15, 10.0


def _bars(n: int, start: int = 0) -> list[Bar]:
    rows = json.loads(SPOT_FILE.read_text())[start:start + n]
    return [Bar(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]), "file") for r in rows]


@pytest.fixture(scope="module")
def train() -> list[Bar]:
    return _bars(4000)


@pytest.fixture(scope="module")
def later() -> list[Bar]:  # bars after the fitting ones: out of sample
    return _bars(4000, start=20_000)


@pytest.fixture(scope="module")
def spec(train: list[Bar]) -> MoveSpec:
    return mp.fit(train, H, C)


def test_fit_matches_the_base_rate_and_ranks_out_of_sample(spec: MoveSpec, train: list[Bar],
                                                           later: list[Bar]) -> None:
    # maximum likelihood with an intercept: the mean fitted p equals the training exceedance rate
    f = build(spec)
    p = np.array([f.update(b)[0] for b in train])
    y = mp.exceeds([b.close for b in train], H, C)
    ok = np.isfinite(p) & np.isfinite(y)
    assert abs(p[ok].mean() - y[ok].mean()) < 1e-6
    assert spec.params["b"] > 0  # more recent volatility, a larger coming move
    # on later bars, the same forecast ranks the coming move better than chance
    f.reset()
    p2 = np.array([f.update(b)[0] for b in later])
    y2 = mp.exceeds([b.close for b in later], H, C)
    ok2 = np.isfinite(p2) & np.isfinite(y2)
    assert roc_auc(y2[ok2], p2[ok2]) > 0.55


def test_nan_while_warming_then_finite(spec: MoveSpec, train: list[Bar]) -> None:
    f = build(spec)
    out = [f.update(b) for b in train[: mp.WINDOW + 5]]
    assert all(math.isnan(p) and math.isnan(s) for p, s in out[: mp.WINDOW])  # WINDOW + 1 bars for WINDOW returns
    assert all(0.0 < p < 1.0 and s > 0.0 for p, s in out[mp.WINDOW:])
    f.reset()
    assert math.isnan(f.update(train[0])[0])


def test_values_are_the_formula(spec: MoveSpec, train: list[Bar]) -> None:
    f = build(spec)
    bars = train[: mp.WINDOW + 1]
    p, s = [f.update(b) for b in bars][-1]
    c = np.array([b.close for b in bars])
    rv = float(np.sum(np.diff(np.log(c)) ** 2))
    assert p == pytest.approx(1 / (1 + math.exp(-(spec.params["a"] + spec.params["b"] * math.log(rv)))), rel=1e-12)
    assert s == pytest.approx(1e4 * math.sqrt(rv / mp.WINDOW * H), rel=1e-12)


def test_depends_only_on_the_last_window(spec: MoveSpec, train: list[Bar]) -> None:
    """A forecaster warmed on the last WINDOW + 1 bars forecasts bit-identically to one that saw them all
    (fsum: no drift from earlier history), so a restart forecasts as an uninterrupted run."""
    whole, fresh = build(spec), build(spec)
    for b in train[:500]:
        last = whole.update(b)
    for b in train[500 - mp.WINDOW - 1:500]:
        got = fresh.update(b)
    assert got == last


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(0, 200), k=st.integers(1, 20), seed=st.integers(0, 10_000))
def test_snapshot_restore_changes_nothing(spec: MoveSpec, train: list[Bar], cut: int, k: int, seed: int) -> None:
    """Any bars rehearsed between a snapshot and its restore leave every later forecast unchanged."""
    rng = np.random.default_rng(seed)
    ref, f = build(spec), build(spec)
    want = [ref.update(b) for b in train[:260]]
    got = [f.update(b) for b in train[:cut]]
    snap = f.snapshot()
    for _ in range(k):
        b = train[cut]
        f.update(Bar(b.open_time + 60_000, b.open, b.high, b.low, b.close * float(rng.uniform(0.9, 1.1)), b.volume))
    f.restore(snap)
    got += [f.update(b) for b in train[cut:260]]
    assert np.array_equal(np.array(got), np.array(want), equal_nan=True)


def test_deterministic(spec: MoveSpec, train: list[Bar]) -> None:
    a, b = build(spec), build(spec)
    assert np.array_equal(np.array([a.update(x) for x in train[:300]]), np.array([b.update(x) for x in train[:300]]),
                          equal_nan=True)


def test_rvol_logistic_has_nothing_to_persist(spec: MoveSpec, train: list[Bar]) -> None:
    """Every value comes from the bars: nothing is stored across a restart, and resume changes nothing."""
    a, b = build(spec), build(spec)
    for x in train[:200]:
        a.update(x), b.update(x)
    assert a.persisted() is None
    a.resume({"delta": 1.0})
    assert np.array_equal(np.array([a.update(x) for x in train[200:300]]),
                          np.array([b.update(x) for x in train[200:300]]), equal_nan=True)


def test_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="params a and b"):
        build(MoveSpec(H, C, mp.KIND, {"a": 1.0}))
    with pytest.raises(ValueError, match="params a and b"):
        build(MoveSpec(H, C, mp.KIND, {"a": 1.0, "b": 2.0, "c": 3.0}))
    with pytest.raises(ValueError, match="unknown kind 'garch'"):
        build(MoveSpec(H, C, "garch", {}))
    assert REGISTRY[mp.KIND] is mp.RvolLogistic


def test_fit_needs_both_outcomes(train: list[Bar]) -> None:
    with pytest.raises(ValueError, match="not both kinds"):
        mp.fit(train[:300], H, 10_000.0)  # no 100 % move in 15 minutes


# -- the artifact's move section ------------------------------------------------------------------


def _with_move(src: Path, dest: Path, move: object) -> Path:
    shutil.copytree(src, dest)
    m = json.loads((dest / MANIFEST).read_text())
    if move is None:
        m.pop("move", None)
    else:
        m["move"] = move
    (dest / MANIFEST).write_text(json.dumps(m))
    return dest


def test_artifact_exposes_a_verified_move(tmp_path: Path, spec: MoveSpec, bundled: Path) -> None:
    art = load_artifact(_with_move(bundled, tmp_path / "a", spec.to_manifest()))
    assert art.move == spec
    assert load_artifact(_with_move(bundled, tmp_path / "b", None)).move is None  # no section: no forecast


@pytest.mark.parametrize("move, match", [
    ({"horizon": 15, "threshold_bp": 10.0, "kind": "garch", "params": {}}, "unknown kind 'garch'"),
    ({"horizon": 0, "threshold_bp": 10.0, "kind": mp.KIND, "params": {"a": 1, "b": 1}}, "horizon must be >= 1"),
    ({"horizon": 15, "kind": mp.KIND, "params": {"a": 1, "b": 1}}, "threshold_bp"),
    ({"horizon": 15, "threshold_bp": 10.0, "kind": mp.KIND, "params": {"a": "x", "b": 1}}, "params a and b"),
    ([15, 10.0], "'move' must be an object"),
])
def test_a_malformed_move_section_is_an_artifact_error(tmp_path: Path, bundled: Path, move: object,
                                                       match: str) -> None:
    with pytest.raises(ArtifactError, match=match) as e:
        load_artifact(_with_move(bundled, tmp_path / "a", move))
    assert MANIFEST in str(e.value)
