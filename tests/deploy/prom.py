"""What the deploy tests share: the rule and dashboard files, the metric names their queries use,
and a real ``prometheus`` server (Debian's package) on loopback with a temp TSDB."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, free_port

DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "barsignal.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "barsignal.rules.test.yml"
PROM_EXAMPLE = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "barsignal.json"
DEPLOY_DOC = REPO / "docs" / "DEPLOY.md"
INSTALL_HINT = "install it with `make prometheus` (apt-get install prometheus: promtool and prometheus)"

# A metric name as queried: the daemon's own (barsignal_*), prometheus_client's process collector
# (process_*), and the scrape's `up`. Recording rules (barsignal:...) and label names do not match.
_NAME = re.compile(r"(?<![A-Za-z0-9_:])((?:barsignal|process)_[A-Za-z0-9_]+|up)(?![A-Za-z0-9_:(\"'=])")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (string literals, e.g. label values, removed first)."""
    return set(_NAME.findall(re.sub(r'"[^"]*"', '""', expr)))


def load_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "alert" in r]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of the dashboard: panels, template variables, annotations."""
    d = dashboard()
    out = [(p["title"], t["expr"]) for p in d["panels"] for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            out.append((f"variable {v['name']}", v["query"]["query"] if isinstance(v["query"], dict) else v["query"]))
    out += [(f"annotation {a['name']}", a["expr"]) for a in d.get("annotations", {}).get("list", []) if "expr" in a]
    return out


def used_names() -> dict[str, set[str]]:
    """{metric name: where it is used} over the rules and the dashboard."""
    where: dict[str, set[str]] = {}
    for r in load_rules():
        for n in metric_names(r["expr"]):
            where.setdefault(n, set()).add(f"rule {r.get('alert') or r.get('record')}")
    for title, expr in dashboard_targets():
        for n in metric_names(expr):
            where.setdefault(n, set()).add(f"panel {title!r}")
    return where


def concrete(expr: str, rate_interval: str = "10s") -> str:
    """A dashboard query as PromQL, Grafana's variables filled in as Grafana would send it
    (``label_values(m, l)``, a variable's query, is what Grafana asks as ``group by (l) (m)``)."""
    expr = re.sub(r"^label_values\((.+), *(\w+)\)$", r"group by (\2) (\1)", expr.strip())
    return expr.replace("$instance", ".*").replace("$symbol", ".*").replace("$__rate_interval", rate_interval)


def tool(name: str) -> str:
    exe = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(exe).exists():
        pytest.fail(f"{name} is not installed; {INSTALL_HINT}")
    return exe


class Prometheus:
    """``prometheus`` on a free loopback port, its TSDB under ``workdir``, scraping ``targets`` as
    job="barsignal" every ``interval`` and evaluating deploy/'s rules. The config is the shipped
    example (deploy/prometheus/prometheus.yml) with the target, rule path and intervals replaced."""

    def __init__(self, workdir: Path, targets: list[str], interval: str = "1s") -> None:
        self.exe = tool("prometheus")
        self.dir, self.port = workdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = yaml.safe_load(PROM_EXAMPLE.read_text())
        cfg["global"].update(scrape_interval=interval, evaluation_interval=interval, scrape_timeout=interval)
        cfg["rule_files"] = [str(RULES)]
        job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "barsignal")
        job["static_configs"] = [{"targets": targets}]
        job.pop("scrape_interval", None)
        cfg.pop("alerting", None)  # no Alertmanager here; /api/v1/alerts shows what would be sent
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [self.exe, f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=fh, stderr=fh)
        end = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"prometheus did not become ready: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # a bad query: say which, and why
            raise AssertionError(f"prometheus {path} {params}: {exc.code} {exc.read().decode()[:500]}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def names_with_samples(self) -> set[str]:
        return {s["metric"]["__name__"] for s in
                self.query('group by (__name__) ({__name__=~"barsignal_.+|process_.+|up", job="barsignal"})')}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
