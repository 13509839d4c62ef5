"""The command line's one convention (docs/CLI.md), checked on every subcommand's real parser.

Every command that reports has ``--json``; a model is ``--artifact``, bar input ``--bars`` (files,
never a count), an output directory ``--out``; progress is ``--progress/--no-progress``; no bar
file is a bare positional. The older spellings stay as hidden aliases that parse to the same values.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from barsignal.cli import build_parser
from barsignal.cli import conventions as conv
from barsignal.cli import replay as replay_cli
from tests.conftest import run_cli

# Commands without --json, and why.
NO_JSON = {
    ("run",): "the daemon: it logs and serves /metrics, it prints no result",
    ("feed",): "prints its subcommands' help",
    ("feed", "serve"): "a server: it always prints one JSON line (its URLs) when ready",
}
# Visible positionals that are not bar input.
POSITIONALS = {("paper", "ingest"): {"signals"}}
# Old spellings no command may show in its help (they live on as hidden aliases).
OLD = {"--model", "--data", "--report", "--workdir"}
# ... except where the word means something else: compress's --workdir is the pipeline's working
# directory, which its stages read back (not an output directory only).
OLD_ALLOWED = {("compress",): {"--workdir"}} | {("compress", s): {"--workdir"} for s in
                                                 ("distill", "prune", "export", "quantize", "report", "engine",
                                                  "serving", "move", "drift-bounds", "all")}


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                        argparse.ArgumentParser]]:
    """Every command's parser, by its path (``("bench", "live")``); a command with optional
    subcommands (``compress``) is a command itself too."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs or (path and not any(a.required for a in subs)):
        if path:
            yield path, parser
    for a in subs:
        for name, p in a.choices.items():
            yield from leaves(p, (*path, name))


COMMANDS = dict(leaves(build_parser()))


def _visible(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.help is not argparse.SUPPRESS]


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(k) for k in COMMANDS}
    assert {"run", "eval", "train teacher", "train student", "replay", "parity", "paper status", "paper report",
            "paper ingest", "outbox status", "outbox dead", "outbox redrive", "bench live", "bench feed",
            "bench replay", "data inspect", "features check", "compress", "compress serving"} <= names
    assert len(COMMANDS) >= 30, names


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_follows_the_convention(path: tuple[str, ...]) -> None:
    p = COMMANDS[path]
    opts = {s: a for a in p._actions for s in a.option_strings}
    if path not in NO_JSON:
        assert "--json" in opts, f"barsignal {' '.join(path)} reports but has no --json"
        assert opts["--json"].nargs in (0, "?") and opts["--json"].help is not argparse.SUPPRESS
    for a in _visible(p):
        for s in a.option_strings:
            assert s not in OLD or s in OLD_ALLOWED.get(path, ()), f"{' '.join(path)}: {s} is an old spelling"
        if "progress" in a.dest or any("progress" in s for s in a.option_strings):
            assert isinstance(a, argparse.BooleanOptionalAction) and a.option_strings == ["--progress",
                                                                                         "--no-progress"], a
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction):
            assert a.dest in POSITIONALS.get(path, ()), f"{' '.join(path)}: bare positional {a.dest}; use --bars"
    if "--bars" in opts:
        assert opts["--bars"].type is None and opts["--bars"].nargs == "+", f"{' '.join(path)}: --bars is files"
        assert opts["--bars"].help is not argparse.SUPPRESS
    for flag in ("--artifact", "--out"):
        if flag in opts:
            assert opts[flag].help is not argparse.SUPPRESS and opts[flag].dest == flag[2:]
    text = p.format_help()
    for old in OLD - OLD_ALLOWED.get(path, set()):
        assert not re.search(re.escape(old) + r"(?![-\w])", text), f"{' '.join(path)} --help shows {old}"


def _parse(argv: list[str]) -> dict:
    ns = build_parser().parse_args(argv)
    if ns.command == "replay":
        replay_cli.resolve(ns)
    if "n_bars" in vars(ns):
        conv.count_from_bars(ns, "n_bars", "--n-bars")  # as those targets' run() do first
    return {k: v for k, v in vars(ns).items() if k != "func"}


ALIASES = [  # (old spelling, new spelling): the same values after parsing
    ("eval --model A --bars b.csv", "eval --artifact A --bars b.csv"),
    ("train student --data b.csv --out o", "train student --bars b.csv --out o"),
    ("train teacher --data a.csv b.csv --out o --no-progress",
     "train teacher --bars a.csv b.csv --out o --no-progress"),
    ("data inspect a.csv b.csv --json", "data inspect --bars a.csv b.csv --json"),
    ("features check a.csv", "features check --bars a.csv"),
    ("compress serving --data a.csv --artifact A", "compress serving --bars a.csv --artifact A"),
    ("replay a.csv b.csv --report R", "replay --bars a.csv b.csv --out R"),
    ("replay a.csv --signals s.jsonl", "replay --bars a.csv --signals s.jsonl"),
    ("bench live --bars 300 --data a.csv", "bench live --n-bars 300 --bars a.csv"),
    ("bench live --bars 300", "bench live --n-bars 300"),
    ("bench feed --bars 20 --data D", "bench feed --n-bars 20 --data-dir D"),
    ("feed serve --bars BTCUSDT=a.json --bars ETHUSDT=b.json", "feed serve --bars BTCUSDT=a.json ETHUSDT=b.json"),
    ("bench data --data D", "bench data --data-dir D"),
    ("bench features a.json --bars 100", "bench features --bars a.json --n-bars 100"),
    ("bench replay a.csv --limit 5", "bench replay --bars a.csv --limit 5"),
    ("paper ingest s.jsonl --progress", "paper ingest s.jsonl --progress"),
]


@pytest.mark.parametrize(("old", "new"), ALIASES, ids=[o for o, _ in ALIASES])
def test_old_spellings_still_parse_to_the_same_values(old: str, new: str) -> None:
    assert _parse(old.split()) == _parse(new.split())


def test_replay_defaults_write_both_outputs_under_out() -> None:
    d = _parse("replay --bars a.csv".split())
    assert (d["out"], d["signals"]) == (replay_cli.DEFAULT_OUT, f"{replay_cli.DEFAULT_OUT}/signals.jsonl")
    d = _parse("replay --bars a.csv --out R".split())
    assert (d["out"], d["signals"]) == ("R", "R/signals.jsonl")


def test_train_student_help_is_the_students_own() -> None:
    r = run_cli("train", "student", "--help", check=True)
    assert r.stdout.startswith("usage: barsignal train student ") and "--bars" in r.stdout
    assert "--data" not in r.stdout and "{teacher,student}" not in r.stdout
    r = run_cli("train", "--help", check=True)
    assert "teacher" in r.stdout and "student" in r.stdout
