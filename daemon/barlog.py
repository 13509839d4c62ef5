"""The record of every closed bar the live daemon used, with its source (ws or rest).

One JSON line per bar, ``{"open_time", "open", "high", "low", "close", "volume", "source"}``.
Each daemon run writes its own files, ``<state>/bars/<SYMBOL>-<RUN>-<YYYY-MM-DD>.jsonl`` (RUN is
the run's UTC start, ``YYYYmmddTHHMMSSZ``; a new file each day: bounded files, old ones can be
removed). A run's bars start with its warm-up (REST), so a restart re-records some bars: replay
each run (``read_runs``) through a fresh pipeline to reproduce its signals exactly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

from barsignal.errors import DataError
from barsignal.features.bar import Bar

_KEYS = ("open_time", "open", "high", "low", "close", "volume", "source")


def _day(open_time_ms: int) -> str:
    return datetime.fromtimestamp(open_time_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


class BarLog:
    """Appends bars to this run's file for the bar's day. One ``write`` per bar, no fsync: a crash
    loses at most the OS buffer, and the restart re-fetches those bars over REST anyway."""

    def __init__(self, directory: str | Path, symbol: str, run_id: str | None = None) -> None:
        self.dir = Path(directory)
        self.symbol = symbol
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._day = ""
        self._fd: int | None = None
        self.written = 0

    def record(self, bar: Bar) -> None:
        day = _day(bar.open_time)
        if day != self._day:
            self.close()
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"{self.symbol}-{self.run_id}-{day}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._day = day
        assert self._fd is not None
        os.write(self._fd, orjson.dumps({k: getattr(bar, k) for k in _KEYS}) + b"\n")
        self.written += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._day = ""


def barlog_files(path: str | Path, symbol: str | None = None) -> list[Path]:
    """The bar-record files under ``path`` (a file, or a directory), runs in order, days in order."""
    p = Path(path)
    if p.is_file():
        return [p]
    return sorted(p.glob(f"{symbol}-*.jsonl" if symbol else "*.jsonl"))


def _run_of(f: Path) -> str:
    parts = f.stem.rsplit("-", 4)  # SYMBOL-RUN-YYYY-MM-DD
    return parts[1] if len(parts) == 5 else f.stem


def _read_file(f: Path) -> Iterator[Bar]:
    with open(f, "rb") as fh:
        lines = fh.read().split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
            yield Bar(int(d["open_time"]), float(d["open"]), float(d["high"]), float(d["low"]),
                      float(d["close"]), float(d["volume"]), str(d["source"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if n >= len(lines) - 1:  # a torn last line after a crash: stop there
                return
            raise DataError(f"{f}:{n}: bad bar record line ({exc})") from None


def read_runs(path: str | Path, symbol: str | None = None) -> dict[str, list[Bar]]:
    """Bars per daemon run (run id -> bars in the order used), runs in start order."""
    files = barlog_files(path, symbol)
    if not files:
        raise DataError(f"{path}: no bar record here (expected <SYMBOL>-<RUN>-<YYYY-MM-DD>.jsonl files)")
    out: dict[str, list[Bar]] = {}
    for f in files:
        out.setdefault(_run_of(f), []).extend(_read_file(f))
    return out


def read_barlog(path: str | Path, symbol: str | None = None) -> Iterator[Bar]:
    """Every recorded bar, run after run (a restart's warm-up bars appear again in the next run)."""
    for bars in read_runs(path, symbol).values():
        yield from bars
