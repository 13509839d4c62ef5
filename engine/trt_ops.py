"""TensorRT's ONNX parser rules as a check on an ONNX graph, without TensorRT.

The op table is data (``data/tensorrt_onnx_ops.txt``, transcribed from onnx-tensorrt's
docs/operators.md with its source named there). ``check_graph`` returns every violation as a
sentence; an empty list means the graph passes: supported ops only, opset in range, no random
ops, TopK sorted with a constant K < 3840, static shapes (for the static variant), pooling 2D/3D,
constant axes where required, Dropout not in training mode.

``prepare_for_tensorrt`` applies the one rewrite TensorRT needs for our models: a 1D MaxPool or
AveragePool becomes Unsqueeze -> 2D pool -> Squeeze (the parser takes 2D/3D pooling only).
The TensorRT builder runs it before parsing; the check runs on its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPS_FILE = Path(__file__).resolve().parent / "data" / "tensorrt_onnx_ops.txt"
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Bernoulli", "Multinomial"})
_AXES_INPUT = {"Squeeze": 1, "Unsqueeze": 1, "ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1,
               "ReduceMin": 1, "ReduceProd": 1, "ReduceL1": 1, "ReduceL2": 1, "ReduceSumSquare": 1,
               "ReduceLogSum": 1, "ReduceLogSumExp": 1, "CumSum": 1, "TopK": 1}


@dataclass(frozen=True)
class OpTable:
    supported: frozenset[str]
    unsupported: frozenset[str]
    restrictions: dict[str, str]
    opset_min: int
    opset_max: int


@lru_cache(maxsize=1)
def op_table(path: Path = OPS_FILE) -> OpTable:
    sup, unsup, restr = set(), set(), {}
    lo, hi = 1, 10**6
    for raw in path.read_text().splitlines():
        if raw.startswith("#opset"):
            _, a, b = raw.split("\t")
            lo, hi = int(a), int(b)
            continue
        if not raw.strip() or raw.startswith("#"):
            continue
        parts = raw.split("\t")
        op, flag = parts[0], parts[1]
        (sup if flag == "Y" else unsup).add(op)
        if len(parts) > 2 and parts[2]:
            restr[op] = parts[2]
    return OpTable(frozenset(sup), frozenset(unsup), restr, lo, hi)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def check_graph(model: onnx.ModelProto, *, static: bool = True) -> list[str]:
    """Every way ``model`` breaks TensorRT's ONNX parser rules (empty list: it passes)."""
    table = op_table()
    bad: list[str] = []
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    v = opsets.get("ai.onnx")
    if v is None or not table.opset_min <= v <= table.opset_max:
        bad.append(f"opset {v} outside TensorRT's range {table.opset_min}..{table.opset_max}")
    g = model.graph
    consts = _constants(g)
    for n in g.node:
        where = f"node {n.name or n.output[0]!r} ({n.op_type})"
        if n.domain not in ("", "ai.onnx"):
            bad.append(f"{where}: custom domain {n.domain!r} (needs a plugin)")
            continue
        if n.op_type in RANDOM_OPS:
            bad.append(f"{where}: random op (non-deterministic; TensorRT ignores the seed)")
        if n.op_type not in table.supported:
            why = "listed as unsupported" if n.op_type in table.unsupported else "not in the op table"
            bad.append(f"{where}: {why}")
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "TopK":
            if attrs.get("sorted", 1) != 1:
                bad.append(f"{where}: sorted must be 1")
            k = consts.get(n.input[1]) if len(n.input) > 1 else None
            if k is None:
                bad.append(f"{where}: K must be a constant")
            elif int(np.asarray(k).reshape(-1)[0]) >= 3840:
                bad.append(f"{where}: K must be less than 3840")
        if n.op_type in _AXES_INPUT and len(n.input) > _AXES_INPUT[n.op_type] \
                and n.input[_AXES_INPUT[n.op_type]] and n.input[_AXES_INPUT[n.op_type]] not in consts:
            bad.append(f"{where}: axes/K input must be a constant")
        if n.op_type in ("MaxPool", "AveragePool", "LpPool"):
            ks = attrs.get("kernel_shape", [])
            if len(ks) not in (2, 3):
                bad.append(f"{where}: {len(ks)}D pooling; TensorRT supports 2D or 3D only")
            if any(d != 1 for d in attrs.get("dilations", []) or []):
                bad.append(f"{where}: dilations must be all ones")
            if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]:
                bad.append(f"{where}: the Indices output is unsupported")
        if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2]:
            t = consts.get(n.input[2])
            if t is None or bool(np.asarray(t).reshape(-1)[0]):
                bad.append(f"{where}: is_training must be a constant False")
        if n.op_type == "LayerNormalization" and len([o for o in n.output if o]) > 1:
            bad.append(f"{where}: only the first output is supported")
    if static:
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
            tt = vi.type.tensor_type
            if not tt.HasField("shape"):
                bad.append(f"tensor {vi.name!r}: unknown rank")
            elif not all(d.HasField("dim_value") for d in tt.shape.dim):
                dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                        for d in tt.shape.dim]
                bad.append(f"tensor {vi.name!r}: dynamic shape {dims}")
    return bad


def prepare_for_tensorrt(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with 1D pooling rewritten as 2D (Unsqueeze -> pool -> Squeeze)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes: list[onnx.NodeProto] = []
    axes_name = "trt_pool_axes"
    need_axes = False
    for n in g.node:
        if n.op_type in ("MaxPool", "AveragePool"):
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if len(attrs.get("kernel_shape", [])) == 1:
                need_axes = True
                x4, y4 = f"{n.output[0]}_2d_in", f"{n.output[0]}_2d_out"
                new_attrs = {}
                for name, val in attrs.items():
                    if name == "kernel_shape" or name == "strides" or name == "dilations":
                        new_attrs[name] = [1, *val]
                    elif name == "pads":  # [begin, end] -> [0, begin, 0, end]
                        new_attrs[name] = [0, val[0], 0, val[1]]
                    else:
                        new_attrs[name] = val
                nodes += [
                    helper.make_node("Unsqueeze", [n.input[0], axes_name], [x4], name=f"{x4}_node"),
                    helper.make_node(n.op_type, [x4], [y4], name=f"{y4}_node", **new_attrs),
                    helper.make_node("Squeeze", [y4, axes_name], [n.output[0]], name=f"{n.output[0]}_sq"),
                ]
                continue
        nodes.append(n)
    if need_axes:
        g.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axes_name))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    out = onnx.shape_inference.infer_shapes(out)
    onnx.checker.check_model(out)
    return out
