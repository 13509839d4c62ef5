"""``barsignal bench TARGET``: speed and memory figures (never timed asserts; see docs/BENCHMARKS.md).

Each target module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

# target -> module. Add a line when a benchmark becomes real.
BENCHES: dict[str, str] = {
    "features": "barsignal.daemon.bench_features",
    "scoring": "barsignal.engine.bench",
    "replay": "barsignal.daemon.bench_replay",
    "data": "barsignal.daemon.data.bench",
    "feed": "barsignal.daemon.feed.bench",
    "live": "barsignal.daemon.bench_live",
    "train": "barsignal.model.bench_train",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, module in BENCHES.items():
        mod = importlib.import_module(module)
        tp = targets.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        mod.add_arguments(tp)
        tp.set_defaults(func=mod.run)
