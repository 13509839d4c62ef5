"""Fidelity metrics shared by every compression stage (numpy only, no torch).

Everything here compares probabilities: ``p`` is an up-probability in [0, 1] per window. ROC-AUC is
``barsignal.engine.metrics.roc_auc`` (the one implementation); trading figures come from replaying
bars through the live ``SignalRule`` and paper broker (``barsignal.engine.policy``), never from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_EPS = 1e-7


def binary_kl(p_ref: np.ndarray, p: np.ndarray) -> np.ndarray:
    """KL(Bernoulli(p_ref) || Bernoulli(p)) per window, in nats."""
    a = np.clip(np.asarray(p_ref, dtype=np.float64), _EPS, 1 - _EPS)
    b = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))


def agreement(p_ref: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Top-1 agreement (same side of ``threshold``), mean/max/p99 |Δp| and mean KL(ref || p)."""
    p_ref = np.asarray(p_ref, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if p_ref.shape != p.shape:
        raise ValueError(f"agreement: shapes differ {p_ref.shape} vs {p.shape}")
    d = np.abs(p_ref - p)
    return {
        "top1_agreement": float(np.mean((p_ref >= threshold) == (p >= threshold))),
        "mean_abs_dp": float(d.mean()),
        "max_abs_dp": float(d.max()),
        "p99_abs_dp": float(np.quantile(d, 0.99)),
        "kl": float(binary_kl(p_ref, p).mean()),
    }


def positions(p: np.ndarray, long_threshold: float, short_threshold: float | None = None) -> np.ndarray:
    """The signal rule as a position per window: +1 long when p >= long_threshold, -1 short when
    ``short_threshold`` is set and p <= short_threshold, else 0 (flat)."""
    p = np.asarray(p, dtype=np.float64)
    pos = (p >= long_threshold).astype(np.float64)
    if short_threshold is not None:
        pos -= (p <= short_threshold).astype(np.float64)
    return pos


def signal_agreement(p_ref: np.ndarray, p: np.ndarray, long_threshold: float,
                     short_threshold: float | None = None) -> float:
    """Fraction of windows where both models give the same action at the deployed thresholds."""
    return float(np.mean(positions(p_ref, long_threshold, short_threshold)
                         == positions(p, long_threshold, short_threshold)))


def rule_agreement(p_ref: np.ndarray, p: np.ndarray, policy: Any) -> float:
    """Fraction of CONSECUTIVE bars where the live ``SignalRule`` of ``policy`` (an
    ``engine.policy.Policy``) gives both probability sequences the same action (state included)."""
    a, b = policy.rule(), policy.rule()
    same = [a.update(float(x)) == b.update(float(y)) for x, y in zip(p_ref, p, strict=True)]
    return float(np.mean(same)) if same else 1.0
