"""Signals JSONL in the live format (one ``Signal.to_dict()`` per line, as the ``jsonl`` sink writes)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from barsignal.engine.signal import Signal
from barsignal.errors import DataError

_FIELDS = set(Signal.__slots__)  # type: ignore[attr-defined]


def read_signals(path: str | os.PathLike[str]) -> Iterator[Signal]:
    """Signals from a JSONL file, or from standard input as they arrive when ``path`` is ``-``.
    A torn last line (a crash mid-write) is skipped."""
    if str(path) == "-":
        yield from _parse(sys.stdin.buffer, "<stdin>")
        return
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: signals file not found")
    with p.open("rb") as f:
        yield from _parse(f, str(p))


def _parse(lines: Iterable[bytes], name: str) -> Iterator[Signal]:
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            if not line.endswith(b"\n"):  # the last line, unterminated: a torn write
                return
            raise DataError(f"{name}:{i}: not a JSON line") from None
        if not isinstance(d, dict) or not {"id", "symbol", "open_time", "p_up", "action"} <= d.keys():
            raise DataError(f"{name}:{i}: not a signal record (needs id, symbol, open_time, p_up, action)")
        yield Signal(**{k: v for k, v in d.items() if k in _FIELDS})


def write_signals(path: str | os.PathLike[str], signals: Iterable[Signal]) -> int:
    """Write signals as JSONL (the live format); returns how many."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with p.open("wb") as f:
        for s in signals:
            f.write(orjson.dumps(s) + b"\n")  # == orjson.dumps(s.to_dict()), without the deep copy
            n += 1
    return n
