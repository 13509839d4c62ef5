"""The exchange's clock, measured against the local one: how far ahead a frame may be believed.

Sans I/O: the driver passes each frame's event time ``E`` with the local (monotonic) time it
arrived, and asks :meth:`ExchangeClock.limit_ms` for the latest exchange time it may believe now.

The model is ``exchange = rate * local + offset``, fitted robustly, whatever symbol a sample came
from:

- the rate: the samples the limit let through are grouped into buckets of ``bucket_ms`` of local time and each bucket is
  represented by its sample of median ``E``; the rate is the median slope between each of the last
  ``buckets`` representatives and the one half of them later. A rate within 10 % of 1 is taken as
  exactly 1, what every real exchange runs at; a simulator replaying faster gets its own.
- the offset: the upper quartile of ``E - rate * local`` over the last ``window`` samples the limit
  let through (a frame read late, behind a busy loop, lies below it, so honest frames are not judged
  by the late ones), or the median over the last ``window`` samples of all, if that is higher (when
  most frames say the clock is behind, it is: a restarted simulator).

A forged ``E`` is an outlier: it moves neither, however many frames carry it, unless the liars send
most of the recent frames. Until the rate is measured (``min_buckets`` representatives spread over time) the clock
is unknown: ``limit_ms`` is None and nothing is believed. The limit is the estimate plus
``tolerance_ms`` of LOCAL time (``rate * tolerance_ms`` of exchange time: a simulator replaying
faster than real time gets the same slack in wall time). Every call is O(1) but a refit, at most
once per ``refresh_ms``, which sorts ``window`` numbers.
"""

from __future__ import annotations

from collections import deque

__all__ = ["ExchangeClock"]


class ExchangeClock:
    """A robust fit of the exchange's clock on the local one (see the module doc)."""

    def __init__(self, *, tolerance_ms: float = 5_000.0, window: int = 64, bucket_ms: float = 250.0,
                 buckets: int = 16, min_buckets: int = 6, refresh_ms: float = 50.0) -> None:
        if not 4 <= min_buckets <= buckets or window < 4:
            raise ValueError(f"an exchange clock needs buckets >= min_buckets >= 4 and window >= 4, got "
                             f"{buckets}, {min_buckets}, {window}")
        self.tolerance_ms, self.bucket_ms, self.refresh_ms = float(tolerance_ms), float(bucket_ms), float(refresh_ms)
        self.min_buckets = int(min_buckets)
        self._samples: deque[tuple[float, float]] = deque(maxlen=int(window))  # (local ms, exchange ms) let through
        self._all: deque[tuple[float, float]] = deque(maxlen=int(window))  # every sample
        self._reps: deque[tuple[float, float]] = deque(maxlen=int(buckets))  # one per bucket of local time
        self._bucket: list[tuple[float, float]] = []
        self._bucket_end = -float("inf")
        self._fit_at = -float("inf")
        self._dirty = False
        self.rate = 1.0
        self.offset: float | None = None  # exchange ms at local 0, once the rate is measured

    @property
    def known(self) -> bool:
        return self.offset is not None

    def observe(self, exchange_ms: int, local_ms: float) -> None:
        """One frame's event time ``E`` and the local time it arrived."""
        x = (float(local_ms), float(exchange_ms))
        lim = self.limit_ms(local_ms)
        self._all.append(x)
        if lim is None or exchange_ms <= lim:  # a sample the limit let through
            self._samples.append(x)
            if local_ms >= self._bucket_end:
                self._close_bucket()
                self._bucket_end = local_ms + self.bucket_ms
            self._bucket.append(x)
        self._dirty = True
        if self.offset is not None and local_ms - self._fit_at >= self.refresh_ms:
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
        if self._dirty and local_ms - self._fit_at >= self.refresh_ms:
            self._fit(local_ms)
        return int(self.rate * (local_ms + self.tolerance_ms) + self.offset)

    def _close_bucket(self) -> None:
        b = self._bucket
        if not b:
            return
        b.sort(key=lambda x: x[1])
        self._reps.append(b[(len(b) - 1) // 2])  # the lower median: an even split never picks the liar
        self._bucket = []
        reps = self._reps
        h = len(reps) // 2
        if len(reps) < self.min_buckets:
            return
        slopes = [(reps[i + h][1] - reps[i][1]) / d for i in range(h) if (d := reps[i + h][0] - reps[i][0]) > 0]
        if len(slopes) >= 3:
            rate = _median(slopes)
            self.rate = 1.0 if 0.9 <= rate <= 1.1 else max(rate, 1e-3)
            if self.offset is None:
                self._fit(reps[-1][0])

    def _fit(self, local_ms: float) -> None:
        self._fit_at, self._dirty = local_ms, False
        r = self.rate
        ok = sorted(e - r * lo for lo, e in self._samples)
        every = sorted(e - r * lo for lo, e in self._all)
        self.offset = max(ok[(3 * len(ok)) // 4] if ok else -float("inf"), every[(len(every) - 1) // 2])


def _median(v: list[float]) -> float:
    """The lower median (of two, the smaller: a rate too low drops honest frames, too high lets a liar in)."""
    return sorted(v)[(len(v) - 1) // 2]
