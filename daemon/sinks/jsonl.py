"""``jsonl``: append one JSON line per signal to a file, with a configurable fsync policy.

``fsync = "always"`` syncs after every line; ``"interval"`` at most every ``fsync_interval_s``
(and on close); ``"never"`` leaves it to the OS. Relative paths are under the state directory.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from barsignal.daemon.sinks.base import SinkContext
from barsignal.engine.signal import Signal


class JsonlSink:
    name = "jsonl"

    def __init__(self, ctx: SinkContext, clock: Callable[[], float] = time.monotonic) -> None:
        cfg = ctx.section
        p = Path(cfg.path)
        self.path = p if p.is_absolute() else ctx.state_dir / p
        self.fsync = cfg.fsync
        self.interval = cfg.fsync_interval_s
        self._clock = clock
        self._last_sync = clock()
        self._fd: int | None = None
        self.syncs = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    async def send(self, signal: Signal) -> None:
        if self._fd is None:
            await self.start()
        assert self._fd is not None
        os.write(self._fd, orjson.dumps(signal.to_dict()) + b"\n")  # one write: no torn lines
        if self.fsync == "always" or (self.fsync == "interval" and self._clock() - self._last_sync
                                      >= self.interval):
            await self._sync()

    async def _sync(self) -> None:
        if self._fd is not None:
            self._last_sync = self._clock()
            await asyncio.to_thread(os.fsync, self._fd)  # off the event loop: scoring never waits on a disk
            self.syncs += 1

    async def close(self) -> None:
        if self._fd is not None:
            if self.fsync != "never":
                await self._sync()
            os.close(self._fd)
            self._fd = None
