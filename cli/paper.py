"""``barsignal paper status|report|ingest``: the paper account in the ledger."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from barsignal.cli import conventions as conv

_SIDE = {1: "long", -1: "short", 0: "flat"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("paper", help="paper trading: position and PnL, backtest report, apply signals")
    cmds = p.add_subparsers(dest="paper_cmd", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", default=None, help="TOML config (default: embedded defaults)")
        q.add_argument("--ledger", default=None,
                       help="ledger file (default: [paper] ledger under the [state] dir)")

    st = cmds.add_parser("status", help="print the position and PnL per symbol")
    common(st)
    conv.add_json(st, "every symbol's account")
    st.set_defaults(func=_status)
    rp = cmds.add_parser("report", help="write the backtest report (Markdown + PNG) from the ledger")
    common(rp)
    conv.add_out(rp, "output directory (default: ./report)", default="report")
    rp.add_argument("--symbol", default=None, help="symbol (default: the first in the ledger). The file is "
                    "report.md for a ledger of one symbol, report_<SYMBOL>.md for a ledger of several")
    conv.add_json(rp, "the report's path and symbol")
    rp.add_argument("--artifact", default=None, metavar="DIR",
                    help="the artifact that made the signals: its policy explains a run without trades and its "
                         "move horizon and threshold score p_move (default: none; the section says so)")
    rp.set_defaults(func=_report)
    ig = cmds.add_parser("ingest", help="apply a signals JSONL (live format) to the ledger, idempotently")
    common(ig)
    ig.add_argument("signals", help="signals JSONL, e.g. the jsonl sink's file or replay --signals; "
                    "- reads standard input as it arrives")
    conv.add_progress(ig, False, "print each applied signal's open time, one line each")
    ig.add_argument("--durability", choices=["full", "normal", "off"], default="normal",
                    help="SQLite synchronous level (default normal: a crash loses nothing committed)")
    conv.add_json(ig, "the counts applied and already in the ledger")
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
        path = ledger_path(cfg.paper, cfgmod.state_dir(cfg.state))  # as the daemon does
    if must_exist and not path.is_file():
        raise ConfigError(f"{path}: no paper ledger here; run the daemon with the paper sink, "
                          "`barsignal replay`, or pass --ledger PATH")
    return PaperLedger(path, Rules.from_config(cfg.paper), durability)  # type: ignore[arg-type]


def pending_order(qty: float, pending_dir: int | None) -> str | None:
    """The order the next open fills, in words ("go long", "go flat", ...); None when there is none
    (nothing queued, or the queued direction is where the position already is)."""
    side = (qty > 0) - (qty < 0)
    if pending_dir is None or pending_dir == side:
        return None
    return f"go {_SIDE[pending_dir]}"


def _status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    with _open(args) as led:
        syms = led.symbols()
        if not syms and not args.json:
            print(f"{led.path}: no signals applied yet")
            return 0
        accounts = []
        for sym in syms:
            a = led.account(sym)
            assert a is not None
            mark = a.last_close
            eq = a.equity(mark)
            accounts.append({
                "symbol": sym, "side": _SIDE[(a.qty > 0) - (a.qty < 0)], "qty": a.qty, "avg_price": a.avg_price,
                "last_open_time": a.last_open_time, "last_close": mark,
                "pending_order": pending_order(a.qty, a.pending_dir), "cash": a.cash, "equity": eq,
                "return": eq / led.rules.initial_cash - 1, "realized": a.realized,
                "unrealized": a.unrealized(mark), "fees": a.fees, "bars": a.bars})
        if args.json:
            conv.print_json({"ledger": str(led.path), "accounts": accounts})
            return 0
        for x in accounts:
            when = datetime.fromtimestamp((x["last_open_time"] or 0) / 1000, UTC).strftime("%Y-%m-%d %H:%M")
            order = f"order pending for next open: {x['pending_order']}" if x["pending_order"] else "no order pending"
            print(f"{x['symbol']}: {x['side']} {x['qty']:.8f} @ {x['avg_price']:.2f}  last bar {when} UTC close "
                  f"{x['last_close']:.2f}  {order}")
            print(f"  cash {x['cash']:,.2f}  equity {x['equity']:,.2f}  return {x['return'] * 100:+.2f} %"
                  f"  realized {x['realized']:+,.2f}  unrealized {x['unrealized']:+,.2f}  fees {x['fees']:,.2f}"
                  f"  bars {x['bars']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from barsignal.daemon.paper.report import write_report

    art = None
    if args.artifact:
        from barsignal.engine.artifact import load_artifact

        art = load_artifact(args.artifact)
    with _open(args) as led:
        md = write_report(led, args.out, args.symbol, artifact=art)
        symbol = args.symbol or led.symbols()[0]
    if args.json:
        conv.print_json({"report": str(md), "symbol": symbol})
    else:
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
                if args.progress:  # on stderr beside --json: stdout carries the one document
                    out = sys.stderr if args.json else sys.stdout
                    out.write(f"{s.open_time}\n")
                    out.flush()
    if args.json:
        conv.print_json({"applied": applied, "already_in_ledger": dup})
    else:
        print(f"applied {applied}, already in the ledger {dup}", file=sys.stderr)
    return 0
