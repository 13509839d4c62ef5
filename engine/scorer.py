"""The ``Scorer`` plug-in point: a loaded model that turns a window into an up-probability."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Scorer(Protocol):
    """A scoring backend. ``window`` is a (T, F) float32 C-contiguous array (T=30, F=33)."""

    name: str  # backend name, e.g. "onnxruntime"

    def score(self, window: np.ndarray) -> float:
        """Up-probability of one (T, F) window; the value is a float32 widened to float."""
        ...

    def score_batch(self, windows: np.ndarray) -> np.ndarray:
        """Up-probabilities (N,) float32 of (N, T, F) windows, for offline evaluation only. Close to N
        calls of ``score`` but not always bit-identical (ONNX Runtime's batched graph can differ by an
        ulp), so the daemon, replay and parity never call it: every signal comes from ``score``."""
        ...
