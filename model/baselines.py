"""Baselines fitted on the TRAINING windows only, as JSON-able parameters the artifact ships.

``fit(train)`` returns plain numbers (coefficients, rates); ``predict(params, ws)`` scores any
windows with them, so ``barsignal eval`` compares a model against the very same baselines on any
bars, without refitting on what it evaluates. Inputs are the artifact's normalized features (the
last row of each window). numpy only (no torch, no sklearn).

- ``majority``: the train up rate for every window (AUC 0.5 by construction);
- ``last_sign``: the next move repeats the last bar's close-to-close sign; probability q (the
  rule's train hit rate) for the predicted side, 0.5 after a flat bar;
- ``opposite_sign``: the next move reverses the last bar's sign; probability q' (its train hit
  rate) likewise;
- ``neg_rsi6``: score -rsi6, probability from a 1-feature logistic (Platt) fit on train;
- ``logistic``: L2 logistic regression on the 33 features (Newton / IRLS);
- ``volatility``: logistic on volatility features only (rvol30, atr14, hl_range, bb_width); fitted
  only for a thresholded label (``flat_band > 0``), where volatility can masquerade as skill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from barsignal.features.spec import INDEX
from barsignal.model.dataset import WindowSet

VOL_FEATURES = ("rvol30", "atr14", "hl_range", "bb_width")
MAX_FIT_WINDOWS = 400_000  # logistic fits use at most this many evenly spaced train windows


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


def _sign(ws: WindowSet) -> np.ndarray:
    return np.sign(ws.last_ret)


def fit(train: WindowSet, flat_band: float = 0.0, l2: float = 1e-3) -> dict[str, Any]:
    """The baselines' parameters, fitted on ``train`` (labelled windows; ties already dropped)."""
    tr = train.labelled()
    y = tr.labels.astype(np.float64)
    x = tr.last_rows().astype(np.float64)
    if len(tr) > MAX_FIT_WINDOWS:
        idx = np.linspace(0, len(tr) - 1, MAX_FIT_WINDOWS).round().astype(np.int64)
        xf, yf = x[idx], y[idx]
    else:
        xf, yf = x, y
    s = _sign(tr)
    moved = s != 0
    up = y == 1
    q_same = float(((s > 0) == up)[moved].mean()) if moved.any() else 0.5
    lr = Logistic.fit(xf, yf, l2)
    r6 = Logistic.fit(-xf[:, [INDEX["rsi6"]]], yf, l2)
    out: dict[str, Any] = {
        "fitted_on": "train", "windows": len(tr), "l2": l2,
        "majority": {"p_up": float(y.mean())},
        "last_sign": {"q": q_same},
        "opposite_sign": {"q": 1.0 - q_same},
        "neg_rsi6": {"feature": "rsi6", "a": float(r6.w[0]), "b": r6.b},
        "logistic": {"w": lr.w.tolist(), "b": lr.b},
    }
    if flat_band > 0:
        cols = [INDEX[f] for f in VOL_FEATURES]
        vol = Logistic.fit(xf[:, cols], yf, l2)
        out["volatility"] = {"features": list(VOL_FEATURES), "w": vol.w.tolist(), "b": vol.b}
    return out


def predict(params: dict[str, Any], ws: WindowSet) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (p_up, ranking score)}`` of every shipped baseline on ``ws``."""
    x = ws.last_rows().astype(np.float64)
    s = _sign(ws)
    n = len(ws)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rate = float(params["majority"]["p_up"])
    out["majority"] = (np.full(n, rate), np.zeros(n))
    q = float(params["last_sign"]["q"])
    out["last_sign"] = (np.where(s > 0, q, np.where(s < 0, 1 - q, 0.5)), s)
    qo = float(params["opposite_sign"]["q"])
    out["opposite_sign"] = (np.where(s < 0, qo, np.where(s > 0, 1 - qo, 0.5)), -s)
    r6 = params["neg_rsi6"]
    z = -x[:, INDEX[r6["feature"]]]
    out["neg_rsi6"] = (1.0 / (1.0 + np.exp(-(r6["a"] * z + r6["b"]))), z)
    lg = params["logistic"]
    p = Logistic(np.asarray(lg["w"], np.float64), float(lg["b"])).predict(x)
    out["logistic"] = (p, p)
    if "volatility" in params:
        v = params["volatility"]
        cols = [INDEX[f] for f in v["features"]]
        pv = Logistic(np.asarray(v["w"], np.float64), float(v["b"])).predict(x[:, cols])
        out["volatility"] = (pv, pv)
    return out
