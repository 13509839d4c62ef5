"""The exchange's clock, measured against the local one: how far ahead a frame may be believed.

Sans I/O: the driver passes each frame's event time ``E`` with the local (monotonic) time it
arrived, and asks :meth:`ExchangeClock.limit_ms` for the latest exchange time it may believe now.

The model is ``exchange = rate * local + offset``. Both are fitted robustly on the last ``window``
samples, whatever symbol they came from: the rate is the median slope between each sample and the one half a window
later (pairs at least ``min_span_ms`` of local time apart; a rate within 10 % of 1 is taken as exactly 1,
what every real exchange runs at), the offset the upper quartile of ``E - rate * local`` (a frame
read late, behind a busy loop, lies below it, so honest frames are not judged by the late ones). A
forged ``E`` is one outlier among ``window`` samples: it moves neither (up to about a quarter of the
window may lie). Until ``min_samples`` have arrived the clock is unknown (``limit_ms`` is None) and nothing
is believed; so it is until the samples spread over enough local time to measure the rate (frames
read in one burst, behind a busy start, cannot tell it). The limit is the estimate plus ``tolerance_ms`` of LOCAL time (``rate * tolerance_ms``
of exchange time: a simulator replaying faster than real time gets the same slack in wall time).
"""

from __future__ import annotations

from collections import deque

__all__ = ["ExchangeClock"]


class ExchangeClock:
    """A robust fit of the exchange's clock on the local one (see the module doc)."""

    def __init__(self, *, tolerance_ms: float = 5_000.0, window: int = 48, min_samples: int = 8,
                 min_span_ms: float = 100.0, refresh_every: int = 4, refresh_ms: float = 50.0) -> None:
        if window < min_samples or min_samples < 3:
            raise ValueError(f"an exchange clock needs window >= min_samples >= 3, got {window}, {min_samples}")
        self.tolerance_ms = float(tolerance_ms)
        self.window, self.min_samples = int(window), int(min_samples)
        self.min_span_ms, self.refresh_every = float(min_span_ms), max(1, int(refresh_every))
        self.refresh_ms = float(refresh_ms)  # at most one fit per this much local time (a burst is one)
        self._fit_at = -float("inf")
        self._samples: deque[tuple[float, float]] = deque(maxlen=self.window)  # (local ms, exchange ms)
        self._n = 0  # samples seen in all
        self._fresh = 0  # samples since the last fit
        self.rate = 1.0
        self._rated = False  # a rate was measured (samples spread over enough local time)
        self.offset: float | None = None  # exchange ms at local 0, once fitted

    @property
    def known(self) -> bool:
        return self.offset is not None

    def observe(self, exchange_ms: int, local_ms: float) -> None:
        """One frame's event time ``E`` and the local time it arrived."""
        self._samples.append((float(local_ms), float(exchange_ms)))
        self._n += 1
        self._fresh += 1
        if self._n >= self.min_samples and (self.offset is None or (
                self._fresh >= self.refresh_every and local_ms - self._fit_at >= self.refresh_ms)):
            self._fit(local_ms)

    def now_ms(self, local_ms: float) -> int | None:
        """The exchange's time at ``local_ms`` (None before the clock is known)."""
        if self.offset is None:
            return None
        return int(self.rate * local_ms + self.offset)

    def limit_ms(self, local_ms: float) -> int | None:
        """The latest exchange time believable at ``local_ms``: the estimate plus the tolerance."""
        if self.offset is None:
            return None
        return int(self.rate * (local_ms + self.tolerance_ms) + self.offset)

    def _fit(self, local_ms: float) -> None:
        self._fresh, self._fit_at = 0, local_ms
        xs = self._samples  # oldest first
        h = len(xs) // 2
        slopes = [(xs[i + h][1] - xs[i][1]) / d for i in range(h)
                  if (d := xs[i + h][0] - xs[i][0]) >= self.min_span_ms]
        if len(slopes) >= max(3, h // 2):  # enough spread in local time to see a rate
            rate = _median(slopes)
            self.rate = 1.0 if 0.9 <= rate <= 1.1 else max(rate, 1e-3)
            self._rated = True
        if not self._rated:
            return  # frames read in a burst (a busy start): no rate yet, so no clock
        r = self.rate
        offsets = sorted(e - r * lo for lo, e in xs)
        self.offset = offsets[(3 * len(offsets)) // 4]  # a frame read late (a busy loop) lies below it


def _median(v: list[float]) -> float:
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
