"""A writer thread: the event loop hands it jobs and never waits on a disk.

Jobs run in submission order, in batches: the thread takes every job that is waiting (at most
``max_batch``), runs them, then calls ``commit`` once (the outbox: one SQLite transaction per
batch, opened lazily by ``begin`` at the batch's first SQL job). File jobs (the bar record) run in
the same order, so a signal committed in a batch implies every bar submitted before it is written.

A storage failure (disk full, I/O error, read-only) is not fatal: the thread logs one line naming
the cause (``ENOSPC``...), keeps the batch and retries it with backoff (SQL jobs are idempotent;
the transaction was rolled back). Nothing queued is dropped while the process lives; what a crash
loses is re-emitted by the next start with the same signal id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from barsignal.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")


def storage_cause(exc: BaseException) -> str | None:
    """``ENOSPC``, ``EIO``, ``EROFS``... when ``exc`` is a storage failure worth retrying, else None."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        msg = str(exc).lower()
        if code == sqlite3.SQLITE_FULL or "full" in msg:
            return "ENOSPC"
        if code == sqlite3.SQLITE_IOERR or "disk i/o" in msg:
            return "EIO"
        if code == sqlite3.SQLITE_READONLY or "readonly" in msg:
            return "EROFS"
        if code == sqlite3.SQLITE_BUSY or "locked" in msg:
            return "EBUSY"
    return None


class _Job:
    __slots__ = ("args", "fn", "fut", "sql")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], sql: bool,
                 fut: concurrent.futures.Future[Any] | None) -> None:
        self.fn, self.args, self.sql, self.fut = fn, args, sql, fut


_STOP = object()


class WriterThread:
    """One thread that runs jobs in order, in batches, with one ``commit`` per batch.

    ``begin`` / ``commit`` / ``rollback`` wrap the SQL jobs of a batch (None: no transaction).
    ``retry=False``: a job's storage failure goes to its caller (a sink: its worker retries).
    ``submit`` never blocks; ``call`` waits for the result (after the commit); ``call_async``
    awaits it from the event loop without blocking the loop."""

    def __init__(self, name: str, *, begin: Callable[[], None] | None = None,
                 commit: Callable[[], None] | None = None, rollback: Callable[[], None] | None = None,
                 after_commit: Callable[[], None] | None = None,
                 on_failing: Callable[[], None] | None = None, max_batch: int = 512,
                 retry: bool = True, retry_min_s: float = 0.25, retry_max_s: float = 5.0) -> None:
        self.name = name
        self._begin, self._commit, self._rollback = begin, commit, rollback
        self._after_commit = after_commit
        self._on_failing = on_failing
        self.max_batch = max_batch
        self.retry = retry  # retry storage failures here (False: they go to the caller's future)
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._deferred: list[_Job] = []  # submitted on the loop, handed over by its next callback
        self._kick_scheduled = False
        self._dlock = threading.Lock()
        self._closing = threading.Event()
        self.batches = 0
        self.jobs = 0
        self.errors = 0  # storage failures (each retried)
        self.failing: str | None = None  # the cause while a batch is being retried, else None
        self.thread_id: int | None = None
        self._thread = threading.Thread(target=self._main, name=f"barsignal-{name}-writer", daemon=True)
        self._thread.start()

    @classmethod
    def shadow(cls, name: str = "shadow") -> WriterThread:
        """A writer with no thread: ``submit`` only queues, :meth:`discard` drops the queue. Keep-warm
        runs the hot path's hand-off code on it (``Outbox.rehearse_add``); nothing ever runs a job."""
        w = cls.__new__(cls)
        w.name = name
        w._deferred, w._dlock, w._kick_scheduled = [], threading.Lock(), True  # no kick: no thread to wake
        return w

    def discard(self) -> None:
        """Forget what was submitted and not handed over (a shadow's rehearsed jobs)."""
        with self._dlock:
            self._deferred.clear()

    # -- the caller's side ---------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any, sql: bool = True) -> None:
        """Queue ``fn(*args)``; returns at once (no I/O, no lock held across I/O).

        On an event loop's thread the job is handed to the thread by a callback the loop runs
        next (``call_soon``), so the writer thread never wakes, and competes for the GIL, in the
        middle of the hot path (bar -> score -> hand-off to the sinks); order is kept."""
        job = _Job(fn, args, sql, None)
        loop = asyncio._get_running_loop()
        if loop is None:
            self._hand_over()
            self._q.put(job)
            return
        with self._dlock:
            self._deferred.append(job)
        if not self._kick_scheduled:
            self._kick_scheduled = True
            loop.call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_scheduled = False
        self._hand_over()

    def _hand_over(self) -> None:
        if self._deferred:
            with self._dlock:  # keeps order when another thread hands over at the same time
                jobs, self._deferred = self._deferred, []
                for j in jobs:
                    self._q.put(j)

    def future(self, fn: Callable[..., T], *args: Any, sql: bool = True) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._hand_over()  # after everything submitted before it
        self._q.put(_Job(fn, args, sql, fut))
        return fut

    def call(self, fn: Callable[..., T], *args: Any, sql: bool = True, timeout: float | None = None) -> T:
        """Run ``fn(*args)`` on the thread after everything submitted before; wait for its result."""
        if threading.get_ident() == self.thread_id:
            return fn(*args)
        return self.future(fn, *args, sql=sql).result(timeout)

    async def call_async(self, fn: Callable[..., T], *args: Any, sql: bool = True) -> T:
        """``call`` for the event loop: awaits the result, the loop keeps running."""
        return await asyncio.wrap_future(self.future(fn, *args, sql=sql))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is done (and committed); False on a timeout."""
        try:
            self.call(_noop, sql=True, timeout=timeout)
            return True
        except concurrent.futures.TimeoutError:
            return False

    def backlog(self) -> int:
        """Jobs waiting (approximate)."""
        return self._q.qsize() + len(self._deferred)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Finish what is queued (up to ``timeout``) and stop the thread; False if it could not."""
        done = self.flush(timeout)
        self._closing.set()
        self._q.put(_STOP)
        self._thread.join(timeout if done else 0.5)
        return done and not self._thread.is_alive()

    # -- the thread ----------------------------------------------------------------------------
    def _main(self) -> None:
        self.thread_id = threading.get_ident()
        while True:
            first = self._q.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._q.put(_STOP)
                    break
                batch.append(nxt)
            try:
                self._run_batch(batch)
            except Exception as exc:  # a bug or a closed store: fail these jobs, keep the thread
                self._rollback_quietly()
                log.error("store_batch_failed", store=self.name, error=f"{type(exc).__name__}: {exc}",
                          jobs=len(batch), exc_info=exc)
                for j in batch:
                    if j.fut is not None and not j.fut.done():
                        j.fut.set_exception(exc)

    def _run_batch(self, batch: list[_Job]) -> None:
        delay = self.retry_min_s
        todo = batch
        while True:
            try:
                done = self._run_once(todo)
            except _StorageFailure as failure:  # roll back, keep what must run again, retry
                exc, todo = failure.exc, failure.todo
                self._rollback_quietly()
                self.errors += 1
                cause = storage_cause(exc)
                if self.failing != cause:
                    log.error("store_write_failed", store=self.name, cause=cause,
                              error=f"{type(exc).__name__}: {exc}", queued=len(todo) + self.backlog(),
                              hint="kept in memory and retried; free the disk / fix the state directory")
                first = self.failing is None
                self.failing = cause
                if first and self._on_failing is not None:
                    self._on_failing()
                if self._closing.is_set():
                    for j in todo:
                        if j.fut is not None and not j.fut.done():
                            j.fut.set_exception(exc)
                    return
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            if self.failing is not None:
                log.info("store_write_recovered", store=self.name, after=self.failing)
                self.failing = None
            self.batches += 1
            self.jobs += len(todo)
            if self._after_commit is not None:
                self._after_commit()
            for job, res, err in done:  # last: a caller woken by its future sees the state after the batch
                _resolve(job, res, err)
            return

    def _run_once(self, jobs: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        """Run ``jobs`` and commit; return each job's result for the caller to resolve. On a storage
        failure, raise ``_StorageFailure`` with what a retry must run: the SQL jobs (rolled back) and
        the jobs not reached yet (file jobs that ran are done, resolved here, and not run twice)."""
        in_tx = False
        done: list[tuple[_Job, Any, BaseException | None]] = []
        i = 0
        try:
            for i, job in enumerate(jobs):  # noqa: B007 - i is read after a failure
                if job.sql and not in_tx and self._begin is not None:
                    self._begin()
                    in_tx = True
                try:
                    res, err = job.fn(*job.args), None
                except Exception as exc:
                    if self.retry and storage_cause(exc) is not None:
                        raise
                    if job.fut is None:
                        log.error("store_job_failed", store=self.name, job=getattr(job.fn, "__name__", "?"),
                                  error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                    res, err = None, exc
                done.append((job, res, err))
            i = len(jobs)
            if in_tx and self._commit is not None:
                self._commit()
        except Exception as exc:
            if storage_cause(exc) is None:
                raise
            for job, res, err in done:  # file jobs that ran are done: resolve them now
                if not job.sql:
                    _resolve(job, res, err)
            raise _StorageFailure(exc, [j for j, _, _ in done if j.sql] + jobs[i:]) from None
        return done

    def _rollback_quietly(self) -> None:
        if self._rollback is not None:
            try:
                self._rollback()
            except Exception:
                pass


def _noop() -> None:
    return None


def _resolve(job: _Job, res: Any, err: BaseException | None) -> None:
    if job.fut is not None and not job.fut.done():
        if err is None:
            job.fut.set_result(res)
        else:
            job.fut.set_exception(err)


class _StorageFailure(Exception):
    def __init__(self, exc: BaseException, todo: list[_Job]) -> None:
        super().__init__(str(exc))
        self.exc, self.todo = exc, todo
