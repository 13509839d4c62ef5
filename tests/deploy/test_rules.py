"""The Prometheus rules: promtool accepts them and their unit tests pass; every alert has a summary
and a runbook section in docs/DEPLOY.md; every alert is tested firing and silent, and those tests
fail when the alert is broken either way (mutations)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import prom


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([prom.tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    r = _promtool("check", "rules", str(prom.RULES))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = _promtool("test", "rules", str(prom.RULE_TESTS))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _sections() -> dict[str, str]:
    """{anchor: section text} of docs/DEPLOY.md."""
    out: dict[str, str] = {}
    cur = None
    for line in prom.DEPLOY_DOC.read_text().splitlines():
        m = re.match(r"#{2,4} (.+)", line)
        if m:
            cur = _slug(m.group(1))
            out[cur] = ""
        elif cur is not None:
            out[cur] += line + "\n"
    return out


def test_every_alert_has_a_summary_and_a_runbook_section_that_says_what_to_do() -> None:
    sections = _sections()
    names = [a["alert"] for a in prom.alerts()]
    assert len(names) == len(set(names)) and len(names) >= 13, names
    for a in prom.alerts():
        ann = a.get("annotations", {})
        assert ann.get("summary"), f"{a['alert']}: no summary annotation"
        doc, _, anchor = ann.get("runbook", "").partition("#")
        assert doc == "docs/DEPLOY.md" and anchor, f"{a['alert']}: runbook must be docs/DEPLOY.md#<section>"
        assert anchor in sections, f"{a['alert']}: docs/DEPLOY.md has no section #{anchor}"
        assert len(sections[anchor].split()) >= 20, f"{a['alert']}: section #{anchor} says too little"
        assert a["labels"]["severity"] in ("page", "ticket"), a["alert"]


def test_the_issue_s_alerts_are_all_there() -> None:
    """One alert per item of the issue, by what it reads."""
    by_name = {a["alert"]: a["expr"] for a in prom.alerts()}
    wanted = {
        "BarsignalFeedStale": "barsignal_last_bar_age_seconds",
        "BarsignalNoSignals": "barsignal_symbol_signals_total",
        "BarsignalOutboxGrowing": "barsignal_outbox_depth",
        "BarsignalSinkFailing": "barsignal_sink_failures_total",
        "BarsignalDeadLetters": "barsignal_sink_dead_letters_total",
        "BarsignalRestBanned": "barsignal_rest_ban_remaining_seconds",
        "BarsignalRestRateLimited": "barsignal_rest_rate_limited_total",
        "BarsignalFeatureDrift": "barsignal_feature_drift_ratio",
        "BarsignalLiveBrierWorse": "barsignal_artifact_score",
        "BarsignalLiveAucWorse": "barsignal_artifact_score",
        "BarsignalScoringSlow": "barsignal:scoring_seconds:p99_10m",
        "BarsignalReloadRefused": 'barsignal_reloads_total{result="refused"}',
        "BarsignalKeepWarmErrors": "barsignal_keep_warm_errors_total",
        "BarsignalRestarted": "process_start_time_seconds",
    }
    for name, needle in wanted.items():
        assert name in by_name and needle in by_name[name], name


def _cases() -> dict[str, dict[str, int]]:
    """{alertname: {"firing": n, "silent": n}} over the promtool test file."""
    out: dict[str, dict[str, int]] = {}
    for t in yaml.safe_load(prom.RULE_TESTS.read_text())["tests"]:
        for c in t.get("alert_rule_test", []):
            k = "firing" if c.get("exp_alerts") else "silent"
            out.setdefault(c["alertname"], {"firing": 0, "silent": 0})[k] += 1
    return out


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = _cases()
    names = {a["alert"] for a in prom.alerts()}
    assert set(cases) == names, f"untested: {names - set(cases)}; unknown: {set(cases) - names}"
    for n, c in cases.items():
        assert c["firing"] >= 1 and c["silent"] >= 1, f"{n}: {c}"


def _mutated(tmp: Path, alert: str, expr: str) -> subprocess.CompletedProcess[str]:
    doc = yaml.safe_load(prom.RULES.read_text())
    hit = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert]
    assert len(hit) == 1
    hit[0]["expr"] = expr
    (tmp / "barsignal.rules.yml").write_text(yaml.safe_dump(doc))
    (tmp / "barsignal.rules.test.yml").write_text(prom.RULE_TESTS.read_text())
    return _promtool("test", "rules", "barsignal.rules.test.yml", cwd=tmp)


@pytest.mark.parametrize("alert", [a["alert"] for a in prom.alerts()])
def test_the_unit_tests_catch_an_alert_that_never_fires_or_always_fires(tmp_path: Path, alert: str) -> None:
    for expr in ("vector(1) == 0", "vector(1)"):
        r = _mutated(tmp_path, alert, expr)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and f"alertname: {alert}," in out, f"{alert} as {expr!r}: {out[-2000:]}"


def test_the_example_prometheus_config_is_valid_with_the_rules_in_place(tmp_path: Path) -> None:
    """deploy/prometheus/prometheus.yml as an operator installs it: the rules beside it."""
    (tmp_path / "barsignal.rules.yml").write_text(prom.RULES.read_text())
    cfg = prom.PROM_EXAMPLE.read_text()
    assert "/etc/prometheus/barsignal.rules.yml" in cfg and "job_name: barsignal" in cfg
    (tmp_path / "prometheus.yml").write_text(cfg.replace("/etc/prometheus/barsignal.rules.yml",
                                                         str(tmp_path / "barsignal.rules.yml")))
    r = _promtool("check", "config", str(tmp_path / "prometheus.yml"))
    n = len(prom.load_rules())
    assert r.returncode == 0 and f"SUCCESS: {n} rules found" in r.stdout + r.stderr, r.stdout + r.stderr
