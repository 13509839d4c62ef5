"""The ``SignalSink`` protocol and what a sink factory receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from barsignal.engine.signal import Signal


@runtime_checkable
class SignalSink(Protocol):
    """Where signals go. ``send`` raises on failure: the outbox keeps the signal and retries."""

    name: str

    async def start(self) -> None:
        """Open connections or files; called once in the daemon's event loop before any send."""
        ...

    async def send(self, signal: Signal) -> None:
        """Deliver one signal (at least once: the receiver de-duplicates by ``signal.id``)."""
        ...

    async def close(self) -> None:
        """Flush and release resources."""
        ...


@dataclass(frozen=True, slots=True)
class SinkContext:
    """A sink factory's input: its own config section and the state directory, nothing more."""

    name: str
    section: Any  # the sink's config section (e.g. JsonlSinkConfig), or None when it has none
    state_dir: Path


SinkFactory = Callable[[SinkContext], SignalSink]
