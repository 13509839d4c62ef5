"""The serving graph: a full-attention Informer written as ONNX for batch 1, on 2-D tensors.

The daemon scores one window at a time. The exported static graph (``onnx_export``) keeps the
batch axis and torch's layout, so ONNX Runtime runs a Transpose/Pad/Conv/Transpose embedding, head
reshapes and transposes, and wraps every MatMul+Add it fuses into a Gemm in two Reshapes: 39
kernels for the bundled student. Written directly from the weights with the batch axis dropped,
the same network is 21 kernels (``Gather`` rows -> ``Gemm`` embedding with the positional table as
its bias; q/k/v in one ``Gemm`` with the attention scale folded into q; ``Gemm(q, k^T)``; no
reshapes for one head). Biases are moved where a kernel is saved: the attention output's bias
goes into the layer input's producer (the embedding's bias, the previous layer's last LayerNorm
shift) with q/k/v's bias compensated, so ``Gemm(y, W_out, x)`` does the residual add; the second
linear's bias goes into the first LayerNorm's shift (the first linear's bias compensated), so
``Gemm(h, W_2, x)`` does the other; the token mean is a ``Gemm`` with a constant (1, L) row. 19
kernels for the bundled student (the export: 35 nodes, 39 kernels). Measured (docs/BENCHMARKS.md): a third less
time per batch-1 call than the exported graph (ratio 0.64-0.68 at 21 kernels; the folds above
take 5-7 % more off). Probabilities differ from the exported graph by float32 rounding (sums in
another order, biases moved): :func:`write_serving` measures that and the artifact records it.

Supported: full attention (the student), any heads per layer, distilling layers (circular conv,
BatchNorm folded, ELU, max-pool as a row ``Gather`` + ``ReduceMax``). ProbSparse (the teacher) is
refused. torch is imported here (compression is the torch side).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from barsignal.compression.onnx_export import INPUT, OPSET, OUTPUT, _finalize, _save_atomic

LAYOUT = "batch1-2d"


class _Writer:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, base: str, value: np.ndarray) -> str:
        name = f"{base}_{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], n_out: int = 1, out: str | None = None, **attrs: Any) -> Any:
        self._n += 1
        outs = [out] if out is not None else [f"{op.lower()}_{self._n}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"{op}_{self._n}", **attrs))
        return outs[0] if n_out == 1 else outs

    def gemm(self, x: str, w_in_out: np.ndarray, bias: np.ndarray | None, base: str) -> str:
        ins = [x, self.const(f"{base}_w", w_in_out.astype(np.float32))]
        if bias is not None:
            ins.append(self.const(f"{base}_b", bias.astype(np.float32)))
        return self.op("Gemm", ins)


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def _im2col_index(length: int, k: int = 3) -> np.ndarray:
    """Rows (length, k) of a circular k=3 convolution's taps: t-1, t, t+1 (mod length)."""
    return np.array([[(t - 1 + j) % length for j in range(k)] for t in range(length)], np.int64)


def _conv_rows(w: _Writer, x: str, length: int, weight: np.ndarray, base: str) -> tuple[str, np.ndarray]:
    """(L, C) -> (L, 3C) circular taps and the (3C, O) matrix of a Conv1d weight (O, C, 3)."""
    o, c, k = weight.shape
    taps = w.op("Gather", [x, w.const(f"{base}_taps", _im2col_index(length, k))], axis=0)  # (L, 3, C)
    cols = w.op("Reshape", [taps, w.const(f"{base}_shape", np.array([length, k * c], np.int64))])
    return cols, np.transpose(weight, (2, 1, 0)).reshape(k * c, o)


def _layer_norm(w: _Writer, x: str, ln: Any, base: str, shift: np.ndarray | None = None) -> str:
    """LayerNorm of ``x``, its output moved by ``shift`` (a bias folded into its beta)."""
    beta = _np(ln.bias) if shift is None else _np(ln.bias) + shift
    return w.op("LayerNormalization", [x, w.const(f"{base}_g", _np(ln.weight).astype(np.float32)),
                                       w.const(f"{base}_b", beta.astype(np.float32))],
                axis=-1, epsilon=float(ln.eps), stash_type=1)


def _attention(w: _Writer, x: str, attn: Any, length: int, base: str, shift: np.ndarray | None) -> str:
    """``x + attn(x)`` where ``x`` holds the layer input plus ``shift`` (the output projection's bias,
    folded into x's producer; None: not folded, added here). q/k/v's biases are compensated so they
    see the layer input itself, and the output projection's Gemm adds the residual as its C."""
    h, e = attn.n_heads, attn.head_dim
    scale = 1.0 / math.sqrt(e)
    wq, wk, wv = (_np(m.weight).T for m in (attn.q, attn.k, attn.v))  # (D, H*E) each
    bq, bk, bv = (_np(m.bias) for m in (attn.q, attn.k, attn.v))
    wqkv, bqkv = np.concatenate([wq * scale, wk, wv], axis=1), np.concatenate([bq * scale, bk, bv])
    if shift is not None:
        bqkv = bqkv - shift @ wqkv
    qkv = w.gemm(x, wqkv, bqkv, f"{base}_qkv")
    q, k, v = w.op("Split", [qkv, w.const(f"{base}_split", np.array([h * e] * 3, np.int64))], 3, axis=1)
    if h == 1:
        s = w.op("Gemm", [q, k], transB=1)  # (L, L)
        y = w.op("MatMul", [w.op("Softmax", [s], axis=-1), v])  # (L, E)
    else:
        hshape = w.const(f"{base}_heads", np.array([length, h, e], np.int64))
        qh = w.op("Transpose", [w.op("Reshape", [q, hshape])], perm=[1, 0, 2])  # (H, L, E)
        kt = w.op("Transpose", [w.op("Reshape", [k, hshape])], perm=[1, 2, 0])  # (H, E, L)
        vh = w.op("Transpose", [w.op("Reshape", [v, hshape])], perm=[1, 0, 2])  # (H, L, E)
        a = w.op("Softmax", [w.op("MatMul", [qh, kt])], axis=-1)  # (H, L, L)
        yh = w.op("Transpose", [w.op("MatMul", [a, vh])], perm=[1, 0, 2])  # (L, H, E)
        y = w.op("Reshape", [yh, w.const(f"{base}_merge", np.array([length, h * e], np.int64))])
    wo = w.const(f"{base}_out_w", _np(attn.out.weight).T.astype(np.float32))
    if shift is not None:
        return w.op("Gemm", [y, wo, x])  # y @ W_out + (x + b_out): the residual add in the Gemm
    return w.op("Add", [x, w.op("Gemm", [y, wo, w.const(f"{base}_out_b", _np(attn.out.bias).astype(np.float32))])])


def batch1_graph(model: Any) -> onnx.ModelProto:
    """``model`` (an eval-mode full-attention ``Informer``) as a batch-1 ONNX graph:
    ``input`` (1, T, F) float32 -> ``up_probability`` (1,) float32, checked and shape-inferred."""
    cfg = model.cfg
    if cfg.attn != "full":
        raise ValueError(f"the batch-1 serving graph is written for full attention, not {cfg.attn!r}")
    t, f = cfg.window, cfg.n_features
    w = _Writer()
    # embedding: x[0]'s circular taps @ conv weight + positional table (as the Gemm's bias)
    taps = w.op("Gather", [INPUT, w.const("embed_taps", _im2col_index(t))], axis=1)  # (1, T, 3, F)
    cols = w.op("Reshape", [taps, w.const("embed_shape", np.array([t, 3 * f], np.int64))])
    wc = np.transpose(_np(model.embed.token.weight), (2, 1, 0)).reshape(3 * f, cfg.d_model)
    layers = list(model.layers)

    def out_bias(i: int) -> np.ndarray | None:  # layer i's attention output bias, folded upstream
        return _np(layers[i].attn.out.bias) if i < len(layers) else None

    shift = out_bias(0)
    pe = _np(model.embed.pe[0, :t])
    x = w.gemm(cols, wc, pe if shift is None else pe + shift, "embed")  # (T, D), plus layer 0's b_out
    length = t
    for i, layer in enumerate(layers):
        b2, w1 = _np(layer.ff2.bias), _np(layer.ff1.weight).T
        x = _layer_norm(w, _attention(w, x, layer.attn, length, f"l{i}_attn", shift), layer.norm1,
                        f"l{i}_norm1", shift=b2)  # h + b_2: the FF residual's C
        y = w.op("Gelu", [w.gemm(x, w1, _np(layer.ff1.bias) - b2 @ w1, f"l{i}_ff1")], approximate="none")
        y = w.op("Gemm", [y, w.const(f"l{i}_ff2_w", _np(layer.ff2.weight).T.astype(np.float32)), x])
        distil = i < len(model.distil)
        shift = None if distil else out_bias(i + 1)  # a distil layer between: the next layer adds b_out
        x = _layer_norm(w, y, layer.norm2, f"l{i}_norm2", shift=shift)
        if distil:
            d = model.distil[i]
            bn = d.norm
            g = _np(bn.weight) / np.sqrt(_np(bn.running_var) + float(bn.eps))
            cols, wd = _conv_rows(w, x, length, _np(d.conv.weight) * g[:, None, None], f"d{i}")
            bias = (_np(d.conv.bias) - _np(bn.running_mean)) * g + _np(bn.bias)
            z = w.op("Elu", [w.gemm(cols, wd, bias, f"d{i}_conv")], alpha=1.0)  # (L, D)
            out = (length + 2 - 3) // 2 + 1  # MaxPool1d(3, stride 2, padding 1): rows 2j-1..2j+1
            rows = np.clip(np.array([[2 * j - 1 + k for k in range(3)] for j in range(out)]), 0, length - 1)
            pooled = w.op("Gather", [z, w.const(f"d{i}_pool", rows.astype(np.int64))], axis=0)  # (L', 3, D)
            x = w.op("ReduceMax", [pooled, w.const(f"d{i}_axis", np.array([1], np.int64))], keepdims=0)
            length = out
    x = _layer_norm(w, x, model.norm, "norm")
    m = w.op("Gemm", [w.const("mean_row", np.full((1, length), 1.0 / length, np.float32)), x])  # (1, D)
    logit = w.gemm(m, _np(model.head.weight).T, _np(model.head.bias), "head")  # (1, 1)
    w.op("Sigmoid", [w.op("Reshape", [logit, w.const("out_shape", np.array([1], np.int64))])], out=OUTPUT)
    graph = helper.make_graph(
        w.nodes, "informer_batch1",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, t, f])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1])], w.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="barsignal.compression.batch1")
    proto.ir_version = min(proto.ir_version, 10)
    return _finalize(proto)


def _batch1_calls(path: Path, windows: np.ndarray) -> tuple[np.ndarray, Any]:
    """Each window's p through a one-thread session of ``path``, and a batch-1 call for timing."""
    from barsignal.compression.quantize import session

    sess = session(path)
    p = np.array([sess.run([OUTPUT], {INPUT: x[None]})[0].reshape(-1)[0] for x in windows], np.float32)
    return p, (lambda s=sess, feed={INPUT: windows[0][None]}: s.run([OUTPUT], feed))


def write_serving(model: Any, exported_static: Path, out: Path, windows: np.ndarray,
                  latency_iters: int = 3000) -> dict[str, Any]:
    """Write ``model``'s batch-1 graph to ``out`` and measure it against the exported static graph
    on ``windows`` (N, T, F) float32: |dp| max/mean, the fraction of bit-identical probabilities, and
    batch-1 p50 latency of both, interleaved in one loop (ONNX Runtime, one thread)."""
    proto = batch1_graph(model.eval())
    _save_atomic(proto, Path(out))
    p_old, call_old = _batch1_calls(Path(exported_static), windows)
    p_new, call_new = _batch1_calls(Path(out), windows)
    d = np.abs(p_new.astype(np.float64) - p_old.astype(np.float64))
    for c in (call_old, call_new):
        for _ in range(50):
            c()
    lat = np.zeros((2, latency_iters))
    for i in range(latency_iters):
        for j, c in enumerate((call_old, call_new)):
            t0 = time.perf_counter_ns()
            c()
            lat[j, i] = (time.perf_counter_ns() - t0) / 1e3
    return {"layout": LAYOUT, "nodes": len(proto.graph.node), "against": "the exported static graph",
            "exported_nodes": len(onnx.load(str(exported_static)).graph.node),
            "windows": len(windows), "max_abs_dp_vs_exported": float(d.max()),
            "mean_abs_dp_vs_exported": float(d.mean()), "identical_fraction": float(np.mean(d == 0)),
            "latency_p50_us": float(np.percentile(lat[1], 50)),
            "exported_latency_p50_us": float(np.percentile(lat[0], 50))}


def _real_windows(artifact: Any, data: Path, n: int) -> np.ndarray:
    """Up to ``n`` windows, evenly spaced, of the bars in ``data`` through the artifact's features."""
    from barsignal.data import load_many
    from barsignal.features.batch import compute_with_ready, window_ends
    from barsignal.features.normalize import Normalizer

    t = artifact.window_shape[0]
    x, ready = compute_with_ready(load_many([data]).frame)
    z = Normalizer.from_dict(artifact.normalization).transform(x)
    ends = window_ends(ready, t)
    ends = ends[np.linspace(0, len(ends) - 1, min(n, len(ends))).round().astype(np.int64)]
    return np.stack([z[e - t + 1:e + 1] for e in ends]).astype(np.float32)


def rewrite_artifact(src: Path, dest: Path, data: Path, *, variant: str = "fp32", windows: int = 5000,
                     command: str = "") -> dict[str, Any]:
    """Replace ``variant``'s static graph in the artifact ``src`` by its batch-1 serving graph (from the
    variant's safetensors weights) and write the result to ``dest`` (may be ``src``), with the
    measurements of :func:`write_serving` on real windows of ``data`` and the variant's batch drift
    re-measured (dynamic graph at batch 512 vs the new static one). Returns the serving entry."""
    import tempfile

    from barsignal.compression.report import _batch_drift
    from barsignal.engine.artifact import load_artifact, rewrite_artifact
    from barsignal.model.torch_backend import build_model

    art = load_artifact(src)
    v = art.variant(variant)
    if v.onnx_dynamic is None:
        raise ValueError(f"{src}: variant {variant!r} has no dynamic graph to measure the batch drift against")
    x = _real_windows(art, data, windows)
    m = dict(art.manifest)
    with tempfile.TemporaryDirectory(prefix="barsignal-batch1-") as tmp:
        out = Path(tmp) / "serving.onnx"
        info = write_serving(build_model(v), v.onnx, out, x)
        info["windows_from"] = Path(data).name
        drift = _batch_drift(out, v.onnx_dynamic, x[:1000])
        entry = dict(m["variants"][variant])
        if "serving_graph" in entry:  # the static graph is an earlier serving graph, not the exported one
            info["against"] = f"the previous serving graph ({entry['serving_graph']['layout']})"
            info["previous"] = entry["serving_graph"]
        entry.update(serving_graph=info, batch_drift=drift)
        rewrite_artifact(art, dest, files={entry["onnx"]: out}, variants={variant: entry}, revision={
            "command": command or "barsignal compress serving",
            "what": f"variant {variant}: static graph rewritten as the batch-1 serving graph ({LAYOUT})"})
    return {**info, "batch_drift": drift}
