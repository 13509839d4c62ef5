"""The student move head experiment on a real slice: finite metrics against har_seasonal on the same
windows, and no fit on a test bar."""

from __future__ import annotations

import math

import numpy as np
import pytest

from barsignal.model import move as mv
from barsignal.model import move_head
from barsignal.model.dataset import DatasetSpec, build, load_segments
from tests.conftest import FUTURES_1M, REPO

SLICE = [str(p) for p in FUTURES_1M[:6]]  # six real, contiguous days of 1m bars
ARTIFACT = REPO / "engine" / "default_artifact"


@pytest.fixture(scope="module")
def result():
    return move_head.run(SLICE, [], ARTIFACT, [20.0], train_windows=1500, val_windows=500,
                         heads=["frozen", "finetuned"], epochs_frozen=3, epochs_finetuned=1, n_boot=20)


def test_every_head_is_scored_on_validation_and_test_with_finite_metrics(result):
    r = result["thresholds"]["20.0"]
    assert set(r["periods"]) == {"validation", "test"}
    for rep in r["periods"].values():
        sc = rep["scores"]
        assert set(sc) == {"har_seasonal", "student_frozen", "student_frozen+har", "student_finetuned",
                           "student_finetuned+har"}
        assert rep["windows"] > 100 and 0.0 < rep["rate"] < 1.0
        for name, s in sc.items():
            for m in ("log_loss", "brier", "roc_auc", "ece"):
                assert math.isfinite(s[m]["value"]), (name, m)
            assert 0.0 < s["log_loss"]["value"] < 2.0
            if name != "har_seasonal":
                assert math.isfinite(s["log_loss_diff"]["value"])
    for h in r["heads"].values():
        assert 1 <= h["best_epoch"] <= len(h["val_log_loss_by_epoch"])


def test_the_scored_windows_are_har_seasonals_own(result):
    """Same t, same labels: the comparison holds every test window har_seasonal is defined on."""
    segs = load_segments(SLICE)
    _, norm = move_head.artifact_student(ARTIFACT)
    sp = build(segs, DatasetSpec(window=30, horizon=move_head.HORIZON), normalizer=norm)
    rep = result["thresholds"]["20.0"]["periods"]["test"]
    y = mv.exceed(sp.test_all, 20.0)
    assert rep["windows"] + rep["dropped_warming"] == len(sp.test_all)
    fitted = mv.fit(mv.MoveBars.of(segs), sp.train, sp.val_all, move_head.HORIZON, 20.0)
    p, _ = mv.har_predict(fitted["forecaster"], move_head.HORIZON, 20.0, mv.MoveBars.of(segs), sp.test_all.ends)
    ok = np.isfinite(p)
    assert rep["rate"] == pytest.approx(float(y[ok].mean()))
    assert rep["scores"]["har_seasonal"]["log_loss"]["value"] == pytest.approx(
        float(np.mean(-(y[ok] * np.log(p[ok]) + (1 - y[ok]) * np.log1p(-p[ok])))), rel=1e-6)


@pytest.mark.parametrize("train_head", [move_head.train_frozen, move_head.train_finetuned])
def test_test_windows_are_refused_for_fitting(train_head):
    segs = load_segments(SLICE)
    model, norm = move_head.artifact_student(ARTIFACT)
    sp = build(segs, DatasetSpec(window=30, horizon=move_head.HORIZON), normalizer=norm)
    start = int(sp.info["test_start_ms"])
    leak = sp.test_all.every(200)
    y = mv.exceed(leak, 20.0)
    with pytest.raises(ValueError, match="test split"):
        train_head(model, leak, y, sp.val_all.every(100), mv.exceed(sp.val_all.every(100), 20.0), start)
    with pytest.raises(ValueError, match="early-stopping set"):
        train_head(model, sp.train.every(200), mv.exceed(sp.train.every(200), 20.0), leak, y, start)
