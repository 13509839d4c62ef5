"""Metrics and threshold selection against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from barsignal.compression.metrics import agreement, auc, backtest, binary_kl, signal_agreement
from barsignal.compression.thresholds import choose_thresholds


def test_auc_equals_pairwise_definition(rng):
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 2)  # ties on purpose
    pos, neg = p[y == 1], p[y == 0]
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg)]
    assert auc(y, p) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert np.isnan(auc(np.ones(5), rng.random(5)))


def test_agreement_and_kl():
    a = np.array([0.2, 0.6, 0.9, 0.4])
    b = np.array([0.3, 0.4, 0.95, 0.45])
    r = agreement(a, b)
    assert r["top1_agreement"] == 0.75
    assert r["mean_abs_dp"] == pytest.approx(np.mean(np.abs(a - b)))
    assert binary_kl(a, a).max() == pytest.approx(0.0, abs=1e-12)
    assert r["kl"] > 0
    assert signal_agreement(a, b, 0.5) == 0.75


def test_backtest_by_hand():
    p = np.array([0.9, 0.9, 0.1, 0.9])
    r = np.array([0.01, -0.02, 0.05, 0.03])
    bt = backtest(p, r, 0.5, fee_bps=10)
    # long, long, flat, long: turnover 1, 0, 1, 1 -> pnl
    pnl = np.array([0.01 - 0.001, -0.02, -0.001, 0.03 - 0.001])
    eq = np.cumprod(1 + pnl)
    assert bt["total_return"] == pytest.approx(eq[-1] - 1)
    assert bt["trades"] == 3
    assert bt["exposure"] == 0.75
    assert bt["max_drawdown"] == pytest.approx((eq / np.maximum.accumulate(eq) - 1).min())
    assert bt["sharpe"] == pytest.approx(pnl.mean() / pnl.std() * np.sqrt(525_600))


def test_thresholds_are_chosen_on_validation_and_carry_their_rule(rng):
    r = rng.normal(0, 1e-3, 2000)
    p = 0.5 + 50 * np.roll(r, 0) + rng.normal(0, 0.02, 2000)  # informative on purpose
    th = choose_thresholds(p, r, fee_bps=0.0)
    assert 0.5 <= th.quantile <= 0.98
    assert th.long_threshold == pytest.approx(np.quantile(p, th.quantile))
    assert th.short_threshold is None
    assert "validation" in th.rule and th.val_exposure >= 0.01
    both = choose_thresholds(p, r, fee_bps=0.0, allow_short=True)
    assert both.short_threshold is not None and both.short_threshold < both.long_threshold
    assert set(th.to_manifest()) >= {"long_threshold", "short_threshold", "rule"}
