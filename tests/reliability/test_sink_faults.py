"""Sink faults: the webhook target answers 500s, hangs, refuses connections; Redis is stopped and
restarted. No signal is lost, and scoring latency does not notice (p99 with and without faults).

The daemon runs as a subprocess against ``barsignal feed serve`` (real bars, 40 bars/s) with the
jsonl, webhook and redis sinks. The webhook target is a real loopback HTTP server in this test;
Redis is a real ``redis-server`` with an append-only file. Phases are switched by the number of
signals emitted (polling the jsonl file), never by sleeping.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import orjson
import redis

from tests import e2e as h
from tests.conftest import free_port

START, SPEED = 6000, 40.0


class Hook:
    """A webhook receiver: mode ``ok`` (200), ``500``, ``hang`` (no answer for 2 s, then 503) or
    ``refuse`` (the port is closed)."""

    def __init__(self, port: int) -> None:
        self.port, self.mode = port, "ok"
        self.delivered: list[str] = []  # Idempotency-Key of each request answered 200
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
