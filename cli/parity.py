"""``barsignal parity --live-signals X --bars Y``: replay the bars the live daemon used and compare
signal by signal (same bars, p_up equal as float32 bits, same actions). Exit 1 on any difference.

A live bar record is replayed run by run, each through a fresh pipeline started from the state the
run started from (its ``run_start`` line: last signalled bar and rule state), exactly as the daemon
restarted; a bar signalled by two runs (killed between scoring and the outbox) counts once."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="replay recorded live bars and compare with the live signals")
    p.add_argument("--live-signals", required=True, metavar="X", help="the live signals JSONL (jsonl sink)")
    p.add_argument("--bars", required=True, nargs="+", metavar="Y",
                   help="the live bar record (<state>/bars) or bar files")
    p.add_argument("--config", default=None, help="the live daemon's TOML config")
    p.add_argument("--artifact", default=None, help="model artifact directory (default: [model] or bundled)")
    p.add_argument("--symbol", default=None, help="symbol (default: the first of [feed] symbols)")
    p.add_argument("--batch", type=int, default=256, help="windows scored per batch in the replay")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from barsignal.cli.replay import build_pipeline
    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.barlog import read_run_records
    from barsignal.daemon.paper.parity import compare
    from barsignal.daemon.paper.replay import is_barlog, load_bars, replay
    from barsignal.daemon.paper.signals_io import read_signals
    from barsignal.errors import ConfigError

    if args.batch < 1:
        raise ConfigError("--batch must be >= 1")
    cfg = cfgmod.load(args.config)
    symbol = args.symbol or cfg.feed.symbols[0]
    live = [s for s in read_signals(args.live_signals) if s.symbol == symbol]
    replayed: list = []
    logs = [p for p in args.bars if is_barlog(p)]
    if logs and len(logs) == len(args.bars):
        for path in logs:
            for run in read_run_records(path, symbol):
                pipe = build_pipeline(cfg, args.artifact, symbol, run.last_signalled, run.rule_state)
                replay(run.bars, pipe, on_signal=replayed.append, batch=args.batch)
    else:
        replay(load_bars(args.bars, symbol), build_pipeline(cfg, args.artifact, symbol),
               on_signal=replayed.append, batch=args.batch)
    res = compare(live, replayed)
    if res.ok:
        print(f"parity OK: {res.compared} signals compared, 0 differences "
              f"(p_up float32 bits and actions identical)")
        return 0
    print(f"parity FAILED: {len(res.differences)}{'+' if len(res.differences) >= 100 else ''} "
          f"difference(s) over {len(live)} live and {len(replayed)} replayed signals", file=sys.stderr)
    print(f"first difference: {res.differences[0]}", file=sys.stderr)
    return 1
