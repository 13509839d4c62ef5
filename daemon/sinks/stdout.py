"""``stdout``: one JSON line per signal on standard output (logs go to stderr)."""

from __future__ import annotations

import sys
from typing import IO

import orjson

from barsignal.daemon.sinks.base import SinkContext
from barsignal.engine.signal import Signal


class StdoutSink:
    name = "stdout"

    def __init__(self, ctx: SinkContext | None = None, stream: IO[str] | None = None) -> None:
        self.stream = stream

    async def start(self) -> None:
        pass

    async def send(self, signal: Signal) -> None:
        out = self.stream or sys.stdout
        out.write(orjson.dumps(signal.to_dict()).decode() + "\n")
        out.flush()

    async def close(self) -> None:
        pass
