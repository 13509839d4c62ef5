"""Replay: historical bars through THE live node (``barsignal.node``): pipeline, outbox, sinks.

``replay(bars, node)`` plugs a bar iterable into a :class:`~barsignal.node.Node` built by
``build_node(cfg, "replay", ...)`` (or assembled from a pipeline in tests): every bar goes through
``Node.handle`` as live, every signal into the node's outbox (a given or temporary state directory)
and from there through the live ``SinkWorker`` to the live sinks (the jsonl sink for ``--signals``,
the paper sink for the ledger). There is no second path to a sink. Scoring is batch-1, as live.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from barsignal.errors import DataError
from barsignal.features.bar import Bar


@dataclass
class ReplayResult:
    bars: int = 0
    signals: int = 0
    fills: int = 0
    duplicates: int = 0  # signals the outbox already had (a replay resumed into the same state)
    invalid: int = 0  # bars dropped as invalid (as live drops them)
    seconds: dict[str, float] = field(default_factory=dict)  # replay (bars -> outbox), drain


def replay(bars: Iterable[Bar], node: Any, *, close: bool = True,
           clock: Callable[[], float] = time.perf_counter) -> ReplayResult:
    """Run ``bars`` through ``node`` and wait until every sink has every signal. ``close``: close
    the node afterwards (its sinks, outbox, and a temporary state directory)."""
    from barsignal.node import run

    return run(replay_async(bars, node, close=close, clock=clock))


async def replay_async(bars: Iterable[Bar], node: Any, *, close: bool = True,
                       clock: Callable[[], float] = time.perf_counter) -> ReplayResult:
    res = ReplayResult()
    before = node.stats.signals, node.stats.duplicates, node.pipeline.stats.invalid
    await node.start()
    paper = next((s for s in node.sinks if s.name == "paper"), None)

    def fills() -> int:  # read while the paper sink is idle (before the run, after the drain)
        ledger = getattr(paper, "ledger", None)
        return len(ledger.fills(node.symbol)) if ledger is not None else 0

    fills0 = fills()
    try:
        t0 = clock()
        res.bars = await node.replay(bars)
        t1 = clock()
        await node.settle()
        t2 = clock()
        res.fills = fills() - fills0
    finally:
        if close:
            await node.close()
    res.signals = node.stats.signals - before[0]
    res.duplicates = node.stats.duplicates - before[1]
    res.invalid = node.pipeline.stats.invalid - before[2]
    res.seconds = {"replay": t1 - t0, "drain": t2 - t1}
    return res


def is_barlog(path: str | os.PathLike[str]) -> bool:
    """A bar record of the live daemon (a ``.jsonl`` file or a directory of them)."""
    p = Path(path)
    return (p.is_dir() and any(p.glob("*.jsonl"))) or p.suffix == ".jsonl"


def load_bars(paths: list[str], symbol: str | None = None) -> Iterator[Bar]:
    """Bars from a live bar record (keeps each bar's ws/rest source) or from any loader format
    (CSV, zip, freqtrade JSON, Parquet; source ``file``). Several loader files form one series.
    Bars of another interval than the model's raise IntervalMismatch (exit 2), naming both."""
    from barsignal.data.intervals import check_interval
    from barsignal.features.bar import INTERVAL_MS

    if not paths:
        raise DataError("no bar files given")
    logs = [p for p in paths if is_barlog(p)]
    if logs and len(logs) != len(paths):
        raise DataError("mix of bar-record (.jsonl) and market-data files: replay one kind at a time")
    if logs:
        from barsignal.daemon.barlog import read_barlog

        for p in logs:
            bars = list(read_barlog(p, symbol))
            check_interval([b.open_time for b in bars], INTERVAL_MS, str(p))
            yield from bars
        return
    from barsignal.data.load import load_many

    frame = load_many(paths).frame
    check_interval(frame.open_time, INTERVAL_MS, ", ".join(str(p) for p in paths))
    yield from frame.bars("file")
