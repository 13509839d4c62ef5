"""Security: secrets never reach a log line; metrics and health bind to loopback by default; an
artifact with a bad hash, plain http:// to a remote webhook, and a config reached through a
world-writable path are all refused at start with exit 2 and a message naming the thing.

The other reliability tests start every daemon with a recognisable fake token in the environment
and in a systemd-style credentials directory; ``conftest.py`` greps every log line they wrote at
the end of the session (and each test here greps its own)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson

from tests import e2e as h
from tests.conftest import REPO, free_port


def _run(args: list[str], tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "barsignal", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **h.daemon_env(tmp)})
    log = tmp / f"cli{len(h.LOGS)}.log"
    log.write_text(res.stdout + res.stderr)
    h.LOGS.append(log)
    return res


def _listening(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    out = []
    for f, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not Path(f).exists():
            continue
        for line in Path(f).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                out.append(addr if width == 8 else "v6:" + addr)
    return out


def test_secrets_never_logged_and_metrics_bind_loopback_by_default(tmp_path: Path, artifact: Path) -> None:
    mport, hport, fport = free_port(), free_port(), free_port()
    cfg = h.write_config(tmp_path, fport, sinks=("jsonl", "webhook", "redis"), metrics_port=None, extra=f"""
[sinks.webhook]
url = "http://127.0.0.1:{hport}/hook"
timeout_s = 0.2
retries = 0

[sinks.redis]
url = "redis://127.0.0.1:{free_port()}/0"
password_env = "{h.TOKEN_ENV}"
""")
    # metrics on, host left at its default
    cfg.write_text(cfg.read_text().replace("[metrics]\nenabled = false", f"[metrics]\nport = {mport}"))
    run = h.start_daemon(tmp_path, cfg, artifact, name="sec-daemon")
    log = tmp_path / "sec-daemon.log"
    feed = None
    try:
        h.wait_for(lambda: "metrics_listening" in log.read_text() and "feed.connect_failed" in log.read_text(),
                   60, "the daemon listening", [run], [log])
        addrs = _listening(mport)
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            assert b"barsignal_outbox_depth" in r.read()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=5)
            health = 200
        except urllib.error.HTTPError as exc:  # 503 while not ready: still served
            health = exc.code
            assert orjson.loads(exc.read())["status"] == "starting"
        # Now signals flow, and both secret-holding sinks fail: the webhook target refuses connections
        # (the bearer token is in every request), redis (the token as its password) is not there.
        feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, 9000, 12000, speed=40, port=fport, name="sec-feed")
        h.wait_for(lambda: all(f'"sink": "{s}"' in log.read_text() or f'"sink":"{s}"' in log.read_text()
                               for s in ("webhook", "redis")), 60, "both sinks failing", [run], [log])
    finally:
        code = h.stop(run, signal.SIGTERM)
        h.stop(feed)
    assert code == 0
    assert addrs == ["0100007F"], f"metrics/health must listen on 127.0.0.1 only, got {addrs}"
    lines = h.assert_no_secret([log])
    assert health in (200, 503)
    fails = log.read_text().count("sink_delivery_failed")
    print(f"\n[security] metrics+healthz listen on {addrs} (127.0.0.1) by default; {lines} log lines of a "
          "daemon holding the fake token (env + credential, webhook bearer, redis password), incl. "
          f"{fails} failed deliveries: 0 contain it")


def test_artifact_with_a_bad_hash_is_refused_at_start(tmp_path: Path, artifact: Path) -> None:
    bad = tmp_path / "tampered"
    shutil.copytree(artifact, bad)
    onnx = sorted(p for p in bad.iterdir() if p.suffix == ".onnx")[0]
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0x01
    onnx.write_bytes(bytes(data))
    cfg = h.write_config(tmp_path, free_port())
    res = _run(["run", "--config", str(cfg), "--artifact", str(bad)], tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert onnx.name in res.stderr and "sha256" in res.stderr.lower(), res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "state").exists()
    print(f"\n[security] tampered artifact refused: exit 2, {res.stderr.strip().splitlines()[-1][:160]}")


def test_webhook_refuses_plain_http_to_a_remote_host_unless_allowed(tmp_path: Path, artifact: Path) -> None:
    made: list[Path] = []

    def cfg_with(url: str, extra: str = "") -> Path:
        made.append(tmp_path / "x")
        return h.write_config(tmp_path, free_port(), sinks=("webhook",), name=f"wh{len(made)}.toml",
                              extra=f'[sinks.webhook]\nurl = "{url}"\n{extra}')

    res = _run(["run", "--config", str(cfg_with("http://192.0.2.10/hook")), "--artifact", str(artifact)],
               tmp_path)
    assert res.returncode == 2 and "allow_insecure_http" in res.stderr and "Traceback" not in res.stderr
    # Allowed: https anywhere, http to loopback, http with the explicit opt-in. No feed answers, so the
    # daemon sends nothing; it runs (past every check, dialling the feed) and is stopped.
    for cfg in (cfg_with("https://192.0.2.10/hook"), cfg_with("http://127.0.0.1:9/hook"),
                cfg_with("http://192.0.2.10/hook", "allow_insecure_http = true")):
        run = h.start_daemon(tmp_path, cfg, artifact, name=f"wh-{cfg.stem}")
        log = tmp_path / f"wh-{cfg.stem}.log"
        try:
            h.wait_for(lambda log=log: "feed.connect_failed" in log.read_text(), 60, "start", [run], [log])
        finally:
            assert h.stop(run) == 0
    print("\n[security] webhook http://192.0.2.10 refused (exit 2) without allow_insecure_http; "
          "https, loopback http and the explicit opt-in start")


def test_config_reached_through_a_world_writable_path_is_refused(tmp_path: Path, artifact: Path) -> None:
    good = h.write_config(tmp_path, free_port())
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # world-writable, no sticky bit: anyone could swap the file
    cases = {"file in a world-writable directory": open_dir / "config.toml",
             "world-writable file": tmp_path / "ww.toml"}
    shutil.copy(good, cases["file in a world-writable directory"])
    shutil.copy(good, cases["world-writable file"])
    os.chmod(cases["world-writable file"], 0o666)
    link = open_dir / "link.toml"  # a symlink in a world-writable directory to a safe file
    link.symlink_to(good)
    cases["symlink in a world-writable directory"] = link
    for what, path in cases.items():
        res = _run(["run", "--config", str(path), "--artifact", str(artifact)], tmp_path)
        assert res.returncode == 2, f"{what}: exit {res.returncode}: {res.stderr[-1500:]}"
        assert "world-writable" in res.stderr and "Traceback" not in res.stderr, res.stderr[-1500:]
    print(f"\n[security] config refused (exit 2, 'world-writable'): {', '.join(cases)}")
