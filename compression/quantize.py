"""Quantized ONNX variants and their diagnostics.

Variants (the pipeline converts the static (1, 30, 33) FP32 ONNX and its dynamic-batch twin
separately, with the same calibration windows, so both carry the same weights and scales):

- **FP16**: every float initializer and op in float16, graph inputs/outputs kept float32
  (``onnxruntime.transformers.float16`` with ``keep_io_types=True``).
- **INT8 dynamic**: ONNX Runtime dynamic quantization (int8 weights, activations quantized per
  call from their min/max).
- **INT8 static (QDQ)**: QuantizeLinear/DequantizeLinear pairs, int8 symmetric per-channel weights,
  int8 activations calibrated (min/max) on training windows.
- **QAT**: the student fine-tuned with torchao fake quantization (``QATConfig`` with int8
  per-channel symmetric weights and int8 per-token asymmetric activations on every Linear), then
  converted back to plain Linear layers and exported through the same QDQ path. The weights match
  the deployed integers exactly (same per-channel symmetric scheme); the activations are trained
  per token but deployed with static per-tensor scales: stated in the report.

Diagnostics: per-initializer weight error ||W - DQ(Q(W))|| / ||W||, activation clipping rate on
calibration data (fraction of values outside each QuantizeLinear's representable range), and a
per-layer-group sensitivity sweep (quantize one group at a time, measure fidelity against FP32).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

INPUT, OUTPUT = "input", "up_probability"
GROUPS = ("embedding", "attention", "ffn", "norms", "head", "distil")


# --- running ONNX ----------------------------------------------------------------------------------


def session(path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with the engine's options (all graph optimizations, as ORT's default)."""
    from barsignal.engine.backends.ort import open_session, session_options

    return open_session(Path(path), session_options(threads, opt_level="all"))


def onnx_proba(path: str | Path, x: np.ndarray, batch: int = 512, threads: int = 1) -> np.ndarray:
    """Up-probabilities (N,) float32 from a dynamic-batch ONNX model."""
    sess = session(path, threads)
    outs = [sess.run([OUTPUT], {INPUT: np.ascontiguousarray(x[i:i + batch], dtype=np.float32)})[0]
            for i in range(0, len(x), batch)]
    return np.concatenate([o.reshape(-1) for o in outs]).astype(np.float32)


# --- variants --------------------------------------------------------------------------------------


def topo_sort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` topologically in place (converters append their Casts at the end)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input near node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """FP16 weights and compute, FP32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=False)
    topo_sort(m.graph)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return Path(dst)


def int8_dynamic(src: str | Path, dst: str | Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    return Path(dst)


class _Reader:
    """Calibration batches for ``quantize_static``."""

    def __init__(self, x: np.ndarray, batch: int = 64) -> None:
        self._it = iter([{INPUT: np.ascontiguousarray(x[i:i + batch], dtype=np.float32)}
                         for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


# The compute ops worth integer kernels on CPU; the norms group adds LayerNormalization.
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv")


def _output_nodes(path: str | Path) -> list[str]:
    """Nodes that produce a graph output (kept in float: quantizing p_up would round it to 1/255)."""
    m = onnx.load(str(path))
    outs = {o.name for o in m.graph.output}
    return [n.name for n in m.graph.node if set(n.output) & outs]


def int8_static(src: str | Path, dst: str | Path, calibration: np.ndarray,
                nodes_to_quantize: list[str] | None = None,
                op_types: tuple[str, ...] = STATIC_OP_TYPES, batch: int = 64) -> Path:
    """INT8 QDQ: symmetric per-channel int8 weights, int8 activations calibrated by min/max on
    ``calibration`` windows. Only ``op_types`` (and ``nodes_to_quantize``, when given) are quantized."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src), str(dst), _Reader(calibration, batch), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes_to_quantize,
        nodes_to_exclude=_output_nodes(src), op_types_to_quantize=list(op_types),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return Path(dst)


def count_ops(path: str | Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def io_types(path: str | Path) -> dict[str, int]:
    """Element types of the graph inputs and outputs (onnx.TensorProto enum values)."""
    g = onnx.load(str(path)).graph
    return {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output)}


# --- QAT (torchao) ---------------------------------------------------------------------------------


def qat_prepare(model: Any) -> Any:
    """Swap every nn.Linear for torchao's FakeQuantizedLinear (int8 weights and activations)."""
    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    wt = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    quantize_(model, QATConfig(activation_config=act, weight_config=wt, step="prepare"))
    return model


def qat_strip(model: Any) -> Any:
    """Back to plain nn.Linear layers (the fine-tuned weights), ready for the QDQ export path."""
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, FakeQuantizedLinear):
                setattr(mod, child_name, child.to_linear())
        del name
    return model


def count_fake_quantized(model: Any) -> int:
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    return sum(isinstance(m, FakeQuantizedLinear) for m in model.modules())


# --- diagnostics -----------------------------------------------------------------------------------


def _initializers(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def weight_errors(fp32: str | Path, quantized: str | Path) -> dict[str, float]:
    """||W - Q(W)|| / ||W|| per torch module, for every FP32 weight the quantized model stores quantized.

    INT8: the stored integers ``N_quantized`` dequantized with ``N_scale``/``N_zero_point`` (per
    channel when the scale is a vector). FP16: the float16 initializer of the same name.
    """
    ref = {k: v for k, v in _initializers(onnx.load(str(fp32))).items()
           if v.dtype == np.float32 and v.ndim >= 2}
    q = _initializers(onnx.load(str(quantized)))
    owners = weight_owners(fp32)
    out: dict[str, float] = {}
    for name, w in ref.items():
        norm = float(np.linalg.norm(w))
        if norm == 0:
            continue
        if f"{name}_quantized" in q and f"{name}_scale" in q:
            qi = q[f"{name}_quantized"].astype(np.float64)
            scale = q[f"{name}_scale"].astype(np.float64)
            zp = q.get(f"{name}_zero_point", np.zeros_like(scale)).astype(np.float64)
            if scale.ndim == 1 and scale.size > 1:  # per channel: find the axis of that length
                axis = next(a for a in range(qi.ndim) if qi.shape[a] == scale.size)
                shape = [1] * qi.ndim
                shape[axis] = scale.size
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            deq = (qi - zp) * scale
            if deq.shape != w.shape:
                continue
            out[owners.get(name, name)] = float(np.linalg.norm(w - deq) / norm)
        elif name in q and q[name].dtype == np.float16:
            out[owners.get(name, name)] = float(np.linalg.norm(w - q[name].astype(np.float64)) / norm)
    return out


def _with_outputs(path: str | Path, names: Iterable[str]) -> bytes:
    m = onnx.load(str(path))
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return m.SerializeToString()


def clipping_rate(fp32: str | Path, quantized: str | Path, calibration: np.ndarray,
                  batch: int = 256) -> dict[str, Any]:
    """Fraction of FP32 activation values outside the range each activation QuantizeLinear can
    represent (by more than half a quantization step, i.e. saturated rather than rounded), on
    ``calibration`` windows. Returns the overall rate and the rate per tensor."""
    import onnxruntime as ort

    qm = onnx.load(str(quantized))
    inits = _initializers(qm)
    ranges: dict[str, tuple[float, float]] = {}
    for n in qm.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        scale = float(np.asarray(inits[n.input[1]]).reshape(-1)[0])
        zp_arr = inits.get(n.input[2]) if len(n.input) > 2 else None
        zp = float(np.asarray(zp_arr).reshape(-1)[0]) if zp_arr is not None else 0.0
        info = np.iinfo(zp_arr.dtype if zp_arr is not None else np.uint8)
        # beyond half a step outside [qmin, qmax]: within it a value rounds to qmin/qmax anyway
        ranges[n.input[0]] = ((info.min - 0.5 - zp) * scale, (info.max + 0.5 - zp) * scale)
    produced = {o for n in onnx.load(str(fp32)).graph.node for o in n.output}
    ranges = {k: v for k, v in ranges.items() if k in produced}
    if not ranges:
        return {"rate": 0.0, "tensors": 0, "per_tensor": {}, "note": "no static activation quantizers"}
    sess = ort.InferenceSession(_with_outputs(fp32, ranges), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    names = [n for n in ranges if n in outs]
    clipped = dict.fromkeys(names, 0)
    total = dict.fromkeys(names, 0)
    for i in range(0, len(calibration), batch):
        vals = sess.run(names, {INPUT: np.ascontiguousarray(calibration[i:i + batch], dtype=np.float32)})
        for n, v in zip(names, vals, strict=True):
            lo, hi = ranges[n]
            clipped[n] += int(np.count_nonzero((v < lo) | (v > hi)))
            total[n] += v.size
    all_c, all_t = sum(clipped.values()), sum(total.values())
    return {"rate": all_c / max(all_t, 1), "tensors": len(names),
            "per_tensor": {n: clipped[n] / max(total[n], 1) for n in names}}


def fp16_overflow_rate(fp32: str | Path, calibration: np.ndarray, batch: int = 256) -> dict[str, Any]:
    """Fraction of FP32 intermediate values beyond float16's finite range (|x| > 65504)."""
    import onnxruntime as ort

    m = onnx.load(str(fp32))
    names = [o for n in m.graph.node for o in n.output]
    sess = ort.InferenceSession(_with_outputs(fp32, names), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    c = t = 0
    for i in range(0, len(calibration), batch):
        for v in sess.run(outs, {INPUT: np.ascontiguousarray(calibration[i:i + batch], dtype=np.float32)}):
            if v.dtype.kind == "f":
                c += int(np.count_nonzero(np.abs(v) > 65504.0))
                t += v.size
    return {"rate": c / max(t, 1), "tensors": len(outs)}


_GROUP_RULES = (
    ("embedding", re.compile(r"\.embed\b")),
    ("distil", re.compile(r"\.distil\.\d")),
    ("attention", re.compile(r"\.attn\b")),
    ("ffn", re.compile(r"\.ff[12]\b")),
    ("norms", re.compile(r"\.norm\d?\b")),
    ("head", re.compile(r"\.head\b")),
)
_MODULE = re.compile(r"([A-Za-z_][\w.]*): [\w.<>]+")


def group_of(scope: str) -> str | None:
    """The layer group of a module path or an exporter namespace (``.../inner.layers.0.attn.q: ...``)."""
    for group, rx in _GROUP_RULES:
        if rx.search(scope):
            return group
    return None


def _namespace(node: onnx.NodeProto) -> str:
    for p in node.metadata_props:
        if p.key == "namespace":
            return p.value
    return node.name


def module_of(node: onnx.NodeProto) -> str:
    """The deepest torch module path recorded by the exporter for ``node`` (or its name)."""
    mods = [m for m in _MODULE.findall(_namespace(node)) if "." in m or m == "inner"]
    return mods[-1] if mods else node.name


def weight_owners(fp32: str | Path) -> dict[str, str]:
    """Initializer name -> the torch module that owns it (through the node that consumes it)."""
    m = onnx.load(str(fp32))
    inits = {i.name for i in m.graph.initializer}
    out: dict[str, str] = {}
    for n in m.graph.node:
        for i in n.input:
            if i in inits and i not in out:
                out[i] = module_of(n)
    return out


def node_groups(fp32: str | Path) -> dict[str, list[str]]:
    """Layer group -> names of the nodes the exporter placed inside that group's modules."""
    m = onnx.load(str(fp32))
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for n in m.graph.node:
        g = group_of(_namespace(n))
        if g is not None:
            out[g].append(n.name)
    return {g: v for g, v in out.items() if v}


def sensitivity(fp32: str | Path, calibration: np.ndarray, x_eval: np.ndarray, workdir: str | Path,
                long_threshold: float, short_threshold: float | None = None) -> dict[str, Any]:
    """Quantize one layer group at a time (INT8 static QDQ), measure fidelity against FP32.

    Returns per-group figures and the mixed-precision recommendation: the groups whose solo
    quantization keeps signal agreement >= 99.5 % and mean |Δp| <= 2x the best group's stay INT8,
    the rest stay FP32. The recommended mix is then built and measured too.
    """
    from barsignal.compression.metrics import agreement, signal_agreement

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    p_ref = onnx_proba(fp32, x_eval)
    groups = node_groups(fp32)
    rows: dict[str, dict[str, float]] = {}
    for g, nodes in groups.items():
        out = int8_static(fp32, workdir / f"sens_{g}.onnx", calibration, nodes_to_quantize=nodes,
                          op_types=(*STATIC_OP_TYPES, "LayerNormalization"))
        p = onnx_proba(out, x_eval)
        rows[g] = {**agreement(p_ref, p),
                   "signal_agreement": signal_agreement(p_ref, p, long_threshold, short_threshold),
                   "nodes": len(nodes)}
    best = min((r["mean_abs_dp"] for r in rows.values()), default=0.0)
    int8_groups = [g for g, r in rows.items()
                   if r["signal_agreement"] >= 0.995 and r["mean_abs_dp"] <= max(2 * best, 1e-4)]
    mix: dict[str, Any] = {"int8_groups": int8_groups, "fp32_groups": sorted(set(rows) - set(int8_groups))}
    if int8_groups:
        nodes = [n for g in int8_groups for n in groups[g]]
        out = int8_static(fp32, workdir / "sens_mixed.onnx", calibration, nodes_to_quantize=nodes,
                          op_types=(*STATIC_OP_TYPES, "LayerNormalization"))
        p = onnx_proba(out, x_eval)
        mix["measured"] = {**agreement(p_ref, p),
                           "signal_agreement": signal_agreement(p_ref, p, long_threshold, short_threshold)}
    return {"groups": rows, "recommendation": mix,
            "rule": "INT8 for a group whose solo INT8 keeps signal agreement >= 99.5 % and mean |Δp| "
                    "<= 2x the least sensitive group's; FP32 for the rest"}
