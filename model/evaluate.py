"""Metrics of up-probabilities next to three baselines, as JSON, Markdown and a calibration plot.

Metrics: accuracy and balanced accuracy (at p > 0.5), ROC-AUC, log-loss, Brier score and a
10-bin calibration curve. Baselines, all fitted on the *fit* windows (the train split; or, when
evaluating arbitrary bars with no split, the evaluated windows themselves, which favours them):
- ``majority``: always the fit set's majority class, with its base rate as the probability;
- ``same_direction``: predicts that the next move repeats the last bar's close-to-close direction;
  its probability is the rule's hit rate on the fit set (q if the last bar rose, 1 - q if not);
- ``logistic``: L2 logistic regression on the last row's 33 (normalized) features (numpy, Newton).
No torch here: probabilities come in as arrays.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.model.dataset import WindowSet

EPS = 1e-7
METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "log_loss", "brier")
HIGHER_IS_BETTER = {"accuracy": True, "balanced_accuracy": True, "roc_auc": True,
                    "log_loss": False, "brier": False}


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula (ties get average ranks); NaN if one class."""
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each run of equal scores
    lengths = np.diff(np.r_[starts, len(s)])
    ranks = np.repeat(starts + (lengths + 1) / 2.0, lengths)  # average 1-based rank of each run
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins over [0, 1]: mean predicted p, observed up rate and count per non-empty bin."""
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "mean_p": float(p[m].mean()),
                        "up_rate": float(y[m].mean()), "count": int(m.sum())})
    return out


def metrics(y: np.ndarray, p: np.ndarray, pred: np.ndarray | None = None,
            score: np.ndarray | None = None) -> dict[str, Any]:
    """All metrics of probabilities ``p`` for labels ``y``; ``pred``/``score`` override the hard call
    (default p > 0.5) and the ranking score (default p)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    hard = (p > 0.5) if pred is None else np.asarray(pred, dtype=bool)
    pos, neg = y == 1, y == 0
    tpr = float(hard[pos].mean()) if pos.any() else float("nan")
    tnr = float((~hard[neg]).mean()) if neg.any() else float("nan")
    return {
        "accuracy": float((hard == pos).mean()),
        "balanced_accuracy": 0.5 * (tpr + tnr),
        "roc_auc": roc_auc(pos, p if score is None else score),
        "log_loss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()),
        "brier": float(((p - y) ** 2).mean()),
        "predicted_up_rate": float(hard.mean()),
        "calibration": calibration(y, p),
    }


@dataclass
class Logistic:
    """L2-regularized logistic regression fitted by Newton's method (IRLS)."""

    w: np.ndarray
    b: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 25) -> Logistic:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        n, d = x.shape
        a = np.hstack([x, np.ones((n, 1))])  # (n, d+1)
        w = np.zeros(d + 1)
        reg = np.full(d + 1, l2 * n)
        reg[-1] = 0.0  # no penalty on the bias
        for _ in range(iters):
            p = 1.0 / (1.0 + np.exp(-(a @ w)))
            grad = a.T @ (p - y) + reg * w
            hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(reg) + 1e-9 * np.eye(d + 1)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        return cls(w[:-1], float(w[-1]))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(np.asarray(x, dtype=np.float64) @ self.w + self.b)))


def baselines(fit: WindowSet, ev: WindowSet) -> dict[str, dict[str, Any]]:
    """The three baselines fitted on ``fit`` and scored on ``ev``."""
    y = ev.labels
    rate = float(fit.labels.mean())
    majority_up = rate > 0.5
    q = float((fit.labels == fit.last_up).mean())  # hit rate of "same direction as the last bar"
    p_same = np.where(ev.last_up == 1, q, 1 - q)
    lr = Logistic.fit(fit.last_rows(), fit.labels)
    return {
        "majority": metrics(y, np.full(len(y), rate), pred=np.full(len(y), majority_up)),
        "same_direction": metrics(y, p_same, pred=ev.last_up == 1, score=ev.last_up),
        "logistic": metrics(y, lr.predict(ev.last_rows())),
    }


def verdicts(model: dict[str, Any], base: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences: which baseline the model does not beat, metric by metric."""
    lines = []
    for m in ("log_loss", "roc_auc", "accuracy", "balanced_accuracy", "brier"):
        mv = model[m]
        worse = [name for name, b in base.items() if not math.isnan(b[m]) and not math.isnan(mv) and
                 ((mv <= b[m]) if HIGHER_IS_BETTER[m] else (mv >= b[m]))]
        if worse:
            lines.append(f"The model does NOT beat {', '.join(worse)} on {m} ({mv:.4f}).")
        else:
            lines.append(f"The model beats every baseline on {m} ({mv:.4f}).")
    return lines


def report(y: np.ndarray, p: np.ndarray, fit: WindowSet, ev: WindowSet, **context: Any) -> dict[str, Any]:
    """The evaluation object: windows, model metrics, baselines, verdicts and context."""
    model = metrics(y, p)
    base = baselines(fit, ev)
    return {"windows": len(y), "up_rate": float(np.mean(y)), "model": model, "baselines": base,
            "verdicts": verdicts(model, base), **context}


def to_markdown(rep: dict[str, Any]) -> str:
    names = ["model", *rep["baselines"]]
    cols = {"model": rep["model"], **rep["baselines"]}
    lines = [f"Windows: {rep['windows']:,}; up rate {rep['up_rate']:.4f}.", "",
             "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m in METRICS:
        lines.append(f"| {m} | " + " | ".join(f"{cols[n][m]:.4f}" for n in names) + " |")
    lines += ["", *[f"- {v}" for v in rep["verdicts"]], "", "Calibration (model):", "",
              "| bin | mean p | up rate | count |", "|---|---|---|---|"]
    for c in rep["model"]["calibration"]:
        lines.append(f"| {c['lo']:.1f}-{c['hi']:.1f} | {c['mean_p']:.4f} | {c['up_rate']:.4f} "
                     f"| {c['count']} |")
    return "\n".join(lines) + "\n"


def plot_calibration(rep: dict[str, Any], p: np.ndarray, path: str | Path) -> Path:
    """Reliability diagram (model and logistic baseline) over a histogram of predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(2, 1, figsize=(6, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
    for name, m in (("model", rep["model"]), ("logistic", rep["baselines"]["logistic"])):
        cal = m["calibration"]
        ax.plot([c["mean_p"] for c in cal], [c["up_rate"] for c in cal], "o-", label=name)
    ax.set_ylabel("observed up rate")
    ax.set_title(f"Reliability ({rep['windows']:,} windows)")
    ax.legend()
    hx.hist(p, bins=50, range=(0, 1), color="tab:blue")
    hx.set_xlabel("predicted p_up")
    hx.set_ylabel("windows")
    lo, hi = float(np.min(p)), float(np.max(p))
    ax.set_xlim(max(0.0, lo - 0.05), min(1.0, hi + 0.05))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write(rep: dict[str, Any], p: np.ndarray, out_dir: str | Path) -> dict[str, Path]:
    """eval.json, eval.md and calibration.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(rep, indent=1) + "\n")
    (out / "eval.md").write_text(to_markdown(rep))
    return {"json": out / "eval.json", "md": out / "eval.md",
            "png": plot_calibration(rep, p, out / "calibration.png")}
