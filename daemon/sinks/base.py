"""The ``SignalSink`` protocol and what a sink factory receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from barsignal.engine.signal import Signal


class PermanentSinkError(Exception):
    """A sink's receiver refused a signal for good (e.g. HTTP 404, 401): the outbox keeps it as a
    dead letter (counted, re-sent by ``barsignal outbox redrive``) instead of retrying it.
    ``status`` is the receiver's status code when it has one."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@runtime_checkable
class SignalSink(Protocol):
    """Where signals go. ``send`` raises on failure: the outbox keeps the signal and retries;
    ``PermanentSinkError`` when the receiver refuses it for good (a dead letter, not retried)."""

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
