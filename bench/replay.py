"""Replay throughput end to end (load, features, scoring, signals, paper fills), in bars/s.

Runs ``barsignal replay``'s path (the live node from ``barsignal.node.build_node``: pipeline,
batch-1 scoring, the outbox in a temporary directory, the live sink workers feeding the jsonl sink
and the paper sink's SQLite ledger) over real bars, times each stage, projects the time for one
year of 1-minute bars (525,600), and puts the scoring rate beside the engine's measured matmul
ceiling (its single-core SGEMM rate from ``barsignal.bench.scoring``, times the scoring threads).
Figures only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.bench import SHARED
from barsignal.cli import conventions as conv

YEAR_BARS = 525_600
_SHARED = SHARED
DEFAULT_BARS = _SHARED / "data" / "klines" / "um_futures_1m_daily"  # 177,120 contiguous real 1m bars


def add_arguments(p: argparse.ArgumentParser) -> None:
    conv.add_bars(p, f"bar files or directory (default: {DEFAULT_BARS})", positional=True)
    conv.add_artifact(p, "model artifact (default: [model] or bundled)", default=None)
    p.add_argument("--config", default=None, help="TOML config ([engine] threads, [paper] settings)")
    p.add_argument("--limit", type=int, default=0, help="replay only the first N bars (0: all)")
    p.add_argument("--threads", type=int, default=None,
                   help="scoring threads for the replay (default: [engine] intra_op_threads)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="print the figures as one JSON document on stdout (the text goes to stderr); "
                   "--json PATH writes them to PATH instead")
    p.add_argument("--symbols", type=int, default=0, metavar="N",
                   help="replay N of the ten real 2023 symbols (../shared/data multi/spot_1m + BTC) as "
                   "`barsignal replay --bars SYM=FILE ... --jobs K` does, once per K of --jobs, and check that "
                   "the signals do not depend on K")
    p.add_argument("--jobs", default="1,2", help="with --symbols: the process counts to time (default 1,2)")


class _TimedScorer:
    """Wraps a Scorer to time its calls (the pipeline sees the same object contract)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0
        self.windows = 0

    def score(self, window: np.ndarray) -> float:
        t = time.perf_counter()
        p = self.inner.score(window)
        self.seconds += time.perf_counter() - t
        self.windows += 1
        return p


def run(args: argparse.Namespace) -> int:
    if args.symbols:
        return _run_symbols(args)
    from barsignal.bench.scoring import sgemm_gflops, variant_flops
    from barsignal.cli.replay import replay_sinks, with_threads
    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.paper.replay import load_bars, replay
    from barsignal.engine.artifact import load_artifact
    from barsignal.node import build_node

    cfg = with_threads(cfgmod.load(args.config), args.threads)
    symbol = cfg.feed.symbols[0]
    paths = args.bars or [str(p) for p in sorted(DEFAULT_BARS.glob("*.csv"))]
    t0 = time.perf_counter()
    bars = list(load_bars(paths, symbol))
    if args.limit:
        bars = bars[:args.limit]
    t_load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        state = Path(tmp)
        t1 = time.perf_counter()
        node = build_node(cfg, "replay", symbol=symbol, state=state, artifact_dir=args.artifact,
                          sinks=replay_sinks(cfg, state, signals=state / "signals.jsonl",
                                             ledger=state / "paper.sqlite"), outbox_sync="OFF")
        t_model = time.perf_counter() - t1
        timed = _TimedScorer(node.pipeline.model.scorer)
        node.pipeline.model.scorer = timed
        t2 = time.perf_counter()
        res = replay(bars, node)
        t_replay = time.perf_counter() - t2
    t_end_to_end = t_load + t_replay  # model loading is a one-off start cost, reported apart
    bps = res.bars / t_end_to_end
    art = load_artifact(args.artifact or cfg.model.artifact or None)
    # The engine's own figures (barsignal bench scoring): FLOPs per window (manifest, else counted
    # when torch is there) and the single-core SGEMM ceiling, best of 50, times the scoring threads.
    flops = variant_flops(art, cfg.model.variant or art.default_variant)
    threads = cfg.engine.intra_op_threads
    sg_median, sg_best = sgemm_gflops()
    gflops = sg_best * threads
    how = (f"engine SGEMM 512^3 float32, best of 50 = {sg_best:.1f} GFLOP/s per core (median "
           f"{sg_median:.1f}) x {threads} thread(s)")
    achieved = flops * timed.windows / timed.seconds / 1e9 if flops and timed.seconds else None
    node_s = res.seconds["replay"] - timed.seconds
    fig: dict[str, Any] = {
        "bars": res.bars, "signals": res.signals, "fills": res.fills,
        "artifact": art.hash[:12], "backend": timed.name,
        "intra_op_threads": cfg.engine.intra_op_threads,
        "seconds": {"load": t_load, "features_rule_outbox_sinks": node_s, "scoring": timed.seconds,
                    "sinks_drain_after_last_bar": res.seconds["drain"],
                    "end_to_end": t_end_to_end, "model_load_once": t_model},
        "bars_per_s": bps,
        "projected_year_s": YEAR_BARS / bps,
        "scoring_windows_per_s": timed.windows / timed.seconds if timed.seconds else None,
        "flops_per_window": flops,
        "scoring_gflops": achieved,
        "matmul_ceiling_gflops": gflops, "ceiling_measured_with": how,
        "fraction_of_ceiling": achieved / gflops if achieved else None,
        "cpu_count": os.cpu_count(),
    }
    s = fig["seconds"]
    say = _say(args)
    say(f"replay: {res.bars:,} bars -> {res.signals:,} signals, {res.fills:,} fills "
          f"(artifact {fig['artifact']}, {timed.name}, batch 1, "
          f"{cfg.engine.intra_op_threads} scoring thread(s))")
    say(f"  load {s['load']:.2f} s | features+rule+outbox+sinks {s['features_rule_outbox_sinks']:.2f} s"
          f" | scoring {s['scoring']:.2f} s | sinks drain after the last bar "
          f"{s['sinks_drain_after_last_bar']:.2f} s | model load (once) {s['model_load_once']:.2f} s")
    say(f"  end to end {s['end_to_end']:.2f} s = {bps:,.0f} bars/s -> one year (525,600 bars) in "
          f"{fig['projected_year_s']:.0f} s (target <= 120 s)")
    if achieved:
        say(f"  scoring {fig['scoring_windows_per_s']:,.0f} windows/s x {flops / 1e6:.2f} MFLOP = "
              f"{achieved:.1f} GFLOP/s = {fig['fraction_of_ceiling'] * 100:.1f} % of the matmul ceiling "
              f"{gflops:.1f} GFLOP/s ({how})")
    else:
        say(f"  matmul ceiling {gflops:.1f} GFLOP/s ({how}); the artifact has no flops_per_window")
    _emit(args, fig)
    return 0


def _run_symbols(args: argparse.Namespace) -> int:
    """Several symbols over 1..K processes: wall time, bars/s, and the signals compared across K."""
    import orjson

    from barsignal.bench.live import _real_files
    from barsignal.cli.replay import replay_many

    files = _real_files()[:args.symbols]
    out: dict[int, dict[str, Any]] = {}
    say = _say(args)
    with tempfile.TemporaryDirectory(prefix="barsignal-bench-replay-") as tmp:
        for k in [int(x) for x in str(args.jobs).split(",") if x]:
            sig = Path(tmp) / f"signals_{k}.jsonl"
            ns = argparse.Namespace(bars=[], symbol_bars=[f"{sym}={f}" for sym, f in files], jobs=k,
                                    config=args.config, artifact=args.artifact, threads=args.threads,
                                    signals=str(sig), out=None, ledger=None, state_dir=None, symbol=None)
            results, wall, _ = replay_many(ns, limit=args.limit)
            rows = [orjson.loads(x) for x in sig.read_bytes().splitlines()]
            for r in rows:
                r.pop("latency_us", None)  # timings, not results
            bars = sum(r["bars"] for r in results)
            out[k] = {"wall_s": wall, "bars": bars, "signals": len(rows), "rows": rows}
            say(f"bench replay --symbols {len(files)} --jobs {k}: {bars} bars -> {len(rows)} signals in "
                  f"{wall:.2f} s = {bars / wall:,.0f} bars/s")
    ks = sorted(out)
    same = all(out[k]["rows"] == out[ks[0]]["rows"] for k in ks)
    say(f"  signals identical across --jobs {','.join(map(str, ks))} (latency_us left out): {same}")
    if len(ks) > 1:
        say(f"  speed-up {ks[-1]} vs {ks[0]} processes: {out[ks[0]]['wall_s'] / out[ks[-1]]['wall_s']:.2f}x "
              f"(on {os.cpu_count()} CPUs)")
    _emit(args, {k: {x: v[x] for x in ("wall_s", "bars", "signals")} for k, v in out.items()} | {"identical": same})
    return 0 if same else 1


def _say(args: argparse.Namespace) -> Any:
    """``print`` to stdout, or to stderr when stdout carries the JSON document."""
    return functools.partial(print, file=sys.stderr if args.json == "-" else sys.stdout)


def _emit(args: argparse.Namespace, fig: dict[str, Any]) -> None:
    """The figures as JSON: on stdout for ``--json``, into PATH for ``--json PATH``."""
    if args.json == "-":
        conv.print_json(fig)
    elif args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1, default=str))
