"""HAR-RV with an intraday and weekly seasonal factor: the ``har_seasonal`` move forecaster.

For the bar just closed at minute-of-week ``w`` (``open_time``, UTC), with ``d_i = close_i /
close_{i-1} - 1`` the one-bar returns and ``s(w) = minute_factor[minute of day] * dow_factor[day of
week]`` the training split's seasonal scale of ``d_i**2``:

- ``q_i = floor(d_i * d_i / s(w_i) * scale)``: the deseasonalized squared return as an integer, so
  that every running sum below is exact (the ring and the batch cumulative sum give the same
  integers, whatever the summation order);
- ``x_k = (sum of the last min(n, k) q) / (min(n, k) * scale)`` for each span k (30, 60, 240 and
  1440 bars by default; n = returns seen so far): the deseasonalized per-bar variance over k bars;
- ``log xhat = coef[0] + sum_k coef[k] * log(x_k + eps)`` (HAR in logs, fitted by least squares on
  the training split, ``model/move.py``);
- ``sigma_h**2 = var_scale * F(w) * xhat`` with ``F(w) = sum_{j=1..h} s(w + j)``: the variance of the
  coming h-bar move, the seasonal factor of the minutes it spans; ``sigma_bp = 1e4 * sigma_h``;
- ``p_move``: ``1 / (1 + exp(-(a + b * log sigma_bp + delta)))`` (``calib.kind = "logistic"``, ``a``
  and ``b`` fitted on the training split) or ``erfc(c / (sigma_h * sqrt 2))`` (``"normal"``).

Online recalibration (``calib.eta`` > 0, logistic only): ``delta`` follows the level of the
exceedance rate with outcomes already known. At every bar the outcome of the forecast made h bars
earlier is known from the closes (``y = |close_t / close_{t-h} - 1| > c``), and ``delta += eta * (y -
p_{t-h})``: one step of online logistic regression on the intercept, with a fixed learning rate. The
forecaster keeps a ring of its last h closes and forecasts for it. ``delta`` starts at 0 (the
training-split calibration) and is kept across gaps (only the forecasts whose outcome spans a gap
are dropped); ``reset`` sets it back to 0. With ``eta = 0`` the map is the static one.
``persisted``/``resume`` carry ``delta`` (a float64, exact through JSON) across a daemon restart.

Warm-up: NaN until ``min_bars`` returns are seen (31 bars by default); until a span has k returns
its x_k is the mean over the returns seen (exact and identical in batch). Gaps: any bar whose
``open_time`` is not the previous one's plus one minute (a gap, a repeat, a bar out of order, or a
non-positive close) starts the forecaster afresh: the return across a gap is never used, and the
forecaster warms up again (``min_bars`` returns). The seasonal factor needs no history.

``batch`` is the research computation over one gap-free run of bars: the same integers by a
cumulative sum, then the same scalar map (``_forecast``) and the same online step (``_learn``) bar by
bar, so it equals ``update`` bit for bit (tested on real bars); ``delta`` carries the correction from
one run to the next. numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from barsignal.engine.move import NAN, MoveSpec
from barsignal.features.bar import INTERVAL_MS, Bar

KIND = "har_seasonal"
DAY_MS = 86_400_000
MINUTES_PER_DAY = 1440
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
DEFAULT_SPANS = (30, 60, 240, 1440)


def minute_of_week(open_time_ms: int) -> int:
    """Monday 00:00 UTC = 0 (1970-01-01 was a Thursday)."""
    minute = open_time_ms // 60_000
    return ((minute // MINUTES_PER_DAY + 3) % 7) * MINUTES_PER_DAY + minute % MINUTES_PER_DAY


def season_table(minute_factor: Sequence[float], dow_factor: Sequence[float]) -> list[float]:
    """s(w) for every minute of the week (10,080 values)."""
    if len(minute_factor) != MINUTES_PER_DAY or len(dow_factor) != 7:
        raise ValueError(f"move params: minute_factor needs {MINUTES_PER_DAY} values and dow_factor 7, "
                         f"got {len(minute_factor)} and {len(dow_factor)}")
    mf = [float(v) for v in minute_factor]
    df = [float(v) for v in dow_factor]
    table = [mf[w % MINUTES_PER_DAY] * df[w // MINUTES_PER_DAY] for w in range(MINUTES_PER_WEEK)]
    if not all(math.isfinite(v) and v > 0 for v in table):
        raise ValueError("move params: seasonal factors must be finite and > 0")
    return table


def forward_table(season: Sequence[float], horizon: int) -> list[float]:
    """F(w) = s(w + 1) + ... + s(w + horizon), summed in that order, for every minute of the week."""
    n = len(season)
    out = []
    for w in range(n):
        acc = 0.0
        for j in range(1, horizon + 1):
            acc += season[(w + j) % n]
        out.append(acc)
    return out


class HarSeasonal:
    """Incremental HAR-RV with seasonality (see the module docstring); one per symbol."""

    def __init__(self, spec: MoveSpec) -> None:
        p: Mapping[str, Any] = spec.params
        try:
            self.spans = tuple(int(k) for k in p.get("spans", DEFAULT_SPANS))
            self.coef = tuple(float(c) for c in p["coef"])
            self.scale = float(p.get("scale", 1e12))
            self.min_bars = int(p.get("min_bars", 30))
            self.var_scale = float(p["var_scale"])
            cal = dict(p["calib"])
            self.calib_kind = str(cal["kind"])
            self.calib_a = float(cal.get("a", 0.0))
            self.calib_b = float(cal.get("b", 1.0))
            self.eta = float(cal.get("eta", 0.0))
            self.season = season_table(p["minute_factor"], p["dow_factor"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"artifact manifest 'move' params for {KIND!r}: {e!r}; rebuild with "
                             "`barsignal compress move`") from e
        if len(self.coef) != len(self.spans) + 1 or not self.spans or min(self.spans) < 1:
            raise ValueError(f"move params: {len(self.spans)} spans need {len(self.spans) + 1} coefficients, "
                             f"got {len(self.coef)}")
        if self.calib_kind not in ("logistic", "normal"):
            raise ValueError(f"move params: calib.kind {self.calib_kind!r}; expected 'logistic' or 'normal'")
        if not (math.isfinite(self.eta) and 0.0 <= self.eta < 1.0) or (self.eta and self.calib_kind != "logistic"):
            raise ValueError(f"move params: calib.eta {self.eta!r} must be in [0, 1), and > 0 only with the "
                             "'logistic' calibration")
        self.spec = spec
        self.eps = 1.0 / self.scale
        self.threshold = spec.threshold_bp / 1e4
        self.forward = forward_table(self.season, spec.horizon)
        self.ring_len = max(self.spans)
        self.warmup_bars = self.min_bars + 1  # bars before the first forecast (after a start or a gap)
        self.full_bars = self.ring_len + 1  # bars before every span holds its full length
        self._ring = [0] * self.ring_len
        self._span_idx = tuple(enumerate(self.spans))
        self._dens = tuple(k * self.scale for k in self.spans)  # min(n, k) * scale once n >= k
        self.h = spec.horizon
        self._pend_c = [0.0] * self.h  # close and forecast of the last h bars of the run (online only)
        self._pend_p = [NAN] * self.h
        self.reset()

    def _terms_of(self, sums: Sequence[int]) -> zip[tuple[float, int, int, float]]:
        return zip(self.coef[1:], sums, self.spans, self._dens, strict=True)

    def reset(self) -> None:
        self._delta = 0.0  # the online intercept correction
        self._restart()

    def _restart(self) -> None:
        """A start or a gap: forget the run (the online correction stays)."""
        self._pos = 0
        self._n = 0  # returns seen since the last (re)start
        self._sums = [0] * len(self.spans)
        self._last_time: int | None = None
        self._last_close = 0.0
        if self.eta:
            self._pend_p[:] = [NAN] * self.h

    def snapshot(self) -> object:
        """Every value ``update`` may change (the ring is copied: any number of rehearsed bars, gaps
        included, is undone by ``restore``)."""
        return (self._pos, self._n, tuple(self._sums), self._last_time, self._last_close, self._ring.copy(),
                self._delta, tuple(self._pend_c), tuple(self._pend_p))

    def restore(self, snap: object) -> None:
        pos, n, sums, last_time, last_close, ring, delta, pend_c, pend_p = snap  # type: ignore[misc]
        self._pos, self._n, self._sums = pos, n, list(sums)
        self._last_time, self._last_close = last_time, last_close
        self._ring[:] = ring
        self._delta = delta
        self._pend_c[:] = pend_c
        self._pend_p[:] = pend_p

    def persisted(self) -> dict[str, Any] | None:
        """``{"delta": delta}`` with the online correction on, else None (nothing is learned)."""
        return {"delta": self._delta} if self.eta else None

    def resume(self, d: Mapping[str, Any]) -> None:
        """Set ``delta`` to the persisted one (the run's bars stay as they are)."""
        delta = d.get("delta")
        if not isinstance(delta, float | int) or isinstance(delta, bool) or not math.isfinite(delta):
            raise ValueError(f"move state: delta {delta!r} is not a finite number")
        self._delta = float(delta)

    @property
    def delta(self) -> float:
        """The online intercept correction (0 with ``eta = 0``)."""
        return self._delta

    def update(self, bar: Bar) -> tuple[float, float]:
        t, c = bar.open_time, bar.close
        if self._last_time is None or t != self._last_time + INTERVAL_MS or not c > 0.0:
            self._restart()  # a start, a gap or a bad close: no return across it
            if c > 0.0:
                self._last_time, self._last_close = t, c
                if self.eta:
                    self._pend_c[0] = c
            return NAN, NAN
        minute = t // 60_000
        w = ((minute // MINUTES_PER_DAY + 3) % 7) * MINUTES_PER_DAY + minute % MINUTES_PER_DAY
        d = c / self._last_close - 1.0
        q = math.floor(d * d / self.season[w] * self.scale)
        ring, pos, n, sums, r = self._ring, self._pos, self._n, self._sums, self.ring_len
        for j, k in self._span_idx:
            if n >= k:
                sums[j] += q - ring[pos - k]  # pos - k < 0 wraps: a list's negative index
            else:
                sums[j] += q
        ring[pos] = q
        pos += 1
        self._pos = 0 if pos == r else pos
        self._n = n = n + 1
        self._last_time, self._last_close = t, c
        if not self.eta:
            if n < self.min_bars:
                return NAN, NAN
            return _forecast(self, sums, n, w, 0.0)
        slot = n % self.h
        pend_c, pend_p = self._pend_c, self._pend_p
        if n >= self.h:
            self._delta = _learn(self, self._delta, c, pend_c[slot], pend_p[slot])
        out = _forecast(self, sums, n, w, self._delta) if n >= self.min_bars else (NAN, NAN)
        pend_c[slot], pend_p[slot] = c, out[0]
        return out


def _learn(f: HarSeasonal, delta: float, close: float, close_then: float, p_then: float) -> float:
    """One online step: the forecast ``p_then`` made h bars ago at ``close_then`` meets its outcome."""
    if p_then != p_then:  # no forecast then (warming up)
        return delta
    y = 1.0 if abs(close / close_then - 1.0) > f.threshold else 0.0
    return delta + f.eta * (y - p_then)


def _forecast(f: HarSeasonal, sums: Sequence[int], n: int, w: int, delta: float) -> tuple[float, float]:
    """(p_move, sigma_bp) from the integer sums and the online correction: the one scalar map of
    ``update`` and ``batch``."""
    lx = f.coef[0]
    log = math.log
    eps = f.eps
    for b, s, k, den in f._terms_of(sums):
        lx += b * log(s / (den if n >= k else n * f.scale) + eps)
    var = f.var_scale * f.forward[w] * math.exp(lx)
    sigma = math.sqrt(var)
    sigma_bp = 1e4 * sigma
    if f.calib_kind == "logistic":
        z = f.calib_a + f.calib_b * log(sigma_bp) + delta
        p = 1.0 / (1.0 + math.exp(-z)) if z > -700.0 else 0.0
    else:
        p = math.erfc(f.threshold / (sigma * math.sqrt(2.0)))
    return p, sigma_bp


def deseasonalized_q(open_time: np.ndarray, close: np.ndarray, season: Sequence[float], scale: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(q (N - 1,) int64, w (N,) minute of week) of one gap-free run of bars, as ``update`` computes them."""
    t = np.asarray(open_time, np.int64)
    minute = t // 60_000
    w = ((minute // MINUTES_PER_DAY + 3) % 7) * MINUTES_PER_DAY + minute % MINUTES_PER_DAY
    c = np.asarray(close, np.float64)
    d = c[1:] / c[:-1] - 1.0
    s = np.asarray(season, np.float64)[w[1:]]
    return np.floor(d * d / s * scale).astype(np.int64), w


def span_sums(q: np.ndarray, spans: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(sums (N, K) int64, n (N,)) for bars 0..N-1 of a run with returns q (N - 1,): bar i has seen
    n = i returns, and sums[i, j] is the sum of its last min(i, spans[j]) of them."""
    cs = np.concatenate([[0], np.cumsum(q, dtype=np.int64)])  # cs[i] = q_1 + ... + q_i
    i = np.arange(len(cs))
    sums = np.stack([cs - cs[np.maximum(0, i - k)] for k in spans], axis=1)
    return sums, i


def batch(forecaster: HarSeasonal, open_time: np.ndarray, close: np.ndarray,
          at: np.ndarray | None = None, delta: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(p_move, sigma_bp) of every bar (or of the bars ``at``) of ONE gap-free run of bars with
    positive closes, fed from its first bar with the online correction ``delta`` (what the
    forecaster holds before the run): what ``update`` returns, bit for bit."""
    return batch_run(forecaster, open_time, close, at, delta)[:2]


def batch_run(forecaster: HarSeasonal, open_time: np.ndarray, close: np.ndarray,
              at: np.ndarray | None = None, delta: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """``batch`` and the online correction after the run's last bar (the next run's ``delta``)."""
    f = forecaster
    q, w = deseasonalized_q(open_time, close, f.season, f.scale)
    sums, n = span_sums(q, f.spans)
    idx = np.arange(len(n)) if at is None else np.asarray(at, np.int64)
    p = np.full(len(idx), np.nan)
    sig = np.full(len(idx), np.nan)
    if not f.eta:
        s_l, n_l, w_l = sums[idx].tolist(), n[idx].tolist(), w[idx].tolist()
        for r in range(len(idx)):
            if n_l[r] >= f.min_bars:
                p[r], sig[r] = _forecast(f, s_l[r], n_l[r], w_l[r], 0.0)
        return p, sig, delta
    # online: every bar of the run in order (the correction at a bar depends on every earlier one)
    s_l, w_l, c_l = sums.tolist(), w.tolist(), np.asarray(close, np.float64).tolist()
    h, mb = f.h, f.min_bars
    p_all = [NAN] * len(s_l)
    s_all = [NAN] * len(s_l)
    for r in range(len(s_l)):
        if r >= h:
            delta = _learn(f, delta, c_l[r], c_l[r - h], p_all[r - h])
        if r >= mb:
            p_all[r], s_all[r] = _forecast(f, s_l[r], r, w_l[r], delta)
    p[:] = np.asarray(p_all)[idx]
    sig[:] = np.asarray(s_all)[idx]
    return p, sig, delta
