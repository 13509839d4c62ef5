"""The persistence move forecaster (kind ``rvol_logistic``): today's realized volatility says how big
the coming move is.

``rv`` is the sum of the last :data:`WINDOW` squared one-bar log returns (``rvol30`` squared, times
30), kept in a ring of its own (bounded state). For the bar just closed:

- ``p_move = sigmoid(a + b * log(rv))``: the probability that ``|close[t+h] / close[t] - 1|`` exceeds
  the manifest's ``threshold_bp``; ``a`` and ``b`` are fitted on training bars (:func:`fit`).
- ``sigma_bp = 1e4 * sqrt(rv / WINDOW * h)``: the same variance per bar, scaled to the horizon
  (random-walk scaling), in basis points.

Both are NaN until ``WINDOW`` returns are held (``WINDOW + 1`` bars). The sum is ``math.fsum``: exact,
so the forecast depends only on the last ``WINDOW`` returns, not on the history before them (a restart
that warms up on the last bars forecasts as an uninterrupted run does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from barsignal.engine.move import NAN, MoveSpec
from barsignal.features.bar import Bar

KIND = "rvol_logistic"
WINDOW = 30  # one-bar log returns in the realized variance
RV_FLOOR = 1e-20  # log(rv) of a window of unchanged closes: finite, very calm


class RvolLogistic:
    """``p_move = sigmoid(a + b * log(rv30))``; see the module docstring."""

    __slots__ = ("_head", "_last", "_n", "_ring", "_sigma_scale", "a", "b", "spec")

    def __init__(self, spec: MoveSpec) -> None:
        extra = set(spec.params) - {"a", "b"}
        try:
            a, b = float(spec.params["a"]), float(spec.params["b"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"artifact manifest 'move': kind {KIND!r} needs params a and b (numbers), "
                             f"got {dict(spec.params)}") from None
        if extra or not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"artifact manifest 'move': kind {KIND!r} takes params a and b (finite), "
                             f"got {dict(spec.params)}")
        self.spec = spec
        self.a, self.b = a, b
        self._sigma_scale = 1e4 * math.sqrt(spec.horizon / WINDOW)
        self.reset()

    def reset(self) -> None:
        self._ring = [0.0] * WINDOW  # squared log returns
        self._head = 0
        self._n = 0  # returns held (<= WINDOW)
        self._last = NAN  # the previous close

    def update(self, bar: Bar) -> tuple[float, float]:
        prev, c = self._last, bar.close
        self._last = c
        if not prev > 0.0:  # the first bar (NaN) has no return
            return NAN, NAN
        r = math.log(c / prev)
        head = self._head
        self._ring[head] = r * r
        self._head = head + 1 if head + 1 < WINDOW else 0
        if self._n < WINDOW:
            self._n += 1
            if self._n < WINDOW:
                return NAN, NAN
        rv = math.fsum(self._ring)
        z = self.a + self.b * math.log(rv if rv > RV_FLOOR else RV_FLOOR)
        p = 1.0 / (1.0 + math.exp(-z)) if z > -700.0 else 0.0
        return p, self._sigma_scale * math.sqrt(rv)

    def persisted(self) -> dict[str, Any] | None:
        """Nothing outlives a restart: every value comes from the bars."""
        return None

    def resume(self, d: Mapping[str, Any]) -> None:
        """Nothing to take back."""

    def snapshot(self) -> object:
        return (tuple(self._ring), self._head, self._n, self._last)

    def restore(self, snap: object) -> None:
        ring, self._head, self._n, self._last = snap  # type: ignore[misc]
        self._ring = list(ring)


def log_rv(closes: Sequence[float] | np.ndarray) -> np.ndarray:
    """``log(rv)`` at each close as :class:`RvolLogistic` sees it (NaN while warming), for fitting."""
    c = np.asarray(closes, np.float64)
    out = np.full(len(c), np.nan)
    if len(c) <= WINDOW:
        return out
    r2 = np.log(c[1:] / c[:-1]) ** 2
    for i in range(WINDOW, len(c)):
        rv = math.fsum(r2[i - WINDOW:i])
        out[i] = math.log(rv if rv > RV_FLOOR else RV_FLOOR)
    return out


def exceeds(closes: Sequence[float] | np.ndarray, horizon: int, threshold_bp: float) -> np.ndarray:
    """1.0 where ``|close[t+h] / close[t] - 1| > threshold_bp / 1e4``, 0.0 where not, NaN for the last
    ``horizon`` closes (no outcome yet)."""
    c = np.asarray(closes, np.float64)
    out = np.full(len(c), np.nan)
    if len(c) > horizon:
        out[:-horizon] = (np.abs(c[horizon:] / c[:-horizon] - 1.0) > threshold_bp / 1e4).astype(np.float64)
    return out


def fit(bars: Sequence[Bar], horizon: int, threshold_bp: float, *, iters: int = 50) -> MoveSpec:
    """Fit ``a`` and ``b`` by maximum likelihood (Newton's method on the logistic log-loss) on ``bars``
    (consecutive closed bars of the training split) and return the spec. A ValueError if the bars hold
    no outcome of either kind."""
    closes = np.array([b.close for b in bars], np.float64)
    x, y = log_rv(closes), exceeds(closes, horizon, threshold_bp)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if not len(y) or y.min() == y.max():
        raise ValueError(f"move fit: {len(y)} outcomes on {len(bars)} bars, not both kinds; give more bars")
    X = np.stack([np.ones_like(x), x], axis=1)  # (N, 2)
    w = np.array([math.log(y.mean() / (1 - y.mean())), 0.0])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - y)
        hess = X.T @ (X * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return MoveSpec(horizon, float(threshold_bp), KIND, {"a": float(w[0]), "b": float(w[1])})
