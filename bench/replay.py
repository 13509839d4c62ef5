"""Replay throughput end to end (load, features, scoring, signals, paper fills), in bars/s.

Runs ``barsignal replay``'s path (the live ``Pipeline``, batched scoring, the SQLite paper ledger,
the signals JSONL) over real bars, times each stage, projects the time for one year of 1-minute
bars (525,600), and puts the scoring rate beside the engine's measured matmul ceiling (its single-core
SGEMM rate from ``barsignal.bench.scoring``, times the scoring threads). It also
replays the first ``--verify`` bars one by one and checks the signals are identical (p_up bits,
actions) to the batched ones. Figures only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.bench import SHARED

YEAR_BARS = 525_600
_SHARED = SHARED
DEFAULT_BARS = _SHARED / "data" / "klines" / "um_futures_1m_daily"  # 177,120 contiguous real 1m bars


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bars", nargs="*", help=f"bar files or directory (default: {DEFAULT_BARS})")
    p.add_argument("--artifact", default=None, help="model artifact (default: [model] or bundled)")
    p.add_argument("--config", default=None, help="TOML config ([engine] threads, [paper] settings)")
    p.add_argument("--limit", type=int, default=0, help="replay only the first N bars (0: all)")
    p.add_argument("--batch", type=int, default=256,
                   help="windows per scoring batch (256: faster than 4096 here, the activations stay in cache)")
    p.add_argument("--verify", type=int, default=20_000,
                   help="bars replayed one by one to check the batched signals are identical (0: skip)")
    p.add_argument("--threads", type=int, default=None,
                   help="scoring threads for the batched replay (default: [engine] intra_op_threads); the "
                   "one-by-one check always runs with the live setting")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")


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

    def score_batch(self, windows: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        p = self.inner.score_batch(windows)
        self.seconds += time.perf_counter() - t
        self.windows += len(windows)
        return p


def run(args: argparse.Namespace) -> int:
    from barsignal.bench.scoring import sgemm_gflops, variant_flops
    from barsignal.cli.replay import build_pipeline, with_threads
    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.paper.broker import Rules
    from barsignal.daemon.paper.ledger import PaperLedger
    from barsignal.daemon.paper.parity import compare
    from barsignal.daemon.paper.replay import load_bars, replay
    from barsignal.engine.artifact import load_artifact

    live_cfg = cfgmod.load(args.config)
    cfg = with_threads(live_cfg, args.threads)
    symbol = cfg.feed.symbols[0]
    paths = args.bars or [str(p) for p in sorted(DEFAULT_BARS.glob("*.csv"))]
    t0 = time.perf_counter()
    bars = list(load_bars(paths, symbol))
    if args.limit:
        bars = bars[:args.limit]
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    pipe = build_pipeline(cfg, args.artifact, symbol)
    t_model = time.perf_counter() - t1
    timed = _TimedScorer(pipe.model.scorer)
    pipe.model.scorer = timed
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        with PaperLedger(Path(tmp) / "paper.sqlite", Rules.from_config(cfg.paper), "off") as led:
            t2 = time.perf_counter()
            res = replay(bars, pipe, ledger=led, signals_path=Path(tmp) / "signals.jsonl", batch=args.batch)
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
    identical = None
    if args.verify:
        n = min(args.verify, len(bars))
        one: list = []
        many: list = []
        replay(bars[:n], build_pipeline(live_cfg, args.artifact, symbol), on_signal=one.append, batch=1)
        replay(bars[:n], build_pipeline(cfg, args.artifact, symbol), on_signal=many.append, batch=args.batch)
        r = compare(one, many)
        identical = {"bars": n, "signals": len(one), "identical": r.ok,
                     "one_by_one_threads": live_cfg.engine.intra_op_threads,
                     "first_difference": str(r.differences[0]) if r.differences else None}
    features_rule = res.seconds["pipeline"] - timed.seconds
    fig: dict[str, Any] = {
        "bars": res.bars, "signals": res.signals, "fills": res.fills,
        "artifact": art.hash[:12], "backend": timed.name, "batch": args.batch,
        "intra_op_threads": cfg.engine.intra_op_threads,
        "seconds": {"load": t_load, "features_and_rule": features_rule, "scoring": timed.seconds,
                    "paper_ledger": res.seconds["paper"], "signals_jsonl": res.seconds["write"],
                    "end_to_end": t_end_to_end, "model_load_once": t_model},
        "bars_per_s": bps,
        "projected_year_s": YEAR_BARS / bps,
        "scoring_windows_per_s": timed.windows / timed.seconds if timed.seconds else None,
        "flops_per_window": flops,
        "scoring_gflops": achieved,
        "matmul_ceiling_gflops": gflops, "ceiling_measured_with": how,
        "fraction_of_ceiling": achieved / gflops if achieved else None,
        "batched_equals_one_by_one": identical,
        "cpu_count": os.cpu_count(),
    }
    s = fig["seconds"]
    print(f"replay: {res.bars:,} bars -> {res.signals:,} signals, {res.fills:,} fills "
          f"(artifact {fig['artifact']}, {timed.name}, batch {args.batch}, "
          f"{cfg.engine.intra_op_threads} scoring thread(s))")
    print(f"  load {s['load']:.2f} s | features+rule {s['features_and_rule']:.2f} s"
          f" | scoring {s['scoring']:.2f} s"
          f" | paper ledger {s['paper_ledger']:.2f} s | signals JSONL {s['signals_jsonl']:.2f} s"
          f" | model load (once) {s['model_load_once']:.2f} s")
    print(f"  end to end {s['end_to_end']:.2f} s = {bps:,.0f} bars/s -> one year (525,600 bars) in "
          f"{fig['projected_year_s']:.0f} s (target <= 120 s)")
    if achieved:
        print(f"  scoring {fig['scoring_windows_per_s']:,.0f} windows/s x {flops / 1e6:.2f} MFLOP = "
              f"{achieved:.1f} GFLOP/s = {fig['fraction_of_ceiling'] * 100:.1f} % of the matmul ceiling "
              f"{gflops:.1f} GFLOP/s ({how})")
    else:
        print(f"  matmul ceiling {gflops:.1f} GFLOP/s ({how}); the artifact has no flops_per_window")
    if identical:
        print(f"  batched vs one by one ({identical['one_by_one_threads']} thread, the live path) on the first "
              f"{identical['bars']:,} bars: "
              f"{identical['signals']:,} signals, identical = {identical['identical']}"
              + ("" if identical["identical"] else f" (first difference: {identical['first_difference']})"))
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))
    return 0 if identical is None or identical["identical"] else 1
