"""The state directory: one daemon at a time, and setup / disk errors that say what is wrong.

Real ``barsignal run`` subprocesses against ``barsignal feed serve`` (real bars):
- a second daemon on the same state directory, started seconds later or at the same instant, is
  refused (exit 2, one line naming the directory and the holder's PID); the paper ledger then
  equals a clean run's (the signals applied once each);
- a state directory that cannot be written (a file in the way; a read-only mount) and a jsonl path
  on a read-only mount: exit 2, one line, nothing touched;
- a busy metrics port: retried a few seconds, then exit 1 (systemd restarts), before
  ``outbox.sqlite`` exists; a port freed within the retry window is taken;
- the disk fills up at runtime (a small tmpfs): one ``store_write_failed cause=ENOSPC`` line, the
  daemon keeps running and keeps signalling (to a sink on another filesystem), and once space is
  freed the outbox, bar record and ledger catch up: nothing lost.

Mounts need CAP_SYS_ADMIN (root in this container has it); where ``mount`` is refused the two
mount-based tests skip and say so.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from barsignal.daemon import config as cfgmod
from barsignal.daemon.paper.ledger import PaperLedger
from barsignal.daemon.paper.signals_io import read_signals
from barsignal.engine.broker import Rules
from tests import e2e as h
from tests.conftest import REPO, free_port

START, SPEED = 4000, 40.0


def _outbox(state: Path) -> tuple[list[int], int]:
    db = sqlite3.connect(state / "outbox.sqlite")
    try:
        ots = [r[0] for r in db.execute("SELECT open_time FROM signals ORDER BY seq")]
        return ots, db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
    finally:
        db.close()


def _assert_one_clean_run(tmp_path: Path, cfg: Path, state: Path, sig_path: Path) -> str:
    """The outbox holds each bar once, in order, nothing pending; the ledger equals a fresh ledger
    fed the signals once each (what a single clean daemon gives)."""
    ots, pending = _outbox(state)
    times = [int(r[0]) for r in h.rows()]
    i0 = times.index(ots[0])
    assert ots == times[i0:i0 + len(ots)], "a bar was signalled twice or skipped"
    assert pending == 0
    signals = list({s.id: s for s in read_signals(sig_path)}.values())
    assert [s.open_time for s in signals] == ots
    live = h.ledger_rows(state / "paper.sqlite")
    assert [r[1] for r in live["equity"]] == ots, "the ledger has other bars than the outbox"
    ref_path = tmp_path / f"ref-{len(ots)}.sqlite"
    with PaperLedger(ref_path, Rules.from_config(cfgmod.load(cfg).paper)) as ref:
        ref.apply_many(signals)
    assert live == h.ledger_rows(ref_path), "the ledger differs from the same signals applied once"
    return f"{len(ots)} signals, {len(live['fills'])} fills == a clean run's"


def _refusal(log: Path) -> str:
    lines = [x for x in log.read_text().splitlines() if "is in use by another barsignal daemon" in x]
    assert len(lines) == 1, log.read_text()[-3000:]
    return lines[0]


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path, artifact: Path) -> None:
    port = free_port()
    cfg = h.write_config(tmp_path, port, sinks=("jsonl", "paper"))
    state = tmp_path / "state"
    sig_path = state / "signals.jsonl"
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, START + 20_000, speed=SPEED, port=port)
    procs: list[subprocess.Popen] = []
    try:
        # 1. seconds apart: the first runs, the second is refused naming the first's PID
        a = h.start_daemon(tmp_path, cfg, artifact, name="a")
        procs.append(a)
        h.wait_for(lambda: len(h.read_jsonl(sig_path)) >= 30, 90, "the first daemon's signals", [a, feed],
                   [tmp_path / "a.log"])
        b = h.start_daemon(tmp_path, cfg, artifact, name="b")
        procs.append(b)
        assert b.wait(60) == 2
        line = _refusal(tmp_path / "b.log")
        assert str(state) in line and f"pid {a.pid}" in line, line
        h.assert_clean_log(tmp_path / "b.log")
        n = len(h.read_jsonl(sig_path))
        h.wait_for(lambda: len(h.read_jsonl(sig_path)) >= n + 30, 60, "the first daemon goes on", [a, feed],
                   [tmp_path / "a.log"])
        assert h.stop(a) == 0
        first = _assert_one_clean_run(tmp_path, cfg, state, sig_path)

        # 2. at the same instant: exactly one runs, the other is refused (no sqlite3 traceback)
        c = h.start_daemon(tmp_path, cfg, artifact, name="c")
        d = h.start_daemon(tmp_path, cfg, artifact, name="d")
        procs += [c, d]
        end = time.monotonic() + 60
        while c.poll() is None and d.poll() is None:
            assert time.monotonic() < end, "neither daemon was refused"
            time.sleep(0.05)
        loser, winner = (c, d) if c.poll() is not None else (d, c)
        name = "c" if loser is c else "d"
        assert loser.returncode == 2, (tmp_path / f"{name}.log").read_text()[-3000:]
        line = _refusal(tmp_path / f"{name}.log")
        assert str(state) in line and f"pid {winner.pid}" in line, line
        text = (tmp_path / f"{name}.log").read_text()
        assert "OperationalError" not in text and "Traceback" not in text
        n = len(h.read_jsonl(sig_path))
        h.wait_for(lambda: len(h.read_jsonl(sig_path)) >= n + 30, 90, "the winner signals", [winner, feed],
                   [tmp_path / "c.log", tmp_path / "d.log"])
        assert h.stop(winner) == 0
        for p in ("a", "c", "d"):
            h.assert_clean_log(tmp_path / f"{p}.log")
        both = _assert_one_clean_run(tmp_path, cfg, state, sig_path)
    finally:
        h.kill_all(*procs)
        h.stop(feed)
    print(f"\n[state dir] second daemon 2 s later and at the same instant: exit 2 naming the holder; "
          f"after the first: {first}; after both: {both}")


def _run(args: list[str], tmp: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "barsignal", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **h.daemon_env(tmp)})


def _one_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [x for x in res.stderr.splitlines() if x.startswith("barsignal run:")]
    assert len(lines) == 1, res.stderr[-3000:]
    return lines[0]


def test_a_state_dir_that_is_a_file_exits_2_with_one_line(tmp_path: Path, artifact: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    cfg = h.write_config(tmp_path, free_port())
    res = _run(["run", "--config", str(cfg), "--artifact", str(artifact)], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    line = _one_line(res)
    assert str(blocker) in line and "not a directory" in line, line
    assert blocker.read_text() == "not a directory"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:
    """``mount(name, options)``: a fresh tmpfs under tmp_path; unmounted at the end."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here ({res.stderr.strip()}): cannot make a read-only "
                        "or full filesystem for this test")
        mounted.append(where)
        return where

    yield mount
    for m in mounted:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def test_a_read_only_state_dir_or_jsonl_path_exits_2_with_one_line(tmp_path: Path, artifact: Path, tmpfs) -> None:
    ro = tmpfs("ro", "ro,size=1m")
    cfg = h.write_config(tmp_path, free_port())
    cfg.write_text(cfg.read_text().replace(f'dir = "{tmp_path / "state"}"', f'dir = "{ro / "state"}"'))
    res = _run(["run", "--config", str(cfg), "--artifact", str(artifact)], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    line = _one_line(res)
    assert str(ro / "state") in line and "read-only" in line and "EROFS" in line, line

    cfg2 = h.write_config(tmp_path, free_port(), name="jsonl.toml")
    cfg2.write_text(cfg2.read_text().replace('path = "signals.jsonl"', f'path = "{ro / "signals.jsonl"}"'))
    res = _run(["run", "--config", str(cfg2), "--artifact", str(artifact)], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    line = _one_line(res)
    assert "[sinks.jsonl] path" in line and str(ro) in line and "read-only" in line, line
    assert not (tmp_path / "state").exists(), "refused before the state directory was touched"


def test_a_busy_metrics_port_is_retried_then_exits_1_before_the_outbox_exists(tmp_path: Path,
                                                                              artifact: Path) -> None:
    mport = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", mport))
    holder.listen()
    try:
        cfg = h.write_config(tmp_path, free_port(), metrics_port=mport)
        t0 = time.monotonic()
        res = _run(["run", "--config", str(cfg), "--artifact", str(artifact)], tmp_path)
        took = time.monotonic() - t0
    finally:
        holder.close()
    assert res.returncode == 1, res.stderr[-3000:]
    line = _one_line(res)
    assert f"127.0.0.1:{mport}" in line and "EADDRINUSE" in line, line
    assert took >= 5.0, f"gave up after {took:.1f} s: no retry"
    assert not (tmp_path / "state" / "outbox.sqlite").exists()

    # briefly busy: freed within the retry window, the daemon takes it and runs
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", mport))
    holder.listen()
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, START + 2000, speed=SPEED, port=port)
    cfg = h.write_config(tmp_path, port, metrics_port=mport, name="ok.toml")
    run = h.start_daemon(tmp_path, cfg, artifact, name="busy")
    try:
        time.sleep(1.5)  # the port stays busy for part of the retry window (this is the scenario)
        holder.close()
        h.wait_for(lambda: len(h.read_jsonl(tmp_path / "state" / "signals.jsonl")) >= 5, 60, "signals",
                   [run, feed], [tmp_path / "busy.log"])
        assert h.scrape(mport)["barsignal_signals_total{action=\"flat\"}"] >= 0
        assert h.stop(run) == 0
    finally:
        holder.close()
        h.kill_all(run)
        h.stop(feed)
    h.assert_clean_log(tmp_path / "busy.log")


def _fill(where: Path) -> Path:
    """Fill the filesystem at ``where`` (a file written until ENOSPC)."""
    filler = where / "filler"
    block = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:  # raw writes: a buffered file would keep a partial block and raise ENOSPC again on close
        while True:
            os.write(fd, block)
    except OSError as e:
        assert e.errno == errno.ENOSPC, f"filling {where} failed with {e!r}, not ENOSPC"
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_is_logged_once_and_nothing_is_lost_once_space_is_freed(tmp_path: Path, artifact: Path,
                                                                             tmpfs) -> None:
    small = tmpfs("small", "size=8m")
    port, mport = free_port(), free_port()
    sig_path = tmp_path / "signals.jsonl"  # the jsonl sink on another filesystem: signals keep flowing
    cfg = h.write_config(tmp_path, port, sinks=("jsonl", "paper"), metrics_port=mport)
    cfg.write_text(cfg.read_text().replace(f'dir = "{tmp_path / "state"}"', f'dir = "{small / "state"}"')
                   .replace('path = "signals.jsonl"', f'path = "{sig_path}"'))
    state = small / "state"
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, START + 20_000, speed=SPEED, port=port)
    run = h.start_daemon(tmp_path, cfg, artifact, name="full")
    log = tmp_path / "full.log"
    try:
        h.wait_for(lambda: len(h.read_jsonl(sig_path)) >= 40, 90, "signals before the disk fills", [run, feed],
                   [log])
        filler = _fill(small)
        h.wait_for(lambda: "store_write_failed" in log.read_text(), 60, "the ENOSPC log line", [run, feed], [log])
        n = len(h.read_jsonl(sig_path))
        h.wait_for(lambda: len(h.read_jsonl(sig_path)) >= n + 60, 60, "signals while the disk is full",
                   [run, feed], [log])
        health = h.scrape(mport)
        assert health["barsignal_outbox_depth"] >= 0
        filler.unlink()
        h.wait_for(lambda: "store_write_recovered" in log.read_text(), 60, "recovery", [run, feed], [log])
        n = len(h.read_jsonl(sig_path))
        h.wait_for(lambda: len(h.read_jsonl(sig_path)) >= n + 30, 60, "signals after recovery", [run, feed], [log])
        code = h.stop(run)
    finally:
        h.kill_all(run)
        h.stop(feed)
    assert code == 0, log.read_text()[-3000:]
    h.assert_clean_log(log)
    failed = [x for x in log.read_text().splitlines() if "store_write_failed" in x]
    assert len(failed) == 1 and "ENOSPC" in failed[0], failed
    ots, pending = _outbox(state)
    assert pending == 0
    times = [int(r[0]) for r in h.rows()]
    i0 = times.index(ots[0])
    assert ots == times[i0:i0 + len(ots)], "a signal was lost from the outbox while the disk was full"
    ids = [s["id"] for s in h.read_jsonl(sig_path)]
    assert len(set(ids)) == len(ots), "the jsonl sink and the outbox disagree"
    recorded = [b["open_time"] for b in h.bar_record(state)]
    assert len(recorded) == len(set(recorded)), "a bar recorded twice (a retried write)"
    assert set(ots) <= set(recorded), "a signalled bar is missing from the bar record"
    live = h.ledger_rows(state / "paper.sqlite")
    assert [r[1] for r in live["equity"]] == ots
    print(f"\n[state dir] disk full for {len(failed)} episode: one ENOSPC line, {len(ots)} signals, 0 lost from "
          f"the outbox, bar record or ledger once space was freed")
