"""Scoring latency per backend and variant, next to the machine's compute floor and PyTorch eager.

Measured in one run: batch-1 latency p50/p99/p99.9 over ``--calls`` calls after warm-up (each call
timed with perf_counter_ns around ``score``), replay batch throughput (``score_batch``), the
single-core FP32 SGEMM rate (512^3, numpy's BLAS in a subprocess pinned to one thread), the compute
floor (FLOPs per window / SGEMM rate), PyTorch eager p50 on the same weights (when torch is
installed), and the resident memory of a process holding only the ONNX Runtime scorer.
Windows are standard-normal (seed 0): the models have no data-dependent control flow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.engine.artifact import WINDOW_SHAPE, load_artifact
from barsignal.log import get_logger

log = get_logger(__name__)

_SGEMM = r"""
import time, numpy as np
n = {n}
a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
for _ in range(3): a @ b
ts = []
for _ in range({reps}):
    t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
ts.sort()
print(2 * n ** 3 / ts[len(ts) // 2] / 1e9, 2 * n ** 3 / ts[0] / 1e9)
"""

_RSS = r"""
import numpy as np
from barsignal.engine.select import load_scorer
s = load_scorer({artifact!r}, backend="onnxruntime", variant={variant!r})
w = np.zeros((30, 33), np.float32)
for _ in range(1000): s.score(w)
import sys
# VmHWM of this process's own memory map (ru_maxrss would carry the parent's peak across exec).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(hwm / 1024, "torch" in sys.modules)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifact", default=None, help="artifact directory (default: the bundled one)")
    p.add_argument("--calls", type=int, default=10_000, help="timed batch-1 calls per backend/variant")
    p.add_argument("--warmup", type=int, default=1_000, help="untimed calls before timing")
    p.add_argument("--batch", type=int, default=4096, help="windows per replay batch (throughput)")
    p.add_argument("--backends", default="", help="comma list (default: onnxruntime, tensorrt if usable)")
    p.add_argument("--variants", default="", help="comma list (default: every variant)")
    p.add_argument("--spinning", action="store_true", help="ONNX Runtime intra-op spinning")
    p.add_argument("--graph-ablation", action="store_true",
                   help="also export each variant with cumulative ONNX passes and time each (needs torch)")
    p.add_argument("--out", default=None, help="directory for bench_scoring.json and bench_scoring.md")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--idle-ms", type=float, default=5.0,
                   help="also time 1,000 calls each made after sleeping this long, as a live bar arrives "
                        "after an idle wait (0: skip)")


def percentiles(samples_ns: np.ndarray) -> dict[str, float]:
    ms = samples_ns.astype(np.float64) / 1e6
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "p999_ms": float(np.percentile(ms, 99.9)), "mean_ms": float(ms.mean()), "calls": len(ms)}


def time_calls(score: Any, windows: np.ndarray, calls: int, warmup: int, idle_s: float = 0.0) -> np.ndarray:
    """perf_counter_ns around each of ``calls`` calls, after ``warmup`` untimed ones; with ``idle_s``,
    each timed call follows a sleep of that long (the process idles between live bars)."""
    n = len(windows)
    for i in range(warmup):
        score(windows[i % n])
    out = np.empty(calls, np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        w = windows[i % n]
        if idle_s:
            time.sleep(idle_s)
        t0 = clock()
        score(w)
        out[i] = clock() - t0
    return out


def sgemm_gflops(n: int = 512, reps: int = 50) -> tuple[float, float]:
    """(median, best) single-thread SGEMM GFLOP/s of numpy's BLAS, measured in a fresh process."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "BLIS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _SGEMM.format(n=n, reps=reps)], capture_output=True,
                         text=True, env=env, timeout=300, check=True).stdout.split()
    return float(out[0]), float(out[1])


def ort_rss_mb(artifact: str | None, variant: str) -> tuple[float, bool]:
    out = subprocess.run([sys.executable, "-c", _RSS.format(artifact=artifact, variant=variant)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    last = out.strip().splitlines()[-1].split()  # structlog may print above it
    return float(last[0]), last[1] == "True"


def _throughput(scorer: Any, windows: np.ndarray, batch: int, flops: int | None) -> dict[str, float]:
    x = np.ascontiguousarray(np.resize(windows, (batch, *WINDOW_SHAPE)))
    scorer.score_batch(x[: min(batch, 256)])
    reps, ts = 5, []
    for _ in range(reps):
        t0 = time.perf_counter()
        scorer.score_batch(x)
        ts.append(time.perf_counter() - t0)
    t = float(np.median(ts))
    out = {"windows_per_s": batch / t, "us_per_window": t / batch * 1e6, "batch": batch}
    if flops:
        out["gflops"] = flops * batch / t / 1e9
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from barsignal.engine.select import backend_module, choose_backend

    art = load_artifact(args.artifact)
    variants = [v for v in (args.variants.split(",") if args.variants else art.variant_names) if v]
    if args.backends:
        backends = [b for b in args.backends.split(",") if b]
    else:
        backends = ["onnxruntime"]
        if choose_backend("auto")[0] == "tensorrt":
            backends.append("tensorrt")
    windows = np.random.default_rng(0).standard_normal((256, *WINDOW_SHAPE)).astype(np.float32)
    # The floor uses the best of the SGEMM repetitions: the core's capability. On a shared machine
    # the median mostly measures the neighbours; it is recorded beside it.
    median_gf, best_gf = sgemm_gflops()
    gf = best_gf
    res: dict[str, Any] = {"artifact": str(art.path), "artifact_hash": art.hash, "matmul_gflops": gf,
                           "matmul_gflops_median": median_gf,
                           "sgemm": "512^3 float32, numpy BLAS, 1 thread, best of 50",
                           "cpu": _cpu_name(), "results": {}}
    default_flops = variant_flops(art, art.default_variant)
    res["flops_per_window"] = default_flops
    res["floor_ms"] = default_flops / (gf * 1e9) * 1e3 if default_flops else None
    for vname in variants:
        var = art.variant(vname)
        flops = variant_flops(art, vname)
        for bname in backends:
            scorer = backend_module(bname).load(var, intra_op_threads=1, spinning=args.spinning)
            lat = percentiles(time_calls(scorer.score, windows, args.calls, args.warmup))
            entry: dict[str, Any] = {**lat, "backend": bname, "variant": vname, "flops_per_window": flops}
            if args.idle_ms:
                idle = percentiles(time_calls(scorer.score, windows, 1000, 0, args.idle_ms / 1e3))
                entry["after_idle"] = {"idle_ms": args.idle_ms, "p50_ms": idle["p50_ms"], "p99_ms": idle["p99_ms"]}
            if flops:
                floor = flops / (gf * 1e9) * 1e3
                entry["floor_ms"] = floor
                entry["p50_over_floor"] = lat["p50_ms"] / floor
            entry["batch"] = _throughput(scorer, windows, args.batch, flops)
            if flops:
                entry["batch"]["of_sgemm"] = entry["batch"]["gflops"] / gf
            res["results"][f"{bname}/{vname}"] = entry
            log.info("scoring benchmark", key=f"{bname}/{vname}", p50_ms=round(lat["p50_ms"], 4),
                     p99_ms=round(lat["p99_ms"], 4))
    res["torch_eager_p50_ms"] = _torch_eager(art, variants, windows, args)
    try:
        rss, torch_loaded = ort_rss_mb(args.artifact, art.default_variant)
        res["ort_process_rss_mb"], res["ort_process_imports_torch"] = rss, torch_loaded
    except subprocess.SubprocessError as exc:
        res["ort_process_rss_mb"] = f"not measured ({exc})"
    if args.graph_ablation:
        res["graph_ablation"] = graph_ablation(art, variants[0], windows, args)
    return res


def variant_flops(art: Any, vname: str) -> int | None:
    """FLOPs per window: the manifest's figure, else counted on the weights (needs torch)."""
    entry = art.manifest["variants"][vname]
    if entry.get("flops_per_window"):
        return int(entry["flops_per_window"])
    from barsignal.model import torch_backend as torch_ref

    var = art.variant(vname)
    if not torch_ref.available()[0] or var.weights is None:
        return None
    from barsignal.model.informer import flops_per_window

    try:
        return int(flops_per_window(torch_ref.build_model(var)))
    except Exception as exc:  # weights that do not rebuild: report no floor rather than fail
        log.warning("flops not counted", variant=vname, error=str(exc))
        return None


def _torch_eager(art: Any, variants: list[str], windows: np.ndarray, args: argparse.Namespace
                 ) -> float | None:
    from barsignal.model import torch_backend as torch_ref

    ok, _ = torch_ref.available()
    var = art.variant(art.default_variant if art.default_variant in variants else variants[0])
    if not ok or var.weights is None:
        return None
    try:
        scorer = torch_ref.load(var, intra_op_threads=1)
    except Exception as exc:  # weights that do not rebuild the config: no eager figure
        log.warning("torch eager not measured", variant=var.name, error=str(exc))
        return None
    calls = min(args.calls, 3000)
    return percentiles(time_calls(scorer.score, windows, calls, min(args.warmup, 200)))["p50_ms"]


def graph_ablation(art: Any, vname: str, windows: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """p50 of the variant exported with cumulative ONNX passes, and of ORT optimization levels.

    Timed round-robin (blocks of calls per config, repeated) so drift on a shared machine hits
    every config alike."""
    import tempfile

    from barsignal.compression.onnx_export import PASSES, export_onnx
    from barsignal.engine.backends.ort import DEFAULT_OPT_LEVEL, OnnxRuntimeScorer
    from barsignal.model.torch_backend import build_model

    model = build_model(art.variant(vname))
    configs: dict[str, tuple[Path, str]] = {}
    nodes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        steps: list[tuple[str, tuple[str, ...], bool]] = [("no exporter optimizer, no passes", (), False),
                                                           ("exporter constant folding", (), True)]
        for i in range(1, len(PASSES) + 1):
            steps.append(("+ " + PASSES[i - 1], PASSES[:i], True))
        lvl0 = DEFAULT_OPT_LEVEL
        for label, passes, opt in steps:
            path = Path(tmp) / f"{len(configs)}.onnx"
            info = export_onnx(model, path, passes=passes, exporter_optimize=opt)
            configs[f"{label} | ort={lvl0}"] = (path, lvl0)
            nodes[f"{label} | ort={lvl0}"] = info.nodes
        last = configs[f"{steps[-1][0]} | ort={lvl0}"][0]
        for level in ("disable", "basic", "extended", "all"):
            if level != lvl0:
                configs[f"all passes | ort={level}"] = (last, level)
                nodes[f"all passes | ort={level}"] = nodes[f"{steps[-1][0]} | ort={lvl0}"]
        scorers = {k: OnnxRuntimeScorer(p, opt_level=lvl, warmup=args.warmup // 4)
                   for k, (p, lvl) in configs.items()}
        samples: dict[str, list[np.ndarray]] = {k: [] for k in scorers}
        rounds, per = 10, max(1, args.calls // 10)
        for _ in range(rounds):
            for k, s in scorers.items():
                samples[k].append(time_calls(s.score, windows, per, 50))
    return {k: {**percentiles(np.concatenate(v)), "nodes": nodes[k]} for k, v in samples.items()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def to_markdown(res: dict[str, Any]) -> str:
    lines = [f"Artifact `{res['artifact_hash'][:12]}`, CPU {res['cpu']}; single-core SGEMM "
             f"{res['matmul_gflops']:.1f} GFLOP/s best of 50 (median {res['matmul_gflops_median']:.1f}).", "",
             "| backend/variant | p50 ms | p99 ms | p99.9 ms | calls | floor ms | p50/floor |"
             " batch µs/window | batch GFLOP/s | batch/SGEMM |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, e in res["results"].items():
        b = e["batch"]
        lines.append(
            f"| {key} | {e['p50_ms']:.4f} | {e['p99_ms']:.4f} | {e['p999_ms']:.4f} | {e['calls']} | "
            f"{e.get('floor_ms', float('nan')):.4f} | {e.get('p50_over_floor', float('nan')):.2f} | "
            f"{b['us_per_window']:.1f} | {b.get('gflops', float('nan')):.1f} | "
            f"{b.get('of_sgemm', float('nan')):.0%} |")
    idle = {k: e["after_idle"] for k, e in res["results"].items() if e.get("after_idle")}
    if idle:
        lines += ["", "After an idle sleep before each call (1,000 calls; a live bar arrives after one):", ""]
        lines += [f"- {k}: p50 {e['p50_ms']:.4f} ms, p99 {e['p99_ms']:.4f} ms after {e['idle_ms']:g} ms idle "
                  f"({e['p50_ms'] / res['results'][k]['p50_ms']:.1f}x the back-to-back p50)" for k, e in idle.items()]
    eager = res.get("torch_eager_p50_ms")
    lines.append("")
    if eager:
        best = min(e["p50_ms"] for e in res["results"].values())
        lines.append(f"PyTorch eager p50 {eager:.4f} ms; best backend is {eager / best:.1f}x faster.")
    else:
        lines.append("PyTorch eager: not measured (torch not installed or no weights in the artifact).")
    lines.append(f"ONNX Runtime process RSS: {res.get('ort_process_rss_mb')} MB "
                 f"(torch imported: {res.get('ort_process_imports_torch')}).")
    if res.get("graph_ablation"):
        lines += ["", "| ONNX graph (cumulative) | nodes | p50 ms | p99 ms |", "|---|---|---|---|"]
        for k, e in res["graph_ablation"].items():
            lines.append(f"| {k} | {e['nodes']} | {e['p50_ms']:.4f} | {e['p99_ms']:.4f} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    res = measure(args)
    md = to_markdown(res)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_scoring.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        (out / "bench_scoring.md").write_text(md)
    if args.json:
        print(json.dumps(res, default=str))
    else:
        print(md, end="")
    return 0
