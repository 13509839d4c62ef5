"""Durable outbox (SQLite, WAL): every signal is written here before any sink sees it.

Each enabled sink has a bounded in-memory queue and its own task (:class:`SinkWorker`); a slow or
failing sink never delays scoring or another sink. A signal a sink has not acknowledged stays
pending for that sink in the database and is delivered after a restart: at least once; downstream
de-duplicates by ``signal.id``. The outbox also remembers the last signalled bar and the signal
rule's state after it, so a restart emits no duplicate and resumes the rule where it was.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from barsignal.engine.signal import RuleState, Signal
from barsignal.log import get_logger

log = get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signals (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  symbol TEXT NOT NULL,
  open_time INTEGER NOT NULL,
  payload BLOB NOT NULL,
  rule_state TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
  seq INTEGER NOT NULL,
  sink TEXT NOT NULL,
  PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
"""


def signal_to_json(sig: Signal) -> bytes:
    return orjson.dumps(sig.to_dict())


def signal_from_json(data: bytes | str) -> Signal:
    d = orjson.loads(data)
    return Signal(**d)


class Outbox:
    """The SQLite outbox. One writer (the daemon's event loop thread)."""

    def __init__(self, path: str | Path, sinks: tuple[str, ...] | list[str], *, keep: int = 100_000,
                 synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sinks = tuple(sinks)
        self.keep = keep
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.executescript(_SCHEMA)
        self._added = 0

    def close(self) -> None:
        self.db.close()

    # -- writing -------------------------------------------------------------------------------
    def add(self, sig: Signal, rule_state: RuleState) -> int | None:
        """Store a signal, pending for every sink, in one transaction. Returns its sequence number,
        or None when a signal with this id is already stored (a duplicate: nothing is re-sent)."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(
                "INSERT OR IGNORE INTO signals (id, symbol, open_time, payload, rule_state, created_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (sig.id, sig.symbol, sig.open_time, signal_to_json(sig),
                 orjson.dumps(rule_state.to_dict()).decode(), int(time.time() * 1000)),
            )
            if cur.rowcount == 0:
                cur.execute("COMMIT")
                return None
            seq = int(cur.lastrowid or 0)
            cur.executemany("INSERT INTO pending (seq, sink) VALUES (?, ?)", [(seq, s) for s in self.sinks])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self._added += 1
        if self._added % 1000 == 0:
            self.prune()
        return seq

    def touch(self) -> None:
        """Read the newest row and discard it: keeps SQLite's code and pages hot for the next ``add``
        (keep-warm; a read, so nothing changes)."""
        self.db.execute("SELECT seq FROM signals ORDER BY seq DESC LIMIT 1").fetchone()

    def ack(self, sink: str, seq: int) -> None:
        """``sink`` delivered the signal ``seq``."""
        self.db.execute("DELETE FROM pending WHERE sink = ? AND seq = ?", (sink, seq))

    def prune(self) -> int:
        """Forget signals every sink has delivered, keeping the newest ``keep`` (bounded file)."""
        cur = self.db.execute(
            "DELETE FROM signals WHERE seq <= (SELECT COALESCE(MAX(seq), 0) FROM signals) - ?"
            " AND seq NOT IN (SELECT seq FROM pending)", (self.keep,))
        return cur.rowcount

    # -- reading -------------------------------------------------------------------------------
    def pending(self, sink: str, after_seq: int = 0, limit: int = 256) -> list[tuple[int, Signal]]:
        rows = self.db.execute(
            "SELECT s.seq, s.payload FROM pending p JOIN signals s ON s.seq = p.seq"
            " WHERE p.sink = ? AND p.seq > ? ORDER BY p.seq LIMIT ?", (sink, after_seq, limit)).fetchall()
        return [(int(seq), signal_from_json(payload)) for seq, payload in rows]

    def depth(self, sink: str | None = None) -> int:
        if sink is None:
            return int(self.db.execute("SELECT COUNT(DISTINCT seq) FROM pending").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM pending WHERE sink = ?", (sink,)).fetchone()[0])

    def last(self, symbol: str) -> tuple[int, RuleState] | None:
        """The last signalled bar's open time for ``symbol`` and the rule state after it."""
        row = self.db.execute("SELECT open_time, rule_state FROM signals WHERE symbol = ?"
                              " ORDER BY seq DESC LIMIT 1", (symbol,)).fetchone()
        if row is None:
            return None
        return int(row[0]), RuleState.from_dict(orjson.loads(row[1]))

    def sinks_pending(self) -> list[str]:
        """Sinks that have undelivered signals."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT sink FROM pending")]

    def drop_sink(self, sink: str) -> None:
        """A sink no longer enabled: its pending signals would wait forever; forget them."""
        self.db.execute("DELETE FROM pending WHERE sink = ?", (sink,))


class SinkWorker:
    """One sink's bounded queue and task. Signals arrive with ``offer``; when the queue is full the
    worker catches up from the outbox instead (nothing is lost, scoring never waits)."""

    def __init__(self, sink: Any, outbox: Outbox, *, queue_size: int = 1024,
                 retry_min_s: float = 0.5, retry_max_s: float = 30.0,
                 on_delivered: Callable[[str, Signal], None] | None = None,
                 on_failed: Callable[[str, BaseException], None] | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.sink = sink
        self.name: str = sink.name
        self.outbox = outbox
        self.queue: asyncio.Queue[tuple[int, Signal]] = asyncio.Queue(maxsize=queue_size)
        self.backlog = True  # start by delivering what a previous run left pending
        self.last_seq = 0
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.on_delivered = on_delivered
        self.on_failed = on_failed
        self._sleep = sleep
        self.task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failures = 0
        self.overflows = 0
        self._busy = False

    def offer(self, seq: int, sig: Signal) -> None:
        """Hand a stored signal to this sink without waiting."""
        if self.backlog:
            return  # the worker reads it from the outbox in order
        try:
            self.queue.put_nowait((seq, sig))
        except asyncio.QueueFull:
            self.backlog = True
            self.overflows += 1
            log.warning("sink_queue_full", sink=self.name, size=self.queue.maxsize)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"sink:{self.name}")

    def idle(self) -> bool:
        """Nothing offered is waiting: the queue is empty, no backlog, no send in progress."""
        return not self.backlog and self.queue.empty() and not self._busy

    async def _run(self) -> None:
        while True:
            if self.queue.empty() and self.backlog:
                batch = self.outbox.pending(self.name, self.last_seq)
                if not batch:
                    self.backlog = False  # no await between the check and this: no race
                    continue
                for seq, sig in batch:
                    await self._deliver(seq, sig)
                continue
            seq, sig = await self.queue.get()
            if seq <= self.last_seq:
                continue
            await self._deliver(seq, sig)

    async def _deliver(self, seq: int, sig: Signal) -> None:
        self._busy = True
        delay = self.retry_min_s
        try:
            while True:
                try:
                    await self.sink.send(sig)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failures += 1
                    if self.on_failed:
                        self.on_failed(self.name, exc)
                    log.warning("sink_delivery_failed", sink=self.name, signal=sig.id,
                                error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 3))
                    await self._sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)
            self.outbox.ack(self.name, seq)
            self.last_seq = seq
            self.delivered += 1
            if self.on_delivered:
                self.on_delivered(self.name, sig)
        finally:
            self._busy = False

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for everything offered to be delivered; True if it was."""
        deadline = time.monotonic() + timeout_s
        while not self.idle():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
        close = getattr(self.sink, "close", None)
        if close is not None:
            await close()
