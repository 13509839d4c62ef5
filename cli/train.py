"""``barsignal train teacher|student --bars FILE... --out DIR``: train an Informer on bar files.

Runs the same under ``torchrun --nproc-per-node N -m barsignal train ...`` (DDP: gloo on CPU, NCCL
on GPU). No torch import at module level: the handler imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from barsignal.cli import conventions as conv

KINDS = {"teacher": "the teacher Informer (the larger model that compress distils)",
         "student": "the student Informer (the compressed model's shape) directly on bars"}


def register(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser("train", help="train the Informer teacher or student on bar files",
                         description="Train an Informer on bar files: barsignal train teacher|student --bars FILE... "
                         "--out DIR (the same under torchrun --nproc-per-node N -m barsignal train).")
    kinds = top.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, text in KINDS.items():
        _arguments(kinds.add_parser(kind, help=f"train {text}", description=f"Train {text}."))


def _arguments(p: argparse.ArgumentParser) -> None:
    conv.add_bars(p, "bar files or directories (one directory = one source; gaps split segments)",
                  required=True, aliases=("--data",))
    conv.add_out(p, "checkpoint directory (best model + train_state.pt)", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256, help="global batch size (split across ranks)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--patience", type=int, default=3, help="epochs without a better val log-loss")
    p.add_argument("--max-train-windows", type=int, default=0,
                   help="windows per epoch, a fresh random subset each epoch (0 = all)")
    p.add_argument("--max-val-windows", type=int, default=0, help="evenly spaced val windows (0 = all)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop at the epoch end before this wall-time budget is passed (0 = none)")
    p.add_argument("--horizon", type=int, default=15,
                   help="label: direction of the close this many bars ahead (ties dropped); default 15, "
                        "chosen on validation (docs/MODEL.md)")
    p.add_argument("--flat-band", type=float, default=0.0,
                   help="k: moves with |r_h| <= k * rvol30 * sqrt(h) count as ties (dropped); 0 = exact ties")
    p.add_argument("--dropout", type=float, default=None, help="override the config's dropout")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any InformerConfig field (JSON value), e.g. --set distil=false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0 = torch default)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt when present")
    conv.add_progress(p, True, "the progress bar")
    conv.add_json(p, "the summary")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from barsignal.errors import ConfigError
    from barsignal.model.dataset import DatasetSpec, load_splits
    from barsignal.model.informer import Informer, describe, student_config, teacher_config
    from barsignal.model.train import TrainConfig, train

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    overrides: dict[str, object] = {} if args.dropout is None else {"dropout": args.dropout}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set distil=false")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    try:
        cfg = (teacher_config if args.kind == "teacher" else student_config)(**overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--set: {exc}") from None
    splits = load_splits(args.bars, DatasetSpec(horizon=args.horizon, flat_band=args.flat_band))
    command = "barsignal " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    tc = TrainConfig(kind=args.kind, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=args.weight_decay, patience=args.patience,
                     max_train_windows=args.max_train_windows, max_val_windows=args.max_val_windows,
                     max_minutes=args.max_minutes, seed=args.seed, device=args.device,
                     progress=args.progress,
                     meta={"data": [str(p) for p in args.bars], "command": command,
                           "threads": torch.get_num_threads()})
    print(describe(Informer(cfg)), file=sys.stderr)
    summary = train(splits, cfg, tc, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        last = summary["history"][-1] if summary["history"] else {}
        print(f"{args.kind}: {summary['epochs_run']} epochs ({summary['stop']}), best val log-loss "
              f"{summary['best_val_logloss']:.5f}, {last.get('windows_per_s', 0):,.0f} windows/s; "
              f"checkpoint in {args.out}")
    return 0
