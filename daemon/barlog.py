"""The record of every closed bar the live daemon used, with its source (ws or rest).

One JSON line per bar, ``{"open_time", "open", "high", "low", "close", "volume", "source"}``,
after a first line ``{"run_start": {"run", "last_signalled", "rule_state"}}``: the state the run
started from (restored from the outbox). Each daemon run writes its own files,
``<state>/bars/<SYMBOL>-<RUN>-<YYYY-MM-DD>.jsonl`` (RUN is the run's UTC start to the millisecond,
``YYYYmmddTHHMMSSmmmZ``; a new file each day: bounded files, old ones can be removed). A run's bars
start with its warm-up (REST), so a restart re-records some bars: replay each run
(``read_run_records``) through a fresh pipeline started from its ``run_start`` to reproduce its
signals exactly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from barsignal.engine.signal import RuleState
from barsignal.errors import DataError
from barsignal.features.bar import Bar

_KEYS = ("open_time", "open", "high", "low", "close", "volume", "source")


def _day(open_time_ms: int) -> str:
    return datetime.fromtimestamp(open_time_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def new_run_id() -> str:
    """The run's UTC start to the millisecond: two quick restarts never share a file."""
    ms = time.time_ns() // 1_000_000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000)) + f"{ms % 1000:03d}Z"


@dataclass
class Run:
    """One daemon run's record: the state it started from and the bars it used, in order."""

    id: str
    bars: list[Bar] = field(default_factory=list)
    last_signalled: int | None = None  # the outbox's last signalled bar at start (None: first run)
    rule_state: RuleState | None = None  # the rule state restored with it
    has_start: bool = False  # a run_start line was read (records from before it have none)


class BarLog:
    """Appends bars to this run's file for the bar's day. One ``write`` per bar, no fsync: a crash
    loses at most the OS buffer, and the restart re-fetches those bars over REST anyway."""

    def __init__(self, directory: str | Path, symbol: str, run_id: str | None = None, *,
                 last_signalled: int | None = None, rule_state: RuleState | None = None) -> None:
        self.dir = Path(directory)
        self.symbol = symbol
        self.run_id = run_id or new_run_id()
        self._header = orjson.dumps({"run_start": {
            "run": self.run_id, "last_signalled": last_signalled,
            "rule_state": rule_state.to_dict() if rule_state is not None else None}}) + b"\n"
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
            os.write(self._fd, self._header)
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


def _read_file(f: Path, run: Run) -> None:
    """Append ``f``'s bars to ``run``; its ``run_start`` line (the first one seen) sets the start state."""
    with open(f, "rb") as fh:
        lines = fh.read().split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
            if "run_start" in d:
                if not run.has_start:
                    run.has_start = True
                    h = d["run_start"]
                    ls = h.get("last_signalled")
                    run.last_signalled = int(ls) if ls is not None else None
                    rs = h.get("rule_state")
                    run.rule_state = RuleState.from_dict(rs) if rs is not None else None
                continue
            run.bars.append(Bar(int(d["open_time"]), float(d["open"]), float(d["high"]), float(d["low"]),
                                float(d["close"]), float(d["volume"]), str(d["source"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            if n >= len(lines) - 1:  # a torn last line after a crash: stop there
                return
            raise DataError(f"{f}:{n}: bad bar record line ({exc})") from None


def read_run_records(path: str | Path, symbol: str | None = None) -> list[Run]:
    """Each daemon run's start state and bars, runs in start order."""
    files = barlog_files(path, symbol)
    if not files:
        raise DataError(f"{path}: no bar record here (expected <SYMBOL>-<RUN>-<YYYY-MM-DD>.jsonl files)")
    out: dict[str, Run] = {}
    for f in files:
        rid = _run_of(f)
        _read_file(f, out.setdefault(rid, Run(rid)))
    return list(out.values())


def read_runs(path: str | Path, symbol: str | None = None) -> dict[str, list[Bar]]:
    """Bars per daemon run (run id -> bars in the order used), runs in start order."""
    return {r.id: r.bars for r in read_run_records(path, symbol)}


def read_barlog(path: str | Path, symbol: str | None = None) -> Iterator[Bar]:
    """Every recorded bar, run after run (a restart's warm-up bars appear again in the next run)."""
    for bars in read_runs(path, symbol).values():
        yield from bars
