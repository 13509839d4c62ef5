"""The move-size research: every forecaster of ``model/move.py`` on every period, and what each input buys.

    python -m barsignal.model.move_research --data FUTURES_DIR... --spot SPOT_FILE --out DIR

On the chronological splits of ``--data`` (``model.dataset``, horizon 15): the choices of the
shipped forecaster measured on the VALIDATION split (seasonal smoothing, day of week, spans,
calibration); then, for each threshold, every forecaster fitted on the training split and scored on
validation, test, the test split's walk-forward folds, ``--spot`` (another market, later) and its
folds; and an expanding-window walk-forward by calendar month (refitted on every bar before the
month, less a purge of window + horizon bars). Writes ``move_research.md`` and ``.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.engine import metrics as em
from barsignal.engine import move_har
from barsignal.engine.move import MoveSpec
from barsignal.model import move as mv
from barsignal.model.dataset import DatasetSpec, all_windows, build, load_segments


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")


def ablations(mb: mv.MoveBars, train: Any, val: Any, h: int, c: float) -> list[dict[str, Any]]:
    """Point estimates on validation of each variant of the HAR forecaster (fitted on train)."""
    y = mv.exceed(val, c)
    yt = mv.exceed(train, c)
    rv = mb.forward_rv(val.ends, h)
    rows = []
    variants: list[tuple[str, dict[str, Any]]] = [
        ("no seasonality", {"seasonal": False}),
        ("minute of day, smoothed 15 min, no day of week", {"weekly": False}),
        ("minute of day unsmoothed + day of week", {"smooth": 1}),
        ("minute of day smoothed 5 min + day of week", {"smooth": 5}),
        ("minute of day smoothed 15 min + day of week (shipped)", {}),
        ("minute of day smoothed 61 min + day of week", {"smooth": 61}),
        ("spans 30 only", {"spans": (30,)}),
        ("spans 30/60/240", {"spans": (30, 60, 240)}),
        ("spans 30/60/240/1440 (shipped)", {}),
    ]
    for name, kw in variants:
        par = mv.fit_har(mb, train.ends, h, **kw)
        _, st = mv.har_predict(par, h, c, mb, train.ends)
        _, sv = mv.har_predict(par, h, c, mb, val.ends)
        ok = np.isfinite(sv)
        var = (sv[ok] / 1e4) ** 2
        ratio = np.maximum(rv[ok], mv.RV_FLOOR) / var
        row = {"variant": name, "qlike": float(np.mean(ratio - np.log(ratio) - 1))}
        for kind in ("logistic", "normal"):
            cal = mv.fit_calib(st, yt, kind)
            p = mv.apply_calib(cal, sv, c)[ok]
            row[f"log_loss_{kind}"] = em.log_loss(y[ok], p)
            row[f"ece_{kind}"] = _ece(y[ok], p)
        row["roc_auc"] = em.roc_auc(y[ok], sv[ok])
        rows.append(row)
    return rows


def _ece(y: np.ndarray, p: np.ndarray) -> float:
    b = np.clip((p * mv.ECE_BINS).astype(np.int64), 0, mv.ECE_BINS - 1)
    return float(np.abs(np.bincount(b, weights=p - y, minlength=mv.ECE_BINS)).sum() / len(y))


def monthly(mb: mv.MoveBars, every: Any, h: int, c: float, purge: int, n_boot: int, first: int = 4,
            eta: float = 0.0) -> list[dict[str, Any]]:
    """Expanding-window walk-forward: for each calendar month from the ``first``-th on, fit on every
    window ending before the month (less ``purge`` bars) and score the month (online rate ``eta``)."""
    month = every.times.astype("datetime64[ms]").astype("datetime64[M]")
    out = []
    for k in np.unique(month)[first:]:
        t0 = int(k.astype("datetime64[ms]").astype(np.int64))
        tr = every.subset(np.flatnonzero(every.times < t0 - purge * 60_000))
        te = every.subset(np.flatnonzero(month == k))
        fitted = mv.fit(mb, tr, None, h, c, calib="logistic", eta=eta)
        rep = mv.compare(mv.predict(fitted, mb, te, h, c), mv.exceed(te, c), mb.forward_rv(te.ends, h), te.days,
                         n_boot=n_boot)
        out.append({"month": str(k), "train_windows": len(tr), **rep})
    return out


def stacked(mb: mv.MoveBars, train: Any, evals: list[tuple[str, mv.MoveBars, Any]], h: int, c: float,
            n_boot: int) -> dict[str, Any]:
    """What the 30 x 33 window's features add to the shipped forecaster: a logistic on [log sigma_bp of
    har_seasonal, the 33 normalized features of the window's last bar], fitted on train, against
    har_seasonal alone on each evaluated period. A student head sees only those features (no time of
    day, no span over 30 bars), so this bounds what it could add."""
    from barsignal.model.baselines import Logistic

    fitted = mv.fit(mb, train, None, h, c, calib="logistic")
    _, st = mv.har_predict(fitted["forecaster"], h, c, mb, train.ends)
    ok = np.isfinite(st)
    xt = np.hstack([np.log(st[ok])[:, None], train.last_rows()[ok].astype(np.float64)])
    lr = Logistic.fit(xt, mv.exceed(train, c)[ok], 1e-3)
    out: dict[str, Any] = {}
    for name, m, ws in evals:
        p, sig = mv.har_predict(fitted["forecaster"], h, c, m, ws.ends)
        x = np.hstack([np.log(sig)[:, None], ws.last_rows().astype(np.float64)])
        fc = {"har_seasonal": (p, (sig / 1e4) ** 2), "har_seasonal+33 features": (lr.predict(x), None)}
        out[name] = mv.compare(fc, mv.exceed(ws, c), m.forward_rv(ws.ends, h), ws.days, n_boot=n_boot)
    return out


def restart_cost(mb: mv.MoveBars, train: Any, val: Any, ws: Any, h: int, c: float, warm: int, n_boot: int
                 ) -> dict[str, Any]:
    """What a start costs: every day of ``ws`` scored by a forecaster started afresh ``warm`` bars
    before the day (the daemon's start-up fetch), against the uninterrupted forecaster."""
    fitted = mv.fit(mb, train, val, h, c)
    f = move_har.HarSeasonal(MoveSpec(h, c, move_har.KIND, fitted["forecaster"]))
    p_cont, _ = mv.har_predict(fitted["forecaster"], h, c, mb, ws.ends)
    p_fresh = np.full(len(ws), np.nan)
    for d in np.unique(ws.days):
        idx = np.flatnonzero(ws.days == d)
        e = ws.ends[idx]
        a = next(a for a, b in mb.bounds if a <= e.min() < b)
        start = max(a, int(e.min()) - warm)
        p_fresh[idx] = move_har.batch(f, mb.open_time[start:e.max() + 1], mb.close[start:e.max() + 1],
                                      e - start)[0]
    fc = {"har_seasonal": (p_cont, None), f"started {warm} bars before each day": (p_fresh, None)}
    return mv.compare(fc, mv.exceed(ws, c), np.ones(len(ws)), ws.days, n_boot=n_boot)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, help="the training bars (split chronologically)")
    ap.add_argument("--spot", nargs="*", default=[], help="other bars scored with the fitted forecasters")
    ap.add_argument("--horizon", type=int, default=15)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[10.0, 20.0], metavar="BP")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--folds", type=int, default=3, help="walk-forward folds of the test split and of --spot")
    ap.add_argument("--stacking-only", action="store_true",
                    help="only what the 33 features add to har_seasonal (validation, test, --spot)")
    ap.add_argument("--restart-only", type=int, default=0, metavar="BARS",
                    help="only what a start BARS bars before each test day costs (the daemon's warm-up)")
    ap.add_argument("--calibration-only", action="store_true",
                    help="only the shipped forecaster with its online calibration against the static one "
                         "(validation, test, --spot, walk-forward by month, a start before each test day)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    h = args.horizon
    segs = load_segments(args.data)
    sp = build(segs, DatasetSpec(window=30, horizon=h))
    assert sp.val_all is not None and sp.test_all is not None
    mb = mv.MoveBars.of(segs)
    every = all_windows(segs, sp.normalizer, 30, h)
    spot = []
    for path in args.spot:
        ss = load_segments([path])
        spot.append((Path(path).name, mv.MoveBars.of(ss), all_windows(ss, sp.normalizer, 30, h)))
    res: dict[str, Any] = {"data": args.data, "spot": args.spot, "horizon": h, "bootstrap": args.bootstrap,
                           "splits": {k: sp.info[k] for k in ("train", "val", "test", "val_start_ms",
                                                             "test_start_ms", "purge_bars")},
                           "thresholds": {}}
    if args.restart_only:
        for c in args.thresholds:
            rep = restart_cost(mb, sp.train, sp.val_all, sp.test_all, h, c, args.restart_only, args.bootstrap)
            sys.stdout.write("\n".join(mv.report_md(rep, f"test split, {c:g} bp")) + "\n\n")
        return 0
    if args.stacking_only:
        evals = [("validation", mb, sp.val_all), ("test", mb, sp.test_all), *spot]
        res["stacking"] = {str(c): stacked(mb, sp.train, evals, h, c, args.bootstrap) for c in args.thresholds}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "move_stacking.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        for c, per in res["stacking"].items():
            for name, rep in per.items():
                sys.stdout.write("\n".join(mv.report_md(rep, f"{name}, {float(c):g} bp")) + "\n\n")
        return 0
    if args.calibration_only:
        res["calibration"] = {}
        for c in args.thresholds:
            fitted = mv.fit(mb, sp.train, sp.val_all, h, c)
            eta = float(fitted["forecaster"]["calib"].get("eta", 0.0))
            r = {"calib_choice": fitted.get("calib_choice"), "eta_choice": fitted.get("eta_choice"), "eta": eta,
                 "val": mv.report(fitted, mb, sp.val_all, n_boot=args.bootstrap),
                 "test": mv.report(fitted, mb, sp.test_all, n_boot=args.bootstrap, walk_forward=args.folds),
                 "spot": {name: mv.report(fitted, m, w, n_boot=args.bootstrap, walk_forward=args.folds)
                          for name, m, w in spot},
                 "monthly": monthly(mb, every, h, c, sp.spec.purge_bars, args.bootstrap, eta=eta),
                 "restart": restart_cost(mb, sp.train, sp.val_all, sp.test_all, h, c, 130, args.bootstrap)}
            res["calibration"][str(c)] = r
            print(f"[{time.monotonic() - t_start:6.0f}s] threshold {c:g} bp done", file=sys.stderr, flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "move_calibration.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        text = calibration_markdown(res)
        (out / "move_calibration.md").write_text(text)
        sys.stdout.write(text)
        return 0
    for c in args.thresholds:
        r = {"ablations_val": ablations(mb, sp.train, sp.val_all, h, c)}
        fitted = mv.fit(mb, sp.train, sp.val_all, h, c)
        r["calib_choice"] = fitted.get("calib_choice")
        r["eta_choice"] = fitted.get("eta_choice")
        r["val"] = mv.report(fitted, mb, sp.val_all, n_boot=args.bootstrap)
        r["test"] = mv.report(fitted, mb, sp.test_all, n_boot=args.bootstrap, walk_forward=args.folds)
        r["spot"] = {name: mv.report(fitted, m, w, n_boot=args.bootstrap, walk_forward=args.folds)
                     for name, m, w in spot}
        r["monthly"] = monthly(mb, every, h, c, sp.spec.purge_bars, args.bootstrap)
        res["thresholds"][str(c)] = r
        print(f"[{time.monotonic() - t_start:6.0f}s] threshold {c:g} bp done", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "move_research.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / "move_research.md").write_text(to_markdown(res))
    sys.stdout.write(to_markdown(res))
    return 0


def calibration_markdown(res: dict[str, Any]) -> str:
    """The ``--calibration-only`` tables: online against static calibration on every period."""
    lines: list[str] = []
    for c, r in res["calibration"].items():
        lines += [f"# Threshold {float(c):g} bp: online rate {r['eta']:g}", "",
                  f"Rate chosen: {r['eta_choice']}", ""]
        for name, rep in (("Validation", r["val"]), ("Test", r["test"]),
                          *((f"Spot {n}", v) for n, v in r["spot"].items())):
            lines += [f"## {name}", "", *mv.to_markdown(rep), ""]
        lines += _monthly_md(r["monthly"])
        lines += ["## Started 130 bars before each test day", "",
                  *mv.report_md(r["restart"], "test split"), ""]
    return "\n".join(lines) + "\n"


def _monthly_md(months: list[dict[str, Any]]) -> list[str]:
    heads = " | ".join(f"{n} log-loss / AUC / ECE" for n in months[0]["scores"])
    lines = ["## Walk-forward by month (refitted on everything before the month)", "",
             f"| month | days | rate | {heads} | har_seasonal vs best other (log-loss) |",
             "|---" * (4 + len(months[0]["scores"])) + "|"]
    for m in months:
        sc = m["scores"]
        others = [n for n in sc if n != m["reference"]]
        best = min(others, key=lambda n: sc[n]["log_loss"]["value"])
        d = sc[best]["log_loss_diff"]
        ci = d["ci95"] or [float("nan")] * 2
        lines.append(f"| {m['month']} | {m['days']} | {m['rate']:.3f} | " + " | ".join(
            f"{sc[n]['log_loss']['value']:.4f} / {sc[n]['roc_auc']['value']:.4f} / {sc[n]['ece']['value']:.4f}"
            for n in sc) + f" | {d['verdict']} {best} ({d['value']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]) |")
    return [*lines, ""]


def to_markdown(res: dict[str, Any]) -> str:
    lines: list[str] = []
    for c, r in res["thresholds"].items():
        lines += [f"# Threshold {float(c):g} bp", "", "## Choices, on the validation split", "",
                  "| variant | QLIKE | log-loss (logistic) | log-loss (normal) | ECE (logistic) | ECE (normal) | AUC |",
                  "|---|---|---|---|---|---|---|"]
        for a in r["ablations_val"]:
            lines.append(f"| {a['variant']} | {a['qlike']:.4f} | {a['log_loss_logistic']:.4f} | "
                         f"{a['log_loss_normal']:.4f} | {a['ece_logistic']:.4f} | {a['ece_normal']:.4f} | "
                         f"{a['roc_auc']:.4f} |")
        lines += ["", f"Calibration chosen: {r['calib_choice']}", ""]
        for name, rep in (("Validation", r["val"]), ("Test", r["test"]),
                          *((f"Spot {n}", v) for n, v in r["spot"].items())):
            lines += [f"## {name}", "", *mv.to_markdown(rep), ""]
        heads = " | ".join(f"{n} log-loss / AUC / ECE" for n in r["monthly"][0]["scores"])
        lines += ["## Walk-forward by month (refitted on everything before the month)", "",
                  f"| month | days | rate | {heads} | har_seasonal vs best other (log-loss) |",
                  "|---" * (4 + len(r["monthly"][0]["scores"])) + "|"]
        for m in r["monthly"]:
            sc = m["scores"]
            others = [n for n in sc if n != m["reference"]]
            best = min(others, key=lambda n: sc[n]["log_loss"]["value"])
            d = sc[best]["log_loss_diff"]
            ci = d["ci95"] or [float("nan")] * 2
            lines.append(f"| {m['month']} | {m['days']} | {m['rate']:.3f} | " + " | ".join(
                f"{sc[n]['log_loss']['value']:.4f} / {sc[n]['roc_auc']['value']:.4f} / {sc[n]['ece']['value']:.4f}"
                for n in sc) + f" | {d['verdict']} {best} ({d['value']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]) |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
