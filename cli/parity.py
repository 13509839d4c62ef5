"""``barsignal parity --live-signals X --bars Y``: replay the bars the live daemon used and compare
signal by signal (same bars, p_up equal as float32 bits, same actions). Exit 1 on any difference.

A live bar record is replayed run by run, each through a fresh node (``build_node``, the daemon's
own assembly) started from the state the run started from (its ``run_start`` line: last signalled
bar, rule state and artifact), exactly as the daemon restarted. A SIGHUP model swap recorded in the
run (a ``swap`` line) is replayed where it happened: the recorded artifact and rule settings (the
record's ``rule``, whatever the config says now), its features warmed on
the same bars as live, the rule state carried over. A bar the live daemon dropped as invalid is
dropped (and counted) the same way. A bar signalled by two runs (killed between scoring and the
outbox) counts once. Every symbol of ``[feed] symbols`` is checked (``--symbol`` narrows it to one),
each with its own bar record files (``<SYMBOL>-<run>-<day>.jsonl``); exit 1 if any differs."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any

from barsignal.cli import conventions as conv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="replay recorded live bars and compare with the live signals")
    p.add_argument("--live-signals", required=True, metavar="X", help="the live signals JSONL (jsonl sink)")
    p.add_argument("--bars", required=True, nargs="+", metavar="Y",
                   help="the live bar record (<state>/bars) or bar files")
    p.add_argument("--config", default=None, help="the live daemon's TOML config")
    p.add_argument("--artifact", default=None, action="append",
                   help="model artifact directory (default: the one each run recorded, else [model] or "
                   "bundled); repeat to offer the artifacts of recorded swaps that moved since")
    p.add_argument("--symbol", default=None, help="check only this symbol (default: every one of [feed] "
                   "symbols, each replayed on its own and reported on its own line)")
    conv.add_json(p, "every symbol's result (ok, signals compared, differences)")
    p.set_defaults(func=_run)


def _manifest_hash(path: str | None) -> str | None:
    from barsignal.engine.artifact import MANIFEST, default_artifact_dir

    p = (Path(path) if path else default_artifact_dir()) / MANIFEST
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return None


def find_artifact(want: str, recorded_path: str | None, offered: list[str], cfg: Any) -> str | None:
    """The directory holding the artifact whose hash is ``want``: one of ``--artifact``, ``[model]
    artifact``, the recorded path, the bundled one (None), in that order. DataError if none does."""
    from barsignal.errors import DataError

    cands: list[str | None] = [*offered, cfg.model.artifact or None, recorded_path, None]
    for c in dict.fromkeys(cands):
        if _manifest_hash(c) == want:
            return c
    raise DataError(f"artifact {want[:12]} (recorded at {recorded_path}) is not at any of "
                    f"{[c or 'bundled' for c in dict.fromkeys(cands)]}: pass --artifact DIR holding it")


def _recorded_rule(loaded: Any, params: dict[str, Any] | None) -> Any:
    """``loaded`` with the rule settings the bar record holds (the live run's, whatever the config
    says now: an operator may change [signal] and reload); its state is restored by the node."""
    if params is not None:
        from barsignal.engine.signal import SignalRule

        if loaded.model.rule.params() != params:
            print(f"note: the record's [signal] settings {params} differ from the config's; replaying with "
                  "the record's (the live run's)", file=sys.stderr)
        loaded.model.rule = SignalRule.from_params(params)
    return loaded


async def replay_run(cfg: Any, run: Any, symbol: str, offered: list[str], out: list) -> int:
    """One bar-record run through a fresh node, swaps included; its signals appended to ``out``.
    Returns the bars dropped as invalid."""
    from barsignal.daemon.pipeline import warm
    from barsignal.data.intervals import check_interval
    from barsignal.features.bar import INTERVAL_MS
    from barsignal.node import Start, build_node, engine_cache_dir, load_model

    cache = engine_cache_dir(cfg)
    art = run.artifact or {}
    if art.get("hash"):
        first = find_artifact(art["hash"], art.get("path"), offered, cfg)
    else:  # a record from before artifacts were recorded: what the command line or config says
        first = offered[0] if offered else None
    loaded = _recorded_rule(load_model(cfg, first, cache), run.rule)
    node = build_node(cfg, "replay", symbol=symbol, loaded=loaded, start=Start(run.last_signalled, run.rule_state),
                      keep_bars=2 * loaded.keep_bars, on_signal=out.append)
    check_interval([b.open_time for b in run.bars], INTERVAL_MS, f"the bar record of {symbol}")
    await node.start()
    try:
        at = 0
        for sw in run.swaps:
            await node.replay(run.bars[at:sw.at])
            at = sw.at
            new = _recorded_rule(load_model(cfg, find_artifact(sw.artifact, sw.path, offered, cfg), cache), sw.rule)
            fed = [b for b in node.pipeline.recent if sw.warm_from is not None and b.open_time >= sw.warm_from]
            warm(new.model.features, fed, new.model.move)
            if len(fed) != sw.warm_bars:
                print(f"warning: run {run.id}: the swap at bar {sw.first_bar} warmed its features on "
                      f"{sw.warm_bars} bars live, {len(fed)} here", file=sys.stderr)
            node.swap(new, sw.warm_from, len(fed))
        await node.replay(run.bars[at:])
        await node.settle()
        return node.pipeline.stats.invalid
    finally:
        await node.close()


def _run(args: argparse.Namespace) -> int:
    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.paper.signals_io import read_signals

    cfg = cfgmod.load(args.config)
    symbols = [args.symbol.upper()] if args.symbol else [s.upper() for s in cfg.feed.symbols]
    offered: list[str] = args.artifact or []
    signals = list(read_signals(args.live_signals))
    known = set(symbols)
    others = sorted({s.symbol for s in signals} - known)
    if others and not args.symbol:
        print(f"warning: live signals of {others} are not in [feed] symbols: not checked (pass --config "
              "with the daemon's symbols, or --symbol)", file=sys.stderr)
    from barsignal.daemon.paper.replay import is_barlog
    from barsignal.errors import ConfigError

    if len(symbols) > 1 and not all(is_barlog(p) for p in args.bars):
        raise ConfigError(f"parity: bar files hold one symbol's bars, and [feed] symbols has {len(symbols)}: "
                          "pass --symbol SYMBOL (or the daemon's bar record, which has every symbol)")
    results = []
    for sym in symbols:
        live = [s for s in signals if s.symbol == sym]
        r = _check(cfg, args.bars, sym, offered, live)
        results.append(r)
        if not args.json:
            _print(r, prefix=f"{sym}: " if len(symbols) > 1 else "")
    failed = sum(not r["ok"] for r in results)
    if args.json:
        conv.print_json({"ok": not failed, "symbols": results})
    elif len(symbols) > 1:
        print(f"parity {'OK' if not failed else 'FAILED'}: {len(symbols) - failed} of {len(symbols)} symbols "
              "with 0 differences", file=sys.stdout if not failed else sys.stderr)
    return 1 if failed else 0


def _print(r: dict[str, Any], prefix: str = "") -> None:
    extra = (f"; {r['swaps']} model swap(s) replayed" if r["swaps"] else "") + \
        (f"; {r['invalid']} invalid bar(s) dropped as live dropped them" if r["invalid"] else "")
    if r["ok"]:
        print(f"{prefix}parity OK: {r['compared']} signals compared, 0 differences "
              f"(p_up float32 and p_move float64 bits, actions and regimes identical){extra}")
        return
    n = len(r["differences"])
    print(f"{prefix}parity FAILED: {n}{'+' if n >= 100 else ''} difference(s) over {r['live']} live and "
          f"{r['replayed']} replayed signals{extra}", file=sys.stderr)
    print(f"{prefix}first difference: {r['first_difference']}", file=sys.stderr)


def _check(cfg: Any, bars: list[str], symbol: str, offered: list[str], live: list) -> dict[str, Any]:
    """Parity of one symbol: ok, signals compared, the differences (at most 100), swaps, invalid bars."""
    from barsignal.daemon.barlog import read_run_records
    from barsignal.daemon.paper.parity import compare
    from barsignal.daemon.paper.replay import is_barlog, load_bars, replay
    from barsignal.node import build_node
    from barsignal.node import run as run_async

    replayed: list = []
    invalid = swaps = 0
    logs = [p for p in bars if is_barlog(p)]
    if logs and len(logs) == len(bars):
        for path in logs:
            for run in read_run_records(path, symbol):
                invalid += run_async(replay_run(cfg, run, symbol, offered, replayed))
                swaps += len(run.swaps)
    else:
        node = build_node(cfg, "replay", symbol=symbol, artifact_dir=offered[0] if offered else None,
                          on_signal=replayed.append)
        invalid = replay(load_bars(bars, symbol), node).invalid
    res = compare(live, replayed)
    return {"symbol": symbol, "ok": res.ok, "compared": res.compared, "live": len(live), "replayed": len(replayed),
            "differences": [dataclasses.asdict(d) for d in res.differences],
            "first_difference": str(res.differences[0]) if res.differences else None,
            "swaps": swaps, "invalid": invalid}
