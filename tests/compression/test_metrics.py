"""Fidelity metrics against brute-force definitions (trading figures: see test_policy.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from barsignal.compression.metrics import agreement, binary_kl, rule_agreement, signal_agreement
from barsignal.engine.metrics import roc_auc
from barsignal.engine.policy import Policy


def test_auc_equals_pairwise_definition(rng):
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 2)  # ties on purpose
    pos, neg = p[y == 1], p[y == 0]
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg)]
    assert roc_auc(y, p) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(5), rng.random(5)))


def test_agreement_and_kl():
    a = np.array([0.2, 0.6, 0.9, 0.4])
    b = np.array([0.3, 0.4, 0.95, 0.45])
    r = agreement(a, b)
    assert r["top1_agreement"] == 0.75
    assert r["mean_abs_dp"] == pytest.approx(np.mean(np.abs(a - b)))
    assert binary_kl(a, a).max() == pytest.approx(0.0, abs=1e-12)
    assert r["kl"] > 0
    assert signal_agreement(a, b, 0.5) == 0.75


def test_rule_agreement_follows_the_stateful_rule():
    # with a 3-bar minimum hold, one differing bar at entry changes three actions, not one
    pol = Policy("trade", 0.8, 0.2, 0.0, 0, 3, False)
    a = np.array([0.9, 0.5, 0.5, 0.5, 0.5, 0.5])
    b = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert signal_agreement(a, b, 0.8) == pytest.approx(5 / 6)
    assert rule_agreement(a, b, pol) == pytest.approx(3 / 6)
    assert rule_agreement(a, a, pol) == 1.0
