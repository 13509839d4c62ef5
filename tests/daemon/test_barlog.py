"""The bar record: every bar used, with its source, per run; a torn last line is tolerated."""

from __future__ import annotations

from pathlib import Path

import pytest

from barsignal.daemon.barlog import BarLog, read_barlog, read_runs
from barsignal.errors import DataError
from barsignal.features.bar import Bar
from tests.daemon.conftest import real_bars


def test_runs_round_trip_with_sources_across_days(tmp_path: Path) -> None:
    bars = real_bars(3000)  # spans three UTC days
    a = BarLog(tmp_path, "BTCUSDT", run_id="20260101T000000Z")
    first = [Bar(b.open_time, b.open, b.high, b.low, b.close, b.volume, "rest" if i < 100 else "ws")
             for i, b in enumerate(bars[:2000])]
    for b in first:
        a.record(b)
    a.close()
    b2 = BarLog(tmp_path, "BTCUSDT", run_id="20260101T010000Z")
    second = [Bar(b.open_time, b.open, b.high, b.low, b.close, b.volume, "rest") for b in bars[1900:3000]]
    for b in second:
        b2.record(b)
    b2.close()
    assert len(list(tmp_path.glob("*.jsonl"))) >= 4
    runs = read_runs(tmp_path, "BTCUSDT")
    assert list(runs) == ["20260101T000000Z", "20260101T010000Z"]
    assert runs["20260101T000000Z"] == first and runs["20260101T010000Z"] == second
    assert list(read_barlog(tmp_path)) == first + second


def test_a_torn_last_line_is_dropped_and_a_bad_middle_line_is_an_error(tmp_path: Path) -> None:
    log = BarLog(tmp_path, "BTCUSDT", run_id="r1")
    for b in real_bars(3):
        log.record(b)
    log.close()
    (f,) = tmp_path.glob("*.jsonl")
    f.write_bytes(f.read_bytes() + b'{"open_time": 1, "op')  # a crash mid-write
    assert len(list(read_barlog(tmp_path))) == 3
    lines = f.read_bytes().split(b"\n")
    f.write_bytes(b"\n".join([lines[0], b"garbage", *lines[1:]]))
    with pytest.raises(DataError, match=":2: bad bar record line"):
        list(read_barlog(tmp_path))
    with pytest.raises(DataError, match="no bar record"):
        list(read_barlog(tmp_path / "nothing"))


def test_each_run_carries_the_state_it_started_from(tmp_path: Path) -> None:
    from barsignal.daemon.barlog import new_run_id, read_run_records
    from barsignal.engine.signal import RuleState

    bars = real_bars(3000)  # a run that crosses a UTC day repeats its run_start line in the new file
    a = BarLog(tmp_path, "BTCUSDT", run_id="20260101T000000000Z")
    for b in bars[:10]:
        a.record(b)
    a.close()
    b2 = BarLog(tmp_path, "BTCUSDT", run_id="20260101T000000001Z", last_signalled=bars[5].open_time,
                rule_state=RuleState("short", 3, "active", 7))
    for b in bars[:3000]:
        b2.record(b)
    b2.close()
    first, second = read_run_records(tmp_path, "BTCUSDT")
    assert (first.last_signalled, first.rule_state, len(first.bars)) == (None, None, 10)
    assert (second.last_signalled, second.rule_state) == (bars[5].open_time, RuleState("short", 3, "active", 7))
    assert second.bars == list(bars) and len(list(tmp_path.glob("*0001Z-*.jsonl"))) >= 3
    ids = [new_run_id() for _ in range(3)]
    assert ids == sorted(ids) and all(len(i) == 19 and i.endswith("Z") and "-" not in i for i in ids)


def test_a_full_disk_never_tears_a_line_and_the_bars_are_written_once_space_is_back(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """The writer thread gets ENOSPC mid-line (a short write, then two failed writes): the torn tail
    is truncated away, the line retried; every bar ends up in the record exactly once, in order."""
    import errno
    import os

    real_write = os.write
    calls = {"n": 0}

    def flaky_write(fd: int, data) -> int:
        try:  # only the bar record's writes: other threads of this process write too (logs, capture)
            ours = os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path))
        except OSError:
            ours = False
        if not ours:
            return real_write(fd, data)
        calls["n"] += 1
        if calls["n"] == 4:  # half a line reaches the file, then the disk is full
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        if calls["n"] in (5, 6):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    bars = real_bars(6)
    log = BarLog(tmp_path, "BTCUSDT", run_id="r1")
    monkeypatch.setattr(os, "write", flaky_write)
    for b in bars:
        log.record(b)  # returns at once: the writes happen on the writer thread
    assert log.flush(30)
    assert log.writer.errors == 3 and log.writer.failing is None
    log.close()
    monkeypatch.undo()
    (run,) = read_runs(tmp_path, "BTCUSDT").values()
    assert [b.open_time for b in run] == [b.open_time for b in bars]


def test_other_records_keep_their_place_among_the_bars(tmp_path: Path) -> None:
    from barsignal.daemon.barlog import read_run_records

    bars = real_bars(4)
    log = BarLog(tmp_path, "BTCUSDT", run_id="r1")
    log.record(bars[0])
    log.record(bars[1])
    log.append({"note": {"what": "operator mark"}})
    log.record(bars[2])
    log.record(bars[3])
    with pytest.raises(ValueError):
        log.append({"open_time": 1, "x": 2})
    log.close()
    (run,) = read_run_records(tmp_path, "BTCUSDT")
    assert len(run.bars) == 4 and run.records == [(2, {"note": {"what": "operator mark"}})]
