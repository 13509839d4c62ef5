"""``barsignal run`` as a new user runs it: subprocesses, real bars, ``barsignal feed serve``.

The acceptance test: the feed is killed mid-run and restarted with bars missing; the daemon
reconnects, backfills them over REST, and emits exactly one signal per closed bar.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import REPO, SPOT_1M, free_port

DATA_FILE = next(p for p in SPOT_1M if "2021-11-11" in p.name)  # no gaps in this month


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "barsignal", "--log-format", "json", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _feed(port: int, start: int, end: int, speed: float = 10.0) -> subprocess.Popen:
    p = _cli("feed", "serve", str(DATA_FILE), "--port", str(port), "--speed", str(speed), "--start-index",
             str(start), "--end-index", str(end), "--intrabar", "1")
    line = p.stdout.readline()  # one JSON line once listening
    assert line, p.stderr.read()
    return p


def _config(tmp: Path, port: int, **feed: str) -> Path:
    ws = feed.get("ws_url", f"ws://127.0.0.1:{port}")
    rest = feed.get("rest_url", f"http://127.0.0.1:{port}")
    cfg = tmp / "config.toml"
    cfg.write_text(f"""
[feed]
ws_url = "{ws}"
rest_url = "{rest}"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
rest_timeout_s = 5.0

[sinks]
enabled = ["jsonl"]

[sinks.jsonl]
path = "signals.jsonl"
fsync = "always"

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
    """The newest bar in the daemon's bar record (written before scoring; the sinks may lag)."""
    files = sorted((tmp / "state" / "bars").glob("*.jsonl"))
    lines = [x for x in files[-1].read_bytes().splitlines() if x.endswith(b"}")]
    return int(orjson.loads(lines[-1])["open_time"])


def _wait(cond, timeout: float, what: str, procs=()) -> None:
    end = time.monotonic() + timeout
    while not cond():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: a process exited early ({p.returncode}): {p.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stop(p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> tuple[int, str]:
    if p.poll() is None:
        p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        raise AssertionError(f"did not exit within {timeout} s after signal {sig}: {err[-3000:]}") from None
    return p.returncode, err


@pytest.mark.slow
def test_feed_killed_and_restarted_with_missing_bars_gives_one_signal_per_bar(tmp_path: Path,
                                                                              tiny_artifact: Path) -> None:
    rows = orjson.loads(DATA_FILE.read_bytes())
    times = [int(r[0]) for r in rows]
    port = free_port()
    feed = _feed(port, 2000, 2600)
    run = _cli("run", "--config", str(_config(tmp_path, port)), "--artifact", str(tiny_artifact))
    feed2 = None
    try:
        # a few live signals, then the feed dies
        _wait(lambda: sum(s["source"] == "ws" for s in _signals(tmp_path)) >= 4, 60, "live signals", [run])
        feed.kill()
        feed.communicate()
        k = times.index(_last_bar_used(tmp_path))
        # The feed comes back later: bars up to k+29 closed while it was down (REST has them). Frames
        # already sent before the kill may still be in flight to the daemon: the hole starts after them.
        feed2 = _feed(port, k + 30, k + 45)
        last = times[k + 44]
        _wait(lambda: any(s["open_time"] == last for s in _signals(tmp_path)), 60, "signals after restart",
              [run])
        code, err = _stop(run)
    finally:
        for p in (feed, feed2, run):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    got = _signals(tmp_path)
    ots = [s["open_time"] for s in got]
    first = times.index(ots[0])
    assert ots == times[first:k + 45], "one signal per closed bar, in order, none missing or duplicated"
    assert len({s["id"] for s in got}) == len(got)
    # Bars that closed while the feed was down came over REST.
    idx = {s["open_time"]: times.index(s["open_time"]) for s in got}
    last_ws = max(idx[s["open_time"]] for s in got if s["source"] == "ws" and idx[s["open_time"]] < k + 30)
    hole = [s for s in got if last_ws < idx[s["open_time"]] < k + 30]
    assert hole and all(s["source"] == "rest" for s in hole) and len(hole) == k + 29 - last_ws
    assert '"event": "feed.backfilled"' in err or '"event":"feed.backfilled"' in err


def test_unreachable_feed_logs_a_clear_line_and_retries_without_a_traceback(tmp_path: Path,
                                                                             tiny_artifact: Path) -> None:
    port = free_port()  # nobody listens here: like a machine with no network
    run = _cli("run", "--config", str(_config(tmp_path, port)), "--artifact", str(tiny_artifact))
    lines: list[str] = []
    end = time.monotonic() + 60
    os.set_blocking(run.stderr.fileno(), True)
    while time.monotonic() < end and sum("feed.connect_failed" in x for x in lines) < 3:
        line = run.stderr.readline()
        if not line:
            break
        lines.append(line)
    run.send_signal(signal.SIGHUP)  # reload: config and artifact re-read, model swapped (or kept)
    while time.monotonic() < end and not any('"reload' in x for x in lines[-5:]):
        line = run.stderr.readline()
        if not line:
            break
        lines.append(line)
    code, rest = _stop(run)
    err = "".join(lines) + rest
    assert any(orjson.loads(x).get("event") == "reloaded" for x in lines if x.startswith("{")), err[-3000:]
    fails = [orjson.loads(x) for x in lines if "feed.connect_failed" in x]
    assert len(fails) >= 3, err[-3000:]
    assert all("retry_in_s" in f and f"127.0.0.1:{port}" in f["url"] for f in fails)
    assert "Traceback" not in err
    assert code == 0


def test_bad_config_or_artifact_exits_2_before_touching_anything(tmp_path: Path, tiny_artifact: Path) -> None:
    cfg = _config(tmp_path, free_port())
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("[metrics]", "[metrics]\nprot = 1"))
    r = subprocess.run([sys.executable, "-m", "barsignal", "run", "--config", str(bad), "--artifact",
                        str(tiny_artifact)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown key 'prot'" in r.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{")
    r = subprocess.run([sys.executable, "-m", "barsignal", "run", "--config", str(cfg), "--artifact",
                        str(broken)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "manifest.json" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "state").exists()
