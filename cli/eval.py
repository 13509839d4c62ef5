"""``barsignal eval [--artifact ARTIFACT_OR_CHECKPOINT] --bars FILE...``: the model against train-fitted baselines.

Direction AUC (non-tied windows), log-loss and Brier for the model and every baseline, each with a
95 % CI from resampling whole days, and a verdict per baseline that says "beats" only when the CI of
the difference excludes 0; then the trading figures of the artifact's policy on the same consecutive
bars (``SignalRule`` + the paper broker: net PnL after costs, round trips, t-statistic). When the
artifact has a ``move`` section, the size of the move beside it: QLIKE, log-loss, Brier, AUC and ECE
of its ``har_seasonal`` forecast and of its shipped move baselines, with CIs (``model/move.py``).

Baselines: an artifact ships its own, fitted on its training split, so any bars are compared with
the same baselines. For a checkpoint (or an older artifact without them) they are fitted on the
train split of the given bars with ``--split test``, else on the evaluated windows themselves
(in-sample, which favours them; the report says so). ``--split test`` rebuilds the chronological
splits of the bars and scores the test split. ``--walk-forward K`` also reports K consecutive folds.
No torch import at module level; an ONNX artifact is scored through ``barsignal.engine`` without torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from barsignal.cli import conventions as conv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint or artifact on bar files against baselines")
    conv.add_artifact(p, "model artifact or checkpoint directory (barsignal train) (default: the bundled artifact)",
                      aliases=("--model",), default=None)
    conv.add_bars(p, "bar files or directories", required=True)
    p.add_argument("--split", choices=["all", "test"], default="all",
                   help="all: every window of the bars (default); test: the chronological test split")
    p.add_argument("--walk-forward", type=int, default=0, metavar="K",
                   help="also report K consecutive chronological folds of the evaluated bars")
    p.add_argument("--bootstrap", type=int, default=500, metavar="N", help="day-block resamples per CI")
    conv.add_out(p, "write eval.md, eval.json and calibration.png here", default=None)
    conv.add_json(p, "the report")
    p.add_argument("--batch", type=int, default=1024)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from barsignal.engine.policy import Policy
    from barsignal.errors import ConfigError
    from barsignal.model import baselines as bl
    from barsignal.model import evaluate
    from barsignal.model.dataset import DatasetSpec, all_windows, build, load_segments
    from barsignal.model.scoring import open_model

    if args.walk_forward < 0 or args.walk_forward == 1:
        raise ConfigError(f"--walk-forward {args.walk_forward}: give K >= 2 folds (or 0 for none)")
    scored = open_model(args.artifact)
    segments = load_segments(args.bars)
    spec = DatasetSpec(window=scored.window, horizon=scored.horizon, flat_band=scored.flat_band)
    splits = None
    if args.split == "test":
        splits = build(segments, spec, scored.normalizer)
        assert splits.test_all is not None
        ev, fit = splits.test_all, splits.train
    else:
        ev = all_windows(segments, scored.normalizer, scored.window, scored.horizon, scored.flat_band)
        fit = None
    manifest = scored.manifest or {}
    if manifest.get("baselines"):
        params, fitted_on = manifest["baselines"], "shipped in the artifact (fitted on its training split)"
    elif fit is not None:
        params, fitted_on = bl.fit(fit, scored.flat_band), "fitted on the train split of these bars"
    else:
        params = bl.fit(ev, scored.flat_band)
        fitted_on = "fitted IN-SAMPLE on the evaluated windows (no shipped baselines): this favours them"
    p = np.concatenate([scored.predict(ev.x(np.arange(s, min(s + args.batch, len(ev)))))
                        for s in range(0, len(ev), args.batch)]) if len(ev) else np.zeros(0)
    policy = Policy.from_manifest(manifest["signal"]) if manifest.get("signal") else None
    rep = evaluate.report(ev, p, params, policy=policy, walk_forward=args.walk_forward, n_boot=args.bootstrap,
                          model_path=scored.path, kind=scored.kind, split=args.split, horizon=scored.horizon,
                          flat_band=scored.flat_band, baselines_fitted_on=fitted_on)
    rep["move"] = _move(manifest, segments, ev, splits, scored.horizon, args)
    best = (manifest.get("signal") or {}).get("best_candidate")
    if policy is not None and policy.policy == "flat" and best:
        rep["trading_best_candidate"] = evaluate.trading(ev, p, Policy(**best["policy"]))
    if args.out:
        evaluate.write(rep, p, args.out)
    if args.json:
        print(json.dumps(rep, default=str))
    else:
        sys.stdout.write(f"{scored.kind} {scored.path} on {len(ev):,} windows ({args.split}, label: direction "
                         f"over {scored.horizon} bars, ties dropped):\n\n")
        sys.stdout.write(evaluate.to_markdown(rep))
        if "trading_best_candidate" in rep:
            sys.stdout.write("\nNot shipped, for reference - the best validation candidate on these bars: "
                             + evaluate.trading_md(rep["trading_best_candidate"])[0] + "\n")
    return 0


def _move(manifest: dict, segments: list, ev: object, splits: object, horizon: int,
          args: argparse.Namespace) -> dict | None:
    """The move-size forecasts on the evaluated windows: the artifact's ``move`` section, or fitted on
    the train split of these bars (``--split test``, threshold 20 bp); None without either."""
    from barsignal.model import move as mv

    mb = mv.MoveBars.of(segments)
    if manifest.get("move"):
        fitted, on = mv.from_manifest(manifest["move"]), "shipped in the artifact (fitted on its training split)"
    elif splits is not None:
        fitted = mv.fit(mb, splits.train, splits.val_all, horizon, 20.0)  # type: ignore[attr-defined]
        on = "fitted on the train split of these bars (the model has no move section)"
    else:
        return None
    return {"fitted_on": on, **mv.report(fitted, mb, ev, walk_forward=args.walk_forward,  # type: ignore[arg-type]
                                         n_boot=args.bootstrap)}
