"""``barsignal eval --model CHECKPOINT_OR_ARTIFACT --bars FILE... [--json]``: metrics next to baselines.

By default every full, labelled window of the given bars is scored (no split: test out of sample
by passing bars the model never saw); baselines are then fitted on those same windows, which
favours them. ``--split test`` rebuilds the training splits from the bars and scores the test split,
with baselines fitted on the train split (what docs/MODEL.md reports). No torch import at module
level; an ONNX artifact is scored through ``barsignal.engine`` without torch.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint or artifact on bar files against baselines")
    p.add_argument("--model", default=None,
                   help="checkpoint directory (barsignal train) or model artifact (default: the bundled one)")
    p.add_argument("--bars", nargs="+", required=True, metavar="FILE", help="bar files or directories")
    p.add_argument("--split", choices=["all", "test"], default="all",
                   help="all: every window of the bars (default); test: the chronological test split")
    p.add_argument("--out", default=None, help="write eval.md, eval.json and calibration.png here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch", type=int, default=1024)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from barsignal.model import evaluate
    from barsignal.model.dataset import DatasetSpec, all_windows, build, load_segments
    from barsignal.model.scoring import open_model

    scored = open_model(args.model)
    segments = load_segments(args.bars)
    if args.split == "test":
        splits = build(segments, DatasetSpec(window=scored.window, horizon=scored.horizon), scored.normalizer)
        fit, ev = splits.train, splits.test
    else:
        ev = all_windows(segments, scored.normalizer, scored.window, scored.horizon)
        fit = ev
    p = np.concatenate([scored.predict(ev.x(np.arange(s, min(s + args.batch, len(ev)))))
                        for s in range(0, len(ev), args.batch)])
    rep = evaluate.report(ev.labels, p, fit, ev, model_path=scored.path, kind=scored.kind,
                          split=args.split, horizon=scored.horizon,
                          baselines_fitted_on="train" if args.split == "test" else "evaluated windows")
    if args.out:
        evaluate.write(rep, p, args.out)
    if args.json:
        print(json.dumps(rep))
    else:
        sys.stdout.write(f"{scored.kind} {scored.path} on {len(ev):,} windows ({args.split}):\n\n")
        sys.stdout.write(evaluate.to_markdown(rep))
    return 0
