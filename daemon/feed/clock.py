"""The exchange's clock, measured against the local one: how far ahead a frame may be believed.

Sans I/O: the driver passes each frame's event time ``E`` with the local (monotonic) time it
arrived and its symbol, and asks :meth:`ExchangeClock.limit_ms` for the latest exchange time it may
believe now.

The model is ``exchange = rate * local + offset``, fitted on votes, not frames:

- the samples are grouped into buckets of ``bucket_ms`` (25 ms) of local time; in each, every source
  (symbol) keeps its sample of highest ``E`` (its frame read least late: frames read in a burst,
  behind a busy loop, are all late but the last), and the bucket's vote is the lower median of
  those. A symbol that sends a thousand frames in a bucket still has one vote in it.
- the rate is the median slope between each of the last ``buckets`` votes and the one half of them
  later; once votes a second or more apart (``anchors``) span long enough, between those instead,
  which sees the rate over tens of seconds. Within 10 % of 1 it is taken as exactly 1, what every
  real exchange runs at (a simulator replaying faster gets its own). The offset is the median of
  ``E - rate * local`` over the last ``buckets`` votes.

A forged ``E`` moves neither unless the liars carry most of the votes of most of the last
``buckets`` buckets: with several symbols, most of the symbols; with one, most of the last
``buckets * bucket_ms`` of local time. Until ``min_buckets`` votes spread over time give a rate the
clock is unknown: ``limit_ms`` is None and nothing is believed. The limit is the estimate plus
``tolerance_ms`` of LOCAL time (``rate * tolerance_ms`` of exchange time: a simulator replaying
faster than real time gets the same slack in wall time). Each call is O(1) but the close of a
bucket, which sorts its votes and ``buckets`` numbers.
"""

from __future__ import annotations

from collections import deque

__all__ = ["ExchangeClock"]


class ExchangeClock:
    """A robust fit of the exchange's clock on the local one (see the module doc)."""

    def __init__(self, *, tolerance_ms: float = 5_000.0, bucket_ms: float = 25.0, buckets: int = 16,
                 min_buckets: int = 6, anchor_ms: float = 1_000.0) -> None:
        if not 4 <= min_buckets <= buckets:
            raise ValueError(f"an exchange clock needs buckets >= min_buckets >= 4, got {buckets}, {min_buckets}")
        self.tolerance_ms, self.bucket_ms = float(tolerance_ms), float(bucket_ms)
        self.min_buckets = int(min_buckets)
        self._votes: deque[tuple[float, float]] = deque(maxlen=int(buckets))  # (local ms, exchange ms)
        self._anchors: deque[tuple[float, float]] = deque(maxlen=int(buckets))  # votes >= anchor_ms apart
        self.anchor_ms = float(anchor_ms)
        self._bucket: dict[object, tuple[float, float]] = {}  # source -> its sample of highest E
        self._bucket_end = -float("inf")
        self.rate = 1.0
        self.offset: float | None = None  # exchange ms at local 0, once the rate is measured

    @property
    def known(self) -> bool:
        return self.offset is not None

    def observe(self, exchange_ms: int, local_ms: float, source: object = None) -> None:
        """One frame's event time ``E``, the local time it arrived and where it came from (its symbol)."""
        if local_ms >= self._bucket_end:
            self._close_bucket()
            self._bucket_end = local_ms + self.bucket_ms
        best = self._bucket.get(source)
        if best is None or exchange_ms > best[1]:
            self._bucket[source] = (float(local_ms), float(exchange_ms))

    def tick(self, local_ms: float) -> None:
        """Local time passed with no frame: a bucket whose time is up is closed (its vote counts)."""
        if self._bucket and local_ms >= self._bucket_end:
            self._close_bucket()

    @property
    def waiting(self) -> bool:
        """A bucket holds samples that vote once its time is up."""
        return bool(self._bucket)

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

    def provisional_ms(self, local_ms: float) -> int | None:
        """Before the fit, for a stream that went quiet too soon to give a rate: the newest vote's time
        (a stream's last frames are its newest; with no rate, older votes cannot be carried forward).
        Only held bars are released with it, once; a liar whose frame is the last before such a silence
        is believed. None without votes."""
        self.tick(local_ms)
        if not self._votes:
            return None
        return int(max(e for _, e in self._votes))

    def _close_bucket(self) -> None:
        if not self._bucket:
            return
        b = sorted(self._bucket.values(), key=lambda x: x[1])
        vote = b[(len(b) - 1) // 2]  # the lower median: an even split never picks the liar
        self._votes.append(vote)
        self._bucket = {}
        if not self._anchors or vote[0] - self._anchors[-1][0] >= self.anchor_ms:
            self._anchors.append(vote)
        votes = self._votes
        if len(votes) < self.min_buckets:
            return
        slopes = _slopes(self._anchors) if len(self._anchors) >= self.min_buckets else []
        if len(slopes) < 3:
            slopes = _slopes(votes)
        if len(slopes) < 3:
            return
        rate = _lower_median(slopes)
        self.rate = r = 1.0 if 0.9 <= rate <= 1.1 else max(rate, 1e-3)
        self.offset = _lower_median([e - r * lo for lo, e in votes])


def _slopes(votes: deque[tuple[float, float]]) -> list[float]:
    """The slope between each vote and the one half of them later."""
    h = len(votes) // 2
    return [(votes[i + h][1] - votes[i][1]) / d for i in range(h) if (d := votes[i + h][0] - votes[i][0]) > 0]


def _lower_median(v: list[float]) -> float:
    """The lower median (of two, the smaller: a clock too slow drops honest frames, too fast lets a liar in)."""
    return sorted(v)[(len(v) - 1) // 2]
