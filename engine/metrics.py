"""Scoring metrics with day-block bootstrap confidence intervals (numpy only; no torch, no I/O).

The one ROC-AUC implementation of the project (``model.evaluate`` and ``compression`` use it).
Confidence intervals resample whole UTC days with replacement (a block bootstrap: minutes of one
day are correlated, days much less), so a CI reflects how much a figure moves from one set of
days to another. ``paired`` bootstraps the difference of two scorers on the same resamples: a
verdict "beats" is only given when that difference's 95 % CI excludes 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

EPS = 1e-7
METRICS = ("roc_auc", "log_loss", "brier")
MIN_DAYS = 5  # fewer days than this: no CI (NaN) and no verdict ("undetermined")
HIGHER_IS_BETTER = {"roc_auc": True, "log_loss": False, "brier": False}


def roc_auc(y: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Area under the ROC curve (Mann-Whitney; tied scores count one half); NaN if one class is absent.

    ``weight`` (N,) counts each sample that many times (the bootstrap's multiplicities).
    """
    return _Ranked(y, score).auc(weight)


class _Ranked:
    """Scores sorted once, grouped into runs of equal score, so each weighted AUC is O(N)."""

    def __init__(self, y: np.ndarray, score: np.ndarray) -> None:
        y = np.asarray(y).astype(bool).ravel()
        s = np.asarray(score, dtype=np.float64).ravel()
        if y.shape != s.shape:
            raise ValueError(f"roc_auc: {y.shape[0]} labels but {s.shape[0]} scores")
        self.order = np.argsort(s, kind="mergesort")
        ss = s[self.order]
        self.starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]]) if len(ss) else np.zeros(0, np.int64)
        self.y = y[self.order]

    def auc(self, weight: np.ndarray | None = None) -> float:
        w = np.ones(len(self.y)) if weight is None else np.asarray(weight, np.float64).ravel()[self.order]
        if len(w) == 0:
            return float("nan")
        pos = np.add.reduceat(np.where(self.y, w, 0.0), self.starts)  # positive weight per run
        neg = np.add.reduceat(np.where(self.y, 0.0, w), self.starts)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos <= 0 or n_neg <= 0:
            return float("nan")
        below = np.cumsum(neg) - neg  # negative weight strictly below each run
        return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y, np.float64)
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else float("nan")


def brier(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y, np.float64)
    return float(((np.asarray(p, np.float64) - y) ** 2).mean()) if len(y) else float("nan")


class DayBootstrap:
    """``n`` resamples of whole days with replacement; iterating gives each resample's per-sample
    weights (N,): how often the sample's day was drawn. Seeded: the same days give the same draws."""

    def __init__(self, days: np.ndarray, n: int = 500, seed: int = 0) -> None:
        _, self.inv = np.unique(np.asarray(days), return_inverse=True)
        self.n_days = int(self.inv.max()) + 1 if len(self.inv) else 0
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, max(self.n_days, 1), size=(n, self.n_days))
        self.counts = np.stack([np.bincount(d, minlength=self.n_days) for d in draws]
                               ).astype(np.float64) if n else np.zeros((0, self.n_days))  # (n, D)

    def __len__(self) -> int:
        return len(self.counts)

    def __iter__(self) -> Iterator[np.ndarray]:
        for c in self.counts:
            yield c[self.inv]  # (N,)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """(n,) the sum of ``values`` (N,) under every resample."""
        per_day = np.bincount(self.inv, weights=np.asarray(values, np.float64), minlength=self.n_days)
        return self.counts @ per_day


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float  # 2.5 % of the bootstrap distribution
    hi: float  # 97.5 %

    def to_dict(self) -> dict[str, object]:
        """``ci95`` is None when there is no CI (fewer than ``MIN_DAYS`` days)."""
        ci = [self.lo, self.hi] if np.isfinite(self.lo) and np.isfinite(self.hi) else None
        return {"value": self.value, "ci95": ci}


def _ci(value: float, samples: np.ndarray) -> Estimate:
    s = samples[np.isfinite(samples)]
    if not len(s):
        return Estimate(value, float("nan"), float("nan"))
    lo, hi = np.quantile(s, [0.025, 0.975])
    return Estimate(value, float(lo), float(hi))


class Scorer:
    """One scorer's metrics on fixed labels, each computable under bootstrap weights."""

    def __init__(self, y: np.ndarray, p: np.ndarray, score: np.ndarray | None = None) -> None:
        self.y = np.asarray(y, np.float64)
        pc = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
        self.ll = -(self.y * np.log(pc) + (1 - self.y) * np.log(1 - pc))  # (N,)
        self.sq = (pc - self.y) ** 2
        self.ranked = _Ranked(self.y, pc if score is None else score)

    def metric(self, name: str, w: np.ndarray | None = None) -> float:
        if name == "roc_auc":
            return self.ranked.auc(w)
        v = self.ll if name == "log_loss" else self.sq
        if w is None:
            return float(v.mean())
        tot = w.sum()
        return float((v * w).sum() / tot) if tot > 0 else float("nan")


def bootstrap(scorers: Mapping[str, Scorer], weights: DayBootstrap, reference: str = "model"
              ) -> dict[str, dict[str, dict[str, object]]]:
    """Every metric of every scorer with its 95 % CI, and for each scorer other than ``reference``
    the paired difference ``reference - scorer`` with its CI and a verdict."""
    out: dict[str, dict[str, dict[str, object]]] = {}
    samples: dict[tuple[str, str], np.ndarray] = {}
    enough = weights.n_days >= MIN_DAYS
    for name, sc in scorers.items():
        out[name] = {}
        for m in METRICS:
            s = np.array([sc.metric(m, w) for w in weights]) if enough else np.full(1, np.nan)
            samples[(name, m)] = s
            out[name][m] = _ci(sc.metric(m), s).to_dict()
    ref = scorers.get(reference)
    if ref is not None:
        for name in scorers:
            if name == reference:
                continue
            for m in METRICS:
                d = _ci(ref.metric(m) - scorers[name].metric(m), samples[(reference, m)] - samples[(name, m)])
                out[name][f"{m}_diff"] = {**d.to_dict(), "verdict": verdict(d, HIGHER_IS_BETTER[m])}
    return out


def verdict(diff: Estimate, higher_is_better: bool) -> str:
    """'beats' / 'loses to' when the 95 % CI of (reference - other) excludes 0, else 'no difference'."""
    lo, hi = (diff.lo, diff.hi) if higher_is_better else (-diff.hi, -diff.lo)
    if not np.isfinite(lo) or not np.isfinite(hi):
        return "undetermined"
    if lo > 0:
        return "beats"
    if hi < 0:
        return "loses to"
    return "no difference"


def sum_ci(values: np.ndarray, days: np.ndarray, n: int = 500, seed: int = 0) -> Estimate:
    """The sum of per-sample ``values`` (e.g. per-bar PnL) with a day-block bootstrap 95 % CI."""
    v = np.asarray(values, np.float64)
    boot = DayBootstrap(days, n, seed)
    return _ci(float(v.sum()), boot.sums(v) if boot.n_days >= MIN_DAYS else np.full(1, np.nan))
