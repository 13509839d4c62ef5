"""Feature drift: the PSI statistic, and its null distribution on the training split (the calibrated bounds).

The live monitor (``daemon/drift.py``, ``daemon/metrics.py``) measures, per feature, the PSI of the
last ``monitor_window`` feature rows against the artifact's training bins (``features.psi_reference``).
Those rows are consecutive minutes, not independent draws: a slow feature (ATR, the 99-bar SMA
deviation) holds one regime for a whole day, so even rows of the training period itself give a PSI
far above a textbook bound (0.25 is the rule of thumb for independent samples). The bound must come
from the statistic's own null distribution at the window size the monitor uses.

:func:`null_bounds` computes it: for each window size in ``sizes``, every window of that many
consecutive training rows (stride ``stride``) is binned against the training bins and its PSI taken
per feature; the bound is the ``quantile`` (default 99.5 %) of those PSIs, scaled so that the same
share of windows has every feature under its bound at once (the alert reads the largest PSI /
bound over the 33 features, a multiple comparison). Bounds are made
non-increasing in the window size (a PSI over fewer rows is noisier), so :func:`bounds_at` can
answer for any number of rows held between two calibrated sizes with the smaller size's bound (the
larger, conservative one). The result is the manifest's ``features.psi_bounds``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

QUANTILE = 0.995
SIZES = (240, 360, 480, 720, 1080, 1440, 2160, 2880)  # rows; the monitor measures from 240 rows on
STRIDE = 10


def psi_terms(actual: np.ndarray, expected: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Per-bin PSI terms of ``actual`` against ``expected`` bin fractions (each floored at ``eps``);
    their sum over the bins (the last axis) is the PSI."""
    a = np.maximum(actual, eps)
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    return (a - e) * np.log(a / e)


def window_psi(rows: np.ndarray, edges: Sequence[Sequence[float]], fractions: Sequence[Sequence[float]],
               size: int, stride: int = STRIDE, eps: float = 1e-4) -> np.ndarray:
    """PSI (K, F) of every window of ``size`` consecutive rows of ``rows`` (R, F), starting every
    ``stride`` rows, against the bins ``edges`` / ``fractions`` (binned as the live monitor bins: a
    value ``x`` falls in bin ``searchsorted(edges, x, side="right")``)."""
    r, f = rows.shape
    if r < size:
        raise ValueError(f"{r} rows, fewer than a window of {size}")
    starts = np.arange(0, r - size + 1, stride)
    out = np.zeros((len(starts), f))
    for j in range(f):
        e = np.asarray(edges[j], np.float64)
        idx = np.searchsorted(e, rows[:, j].astype(np.float64), side="right")
        bins = len(e) + 1
        cum = np.zeros((r + 1, bins), np.int32)
        np.add.at(cum, (np.arange(1, r + 1), idx), 1)
        np.cumsum(cum, axis=0, out=cum)
        counts = cum[starts + size] - cum[starts]  # (K, bins)
        out[:, j] = psi_terms(counts / size, np.asarray(fractions[j], np.float64), eps).sum(axis=1)
    return out


def null_bounds(segments: Sequence[np.ndarray], reference: Mapping[str, Any], *, sizes: Sequence[int] = SIZES,
                quantile: float = QUANTILE, stride: int = STRIDE, source: str = "") -> dict[str, Any]:
    """``features.psi_bounds``: per window size and feature, the bound on the PSI of windows of
    consecutive rows of ``segments`` (each (R, F), in time order; no window spans two) against
    ``reference`` (``edges``, ``fractions``). Sizes longer than every segment are left out.

    The alert reads the largest PSI / bound over all features, so each feature's own ``quantile``
    (``q_j``) is scaled by one factor per size: the ``quantile`` of ``max_j PSI_j / q_j`` over the
    windows (at least 1). Then a ``quantile`` share of the windows has every feature under its bound
    (family-wise), where per-feature quantiles alone would let about 33 times as many through."""
    edges, fractions = reference["edges"], reference["fractions"]
    kept, bounds, counts, medians, scales = [], [], [], [], []
    for size in sorted(set(int(s) for s in sizes)):
        parts = [window_psi(s, edges, fractions, size, stride) for s in segments if len(s) >= size]
        if not parts:
            continue
        psi = np.concatenate(parts)
        q = np.maximum(np.quantile(psi, quantile, axis=0), 1e-9)  # (F,) each feature's own quantile
        scale = max(1.0, float(np.quantile((psi / q).max(axis=1), quantile)))  # over all F at once
        kept.append(size)
        bounds.append(q * scale)
        scales.append(round(scale, 6))
        medians.append(np.median(psi, axis=0))
        counts.append(len(psi))
    if not kept:
        raise ValueError(f"no segment holds a window of {min(sizes)} rows")
    b = np.maximum.accumulate(np.array(bounds)[::-1], axis=0)[::-1]  # non-increasing in the size
    return {"statistic": "PSI of consecutive feature rows against psi_reference", "quantile": quantile,
            "sizes": kept, "bounds": [[round(float(v), 6) for v in row] for row in b],
            "familywise_scale": scales, "medians": [[round(float(v), 6) for v in row] for row in medians],
            "windows": counts, "stride": stride, "rows": int(sum(len(s) for s in segments)),
            "source": source or "training rows, windows of consecutive rows"}


def bounds_at(psi_bounds: Mapping[str, Any], rows: int) -> np.ndarray | None:
    """Each feature's bound for a PSI over ``rows`` rows: the bound of the largest calibrated size
    at or below ``rows`` (the conservative one between two sizes; the largest size's beyond it).
    None when ``rows`` is below every calibrated size (not calibrated for so few rows)."""
    sizes = list(psi_bounds["sizes"])
    i = int(np.searchsorted(sizes, rows, side="right")) - 1
    if i < 0:
        return None
    return np.asarray(psi_bounds["bounds"][i], np.float64)
