"""End-to-end helpers (the run, parity and reliability tests): ``barsignal feed serve`` and
``barsignal run`` as real subprocesses on real bars, their logs in files (greped for secrets),
metrics scraped over HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
import pytest

from tests.conftest import REPO, SPOT_1M, free_port

# Spot BTC/USDT 1m 2021-11-11..12-11: no gaps (PROVENANCE.md), 43,200 bars.
SPOT_NOV = next(p for p in SPOT_1M if "2021-11-11" in p.name)
# A recognisable fake secret: every daemon the suite starts has it in its environment (and in a
# systemd-style credentials directory), and every log line the daemon writes is greped for it.
FAKE_TOKEN = "bsFAKE-7c1e0d9a44f2-secret-token"
TOKEN_ENV = "BARSIGNAL_WEBHOOK_TOKEN"
LOGS: list[Path] = []  # every log file the suite's daemons and feeds wrote


def rows(path: Path = SPOT_NOV) -> list[list[float]]:
    return orjson.loads(path.read_bytes())


def write_slice(src_rows: list[list[float]], start: int, stop: int, dest: Path) -> Path:
    """Rows ``[start, stop)`` as a freqtrade JSON file (a loader format) under the test's tmp dir."""
    dest.write_bytes(orjson.dumps(src_rows[start:stop]))
    return dest


def _popen(args: list[str], log: Path, env: dict[str, str] | None = None,
           stdout: int | None = None) -> subprocess.Popen:
    LOGS.append(log)
    fh = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "barsignal", "--log-format", "json", *args], cwd=REPO,
                                stdout=stdout if stdout is not None else fh, stderr=fh,
                                env={**os.environ, **(env or {})})
    finally:
        fh.close()


def start_feed(tmp: Path, data: Path, start: int, end: int, *, speed: float, faults: str = "",
               intrabar: int = 1, ping_s: float = 1.0, port: int = 0,
               name: str = "feed") -> tuple[subprocess.Popen, int]:
    """``barsignal feed serve`` on ``data`` bars ``[start, end)``; returns the process and its port."""
    p = _popen(["feed", "serve", "--bars", f"BTCUSDT={data}", "--port", str(port), "--speed", str(speed),
                "--start-index", str(start), "--end-index", str(end), "--intrabar", str(intrabar),
                "--ping-interval", str(ping_s), "--faults", faults], tmp / f"{name}.log", stdout=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        p.wait(10)
        raise AssertionError(f"feed serve did not start: {(tmp / f'{name}.log').read_text()[-3000:]}")
    return p, int(orjson.loads(line)["port"])


def daemon_env(tmp: Path) -> dict[str, str]:
    """The fake token in the environment and as a systemd credential (LoadCredential=)."""
    cred = tmp / "credentials"
    cred.mkdir(exist_ok=True)
    (cred / TOKEN_ENV).write_text(FAKE_TOKEN)
    return {TOKEN_ENV: FAKE_TOKEN, "CREDENTIALS_DIRECTORY": str(cred)}


def start_daemon(tmp: Path, cfg: Path, artifact: Path, name: str = "daemon") -> subprocess.Popen:
    return _popen(["run", "--config", str(cfg), "--artifact", str(artifact)], tmp / f"{name}.log",
                  env=daemon_env(tmp))


def write_config(tmp: Path, port: int, *, sinks: Iterable[str] = ("jsonl",), metrics_port: int | None = None,
                 feed: str = "", extra: str = "", name: str = "config.toml") -> Path:
    cfg = tmp / name
    metrics = (f"enabled = true\nhost = \"127.0.0.1\"\nport = {metrics_port}" if metrics_port
               else "enabled = false")
    cfg.write_text(f"""
[feed]
ws_url = "ws://127.0.0.1:{port}"
rest_url = "http://127.0.0.1:{port}"
reconnect_min_s = 0.05
reconnect_max_s = 0.5
rest_timeout_s = 2.0
{feed}

[sinks]
enabled = [{", ".join(f'"{s}"' for s in sinks)}]

[sinks.jsonl]
path = "signals.jsonl"
fsync = "never"

[paper]
ledger = "paper.sqlite"
allow_short = true

[metrics]
{metrics}

[logging]
level = "info"

[state]
dir = "{tmp / 'state'}"
{extra}
""")
    return cfg


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.endswith(b"}")]


def bar_record(state: Path) -> list[dict]:
    """The daemon's bar record, every run, in file order (run id, then day); run_start lines left out."""
    out: list[dict] = []
    for f in sorted((state / "bars").glob("*.jsonl")):
        out += [r for r in read_jsonl(f) if "run_start" not in r]
    return out


def last_bar(state: Path) -> int | None:
    files = sorted((state / "bars").glob("*.jsonl"), key=lambda f: f.stat().st_mtime)
    recs = [r for r in read_jsonl(files[-1]) if "run_start" not in r] if files else []
    return int(recs[-1]["open_time"]) if recs else None


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {name{labels}: value} (samples only)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def hist_quantile(m: dict[str, float], name: str, q: float) -> float:
    """Quantile upper bound from a Prometheus histogram's cumulative buckets (seconds)."""
    buckets = sorted(((float(k.split('le="')[1].split('"')[0]), v) for k, v in m.items()
                      if k.startswith(f"{name}_bucket")), key=lambda x: x[0])
    total = buckets[-1][1] if buckets else 0
    for le, c in buckets:
        if total and c >= q * total:
            return le
    return float("nan")


def wait_for(cond: Callable[[], bool], timeout: float, what: str, procs: Iterable[subprocess.Popen] = (),
             logs: Iterable[Path] = ()) -> None:
    """Poll ``cond`` (it reads files the processes write); fail with the log tails on a timeout."""
    end = time.monotonic() + timeout
    while not cond():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: a process exited early ({p.returncode}): {_tails(logs)}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {_tails(logs)}")
        time.sleep(0.05)  # polling files, not waiting out a fixed delay


def _tails(logs: Iterable[Path]) -> str:
    return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-2500:]}" for p in logs if p.exists())


def stop(p: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
    """Signal ``p`` and wait; SIGKILL if it does not exit in ``timeout`` (and say so)."""
    if p is None:
        return None
    if p.poll() is None:
        p.send_signal(sig)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"pid {p.pid} did not exit within {timeout} s of signal {sig}") from None
    if p.stdout is not None:
        p.stdout.close()
    return p.returncode


def kill_all(*procs: subprocess.Popen | None) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()


def assert_no_secret(logs: Iterable[Path]) -> int:
    """No log line contains the fake token; returns the number of lines checked."""
    n = 0
    for p in logs:
        if not p.exists():
            continue
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            n += 1
            assert FAKE_TOKEN not in line, f"{p}:{i}: the secret leaked into a log line"
    return n


def assert_clean_log(log: Path) -> None:
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


class RedisServer:
    """A loopback ``redis-server`` (append-only, so its stream survives a restart) that a test starts,
    stops and restarts on the same port."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(exe).exists():
            pytest.fail("redis-server is not installed (apt-get install redis-server): the sink-fault "
                        "test stops and restarts a real one")
        self.exe, self.dir, self.port = exe, workdir, free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        end = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    pytest.fail(f"redis-server on port {self.port} did not start")
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def ledger_rows(db_path: Path) -> dict[str, list[tuple]]:
    """The paper ledger's fills, equity rows and positions, to compare two runs' ledgers."""
    db = sqlite3.connect(db_path)
    try:
        return {"fills": db.execute("SELECT signal_id, open_time, side, qty, price, fee, realized, trip_pnl, "
                                    "position FROM fills ORDER BY seq").fetchall(),
                "equity": db.execute("SELECT signal_id, open_time, bar_open, bar_close, p_up, action, qty, "
                                     "cash, equity FROM equity ORDER BY seq").fetchall(),
                "positions": db.execute("SELECT * FROM positions").fetchall()}
    finally:
        db.close()
