"""Nothing slow on the event loop: from the daemon's start to its exit, the loop thread runs no SQLite
statement (outbox, paper ledger) and writes no file (bar record, jsonl); the outbox's writer thread
and the sinks' threads do. A real daemon in process, a real loopback feed, real SQLite files:
every connection gets a trace callback that records the thread running each statement, and
``os.write``/``os.fsync`` are wrapped the same way."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from barsignal.daemon.app import Daemon, load_model
from barsignal.daemon.config import Config, FeedConfig, JsonlSinkConfig, MetricsConfig, SinksConfig, StateConfig
from barsignal.features.bar import BarFrame
from barsignal.sim.simulator import FeedSimulator
from tests.daemon.conftest import real_bars


class Trace:
    """(thread id, monotonic time, what) for every SQLite statement and file write/fsync."""

    def __init__(self) -> None:
        self.events: list[tuple[int, float, str]] = []
        self.lock = threading.Lock()

    def add(self, what: str) -> None:
        with self.lock:
            self.events.append((threading.get_ident(), time.monotonic(), what))


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch) -> Trace:
    tr = Trace()
    real_connect, real_write, real_fsync = sqlite3.connect, os.write, os.fsync

    def connect(*a, **kw):
        con = real_connect(*a, **kw)
        con.set_trace_callback(lambda stmt: tr.add(f"sql: {stmt[:80]}"))
        return con

    def write(fd: int, data) -> int:
        if fd > 2:  # files (stdout/stderr logging is not the store's)
            tr.add(f"write fd {fd}")
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        tr.add(f"fsync fd {fd}")
        real_fsync(fd)

    monkeypatch.setattr(sqlite3, "connect", connect)
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    return tr


def test_the_loop_thread_runs_no_sqlite_and_no_file_write_during_a_run(tmp_path: Path, tiny_artifact: Path,
                                                                       trace: Trace) -> None:
    bars = real_bars(1100)
    frame = BarFrame.from_bars(bars)
    state = tmp_path / "state"
    seen: dict[str, object] = {}

    async def main() -> int:
        sim = FeedSimulator(frame, speed=100.0, start_index=900, end_index=1000, intrabar=1,
                            ping_interval_s=None, close_delay_ms=0)
        await sim.start()
        seen["loop"] = threading.get_ident()
        # the positive control: a statement on this thread is seen, with this thread's id
        con = sqlite3.connect(tmp_path / "control.sqlite")
        con.execute("SELECT 1")
        con.close()
        try:
            cfg = Config(
                feed=FeedConfig(ws_url=sim.ws_url, rest_url=sim.rest_url, reconnect_min_s=0.05,
                                reconnect_max_s=0.2, rest_timeout_s=5.0),
                sinks=SinksConfig(enabled=("jsonl", "paper"),
                                  jsonl=JsonlSinkConfig(path="signals.jsonl", fsync="always")),
                metrics=MetricsConfig(enabled=False), state=StateConfig(dir=str(state)))
            d = Daemon(cfg, loaded=load_model(cfg, str(tiny_artifact), None), drain_timeout_s=5)
            seen["start"] = time.monotonic()
            task = asyncio.create_task(d.run())
            loop = asyncio.get_running_loop()
            end = loop.time() + 60
            while d.pipeline is None:
                assert loop.time() < end and not task.done()
                await asyncio.sleep(0.001)
            while d.pipeline.last_open_time != bars[999].open_time:
                assert loop.time() < end and not task.done(), "the daemon did not reach the last bar"
                await asyncio.sleep(0.01)
            seen["signals"] = d.pipeline.stats.signals
            d.request_stop()
            return await asyncio.wait_for(task, 20)
        finally:
            await sim.stop()

    assert asyncio.run(main()) == 0
    loop_id, t0 = seen["loop"], seen["start"]
    assert any(tid == loop_id and w == "sql: SELECT 1" for tid, _, w in trace.events), "the trace sees nothing"
    on_loop = [w for tid, t, w in trace.events if tid == loop_id and t >= t0]
    assert on_loop == [], f"the loop thread touched SQLite / files in the daemon's run: {on_loop[:10]}"
    # ...and the work did happen, on other threads
    elsewhere = [w for tid, t, w in trace.events if tid != loop_id and t >= t0]
    n_sig = int(seen["signals"])
    assert sum("INSERT OR IGNORE INTO signals" in w for w in elsewhere) == n_sig
    assert sum("INSERT OR IGNORE INTO equity" in w for w in elsewhere) == n_sig
    assert sum(w.startswith("fsync") for w in elsewhere) >= 1  # jsonl fsync = "always" (per write)
    assert sum(w.startswith("write") for w in elsewhere) >= 100  # the bar record: a line per bar
    assert len((state / "signals.jsonl").read_bytes().splitlines()) == n_sig
    db = sqlite3.connect(state / "outbox.sqlite")
    n, pending = (db.execute("SELECT COUNT(*) FROM signals").fetchone()[0],
                  db.execute("SELECT COUNT(*) FROM pending").fetchone()[0])
    db.close()
    assert n == seen["signals"] and pending == 0
