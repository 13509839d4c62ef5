"""``load(path)`` / ``load_many(paths)``: a bar file -> a sorted, checked ``BarFrame`` and its report."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from barsignal.data.formats import read_columns
from barsignal.data.intervals import INTERVAL_MS
from barsignal.data.validate import OHLCV, Report, validate
from barsignal.errors import DataError
from barsignal.features.bar import BarFrame

_IV_IN_NAME = re.compile(r"[-_](" + "|".join(sorted(INTERVAL_MS, key=len, reverse=True)) + r")(?=[-_.]|$)")


@dataclass
class Loaded:
    """A loaded bar series: ``frame`` (sorted, exact duplicates dropped), its ``report``, and the
    full-kline ``extra`` columns (close_time, quote_volume, count, ...) aligned with ``frame`` when
    the source had them."""

    frame: BarFrame
    report: Report
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)

    def columns(self) -> dict[str, np.ndarray]:
        """All columns (open_time, OHLCV, extras), e.g. to write the Parquet cache."""
        f = self.frame
        return {"open_time": f.open_time, "open": f.open, "high": f.high, "low": f.low,
                "close": f.close, "volume": f.volume, **self.extra}


def interval_from_name(path: str | Path) -> int | None:
    """The interval a file name states (``BTCUSDT-1m-2022-05-01.csv`` -> 60000), if any."""
    m = _IV_IN_NAME.search(Path(path).name)
    return INTERVAL_MS[m[1]] if m else None


def load(path: str | Path, *, allow_conflicts: bool = False) -> Loaded:
    """Load one bar file (CSV, zip, freqtrade JSON, Parquet). Raises DataError on bad data."""
    return load_many([path], allow_conflicts=allow_conflicts)


def load_many(paths: Iterable[str | Path], *, allow_conflicts: bool = False) -> Loaded:
    """Load several files as one series: duplicates across files are dropped, gaps between them reported."""
    ps = [Path(p) for p in paths]
    if not ps:
        raise DataError("no bar files given")
    parts = [read_columns(p) for p in ps]
    common = [k for k in parts[0] if all(k in c for c in parts)]
    if len(parts) == 1:
        cols = parts[0]
        src = np.zeros(len(cols["open_time"]), dtype=np.int32)
    else:
        cols = {k: np.concatenate([c[k] for c in parts]) for k in common}
        src = np.concatenate([np.full(len(c["open_time"]), i, dtype=np.int32) for i, c in enumerate(parts)])
    hints = {interval_from_name(p) for p in ps}
    hint = hints.pop() if len(hints) == 1 else None
    clean, report = validate(cols, [str(p) for p in ps], src, allow_conflicts=allow_conflicts,
                             interval_hint=hint)
    frame = BarFrame(clean["open_time"], *(clean[k] for k in OHLCV))
    extra = {k: v for k, v in clean.items() if k != "open_time" and k not in OHLCV}
    return Loaded(frame=frame, report=report, extra=extra, paths=ps)
