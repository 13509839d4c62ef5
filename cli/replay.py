"""``barsignal replay --bars [SYMBOL=]FILE...``: history through the live node -> signals JSONL + backtest report.

Bars are market-data files in any loader format (CSV, zip, freqtrade JSON, Parquet, the output of
``barsignal data download``) or the live daemon's bar record (``<state>/bars``, keeps ws/rest).
The node is the live one (``barsignal.node.build_node``): each signal goes into an outbox (in
``--state-dir``, else a temporary directory) and from there through the live sink workers to the
live jsonl sink (``--signals``, default ``OUT/signals.jsonl``) and paper sink (the ledger,
``OUT/paper.sqlite``); the report is ``OUT/report.md``, with ``--out`` ./replay by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from barsignal.cli import conventions as conv

DEFAULT_OUT = "replay"  # the output directory when --out is not given, under the working directory


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay historical bars through the live pipeline; signals + report")
    p.add_argument("--bars", dest="symbol_bars", nargs="+", action="extend", default=[],
                   metavar="[SYMBOL=]FILE",
                   help="bar files or a bar-record directory: FILE[,FILE...] for one symbol (--symbol), "
                   "SYMBOL=FILE[,FILE...] for each of several (each replayed on its own, --jobs at a time, with its "
                   "own outbox and paper account; the signals merged in this order, reports OUT/report_<SYMBOL>.md "
                   "and OUT/report.md for the total)")
    p.add_argument("bars", nargs="*", metavar="BARS", help=argparse.SUPPRESS)  # the older spelling of --bars FILE
    p.add_argument("--jobs", type=int, default=1, metavar="K",
                   help="symbols replayed in parallel processes (default 1); the results do not depend on K")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the symbols as tasks on Ray (the cluster extra: pip install 'barsignal[cluster]'): "
                   "local (a Ray runtime started here, with --jobs CPUs if K > 1, else all of this machine's), "
                   "auto, ray://HOST:PORT or HOST:PORT. One task per symbol (a month is not split off: "
                   "the recursive features, the rule and the paper account carry over a month's end); each "
                   "replays in a temporary directory of its own and returns its files, merged as with --jobs "
                   "(same signals, ledgers and reports). Bar files, --config and --artifact are read at "
                   "these absolute paths on the nodes; --state-dir is not supported")
    p.add_argument("--config", default=None, help="TOML config ([features], [model], [engine], [signal], "
                   "[paper] apply as live)")
    p.add_argument("--artifact", default=None, help="model artifact directory (default: [model] or bundled)")
    conv.add_out(p, f"output directory: the signals (signals.jsonl), the backtest report (report.md + PNG) and "
                 f"the paper ledger (paper.sqlite) (default: ./{DEFAULT_OUT})", aliases=("--report",), default=None)
    p.add_argument("--signals", default=None, metavar="PATH",
                   help="write the signals JSONL (live format) here instead (default: OUT/signals.jsonl)")
    p.add_argument("--ledger", default=None, help="paper ledger file (default: OUT/paper.sqlite)")
    p.add_argument("--state-dir", default=None, metavar="DIR", help="the replay's outbox "
                   "directory; given, a second replay resumes where the first stopped (default: temporary)")
    p.add_argument("--symbol", default=None, help="symbol of the bars (default: the first of [feed] symbols)")
    p.add_argument("--threads", type=int, default=None,
                   help="scoring threads for this replay (default: [engine] intra_op_threads, the live setting)")
    conv.add_json(p, "the counts and the paths written")
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


def replay_sinks(cfg: Any, state: Path, *, signals: str | Path | None, ledger: str | Path | None) -> list[Any]:
    """The live sinks a replay feeds: the jsonl sink writing ``signals`` (no fsync) and the paper sink
    on ``ledger`` (durability off: a backtest is re-run, not recovered; no line per fill)."""
    import msgspec

    from barsignal.daemon.config import JsonlSinkConfig
    from barsignal.daemon.paper.sink import PaperSink
    from barsignal.daemon.sinks.base import SinkContext
    from barsignal.daemon.sinks.jsonl import JsonlSink

    out: list[Any] = []
    if signals is not None:
        sec = JsonlSinkConfig(path=str(Path(signals).resolve()), fsync="never")
        out.append(JsonlSink(SinkContext(name="jsonl", section=sec, state_dir=state)))
    if ledger is not None:
        sec2 = msgspec.structs.replace(cfg.paper, ledger=str(Path(ledger).resolve()))
        out.append(PaperSink(SinkContext(name="paper", section=sec2, state_dir=state), durability="off",
                             log_fills=False))  # a backtest's fills are its ledger and report, not log lines
    return out


def _run(args: argparse.Namespace) -> int:
    from barsignal.node import run

    resolve(args)
    if args.symbol_bars or len(_specs(args)) > 1 or getattr(args, "ray", None):
        return _replay_many(args)
    return run(_replay(args))


def resolve(args: argparse.Namespace) -> None:
    """The command line's defaults, in place: ``--bars FILE`` (no SYMBOL=) joins the --symbol's bars
    (as bare BARS do); ``--out`` defaults to ./replay and ``--signals`` to OUT/signals.jsonl."""
    plain = [f for spec in args.symbol_bars if "=" not in spec for f in spec.split(",") if f]
    args.bars = [*plain, *args.bars]
    args.symbol_bars = [spec for spec in args.symbol_bars if "=" in spec]
    if args.out is None:
        args.out = DEFAULT_OUT
    if args.signals is None:
        args.signals = str(Path(args.out) / "signals.jsonl")


def _specs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """``(SYMBOL, files)`` for every symbol to replay, in the order given. ConfigError on a bad spec."""
    from barsignal.errors import ConfigError

    out: list[tuple[str, list[str]]] = []
    if args.bars:
        out.append(((args.symbol or "").upper(), list(args.bars)))
    for spec in getattr(args, "symbol_bars", []):
        sym, sep, files = spec.partition("=")
        paths = [f for f in files.split(",") if f]
        if not sep or not sym or not paths:
            raise ConfigError(f"replay: --bars {spec!r}: write it as SYMBOL=FILE[,FILE...]")
        out.append((sym.upper(), paths))
    syms = [s for s, _ in out]
    if len(set(syms)) != len(syms):
        raise ConfigError(f"replay: symbols {syms}: a symbol is given twice (or --bars FILE without --symbol "
                          "beside --bars SYMBOL=FILE): give each once")
    if not out:
        raise ConfigError("replay: no bars given; pass --bars FILE (one symbol) or --bars SYMBOL=FILE (repeatable)")
    return out


def _replay_many(args: argparse.Namespace) -> int:
    results, wall, total_md = replay_many(args)
    if args.json:
        conv.print_json({"symbols": results, "bars": sum(r["bars"] for r in results),
                         "signals": sum(r["signals"] for r in results), "wall_s": wall,
                         "signals_path": args.signals, "report": str(total_md) if total_md else None})
        return 0
    for r in results:
        print(f"{r['symbol']}: replayed {r['bars']} bars -> {r['signals']} signals, {r['fills']} fills"
              + (f" ({r['invalid']} invalid bars dropped)" if r["invalid"] else "")
              + (f"; report {r['report_md']}" if r.get("report_md") else ""), file=sys.stderr)
    print(f"replayed {len(results)} symbols, {sum(r['bars'] for r in results)} bars -> "
          f"{sum(r['signals'] for r in results)} signals in {wall:.2f} s "
          + (f"as {len(results)} Ray task(s) on {len({r['node'] for r in results})} node(s) ({args.ray})"
             if getattr(args, "ray", None) else f"with {min(args.jobs, len(results))} process(es)")
          + (f"; signals {args.signals}" if args.signals else "")
          + (f"; report {total_md}" if total_md else ""), file=sys.stderr)
    return 0


def replay_many(args: argparse.Namespace, limit: int = 0) -> tuple[list[dict[str, Any]], float, Path | None]:
    """Several symbols, each in a process of its own (``--jobs`` at a time), each with its own state
    directory (``<state-dir>/<SYMBOL>``), signals file and paper ledger; then the signals merged in the
    order given, and a report per symbol and for the total. Nothing a symbol computes depends on
    another or on the process count."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import shutil
    import tempfile
    import time

    from barsignal.errors import ConfigError

    specs = _specs(args)
    ray_address = getattr(args, "ray", None)
    if "" in [s for s, _ in specs]:
        raise ConfigError("replay: --bars FILE beside --bars SYMBOL=FILE (or with --ray) needs --symbol SYMBOL")
    if args.jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    if ray_address:
        from barsignal.cli import replay_ray
        from barsignal.daemon import config as cfgmod

        replay_ray.parse_address(ray_address)
        replay_ray.import_ray()
        cfgmod.load(args.config)  # a bad config stops here, before a cluster is joined or started
        if args.state_dir:
            raise ConfigError("replay --ray: --state-dir (a replay that resumes) is not supported on Ray: each "
                              "task replays from the start in a temporary directory of its own; leave it out "
                              "or use --jobs")
    if args.ledger:
        raise ConfigError("replay: --ledger names one ledger; with several symbols each has its own "
                          "(OUT/paper_<SYMBOL>.sqlite): leave --ledger out")
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="barsignal-replay-")
    base = Path(args.state_dir) if args.state_dir else Path(tmp.name)
    jobs = []
    for sym, files in specs:
        state = base / sym
        ledger = (Path(args.out) / f"paper_{sym}.sqlite") if args.out else state / "paper.sqlite"
        jobs.append(dict(config=args.config, artifact=args.artifact, threads=args.threads, symbol=sym,
                         files=files, state_dir=str(state), signals=str(Path(tmp.name) / f"signals_{sym}.jsonl"),
                         ledger=str(ledger), fresh=not args.state_dir, report=args.out, limit=limit,
                         log=(getattr(args, "log_level", None) or "info", getattr(args, "log_format", None) or "auto")))
    try:
        if ray_address:
            from barsignal.cli import replay_ray

            results = replay_ray.run_jobs(jobs, ray_address, cpus=args.jobs if args.jobs > 1 else None)
        elif args.jobs == 1 or len(jobs) == 1:
            results = [replay_symbol(j) for j in jobs]
        else:
            with cf.ProcessPoolExecutor(min(args.jobs, len(jobs)), mp_context=mp.get_context("spawn")) as ex:
                results = list(ex.map(replay_symbol, jobs))
        if args.signals:
            out = Path(args.signals)
            mode = "ab" if args.state_dir and out.exists() else "wb"
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, mode) as fh:
                for j in jobs:
                    p = Path(j["signals"])
                    if p.exists():
                        with open(p, "rb") as src:
                            shutil.copyfileobj(src, fh)
        total_md = None
        if args.out and any(r["signals"] for r in results):
            from barsignal.daemon.paper.report import write_total_report

            total_md = write_total_report([Path(j["ledger"]) for j in jobs], args.out, cfg_path=args.config)
    finally:
        tmp.cleanup()
    return results, time.perf_counter() - t0, total_md


def replay_symbol(job: dict[str, Any]) -> dict[str, Any]:
    """One symbol's replay (in this process, or a worker of :func:`_replay_many`): its bars through a
    node of its own into its own outbox, signals file and paper ledger. Returns its counts."""
    import multiprocessing as mp

    from barsignal import log as logmod
    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.paper.replay import load_bars, replay_async
    from barsignal.daemon.paper.report import write_report
    from barsignal.log import get_logger
    from barsignal.node import build_node, run, warn_informational

    if mp.parent_process() is not None and job.get("log"):  # a spawned worker: log as the parent does
        logmod.configure(level=job["log"][0], fmt=job["log"][1])
    cfg = with_threads(cfgmod.load(job["config"]), job["threads"])
    sym = job["symbol"]
    bars = list(load_bars(job["files"], sym))
    if job.get("limit"):
        bars = bars[:job["limit"]]
    state = Path(job["state_dir"])
    state.mkdir(parents=True, exist_ok=True)
    ledger = Path(job["ledger"])
    ledger.parent.mkdir(parents=True, exist_ok=True)
    if job["fresh"]:
        ledger.unlink(missing_ok=True)
    Path(job["signals"]).unlink(missing_ok=True)

    async def go() -> dict[str, Any]:
        sinks = replay_sinks(cfg, state, signals=job["signals"], ledger=ledger)
        node = build_node(cfg, "replay", symbol=sym, state=state, artifact_dir=job["artifact"], sinks=sinks,
                          outbox_sync="OFF")
        if node.loaded is not None:
            warn_informational(node.loaded, get_logger("barsignal.daemon.replay"))
        try:
            res = await replay_async(bars, node, close=False)
            md = None
            if job["report"] and res.signals:
                paper = next(s for s in node.sinks if s.name == "paper")
                md = write_report(paper.ledger, job["report"], sym, name=f"report_{sym}.md",
                                  artifact=node.loaded.artifact if node.loaded else None)
        finally:
            await node.close()
        return {"symbol": sym, "bars": res.bars, "signals": res.signals, "fills": res.fills,
                "invalid": res.invalid, "report_md": str(md) if md else None}

    return run(go())


async def _replay(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.paper.replay import load_bars, replay_async
    from barsignal.daemon.paper.report import write_report
    from barsignal.log import get_logger
    from barsignal.node import build_node, warn_informational

    log = get_logger("barsignal.daemon.replay")
    cfg = with_threads(cfgmod.load(args.config), args.threads)
    symbol = args.symbol or cfg.feed.symbols[0]
    t0 = time.perf_counter()
    bars = list(load_bars(args.bars, symbol))
    t_load = time.perf_counter() - t0
    tmp = None if args.state_dir else tempfile.TemporaryDirectory(prefix="barsignal-replay-")
    state = Path(args.state_dir or tmp.name)  # type: ignore[union-attr]
    try:
        if args.ledger:
            ledger: Path = Path(args.ledger)
        elif args.out:
            ledger = Path(args.out) / "paper.sqlite"
            ledger.parent.mkdir(parents=True, exist_ok=True)
            if not args.state_dir:
                ledger.unlink(missing_ok=True)  # a fresh backtest each run
        else:
            ledger = state / "paper.sqlite"
        if args.signals and not args.state_dir:
            Path(args.signals).unlink(missing_ok=True)  # a fresh file; with --state-dir a resume appends
        sinks = replay_sinks(cfg, state, signals=args.signals, ledger=ledger)
        node = build_node(cfg, "replay", symbol=symbol, state=state, artifact_dir=args.artifact, sinks=sinks,
                          outbox_sync="OFF")
        if node.loaded is not None:
            warn_informational(node.loaded, log)
        try:
            res = await replay_async(bars, node, close=False)
            paper = next(s for s in node.sinks if s.name == "paper")
            art = node.loaded.artifact if node.loaded else None
            md = write_report(paper.ledger, args.out, symbol, artifact=art) if args.out and res.signals else None
        finally:
            await node.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    total = time.perf_counter() - t0
    log.info("replay done", bars=res.bars, signals=res.signals, fills=res.fills, duplicates=res.duplicates,
             invalid_bars=res.invalid, load_s=round(t_load, 3),
             **{f"{k}_s": round(v, 3) for k, v in res.seconds.items()}, total_s=round(total, 3),
             bars_per_s=round(res.bars / total) if total else None)
    if args.json:
        conv.print_json({"symbol": symbol, "bars": res.bars, "signals": res.signals, "fills": res.fills,
                         "invalid": res.invalid, "seconds": total, "signals_path": args.signals,
                         "report": str(md) if md else None, "ledger": str(ledger)})
        return 0
    print(f"replayed {res.bars} bars -> {res.signals} signals, {res.fills} fills in {total:.2f} s"
          + (f" ({res.invalid} invalid bars dropped)" if res.invalid else "")
          + (f"; signals {args.signals}" if args.signals else "") + (f"; report {md}" if md else "")
          + f"; ledger {ledger}", file=sys.stderr)
    if args.out and not res.signals:
        print("no signals (too few bars to warm up the features?): no report written", file=sys.stderr)
    return 0
