"""SIGHUP model swaps as an operator does them: ``barsignal run`` and ``barsignal feed serve`` as real
subprocesses, the feed at live cadence (about 1 bar/s), a real SIGHUP, then ``barsignal parity``.

- Issue 13 #3: at 1 bar/s every reload was refused (the warm-up on the recent bars was thrown away).
- Issue 12 #2: the swap is in the bar record, and parity replays across it with 0 differences.
- Issue 13 #11c: with ``--artifact`` given, a changed ``[model] artifact`` is not used, and the log
  says so (the flag wins) instead of reporting a reload of the new artifact.
- Issue 13 "also found": a SIGHUP during start-up was SIGHUP's default action (the process died).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests import e2e as h
from tests.conftest import REPO, free_port
from tests.daemon.conftest import write_tiny_artifact

START, END = 3000, 3200  # bars of h.SPOT_NOV served live; the daemon's warm-up is the REST bars before


def _events(log: Path, name: str) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"event":"{name}"' in line:
            out.append(orjson.loads(line))
    return out


def _catches_sighup(pid: int) -> bool:
    """Whether the kernel says ``pid`` has a handler for SIGHUP (its bit in SigCgt, /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def _ws(state: Path) -> list[dict]:
    return [s for s in h.read_jsonl(state / "signals.jsonl") if s["source"] == "ws"]


def _config(tmp: Path, port: int, metrics_port: int, artifact: Path | None) -> Path:
    model = f'\n[model]\nartifact = "{artifact}"\n' if artifact is not None else ""
    return h.write_config(tmp, port, metrics_port=metrics_port, extra=model)


def _run(tmp: Path, cfg: Path, *extra: str, name: str = "daemon") -> subprocess.Popen:
    return h._popen(["run", "--config", str(cfg), *extra], tmp / f"{name}.log", env=h.daemon_env(tmp))


def _sighup_reload(run: subprocess.Popen, state: Path, log: Path, change: Callable[[], object], k: int) -> None:
    """After ``k`` live signals: ``change()`` (the config), SIGHUP, the reload's outcome logged, then
    ``k`` more live signals."""
    h.wait_for(lambda: len(_ws(state)) >= k, 90, "live signals before the reload", [run], [log])
    change()
    run.send_signal(signal.SIGHUP)
    h.wait_for(lambda: _events(log, "reloaded") or _events(log, "reload_refused"), 60, "the reload", [run], [log])
    n = len(_ws(state))
    h.wait_for(lambda: len(_ws(state)) >= n + k, 60, "live signals after the reload", [run], [log])


def _parity(state: Path, cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "barsignal", "parity", "--live-signals", str(state / "signals.jsonl"),
                           "--bars", str(state / "bars"), "--config", str(cfg), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("arts")
    return write_tiny_artifact(d / "a"), write_tiny_artifact(d / "b", bias=0.5)


@pytest.mark.slow
def test_sighup_swap_at_1_bar_per_s_is_recorded_and_parity_replays_across_it(tmp_path: Path, artifacts) -> None:
    art_a, art_b = artifacts
    port, mport = free_port(), free_port()
    state = tmp_path / "state"
    cfg = _config(tmp_path, port, mport, art_a)  # the config names the artifact; no --artifact flag
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, END, speed=1.0, port=port)
    run = _run(tmp_path, cfg)
    log = tmp_path / "daemon.log"
    try:
        # the operator points the config at the new model and reloads (ExecReload=kill -HUP)
        _sighup_reload(run, state, log, lambda: _config(tmp_path, port, mport, art_b), 3)
        assert not _events(log, "reload_refused"), _events(log, "reload_refused")
        metrics = h.scrape(mport)
        code = h.stop(run)
    finally:
        h.kill_all(feed, run)
    assert code == 0
    h.assert_clean_log(log)
    ev = _events(log, "reloaded")[0]
    assert ev["changed"] is True and ev["artifact_from"] == "[model] artifact"
    assert metrics['barsignal_reloads_total{result="ok"}'] == 1.0
    assert metrics['barsignal_reloads_total{result="refused"}'] == 0.0

    got = h.read_jsonl(state / "signals.jsonl")
    ots = [s["open_time"] for s in got]
    assert ots == sorted(set(ots)) and ots[-1] - ots[0] == 60_000 * (len(ots) - 1), "no bar lost in the swap"
    arts = [s["artifact"] for s in got]
    k = arts.index(arts[-1])
    assert arts[0] != arts[-1] and set(arts[:k]) == {arts[0]} and set(arts[k:]) == {arts[-1]}
    swaps = [r["swap"] for f in sorted((state / "bars").glob("*.jsonl")) for r in h.read_jsonl(f) if "swap" in r]
    assert len(swaps) == 1 and swaps[0]["artifact"] == arts[-1] and swaps[0]["first_bar"] == ots[k]
    assert swaps[0]["warm_bars"] > 0 and swaps[0]["rule_state"]["action"] in ("long", "short", "flat")

    res = _parity(state, cfg)  # the config now names B: the record says A started the run
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert f"parity OK: {len(got)} signals compared, 0 differences" in res.stdout
    assert "1 model swap(s) replayed" in res.stdout


@pytest.mark.slow
def test_sighup_with_the_artifact_flag_keeps_it_and_says_so(tmp_path: Path, artifacts) -> None:
    art_a, art_b = artifacts
    port, mport = free_port(), free_port()
    state = tmp_path / "state"
    cfg = _config(tmp_path, port, mport, art_a)
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, END, speed=1.0, port=port)
    run = _run(tmp_path, cfg, "--artifact", str(art_a))
    log = tmp_path / "daemon.log"
    try:
        _sighup_reload(run, state, log, lambda: _config(tmp_path, port, mport, art_b), 2)
        code = h.stop(run)
    finally:
        h.kill_all(feed, run)
    assert code == 0
    flag = _events(log, "reload_artifact_from_flag")
    assert len(flag) == 1 and flag[0]["config_artifact"] == str(art_b) and flag[0]["artifact"] == str(art_a)
    ev = _events(log, "reloaded")[0]
    assert ev["changed"] is False and ev["artifact_from"] == "--artifact" and ev["path"] == str(art_a.resolve())
    assert len({s["artifact"] for s in h.read_jsonl(state / "signals.jsonl")}) == 1  # still A


@pytest.mark.slow
def test_sighup_during_start_up_is_a_reload_not_a_kill(tmp_path: Path, artifacts) -> None:
    art_a, _ = artifacts
    port, mport = free_port(), free_port()
    state = tmp_path / "state"
    cfg = _config(tmp_path, port, mport, None)
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, END, speed=1.0, port=port)
    run = _run(tmp_path, cfg, "--artifact", str(art_a))
    log = tmp_path / "daemon.log"
    sent = 0
    try:
        # From the moment the process catches SIGHUP (the kernel's SigCgt mask in /proc: the first thing
        # `barsignal run` does) until it says it started, a SIGHUP every 10 ms. The first is sent before
        # the log is read, so at least one lands in start-up however short it is.
        end = time.monotonic() + 60
        while not _catches_sighup(run.pid):  # polled tightly: start-up with a tiny artifact is short
            assert run.poll() is None and time.monotonic() < end, f"SIGHUP never caught: {h._tails([log])}"
            time.sleep(0.001)
        before_load = '"event":"scorer loaded"' not in log.read_text(errors="replace")
        while True:
            assert run.poll() is None, f"the daemon died (code {run.returncode}) after {sent} SIGHUPs in start-up"
            assert time.monotonic() < end, "no daemon_started"
            run.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.01)
            if '"event":"daemon_started"' in log.read_text(errors="replace"):
                break
        h.wait_for(lambda: len(_ws(state)) >= 2, 90, "live signals", [run], [log])
        code = h.stop(run)
    finally:
        h.kill_all(feed, run)
    assert sent >= 1 and code == 0
    assert before_load, "the process caught SIGHUP only after the model loaded: start-up had no handler"
    # the SIGHUPs held during start-up became one reload once the handler was in place
    assert _events(log, "reloaded") and not _events(log, "reload_refused")
    assert _events(log, "reload_requested_during_start")  # at least one SIGHUP landed before the handler
    h.assert_clean_log(log)
