"""Render the Grafana dashboard's queries over a time range with matplotlib: a PNG, not Grafana.

    python deploy/render_dashboard.py --prometheus http://127.0.0.1:9090 \\
        --start 1764576000 --end 1764576300 --out docs/img/dashboard.png

Each panel of deploy/grafana/barsignal.json becomes one plot: its queries are sent to Prometheus'
``query_range`` with Grafana's variables filled in (``$instance``, ``$symbol`` = all, ``$__rate_interval`` =
``--rate-interval``); a heatmap panel is drawn as per-bucket counts over time, a stat panel as its
last values. docs/img/dashboard.png comes from tests/deploy/test_prometheus_e2e.py's run
(``BARSIGNAL_DASHBOARD_PNG``), i.e. from a real daemon's scrapes. Needs matplotlib (the train extra).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent / "grafana" / "barsignal.json"


def _range(url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def _legend(fmt: str, labels: dict[str, str]) -> str:
    if fmt in ("", "__auto"):
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def _le(s: dict[str, Any]) -> float:
    return float(s["metric"].get("le", "inf").replace("+Inf", "inf"))


def render(url: str, start: float, end: float, out: Path, *, step: float = 2.0, rate_interval: str = "15s",
           dashboard: Path = DASHBOARD) -> Path:
    """Draw every panel of ``dashboard`` from ``url`` over [start, end] into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    d = json.loads(dashboard.read_text())
    panels = [p for p in d["panels"] if p["type"] != "row"]
    rows = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(16, 2.6 * rows), squeeze=False)
    fig.suptitle("barsignal: the Grafana dashboard's queries over a real run, drawn with matplotlib "
                 f"(this is not Grafana) — {(end - start) / 60:.1f} min, Prometheus scraping every 1 s",
                 fontsize=12)
    for ax, p in zip(axes.ravel(), panels, strict=False):
        ax.set_title(p["title"], fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        for t in p["targets"]:
            expr = (t["expr"].replace("$instance", ".*").replace("$symbol", ".*")
                    .replace("$__rate_interval", rate_interval))
            series = _range(url, expr, start, end, step)
            if p["type"] == "heatmap":
                series = sorted(series, key=_le)
                if not series:
                    continue
                ts = np.array([float(v[0]) for v in series[0]["values"]])
                cum = np.array([[float(v[1]) for v in s["values"]] for s in series if len(s["values"]) == len(ts)])
                counts = np.diff(np.vstack([np.zeros(cum.shape[1]), cum]), axis=0)  # per bucket, not cumulative
                ax.imshow(np.log1p(np.maximum(counts, 0)), aspect="auto", origin="lower", cmap="viridis",
                          extent=((ts[0] - start) / 60, (ts[-1] - start) / 60, 0, len(counts)))
                les = [s["metric"].get("le", "") for s in series]
                ax.set_yticks(np.arange(len(les)) + 0.5, [f"≤{x}" for x in les], fontsize=5)
                continue
            for s in series:
                x = np.array([(float(v[0]) - start) / 60 for v in s["values"]])
                y = np.array([float(v[1]) for v in s["values"]])
                if unit == "s":
                    y = y * 1e3
                label = _legend(t.get("legendFormat", ""), s["metric"])
                if p["type"] in ("stat", "table"):  # the last values, one line each
                    ax.text(0.02, 0.8 - 0.2 * len(ax.texts), f"{label}: {y[-1]:.4g}", fontsize=10,
                            transform=ax.transAxes)
                    ax.set_axis_off()
                else:
                    ax.plot(x, y, lw=1, label=label[:40])
        if p["type"] == "timeseries":
            ax.set_xlabel("minutes into the run", fontsize=7)
            if unit == "s":
                ax.set_ylabel("ms", fontsize=7)
            if ax.lines:
                ax.legend(fontsize=6, loc="upper left", ncol=2)
    for ax in axes.ravel()[len(panels):]:
        ax.set_axis_off()
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", required=True, help="Prometheus base URL")
    ap.add_argument("--start", type=float, required=True, help="unix seconds")
    ap.add_argument("--end", type=float, required=True, help="unix seconds")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--step", type=float, default=2.0, help="query_range step, seconds")
    ap.add_argument("--rate-interval", default="15s", help="what $__rate_interval becomes")
    a = ap.parse_args(argv)
    print(render(a.prometheus, a.start, a.end, a.out, step=a.step, rate_interval=a.rate_interval))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
