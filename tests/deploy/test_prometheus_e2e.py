"""A real Prometheus (Debian's package) scrapes a real daemon that runs against ``barsignal feed serve``.

``barsignal feed serve`` plays real BTCUSDT 1m bars at 1 bar/s into ``barsignal run`` (jsonl +
paper sinks, metrics on a free loopback port, an artifact whose manifest states its AUC and Brier).
Prometheus runs the shipped example config (deploy/prometheus/prometheus.yml) with a 1 s scrape
and evaluation interval and the shipped rules. Then, over its HTTP API:

- the target is up;
- every metric name used in the rules and in the dashboard has samples (the list is parsed from
  those files, so a renamed or removed metric fails here, by name and by where it is used);
- every rule evaluates without error, a recording rule gives a value, and every dashboard query
  (variables filled in) is valid PromQL with a result;
- the daemon is restarted and ``BarsignalRestarted`` fires, with its runbook annotation.

``BARSIGNAL_DASHBOARD_PNG=path`` also renders the dashboard's queries over the run with matplotlib
(deploy/render_dashboard.py; that picture is not Grafana) and ``BARSIGNAL_PROM_RUN_S`` lengthens the
run before the checks (docs/img/dashboard.png was made with 240).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import e2e as h
from tests.conftest import free_port
from tests.daemon.conftest import real_bars
from tests.deploy import prom
from tests.tiny_model import write_tiny_artifact

START = 800  # bars before this index are the daemon's REST warm-up history
SPEED = 1.0  # bars per second: live cadence (1 bar a second)
RUN_S = float(os.environ.get("BARSIGNAL_PROM_RUN_S", "0"))
# The artifact's own figures (what a trained artifact's manifest carries): exported as barsignal_artifact_score.
FIGURES = {"val_auc": 0.55, "val_brier": 0.2485}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_artifact(tmp_path_factory.mktemp("artifact") / "tiny", real_bars(3000, start=20_000),
                               metrics=FIGURES)


def test_real_prometheus_scrapes_the_daemon_and_evaluates_the_rules(tmp_path: Path, artifact: Path) -> None:
    used = prom.used_names()
    n_bars = int(SPEED * (300 + RUN_S))  # the feed outlasts the test
    feed, port = h.start_feed(tmp_path, h.SPOT_NOV, START, START + n_bars, speed=SPEED, intrabar=0)
    mport = free_port()
    cfg = h.write_config(tmp_path, port, sinks=("jsonl", "paper"), metrics_port=mport)
    # A 15-row monitor window: the drift PSI is first measured after 15 signals (15 s at 1 bar/s), not
    # after the default's 240 rows, so that barsignal_feature_psi has samples soon.
    cfg.write_text(cfg.read_text().replace(f"port = {mport}\n", f"port = {mport}\nmonitor_window = 15\n"))
    assert "monitor_window = 15" in cfg.read_text()
    (tmp_path / "prom").mkdir()
    server = prom.Prometheus(tmp_path / "prom", [f"127.0.0.1:{mport}"])
    logs = [tmp_path / "daemon.log", tmp_path / "daemon-2.log", tmp_path / "feed.log", server.log]
    run = run2 = None
    t0 = time.time()
    try:
        server.start()
        run = h.start_daemon(tmp_path, cfg, artifact)

        def target_up() -> bool:
            ts = server.api("targets")["activeTargets"]
            return any(t["labels"]["job"] == "barsignal" and t["health"] == "up" for t in ts)

        h.wait_for(target_up, 60, "the barsignal target up in Prometheus", [run, feed], logs)
        missing: set[str] = set(used)

        def all_names() -> bool:
            nonlocal missing
            missing = set(used) - server.names_with_samples()
            return not missing

        try:
            h.wait_for(all_names, 100, "every metric name of the rules and the dashboard", [run, feed], logs)
        except AssertionError as exc:
            if "timed out" not in str(exc):
                raise
            detail = "; ".join(f"{n} (used by {', '.join(sorted(used[n]))})" for n in sorted(missing))
            raise AssertionError(f"{len(missing)} metric name(s) have no samples in Prometheus: {detail}") from None
        if RUN_S:
            time.sleep(RUN_S)  # a longer run for the rendered picture (BARSIGNAL_PROM_RUN_S)

        # Every rule evaluates without error, on the real series.
        def evaluated() -> bool:
            groups = server.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return bool(rules) and all(not r["lastEvaluation"].startswith("0001") for r in rules)

        h.wait_for(evaluated, 15, "every rule evaluated once", [run, feed], logs)
        got = [r for g in server.api("rules")["groups"] for r in g["rules"]]
        assert sorted(r["name"] for r in got) == sorted(r.get("alert") or r["record"] for r in prom.load_rules())
        bad = [(r["name"], r.get("lastError")) for r in got if r["health"] != "ok"]
        assert not bad, bad

        # A recording rule's expression evaluates to a real latency (once two scrapes saw ticks).
        p99: list = []

        def recorded() -> bool:
            nonlocal p99
            p99 = server.query("barsignal:tick_to_signal_seconds:p99_10m")
            return bool(p99) and math.isfinite(float(p99[0]["value"][1]))

        h.wait_for(recorded, 20, "a tick-to-signal p99 from the recording rule", [run, feed], logs)
        assert len(p99) == 1 and p99[0]["metric"]["job"] == "barsignal", p99
        assert 0 < float(p99[0]["value"][1]) < 1.0, p99
        # An alert's expression, run by hand: the feed is fresh, so no symbol is stale...
        stale = next(a["expr"] for a in prom.alerts() if a["alert"] == "BarsignalFeedStale")
        assert server.query(stale) == []
        # ...and with its bound turned round it names the daemon's symbol.
        assert [s["metric"]["symbol"] for s in server.query(stale.replace("> 180", "< 180"))] == ["BTCUSDT"]
        ref = {s["metric"]["key"]: float(s["value"][1]) for s in server.query("barsignal_artifact_score")}
        assert ref == FIGURES

        # Every dashboard query is valid PromQL over these series and returns something (increase() of a
        # counter still at 0 is a zero series; empty means a selector that matches nothing). The restart
        # annotation is checked after the restart, when it must have a result.
        queries = prom.dashboard_targets()
        empty = [(title, expr) for title, expr in queries
                 if not title.startswith("annotation") and not server.query(prom.concrete(expr))]
        assert not empty, f"dashboard queries with no result: {empty}"

        out = os.environ.get("BARSIGNAL_DASHBOARD_PNG")
        if out:
            subprocess.run([sys.executable, str(prom.DEPLOY / "render_dashboard.py"), "--prometheus", server.url,
                            "--start", str(t0), "--end", str(time.time()), "--out", out], check=True, timeout=120)

        # Restart the daemon: Prometheus sees process_start_time_seconds change and BarsignalRestarted fires.
        assert h.stop(run) == 0, h._tails(logs)
        run2 = h.start_daemon(tmp_path, cfg, artifact, name="daemon-2")

        def restarted() -> bool:
            return any(a["labels"]["alertname"] == "BarsignalRestarted" and a["state"] == "firing"
                       for a in server.api("alerts")["alerts"])

        h.wait_for(restarted, 60, "BarsignalRestarted firing after a restart", [run2, feed], logs)
        alert = next(a for a in server.api("alerts")["alerts"] if a["labels"]["alertname"] == "BarsignalRestarted")
        assert alert["labels"]["instance"] == f"127.0.0.1:{mport}"
        assert alert["annotations"]["runbook"] == "docs/DEPLOY.md#barsignalrestarted"
        firing = {a["labels"]["alertname"] for a in server.api("alerts")["alerts"] if a["state"] == "firing"}
        assert firing == {"BarsignalRestarted"}, f"a healthy run fired {firing}"
        marks = [expr for title, expr in queries if title.startswith("annotation")]
        assert marks and all(server.query(prom.concrete(expr, "2m")) for expr in marks), marks
        assert h.stop(run2) == 0, h._tails(logs)
    finally:
        h.kill_all(run, run2)
        h.stop(feed)
        server.stop()
    for log in logs[:2]:
        h.assert_clean_log(log)
