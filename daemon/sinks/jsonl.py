"""``jsonl``: append one JSON line per signal to a file, with a configurable fsync policy.

``fsync = "always"`` syncs after every line; ``"interval"`` at most every ``fsync_interval_s``
(and on close); ``"never"`` leaves it to the OS. Relative paths are under the state directory.
Writes and syncs run on the sink's own thread (a slow disk never stalls the event loop); ``send``
waits for its line, so a failed write (disk full) raises and the outbox retries the signal. The
path is checked when the sink is built (at start, before anything is opened): a directory or
file that cannot be written (read-only filesystem, a file where a directory is expected) is a
config error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from barsignal.daemon.sinks.base import SinkContext
from barsignal.daemon.writer import WriterThread
from barsignal.engine.signal import Signal
from barsignal.errors import ConfigError


def check_writable(path: Path, what: str) -> None:
    """Refuse (ConfigError) a file path that cannot be created or appended to, without creating
    anything: the file itself when it exists, else its nearest existing parent directory."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file path")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{what} {path} is not writable (read-only filesystem or permissions); "
                              "fix it or give another path")
        return
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{what} {path}: {anc} is a file, not a directory; give another path")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot create it in {anc} (read-only filesystem or permissions); "
                          "fix it or give another path")


class JsonlSink:
    name = "jsonl"

    def __init__(self, ctx: SinkContext, clock: Callable[[], float] = time.monotonic) -> None:
        cfg = ctx.section
        p = Path(cfg.path)
        self.path = p if p.is_absolute() else ctx.state_dir / p
        if p.is_absolute():  # a relative path is in the state directory: the state lock checks that one
            check_writable(self.path, "[sinks.jsonl] path")
        self.fsync = cfg.fsync
        self.interval = cfg.fsync_interval_s
        self._clock = clock
        self._last_sync = clock()
        self._fd: int | None = None
        self._writer: WriterThread | None = None
        self.syncs = 0

    async def start(self) -> None:
        if self._writer is None:
            self._writer = WriterThread("jsonl", retry=False)
        await self._writer.call_async(self._open, sql=False)

    def _open(self) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    async def send(self, signal: Signal) -> None:
        if self._writer is None:
            await self.start()
        assert self._writer is not None
        await self._writer.call_async(self._append, orjson.dumps(signal.to_dict()) + b"\n", sql=False)

    async def send_many(self, signals: list[Signal]) -> None:
        """Several signals in one ``write`` (the sink worker batches when it lags behind)."""
        if self._writer is None:
            await self.start()
        assert self._writer is not None
        data = b"".join(orjson.dumps(s) + b"\n" for s in signals)  # == dumps(s.to_dict()), no deep copy
        await self._writer.call_async(self._append, data, sql=False)

    def _append(self, line: bytes) -> None:
        self._open()
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        try:
            n = os.write(self._fd, line)  # one write: no torn lines
            if n != len(line):
                raise OSError(28, "short write (No space left on device?)")
        except OSError:
            try:
                os.ftruncate(self._fd, size)  # drop a torn line; the outbox retries the signal
            except OSError:
                pass
            raise
        if self.fsync == "always" or (self.fsync == "interval" and self._clock() - self._last_sync
                                      >= self.interval):
            self._sync()

    def _sync(self) -> None:
        if self._fd is not None:
            self._last_sync = self._clock()
            os.fsync(self._fd)
            self.syncs += 1

    def _close(self) -> None:
        if self._fd is not None:
            try:
                if self.fsync != "never":
                    self._sync()
            finally:
                os.close(self._fd)
                self._fd = None

    async def close(self) -> None:
        if self._writer is not None:
            w, self._writer = self._writer, None
            try:
                await w.call_async(self._close, sql=False)
            finally:
                w.close(timeout=1.0)
