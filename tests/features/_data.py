"""Real bars for the feature tests: the freqtrade JSON spot 1m files (OHLCV rows), loaded once."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import numpy as np
from barsignal.features.bar import BarFrame
from barsignal.features.batch import compute_with_ready

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("BARSIGNAL_SHARED", REPO.parent / "shared")).resolve()
SPOT_1M = sorted((SHARED / "data" / "klines" / "spot_1m").glob("*.json"))


@cache
def load_frame(path: Path) -> BarFrame:
    """A freqtrade JSON file ``[[open_time_ms, o, h, l, c, v], ...]`` as a BarFrame."""
    a = np.array(json.loads(Path(path).read_text()), dtype=np.float64)
    return BarFrame(a[:, 0].astype(np.int64), *(np.ascontiguousarray(a[:, k]) for k in range(1, 6)))


@cache
def features_of(path: Path) -> tuple[BarFrame, np.ndarray, np.ndarray]:
    """(frame, X (N, 33) float64 read-only, ready (N,) bool) from the batch path."""
    frame = load_frame(path)
    X, ready = compute_with_ready(frame)
    X.setflags(write=False)
    return frame, X, ready
