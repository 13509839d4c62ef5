"""The record of every closed bar the live daemon used, with its source (ws or rest).

One JSON line per bar, ``{"open_time", "open", "high", "low", "close", "volume", "source"}``,
after a first line ``{"run_start": {"run", "last_signalled", "rule_state", "artifact", "rule"}}``: the
state the run started from (restored from the outbox), the artifact (hash, path) and the rule's
settings (``SignalRule.params``) it started with. A SIGHUP model swap writes ``{"swap": {"artifact",
"path", "rule_state", "rule", "first_bar", "warm_from", "warm_bars"}}`` just before the first bar the
new model scored (``record_event``). Each daemon run writes its own files,
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
from typing import Any

import orjson

from barsignal.daemon.writer import WriterThread
from barsignal.engine.signal import RuleState
from barsignal.errors import DataError
from barsignal.features.bar import Bar
from barsignal.log import get_logger

log = get_logger(__name__)

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
    # other records (e.g. {"swap": {...}}), each with the number of this run's bars before it
    records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    artifact: dict | None = None  # {"hash", "path"} the run started with (None in older records)
    swaps: list[Swap] = field(default_factory=list)  # model swaps, in order
    rule: dict[str, Any] | None = None  # the rule's settings the run started with (SignalRule.params)


@dataclass
class Swap:
    """A SIGHUP model swap: from bar index ``at`` of its run on, the new artifact scores."""

    at: int  # index in Run.bars of the first bar the new model applied to
    artifact: str  # the new artifact's hash
    path: str | None
    rule_state: RuleState | None  # the rule state carried over
    first_bar: int | None
    warm_from: int | None  # open time of the first bar the new features were warmed on
    warm_bars: int
    rule: dict[str, Any] | None = None  # the new rule's settings (SignalRule.params), when recorded


class BarLog:
    """Appends bars (and other records: ``append``) to this run's file for the bar's day.

    The caller never waits on the disk: ``record`` and ``append`` queue one line on a writer thread
    (the outbox's, when given: a bar is then written before any signal committed after it). One
    ``write`` per line, no fsync: a crash loses at most the OS buffer and what was queued, and the
    restart re-fetches those bars over REST anyway. A failed write (disk full) is truncated back
    to the last whole line and retried by the writer thread."""

    def __init__(self, directory: str | Path, symbol: str, run_id: str | None = None, *,
                 last_signalled: int | None = None, rule_state: RuleState | None = None,
                 artifact: dict[str, Any] | None = None, rule: dict[str, Any] | None = None,
                 writer: WriterThread | None = None) -> None:
        self.dir = Path(directory)
        self.symbol = symbol
        self.run_id = run_id or new_run_id()
        start: dict[str, Any] = {"run": self.run_id, "last_signalled": last_signalled,
                                 "rule_state": rule_state.to_dict() if rule_state is not None else None}
        if artifact is not None:
            start["artifact"] = artifact
        if rule is not None:
            start["rule"] = rule
        self._header = orjson.dumps({"run_start": start}) + b"\n"
        self._own_writer = writer is None
        self.writer = writer or WriterThread("barlog")
        self._day = ""
        self._fd: int | None = None
        self._size = 0
        self.written = 0  # lines queued (bars)
        self.records = 0  # other records queued

    def record(self, bar: Bar) -> None:
        """Queue ``bar``'s line (returns at once)."""
        self.writer.submit(self._write_bar, bar, sql=False)
        self.written += 1

    def append(self, record: dict[str, Any], open_time: int | None = None) -> None:
        """Queue any other record (one JSON object with one top-level key naming its kind, e.g.
        ``{"swap": {...}}``), in order with the bars, into the file of ``open_time``'s day (default:
        the current file, else today)."""
        if len(record) != 1 or any(k in record for k in ("run_start", *_KEYS)):
            raise ValueError("a bar-record record is one object with one key naming its kind")
        self.writer.submit(self._write_record, orjson.dumps(record) + b"\n", open_time, sql=False)
        self.records += 1

    def record_event(self, kind: str, payload: dict[str, Any], open_time: int | None = None) -> None:
        """``append({kind: payload}, open_time)``: e.g. a SIGHUP ``swap`` before its first bar."""
        self.append({kind: payload}, open_time)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued line is written."""
        return self.writer.flush(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is queued (up to ``timeout``), close the file (and the writer thread when it is
        this log's own). False when lines could not be written (a full disk): they are lost, and the
        next start's warm-up re-fetches those bars."""
        try:
            self.writer.call(self._close_fd, sql=False, timeout=timeout)
        except TimeoutError:
            log.error("barlog_unsaved", queued=self.writer.backlog(), cause=self.writer.failing,
                      hint="the last bars are not in the bar record; parity of this run stops before them")
            if self._own_writer:
                self.writer.close(0.5)
            return False
        if self._own_writer:
            self.writer.close()
        return True

    # -- the writer thread ---------------------------------------------------------------------
    def _write_bar(self, bar: Bar) -> None:
        self._open_day(_day(bar.open_time))
        self._write(orjson.dumps({k: getattr(bar, k) for k in _KEYS}) + b"\n")

    def _write_record(self, line: bytes, open_time: int | None) -> None:
        if open_time is not None:
            self._open_day(_day(open_time))
        elif self._fd is None:
            self._open_day(_day(time.time_ns() // 1_000_000))
        self._write(line)

    def _open_day(self, day: str) -> None:
        if day == self._day:
            return
        self._close_fd()
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{self.symbol}-{self.run_id}-{day}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fd, self._size = fd, os.fstat(fd).st_size
        if self._size == 0:
            self._write(self._header)
        self._day = day

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            try:  # no torn line: back to the last whole one, the writer thread retries this one
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise
        self._size += len(data)

    def _close_fd(self) -> None:
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
                    run.artifact = h.get("artifact")
                    run.rule = h.get("rule")
                continue
            if "swap" in d:
                w = d["swap"]
                rs = w.get("rule_state")
                run.swaps.append(Swap(len(run.bars), str(w["artifact"]), w.get("path"),
                                      RuleState.from_dict(rs) if rs is not None else None, w.get("first_bar"),
                                      w.get("warm_from"), int(w.get("warm_bars") or 0), w.get("rule")))
                continue
            if "open_time" not in d and len(d) == 1:
                run.records.append((len(run.bars), d))
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
