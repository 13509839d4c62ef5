"""Replay: historical bars through THE live ``Pipeline``, signals to JSONL and the paper ledger.

The pipeline is the same object ``barsignal run`` uses; only the bar source differs. With
``batch > 1`` windows are scored in batches (``Pipeline.process_many``), which ``tests/paper``
proves gives the same signals as one by one (``batch=1``, ``Pipeline.process``). Bars go through
in chunks, so memory stays bounded and fills interleave with scoring.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import orjson

from barsignal.daemon.paper.ledger import PaperLedger
from barsignal.daemon.pipeline import Pipeline
from barsignal.engine.signal import Signal
from barsignal.errors import DataError
from barsignal.features.bar import Bar


@dataclass
class ReplayResult:
    bars: int = 0
    signals: int = 0
    fills: int = 0
    duplicates: int = 0  # signals the ledger already had (a replay resumed into the same ledger)
    seconds: dict[str, float] = field(default_factory=dict)  # pipeline, paper, write


def _chunks(bars: Iterable[Bar], n: int) -> Iterator[list[Bar]]:
    it = iter(bars)
    while chunk := list(islice(it, n)):
        yield chunk


def replay(bars: Iterable[Bar], pipeline: Pipeline, *, ledger: PaperLedger | None = None,
           signals_path: str | os.PathLike[str] | None = None, batch: int = 256, chunk: int = 65_536,
           on_signal: Callable[[Signal], None] | None = None,
           clock: Callable[[], float] = time.perf_counter) -> ReplayResult:
    """Run ``bars`` through ``pipeline``; apply each signal to ``ledger`` and append it to
    ``signals_path`` (the live JSONL format). ``batch <= 1`` scores one window at a time."""
    res = ReplayResult()
    t_pipe = t_paper = t_write = 0.0
    fh = None
    if signals_path is not None:
        Path(signals_path).parent.mkdir(parents=True, exist_ok=True)
        fh = open(signals_path, "wb")
    try:
        for part in _chunks(bars, chunk if batch > 1 else 1024):
            t0 = clock()
            if batch > 1:
                sigs = pipeline.process_many(part, batch=batch)
            else:
                sigs = [s for b in part if (s := pipeline.process(b)) is not None]
            t1 = clock()
            res.bars += len(part)
            res.signals += len(sigs)
            if ledger is not None:
                for a in ledger.apply_batch(sigs):
                    res.fills += a.fill is not None
                    res.duplicates += a.duplicate
            t2 = clock()
            if fh is not None:
                # orjson serializes the dataclass directly: the same bytes as the jsonl sink's
                # orjson.dumps(signal.to_dict()) (a test checks it), without asdict's deep copy.
                fh.write(b"".join(orjson.dumps(s) + b"\n" for s in sigs))
            if on_signal is not None:
                for s in sigs:
                    on_signal(s)
            t3 = clock()
            t_pipe += t1 - t0
            t_paper += t2 - t1
            t_write += t3 - t2
    finally:
        if fh is not None:
            fh.close()
    res.seconds = {"pipeline": t_pipe, "paper": t_paper, "write": t_write}
    return res


def is_barlog(path: str | os.PathLike[str]) -> bool:
    """A bar record of the live daemon (a ``.jsonl`` file or a directory of them)."""
    p = Path(path)
    return (p.is_dir() and any(p.glob("*.jsonl"))) or p.suffix == ".jsonl"


def load_bars(paths: list[str], symbol: str | None = None) -> Iterator[Bar]:
    """Bars from a live bar record (keeps each bar's ws/rest source) or from any loader format
    (CSV, zip, freqtrade JSON, Parquet; source ``file``). Several loader files form one series."""
    if not paths:
        raise DataError("no bar files given")
    logs = [p for p in paths if is_barlog(p)]
    if logs and len(logs) != len(paths):
        raise DataError("mix of bar-record (.jsonl) and market-data files: replay one kind at a time")
    if logs:
        from barsignal.daemon.barlog import read_barlog

        for p in logs:
            yield from read_barlog(p, symbol)
        return
    from barsignal.data.load import load_many

    yield from load_many(paths).frame.bars("file")
