"""``barsignal compress``: teacher -> distilled student -> pruned -> ONNX -> quantized -> report + artifact.

Each stage reads what earlier stages wrote in ``[output] workdir`` and writes its own outputs there,
so each can run alone (``barsignal compress distill|prune|export|quantize|report|engine``):

- ``distill``  -> ``student/`` and ``student_plain/`` (checkpoints), ``distill.json``
- ``prune``    -> ``pruned/`` (checkpoint), ``prune.json``
- ``export``   -> ``onnx/{teacher,student,pruned}[.dynamic].onnx``, ``export.json`` (parity)
- ``quantize`` -> ``onnx/{fp16,int8_dynamic,int8_static,qat}[.dynamic].onnx``, ``qat/``, ``quantize.json``
- ``report``   -> ``report/report.{md,json}`` + PNGs, and the artifact (``[output] artifact``)
- ``engine``   -> TensorRT engines (needs ``tensorrt`` and a GPU)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from barsignal.compression.config import CompressionConfig
from barsignal.compression.distill import Data
from barsignal.errors import ConfigError
from barsignal.fsutil import atomic_write_text
from barsignal.log import get_logger

log = get_logger(__name__)

STAGES = ("distill", "prune", "export", "quantize", "report")
QUANT_VARIANTS = ("fp16", "int8_dynamic", "int8_static", "qat")


class Context:
    """What the stages share: config, work directory, the teacher and the data (loaded lazily)."""

    def __init__(self, cfg: CompressionConfig, progress: Callable[[str], None] | None = None,
                 data: Data | None = None) -> None:
        self.cfg = cfg
        self.workdir = Path(cfg.output.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.onnx_dir = self.workdir / "onnx"
        self.onnx_dir.mkdir(exist_ok=True)
        self._teacher: Any = None
        self._meta: dict[str, Any] | None = None
        self._data: Data | None = data
        self._targets: dict[str, Any] = {}
        self._progress = progress

    def progress(self, msg: str) -> None:
        if self._progress is None:
            log.info("compress", step=msg)
        else:
            self._progress(msg)

    @property
    def teacher_meta(self) -> dict[str, Any]:
        if self._meta is None:
            from barsignal.model import checkpoint

            _, self._meta = checkpoint.read_config(self.cfg.data.teacher)
        return self._meta

    @property
    def teacher(self) -> Any:
        if self._teacher is None:
            from barsignal.model import checkpoint

            self._teacher = checkpoint.load(self.cfg.data.teacher).export_mode(True)
        return self._teacher

    @property
    def data(self) -> Data:
        if self._data is None:
            from barsignal.compression.data import load_data

            self._data = load_data(self.cfg, self.teacher_meta, self.workdir)
        return self._data

    def targets(self, split: str) -> Any:
        """The teacher's logits and features on the ``train`` or ``val`` windows (computed once)."""
        from barsignal.compression.distill import teacher_targets

        if split not in self._targets:
            self._targets[split] = teacher_targets(self.teacher, getattr(self.data, split).x)
        return self._targets[split]

    @property
    def teacher_test_proba(self) -> np.ndarray:
        from barsignal.compression.distill import predict_proba

        if "test_p" not in self._targets:
            self._targets["test_p"] = predict_proba(self.teacher, self.data.test.x)
        return self._targets["test_p"]

    def load(self, name: str) -> Any:
        from barsignal.model import checkpoint

        path = self.workdir / name
        if not checkpoint.is_checkpoint(path):
            raise ConfigError(f"{path}: no checkpoint; run the stage that makes it first "
                              f"(`barsignal compress {'distill' if 'student' in name else 'prune'}`)")
        return checkpoint.load(path)

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.workdir / name
        atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_jsonable) + "\n")
        return path

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.workdir / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing; run `barsignal compress {name.split('.')[0]}` first")
        return json.loads(path.read_text())

    def save(self, model: Any, name: str, extra: dict[str, Any] | None = None) -> Path:
        from barsignal.model import checkpoint

        meta = {k: v for k, v in self.teacher_meta.items() if k in ("horizon", "window", "normalizer",
                                                                     "schema_hash", "data")}
        return checkpoint.save(model, self.workdir / name, meta={**meta, **(extra or {})})


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _fidelity(p_ref: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from barsignal.compression.metrics import agreement

    return agreement(p_ref, p)


# --- stage 1: distillation -------------------------------------------------------------------------


def stage_distill(ctx: Context) -> dict[str, Any]:
    """Distil the teacher into the student, and train the same student without distillation."""
    import torch

    from barsignal.compression.distill import predict_proba, train
    from barsignal.engine.metrics import roc_auc as auc
    from barsignal.model.informer import Informer, InformerConfig, student_config

    cfg, data = ctx.cfg.distill, ctx.data
    tcfg: InformerConfig = ctx.teacher.cfg
    scfg = student_config(window=tcfg.window, n_features=tcfg.n_features)
    ctx.progress(f"teacher targets on {len(data.train)} train + {len(data.val)} val windows")
    tt, tv = ctx.targets("train"), ctx.targets("val")
    p_teacher = ctx.teacher_test_proba
    out: dict[str, Any] = {"config": msgspec.structs.asdict(cfg), "train_windows": len(data.train),
                           "val_windows": len(data.val), "test_windows": len(data.test),
                           "teacher_test_auc": auc(data.test.y, p_teacher)}
    runs = [("student", True)] + ([("student_plain", False)] if cfg.baseline else [])
    for name, distil in runs:
        ctx.progress(f"training {name} ({'distillation' if distil else 'labels only'})")
        torch.manual_seed(ctx.cfg.data.seed)
        student = Informer(scfg)
        res = train(student, data, cfg, train_targets=tt if distil else None,
                    val_targets=tv if distil else None, seed=ctx.cfg.data.seed, label=name)
        p = predict_proba(student, data.test.x)
        out[name] = {"distilled": distil, "best_epoch": res.best_epoch, "epochs_run": len(res.history),
                     "stopped": res.stopped, "seconds": res.seconds, "best_val_loss": res.best_val_loss,
                     "history": res.history, "test_auc": auc(data.test.y, p),
                     "vs_teacher": _fidelity(p_teacher, p), "params": student.param_count()}
        ctx.save(student, name, {"kind": name, "distill": out[name]["vs_teacher"]})
    ctx.write_json("distill.json", out)
    return out


# --- stage 2: pruning ------------------------------------------------------------------------------


def stage_prune(ctx: Context) -> dict[str, Any]:
    """Structured pruning of the distilled student, distillation fine-tuning, magnitude-pruning stats."""
    import copy

    from barsignal.compression.distill import predict_proba, train
    from barsignal.compression.prune import PruneTargets, importance, magnitude_prune, prune_structured
    from barsignal.engine.metrics import roc_auc as auc
    from barsignal.model.informer import flops_per_window

    pc, data = ctx.cfg.prune, ctx.data
    student = ctx.load("student")
    p_teacher = ctx.teacher_test_proba
    p_student = predict_proba(student, data.test.x)
    ctx.progress(f"importance ({pc.importance})")
    scores = importance(student, pc.importance, data.train.x, data.train.y)
    pruned = prune_structured(student, PruneTargets(pc.heads, pc.ffn_reduction, pc.layers), scores)
    p_before_ft = predict_proba(pruned, data.test.x)
    ctx.progress(f"fine-tuning the pruned student ({pc.finetune_epochs} epochs, distillation loss)")
    res = None
    if pc.finetune_epochs > 0:
        tt, tv = ctx.targets("train"), ctx.targets("val")
        res = train(pruned, data, ctx.cfg.distill, train_targets=tt, val_targets=tv,
                    epochs=pc.finetune_epochs, lr=pc.finetune_lr, seed=ctx.cfg.data.seed, label="pruned")
    p_pruned = predict_proba(pruned, data.test.x)
    mag = copy.deepcopy(student)
    stats = magnitude_prune(mag, pc.global_sparsity)
    p_mag = predict_proba(mag, data.test.x)
    out = {
        "config": msgspec.structs.asdict(pc),
        "importance_method": {"l1": "L1 norm of the unit's weights",
                              "taylor": "first-order Taylor (sum w*dL/dw)^2"}[pc.importance],
        "scores": {"layers": scores.layers.tolist(), "heads": [h.tolist() for h in scores.heads]},
        "before": {"params": student.param_count(), "flops": flops_per_window(student),
                   "config": student.cfg.to_dict(), "test_auc": auc(data.test.y, p_student),
                   "vs_teacher": _fidelity(p_teacher, p_student)},
        "after": {"params": pruned.param_count(), "flops": flops_per_window(pruned),
                  "config": pruned.cfg.to_dict(), "test_auc": auc(data.test.y, p_pruned),
                  "vs_teacher": _fidelity(p_teacher, p_pruned), "vs_student": _fidelity(p_student, p_pruned),
                  "before_finetune_vs_student": _fidelity(p_student, p_before_ft)},
        "finetune": None if res is None else {"epochs_run": len(res.history), "best_epoch": res.best_epoch,
                                              "seconds": res.seconds, "stopped": res.stopped},
        "magnitude": {**asdict(stats), "test_auc": auc(data.test.y, p_mag),
                      "vs_student": _fidelity(p_student, p_mag)},
    }
    ctx.save(pruned, "pruned", {"kind": "pruned", "prune": {"importance": pc.importance}})
    ctx.write_json("prune.json", out)
    return out


# --- stage 3: ONNX export --------------------------------------------------------------------------


def stage_export(ctx: Context) -> dict[str, Any]:
    """FP32 ONNX (static and dynamic batch) of teacher, student and pruned student, with parity."""
    from barsignal.compression.onnx_export import export_variant, torch_probabilities
    from barsignal.compression.quantize import onnx_proba

    x = ctx.data.test.x
    out: dict[str, Any] = {}
    for name, model in (("teacher", ctx.teacher), ("student", ctx.load("student")),
                        ("pruned", ctx.load("pruned"))):
        ctx.progress(f"ONNX export {name}")
        export_variant(model, ctx.onnx_dir, name)
        ref = torch_probabilities(model, x)
        got = onnx_proba(ctx.onnx_dir / f"{name}.dynamic.onnx", x)
        d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        out[name] = {"windows": len(x), "max_abs_dp": float(d.max()),
                     "p99_abs_dp": float(np.quantile(d, 0.99)), "mean_abs_dp": float(d.mean())}
    ctx.write_json("export.json", out)
    return out


# --- stage 4: quantization -------------------------------------------------------------------------


def _make_variant(kind: str, src_stem: str, dst_stem: str, onnx_dir: Path, calib: np.ndarray) -> None:
    """``{dst_stem}.onnx`` and ``{dst_stem}.dynamic.onnx`` from the FP32 pair ``{src_stem}[.dynamic].onnx``.

    Static and dynamic are converted separately (the static FP32 has constant shapes, which the
    TensorRT rules need); INT8 static calibrates both on the same windows with min/max, so both
    get the same scales.
    """
    from barsignal.compression import quantize as q

    for suffix, batch in ((".onnx", 1), (".dynamic.onnx", 64)):
        src, dst = onnx_dir / f"{src_stem}{suffix}", onnx_dir / f"{dst_stem}{suffix}"
        if kind == "fp16":
            q.to_fp16(src, dst)
        elif kind == "int8_dynamic":
            q.int8_dynamic(src, dst)
        else:
            q.int8_static(src, dst, calib, batch=batch)


def stage_quantize(ctx: Context) -> dict[str, Any]:
    """FP16, INT8 dynamic, INT8 static (QDQ) and QAT variants of the pruned student, with diagnostics."""
    import logging

    from barsignal.compression import quantize as q
    from barsignal.compression.distill import train
    from barsignal.compression.metrics import rule_agreement, signal_agreement
    from barsignal.compression.onnx_export import export_variant
    from barsignal.engine.policy import Bars, replay

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization warns on the root logger
    qc, data, d = ctx.cfg.quantize, ctx.data, ctx.onnx_dir
    base = d / "pruned.dynamic.onnx"
    if not base.is_file():
        raise ConfigError(f"{base}: missing; run `barsignal compress export` first")
    calib = data.train.x[np.linspace(0, len(data.train) - 1, min(qc.calibration_windows, len(data.train)))
                         .round().astype(np.int64)]
    ctx.progress("FP16, INT8 dynamic, INT8 static")
    for kind in ("fp16", "int8_dynamic", "int8_static"):
        _make_variant(kind, "pruned", kind, d, calib)
    # QAT: torchao fake quantization, fine-tuned with the distillation loss, exported through QDQ.
    ctx.progress(f"QAT ({qc.qat_epochs} epochs, torchao fake quantization)")
    model = ctx.load("pruned").train()
    q.qat_prepare(model)
    n_fq = q.count_fake_quantized(model)
    qat_res = None
    if qc.qat_epochs > 0:
        tt, tv = ctx.targets("train"), ctx.targets("val")
        qat_res = train(model, data, ctx.cfg.distill, train_targets=tt, val_targets=tv, epochs=qc.qat_epochs,
                        lr=qc.qat_lr, seed=ctx.cfg.data.seed, label="qat")
    q.qat_strip(model)
    ctx.save(model, "qat", {"kind": "qat"})
    export_variant(model, d, "qat_fp32")
    _make_variant("int8_static", "qat_fp32", "qat", d, calib)

    x = data.test.x
    p_ref = q.onnx_proba(base, x)
    ctx.progress("policy search: validation bars through SignalRule + paper broker")
    pol = choose_policy(ctx, proba_windows(base, data.sets["val_all"]))
    ref_pol = reference_policy(pol)
    test_all = data.sets["test_all"]
    p_ref_all = proba_windows(base, test_all)
    rules = broker_rules(ctx.cfg)
    trade_ref = replay(Bars.of(test_all, p_ref_all), policy_of(pol["policy"]), rules)
    long_t, short_t = ref_pol.long_threshold, ref_pol.short_threshold if ref_pol.allow_short else None
    out: dict[str, Any] = {"base": "pruned", "policy": pol, "fp32_test_trading": trade_ref,
                           "reference_policy": ref_pol.to_dict(),
                           "calibration_windows": len(calib),
                           "qat": {"fake_quantized_linears": n_fq,
                                   "scheme": "torchao IntxFakeQuantizeConfig: int8 per-channel symmetric "
                                             "weights, int8 per-token asymmetric activations; deployed as "
                                             "QDQ with static per-tensor activation scales",
                                   "epochs_run": len(qat_res.history) if qat_res else 0,
                                   "seconds": qat_res.seconds if qat_res else 0.0},
                           "variants": {}}
    for v in QUANT_VARIANTS:
        ctx.progress(f"diagnostics {v}")
        path = d / f"{v}.dynamic.onnx"
        ref_onnx = d / "qat_fp32.dynamic.onnx" if v == "qat" else base
        p = q.onnx_proba(path, x)
        if v in ("int8_static", "qat"):
            clip = q.clipping_rate(ref_onnx, path, calib)
            clip["held_out_rate"] = q.clipping_rate(ref_onnx, path, x[:2048])["rate"]
        elif v == "fp16":
            clip = {**q.fp16_overflow_rate(ref_onnx, calib[:256]), "note": "values beyond float16's range"}
            clip["held_out_rate"] = q.fp16_overflow_rate(ref_onnx, x[:256])["rate"]
        else:
            clip = {"rate": 0.0, "held_out_rate": 0.0,
                    "note": "dynamic: each call's own min/max sets the range, nothing clips"}
        p_all = proba_windows(path, test_all)
        tr = replay(Bars.of(test_all, p_all), policy_of(pol["policy"]), rules)
        out["variants"][v] = {
            "ops": q.count_ops(path), "weight_error": q.weight_errors(ref_onnx, path),
            "activation_clipping": {k: clip[k] for k in clip if k != "per_tensor"},
            "vs_fp32": {**_fidelity(p_ref, p), "signal_agreement": signal_agreement(p_ref, p, long_t, short_t),
                        "rule_agreement": rule_agreement(p_ref_all, p_all, ref_pol)},
            "test_trading": tr, "net_pnl_delta": tr["net_pnl"] - trade_ref["net_pnl"],
        }
    if qc.sensitivity:
        ctx.progress("per-layer-group sensitivity")
        # a recommendation (a choice): measured on validation windows, never test
        out["sensitivity"] = q.sensitivity(base, calib, data.val.x, ctx.workdir / "sensitivity", long_t, short_t)
    ctx.write_json("quantize.json", out)
    return out


# --- the trading policy: the live kernel on consecutive bars ---------------------------------------


def proba_windows(onnx_path: Path, ws: Any, batch: int = 4096) -> np.ndarray:
    """p_up of every window of a ``WindowSet`` through an ONNX file, in chunks (no (N, T, F) copy)."""
    from barsignal.compression.quantize import onnx_proba

    out = [onnx_proba(onnx_path, ws.x(np.arange(s, min(s + batch, len(ws))))) for s in range(0, len(ws), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def broker_rules(cfg: CompressionConfig) -> Any:
    """The paper broker's rules for policy replays: next-open fills, the configured fee and slippage."""
    from barsignal.engine.broker import Rules

    return Rules(fill="next_open", fee_bps=cfg.eval.fee_bps, slippage_bps=cfg.eval.slippage_bps)


def policy_of(d: dict[str, Any]) -> Any:
    from barsignal.engine.policy import Policy

    return Policy(**d)


def choose_policy(ctx: Context, p_val: np.ndarray) -> dict[str, Any]:
    """``engine.policy.search`` on every validation bar (consecutive), costs from ``[eval]``."""
    from barsignal.engine.policy import Bars, search

    horizon = int(ctx.data.meta.get("horizon", 1))
    return search(Bars.of(ctx.data.sets["val_all"], p_val), horizon, broker_rules(ctx.cfg),
                  min_trades=ctx.cfg.eval.min_trades, allow_short=ctx.cfg.eval.allow_short,
                  min_days=ctx.cfg.eval.min_val_days)


def reference_policy(pol: dict[str, Any]) -> Any:
    """The setting fidelity is measured at: the chosen one, or the best rejected candidate when the
    policy stays flat (agreement of an all-flat rule is 1 by construction, which measures nothing)."""
    chosen = policy_of(pol["policy"])
    if chosen.policy == "trade" or not pol.get("best_candidate"):
        return chosen
    return policy_of(pol["best_candidate"]["policy"])


# --- stage 5: report + artifact --------------------------------------------------------------------


def stage_report(ctx: Context, artifact: str | None = None, command: str = "") -> dict[str, Any]:
    from barsignal.compression.report import build_report

    return build_report(ctx, artifact_dir=Path(artifact or ctx.cfg.output.artifact), command=command)


def stage_engine(ctx: Context, variants: tuple[str, ...] = ("pruned", "fp16", "int8_static", "qat"),
                 version_compatible: bool = False) -> dict[str, Any]:
    """TensorRT engines (strongly typed) from the FP32, FP16 and Q/DQ ONNX, via ``tensorrt_build``.

    Each ONNX is first checked against TensorRT's ONNX parser rules (``trt_ops.check_graph``), which
    needs no TensorRT; the build itself needs ``tensorrt`` and an NVIDIA GPU (the ``gpu`` extra).
    """
    import importlib.util

    import onnx

    from barsignal.engine.trt_ops import check_graph, prepare_for_tensorrt

    paths = {v: ctx.onnx_dir / f"{v}.onnx" for v in variants}
    for path in paths.values():
        if not path.is_file():
            raise ConfigError(f"{path}: missing; run `barsignal compress export` and `quantize` first")
        problems = check_graph(prepare_for_tensorrt(onnx.load(str(path))), static=True)
        if problems:
            raise ConfigError(f"{path}: TensorRT's ONNX parser would refuse it: {'; '.join(problems[:5])}")
    if importlib.util.find_spec("tensorrt") is None:
        raise ConfigError(
            "TensorRT is not installed on this machine, so no engine was built (the ONNX variants in "
            f"{ctx.onnx_dir} pass TensorRT's parser rules). On a machine with an NVIDIA GPU: "
            "pip install 'barsignal[gpu]', then run `barsignal compress engine` again")
    from barsignal.engine.tensorrt_build import build_engine

    out = {}
    for v, path in paths.items():
        ctx.progress(f"TensorRT engine {v}")
        out[v] = str(build_engine(path, ctx.workdir / "engines", version_compatible=version_compatible))
    return {"engines": out}


STAGE_FNS: dict[str, Callable[..., dict[str, Any]]] = {
    "distill": stage_distill, "prune": stage_prune, "export": stage_export, "quantize": stage_quantize,
}


def run(cfg: CompressionConfig, stages: tuple[str, ...] = STAGES, *, artifact: str | None = None,
        command: str = "", progress: Callable[[str], None] | None = None,
        data: Data | None = None) -> dict[str, Any]:
    """Run ``stages`` in order; returns each stage's summary and its wall time. ``data`` replaces the
    teacher's bars (tests pass a small real slice)."""
    ctx = Context(cfg, progress, data)
    out: dict[str, Any] = {}
    for stage in stages:
        t0 = time.perf_counter()
        ctx.progress(f"stage {stage}")
        if stage == "report":
            out[stage] = stage_report(ctx, artifact, command)
        elif stage == "engine":
            out[stage] = stage_engine(ctx)
        else:
            out[stage] = STAGE_FNS[stage](ctx)
        secs = time.perf_counter() - t0
        ctx.progress(f"stage {stage} done in {secs:.1f} s")
        out.setdefault("_seconds", {})[stage] = round(secs, 2)
    return out
