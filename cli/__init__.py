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
    "run": "barsignal.cli.run",
    "data": "barsignal.cli.data",
    "feed": "barsignal.cli.feed",
    "train": "barsignal.cli.train",
    "eval": "barsignal.cli.eval",
    "compress": "barsignal.cli.compress",
    "features": "barsignal.cli.features",
    "bench": "barsignal.cli.bench",
    "paper": "barsignal.cli.paper",
    "replay": "barsignal.cli.replay",
    "parity": "barsignal.cli.parity",
    "outbox": "barsignal.cli.outbox",
    "demo": "barsignal.cli.demo",
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
