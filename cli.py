"""The ``barsignal`` command line. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.

Each subcommand lives in the subpackage it belongs to and exposes ``register(subparsers)``;
it must not import torch at module level (handlers import heavy things lazily).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from barsignal import __version__
from barsignal.errors import BarsignalError

# name -> module with register(subparsers). Order is the order of --help.
COMMANDS: dict[str, str] = {
    "run": "barsignal.daemon.run_cli",
    "data": "barsignal.daemon.data.cli",
    "feed": "barsignal.daemon.feed.cli",
    "train": "barsignal.model.cli",
    "eval": "barsignal.model.eval_cli",
    "compress": "barsignal.compression.cli",
    "features": "barsignal.daemon.features_cli",
    "bench": "barsignal.bench",
    "paper": "barsignal.daemon.paper.cli",
    "replay": "barsignal.daemon.replay_cli",
    "parity": "barsignal.daemon.parity_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="barsignal",
        description="Real-time trading signals from Binance 1-minute klines, scored by a compressed Informer.",
    )
    parser.add_argument("--version", action="version", version=f"barsignal {__version__}")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default=None, choices=["auto", "json", "console"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    from barsignal import log

    log.configure(level=args.log_level or "info", fmt=args.log_format or "auto")
    try:
        return int(args.func(args) or 0)
    except BarsignalError as exc:
        print(f"barsignal {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
