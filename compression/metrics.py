"""Fidelity and trading metrics shared by every compression stage (numpy only, no torch).

Everything here compares probabilities: ``p`` is an up-probability in [0, 1] per window.
"""

from __future__ import annotations

import math

import numpy as np

MINUTES_PER_YEAR = 525_600
_EPS = 1e-7


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; NaN if one class is absent."""
    y = np.asarray(y).astype(bool).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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


def backtest(p: np.ndarray, returns: np.ndarray, long_threshold: float,
             short_threshold: float | None = None, fee_bps: float = 10.0) -> dict[str, float]:
    """Bar-by-bar backtest: the position decided at a window's last close earns the next bar's
    simple return; every change of position pays ``fee_bps`` per unit turned over.

    Returns the annualised Sharpe (per-minute returns x sqrt(525,600)), max drawdown of the
    compounded equity (a negative fraction), total return, exposure and number of trades.
    """
    pos = positions(p, long_threshold, short_threshold)
    r = np.asarray(returns, dtype=np.float64)
    if pos.shape != r.shape:
        raise ValueError(f"backtest: {pos.shape[0]} probabilities but {r.shape[0]} returns")
    turnover = np.abs(np.diff(np.concatenate([[0.0], pos])))
    pnl = pos * r - turnover * fee_bps * 1e-4
    sd = pnl.std()
    sharpe = float(pnl.mean() / sd * math.sqrt(MINUTES_PER_YEAR)) if sd > 0 else 0.0
    equity = np.cumprod(1.0 + pnl)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    mdd = float((equity / peak - 1.0).min()) if len(equity) else 0.0
    return {
        "sharpe": sharpe,
        "max_drawdown": mdd,
        "total_return": float(equity[-1] - 1.0) if len(equity) else 0.0,
        "exposure": float(np.mean(pos != 0)),
        "trades": int(np.count_nonzero(turnover)),
    }
