"""Real bars for the feature tests: the spot 1m files through the data loader, loaded once."""

from __future__ import annotations

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
    """A bar file (here the freqtrade JSON spot files) as a checked BarFrame."""
    from barsignal.data import load

    return load(path).frame


@cache
def features_of(path: Path) -> tuple[BarFrame, np.ndarray, np.ndarray]:
    """(frame, X (N, 33) float64 read-only, ready (N,) bool) from the batch path."""
    frame = load_frame(path)
    X, ready = compute_with_ready(frame)
    X.setflags(write=False)
    return frame, X, ready
