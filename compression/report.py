"""The compression report (one table, measured in one run) and the deployable artifact.

Rows: teacher and student in PyTorch and ONNX FP32, the student trained without distillation, the
pruned student (ONNX FP32), FP16, INT8 dynamic, INT8 static (QDQ) and QAT (QDQ). Columns: parameters,
file size, FLOPs per window, latency p50/p99 (batch 1, one intra-op thread, every row timed in the
same interleaved loop so the ratios are comparable), test AUC (non-tied windows), top-1 agreement with
the teacher, |Δp| against the row's FP32 reference, and the test split's trading figures: every
consecutive test bar replayed through the live ``SignalRule`` and the paper broker (next-open fills,
fee and slippage) with the row's own policy, chosen the same way on the validation bars.

The artifact's default variant is the fastest of the pruned family (FP32, FP16, INT8 dynamic,
INT8 static, QAT) whose rule agreement with the pruned FP32 model (same action bar by bar through
``SignalRule`` at the reference setting, on every VALIDATION bar) is at least ``[eval]
min_signal_agreement`` and whose batch drift (on validation windows) is within bounds; the test split
never takes part in a choice, it only reports. Its policy is
chosen on validation with that variant, and is ``flat`` when nothing is net-positive after costs.
The manifest also ships the train-fitted baselines (``model.baselines``), the label, and the
training distribution's per-feature deciles for the daemon's drift PSI.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.fsutil import atomic_write_text
from barsignal.log import get_logger

log = get_logger(__name__)

FAMILY = ("pruned", "fp16", "int8_dynamic", "int8_static", "qat")  # deployable, one network


def _cpu_flags() -> dict[str, Any]:
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(),
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags), "amx": "amx_int8" in flags}


def _latency(rows: list[dict[str, Any]], window: np.ndarray, iters: int, threads: int) -> None:
    """p50/p99 per row in µs, all rows interleaved in one loop (same machine state for all)."""
    import torch

    from barsignal.compression.quantize import INPUT, OUTPUT, session

    torch.set_num_threads(threads)
    calls = []
    xt = torch.from_numpy(window[None].copy())
    feed = {INPUT: window[None].astype(np.float32)}
    for r in rows:
        if r["runtime"] == "onnxruntime":
            sess = session(r["path"], threads)
            calls.append(lambda s=sess: s.run([OUTPUT], feed))
        else:
            model = r["model"].eval()

            def call(m: Any = model) -> Any:
                with torch.no_grad():
                    return torch.sigmoid(m(xt))
            calls.append(call)
    for c in calls:  # warm-up
        for _ in range(20):
            c()
    samples = np.zeros((len(rows), iters))
    for i in range(iters):
        for j, c in enumerate(calls):
            t0 = time.perf_counter_ns()
            c()
            samples[j, i] = (time.perf_counter_ns() - t0) / 1e3
    for r, s in zip(rows, samples, strict=True):
        r["latency_p50_us"] = float(np.percentile(s, 50))
        r["latency_p99_us"] = float(np.percentile(s, 99))


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return format(v, spec)


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | runtime | params | file | MFLOPs | p50 µs | p99 µs | AUC | agree teacher | "
            "mean abs Δp vs FP32 | max abs Δp vs FP32 | policy | test net PnL | trades | t |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['runtime']} | {r['params']:,} | {r['file_bytes'] / 1024:.0f} KiB | "
            f"{r['flops'] / 1e6:.2f} | {_fmt(r.get('latency_p50_us'), '.0f')} | "
            f"{_fmt(r.get('latency_p99_us'), '.0f')} | {r['auc']:.4f} | {r['agree_teacher']:.4f} | "
            f"{_fmt(r['dp_vs_fp32_mean'], '.2e')} | {_fmt(r['dp_vs_fp32_max'], '.2e')} | "
            f"{r['policy_name']} | {r['trading']['net_pnl']:.2f} | {r['trading']['trades']} | "
            f"{r['trading']['t_stat']:.2f} |")
    return "\n".join(lines)


def _plots(out: Path, rows: list[dict[str, Any]], distill: dict[str, Any] | None,
           quant: dict[str, Any] | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(9, 4))
    names = [r["name"] for r in rows]
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["latency_p50_us"] for r in rows], 0.4, label="p50")
    ax.barh(y + 0.2, [r["latency_p99_us"] for r in rows], 0.4, label="p99")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("latency per window, µs (batch 1, 1 thread)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    files.append("latency.png")
    if distill:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in ("student", "student_plain"):
            if key in distill:
                h = distill[key]["history"]
                ax.plot([r["epoch"] for r in h], [r["val_loss"] for r in h],
                        label=f"{key} (val loss, {'KD' if distill[key]['distilled'] else 'labels only'})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation loss (own objective)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "distillation.png", dpi=110)
        plt.close(fig)
        files.append("distillation.png")
    if quant and quant.get("sensitivity"):
        g = quant["sensitivity"]["groups"]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(list(g), [v["mean_abs_dp"] for v in g.values()])
        ax.set_ylabel("mean |Δp| vs FP32 (this group INT8 only)")
        fig.tight_layout()
        fig.savefig(out / "sensitivity.png", dpi=110)
        plt.close(fig)
        files.append("sensitivity.png")
    return files


def build_report(ctx: Any, artifact_dir: Path, command: str = "") -> dict[str, Any]:
    from barsignal.compression.distill import predict_proba
    from barsignal.compression.metrics import agreement, rule_agreement
    from barsignal.compression.pipeline import broker_rules, choose_policy, policy_of, proba_windows, reference_policy
    from barsignal.compression.quantize import onnx_proba
    from barsignal.engine.metrics import roc_auc as auc
    from barsignal.engine.policy import Bars, replay
    from barsignal.model.informer import flops_per_window

    cfg, data, d = ctx.cfg, ctx.data, ctx.onnx_dir
    ev = cfg.eval
    models = {"teacher": ctx.teacher, "student": ctx.load("student"), "pruned": ctx.load("pruned")}
    try:
        models["student_plain"] = ctx.load("student_plain")
    except Exception:
        pass
    models["qat"] = ctx.load("qat")
    x, xv = data.test.x, data.val.x
    val_all, test_all = data.sets["val_all"], data.sets["test_all"]
    spec: list[dict[str, Any]] = [
        {"name": "teacher (PyTorch)", "runtime": "torch", "net": "teacher", "ref": "teacher (PyTorch)"},
        {"name": "teacher (ONNX FP32)", "runtime": "onnxruntime", "net": "teacher", "file": "teacher",
         "ref": "teacher (PyTorch)"},
        {"name": "student (PyTorch)", "runtime": "torch", "net": "student", "ref": "student (PyTorch)"},
        {"name": "student (ONNX FP32)", "runtime": "onnxruntime", "net": "student", "file": "student",
         "ref": "student (PyTorch)"},
    ]
    if "student_plain" in models:
        spec.append({"name": "student, no KD (PyTorch)", "runtime": "torch", "net": "student_plain",
                     "ref": "student, no KD (PyTorch)"})
    for v, label in (("pruned", "pruned (ONNX FP32)"), ("fp16", "pruned FP16"),
                     ("int8_dynamic", "pruned INT8 dynamic"), ("int8_static", "pruned INT8 static QDQ"),
                     ("qat", "pruned QAT INT8 QDQ")):
        spec.append({"name": label, "runtime": "onnxruntime", "net": "qat" if v == "qat" else "pruned",
                     "file": v, "ref": "pruned (ONNX FP32)", "variant": v})
    ctx.progress("report: predictions (test windows; every validation and test bar)")
    probs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bars: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # p_up on every val / test bar (consecutive)
    for r in spec:
        if r["runtime"] == "torch":
            m = models[r["net"]]
            probs[r["name"]] = (predict_proba(m, x), predict_proba(m, xv))
            bars[r["name"]] = (_proba_ws(predict_proba, m, val_all), _proba_ws(predict_proba, m, test_all))
            r["file_bytes"] = (ctx.workdir / r["net"] / "model.safetensors").stat().st_size \
                if r["net"] != "teacher" else (Path(cfg.data.teacher) / "model.safetensors").stat().st_size
        else:
            r["path"] = d / f"{r['file']}.onnx"
            dyn = d / f"{r['file']}.dynamic.onnx"
            probs[r["name"]] = (onnx_proba(dyn, x), onnx_proba(dyn, xv))
            bars[r["name"]] = (proba_windows(dyn, val_all), proba_windows(dyn, test_all))
            r["file_bytes"] = r["path"].stat().st_size
        r["model"] = models[r["net"]]
        if r.get("variant") == "pruned" and r["model"].cfg.attn == "full":
            # what the daemon scores with: the batch-1 serving graph (compression/batch1.py), measured
            # against the exported static graph; the latency and batch drift below are its own
            from barsignal.compression.batch1 import write_serving

            serving = d / "pruned.batch1.onnx"
            r["serving_graph"] = write_serving(r["model"], r["path"], serving, x[:2000])
            r["path"] = serving
            r["file_bytes"] = serving.stat().st_size
        r["params"] = models[r["net"]].param_count()
        r["flops"] = flops_per_window(models[r["net"]])
    p_teacher = probs["teacher (PyTorch)"][0]
    rules = broker_rules(cfg)
    # policies: each network's own, chosen on the validation bars; the pruned family shares pruned FP32's
    policies: dict[str, dict[str, Any]] = {}
    ctx.progress("report: policy search per network on the validation bars")
    for r in spec:
        key = "pruned (ONNX FP32)" if r["ref"] == "pruned (ONNX FP32)" else r["name"]
        if key not in policies:
            policies[key] = choose_policy(ctx, bars[key][0])
        pol = policies[key]
        p = probs[r["name"]][0]
        ref = probs[r["ref"]][0]
        dp = np.abs(p.astype(np.float64) - ref)
        r["policy"] = pol["policy"]
        r["policy_name"] = pol["policy"]["policy"]
        r["trading"] = replay(Bars.of(test_all, bars[r["name"]][1]), policy_of(pol["policy"]), rules)
        r["auc"] = auc(data.test.y, p)
        r["agree_teacher"] = agreement(p_teacher, p)["top1_agreement"]
        same = r["ref"] == r["name"]
        r["dp_vs_fp32_mean"] = None if same else float(dp.mean())
        r["dp_vs_fp32_max"] = None if same else float(dp.max())
        r["dp_vs_fp32_p99"] = None if same else float(np.quantile(dp, 0.99))
        # selection uses the validation bars; the test bars' agreement is reported only
        r["signal_agreement_vs_fp32"] = rule_agreement(bars[r["ref"]][0], bars[r["name"]][0],
                                                       reference_policy(pol))
        r["signal_agreement_vs_fp32_test"] = rule_agreement(bars[r["ref"]][1], bars[r["name"]][1],
                                                            reference_policy(pol))
    ctx.progress(f"report: latency ({ev.latency_iters} iterations x {len(spec)} rows, interleaved)")
    _latency(spec, xv[0], ev.latency_iters, ev.latency_threads)

    # the default variant: fastest of the pruned family that keeps signal agreement and whose
    # replay path (dynamic batch) gives live's (batch 1) probabilities, both measured on VALIDATION
    # windows and bars (never test: the test split only reports)
    fam = [r for r in spec if r.get("variant")]
    ctx.progress("report: batch drift (static batch 1 vs dynamic batch 512)")
    for r in fam:
        r["batch_drift"] = _batch_drift(r["path"], d / f"{r['file']}.dynamic.onnx", xv[:1000])
    ok = [r for r in fam if r["signal_agreement_vs_fp32"] >= ev.min_signal_agreement
          and r["batch_drift"] <= ev.max_batch_drift]
    best = min(ok or fam[:1], key=lambda r: r["latency_p50_us"])
    fastest = min(spec, key=lambda r: r["latency_p50_us"])
    fp32 = next(r for r in fam if r["variant"] == "pruned")
    rep_dir = ctx.workdir / "report"
    rep_dir.mkdir(parents=True, exist_ok=True)
    distill = _maybe(ctx, "distill.json")
    prune = _maybe(ctx, "prune.json")
    quant = _maybe(ctx, "quantize.json")
    export = _maybe(ctx, "export.json")
    plots = _plots(rep_dir, spec, distill, quant)
    cpu = _cpu_flags()
    ctx.progress(f"report: policy of the deployed variant ({best['name']}) on the validation bars")
    pol_best = choose_policy(ctx, bars[best["name"]][0])
    pol_best["test"] = replay(Bars.of(test_all, bars[best["name"]][1]), policy_of(pol_best["policy"]), rules)
    ctx.progress("report: baselines (train split) and drift bins")
    from barsignal.model import baselines as bl

    base_params = bl.fit(data.sets["train"], float(data.meta.get("flat_band", 0.0)))
    psi_ref = psi_reference(data.sets["train"])
    from barsignal.compression.drift_bounds import from_splits

    try:  # the drift PSI's calibrated bounds (features.psi_bounds)
        psi_bounds = from_splits(psi_ref, data.sets["train"], data.sets.get("val_all"), data.sets.get("test_all"))
        psi_bounds["data"] = [Path(p).name for p in data.meta.get("bars", [])]
    except ValueError as exc:  # a train split shorter than the smallest window: the fixed bound applies
        ctx.progress(f"report: no drift bounds ({exc})")
        psi_bounds = None
    table_rows = [{k: v for k, v in r.items() if k not in ("model", "path")} for r in spec]
    speed = {r["name"]: fp32["latency_p50_us"] / r["latency_p50_us"] for r in fam}
    summary = {
        "machine": cpu, "test_windows": len(x), "val_windows": len(xv), "train_windows": len(data.train),
        "latency": {"iters": ev.latency_iters, "threads": ev.latency_threads, "batch": 1,
                    "interleaved": True},
        "rows": table_rows, "speedup_vs_pruned_fp32": speed,
        "faster_than_pruned_fp32": [n for n, s in speed.items() if s > 1.0 and n != fp32["name"]],
        "fastest": fastest["name"], "selected": best["name"],
        "selected_variant": "fp32" if best["variant"] == "pruned" else best["variant"],  # artifact name
        "selection_rule": (f"fastest p50 of the pruned family with rule agreement >= "
                           f"{ev.min_signal_agreement:g} vs pruned FP32 (SignalRule actions on every validation bar "
                           "at the reference setting) and "
                           f"batch drift <= {ev.max_batch_drift:g} (max |p| difference between the "
                           "dynamic-batch ONNX at batch 512, used by replay, and the batch-1 ONNX, used live)"),
        "batch_drift": {r["name"]: r["batch_drift"] for r in fam},
        "policy": pol_best, "data": data.meta, "plots": plots, "baselines": base_params,
        "teacher_schema_hash": ctx.teacher_meta.get("schema_hash"),
        "distill": _strip_history(distill), "prune": prune, "quantize": quant, "export_parity": export,
    }
    atomic_write_text(rep_dir / "report.json", json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    atomic_write_text(rep_dir / "report.md", _markdown(summary))
    ctx.progress(f"report written to {rep_dir}; selected {best['name']}")
    art = _write_artifact(ctx, artifact_dir, best, fam, pol_best, summary, command,
                          baselines=base_params, psi_ref=psi_ref, psi_bounds=psi_bounds)
    summary["artifact"] = {"path": str(art.path), "hash": art.hash,
                           "bytes": sum(f.stat().st_size for f in art.path.iterdir())}
    atomic_write_text(rep_dir / "report.json", json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    return summary


def _proba_ws(fn: Any, model: Any, ws: Any, batch: int = 4096) -> np.ndarray:
    """p_up of every window of a ``WindowSet`` through a PyTorch model, in chunks."""
    out = [fn(model, ws.x(np.arange(s, min(s + batch, len(ws))))) for s in range(0, len(ws), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def psi_reference(train: Any, bins: int = 10) -> dict[str, Any]:
    """The training distribution of each normalized feature (last row of every train window): decile
    edges and the fraction of rows in each bin, counted the way the daemon's PSI counts live rows."""
    x = train.last_rows().astype(np.float64)  # (N, F)
    edges, fractions = [], []
    for j in range(x.shape[1]):
        e = np.quantile(x[:, j], np.arange(1, bins) / bins)
        counts = np.bincount(np.searchsorted(e, x[:, j], side="right"), minlength=bins)
        edges.append([float(v) for v in e])
        fractions.append([float(v) for v in counts / len(x)])
    return {"edges": edges, "fractions": fractions, "rows": len(x), "source": "train split, last row of "
            "every window, normalized", "bins": bins}


def _batch_drift(static: Path, dynamic: Path, x: np.ndarray) -> float:
    """max |p| between batch-1 calls of the static ONNX and batch-512 calls of the dynamic one."""
    from barsignal.compression.quantize import INPUT, OUTPUT, onnx_proba, session

    sess = session(static)
    single = np.array([sess.run([OUTPUT], {INPUT: w[None]})[0].reshape(-1)[0] for w in x], np.float64)
    return float(np.abs(single - onnx_proba(dynamic, x, batch=512)).max())


def _maybe(ctx: Any, name: str) -> dict[str, Any] | None:
    p = ctx.workdir / name
    return json.loads(p.read_text()) if p.is_file() else None


def _strip_history(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if not d:
        return d
    out = dict(d)
    for k in ("student", "student_plain"):
        if k in out:
            out[k] = {kk: vv for kk, vv in out[k].items() if kk != "history"}
    return out


def _write_artifact(ctx: Any, dest: Path, best: dict[str, Any], fam: list[dict[str, Any]],
                    pol: dict[str, Any], summary: dict[str, Any], command: str, *,
                    baselines: dict[str, Any], psi_ref: dict[str, Any],
                    psi_bounds: dict[str, Any] | None = None) -> Any:
    from barsignal.engine.artifact import write_artifact
    from barsignal.features.spec import schema_hash

    d = ctx.onnx_dir
    files: dict[str, Path] = {}
    variants: dict[str, dict[str, Any]] = {}
    for r in fam:
        v = r["variant"]
        name = "fp32" if v == "pruned" else v
        files[f"{name}.onnx"] = r["path"]  # the serving graph for FP32, else the exported static graph
        files[f"{name}.dynamic.onnx"] = d / f"{r['file']}.dynamic.onnx"
        net = "qat" if v == "qat" else "pruned"  # the PyTorch weights of this network (torch backend)
        files[f"{net}.safetensors"] = ctx.workdir / net / "model.safetensors"
        variants[name] = {"onnx": f"{name}.onnx", "onnx_dynamic": f"{name}.dynamic.onnx",
                          "weights": f"{net}.safetensors",
                          "model": r["model"].cfg.to_dict(), "precision": name,
                          "latency_p50_us": r["latency_p50_us"], "auc": r["auc"],
                          "signal_agreement_vs_fp32": r["signal_agreement_vs_fp32"],
                          "batch_drift": r["batch_drift"],
                          **({"serving_graph": r["serving_graph"]} if "serving_graph" in r else {})}
    default = "fp32" if best["variant"] == "pruned" else best["variant"]
    meta = ctx.teacher_meta
    sh = str(ctx.data.meta.get("schema_hash") or schema_hash())  # the features the student was trained on
    metrics = {k: best[k] for k in ("auc", "agree_teacher", "latency_p50_us", "latency_p99_us",
                                    "signal_agreement_vs_fp32", "dp_vs_fp32_mean", "dp_vs_fp32_max")}
    metrics["test_trading"] = _brief(pol["test"])
    metrics["machine"] = summary["machine"]["model"]
    chosen = pol["policy"]
    flat = chosen["policy"] == "flat"
    signal = {**chosen, "informational": flat, "chosen_on": "validation", "reason": pol["reason"],
              "rule": ("the validation setting (thresholds at quantiles of p_up, long-only or long/short, "
                       "hysteresis, minimum hold) with the highest net PnL after costs through SignalRule "
                       "and the paper broker on consecutive bars; flat when none is net-positive"),
              "val": _brief(pol["chosen_val"]), "test": _brief(pol["test"]),
              "best_candidate": None if not pol.get("best_candidate") else
              {"policy": pol["best_candidate"]["policy"], "val": _brief(pol["best_candidate"])}}
    if not flat and not chosen.get("allow_short"):
        signal["short_threshold"] = None  # chosen without shorts: that zone is flat
    dmeta = ctx.data.meta
    label = {"kind": "direction", "horizon": int(dmeta.get("horizon", 1)),
             "flat_band": float(dmeta.get("flat_band", 0.0)),
             "ties": "dropped from training and from every metric"}
    return write_artifact(
        dest, files=files, model_config=best["model"].cfg.to_dict(), schema_hash=sh,
        normalization=ctx.data.meta["normalizer"], psi_reference=psi_ref, psi_bounds=psi_bounds,
        signal=signal,
        variants=variants, default_variant=default, horizon=int(meta.get("horizon", 1)), metrics=metrics,
        command=command or "barsignal compress", overwrite=True,
        extra={"label": label, "baselines": baselines,
               "compression": {"selected": best["name"], "rule": summary["selection_rule"],
                               "teacher": str(ctx.cfg.data.teacher),
                               "teacher_schema_hash": meta.get("schema_hash"),
                               "teacher_schema_matches": meta.get("schema_hash") == sh}},
    )


def _policy_line(pol: dict[str, Any]) -> str:
    c, v, t = pol["policy"], pol["chosen_val"], pol["test"]
    head = ("**Policy: stay flat** (signals are informational). " if c["policy"] == "flat" else
            f"**Policy:** long >= {c['long_threshold']:.4f}"
            + (f", short <= {c['short_threshold']:.4f}" if c["allow_short"] else "")
            + f", hysteresis {c['hysteresis']:.4f}, minimum hold {c['min_hold_bars']} bars. ")
    line = (head + f"Why: {pol['reason']}. Validation: net {v['net_pnl']:.2f}, {v['trades']} trades; "
            f"test: net {t['net_pnl']:.2f}, {t['trades']} trades, t {t['t_stat']:.2f}.")
    b = pol.get("best_candidate")
    if b:
        ci = b.get("net_pnl_ci95") or [float("nan")] * 2
        line += (f" Best validation candidate: net {b['net_pnl']:.2f} (95 % CI {ci[0]:.2f} .. {ci[1]:.2f}, "
                 f"day bootstrap), {b['trades']} trades, t {b['t_stat']:.2f}, fees {b['fees']:.2f}.")
    return line


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    """The headline trading figures of a replay (for the manifest)."""
    return {k: r[k] for k in ("bars", "net_pnl", "net_return", "fees", "gross_pnl", "trades", "fills",
                              "exposure", "t_stat", "net_pnl_ci95") if k in r}


def _markdown(s: dict[str, Any]) -> str:
    rows = s["rows"]
    m = s["machine"]
    lines = [
        "# Compression report",
        "",
        f"Machine: {m['model']}, {m['cores']} cores visible; AVX2 {m['avx2']}, AVX-512 {m['avx512f']}, "
        f"VNNI {m['vnni']}, AMX {m['amx']}. Latency: batch 1, {s['latency']['threads']} intra-op thread, "
        f"{s['latency']['iters']} calls per row, all rows interleaved in one loop.",
        f"Data: {s['train_windows']:,} train / {s['val_windows']:,} validation / {s['test_windows']:,} "
        f"test windows of real bars ({', '.join(Path(b).name for b in s['data']['bars'])}).",
        *([f"Feature schema of these windows and of the artifact: {s['data']['schema_hash'][:12]}…; the teacher "
           f"checkpoint was trained on schema {str(s['teacher_schema_hash'])[:12]}… (features changed since): its "
           "figures here are measured on the current features."]
          if s["data"].get("schema_hash") and s.get("teacher_schema_hash")
          and s["teacher_schema_hash"] != s["data"]["schema_hash"] else []),
        "",
        _table(rows),
        "",
        "AUC (non-tied windows), agreement and |Δp| are on the evenly spaced test windows; |Δp| is against "
        "the row's FP32 reference (the PyTorch model for ONNX FP32 rows, pruned FP32 for the quantized rows). "
        "Trading: every consecutive test bar through SignalRule and the paper broker (next-open fills, "
        "fee and slippage per fill, 10,000 initial cash, all equity per position) with the row's policy "
        "chosen on the validation bars; 'flat' means no setting was net-positive on validation; t is the "
        "t-statistic of the round trips' net PnL.",
        "",
        f"**Faster than pruned FP32 on this CPU:** {', '.join(s['faster_than_pruned_fp32']) or 'none'}. "
        f"Speed-up of p50 vs pruned FP32: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in s["speedup_vs_pruned_fp32"].items()) + ".",
        f"**Fastest row:** {s['fastest']}. **Deployed (artifact default):** {s['selected']} "
        f"({s['selection_rule']}).",
        "**Batch drift** (replay vs live, max |Δp|): "
        + ", ".join(f"{k} {v:.1e}" for k, v in s["batch_drift"].items()) + ".",
        _policy_line(s["policy"]),
        "",
    ]
    d = s.get("distill")
    if d:
        lines += ["## Distillation", "",
                  "| student | epochs | stopped | s | test AUC | top-1 agree | mean abs Δp | KL |",
                  "|---|---|---|---|---|---|---|---|"]
        for k in ("student", "student_plain"):
            if k in d:
                r = d[k]
                a = r["vs_teacher"]
                lines.append(f"| {k} ({'KD' if r['distilled'] else 'labels only'}) | {r['epochs_run']} | "
                             f"{r['stopped']} | {r['seconds']:.0f} | {r['test_auc']:.4f} | "
                             f"{a['top1_agreement']:.4f} | {a['mean_abs_dp']:.4f} | {a['kl']:.2e} |")
        c = d["config"]
        lines += ["", f"T={c['temperature']}, alpha={c['alpha']}, beta={c['beta']}, lr={c['lr']} cosine, "
                      f"max {c['epochs']} epochs, patience {c['patience']}, "
                      f"budget {c['time_budget_s']:.0f} s "
                      f"per run; teacher test AUC {d['teacher_test_auc']:.4f}.", ""]
    p = s.get("prune")
    if p:
        b, a = p["before"], p["after"]
        mg = p["magnitude"]
        lines += ["## Pruning", "",
                  f"Structured ({p['importance_method']}): heads {b['config']['n_heads']} -> "
                  f"{a['config']['layer_heads']}, layers {b['config']['e_layers']} -> "
                  f"{a['config']['e_layers']}, "
                  f"FFN {b['config']['d_ff']} -> {a['config']['layer_d_ff']}; params {b['params']:,} -> "
                  f"{a['params']:,}, MFLOPs {b['flops'] / 1e6:.2f} -> {a['flops'] / 1e6:.2f}; test AUC "
                  f"{b['test_auc']:.4f} -> {a['test_auc']:.4f}; top-1 agreement with the teacher "
                  f"{b['vs_teacher']['top1_agreement']:.4f} -> {a['vs_teacher']['top1_agreement']:.4f}.",
                  f"Unstructured global magnitude pruning at {mg['sparsity_target']:.0%} (statistics; not "
                  f"deployed): global sparsity {mg['global_sparsity']:.4f}, {mg['zero_params']:,} zero of "
                  f"{mg['total_params']:,} prunable weights ({mg['model_zero_params']:,} of "
                  f"{mg['model_total_params']:,} parameters); top-1 agreement with the dense student "
                  f"{mg['vs_student']['top1_agreement']:.4f}, test AUC {mg['test_auc']:.4f}.", ""]
    q = s.get("quantize")
    if q:
        lines += ["## Quantization diagnostics", "",
                  "| variant | max weight err | mean weight err | clipping (calib) | clipping (test) | "
                  "mean abs Δp | "
                  "p99 abs Δp | "
                  "signal agree | rule agree | test net PnL (FP32 "
                  f"{q['fp32_test_trading']['net_pnl']:.2f}) | trades |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for v, r in q["variants"].items():
            we = list(r["weight_error"].values()) or [float("nan")]
            lines.append(f"| {v} | {max(we):.2e} | {np.mean(we):.2e} | "
                         f"{r['activation_clipping']['rate']:.2e} | "
                         f"{r['activation_clipping'].get('held_out_rate', float('nan')):.2e} | "
                         f"{r['vs_fp32']['mean_abs_dp']:.2e} | {r['vs_fp32']['p99_abs_dp']:.2e} | "
                         f"{r['vs_fp32']['signal_agreement']:.4f} | {r['vs_fp32']['rule_agreement']:.4f} | "
                         f"{r['test_trading']['net_pnl']:.2f} | {r['test_trading']['trades']} |")
        lines += ["", f"QAT: {q['qat']['scheme']}; {q['qat']['fake_quantized_linears']} Linear layers "
                      f"fake-quantized, {q['qat']['epochs_run']} epochs.", ""]
        sens = q.get("sensitivity")
        if sens:
            lines += ["### Per-layer-group sensitivity (INT8 static, one group at a time)", "",
                      "| group | nodes | mean abs Δp | max abs Δp | signal agree |", "|---|---|---|---|---|"]
            for g, r in sens["groups"].items():
                lines.append(f"| {g} | {r['nodes']} | {r['mean_abs_dp']:.2e} | {r['max_abs_dp']:.2e} | "
                             f"{r['signal_agreement']:.4f} |")
            rec = sens["recommendation"]
            meas = rec.get("measured")
            lines += ["", f"Recommendation ({sens['rule']}): INT8 {rec['int8_groups']}, "
                          f"FP32 {rec['fp32_groups']}"
                      + (f"; measured mix: mean |Δp| {meas['mean_abs_dp']:.2e}, signal agreement "
                         f"{meas['signal_agreement']:.4f}." if meas else "."), ""]
        lines += ["Weight error is ||W - Q(W)|| / ||W|| per layer (report.json has every layer); activation "
                  "clipping is the fraction of FP32 activation values outside the range of their QuantizeLinear "
                  "by more than half a step, on the calibration windows (0 by construction for min/max "
                  "calibration) and on 2,048 held-out test windows; FP16: values beyond ±65504.", ""]
    e = s.get("export_parity")
    if e:
        lines += ["## ONNX parity (PyTorch vs ONNX Runtime FP32)", ""]
        lines += [f"- {k}: {v['windows']:,} windows, max |Δp| {v['max_abs_dp']:.2e}, "
                  f"p99 {v['p99_abs_dp']:.2e}"
                  for k, v in e.items()]
        lines.append("")
    lines += ["Plots: " + ", ".join(f"![{p}]({p})" for p in s["plots"]), ""]
    return "\n".join(lines)
