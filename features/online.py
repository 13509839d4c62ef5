"""``OnlineFeatures``: bar -> features -> normalized row -> rolling window.

Live, replay and training share it.
"""

from __future__ import annotations

import numpy as np

from barsignal.errors import BadMessage
from barsignal.features.bar import INTERVAL_MS, Bar
from barsignal.features.engine import FeatureEngine
from barsignal.features.normalize import Normalizer
from barsignal.features.spec import N_FEATURES, RESTART_WARMUP_BARS, WARMUP_BARS
from barsignal.features.window import RollingWindow


class OnlineFeatures:
    """One object per stream. ``update(bar)`` returns the (window_len, 33) float32 window view once
    the engine is ready and the window full, else None. Rows enter the window only once the engine
    is ready; with gap policy "reset" a gap empties the window too.

    The returned view is overwritten by the next update (copy to keep it). Equal, bit for bit, to
    ``normalizer.transform(batch.compute(frame))[i - window_len + 1 : i + 1]`` at every index of
    ``batch.window_ends(ready, window_len)``.
    """

    def __init__(self, normalizer: Normalizer, window_len: int, gap_policy: str = "continue",
                 interval_ms: int = INTERVAL_MS) -> None:
        self.normalizer = normalizer
        self.engine = FeatureEngine(gap_policy, interval_ms)
        self.window = RollingWindow(window_len, N_FEATURES)
        self._row32 = np.zeros(N_FEATURES, dtype=np.float32)

    @property
    def last_gap(self) -> int:
        return self.engine.last_gap

    @property
    def ready(self) -> bool:
        return self.engine.ready and self.window.ready

    @property
    def first_window_bars(self) -> int:
        """Bars from a cold start until the first window (TA-Lib-valid features, not yet converged)."""
        return WARMUP_BARS + self.window.length - 1

    @property
    def bars_to_fetch(self) -> int:
        """Bars a live start must fetch and feed before its first signal, so that every row of its first
        window agrees with an uninterrupted run within ``spec.REL_TOL_RESTART``."""
        return RESTART_WARMUP_BARS + self.window.length - 1

    def reset(self) -> None:
        self.engine.reset()
        self.window.reset()

    def rehearse(self, bar: Bar) -> None:
        """Run :meth:`update` on ``bar`` and put every value back as it was: the hot path's code and
        this stream's own data are then in the caches when the real next bar comes (keep-warm), and
        nothing the next :meth:`update` returns can differ. A bar the engine refuses changes nothing."""
        eng = self.engine
        snap, win = eng.snapshot(), self.window.snapshot()
        try:
            self.update(bar)
        except BadMessage:
            pass
        finally:
            self.window.restore(win)
            eng.restore(snap)

    def update(self, bar: Bar) -> np.ndarray | None:
        eng = self.engine
        before = eng.bars_seen
        row = eng.update(bar)
        if eng.bars_seen <= before:  # the engine reset itself at a gap (policy "reset")
            self.window.reset()
        if not eng.ready:
            return None
        self.window.push(self.normalizer.transform_row(row, out=self._row32))
        return self.window.view() if self.window.ready else None
