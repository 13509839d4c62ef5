"""``RollingWindow``: the last T normalized feature rows as a (T, F) float32 C-contiguous view, no copy."""

from __future__ import annotations

import numpy as np


class RollingWindow:
    """Each row is written twice into a (2T, F) buffer, so the last T rows are always one slice.

    ``view()`` returns that slice (oldest row first) without copying; it is overwritten by later
    pushes, so a caller that keeps a window past the next ``push`` must copy it. The shape comes
    from the model artifact: callers pass it, nothing here hard-codes 30 x 33.
    """

    def __init__(self, length: int, n_features: int) -> None:
        if length < 1 or n_features < 1:
            raise ValueError(f"window shape must be positive, got ({length}, {n_features})")
        self.length = int(length)
        self.n_features = int(n_features)
        self._buf = np.zeros((2 * self.length, self.n_features), dtype=np.float32)
        self._views = [self._buf[i:i + self.length] for i in range(self.length)]
        self.reset()

    def reset(self) -> None:
        self._pos = 0  # slot of the next row == slot of the oldest row once full
        self.count = 0
        self._buf.fill(0.0)

    @property
    def ready(self) -> bool:
        return self.count >= self.length

    def push(self, row: np.ndarray) -> None:
        """Append one (F,) row (cast to float32)."""
        p = self._pos
        self._buf[p] = row
        self._buf[p + self.length] = row
        p += 1
        self._pos = 0 if p == self.length else p
        self.count += 1

    def snapshot(self) -> tuple[int, int, np.ndarray]:
        """The window as it is, for :meth:`restore`."""
        return self._pos, self.count, self._buf.copy()

    def restore(self, snap: tuple[int, int, np.ndarray]) -> None:
        """Put the window back as :meth:`snapshot` found it (the same buffer and views)."""
        self._pos, self.count, buf = snap
        self._buf[...] = buf

    def view(self) -> np.ndarray:
        """The (T, F) float32 C-contiguous window, oldest row first (zeros before ``ready``)."""
        return self._views[self._pos]
