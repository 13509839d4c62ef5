"""``barsignal replay BARS...``: history through the live pipeline -> signals JSONL + backtest report.

BARS are market-data files in any loader format (CSV, zip, freqtrade JSON, Parquet, the output of
``barsignal data download``) or the live daemon's bar record (``<state>/bars``, keeps ws/rest).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay historical bars through the live pipeline; signals + report")
    p.add_argument("bars", nargs="+", metavar="BARS", help="bar files or a bar-record directory")
    p.add_argument("--config", default=None, help="TOML config ([features], [model], [engine], [signal], "
                   "[paper] apply as live)")
    p.add_argument("--artifact", default=None, help="model artifact directory (default: [model] or bundled)")
    p.add_argument("--signals", default=None, metavar="PATH", help="write the signals JSONL (live format)")
    p.add_argument("--report", default=None, metavar="DIR", help="write the backtest report (Markdown + PNG)")
    p.add_argument("--ledger", default=None, help="paper ledger file (default: DIR/paper.sqlite with "
                   "--report, else an in-memory ledger)")
    p.add_argument("--symbol", default=None, help="symbol of the bars (default: the first of [feed] symbols)")
    p.add_argument("--batch", type=int, default=256, help="windows scored per batch; 1 = one by one "
                   "(the live path); the same signals either way")
    p.add_argument("--threads", type=int, default=None,
                   help="scoring threads for this replay (default: [engine] intra_op_threads, the live setting)")
    p.set_defaults(func=_run)


def with_threads(cfg: Any, threads: int | None) -> Any:
    """``cfg`` with ``[engine] intra_op_threads`` replaced (replay is about throughput, live about latency)."""
    if not threads:
        return cfg
    import msgspec

    from barsignal.errors import ConfigError

    if threads < 1:
        raise ConfigError("--threads must be >= 1")
    return msgspec.structs.replace(cfg, engine=msgspec.structs.replace(cfg.engine, intra_op_threads=threads))


def build_pipeline(cfg: Any, artifact: str | None, symbol: str, last_signalled: int | None = None,
                   rule_state: Any = None) -> Any:
    """The live daemon's pipeline for ``symbol``: the model built by the daemon's own
    ``app.load_model`` (features, scorer, rule, optionally from ``rule_state``) and the same
    warm-up (``min_bars``) as live."""
    from barsignal.daemon.app import load_model, state_dir
    from barsignal.daemon.pipeline import Pipeline

    cache = cfg.engine.engine_cache_dir or None
    loaded = load_model(cfg, artifact, Path(cache) if cache else state_dir(cfg) / "engines", rule_state)
    return Pipeline(symbol, loaded.model, last_signalled=last_signalled, min_bars=loaded.warmup_bars)


def _run(args: argparse.Namespace) -> int:
    import time

    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.paper.broker import Rules
    from barsignal.daemon.paper.ledger import PaperLedger
    from barsignal.daemon.paper.replay import load_bars, replay
    from barsignal.daemon.paper.report import write_report
    from barsignal.errors import ConfigError
    from barsignal.log import get_logger

    log = get_logger("barsignal.daemon.replay")
    if args.batch < 1:
        raise ConfigError("--batch must be >= 1")
    cfg = with_threads(cfgmod.load(args.config), args.threads)
    symbol = args.symbol or cfg.feed.symbols[0]
    t0 = time.perf_counter()
    bars = list(load_bars(args.bars, symbol))
    t_load = time.perf_counter() - t0
    pipeline = build_pipeline(cfg, args.artifact, symbol)
    rules = Rules.from_config(cfg.paper)
    if args.ledger:
        ledger_path: str = args.ledger
    elif args.report:
        ledger_path = str(Path(args.report) / "paper.sqlite")
        Path(ledger_path).unlink(missing_ok=True)  # a fresh backtest each run
    else:
        ledger_path = ":memory:"
    with PaperLedger(ledger_path, rules, durability="off") as ledger:
        res = replay(bars, pipeline, ledger=ledger, signals_path=args.signals, batch=args.batch)
        md = write_report(ledger, args.report, symbol) if args.report and res.signals else None
    total = time.perf_counter() - t0
    log.info("replay done", bars=res.bars, signals=res.signals, fills=res.fills, load_s=round(t_load, 3),
             **{f"{k}_s": round(v, 3) for k, v in res.seconds.items()}, total_s=round(total, 3),
             bars_per_s=round(res.bars / total) if total else None)
    print(f"replayed {res.bars} bars -> {res.signals} signals, {res.fills} fills in {total:.2f} s"
          + (f"; signals {args.signals}" if args.signals else "") + (f"; report {md}" if md else ""),
          file=sys.stderr)
    if args.report and not res.signals:
        print("no signals (too few bars to warm up the features?): no report written", file=sys.stderr)
    return 0
