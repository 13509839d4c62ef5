"""``stdout``: one JSON line per signal on standard output (logs go to stderr).

The writes run on the sink's own thread: a reader that stops reading (a full pipe) blocks that
thread only, never the event loop. ``send`` waits for its line's write, so while stdout is stuck
the signals stay pending in the outbox (``barsignal_outbox_depth`` grows) and are written once
the reader reads again; nothing is dropped. At stop, a write still stuck is abandoned (the
signals it holds stay pending for the next start).
"""

from __future__ import annotations

import os
import sys
from typing import IO

import orjson

from barsignal.daemon.sinks.base import SinkContext
from barsignal.daemon.writer import WriterThread
from barsignal.engine.signal import Signal


class StdoutSink:
    name = "stdout"

    def __init__(self, ctx: SinkContext | None = None, stream: IO[str] | None = None) -> None:
        self.stream = stream  # a text stream (tests); default: file descriptor 1, written directly
        self._writer: WriterThread | None = None
        self.lines = 0

    async def start(self) -> None:
        if self._writer is None:
            self._writer = WriterThread("stdout", retry=False)

    async def send(self, signal: Signal) -> None:
        if self._writer is None:
            await self.start()
        assert self._writer is not None
        await self._writer.call_async(self._write, orjson.dumps(signal.to_dict()) + b"\n", sql=False)
        self.lines += 1

    def _write(self, line: bytes) -> None:
        if self.stream is not None:
            self.stream.write(line.decode())
            self.stream.flush()
            return
        view = memoryview(line)
        fd = sys.stdout.fileno() if sys.stdout is not None else 1
        while view:
            view = view[os.write(fd, view):]

    async def close(self) -> None:
        if self._writer is not None:
            w, self._writer = self._writer, None
            w.close(timeout=0.5)  # a write stuck on a full pipe is abandoned, not waited for
