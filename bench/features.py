"""Feature speed: per-bar ``update()`` + normalize + window append latency, and batch throughput.

Per bar: ``OnlineFeatures.update`` (FeatureEngine.update, Normalizer.transform_row, RollingWindow.push
and the window view), timed bar by bar with ``perf_counter_ns``: p50 / p99 / mean in µs, plus
``FeatureEngine.update`` alone. Batch: ``batch.compute_with_ready`` over the whole file, in bars/s
(best of ``--repeat``). Figures only (docs/BENCHMARKS.md, ## Features); nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from barsignal.bench import SHARED
from barsignal.cli import conventions as conv

_SHARED = SHARED
_SPOT_1M = _SHARED / "data" / "klines" / "spot_1m"


def _largest_spot_file() -> Path | None:
    files = sorted(_SPOT_1M.glob("*.json"), key=lambda p: p.stat().st_size)
    return files[-1] if files else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    conv.add_bars(p, f"bar files (default: the largest file in {_SPOT_1M})", positional=True)
    p.add_argument("--n-bars", type=int, default=30_000, help="bars timed one by one (default 30000)")
    p.add_argument("--window", type=int, default=30, help="window length (the artifact's T)")
    p.add_argument("--repeat", type=int, default=3, help="batch runs; the best is reported")
    conv.add_json(p, "the figures")


def _pct(xs: list[int], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1000.0


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from barsignal.data import load_many
    from barsignal.errors import ConfigError
    from barsignal.features.batch import compute_with_ready
    from barsignal.features.engine import FeatureEngine
    from barsignal.features.normalize import Normalizer
    from barsignal.features.online import OnlineFeatures

    conv.count_from_bars(args, "n_bars", "--n-bars")
    default = _largest_spot_file()
    paths = [Path(f) for f in args.bars] if args.bars else [default] if default else []
    if not paths:
        raise ConfigError(f"no bar file given and none found in {_SPOT_1M}: pass --bars FILE")
    frame = load_many(paths).frame
    path = paths[0]
    n = len(frame)

    # batch throughput over the whole file
    best = best_cpu = float("inf")
    for _ in range(max(1, args.repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        X, ready = compute_with_ready(frame)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    norm = Normalizer.fit(X[ready])

    # per-bar latency on the first --bars bars
    bars = list(frame.slice(0, min(n, args.n_bars)).bars())
    clock = time.perf_counter_ns
    online = OnlineFeatures(norm, args.window)
    per_bar: list[int] = []
    for bar in bars:
        t0 = clock()
        online.update(bar)
        per_bar.append(clock() - t0)
    eng = FeatureEngine()
    eng_only: list[int] = []
    for bar in bars:
        t0 = clock()
        eng.update(bar)
        eng_only.append(clock() - t0)
    warm = online.first_window_bars  # steady state: the window is full from here on
    steady = sorted(per_bar[warm:]) or sorted(per_bar)
    eng_sorted = sorted(eng_only[warm:]) or sorted(eng_only)
    figures = {
        "file": str(path), "bars": n, "window": args.window,
        "update_window_p50_us": round(_pct(steady, 0.50), 2),
        "update_window_p99_us": round(_pct(steady, 0.99), 2),
        "update_window_mean_us": round(sum(steady) / len(steady) / 1000.0, 2),
        "engine_update_p50_us": round(_pct(eng_sorted, 0.50), 2),
        "engine_update_p99_us": round(_pct(eng_sorted, 0.99), 2),
        "timed_bars": len(steady),
        "batch_seconds": round(best, 3), "batch_bars_per_s": round(n / best),
        "batch_bars_per_cpu_s": round(n / best_cpu),  # CPU time: less sensitive to a busy machine
        "projected_2_5M_bars_s": round(2_500_000 / (n / best), 1),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    assert np.isfinite(X).all()
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"features bench: {path.name}, {n} bars, window {args.window}")
    print(f"  per bar, update + normalize + window append ({len(steady)} bars): "
          f"p50 {figures['update_window_p50_us']} us, p99 {figures['update_window_p99_us']} us, "
          f"mean {figures['update_window_mean_us']} us")
    print(f"  per bar, FeatureEngine.update alone: p50 {figures['engine_update_p50_us']} us, "
          f"p99 {figures['engine_update_p99_us']} us")
    print(f"  batch: {figures['batch_bars_per_s']} bars/s wall, {figures['batch_bars_per_cpu_s']} bars/cpu-s "
          f"({best:.3f} s for {n} bars; "
          f"2.5 M bars ~ {figures['projected_2_5M_bars_s']} s)")
    print(f"  python {figures['python']}, {figures['cpus']} cpus, load avg {figures['load_avg_1m']}")
    return 0
