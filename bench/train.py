"""Training and inference throughput (windows/s) of the teacher and student, and what ProbSparse buys at L=30.

``barsignal bench train [--bars FILE...] [--steps N] [--batch B] [--threads T] [--json]``: builds real
windows from the bars, then times N AdamW steps (forward + backward + step) per model after one
warm-up step, eval-mode forward throughput, and the teacher's first-layer ProbSparse against full
attention (FLOPs per window and eval latency). No torch import at module level.
"""

from __future__ import annotations

import argparse
import json
import time

from barsignal.bench import SHARED
from barsignal.cli import conventions as conv

DEFAULT_BARS = SHARED / "data/klines/um_futures_1m_daily"


def add_arguments(p: argparse.ArgumentParser) -> None:
    conv.add_bars(p, "bar files (default: 3 real futures days)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--latency-calls", type=int, default=200, help="timed batch-1 calls per attention kind")
    conv.add_json(p, "the figures")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from barsignal.model.dataset import load_splits
    from barsignal.model.informer import Informer, flops_per_window, student_config, teacher_config

    torch.set_num_threads(args.threads)
    bars = args.bars or [str(p) for p in sorted(DEFAULT_BARS.glob("*.csv"))[:3]]
    ws = load_splits(bars).train
    rng = np.random.default_rng(0)
    need = (args.steps + 1) * args.batch
    idx = rng.integers(0, len(ws), need)
    x_all = torch.from_numpy(ws.x(idx))  # (S*B, T, F)
    y_all = torch.from_numpy(ws.labels[idx])
    rows = []
    for kind, cfg in (("teacher", teacher_config()), ("student", student_config())):
        torch.manual_seed(0)
        m = Informer(cfg)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        m.train()
        t0 = 0.0
        for s in range(args.steps + 1):
            if s == 1:
                t0 = time.perf_counter()
            sl = slice(s * args.batch, (s + 1) * args.batch)
            loss = F.binary_cross_entropy_with_logits(m(x_all[sl]), y_all[sl])
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_rate = args.steps * args.batch / (time.perf_counter() - t0)
        m.eval().export_mode(True)
        with torch.no_grad():
            m(x_all[: args.batch])
            t0 = time.perf_counter()
            for s in range(args.steps):
                m(x_all[s * args.batch : (s + 1) * args.batch])
            infer_rate = args.steps * args.batch / (time.perf_counter() - t0)
        rows.append({"model": kind, "params": m.param_count(), "mflops_per_window": flops_per_window(m) / 1e6,
                     "train_windows_per_s": round(train_rate, 1), "eval_windows_per_s": round(infer_rate, 1)})
    # ProbSparse vs full attention, same teacher weights, batch 1 eval latency
    torch.manual_seed(0)
    prob = Informer(teacher_config()).eval()
    full = Informer(teacher_config(attn="full")).eval()
    full.load_state_dict(prob.state_dict())
    one = x_all[:1]
    attn = []
    for name, m in (("prob (sampled)", prob), ("prob (export mode)", None), ("full", full)):
        if m is None:
            m = prob.export_mode(True)
        with torch.no_grad():
            for _ in range(20):
                m(one)
            t = []
            for _ in range(args.latency_calls):
                t0 = time.perf_counter()
                m(one)
                t.append(time.perf_counter() - t0)
        attn.append({"teacher attention": name, "mflops_per_window": flops_per_window(m) / 1e6,
                     "batch1_p50_ms": round(float(np.median(t)) * 1e3, 3)})
    out = {"threads": args.threads, "batch": args.batch, "steps": args.steps, "models": rows,
           "attention": attn}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"threads {args.threads}, batch {args.batch}, {args.steps} timed steps")
    print("| model | params | MFLOPs/window | train windows/s | eval windows/s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['mflops_per_window']:.2f} | "
              f"{r['train_windows_per_s']:,.0f} | {r['eval_windows_per_s']:,.0f} |")
    print("\n| teacher attention | MFLOPs/window | batch-1 p50 ms |\n|---|---:|---:|")
    for a in attn:
        print(f"| {a['teacher attention']} | {a['mflops_per_window']:.2f} | {a['batch1_p50_ms']:.3f} |")
    return 0
