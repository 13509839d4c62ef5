"""engine.metrics (the one ROC-AUC, day-block bootstrap, verdicts) and model.baselines on real bars."""

from __future__ import annotations

import json

import numpy as np
import pytest

from barsignal.engine import metrics as em
from barsignal.model.dataset import DatasetSpec, build, load_segments
from tests.conftest import FUTURES_1M


@pytest.fixture(scope="module")
def fut_splits():
    return build(load_segments(FUTURES_1M[:6]), DatasetSpec(window=30, horizon=15))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    d = pos[:, None] - neg[None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def test_auc_is_the_pairwise_probability_with_ties_counted_half(rng) -> None:
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + 0.3 * y, 1)  # many tied scores
    assert em.roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)
    assert em.roc_auc(y, -s) == pytest.approx(1 - _pairwise_auc(y, s), abs=1e-12)
    assert np.isnan(em.roc_auc(np.ones(5), np.arange(5.0)))


def test_weighted_auc_equals_auc_of_the_repeated_sample(rng) -> None:
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + 0.5 * y
    w = rng.integers(0, 4, 200)
    rep = np.repeat(np.arange(200), w)
    assert em.roc_auc(y, s, w) == pytest.approx(em.roc_auc(y[rep], s[rep]), abs=1e-12)


def test_day_bootstrap_resamples_whole_days_and_verdicts_need_the_ci(rng) -> None:
    days = np.repeat(np.arange(30), 100)
    boot = em.DayBootstrap(days, 50, seed=1)
    for w in boot:  # every sample of a day gets the same weight, and N days are drawn
        per_day = w.reshape(30, 100)
        assert (per_day == per_day[:, :1]).all() and per_day[:, 0].sum() == 30
    y = rng.integers(0, 2, 3000).astype(float)
    good = em.Scorer(y, np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.1, 3000), 0.01, 0.99))
    noise = em.Scorer(y, rng.uniform(0.4, 0.6, 3000))
    res = em.bootstrap({"model": good, "noise": noise}, boot)
    assert res["noise"]["roc_auc_diff"]["verdict"] == "beats"
    assert res["noise"]["log_loss_diff"]["verdict"] == "beats"
    lo, hi = res["model"]["roc_auc"]["ci95"]
    assert lo <= res["model"]["roc_auc"]["value"] <= hi
    same = em.bootstrap({"model": noise, "twin": noise}, boot)
    assert same["twin"]["roc_auc_diff"]["verdict"] == "no difference"
    few = em.bootstrap({"model": good, "noise": noise}, em.DayBootstrap(np.repeat(np.arange(3), 1000), 50))
    assert few["noise"]["roc_auc_diff"]["verdict"] == "undetermined"  # 3 days: no CI, no verdict


def test_sum_ci_by_day() -> None:
    v = np.r_[np.full(100, 1.0), np.full(100, -1.0)]
    days = np.repeat(np.arange(10), 20)
    est = em.sum_ci(v, days, n=200)
    assert est.value == 0.0 and est.lo < 0 < est.hi


def test_baselines_fitted_on_train_only_and_json_round_trip(fut_splits) -> None:
    from barsignal.model import baselines as bl

    params = bl.fit(fut_splits.train)
    again = json.loads(json.dumps(params))
    assert again["fitted_on"] == "train" and again["windows"] == len(fut_splits.train)
    assert "volatility" not in again  # only for a thresholded label
    assert "volatility" in bl.fit(fut_splits.train, flat_band=0.5)
    out = bl.predict(again, fut_splits.test)
    assert set(out) == {"majority", "last_sign", "opposite_sign", "neg_rsi6", "logistic"}
    y = fut_splits.test.labels
    moved = np.sign(fut_splits.test.last_ret) != 0
    a_same = em.roc_auc(y[moved], out["last_sign"][1][moved])
    a_opp = em.roc_auc(y[moved], out["opposite_sign"][1][moved])
    assert a_same + a_opp == pytest.approx(1.0, abs=1e-12)
    assert np.all(out["majority"][0] == again["majority"]["p_up"])
    assert again["majority"]["p_up"] == pytest.approx(float(fut_splits.train.labels.mean()))
    # the logistic is the train fit: its coefficients do not depend on the evaluated windows
    lg = bl.Logistic.fit(fut_splits.train.last_rows(), fut_splits.train.labels)
    assert np.allclose(lg.w, again["logistic"]["w"])
    for p, _ in out.values():
        assert ((p >= 0) & (p <= 1)).all()


def test_label_probe_reports_every_candidate_label() -> None:
    from barsignal.model.label_probe import probe

    segs = load_segments(FUTURES_1M[:6])
    res = probe(segs, horizons=(1, 15), flat_band=0.5)
    assert set(res) == {"h1", "h1_band0.5", "h15", "h15_band0.5"}
    for name, row in res.items():
        assert 0.3 < row["auc_logistic"] < 0.7 and 0.3 < row["auc_neg_rsi6"] < 0.7
        assert ("auc_volatility_only" in row) == ("band" in name)
    assert res["h15"]["mean_abs_move_bp"] > res["h1"]["mean_abs_move_bp"]  # longer horizon, bigger moves
    assert res["h1_band0.5"]["tied_share"] > res["h1"]["tied_share"]
