"""The Grafana dashboard: valid, provisionable JSON (a ``${datasource}`` variable, no hard-coded
UIDs), written by deploy/grafana/make_dashboard.py, and covering what the issue lists. That each
query names only metrics the daemon exports, with samples, is checked against a real daemon and a
real Prometheus in test_prometheus_e2e.py."""

from __future__ import annotations

import importlib.util
from typing import Any

from tests.deploy import prom


def _walk(node: Any, path: str = "$"):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_the_committed_json_is_what_make_dashboard_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_dashboard", prom.DEPLOY / "grafana" / "make_dashboard.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert prom.DASHBOARD.read_text() == mod.render(), "run: python deploy/grafana/make_dashboard.py"


def test_dashboard_is_provisionable_with_a_datasource_variable_and_no_hard_coded_uids() -> None:
    d = prom.dashboard()
    assert d["title"] and d["schemaVersion"] >= 36 and d.get("id") is None
    var = {v["name"]: v for v in d["templating"]["list"]}
    assert var["datasource"]["type"] == "datasource" and var["datasource"]["query"] == "prometheus"
    uids = [(p, v) for p, k, v in _walk(d) if k == "uid"]
    assert uids and all(v in (None, "${datasource}") for _, v in uids), [u for u in uids if u[1] != "${datasource}"]
    for p, k, v in _walk(d):
        if k == "datasource" and isinstance(v, dict):
            assert v == {"type": "prometheus", "uid": "${datasource}"}, p


def test_panels_are_well_formed_and_laid_out_without_overlap() -> None:
    d = prom.dashboard()
    cells: set[tuple[int, int]] = set()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] >= 1, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (mine & cells), f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat", "heatmap", "table") and p["title"] and p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert prom.metric_names(t["expr"]), f"{p['title']}: {t['expr']!r} reads no metric"


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    """Feed health and bar age per symbol, tick-to-signal p50/p99, scoring by backend, signals by action,
    sink delivery and failures, outbox depth, live calibration and Brier, drift, paper equity."""
    exprs = " ".join(e for _, e in prom.dashboard_targets())
    for needle in ("barsignal_feed_connected", "barsignal_last_bar_age_seconds",
                   "histogram_quantile(0.5, sum by (le) (rate(barsignal_tick_to_signal_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(barsignal_tick_to_signal_seconds_bucket",
                   "sum by (backend, le) (rate(barsignal_scoring_seconds_bucket",
                   "sum by (action) (rate(barsignal_signals_total",
                   "sum by (sink) (rate(barsignal_sink_delivered_total",
                   "sum by (sink) (rate(barsignal_sink_failures_total", "barsignal_outbox_depth",
                   'score="ece"', 'score="brier"', "barsignal_feature_psi_max", "barsignal_paper_equity"):
        assert needle in exprs, needle
    legends = {t["legendFormat"] for p in prom.dashboard()["panels"] for t in p.get("targets", [])}
    assert "{{symbol}}" in legends and "{{backend}} p99" in legends


def test_drift_and_live_score_panels_are_per_symbol() -> None:
    """Every query of the per-symbol model series filters on the ``symbol`` variable, and shows the
    symbol unless it sums the symbols up; the variable lists the symbols the daemon exports."""
    var = {v["name"]: v for v in prom.dashboard()["templating"]["list"]}
    assert var["symbol"]["type"] == "query" and var["symbol"]["query"]["query"].startswith("label_values(")
    assert var["symbol"]["query"]["query"].endswith(", symbol)") and var["symbol"]["includeAll"]
    per_symbol = {"barsignal_live_model", "barsignal_feature_psi_max", "barsignal_feature_psi",
                  "barsignal_artifact_score"}
    seen: set[str] = set()
    for p in prom.dashboard()["panels"]:
        for t in p.get("targets", []):
            names = prom.metric_names(t["expr"]) & per_symbol
            if not names:
                continue
            seen |= names
            assert 'symbol=~"$symbol"' in t["expr"], (p["title"], t["expr"])
            assert "{{symbol}}" in t["legendFormat"] or t["expr"].startswith("sum("), (p["title"], t)
    assert seen == per_symbol
