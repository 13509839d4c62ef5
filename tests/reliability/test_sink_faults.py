"""Sink faults: the webhook target answers 500s, hangs, refuses connections; Redis is stopped and
restarted. No signal is lost, and scoring latency does not notice (p99 with and without faults).

The daemon runs as a subprocess against ``barsignal feed serve`` (real bars, 40 bars/s) with the
jsonl, webhook and redis sinks. The webhook target is a real loopback HTTP server in this test;
Redis is a real ``redis-server`` with an append-only file. Phases are switched by the number of
signals emitted (polling the jsonl file), never by sleeping.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import orjson
import redis

from tests import e2e as h
from tests.conftest import REPO, free_port

START, SPEED = 6000, 40.0


class Hook:
    """A webhook receiver: mode ``ok`` (200), ``500``, ``hang`` (no answer for 2 s, then 503), ``404``
    (each refused key counted in ``refused``) or ``refuse`` (the port is closed)."""

    def __init__(self, port: int) -> None:
        self.port, self.mode = port, "ok"
        self.delivered: list[str] = []  # Idempotency-Key of each request answered 200
        self.refused: list[str] = []  # ... and of each answered 404
        self.requests = 0
        self.auth: set[str] = set()
        self.release = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.requests += 1
                hook.auth.add(self.headers.get("Authorization", ""))
                key = self.headers.get("Idempotency-Key", "")
                assert orjson.loads(body)["id"] == key
                if hook.mode == "500":
                    self.send_response(500)
                elif hook.mode == "hang":
                    hook.release.wait(2.0)
                    self.send_response(503)
                elif hook.mode == "404":
                    hook.refused.append(key)
                    self.send_response(404)
                else:
                    hook.delivered.append(key)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _p99(xs: list[float]) -> float:
    return float(np.percentile(xs, 99)) if xs else float("nan")


def test_failing_sinks_lose_nothing_and_do_not_slow_scoring(tmp_path: Path, artifact: Path, redis_server) -> None:
    port, hport = free_port(), free_port()
    hook = Hook(hport)
    hook.start()
    cfg = h.write_config(tmp_path, port, sinks=("jsonl", "webhook", "redis"), extra=f"""
[sinks.webhook]
url = "http://127.0.0.1:{hport}/hook"
timeout_s = 0.3
retries = 1

[sinks.redis]
url = "{redis_server.url}"
stream = "reliability:signals"
""")
    state = tmp_path / "state"
    sig_path = state / "signals.jsonl"
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, START + 20_000, speed=SPEED, port=port)
    run = h.start_daemon(tmp_path, cfg, artifact)
    logs = [tmp_path / "daemon.log"]
    marks: dict[str, int] = {}  # phase -> open time of the last signal before it began

    def after(n: int, phase: str) -> None:
        sigs = h.read_jsonl(sig_path)
        want = len(sigs) + n
        h.wait_for(lambda: len(h.read_jsonl(sig_path)) >= want, 60, phase, [run, feed], logs)
        marks[phase] = h.read_jsonl(sig_path)[-1]["open_time"]

    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        after(150, "faults")  # warm-up + 150 live signals with every sink healthy
        hook.mode = "500"
        redis_server.stop()
        after(60, "hang")
        hook.mode = "hang"
        after(60, "refuse")
        hook.stop()
        hook.release.set()
        after(60, "recovered")
        hook.mode = "ok"
        hook.start()
        redis_server.start()
        after(150, "end")
        sigs = h.read_jsonl(sig_path)
        ids = {s["id"] for s in sigs}

        def all_delivered() -> bool:
            got = {e[1][b"id"].decode() for e in r.xrange("reliability:signals")}
            return ids <= set(hook.delivered) and ids <= got

        h.wait_for(all_delivered, 90, "every signal delivered to the webhook and redis after the faults",
                   [run], logs)
        code = h.stop(run)
    finally:
        h.kill_all(run)
        h.stop(feed)
        hook.stop()
        r.close()
    assert code == 0, h._tails(logs)
    h.assert_clean_log(logs[0])
    assert hook.auth == {f"Bearer {h.FAKE_TOKEN}"}, "the webhook got the token from the credential/env"
    stream = [orjson.loads(e[1][b"signal"]) for e in redis.Redis(host="127.0.0.1", port=redis_server.port)
              .xrange("reliability:signals")]
    all_sigs = h.read_jsonl(sig_path)
    assert {s["id"] for s in all_sigs} <= {s["id"] for s in stream} and {s["id"] for s in all_sigs} <= set(
        hook.delivered), "a signal was lost"
    ots = [s["open_time"] for s in all_sigs]
    assert len(ots) == len(set(ots)) and ots == sorted(ots)

    ws = [s for s in all_sigs if s["source"] == "ws"]
    clean = [s for s in ws if s["open_time"] <= marks["faults"]]
    faulty = [s for s in ws if marks["faults"] < s["open_time"] <= marks["recovered"]]
    after_ = [s for s in ws if marks["recovered"] < s["open_time"]]
    p = {name: (_p99([s["latency_us"]["score"] for s in part]),
                _p99([sum(s["latency_us"].values()) for s in part]), len(part))
         for name, part in (("no faults", clean), ("sink faults", faulty), ("recovery", after_))}
    wh_dups = len(hook.delivered) - len(set(hook.delivered))
    print(f"\n[sink faults] {len(all_sigs)} signals, 0 lost: webhook 500 / hang / refused and redis down "
          f"for {len(faulty)} bars; webhook requests {hook.requests} ({wh_dups} duplicate deliveries, "
          f"deduplicated by Idempotency-Key), redis entries {len(stream)}; p99 score / tick-to-signal (us): "
          + "; ".join(f"{k} {a:.0f} / {b:.0f} (n={n})" for k, (a, b, n) in p.items()))
    assert len(faulty) >= 100 and len(clean) >= 100


def _healthz(port: int, timeout: float = 2.0) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_stdout_reader_that_stops_reading_never_stalls_the_daemon(tmp_path: Path, artifact: Path) -> None:
    """stdout is a pipe nobody reads (64 KiB fill up after ~200 signals): signals go on to the other
    sink, the bar record grows, /healthz answers, SIGTERM exits 0 within the drain bound. The lines
    stuck behind the pipe stay pending in the outbox, none is torn."""
    port, mport = free_port(), free_port()
    cfg = h.write_config(tmp_path, port, sinks=("stdout", "jsonl"), metrics_port=mport)
    state = tmp_path / "state"
    sig_path = state / "signals.jsonl"
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, START + 20_000, speed=100.0, port=port)
    log = tmp_path / "daemon.log"
    run = h._popen(["run", "--config", str(cfg), "--artifact", str(artifact)], log, env=h.daemon_env(tmp_path),
                   stdout=subprocess.PIPE)  # never read until the daemon has exited
    try:
        h.wait_for(lambda: len(h.read_jsonl(sig_path)) >= 600, 120, "signals past a full stdout pipe",
                   [run, feed], [log])
        bars = len(h.bar_record(state))
        h.wait_for(lambda: len(h.bar_record(state)) >= bars + 50, 30, "the bar record keeps growing",
                   [run, feed], [log])
        t0 = time.monotonic()
        assert _healthz(mport) == 200
        took_health = time.monotonic() - t0
        m = h.scrape(mport)
        delivered = m.get('barsignal_sink_delivered_total{sink="stdout"}', 0)
        assert delivered < len(h.read_jsonl(sig_path)) - 100, "stdout was not stuck: the test proves nothing"
        t0 = time.monotonic()
        code = h.stop(run, timeout=30)
        took_stop = time.monotonic() - t0
        assert run.stdout is None or run.stdout.closed
    finally:
        h.kill_all(run)
        h.stop(feed)
    assert code == 0, log.read_text()[-3000:]
    h.assert_clean_log(log)
    db = sqlite3.connect(state / "outbox.sqlite")
    stuck = db.execute("SELECT COUNT(*) FROM pending WHERE sink = 'stdout'").fetchone()[0]
    db.close()
    assert stuck > 0, "the undelivered stdout lines must stay pending for the next start"
    print(f"\n[sink faults] stdout pipe never read: {len(h.read_jsonl(sig_path))} signals to jsonl, stdout stuck "
          f"after {delivered:.0f}; /healthz 200 in {took_health * 1e3:.0f} ms; SIGTERM exit 0 in {took_stop:.1f} s; "
          f"{stuck} stdout lines left pending in the outbox")


def test_webhook_404s_become_dead_letters_counted_and_redriven(tmp_path: Path, artifact: Path) -> None:
    """A receiver answering 404 for a while: the refused signals are dead letters in the outbox (status,
    reason), counted in barsignal_sink_dead_letters_total and the barsignal_outbox_dead_letters gauge,
    never in barsignal_sink_delivered_total; `barsignal outbox redrive` (refused while the daemon runs)
    makes them pending, and the next start delivers them: every signal reaches the receiver."""
    port, hport, mport = free_port(), free_port(), free_port()
    hook = Hook(hport)
    hook.start()
    cfg = h.write_config(tmp_path, port, sinks=("jsonl", "webhook"), metrics_port=mport, extra=f"""
[sinks.webhook]
url = "http://127.0.0.1:{hport}/hook"
timeout_s = 1.0
retries = 1
""")
    state = tmp_path / "state"
    sig_path = state / "signals.jsonl"
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, START + 20_000, speed=SPEED, port=port)
    run = h.start_daemon(tmp_path, cfg, artifact)
    log = tmp_path / "daemon.log"
    try:
        h.wait_for(lambda: len(hook.delivered) >= 30, 90, "deliveries before the 404s", [run, feed], [log])
        hook.mode = "404"
        h.wait_for(lambda: len(hook.refused) >= 40, 60, "404 answers", [run, feed], [log])
        hook.mode = "ok"
        n = len(hook.delivered)
        h.wait_for(lambda: len(hook.delivered) >= n + 30, 60, "deliveries after the 404s", [run, feed], [log])
        refused = list(dict.fromkeys(hook.refused))
        h.wait_for(lambda: h.scrape(mport).get('barsignal_outbox_dead_letters{sink="webhook"}') == len(refused),
                   10, "the dead-letter gauge", [run], [log])
        m = h.scrape(mport)
        busy = subprocess.run([sys.executable, "-m", "barsignal", "outbox", "redrive", "--state-dir", str(state)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        code = h.stop(run)
    finally:
        h.kill_all(run)
    assert code == 0, log.read_text()[-3000:]
    assert m['barsignal_sink_dead_letters_total{sink="webhook"}'] == len(refused)
    assert m['barsignal_outbox_dead_letters{sink="webhook"}'] == len(refused)
    assert m['barsignal_sink_delivered_total{sink="webhook"}'] <= len(set(hook.delivered))
    assert not set(refused) & set(hook.delivered), "a refused signal was counted delivered"
    assert busy.returncode == 2 and f"pid {run.pid}" in busy.stderr, busy.stderr[-2000:]

    dead = subprocess.run([sys.executable, "-m", "barsignal", "outbox", "dead", "--state-dir", str(state)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    rows = [orjson.loads(x) for x in dead.stdout.splitlines()]
    assert [r["id"] for r in rows] == refused and {r["status"] for r in rows} == {404}
    assert all("404" in r["reason"] and r["sink"] == "webhook" for r in rows)
    red = subprocess.run([sys.executable, "-m", "barsignal", "outbox", "redrive", "--state-dir", str(state),
                          "--sink", "webhook"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert red.returncode == 0 and f"redrive: {len(refused)} dead letters pending again" in red.stdout, red.stderr

    run = h.start_daemon(tmp_path, cfg, artifact, name="after")
    try:  # the restart delivers the redriven signals
        h.wait_for(lambda: set(refused) <= set(hook.delivered), 90, "the redriven signals delivered", [run, feed],
                   [tmp_path / "after.log"])
        assert h.stop(run) == 0
    finally:
        h.kill_all(run)
        h.stop(feed)
        hook.stop()
    ids = {s["id"] for s in h.read_jsonl(sig_path)}
    assert ids <= set(hook.delivered), "a signal never reached the receiver"
    db = sqlite3.connect(state / "outbox.sqlite")
    assert db.execute("SELECT COUNT(*) FROM dead").fetchone()[0] == 0
    db.close()
    dl, dv = m['barsignal_sink_dead_letters_total{sink="webhook"}'], m['barsignal_sink_delivered_total{sink="webhook"}']
    print(f"\n[sink faults] webhook 404 for {len(refused)} signals: {len(refused)} dead letters (metrics: dead "
          f"letters {dl:.0f}, delivered {dv:.0f}), redriven and delivered after restart; 0 lost of {len(ids)}")
