"""``barsignal run`` as a new user runs it: subprocesses, real bars, ``barsignal feed serve``.

The acceptance scenario (the feed killed mid-run and restarted with bars missing; one signal per
closed bar) is tests/paper/test_parity_e2e.py, which also proves parity on the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests import e2e as h
from tests.conftest import REPO, free_port


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "barsignal", "--log-format", "json", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


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


def test_unreachable_feed_logs_a_clear_line_and_retries_without_a_traceback(tmp_path: Path,
                                                                             tiny_artifact: Path) -> None:
    port = free_port()  # nobody listens here: like a machine with no network
    run = _cli("run", "--config", str(h.write_config(tmp_path, port)), "--artifact", str(tiny_artifact))
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
    cfg = h.write_config(tmp_path, free_port())
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
    for name, move, says in (("garch", {"horizon": 15, "threshold_bp": 10.0, "kind": "garch", "params": {}},
                              "unknown kind 'garch'"),
                             ("nob", {"horizon": 15, "threshold_bp": 10.0, "kind": "rvol_logistic", "params": {"a": 1}},
                              "needs params a and b")):
        art = tmp_path / f"move-{name}"
        shutil.copytree(tiny_artifact, art)
        m = json.loads((art / "manifest.json").read_text())
        m["move"] = move
        (art / "manifest.json").write_text(json.dumps(m))
        r = subprocess.run([sys.executable, "-m", "barsignal", "run", "--config", str(cfg), "--artifact", str(art)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "'move'" in r.stderr and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "state").exists()
