"""A model against train-fitted baselines with day-bootstrap CIs, and its policy's trading figures.

Direction metrics (ROC-AUC, log-loss, Brier) are on non-tied windows only. Every figure has a 95 %
CI from resampling whole UTC days (``engine.metrics``); the model's difference to each baseline is
bootstrapped on the same resamples, and the verdict says "beats" only when that CI excludes 0.
The baselines are those an artifact ships (``model.baselines``, fitted on its training split),
or fitted on a train split given here; fitted on the evaluated windows only as a labelled last
resort (in-sample, which favours them). Trading: every window (ties included, consecutive bars)
through the policy's ``SignalRule`` and the paper broker (``engine.policy.replay``).
Walk-forward: the evaluated period cut into K consecutive folds, each reported the same way.
No torch here: probabilities come in as arrays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.engine import metrics as em
from barsignal.model import baselines as bl
from barsignal.model.dataset import WindowSet

METRICS = em.METRICS


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins over [0, 1]: mean predicted p, observed up rate and count per non-empty bin."""
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "mean_p": float(p[m].mean()),
                        "up_rate": float(y[m].mean()), "count": int(m.sum())})
    return out


def compare(ws: WindowSet, p: np.ndarray, base_params: dict[str, Any], *, n_boot: int = 500,
            seed: int = 0) -> dict[str, Any]:
    """Model vs every baseline on the non-tied windows of ``ws`` (``p``: the model's p_up per window)."""
    keep = np.ones(len(ws), bool) if ws.tied is None else ~ws.tied
    lab = ws.subset(np.flatnonzero(keep))
    pm = np.asarray(p, np.float64)[keep]
    y = lab.labels.astype(np.float64)
    scorers = {"model": em.Scorer(y, pm)}
    for name, (pb, score) in bl.predict(base_params, lab).items():
        scorers[name] = em.Scorer(y, pb, score)
    boot = em.DayBootstrap(lab.days, n_boot, seed)
    res = em.bootstrap(scorers, boot)
    verdicts = []
    for name in scorers:
        if name == "model":
            continue
        for m in METRICS:
            d = res[name][f"{m}_diff"]
            verdicts.append({"baseline": name, "metric": m, "verdict": d["verdict"], "diff": d["value"],
                             "ci95": d["ci95"]})
    return {"windows": len(lab), "tied_dropped": int((~keep).sum()), "days": boot.n_days,
            "up_rate": float(y.mean()) if len(y) else float("nan"), "bootstrap": {"resamples": n_boot,
            "block": "UTC day", "seed": seed}, "scores": res, "verdicts": verdicts,
            "calibration": calibration(y, np.clip(pm, 0, 1))}


def trading(ws: WindowSet, p: np.ndarray, policy: Any, rules: Any = None) -> dict[str, Any]:
    """``engine.policy.replay`` of every window of ``ws`` (consecutive bars) with ``policy``."""
    from barsignal.engine.broker import Rules
    from barsignal.engine.policy import Bars, replay

    return {"policy": policy.to_dict(), **replay(Bars.of(ws, p), policy, rules or Rules())}


def report(ws: WindowSet, p: np.ndarray, base_params: dict[str, Any], *, policy: Any = None,
           rules: Any = None, walk_forward: int = 0, n_boot: int = 500, **context: Any) -> dict[str, Any]:
    """The evaluation object: comparison, trading, optional walk-forward folds, and context."""
    p = np.asarray(p, np.float64)
    out: dict[str, Any] = {**context, **compare(ws, p, base_params, n_boot=n_boot)}
    if policy is not None:
        out["trading"] = trading(ws, p, policy, rules)
    if walk_forward > 1:
        order = np.argsort(ws.times, kind="stable")
        folds = []
        for k, idx in enumerate(np.array_split(order, walk_forward)):
            sub = ws.subset(idx)
            f = {"fold": k + 1, "start_ms": int(sub.times.min()), "end_ms": int(sub.times.max()),
                 **compare(sub, p[idx], base_params, n_boot=n_boot)}
            if policy is not None:
                f["trading"] = trading(sub, p[idx], policy, rules)
            folds.append(f)
        out["walk_forward"] = folds
    return out


def _cell(s: dict[str, Any]) -> str:
    if s["ci95"] is None:
        return f"{s['value']:.4f} [no CI]"
    lo, hi = s["ci95"]
    return f"{s['value']:.4f} [{lo:.4f}, {hi:.4f}]"


def _compare_md(rep: dict[str, Any]) -> list[str]:
    sc = rep["scores"]
    names = list(sc)
    lines = [f"{rep['windows']:,} non-tied windows ({rep['tied_dropped']:,} tied dropped) over {rep['days']} "
             f"days; up rate {rep['up_rate']:.4f}. 95 % CIs: {rep['bootstrap']['resamples']} day-block "
             "resamples.", "",
             "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m in METRICS:
        lines.append(f"| {m} | " + " | ".join(_cell(sc[n][m]) for n in names) + " |")
    lines += ["", "| model vs | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for n in names[1:]:
        cells = []
        for m in METRICS:
            d = sc[n][f"{m}_diff"]
            ci = d["ci95"] or [float("nan")] * 2
            cells.append(f"{d['verdict']} ({d['value']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}])")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    beats = {n for n in names[1:] if all(sc[n][f"{m}_diff"]["verdict"] == "beats" for m in METRICS)}
    lines += ["", "The model beats " + (", ".join(sorted(beats)) if beats else "no baseline")
              + " on every metric; it does NOT beat "
              + (", ".join(n for n in names[1:] if n not in beats) or "-")
              + " on every metric (a difference whose CI contains 0 is not a win)."]
    return lines


def trading_md(t: dict[str, Any]) -> list[str]:
    pol = t["policy"]
    what = ("stay flat (the artifact's policy: nothing was net-positive after costs on validation)"
            if pol["policy"] == "flat" else
            f"long >= {pol['long_threshold']:.4f}" + (f", short <= {pol['short_threshold']:.4f}"
                                                      if pol["allow_short"] else "")
            + f", hysteresis {pol['hysteresis']:.4f}, minimum hold {pol['min_hold_bars']} bars")
    ci = t.get("net_pnl_ci95") or [float("nan")] * 2
    c = t["costs"]
    return [f"Trading ({what}; {c['fee_bps']:g} bp fee + {c['slippage_bps']:g} bp slippage per fill, "
            f"{c['fill']} fills, {c['initial_cash']:g} initial cash): net PnL {t['net_pnl']:.2f} "
            f"(95 % CI {ci[0]:.2f} .. {ci[1]:.2f}), gross {t['gross_pnl']:.2f}, fees {t['fees']:.2f}, "
            f"{t['trades']} round trips, t-stat {t['t_stat']:.2f}, exposure {t['exposure']:.3f}."]


def to_markdown(rep: dict[str, Any]) -> str:
    lines = [f"Baselines: {rep.get('baselines_fitted_on', '?')}.", "", *_compare_md(rep), ""]
    if "trading" in rep:
        lines += [*trading_md(rep["trading"]), ""]
    for f in rep.get("walk_forward", []):
        lines += [f"## Fold {f['fold']} ({_day(f['start_ms'])} .. {_day(f['end_ms'])})", "", *_compare_md(f), ""]
        if "trading" in f:
            lines += [*trading_md(f["trading"]), ""]
    if rep.get("move"):
        from barsignal.model.move import to_markdown as move_md

        lines += [f"Move-size forecasts ({rep['move']['fitted_on']}; reference: the shipped har_seasonal):", "",
                  *move_md(rep["move"]), ""]
    lines += ["Calibration (model):", "", "| bin | mean p | up rate | count |", "|---|---|---|---|"]
    for c in rep["calibration"]:
        lines.append(f"| {c['lo']:.1f}-{c['hi']:.1f} | {c['mean_p']:.4f} | {c['up_rate']:.4f} | {c['count']} |")
    return "\n".join(lines) + "\n"


def _day(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")


def plot_calibration(rep: dict[str, Any], p: np.ndarray, path: str | Path) -> Path:
    """Reliability diagram of the model over a histogram of its predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(2, 1, figsize=(6, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
    cal = rep["calibration"]
    ax.plot([c["mean_p"] for c in cal], [c["up_rate"] for c in cal], "o-", label="model")
    ax.set_ylabel("observed up rate")
    ax.set_title(f"Reliability ({rep['windows']:,} windows)")
    ax.legend()
    hx.hist(p, bins=50, range=(0, 1), color="tab:blue")
    hx.set_xlabel("predicted p_up")
    hx.set_ylabel("windows")
    lo, hi = float(np.min(p)), float(np.max(p))
    ax.set_xlim(max(0.0, lo - 0.05), min(1.0, hi + 0.05))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write(rep: dict[str, Any], p: np.ndarray, out_dir: str | Path) -> dict[str, Path]:
    """eval.json, eval.md and calibration.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(rep, indent=1, default=str) + "\n")
    (out / "eval.md").write_text(to_markdown(rep))
    return {"json": out / "eval.json", "md": out / "eval.md",
            "png": plot_calibration(rep, p, out / "calibration.png")}
