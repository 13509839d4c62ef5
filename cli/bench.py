"""``barsignal bench TARGET``: the benchmark targets of ``barsignal.bench.BENCHES``."""

from __future__ import annotations

import argparse
import importlib

from barsignal.bench import BENCHES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, module in BENCHES.items():
        mod = importlib.import_module(module)
        tp = targets.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        mod.add_arguments(tp)
        tp.set_defaults(func=mod.run)
