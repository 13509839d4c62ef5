"""Parity, proved end to end: ``barsignal run`` against ``barsignal feed serve`` (subprocesses, real
bars) with the feed killed and restarted with bars missing (reconnect + REST backfill), then
``barsignal parity`` replays the daemon's bar record: zero differences. The paper sink trades
alongside, and a daemon restart resumes it from the ledger without signalling a bar twice."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
DATA_FILE = next((Path(__file__).resolve().parents[3] / "shared" / "data" / "klines" / "spot_1m")
                 .glob("BTC_USDT-1m_2021-11-11*.json"))  # no gaps in this month


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "barsignal", "--log-format", "json", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _feed(port: int, start: int, end: int) -> subprocess.Popen:
    p = _cli("feed", "serve", str(DATA_FILE), "--port", str(port), "--speed", "10", "--start-index",
             str(start), "--end-index", str(end), "--intrabar", "1")
    assert p.stdout is not None and p.stdout.readline(), p.stderr.read() if p.stderr else ""
    return p


def _config(tmp: Path, port: int) -> Path:
    cfg = tmp / "config.toml"
    cfg.write_text(f"""
[feed]
ws_url = "ws://127.0.0.1:{port}"
rest_url = "http://127.0.0.1:{port}"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
rest_timeout_s = 5.0

[sinks]
enabled = ["jsonl", "paper"]

[sinks.jsonl]
path = "signals.jsonl"
fsync = "always"

[paper]
ledger = "paper.sqlite"

[metrics]
enabled = false

[state]
dir = "{tmp / 'state'}"
""")
    return cfg


def _signals(tmp: Path) -> list[dict]:
    p = tmp / "state" / "signals.jsonl"
    if not p.exists():
        return []
    return [orjson.loads(x) for x in p.read_bytes().splitlines() if x.endswith(b"}")]


def _last_bar_used(tmp: Path) -> int:
    files = sorted((tmp / "state" / "bars").glob("*.jsonl"))
    lines = [x for x in files[-1].read_bytes().splitlines() if x.endswith(b"}")]
    return int(orjson.loads(lines[-1])["open_time"])


def _wait(cond, timeout: float, what: str, procs=()) -> None:
    end = time.monotonic() + timeout
    while not cond():
        for p in procs:
            if p.poll() is not None:
                err = p.stderr.read()[-3000:] if p.stderr else ""
                raise AssertionError(f"{what}: a process exited early ({p.returncode}): {err}")
        if time.monotonic() > end:
            tails = []
            for p in procs:
                p.kill()
                tails.append(p.communicate()[1][-3000:])
            raise AssertionError(f"timed out waiting for {what}: {tails}")
        time.sleep(0.05)  # polling a file the daemon writes, not waiting out a fixed delay


def _stop(p: subprocess.Popen) -> tuple[int, str]:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        raise AssertionError(f"no exit within 30 s of SIGTERM: {err[-3000:]}") from None
    return p.returncode, err


def _kill_all(*procs: subprocess.Popen | None) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.communicate()


def _parity(tmp: Path, cfg: Path, artifact: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "barsignal", "parity", "--live-signals",
                           str(tmp / "state" / "signals.jsonl"), "--bars", str(tmp / "state" / "bars"),
                           "--config", str(cfg), "--artifact", str(artifact)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_live_run_with_reconnect_and_backfill_has_zero_parity_differences(tmp_path: Path,
                                                                          tiny_artifact: Path) -> None:
    times = [int(r[0]) for r in orjson.loads(DATA_FILE.read_bytes())]
    port = free_port()
    cfg = _config(tmp_path, port)
    feed = _feed(port, 2000, 2600)
    run = _cli("run", "--config", str(cfg), "--artifact", str(tiny_artifact))
    feed2 = None
    try:
        _wait(lambda: sum(s["source"] == "ws" for s in _signals(tmp_path)) >= 4, 90, "live signals", [run])
        feed.kill()
        feed.communicate()
        k = times.index(_last_bar_used(tmp_path))
        feed2 = _feed(port, k + 25, k + 40)  # bars k+1..k+24 closed while it was down: REST has them
        last = times[k + 39]
        _wait(lambda: any(s["open_time"] == last for s in _signals(tmp_path)), 90, "signals after reconnect",
              [run])
        code, err = _stop(run)
    finally:
        _kill_all(feed, feed2, run)
    assert code == 0, err[-3000:]
    got = _signals(tmp_path)
    assert {"ws", "rest"} <= {s["source"] for s in got}, "the run must include REST-backfilled bars"
    res = _parity(tmp_path, cfg, tiny_artifact)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert f"parity OK: {len(got)} signals compared, 0 differences" in res.stdout

    # The paper sink traded every signal once (one equity row per signalled bar).
    db = sqlite3.connect(tmp_path / "state" / "paper.sqlite")
    eq = [r[0] for r in db.execute("SELECT open_time FROM equity ORDER BY open_time")]
    db.close()
    assert eq == [s["open_time"] for s in got]

    # A restart resumes from the ledger and the outbox: no bar is signalled or traded twice.
    feed3 = _feed(port, k + 40, k + 400)  # the feed runs on while the daemon warms up
    run2 = _cli("run", "--config", str(cfg), "--artifact", str(tiny_artifact))
    try:
        _wait(lambda: sum(s["source"] == "ws" for s in _signals(tmp_path)[len(got):]) >= 3, 90,
              "live signals after restart",
              [run2])
        code, err = _stop(run2)
    finally:
        _kill_all(feed3, run2)
    assert code == 0, err[-3000:]
    again = _signals(tmp_path)
    ots = [s["open_time"] for s in again]
    assert len(ots) == len(set(ots)) and ots == sorted(ots) and len(again) > len(got)
    db = sqlite3.connect(tmp_path / "state" / "paper.sqlite")
    eq = [r[0] for r in db.execute("SELECT open_time FROM equity ORDER BY open_time")]
    db.close()
    assert eq == ots
    st = subprocess.run([sys.executable, "-m", "barsignal", "paper", "status", "--config", str(cfg)],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and st.stdout.startswith("BTCUSDT: "), st.stderr
    # ... and the replay of the whole bar record, across the restart, still matches bit for bit.
    res = _parity(tmp_path, cfg, tiny_artifact)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert f"parity OK: {len(again)} signals compared, 0 differences" in res.stdout
