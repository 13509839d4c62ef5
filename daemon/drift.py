"""Bounded, compact rolling state for the live monitor: one per symbol, so hundreds of symbols fit.

- :class:`RollingPSI`: the population stability index of the last ``window`` feature rows against
  reference bins, kept as bin counts over a ring of bin indices (one byte a feature a row). A row
  costs one vectorised comparison and two scatter updates; the PSI costs features x bins, whenever
  it is asked for. The same figure as binning the stacked rows at once (tests/daemon/test_drift.py).
- :class:`RollingOutcomes`: the last ``window`` (p_up, realised label) pairs in two arrays.

At 400 symbols and a 1440-row window the two hold about 20 MB in all, where a deque of row arrays
and of tuples held ~270 MB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def psi_terms(actual: np.ndarray, expected: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Per-bin PSI terms of ``actual`` against ``expected`` bin fractions (each floored at ``eps``);
    their sum over the bins (the last axis) is the PSI."""
    a = np.maximum(actual, eps)
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    return (a - e) * np.log(a / e)


def psi(actual: np.ndarray, edges: np.ndarray, expected: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of ``actual`` samples binned at once against ``expected`` bin
    fractions (what :class:`RollingPSI` keeps up to date row by row)."""
    counts = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(expected))
    return float(np.sum(psi_terms(counts / max(1, len(actual)), expected, eps)))


class RollingPSI:
    """PSI per feature of the last ``window`` rows against ``edges`` / ``fractions`` (per feature:
    sorted inner bin edges, and the reference fraction of each of the ``len(edges) + 1`` bins; a
    value ``x`` falls in bin ``searchsorted(edges, x, side="right")``)."""

    def __init__(self, edges: Sequence[np.ndarray], fractions: Sequence[np.ndarray], window: int,
                 eps: float = 1e-4) -> None:
        n = len(edges)
        width = max(len(e) for e in edges)
        self.edges = np.full((n, width), np.inf)  # padded with +inf: no finite value reaches those bins
        self.expected = np.zeros((n, width + 1))
        for j, (e, f) in enumerate(zip(edges, fractions, strict=True)):
            self.edges[j, :len(e)] = e
            self.expected[j, :len(f)] = f
        self.eps = eps
        self.window = int(window)
        self.counts = np.zeros((n, width + 1), np.int64)
        self.ring = np.zeros((self.window, n), np.uint8 if width + 1 <= 255 else np.uint16)
        self.head = 0  # where the next row goes
        self.size = 0  # rows held (<= window)
        self._features = np.arange(n)

    def __len__(self) -> int:
        return self.size

    def add(self, row: np.ndarray) -> None:
        """One feature row (finite values; its first ``n`` features are binned)."""
        x = np.asarray(row, np.float64)[: len(self._features)]
        idx = (self.edges <= x[:, None]).sum(axis=1)
        if self.size == self.window:
            self.counts[self._features, self.ring[self.head]] -= 1
        else:
            self.size += 1
        self.counts[self._features, idx] += 1
        self.ring[self.head] = idx
        self.head = (self.head + 1) % self.window

    def psi(self) -> np.ndarray:
        """PSI of each feature over the rows held (zeros before the first row)."""
        if not self.size:
            return np.zeros(len(self._features))
        return np.sum(psi_terms(self.counts / self.size, self.expected, self.eps), axis=1)


class RollingOutcomes:
    """The last ``window`` predictions with their realised labels (1 up, 0 down)."""

    def __init__(self, window: int) -> None:
        self.window = int(window)
        self._p = np.zeros(self.window)
        self._y = np.zeros(self.window, np.uint8)
        self.head = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, p_up: float, up: int) -> None:
        self._p[self.head] = p_up
        self._y[self.head] = up
        self.head = (self.head + 1) % self.window
        self.size = min(self.size + 1, self.window)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(p_up, label as float64) of the pairs held, oldest first."""
        order = np.arange(self.head - self.size, self.head) % self.window
        return self._p[order], self._y[order].astype(np.float64)
