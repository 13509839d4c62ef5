"""``barsignal outbox status|dead|redrive``: what the outbox holds, and re-sending dead letters.

A dead letter is a signal a sink's receiver refused for good (e.g. webhook 401/404): it stays in
the outbox with the status and reason. ``redrive`` makes them pending again; the daemon sends them
at its next start. It takes the state directory's lock, so it refuses while a daemon runs there
(stop it, redrive, start it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from barsignal.cli import conventions as conv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("outbox", help="the outbox: pending signals, dead letters, redrive")
    cmds = p.add_subparsers(dest="outbox_cmd", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--state-dir", default=None, help="the daemon's state directory "
                       "(default: [state] dir of --config)")
        q.add_argument("--config", default=None, help="TOML config (default: embedded defaults)")
        q.add_argument("--sink", default=None, help="only this sink (default: every sink)")

    st = cmds.add_parser("status", help="signals pending and dead letters, per sink")
    common(st)
    conv.add_json(st, "the counts per sink")
    st.set_defaults(func=_status)
    dd = cmds.add_parser("dead", help="list the dead letters (one JSON line each)")
    common(dd)
    conv.add_json(dd, "the dead letters as one list")
    dd.set_defaults(func=_dead)
    rd = cmds.add_parser("redrive", help="make dead letters pending again (the daemon must be stopped; "
                         "it sends them at its next start)")
    common(rd)
    conv.add_json(rd, "how many were made pending")
    rd.set_defaults(func=_redrive)


def _state(args: argparse.Namespace) -> Path:
    from barsignal.errors import ConfigError

    if args.state_dir:
        state = Path(args.state_dir)
    else:
        from barsignal.daemon import config as cfgmod
        from barsignal.node import state_dir

        state = state_dir(cfgmod.load(args.config))
    if not (state / "outbox.sqlite").is_file():
        raise ConfigError(f"{state}: no outbox.sqlite here; give the daemon's state directory (--state-dir)")
    return state


def _status(args: argparse.Namespace) -> int:
    from barsignal.daemon.outbox import Outbox

    ob = Outbox(_state(args) / "outbox.sqlite", ())
    try:
        dead = ob.dead_counts()
        sinks = {sink: {"pending": ob.depth(sink), "dead": dead.get(sink, 0)}
                 for sink in sorted(set(ob.sinks_pending()) | set(dead)) if args.sink in (None, sink)}
    finally:
        ob.close()
    if args.json:
        conv.print_json({"sinks": sinks, "pending": sum(v["pending"] for v in sinks.values()),
                         "dead": sum(v["dead"] for v in sinks.values())})
        return 0
    if not sinks:
        print(f"outbox{' for ' + args.sink if args.sink else ''}: empty (0 pending, 0 dead)")
    for sink, v in sinks.items():
        print(f"{sink}: {v['pending']} pending, {v['dead']} dead letters")
    return 0


def _dead(args: argparse.Namespace) -> int:
    import orjson

    from barsignal.daemon.outbox import Outbox

    ob = Outbox(_state(args) / "outbox.sqlite", ())
    try:
        letters = ob.dead_letters(args.sink)
    finally:
        ob.close()
    if args.json:
        conv.print_json(letters)
        return 0
    if not letters:  # on stderr: standard output stays one JSON line per dead letter
        print(f"outbox: no dead letters{' for ' + args.sink if args.sink else ''}", file=sys.stderr)
    for d in letters:
        print(orjson.dumps(d).decode())
    return 0


def _redrive(args: argparse.Namespace) -> int:
    from barsignal.daemon.outbox import Outbox
    from barsignal.daemon.statelock import StateLock

    state = _state(args)
    with StateLock(state):  # refused (exit 2, naming the PID) while a daemon runs on this directory
        ob = Outbox(state / "outbox.sqlite", ())
        try:
            n = ob.redrive(args.sink)
        finally:
            ob.close()
    if args.json:
        conv.print_json({"redriven": n, "sink": args.sink})
        return 0
    print(f"redrive: {n} dead letter{'s' if n != 1 else ''} pending again"
          f"{' for ' + args.sink if args.sink else ''}; the daemon sends them at its next start")
    return 0
