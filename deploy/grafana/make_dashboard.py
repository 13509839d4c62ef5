"""Write ``deploy/grafana/barsignal.json``, the Grafana dashboard (``python deploy/grafana/make_dashboard.py``).

The JSON is committed; tests/deploy checks it is exactly what this script writes, that it is a
provisionable dashboard (``${datasource}`` variable, no hard-coded UIDs) and that every query
names only metrics the daemon exports. Queries use the raw metrics (not the recording rules), so
the dashboard works without the rule file loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("barsignal.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
SYM = 'instance=~"$instance", symbol=~"$symbol"'  # the per-symbol series (the `symbol` variable)
RI = "$__rate_interval"


def q(expr: str, legend: str = "", ref: str = "A", **kw: Any) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref, **kw}


def panel(title: str, targets: list[dict[str, Any]], *, unit: str = "short", kind: str = "timeseries",
          desc: str = "", stack: bool = False, **field: Any) -> dict[str, Any]:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    p: dict[str, Any] = {"type": kind, "title": title, "description": desc, "datasource": DS,
                         "targets": targets,
                         "fieldConfig": {"defaults": {"unit": unit, **field}, "overrides": []}, "options": {}}
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                  "stacking": {"mode": "normal" if stack else "none"}}
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi"}}
    elif kind == "heatmap":  # Prometheus buckets as they are (no re-bucketing by Grafana)
        p["options"] = {"calculate": False, "yAxis": {"unit": unit}, "cellGap": 1, "tooltip": {"show": True}}
        p["dataFormat"] = "tsbuckets"
    elif kind == "table":  # instant queries joined on the symbol, one column each
        p["transformations"] = [{"id": "joinByField", "options": {"byField": "symbol", "mode": "outer"}},
                                {"id": "organize", "options": {"excludeByName": {"Time": True}}}]
        p["options"] = {"showHeader": True, "sortBy": [{"displayName": "Value #A", "desc": True}]}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "textMode": "value_and_name", "colorMode": "none", "graphMode": "none"}
    return p


def quantiles(metric: str, by: str = "") -> list[dict[str, Any]]:
    group = f"{by}, le" if by else "le"
    tag = f"{{{{{by}}}}} " if by else ""
    return [q(f"histogram_quantile({p}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RI}])))", f"{tag}p{n}")
            for p, n in ((0.5, 50), (0.99, 99))]


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def panels() -> list[dict[str, Any]]:
    return [
        row("Feed"),
        panel("Last closed bar age, per symbol", [q(f"barsignal_last_bar_age_seconds{{{SYM}}}", "{{symbol}}")],
              unit="s", desc="Seconds since the last closed bar (-1: none yet). Alert: BarsignalFeedStale > 180 s."),
        panel("Feed connected", [q(f"barsignal_feed_connected{{{SEL}}}", "{{instance}}")], kind="stat",
              desc="1 while the websocket is connected.", min=0, max=1),
        panel("Bars per minute, by source", [q(f"sum by (source) (rate(barsignal_bars_total{{{SEL}}}[{RI}])) * 60",
                                               "{{source}}")], stack=True),
        panel("Feed trouble (per hour)", [
            q(f"sum(increase(barsignal_reconnects_total{{{SEL}}}[1h]))", "reconnects"),
            q(f"sum(increase(barsignal_gaps_total{{{SEL}}}[1h]))", "gaps REST could not fill"),
            q(f"sum(increase(barsignal_bad_frames_total{{{SEL}}}[1h]))", "bad frames"),
            q(f"sum(increase(barsignal_dropped_frames_total{{{SEL}}}[1h]))", "dropped frames"),
            q(f"sum(increase(barsignal_future_bars_total{{{SEL}}}[1h]))", "future bars"),
            q(f"sum(increase(barsignal_invalid_bars_total{{{SEL}}}[1h]))", "invalid bars"),
            q(f"sum(increase(barsignal_rest_failures_total{{{SEL}}}[1h]))", "REST failures"),
            q(f"sum(increase(barsignal_rest_rate_limited_total{{{SEL}}}[1h]))", "REST 429s"),
        ]),
        panel("REST ban remaining", [q(f"barsignal_rest_ban_remaining_seconds{{{SEL}}}", "{{instance}}")], unit="s",
              desc="Seconds left of a Binance REST ban (HTTP 418). Alert: BarsignalRestBanned."),
        row("Latency"),
        panel("Tick-to-signal p50 / p99", quantiles("barsignal_tick_to_signal_seconds"), unit="s",
              desc="Closing frame received -> signal in the outbox and the sink queues."),
        panel("Tick-to-signal histogram", [
            q(f"sum by (le) (increase(barsignal_tick_to_signal_seconds_bucket{{{SEL}}}[{RI}]))", "{{le}}",
              format="heatmap")], kind="heatmap", unit="s"),
        panel("Scoring p50 / p99, by backend", quantiles("barsignal_scoring_seconds", "backend"), unit="s",
              desc="Model time per window. Alert: BarsignalScoringSlow (p99 > 1 ms for 15 min)."),
        panel("Keep-warm", [q(f"rate(barsignal_keep_warm_busy_seconds_total{{{SEL}}}[{RI}])", "busy CPU share"),
                            q(f"increase(barsignal_keep_warm_errors_total{{{SEL}}}[{RI}])", "errors")],
              desc="Busy-poll CPU share around expected bars, and failed rehearsals."),
        row("Signals and delivery"),
        panel("Signals by action (per minute)", [
            q(f"sum by (action) (rate(barsignal_signals_total{{{SEL}}}[{RI}])) * 60", "{{action}}")], stack=True),
        panel("Outbox depth", [q(f"barsignal_outbox_depth{{{SEL}}}", "{{instance}}")],
              desc="Signals not yet delivered to every sink. Alert: BarsignalOutboxGrowing."),
        panel("Sink deliveries and failures (per minute)", [
            q(f"sum by (sink) (rate(barsignal_sink_delivered_total{{{SEL}}}[{RI}])) * 60", "{{sink}} delivered"),
            q(f"sum by (sink) (rate(barsignal_sink_failures_total{{{SEL}}}[{RI}])) * 60", "{{sink}} failed"),
        ]),
        panel("Dead letters", [
            q(f"sum by (sink) (barsignal_outbox_dead_letters{{{SEL}}})", "{{sink}} in the outbox"),
            q(f"sum by (sink) (increase(barsignal_sink_dead_letters_total{{{SEL}}}[1h]))", "{{sink}} new (1 h)"),
        ], desc="Signals a sink refused for good. Alert: BarsignalDeadLetters."),
        row("Model"),
        panel("Live Brier and calibration vs the artifact, per symbol", [
            q(f'barsignal_live_model{{{SYM}, score="brier"}}', "{{symbol}} live Brier"),
            q(f'barsignal_artifact_score{{{SYM}, score="brier"}}', "{{symbol}} artifact Brier ({{key}})"),
            q(f'barsignal_live_model{{{SYM}, score="ece"}}', "{{symbol}} live calibration error (ECE)"),
        ], desc="Over each symbol's last [metrics] monitor_window resolved predictions, against the figure of "
                "the artifact that symbol uses. Alert: BarsignalLiveBrierWorse (per symbol)."),
        panel("Live AUC and accuracy vs the artifact, per symbol", [
            q(f'barsignal_live_model{{{SYM}, score="auc"}}', "{{symbol}} live AUC"),
            q(f'barsignal_artifact_score{{{SYM}, score="auc"}}', "{{symbol}} artifact AUC ({{key}})"),
            q(f'barsignal_live_model{{{SYM}, score="accuracy"}}', "{{symbol}} live accuracy"),
        ], desc="Alert: BarsignalLiveAucWorse (per symbol; needs >= 500 resolved predictions)."),
        panel("Feature drift (PSI), per symbol", [
            q(f"topk(10, barsignal_feature_psi_max{{{SYM}}})", "{{symbol}} largest PSI"),
            q(f"max(barsignal_feature_psi_bound{{{SEL}}})", "bound"),
            q(f"topk(5, barsignal_feature_psi{{{SYM}}})", "{{symbol}} {{name}}"),
        ], desc="Each symbol's largest PSI against its model's training bins (the 10 worst symbols), and the "
                "worst features (the daemon exports 3 a symbol). Alert: BarsignalFeatureDrift (per symbol)."),
        panel("Live scores by symbol", [
            q(f'barsignal_feature_psi_max{{{SYM}}}', "{{symbol}} largest PSI", format="table", instant=True),
            q(f'barsignal_live_model{{{SYM}, score="brier"}}', "{{symbol}} Brier", format="table", instant=True),
            q(f'barsignal_live_model{{{SYM}, score="auc"}}', "{{symbol}} AUC", format="table", instant=True),
            q(f'barsignal_live_model{{{SYM}, score="n"}}', "{{symbol}} n", format="table", instant=True),
        ], kind="table", desc="Now, one row a symbol: largest PSI, live Brier, live AUC, resolved predictions."),
        panel("Paper equity", [q(f"barsignal_paper_equity{{{SYM}}}", "{{symbol}}")], unit="none",
              desc="The paper account's equity at the last bar's close, quote currency."),
        *move_panels(),
        row("Process"),
        panel("Restarts and reloads", [
            q(f"changes(process_start_time_seconds{{{SEL}}}[1h])", "restarts (1 h)"),
            q(f"sum by (result) (increase(barsignal_reloads_total{{{SEL}}}[1h]))", "reloads {{result}} (1 h)"),
        ]),
        panel("Resident memory", [
            q(f"process_resident_memory_bytes{{{SEL}}}", "RSS"),
        ], unit="bytes"),
        panel("Model in use", [q(f"barsignal_artifact_info{{{SEL}}}", "{{artifact}} on {{backend}}"),
                               q(f'sum(barsignal_live_model{{{SYM}, score="n"}})', "resolved predictions")],
              kind="stat"),
    ]


def move_panels() -> list[dict[str, Any]]:
    """The move head (p_move) scored live, per symbol (``barsignal_live_move``)."""
    return [
        row("Move head (p_move)"),
        panel("p_move: live Brier vs the realized rate's, and calibration, per symbol", [
            q(f'barsignal_live_move{{{SYM}, score="brier"}}', "{{symbol}} live Brier"),
            q(f'barsignal_live_move{{{SYM}, score="brier_base"}}', "{{symbol}} Brier of the realized rate"),
            q(f'barsignal_live_move{{{SYM}, score="ece"}}', "{{symbol}} calibration error (ECE)"),
        ], desc="Over each symbol's last [metrics] monitor_window resolved p_move (|move| over the artifact's "
                "threshold, its horizon later). A p_move with skill has a Brier below the realized rate's. "
                "Alerts: BarsignalMoveNoSkill, BarsignalMoveMiscalibrated."),
        panel("p_move: live AUC, realized exceedance rate and mean p_move, per symbol", [
            q(f'barsignal_live_move{{{SYM}, score="auc"}}', "{{symbol}} AUC"),
            q(f'barsignal_live_move{{{SYM}, score="rate"}}', "{{symbol}} realized rate"),
            q(f'barsignal_live_move{{{SYM}, score="mean_p"}}', "{{symbol}} mean p_move"),
        ], desc="Mean p_move above the realized rate: moves over-forecast. "
                "Alert: BarsignalMoveAucLow (needs >= 500 resolved forecasts)."),
    ]


def layout(ps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows span the width; panels two per line, 12 x 8."""
    y, x, out = 0, 0, []
    for i, p in enumerate(ps, 1):
        p["id"] = i
        if p["type"] == "row":
            y += 8 if x else 0
            p["gridPos"] = {"x": 0, "y": y, "w": 24, "h": 1}
            y, x = y + 1, 0
        else:
            p["gridPos"] = {"x": x, "y": y, "w": 12, "h": 8}
            x = 12 - x
            y += 8 if x == 0 else 0
        out.append(p)
    return out


def dashboard() -> dict[str, Any]:
    return {
        "title": "barsignal", "uid": None, "id": None, "editable": True, "schemaVersion": 39, "version": 1,
        "tags": ["barsignal"], "timezone": "utc", "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "description": "barsignal daemon: feed, latency, signals, sinks, model, drift, paper equity (docs/DEPLOY.md).",
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            {"name": "instance", "label": "instance", "type": "query", "datasource": DS,
             "query": {"query": "label_values(barsignal_artifact_info, instance)", "refId": "instance"},
             "definition": "label_values(barsignal_artifact_info, instance)", "refresh": 2, "includeAll": True,
             "multi": True, "allValue": ".*", "current": {}, "options": [], "hide": 0, "sort": 1},
            {"name": "symbol", "label": "symbol", "type": "query", "datasource": DS,
             "query": {"query": "label_values(barsignal_live_model{instance=~\"$instance\"}, symbol)",
                       "refId": "symbol"},
             "definition": "label_values(barsignal_live_model{instance=~\"$instance\"}, symbol)", "refresh": 2,
             "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "options": [], "hide": 0,
             "sort": 1},
        ]},
        "annotations": {"list": [{"name": "Restarts", "datasource": DS, "enable": True, "iconColor": "red",
                                  "expr": f"changes(process_start_time_seconds{{{SEL}}}[2m]) > 0",
                                  "step": "60s", "titleFormat": "barsignal restarted"}]},
        "panels": layout(panels()),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=1) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
