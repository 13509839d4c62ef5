"""The batch path: ``FeatureEngine.step`` driven over a ``BarFrame`` (the same code as live).

Its rows are bit-identical (float64) to feeding the bars one by one through ``update()``, because
they are computed by the very same method. Throughput: see docs/BENCHMARKS.md (## Features).
"""

from __future__ import annotations

from itertools import chain

import numpy as np

from barsignal.features.bar import INTERVAL_MS, BarFrame
from barsignal.features.engine import FeatureEngine
from barsignal.features.spec import N_FEATURES, WARMUP_BARS


def compute_with_ready(frame: BarFrame, gap_policy: str = "continue",
                       interval_ms: int = INTERVAL_MS) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, 33) float64 and the ready mask (N,) bool: row i is what ``update`` returns at bar i.

    With ``gap_policy="reset"`` the mask turns false again for ``WARMUP_BARS`` bars after each gap.
    A bad bar raises ``BadMessage`` (the frame should have been validated by the loader).
    """
    eng = FeatureEngine(gap_policy, interval_ms)
    step = eng.step
    rows: list[list[float]] = []
    seen: list[int] = []
    add_row = rows.append
    add_seen = seen.append
    cols = (frame.open_time.tolist(), frame.open.tolist(), frame.high.tolist(), frame.low.tolist(),
            frame.close.tolist(), frame.volume.tolist())
    for t, o, h, lo, c, v in zip(*cols, strict=True):
        add_row(step(t, o, h, lo, c, v))
        add_seen(eng.bars_seen)
    if not rows:
        return np.zeros((0, N_FEATURES), dtype=np.float64), np.zeros(0, dtype=bool)
    X = np.fromiter(chain.from_iterable(rows), np.float64, count=len(rows) * N_FEATURES)
    return X.reshape(len(rows), N_FEATURES), np.array(seen, dtype=np.int64) >= WARMUP_BARS


def compute(frame: BarFrame, gap_policy: str = "continue", interval_ms: int = INTERVAL_MS) -> np.ndarray:
    """Features (N, 33) float64 for every bar of ``frame`` (see :func:`compute_with_ready`)."""
    return compute_with_ready(frame, gap_policy, interval_ms)[0]


def window_ends(ready: np.ndarray, length: int) -> np.ndarray:
    """Indices i whose last ``length`` rows are all ready: the bars where ``OnlineFeatures`` returns a window.

    The window at such an i is ``normalizer.transform(X)[i - length + 1 : i + 1]``, equal bit for bit
    to what ``OnlineFeatures.update`` hands out at bar i.
    """
    ready = np.asarray(ready, dtype=bool)
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    # length of the run of ready rows ending at each index
    idx = np.arange(len(ready))
    last_false = np.maximum.accumulate(np.where(ready, -1, idx))
    run = idx - last_false
    return np.flatnonzero(run >= length)
