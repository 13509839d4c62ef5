"""``barsignal paper status|report|ingest``: the paper account in the ledger."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("paper", help="paper trading: position and PnL, backtest report, apply signals")
    cmds = p.add_subparsers(dest="paper_cmd", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", default=None, help="TOML config (default: embedded defaults)")
        q.add_argument("--ledger", default=None,
                       help="ledger file (default: [paper] ledger under the [state] dir)")

    st = cmds.add_parser("status", help="print the position and PnL per symbol")
    common(st)
    st.set_defaults(func=_status)
    rp = cmds.add_parser("report", help="write the backtest report (Markdown + PNG) from the ledger")
    common(rp)
    rp.add_argument("--out", default="report", help="output directory (default: ./report)")
    rp.add_argument("--symbol", default=None, help="symbol (default: the first in the ledger)")
    rp.add_argument("--artifact", default=None, metavar="DIR",
                    help="the artifact that made the signals: its policy explains a run without trades and its "
                         "move horizon and threshold score p_move (default: none; the section says so)")
    rp.set_defaults(func=_report)
    ig = cmds.add_parser("ingest", help="apply a signals JSONL (live format) to the ledger, idempotently")
    common(ig)
    ig.add_argument("signals", help="signals JSONL, e.g. the jsonl sink's file or replay --signals; "
                    "- reads standard input as it arrives")
    ig.add_argument("--progress", action="store_true", help="print one line per signal applied")
    ig.add_argument("--durability", choices=["full", "normal", "off"], default="normal",
                    help="SQLite synchronous level (default normal: a crash loses nothing committed)")
    ig.set_defaults(func=_ingest)


def _open(args: argparse.Namespace, must_exist: bool = True, durability: str = "normal"):  # -> PaperLedger
    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.paper.ledger import PaperLedger
    from barsignal.daemon.paper.sink import ledger_path
    from barsignal.engine.broker import Rules
    from barsignal.errors import ConfigError

    cfg = cfgmod.load(args.config)
    if args.ledger:
        path = Path(args.ledger)
    else:
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0] or cfg.state.dir  # as the daemon does
        path = ledger_path(cfg.paper, Path(state))
    if must_exist and not path.is_file():
        raise ConfigError(f"{path}: no paper ledger here; run the daemon with the paper sink, "
                          "`barsignal replay`, or pass --ledger PATH")
    return PaperLedger(path, Rules.from_config(cfg.paper), durability)  # type: ignore[arg-type]


def _status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    with _open(args) as led:
        syms = led.symbols()
        if not syms:
            print(f"{led.path}: no signals applied yet")
            return 0
        for sym in syms:
            a = led.account(sym)
            assert a is not None
            mark = a.last_close
            eq = a.equity(mark)
            when = datetime.fromtimestamp((a.last_open_time or 0) / 1000, UTC).strftime("%Y-%m-%d %H:%M")
            side = "long" if a.qty > 0 else "short" if a.qty < 0 else "flat"
            pending = {1: "long", -1: "short", 0: "flat", None: "-"}[a.pending_dir]
            print(f"{sym}: {side} {a.qty:.8f} @ {a.avg_price:.2f}  last bar {when} UTC close {mark:.2f}  "
                  f"order pending for next open: {pending}")
            ret = (eq / led.rules.initial_cash - 1) * 100
            print(f"  cash {a.cash:,.2f}  equity {eq:,.2f}  return {ret:+.2f} %"
                  f"  realized {a.realized:+,.2f}  unrealized {a.unrealized(mark):+,.2f}  fees {a.fees:,.2f}"
                  f"  bars {a.bars}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from barsignal.daemon.paper.report import write_report

    art = None
    if args.artifact:
        from barsignal.engine.artifact import load_artifact

        art = load_artifact(args.artifact)
    with _open(args) as led:
        md = write_report(led, args.out, args.symbol, artifact=art)
    print(md)
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from barsignal.daemon.paper.signals_io import read_signals

    applied = dup = 0
    with _open(args, must_exist=False, durability=args.durability) as led:
        for s in read_signals(args.signals):
            if led.apply(s).duplicate:
                dup += 1
            else:
                applied += 1
                if args.progress:
                    sys.stdout.write(f"{s.open_time}\n")
                    sys.stdout.flush()
    print(f"applied {applied}, already in the ledger {dup}", file=sys.stderr)
    return 0
