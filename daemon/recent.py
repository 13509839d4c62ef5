"""The last bars a pipeline saw, kept compactly for a hot swap's warm-up.

A pipeline keeps its model's warm-up worth of recent bars (~740) so that a SIGHUP swap can warm
the new model's features on them. As a deque of :class:`Bar` objects that is ~190 kB a symbol
(77 MiB at 400 symbols); here the same bars sit in five float64 columns, an int64 column and a
byte for the source: ~36 kB a symbol. Bars come back as equal :class:`Bar` objects (floats are
stored exactly).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from barsignal.features.bar import Bar


class BarRing:
    """A bounded, append-only sequence of bars, oldest first: ``append``, ``len``, iteration and
    indexing (negative too), like ``deque(maxlen=maxlen)``."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = max(0, int(maxlen))
        self._t = np.zeros(self.maxlen, np.int64)
        self._v = np.zeros((self.maxlen, 5), np.float64)  # open, high, low, close, volume
        self._src = np.zeros(self.maxlen, np.uint8)
        self._names: list[str] = []  # source names, by code
        self._codes: dict[str, int] = {}
        self._head = 0  # where the next bar goes
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def append(self, bar: Bar) -> None:
        if not self.maxlen:
            return
        code = self._codes.get(bar.source)
        if code is None:
            if len(self._names) == 255:
                raise ValueError("more than 255 distinct bar sources")
            code = self._codes[bar.source] = len(self._names)
            self._names.append(bar.source)
        i = self._head
        self._t[i] = bar.open_time
        self._v[i] = (bar.open, bar.high, bar.low, bar.close, bar.volume)
        self._src[i] = code
        self._head = (i + 1) % self.maxlen
        self._size = min(self._size + 1, self.maxlen)

    def _bar(self, i: int) -> Bar:
        o, h, lo, c, v = self._v[i].tolist()
        return Bar(int(self._t[i]), o, h, lo, c, v, self._names[self._src[i]])

    def __getitem__(self, k: int) -> Bar:
        n = self._size
        if not -n <= k < n:
            raise IndexError("bar index out of range")
        return self._bar((self._head - n + (k % n)) % self.maxlen)

    def __iter__(self) -> Iterator[Bar]:
        start = self._head - self._size
        for j in range(self._size):
            yield self._bar((start + j) % self.maxlen)
