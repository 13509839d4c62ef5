"""Durable outbox (SQLite, WAL): every signal is committed here before any sink sees it.

The event loop never touches SQLite. ``add`` gives the signal its sequence number from a counter
and queues the insert on the outbox's writer thread (:mod:`barsignal.daemon.writer`), which
commits in batches; ``ack``, ``dead_letter`` and ``prune`` are queued the same way, and ``depth``
is read from counters. Each enabled sink has a bounded in-memory queue and its own task
(:class:`SinkWorker`); a worker sends a signal only once its row is committed, so a crash never
leaves a delivered signal the outbox forgot, and the bar record (written by the same thread,
before the signal's commit) always holds the signal's bar. Whatever a crash loses was never
committed: the next start re-emits it with the same id (``symbol-open_time-artifact``).

Disk full (or any storage failure) at runtime: the writer thread logs one ``store_write_failed
cause=ENOSPC`` line, keeps every queued write in memory and retries with backoff (at most 5 s
apart); meanwhile sinks in step stop waiting for commits and deliver what they are given (a crash
then re-emits those signals with the same id: at least once, as always); a sink catching up from
the outbox (after a restart or a queue overflow) waits, its reads queued behind the writes. Once
space is back it logs
``store_write_recovered`` and the outbox and bar record catch up: nothing is lost unless the
process dies while the disk is full.

A signal a sink has not acknowledged stays pending for that sink and is delivered after a
restart: at least once; downstream de-duplicates by ``signal.id``. A signal a sink refuses for
good (e.g. webhook 404) becomes a dead letter (sink, status, reason): kept, counted, and sent
again by ``barsignal outbox redrive``. The outbox also remembers the last signalled bar and the
rule's state after it, so a restart emits no duplicate and resumes the rule where it was.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from barsignal.daemon.sinks.base import PermanentSinkError
from barsignal.daemon.writer import WriterThread, storage_cause
from barsignal.engine.signal import RuleState, Signal
from barsignal.errors import BarsignalError, ConfigError
from barsignal.log import get_logger

log = get_logger(__name__)

__all__ = ["Outbox", "PermanentSinkError", "SinkWorker", "signal_from_json", "signal_to_json"]

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
CREATE TABLE IF NOT EXISTS dead (
  seq INTEGER NOT NULL,
  sink TEXT NOT NULL,
  status INTEGER,
  reason TEXT NOT NULL,
  at_ms INTEGER NOT NULL,
  PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
"""

SEND_MANY_MAX = 4096  # signals per send_many call
RECENT_IDS = 4096  # ids remembered for ``add``'s duplicate check (more than a day of catch-up bars)


def signal_to_json(sig: Signal) -> bytes:
    # orjson serializes the dataclass itself: the same bytes as orjson.dumps(sig.to_dict()) without
    # asdict's deep copy (a third of replay's non-scoring time).
    return orjson.dumps(sig)


def signal_from_json(data: bytes | str) -> Signal:
    d = orjson.loads(data)
    return Signal(**d)


class Outbox:
    """The SQLite outbox. All SQLite work runs on its writer thread; every method may be called
    from the event loop (``add``, ``ack``, ``dead_letter``, ``depth`` never wait on it)."""

    def __init__(self, path: str | Path, sinks: tuple[str, ...] | list[str], *, keep: int = 100_000,
                 synchronous: str = "NORMAL", prune_every: int = 1000,
                 writer: WriterThread | None = None) -> None:
        self.path = Path(path)
        self.sinks = tuple(sinks)
        self.keep = keep
        self.prune_every = prune_every
        self._synchronous = synchronous
        self.db: sqlite3.Connection | None = None  # used on the writer thread only
        self._lock = threading.Lock()  # guards the committed watermark and its waiters
        self._committed = 0  # highest seq known committed
        self._submitted = 0  # highest seq queued
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.writer = writer or WriterThread("outbox", begin=self._begin, commit=self._commit,
                                             rollback=self._rollback, after_commit=self._after_commit,
                                             on_failing=self._wake_all)
        try:
            self.writer.call(self._open, sql=False)
            st = self.writer.call(self._load, sql=False)
        except sqlite3.Error as exc:
            self.writer.close(1.0)
            raise _open_error(self.path, exc) from None
        self._next: int = st["next"]
        self._committed = self._submitted = st["next"] - 1
        self._pending: dict[str, set[int]] = st["pending"]
        self._refs: dict[int, int] = st["refs"]  # seq -> sinks it is still pending for
        self._dead: dict[str, int] = st["dead"]
        self._last: dict[str, tuple[int, RuleState]] = st["last"]
        self._ids: OrderedDict[str, None] = st["ids"]
        self._added = 0
        self._closed = False
        self.dead_lettered: dict[str, int] = {}  # dead letters made by this process, by sink
        self._shadow: Outbox | None = None  # keep-warm's (rehearse_add)

    # -- the writer thread's side --------------------------------------------------------------
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.executescript(_SCHEMA)

    def _load(self) -> dict[str, Any]:
        db = self._db()
        top = db.execute("SELECT COALESCE(MAX(seq), 0) FROM signals").fetchone()[0]
        seqrow = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'signals'").fetchone()
        nxt = max(int(top), int(seqrow[0]) if seqrow else 0) + 1
        pending: dict[str, set[int]] = {s: set() for s in self.sinks}
        refs: dict[int, int] = {}
        for seq, sink in db.execute("SELECT seq, sink FROM pending"):
            pending.setdefault(sink, set()).add(int(seq))
            refs[int(seq)] = refs.get(int(seq), 0) + 1
        dead = {s: int(n) for s, n in db.execute("SELECT sink, COUNT(*) FROM dead GROUP BY sink")}
        last: dict[str, tuple[int, RuleState]] = {}
        for sym, ot, rs in db.execute(
                "SELECT s.symbol, s.open_time, s.rule_state FROM signals s JOIN (SELECT symbol, MAX(seq) AS m "
                "FROM signals GROUP BY symbol) t ON s.seq = t.m"):
            last[str(sym)] = (int(ot), RuleState.from_dict(orjson.loads(rs)))
        ids: OrderedDict[str, None] = OrderedDict(
            (r[0], None) for r in reversed(db.execute(
                "SELECT id FROM signals ORDER BY seq DESC LIMIT ?", (RECENT_IDS,)).fetchall()))
        return {"next": nxt, "pending": pending, "refs": refs, "dead": dead, "last": last, "ids": ids}

    def _db(self) -> sqlite3.Connection:
        assert self.db is not None, "the outbox is closed"
        return self.db

    def _begin(self) -> None:
        if self.db is not None:  # None: closed (a job after close fails on its own)
            self.db.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        if self.db is not None and self.db.in_transaction:
            self.db.execute("COMMIT")

    def _rollback(self) -> None:
        if self.db is not None and self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def _after_commit(self) -> None:
        with self._lock:
            self._committed = self._batch_top
            ready = [f for s, f in self._waiters if s <= self._committed]
            if ready:
                self._waiters = [(s, f) for s, f in self._waiters if s > self._committed]
        if ready and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, ready)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _wake_all(self) -> None:
        """The writer cannot commit (disk full...): sinks stop waiting for commits and deliver what
        they have (a crash re-emits it with the same id), rather than hold every signal back."""
        with self._lock:
            ready = [f for _, f in self._waiters]
            self._waiters = []
        if ready and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, ready)
            except RuntimeError:
                pass

    _batch_top = 0  # highest seq inserted by the batches so far (writer thread)

    def _insert(self, seq: int, sig: Signal, rule_state: RuleState, sinks: tuple[str, ...]) -> None:
        db = self._db()
        cur = db.execute(
            "INSERT OR IGNORE INTO signals (seq, id, symbol, open_time, payload, rule_state, created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, sig.id, sig.symbol, sig.open_time, signal_to_json(sig),
             orjson.dumps(rule_state.to_dict()).decode(), int(time.time() * 1000)))
        if cur.rowcount:
            db.executemany("INSERT OR IGNORE INTO pending (seq, sink) VALUES (?, ?)", [(seq, s) for s in sinks])
        self._batch_top = max(self._batch_top, seq)

    def _insert_many(self, rows: list[tuple[int, Signal, RuleState]], sinks: tuple[str, ...]) -> None:
        db = self._db()
        now = int(time.time() * 1000)
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO signals (seq, id, symbol, open_time, payload, rule_state, created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(seq, sig.id, sig.symbol, sig.open_time, signal_to_json(sig), orjson.dumps(rs.to_dict()).decode(), now)
             for seq, sig, rs in rows])
        first, last = rows[0][0], rows[-1][0]
        if db.total_changes - before == len(rows) and last - first + 1 == len(rows):
            for s in sinks:  # all new and contiguous (add_many's seqs are): one statement per sink
                db.execute("INSERT OR IGNORE INTO pending (seq, sink) SELECT seq, ? FROM signals"
                           " WHERE seq BETWEEN ? AND ?", (s, first, last))
        elif db.total_changes - before == len(rows):
            db.executemany("INSERT OR IGNORE INTO pending (seq, sink) VALUES (?, ?)",
                           [(seq, s) for seq, _, _ in rows for s in sinks])
        else:  # some ids were stored before: pending only for the rows really inserted
            have = {r[0] for r in db.execute(
                f"SELECT seq FROM signals WHERE seq IN ({','.join('?' * len(rows))})", [r[0] for r in rows])}
            db.executemany("INSERT OR IGNORE INTO pending (seq, sink) VALUES (?, ?)",
                           [(seq, s) for seq, _, _ in rows if seq in have for s in sinks])
        self._batch_top = max(self._batch_top, rows[-1][0])

    def _delete_pending_many(self, sink: str, seqs: list[int]) -> None:
        if seqs == list(range(seqs[0], seqs[-1] + 1)):
            self._db().execute("DELETE FROM pending WHERE sink = ? AND seq BETWEEN ? AND ?",
                               (sink, seqs[0], seqs[-1]))  # a contiguous run (replay's batches are)
        else:
            self._db().executemany("DELETE FROM pending WHERE sink = ? AND seq = ?", [(sink, q) for q in seqs])

    def _delete_pending(self, sink: str, seq: int) -> None:
        self._db().execute("DELETE FROM pending WHERE sink = ? AND seq = ?", (sink, seq))

    def _bury(self, sink: str, seq: int, status: int | None, reason: str, at_ms: int) -> None:
        db = self._db()
        db.execute("DELETE FROM pending WHERE sink = ? AND seq = ?", (sink, seq))
        db.execute("INSERT OR REPLACE INTO dead (seq, sink, status, reason, at_ms) VALUES (?, ?, ?, ?, ?)",
                   (seq, sink, status, reason, at_ms))

    def _prune(self) -> int:
        cur = self._db().execute(
            "DELETE FROM signals WHERE seq <= (SELECT COALESCE(MAX(seq), 0) FROM signals) - ?"
            " AND seq NOT IN (SELECT seq FROM pending) AND seq NOT IN (SELECT seq FROM dead)", (self.keep,))
        return cur.rowcount

    def _read_pending(self, sink: str, after_seq: int, limit: int) -> list[tuple[int, Signal]]:
        rows = self._db().execute(
            "SELECT s.seq, s.payload FROM pending p JOIN signals s ON s.seq = p.seq"
            " WHERE p.sink = ? AND p.seq > ? ORDER BY p.seq LIMIT ?", (sink, after_seq, limit)).fetchall()
        return [(int(seq), signal_from_json(payload)) for seq, payload in rows]

    def _read_dead(self, sink: str | None) -> list[dict[str, Any]]:
        q = ("SELECT d.seq, d.sink, d.status, d.reason, d.at_ms, s.id FROM dead d JOIN signals s ON s.seq = d.seq"
             + (" WHERE d.sink = ?" if sink else "") + " ORDER BY d.sink, d.seq")
        rows = self._db().execute(q, (sink,) if sink else ()).fetchall()
        return [{"seq": r[0], "sink": r[1], "status": r[2], "reason": r[3], "at_ms": r[4], "id": r[5]}
                for r in rows]

    def _redrive(self, sink: str | None) -> list[tuple[str, int]]:
        db = self._db()
        where = " WHERE sink = ?" if sink else ""
        args = (sink,) if sink else ()
        rows = [(str(s), int(q)) for s, q in db.execute(f"SELECT sink, seq FROM dead{where}", args)]
        db.executemany("INSERT OR IGNORE INTO pending (seq, sink) VALUES (?, ?)", [(q, s) for s, q in rows])
        db.execute(f"DELETE FROM dead{where}", args)
        return rows

    def _close_db(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # -- the caller's side ---------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> bool:
        """Commit what is queued (up to ``timeout``), close the database and stop the thread.
        False when something could not be committed: the next start re-emits it. Acks after this
        are ignored (still pending: delivered again at the next start)."""
        if self._closed:
            return True
        self._closed = True
        ok = self.writer.flush(timeout)
        if not ok:
            log.error("outbox_unsaved", queued=self.writer.backlog(), cause=self.writer.failing,
                      hint="these signals are not in the outbox; the next start signals their bars again")
        else:
            try:
                self.writer.call(self._close_db, sql=False, timeout=timeout)
            except TimeoutError:
                ok = False
        return self.writer.close(0.5 if not ok else timeout) and ok

    def add(self, sig: Signal, rule_state: RuleState) -> int | None:
        """Give ``sig`` its sequence number and queue its insert, pending for every sink. Returns
        the number, or None when a signal with this id was added before (nothing is re-sent)."""
        if sig.id in self._ids:
            return None
        self._ids[sig.id] = None
        if len(self._ids) > RECENT_IDS:
            self._ids.popitem(last=False)
        seq = self._next
        self._next = seq + 1
        self._submitted = seq
        self.writer.submit(self._insert, seq, sig, rule_state, self.sinks)
        for s in self.sinks:
            self._pending.setdefault(s, set()).add(seq)
        if self.sinks:
            self._refs[seq] = len(self.sinks)
        self._last[sig.symbol] = (sig.open_time, rule_state)
        self._added += 1
        if self._added % self.prune_every == 0:
            self.writer.submit(self._prune)  # on the writer thread, after this batch
        return seq

    def rehearse_add(self, sig: Signal, rule_state: RuleState) -> None:
        """Keep-warm: :meth:`add`'s code on a shadow of this outbox (empty bookkeeping, a writer with
        no thread), then the shadow emptied again: this outbox, its writer and its sinks see nothing."""
        sh = self._shadow
        if sh is None:
            sh = self._shadow = Outbox.__new__(Outbox)
            sh.sinks, sh.prune_every, sh.writer = self.sinks, 1 << 62, WriterThread.shadow("outbox-shadow")
            sh._ids, sh._pending, sh._refs, sh._last = OrderedDict(), {}, {}, {}
            sh._next = sh._submitted = sh._added = 0
        sh.add(sig, rule_state)
        sh._ids.clear()
        sh._pending.clear()
        sh._refs.clear()
        sh._last.clear()
        sh.writer.discard()

    def add_many(self, items: list[tuple[Signal, RuleState]]) -> list[int | None]:
        """``add`` for several signals in order, queued as ONE writer job (one transaction): replay
        adds a chunk of signals at a time, where a job per signal would cost more than the inserts."""
        out: list[int | None] = []
        rows: list[tuple[int, Signal, RuleState]] = []
        for sig, rule_state in items:
            if sig.id in self._ids:
                out.append(None)
                continue
            self._ids[sig.id] = None
            if len(self._ids) > RECENT_IDS:
                self._ids.popitem(last=False)
            seq = self._next
            self._next = seq + 1
            rows.append((seq, sig, rule_state))
            for sk in self.sinks:
                self._pending.setdefault(sk, set()).add(seq)
            if self.sinks:
                self._refs[seq] = len(self.sinks)
            self._last[sig.symbol] = (sig.open_time, rule_state)
            out.append(seq)
        if rows:
            self._submitted = rows[-1][0]
            self.writer.submit(self._insert_many, rows, self.sinks)
            before = self._added
            self._added += len(rows)
            if self._added // self.prune_every != before // self.prune_every:
                self.writer.submit(self._prune)
        return out

    def ack_many(self, sink: str, seqs: list[int]) -> None:
        """``ack`` for several signals, queued as one writer job."""
        for q in seqs:
            self._forget(sink, q)
        if seqs:
            self.writer.submit(self._delete_pending_many, sink, list(seqs))

    def _forget(self, sink: str, seq: int) -> bool:
        p = self._pending.get(sink)
        if p is None or seq not in p:
            return False
        p.discard(seq)
        n = self._refs.get(seq, 0) - 1
        if n > 0:
            self._refs[seq] = n
        else:
            self._refs.pop(seq, None)
        return True

    def ack(self, sink: str, seq: int) -> None:
        """``sink`` delivered the signal ``seq``."""
        self._forget(sink, seq)
        if not self._closed:
            self.writer.submit(self._delete_pending, sink, seq)

    def dead_letter(self, sink: str, seq: int, reason: str, status: int | None = None) -> None:
        """``sink``'s receiver refused ``seq`` for good: keep it as a dead letter (not pending)."""
        self._forget(sink, seq)
        self._dead[sink] = self._dead.get(sink, 0) + 1
        self.dead_lettered[sink] = self.dead_lettered.get(sink, 0) + 1
        if not self._closed:
            self.writer.submit(self._bury, sink, seq, status, reason, int(time.time() * 1000))

    def prune(self) -> int:
        """Forget signals every sink has delivered (none dead-lettered), keeping the newest ``keep``."""
        return self.writer.call(self._prune)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is committed."""
        return self.writer.flush(timeout)

    # -- waiting for a commit (the sink workers) -----------------------------------------------
    @property
    def submitted(self) -> int:
        """The highest sequence number queued so far."""
        return self._submitted

    def committed(self, seq: int) -> bool:
        return seq <= self._committed

    async def wait_committed(self, seq: int) -> None:
        """Return once signal ``seq`` is committed (at once when it is already)."""
        if seq <= self._committed or self.writer.failing:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if seq <= self._committed or self.writer.failing:
                return
            self._waiters.append((seq, fut))
        await fut

    # -- reading -------------------------------------------------------------------------------
    def pending(self, sink: str, after_seq: int = 0, limit: int = 256) -> list[tuple[int, Signal]]:
        """Signals pending for ``sink`` after ``after_seq`` (waits for the writer thread)."""
        return self.writer.call(self._read_pending, sink, after_seq, limit)

    async def pending_async(self, sink: str, after_seq: int = 0, limit: int = 256) -> list[tuple[int, Signal]]:
        """``pending`` from the event loop: the read runs on the writer thread, after every write
        queued before it."""
        return await self.writer.call_async(self._read_pending, sink, after_seq, limit)

    def depth(self, sink: str | None = None) -> int:
        """Signals still pending (for ``sink``, or for any sink), from counters."""
        if sink is None:
            return len(self._refs)
        return len(self._pending.get(sink, ()))

    def dead_depth(self, sink: str | None = None) -> int:
        """Dead letters kept (for ``sink``, or in all)."""
        return self._dead.get(sink, 0) if sink else sum(self._dead.values())

    def dead_counts(self) -> dict[str, int]:
        """Dead letters kept, by sink."""
        return dict(self._dead)

    def dead_letter_stats(self) -> tuple[dict[str, int], dict[str, int]]:
        """(dead letters made by this process, dead letters kept), by sink: for the metrics."""
        return dict(self.dead_lettered), dict(self._dead)

    def dead_letters(self, sink: str | None = None) -> list[dict[str, Any]]:
        """The dead letters: seq, sink, status, reason, at_ms and the signal's id."""
        return self.writer.call(self._read_dead, sink)

    def redrive(self, sink: str | None = None) -> int:
        """Make dead letters (of ``sink``, or all) pending again; returns how many. The running
        process's workers pick them up on their next catch-up; a stopped daemon sends them at start."""
        rows = self.writer.call(self._redrive, sink)
        for s, seq in rows:
            self._dead[s] = max(0, self._dead.get(s, 0) - 1)
            if seq not in self._pending.setdefault(s, set()):
                self._pending[s].add(seq)
                self._refs[seq] = self._refs.get(seq, 0) + 1
        return len(rows)

    def last(self, symbol: str) -> tuple[int, RuleState] | None:
        """The last signalled bar's open time for ``symbol`` and the rule state after it."""
        return self._last.get(symbol)

    def last_at_or_before(self, symbol: str, open_time: int) -> tuple[int, RuleState] | None:
        """The last signal for ``symbol`` whose bar opened at or before ``open_time`` and the rule
        state after it (a start that does not trust a later one); waits for the writer thread."""
        return self.writer.call(self._read_last_before, symbol, open_time)

    def _read_last_before(self, symbol: str, open_time: int) -> tuple[int, RuleState] | None:
        row = self._db().execute("SELECT open_time, rule_state FROM signals WHERE symbol = ? AND open_time <= ?"
                                 " ORDER BY open_time DESC LIMIT 1", (symbol, open_time)).fetchone()
        return (int(row[0]), RuleState.from_dict(orjson.loads(row[1]))) if row else None

    def dead_letter_after(self, symbol: str, open_time: int, reason: str) -> int:
        """Every signal of ``symbol`` for a bar after ``open_time`` still pending for a sink becomes a
        dead letter of that sink (kept, counted, sent by ``barsignal outbox redrive``); returns how many."""
        rows = self.writer.call(self._read_pending_after, symbol, open_time)
        for sink, seq in rows:
            self.dead_letter(sink, seq, reason)
        return len(rows)

    def _read_pending_after(self, symbol: str, open_time: int) -> list[tuple[str, int]]:
        return [(str(k), int(q)) for k, q in self._db().execute(
            "SELECT p.sink, p.seq FROM pending p JOIN signals s ON s.seq = p.seq WHERE s.symbol = ? AND "
            "s.open_time > ? ORDER BY p.seq", (symbol, open_time))]

    def sinks_pending(self) -> list[str]:
        """Sinks that have undelivered signals."""
        return [s for s, p in self._pending.items() if p]

    def drop_sink(self, sink: str) -> None:
        """A sink no longer enabled: its pending signals would wait forever; forget them."""
        for seq in list(self._pending.get(sink, ())):
            self._forget(sink, seq)
        self._pending.pop(sink, None)
        self.writer.submit(self._drop, sink)

    def _drop(self, sink: str) -> None:
        self._db().execute("DELETE FROM pending WHERE sink = ?", (sink,))


def _wake(futs: list[asyncio.Future[None]]) -> None:
    for f in futs:
        if not f.done():
            f.set_result(None)


def _open_error(path: Path, exc: sqlite3.Error) -> BarsignalError:
    cause = storage_cause(exc)
    if cause == "ENOSPC":
        return BarsignalError(f"{path}: cannot open the outbox: the disk is full (ENOSPC); free space "
                              "and start again")
    if cause == "EBUSY":
        return ConfigError(f"{path}: the outbox is locked by another process; is another daemon using "
                           "this state directory?")
    return ConfigError(f"{path}: cannot open the outbox ({exc}); check that the state directory is "
                       "writable and the file is not corrupted (move it aside to start afresh)")


# A sink's queue holds at least this many minutes of every symbol's signals: READY's first minutes,
# a backfill after a reconnect, a sink that stalls for a while. Beyond it the worker reads from the outbox.
QUEUE_MINUTES = 16


def sink_queue_size(configured: int, symbols: int) -> int:
    """A sink worker's queue length for ``symbols`` symbols: ``[sinks] queue_size``, raised to
    :data:`QUEUE_MINUTES` minutes of signals (one per symbol a minute) where that is more."""
    return max(configured, QUEUE_MINUTES * symbols)


class SinkWorker:
    """One sink's bounded queue and task. Signals arrive with ``offer``; when the queue is full the
    worker catches up from the outbox instead (nothing is lost, scoring never waits). A signal is
    sent only once its outbox row is committed. ``PermanentSinkError`` makes a dead letter."""

    def __init__(self, sink: Any, outbox: Outbox, *, queue_size: int = 1024,
                 retry_min_s: float = 0.5, retry_max_s: float = 30.0,
                 on_delivered: Callable[[str, Signal], None] | None = None,
                 on_failed: Callable[[str, BaseException], None] | None = None,
                 on_dead_letter: Callable[[str, Signal, PermanentSinkError], None] | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.sink = sink
        self.name: str = sink.name
        self.outbox = outbox
        self.queue: asyncio.Queue[tuple[int, Signal]] = asyncio.Queue(maxsize=queue_size)
        self.backlog = True  # start by delivering what a previous run left pending
        self.last_seq = 0
        self._missed = 0  # highest seq offered while catching up (the catch-up must reach it)
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.on_delivered = on_delivered
        self.on_failed = on_failed
        self.on_dead_letter = on_dead_letter
        self._sleep = sleep
        self.task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failures = 0
        self.dead_letters = 0
        self.overflows = 0
        self._busy = False
        self._send_many = getattr(sink, "send_many", None)  # optional: many signals in one call
        self._rehearsal: asyncio.Queue[tuple[int, Signal]] | None = None  # keep-warm's (rehearse_offer)

    def offer(self, seq: int, sig: Signal) -> None:
        """Hand a queued signal to this sink without waiting."""
        if self.backlog:
            self._missed = max(self._missed, seq)
            return  # the worker reads it from the outbox in order
        try:
            self.queue.put_nowait((seq, sig))
        except asyncio.QueueFull:
            self.backlog = True
            self._missed = max(self._missed, seq)
            self.overflows += 1
            log.warning("sink_queue_full", sink=self.name, size=self.queue.maxsize)

    def rehearse_offer(self, sig: Signal) -> None:
        """Keep-warm: :meth:`offer`'s queue code on a queue of its own (put, then taken out again)."""
        q = self._rehearsal
        if q is None:
            q = self._rehearsal = asyncio.Queue(maxsize=1)
        q.put_nowait((0, sig))
        q.get_nowait()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"sink:{self.name}")

    def idle(self) -> bool:
        """Nothing offered is waiting: the queue is empty, no backlog, no send in progress."""
        return not self.backlog and self.queue.empty() and not self._busy

    async def _run(self) -> None:
        while True:
            if self.queue.empty() and self.backlog:
                self._busy = True
                asked_through = self.outbox.submitted
                try:
                    batch = await self.outbox.pending_async(self.name, self.last_seq)
                finally:
                    self._busy = False
                if not batch:
                    if self._missed > asked_through:
                        continue  # offered while we read: read again
                    self.backlog = False  # no await between the check and this: no race
                    continue
                if self._send_many is not None and len(batch) > 1:
                    await self._deliver_many(batch)
                else:
                    for seq, sig in batch:
                        await self._deliver(seq, sig)
                continue
            seq, sig = await self.queue.get()
            if seq <= self.last_seq:
                continue
            if self._send_many is not None and not self.queue.empty():  # lagging behind: batch
                many = [(seq, sig)]
                while len(many) < SEND_MANY_MAX and not self.queue.empty():
                    item = self.queue.get_nowait()
                    if item[0] > self.last_seq:
                        many.append(item)
                await self._deliver_many(many)
                continue
            await self._deliver(seq, sig)

    async def _deliver_many(self, batch: list[tuple[int, Signal]]) -> None:
        """Several waiting signals in one ``sink.send_many`` call (a sink that has one, once it lags
        behind: replay, a catch-up after a restart). On any failure they go one by one through
        ``_deliver`` (retries, dead letters): at least once, as always."""
        assert self._send_many is not None
        self._busy = True
        try:
            await self.outbox.wait_committed(batch[-1][0])
            try:
                await self._send_many([s for _, s in batch])
            except asyncio.CancelledError:
                raise
            except Exception:
                for seq, sig in batch:
                    await self._deliver(seq, sig)
                return
            self.outbox.ack_many(self.name, [seq for seq, _ in batch])
            for seq, sig in batch:
                self._delivered(seq, sig)
        finally:
            self._busy = False

    async def _deliver(self, seq: int, sig: Signal) -> None:
        self._busy = True
        delay = self.retry_min_s
        try:
            await self.outbox.wait_committed(seq)
            while True:
                try:
                    await self.sink.send(sig)
                    break
                except asyncio.CancelledError:
                    raise
                except PermanentSinkError as exc:
                    self.outbox.dead_letter(self.name, seq, exc.reason, exc.status)
                    self.last_seq = seq
                    self.dead_letters += 1
                    log.error("sink_dead_letter", sink=self.name, signal=sig.id, status=exc.status,
                              reason=exc.reason, hint="kept in the outbox; `barsignal outbox redrive` "
                              "sends it again once the receiver is fixed")
                    if self.on_dead_letter:
                        self.on_dead_letter(self.name, sig, exc)
                    return
                except Exception as exc:
                    self.failures += 1
                    if self.on_failed:
                        self.on_failed(self.name, exc)
                    log.warning("sink_delivery_failed", sink=self.name, signal=sig.id,
                                error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 3))
                    await self._sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)
            self.outbox.ack(self.name, seq)
            self._delivered(seq, sig)
        finally:
            self._busy = False

    def _delivered(self, seq: int, sig: Signal) -> None:
        self.last_seq = seq
        self.delivered += 1
        if self.on_delivered:
            self.on_delivered(self.name, sig)

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
