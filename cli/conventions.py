"""The command line's one convention (docs/CLI.md), as the helpers every subcommand defines it with.

``--json``: the result as one JSON document on stdout. ``--artifact DIR``: a model.
``--bars FILE...``: bar input. ``--out DIR``: an output directory. ``--progress/--no-progress``:
progress output. An older spelling is kept as a hidden alias (no help line) with the same dest,
so that it parses to the same value.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

SUPPRESS = argparse.SUPPRESS


def alias(p: Any, flag: str, dest: str, **kw: Any) -> None:
    """``flag`` as a hidden alias of the option stored in ``dest`` (not in --help, same value)."""
    p.add_argument(flag, dest=dest, default=SUPPRESS, help=SUPPRESS, **kw)


def add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as one JSON document on stdout")


def add_artifact(p: argparse.ArgumentParser, help: str, *, aliases: tuple[str, ...] = (), **kw: Any) -> None:
    p.add_argument("--artifact", metavar="DIR", help=help, **kw)
    for a in aliases:
        alias(p, a, "artifact", metavar="DIR")


def add_out(p: argparse.ArgumentParser, help: str, *, aliases: tuple[str, ...] = (), **kw: Any) -> None:
    p.add_argument("--out", metavar="DIR", help=help, **kw)
    for a in aliases:
        alias(p, a, "out", metavar="DIR")


def add_progress(p: argparse.ArgumentParser, default: bool, help: str) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=default,
                   help=f"{help} (default: {'on' if default else 'off'})")


def add_bars(p: argparse.ArgumentParser, help: str, *, required: bool = False, aliases: tuple[str, ...] = (),
             positional: bool = False, metavar: str = "FILE") -> None:
    """``--bars FILE...`` (repeatable), with hidden ``aliases`` (e.g. ``--data``) and, with
    ``positional``, bare FILE arguments as a hidden alias too; all of them add to the same list.
    ``required``: one of them must be given."""
    if not aliases and not positional:
        p.add_argument("--bars", nargs="+", action="extend", required=required, metavar=metavar, help=help)
        return
    g: Any = p.add_mutually_exclusive_group(required=True) if required else p
    g.add_argument("--bars", nargs="+", action="extend", metavar=metavar, help=help)
    for a in aliases:
        alias(g, a, "bars", nargs="+", action="extend", metavar=metavar)
    if positional:
        g.add_argument("bars", nargs="*", action="extend", default=SUPPRESS, help=SUPPRESS, metavar=metavar)


def print_json(obj: Any) -> None:
    """``obj`` as one JSON document (one line) on stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def count_from_bars(args: Any, dest: str, flag: str) -> None:
    """The older spelling ``--bars N`` of a count now spelt ``flag``: one all-digit ``--bars`` value
    that names no file is taken as the count (``dest``), with a note on stderr; the rest stay bar files."""
    from pathlib import Path

    bars = getattr(args, "bars", None) or []
    counts = [b for b in bars if b.isdigit() and not Path(b).exists()]
    if len(counts) == 1:
        setattr(args, dest, int(counts[0]))
        args.bars = [b for b in bars if b != counts[0]] or None
        print(f"note: --bars {counts[0]} is read as {flag} {counts[0]}; --bars names bar files", file=sys.stderr)
