"""The live daemon's acceptance and parity, proved end to end with real subprocesses on real bars:
``barsignal run`` against ``barsignal feed serve``; the feed is killed mid-run and restarted with bars
missing, so the daemon reconnects and backfills them over REST. Then: one signal per closed bar, none
missing or duplicated; ``barsignal parity`` replays the daemon's bar record with zero differences; the
paper sink traded every signal once; a daemon restart resumes from the ledger without signalling a bar
twice, and parity still holds across the restart. The artifact's move head is ``har_seasonal`` with
its online correction on: p_move is compared bit for bit too, across the restart that resumes it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests import e2e as h
from tests.conftest import REPO, free_port


def _parity(tmp: Path, cfg: Path, artifact: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "barsignal", "parity", "--live-signals",
                           str(tmp / "state" / "signals.jsonl"), "--bars", str(tmp / "state" / "bars"),
                           "--config", str(cfg), "--artifact", str(artifact)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def _equity_times(tmp: Path) -> list[int]:
    db = sqlite3.connect(tmp / "state" / "paper.sqlite")
    try:
        return [r[0] for r in db.execute("SELECT open_time FROM equity ORDER BY open_time")]
    finally:
        db.close()


@pytest.mark.slow
def test_feed_killed_and_restarted_gives_one_signal_per_bar_and_zero_parity_differences(
        tmp_path: Path, har_artifact: Path) -> None:
    times = [int(r[0]) for r in h.rows()]
    signals = lambda: h.read_jsonl(tmp_path / "state" / "signals.jsonl")  # noqa: E731
    port = free_port()
    cfg = h.write_config(tmp_path, port, sinks=("jsonl", "paper"))
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, 2000, 2600, speed=10, port=port)
    run = h.start_daemon(tmp_path, cfg, har_artifact)
    feed2 = None
    try:
        h.wait_for(lambda: sum(s["source"] == "ws" for s in signals()) >= 4, 90, "live signals", [run],
                   h.LOGS[-2:])
        h.kill_all(feed)
        k = times.index(h.last_bar(tmp_path / "state"))
        # The feed comes back later: bars up to k+29 closed while it was down (REST has them). Frames
        # already sent before the kill may still be in flight to the daemon: the hole starts after them.
        feed2, _ = h.start_feed(tmp_path, h.SPOT_NOV, k + 30, k + 45, speed=10, port=port, name="feed2")
        last = times[k + 44]
        h.wait_for(lambda: any(s["open_time"] == last for s in signals()), 90, "signals after reconnect",
                   [run], h.LOGS[-3:])
        code = h.stop(run)
    finally:
        h.kill_all(feed, feed2, run)
    assert code == 0
    h.assert_clean_log(tmp_path / "daemon.log")
    assert '"event":"feed.backfilled"' in (tmp_path / "daemon.log").read_text()

    got = signals()
    ots = [s["open_time"] for s in got]
    first = times.index(ots[0])
    assert ots == times[first:k + 45], "one signal per closed bar, in order, none missing or duplicated"
    assert len({s["id"] for s in got}) == len(got)
    idx = {t: i for i, t in enumerate(times)}
    last_ws = max(idx[s["open_time"]] for s in got if s["source"] == "ws" and idx[s["open_time"]] < k + 30)
    hole = [s for s in got if last_ws < idx[s["open_time"]] < k + 30]
    assert hole and all(s["source"] == "rest" for s in hole) and len(hole) == k + 29 - last_ws

    res = _parity(tmp_path, cfg, har_artifact)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert f"parity OK: {len(got)} signals compared, 0 differences" in res.stdout
    assert _equity_times(tmp_path) == ots  # the paper sink traded every signal once

    # A restart resumes from the ledger and the outbox: no bar is signalled or traded twice.
    feed3, _ = h.start_feed(tmp_path, h.SPOT_NOV, k + 45, k + 400, speed=10, port=port, name="feed3")
    run2 = h.start_daemon(tmp_path, cfg, har_artifact, name="daemon2")
    try:
        h.wait_for(lambda: sum(s["source"] == "ws" for s in signals()[len(got):]) >= 3, 90,
                   "live signals after restart", [run2], h.LOGS[-2:])
        code = h.stop(run2)
    finally:
        h.kill_all(feed3, run2)
    assert code == 0
    again = signals()
    ots = [s["open_time"] for s in again]
    assert len(ots) == len(set(ots)) and ots == sorted(ots) and len(again) > len(got)
    assert _equity_times(tmp_path) == ots
    st = subprocess.run([sys.executable, "-m", "barsignal", "paper", "status", "--config", str(cfg)],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and st.stdout.startswith("BTCUSDT: "), st.stderr
    # The restart resumed the move head's learned correction from the outbox (its run_start line says so) ...
    heads = [orjson.loads(f.read_bytes().splitlines()[0])["run_start"]
             for f in sorted((tmp_path / "state" / "bars").glob("*.jsonl"))]
    moved = heads[-1]["rule_state"]["move"]
    assert moved["artifact"] == got[-1]["artifact"] and moved["delta"] != 0.0
    assert all(s["p_move"] is not None for s in again[len(got):])
    # ... and the replay of the whole bar record, across the restart, still matches bit for bit.
    res = _parity(tmp_path, cfg, har_artifact)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert f"parity OK: {len(again)} signals compared, 0 differences" in res.stdout
