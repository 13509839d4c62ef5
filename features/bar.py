"""The ``Bar`` type every part of barsignal sees, and ``BarFrame``, its columnar form for batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

INTERVAL_MS = 60_000  # 1-minute bars


@dataclass(frozen=True, slots=True)
class Bar:
    """One closed kline. ``open_time`` is the bar's open time in ms since the epoch, UTC."""

    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    source: str = "file"  # "ws", "rest" or "file": where the bar came from


@dataclass(frozen=True)
class BarFrame:
    """Bars as columns (open_time int64 ms; OHLCV float64), sorted and de-duplicated."""

    open_time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.open_time)
        for name in ("open", "high", "low", "close", "volume"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"BarFrame column {name!r} has {len(getattr(self, name))} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.open_time)

    def bar(self, i: int, source: str = "file") -> Bar:
        return Bar(
            int(self.open_time[i]), float(self.open[i]), float(self.high[i]), float(self.low[i]),
            float(self.close[i]), float(self.volume[i]), source,
        )

    def bars(self, source: str = "file") -> Iterator[Bar]:
        t, o, h, lo, c, v = (a.tolist() for a in (self.open_time, self.open, self.high, self.low,
                                                  self.close, self.volume))
        for i in range(len(t)):
            yield Bar(t[i], o[i], h[i], lo[i], c[i], v[i], source)

    def slice(self, start: int, stop: int) -> BarFrame:
        return BarFrame(*(a[start:stop] for a in (self.open_time, self.open, self.high, self.low,
                                                  self.close, self.volume)))

    @classmethod
    def from_bars(cls, bars: list[Bar]) -> BarFrame:
        return cls(
            np.array([b.open_time for b in bars], dtype=np.int64),
            *(np.array([getattr(b, k) for b in bars], dtype=np.float64)
              for k in ("open", "high", "low", "close", "volume")),
        )

    @classmethod
    def concat(cls, frames: list[BarFrame]) -> BarFrame:
        return cls(*(np.concatenate([getattr(f, k) for f in frames])
                     for k in ("open_time", "open", "high", "low", "close", "volume")))
