"""ONNX export of an Informer: single file, opset >= 19, ``input`` -> ``up_probability``.

The export goes through ``torch.onnx.export(dynamo=True)``: circular padding becomes ``Pad``
mode ``wrap`` (opset 19), the sigmoid is part of the graph, eval-mode BatchNorm is folded into the
conv, constants are folded by the exporter's optimizer. Then these ONNX rewrites run, each one
optional so that its effect can be measured (``barsignal bench scoring --graph-ablation``):

- ``dropout``: remove inference no-ops (Dropout, Identity);
- ``scale``: fold the attention scale (a scalar Mul after a Linear, possibly through
  Reshape/Transpose) into that Linear's weight and bias;
- ``qkv``: fuse MatMul+Add projections that share an input (q, k, v) into one MatMul, one Add and
  a Split;
- ``transpose``: collapse Reshape/Transpose chains whose net effect is one permutation (static
  shapes only) into a single Transpose;
- ``topk``: mark TopK ``sorted=1`` (TensorRT's parser only supports sorted TopK; the teacher's
  ProbSparse uses the indices as a set, so order does not matter).

torch is imported here (compression is the torch side); the engine never imports this module.
"""

from __future__ import annotations

import collections
import itertools
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from barsignal.fsutil import atomic_write_bytes

INPUT, OUTPUT = "input", "up_probability"
OPSET = 20
PASSES = ("dropout", "scale", "qkv", "transpose", "topk")


@dataclass
class ExportInfo:
    path: Path
    dynamic_batch: bool
    nodes: int
    ops: dict[str, int]
    passes: dict[str, int] = field(default_factory=dict)  # pass -> rewrites it made


# --- export ----------------------------------------------------------------------------------------


def _probability_module(model: Any) -> Any:
    import torch

    class ProbabilityHead(torch.nn.Module):
        """sigmoid(model(x)): the graph outputs the up-probability, not the logit."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.inner(x))  # (B,)

    return ProbabilityHead(model).eval()


def export_onnx(model: Any, path: str | os.PathLike[str], *, dynamic_batch: bool = False,
                passes: Iterable[str] = PASSES, exporter_optimize: bool = True) -> ExportInfo:
    """Export ``model`` (an Informer; logits (B,)) to one ONNX file with the probability output.

    Static input (1, T, F) unless ``dynamic_batch``. Deterministic: ProbSparse models are put in
    export mode (no random key sampling). The file is written atomically.
    """
    import torch

    passes = tuple(passes)
    unknown = set(passes) - set(PASSES)
    if unknown:
        raise ValueError(f"unknown ONNX passes {sorted(unknown)}; known: {PASSES}")
    model = model.eval()
    if hasattr(model, "export_mode"):
        model.export_mode(True)
    cfg = model.cfg
    x = torch.zeros(2 if dynamic_batch else 1, cfg.window, cfg.n_features)  # (B, T, F)
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=1 << 20)}}
    import contextlib
    import io

    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        prog = torch.onnx.export(_probability_module(model), (x,), None, input_names=[INPUT],
                                 output_names=[OUTPUT], opset_version=OPSET, dynamo=True,
                                 external_data=False, optimize=exporter_optimize, **kwargs)
    proto = prog.model_proto
    counts = rewrite(proto, passes)
    proto = _finalize(proto)
    path = Path(path)
    _save_atomic(proto, path)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    return ExportInfo(path, dynamic_batch, len(proto.graph.node), dict(ops), counts)


def export_variant(model: Any, out_dir: str | os.PathLike[str], name: str,
                   passes: Iterable[str] = PASSES) -> dict[str, str]:
    """Write ``{name}.onnx`` (static) and ``{name}.dynamic.onnx`` into ``out_dir``; return the
    manifest's variant entry (file names relative to the artifact)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    passes = tuple(passes)
    export_onnx(model, out / f"{name}.onnx", passes=passes)
    export_onnx(model, out / f"{name}.dynamic.onnx", dynamic_batch=True, passes=passes)
    return {"onnx": f"{name}.onnx", "onnx_dynamic": f"{name}.dynamic.onnx"}


def _finalize(proto: onnx.ModelProto) -> onnx.ModelProto:
    # Drop stale value_info left by the exporter and rewrites, then re-infer and check.
    del proto.graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _save_atomic(proto: onnx.ModelProto, path: Path) -> None:
    atomic_write_bytes(path, proto.SerializeToString())


# --- graph rewrites --------------------------------------------------------------------------------


class _Graph:
    """Index over a GraphProto: producers, consumers, initializers (rebuilt after each rewrite)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.g = graph
        # Own copies in a plain list: protobuf element wrappers have no stable identity.
        self.nodes: list[onnx.NodeProto] = []
        for n in graph.node:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            self.nodes.append(c)
        self.refresh()

    def commit(self) -> None:
        del self.g.node[:]
        self.g.node.extend(self.nodes)

    def refresh(self) -> None:
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                self.consumers[i].append(n)
        self.inits = {t.name: t for t in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def set_init(self, name: str, value: np.ndarray) -> None:
        if name in self.inits:
            self.inits[name].CopyFrom(numpy_helper.from_array(value, name))
        else:
            self.g.initializer.append(numpy_helper.from_array(value, name))
        self.inits = {t.name: t for t in self.g.initializer}

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        c = self.consumers.get(name, [])
        return c[0] if len(c) == 1 and name not in self.outputs else None

    def replace_uses(self, old: str, new: str) -> None:
        for n in self.nodes:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new

    def remove(self, nodes: Iterable[onnx.NodeProto]) -> None:
        ids = {id(n) for n in nodes}
        self.nodes = [n for n in self.nodes if id(n) not in ids]

    def prune_initializers(self) -> None:
        used = {i for n in self.nodes for i in n.input} | self.outputs
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)

    def unique(self, base: str) -> str:
        names = {o for n in self.nodes for o in n.output} | {n.name for n in self.nodes} | set(self.inits)
        for k in itertools.count():
            cand = f"{base}_{k}"
            if cand not in names:
                return cand
        raise AssertionError("unreachable")


def rewrite(proto: onnx.ModelProto, passes: Sequence[str] = PASSES) -> dict[str, int]:
    """Run the named passes in canonical order, in place; return how many rewrites each made."""
    counts: dict[str, int] = {}
    g = _Graph(proto.graph)
    for name in PASSES:
        if name in passes:
            counts[name] = _PASS_FNS[name](g, proto)
            g.refresh()
    g.prune_initializers()
    g.commit()
    _topo_sort(proto.graph)
    return counts


def _remove_noops(g: _Graph, proto: onnx.ModelProto) -> int:
    n_done = 0
    for n in list(g.nodes):
        if n.op_type not in ("Dropout", "Identity"):
            continue
        if n.op_type == "Dropout" and len(n.output) > 1 and n.output[1] and g.consumers.get(n.output[1]):
            continue  # the mask is used: not a no-op
        src, dst = n.input[0], n.output[0]
        if dst in g.outputs:
            prod = g.producer.get(src)
            if prod is None or src in g.outputs or any(i.name == src for i in g.g.input):
                continue
            for k, o in enumerate(prod.output):
                if o == src:
                    prod.output[k] = dst
            g.replace_uses(src, dst)
        else:
            g.replace_uses(dst, src)
        g.remove([n])
        g.refresh()
        n_done += 1
    return n_done


def _linear_of(g: _Graph, name: str) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(MatMul, Add) when ``name`` is the output of Add(MatMul(x, W const), b const)."""
    add = g.producer.get(name)
    if add is None or add.op_type != "Add":
        return None
    for mm_in, b_in in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        mm = g.producer.get(mm_in)
        if mm is not None and mm.op_type == "MatMul" and g.const(mm.input[1]) is not None \
                and g.const(b_in) is not None and g.single_consumer(mm_in) is add:
            return mm, add
    return None


def _fold_scale(g: _Graph, proto: onnx.ModelProto) -> int:
    """Mul(chain(Add(MatMul(x, W), b)), s) with scalar s -> the chain on Add(MatMul(x, W*s), b*s)."""
    n_done = 0
    for mul in list(g.nodes):
        if mul.op_type != "Mul":
            continue
        for x_in, s_in in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            s = g.const(s_in)
            if s is None or s.size != 1:
                continue
            cur, chain = x_in, []
            while (p := g.producer.get(cur)) is not None and p.op_type in ("Reshape", "Transpose") \
                    and g.single_consumer(cur) is not None:
                chain.append(p)
                cur = p.input[0]
            lin = _linear_of(g, cur)
            if lin is None or g.single_consumer(cur) is None \
                    or (not chain and g.single_consumer(x_in) is None):
                continue
            mm, add = lin
            b_name = add.input[1] if g.const(add.input[1]) is not None else add.input[0]
            w_new, b_new = g.unique(mm.input[1] + "_scaled"), g.unique(b_name + "_scaled")
            g.set_init(w_new, (g.const(mm.input[1]) * s.reshape(())).astype(np.float32))
            g.set_init(b_new, (g.const(b_name) * s.reshape(())).astype(np.float32))
            mm.input[1] = w_new
            for k, i in enumerate(add.input):
                if i == b_name:
                    add.input[k] = b_new
            g.replace_uses(mul.output[0], x_in)
            g.remove([mul])
            g.refresh()
            n_done += 1
            break
    return n_done


def _fuse_qkv(g: _Graph, proto: onnx.ModelProto) -> int:
    """MatMul+Add projections reading the same tensor -> one MatMul, one Add, one Split."""
    n_done = 0
    groups: dict[str, list[tuple[onnx.NodeProto, onnx.NodeProto]]] = collections.defaultdict(list)
    for mm in g.nodes:
        if mm.op_type != "MatMul":
            continue
        w = g.const(mm.input[1])
        add = g.single_consumer(mm.output[0])
        if w is None or w.ndim != 2 or add is None or add.op_type != "Add":
            continue
        b_in = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
        b = g.const(b_in)
        if b is None or b.shape != (w.shape[1],):
            continue
        groups[mm.input[0]].append((mm, add))
    for x, members in groups.items():
        if len(members) < 2:
            continue
        ws = [g.const(mm.input[1]) for mm, _ in members]
        bs = [g.const(a.input[1] if a.input[0] == mm.output[0] else a.input[0]) for mm, a in members]
        if len({w.shape[0] for w in ws}) != 1:
            continue
        w_name, b_name = g.unique(f"{x}_qkv_w"), g.unique(f"{x}_qkv_b")
        split_name = g.unique(f"{x}_qkv_split")
        g.set_init(w_name, np.concatenate(ws, axis=1).astype(np.float32))
        g.set_init(b_name, np.concatenate(bs).astype(np.float32))
        g.set_init(split_name, np.array([w.shape[1] for w in ws], np.int64))
        mm_out, add_out = g.unique(f"{x}_qkv_mm"), g.unique(f"{x}_qkv")
        first = members[0][0]
        new = [helper.make_node("MatMul", [x, w_name], [mm_out], name=mm_out),
               helper.make_node("Add", [mm_out, b_name], [add_out], name=add_out),
               helper.make_node("Split", [add_out, split_name], [a.output[0] for _, a in members],
                                axis=-1, name=g.unique(f"{x}_qkv_split_node"))]
        idx = next(k for k, n in enumerate(g.nodes) if n is first)
        g.remove([n for pair in members for n in pair])
        for k, n in enumerate(new):
            g.nodes.insert(idx + k, n)
        g.refresh()
        n_done += 1
    return n_done


def _static_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    out: dict[str, tuple[int, ...]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    return out


def _collapse_transposes(g: _Graph, proto: onnx.ModelProto) -> int:
    """A Reshape/Transpose chain (length >= 2, static shapes) equal to one permutation, optionally
    followed by a reshape, becomes a single Transpose (+ Reshape)."""
    shapes = _static_shapes(proto)
    n_done = 0
    done_ids: set[int] = set()
    for end in list(g.nodes):
        if end.op_type not in ("Reshape", "Transpose") or id(end) in done_ids:
            continue
        # Only start from the last node of a chain.
        nxt = g.single_consumer(end.output[0])
        if nxt is not None and nxt.op_type in ("Reshape", "Transpose"):
            continue
        chain = [end]
        cur = end.input[0]
        while (p := g.producer.get(cur)) is not None and p.op_type in ("Reshape", "Transpose") \
                and g.single_consumer(cur) is not None:
            chain.insert(0, p)
            cur = p.input[0]
        n_transposes = sum(n.op_type == "Transpose" for n in chain)
        if len(chain) < 2 or n_transposes < 1:
            continue
        src, dst = chain[0].input[0], end.output[0]
        if src not in shapes or dst not in shapes:
            continue
        in_shape, out_shape = shapes[src], shapes[dst]
        probe = np.arange(int(np.prod(in_shape))).reshape(in_shape)
        ok = True
        y = probe
        for n in chain:
            if n.op_type == "Transpose":
                perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
                y = np.transpose(y, perm)
            else:
                if n.output[0] not in shapes:
                    ok = False
                    break
                y = y.reshape(shapes[n.output[0]])
        if not ok:
            continue
        found = None
        for perm in itertools.permutations(range(len(in_shape))):
            t = np.transpose(probe, perm)
            if t.size == y.size and np.array_equal(t.reshape(y.shape), y):
                found = (list(perm), tuple(t.shape))
                break
        if found is None:
            continue
        perm, t_shape = found
        new_nodes = []
        if t_shape == tuple(out_shape):
            new_nodes.append(helper.make_node("Transpose", [src], [dst], perm=perm, name=g.unique("perm")))
        else:
            if len(chain) == 2:
                continue  # already one Transpose + one Reshape
            mid = g.unique("perm_out")
            shp = g.unique("perm_shape")
            g.set_init(shp, np.array(out_shape, np.int64))
            new_nodes += [helper.make_node("Transpose", [src], [mid], perm=perm, name=mid),
                          helper.make_node("Reshape", [mid, shp], [dst], name=g.unique("perm_reshape"))]
        idx = next(k for k, n in enumerate(g.nodes) if n is chain[0])
        done_ids.update(id(n) for n in chain)
        g.remove(chain)
        for k, n in enumerate(new_nodes):
            g.nodes.insert(idx + k, n)
        g.refresh()
        n_done += 1
    return n_done


def _sort_topk(g: _Graph, proto: onnx.ModelProto) -> int:
    n_done = 0
    for n in g.nodes:
        if n.op_type == "TopK":
            attrs = {a.name: a for a in n.attribute}
            if "sorted" in attrs and attrs["sorted"].i == 1:
                continue
            for a in list(n.attribute):
                if a.name == "sorted":
                    n.attribute.remove(a)
            n.attribute.append(helper.make_attribute("sorted", 1))
            n_done += 1
    return n_done


_PASS_FNS = {"dropout": _remove_noops, "scale": _fold_scale, "qkv": _fuse_qkv,
             "transpose": _collapse_transposes, "topk": _sort_topk}


def _topo_sort(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("ONNX rewrite left a cycle or a dangling input")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ids]
    del graph.node[:]
    graph.node.extend(ordered)


# --- parity ---------------------------------------------------------------------------------------


def torch_probabilities(model: Any, windows: np.ndarray, batch: int = 4096) -> np.ndarray:
    """sigmoid(model(windows)) in float32, eval mode, export mode (deterministic)."""
    import torch

    model = model.eval()
    if hasattr(model, "export_mode"):
        model.export_mode(True)
    out = []
    with torch.no_grad():
        for s in range(0, len(windows), batch):
            out.append(torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(windows[s:s + batch])))))
    return torch.cat(out).numpy().astype(np.float32)


def parity(model: Any, onnx_path: str | os.PathLike[str], windows: np.ndarray) -> dict[str, float]:
    """|Δp| between PyTorch and ONNX Runtime on ``windows`` (N, T, F): max, p99, mean, and n."""
    from barsignal.engine.backends.ort import OnnxRuntimeScorer

    ref = torch_probabilities(model, windows)
    scorer = OnnxRuntimeScorer(Path(onnx_path), warmup=1)
    got = np.array([scorer.score(w) for w in windows], np.float32)
    d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return {"n": len(windows), "max_abs": float(d.max()), "p99_abs": float(np.quantile(d, 0.99)),
            "mean_abs": float(d.mean())}


# --- artifact --------------------------------------------------------------------------------------


def build_artifact(out: str | os.PathLike[str], variants: dict[str, Any], *, default_variant: str,
                   normalization: dict[str, Any], signal: dict[str, Any], horizon: int,
                   metrics: dict[str, Any], command: str, overwrite: bool = True,
                   passes: Iterable[str] = PASSES) -> Any:
    """Export every model in ``variants`` (name -> Informer) and write a verified artifact.

    Each variant gets ``NAME.onnx`` (static), ``NAME.dynamic.onnx`` and ``NAME.safetensors`` (the
    torch reference backend's weights) plus its own model config in the manifest.
    """
    from safetensors.torch import save_file

    from barsignal.engine.artifact import write_artifact
    from barsignal.features.spec import schema_hash
    from barsignal.model.informer import flops_per_window

    passes = tuple(passes)
    with tempfile.TemporaryDirectory(prefix="barsignal-export-") as tmp:
        files: dict[str, Any] = {}
        entries: dict[str, Any] = {}
        for name, model in variants.items():
            entry: dict[str, Any] = dict(export_variant(model, tmp, name, passes))
            wfile = f"{name}.safetensors"
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(Path(tmp) / wfile))
            entry["weights"] = wfile
            entry["model"] = model.cfg.to_dict()
            entry["flops_per_window"] = int(flops_per_window(model))
            entry["params"] = int(sum(p.numel() for p in model.parameters()))
            entry["onnx_passes"] = list(passes)
            for key in ("onnx", "onnx_dynamic", "weights"):
                files[entry[key]] = Path(tmp) / entry[key]
            entries[name] = entry
        return write_artifact(
            out, files=files, model_config=entries[default_variant]["model"], schema_hash=schema_hash(),
            normalization=normalization, signal=signal, variants=entries, default_variant=default_variant,
            horizon=horizon, metrics=metrics, command=command, overwrite=overwrite,
        )


def _interim_main(argv: Sequence[str] | None = None) -> int:
    """Build an artifact from a model checkpoint (or an untrained student, labelled as such)."""
    import argparse
    import json
    import shlex
    import sys

    import torch

    from barsignal.engine.metrics import roc_auc as auc
    from barsignal.engine.policy import Bars, Policy, replay, search
    from barsignal.model import checkpoint
    from barsignal.model.dataset import DatasetSpec, build, load_segments
    from barsignal.model.informer import Informer, student_config

    ap = argparse.ArgumentParser(prog="python -m barsignal.compression.onnx_export")
    ap.add_argument("--checkpoint", default="", help="model checkpoint dir; empty = untrained student")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--bars", nargs="+", action="extend", metavar="FILE",
                   help="bar files (the checkpoint's training bars)")
    g.add_argument("--data", dest="bars", nargs="+", action="extend", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the older spelling of --bars
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", default="student")
    ap.add_argument("--note", default="", help="free text stored in the manifest metrics")
    args = ap.parse_args(argv)
    command = "python -m barsignal.compression.onnx_export " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.checkpoint:
        model = checkpoint.load(args.checkpoint)
        _, meta = checkpoint.read_config(args.checkpoint)
        trained = (f"checkpoint {args.checkpoint} (epoch {meta.get('epoch')},"
                   f" val_logloss {meta.get('val_logloss')})")
    else:
        torch.manual_seed(0)
        model, meta = Informer(student_config()).eval(), {}
        trained = "UNTRAINED: random weights, no predictive value; interim artifact only"
    from barsignal.errors import ArtifactError
    from barsignal.features.spec import schema_hash

    if meta.get("schema_hash") and meta["schema_hash"] != schema_hash():
        raise ArtifactError(f"checkpoint {args.checkpoint} was trained on features with schema hash "
                            f"{meta['schema_hash'][:16]}..., the code's is {schema_hash()[:16]}...: retrain it")
    horizon = int(meta.get("horizon", 1))
    segments = load_segments(args.bars)
    splits = build(segments, DatasetSpec(window=model.cfg.window, horizon=horizon))
    assert splits.val_all is not None and splits.test_all is not None
    pol = search(Bars.of(splits.val_all, torch_probabilities(model, splits.val_all.x())), horizon)
    p_test_all = torch_probabilities(model, splits.test_all.x())
    trading = replay(Bars.of(splits.test_all, p_test_all), Policy(**pol["policy"]))
    p_test = torch_probabilities(model, splits.test.x())
    metrics = {"model": trained, "test_auc": float(auc(splits.test.labels, p_test)),
               "test_trading": {k: v for k, v in trading.items() if np.isscalar(v)},
               "dataset": splits.info, "bars": list(map(str, args.bars)), "note": args.note}
    signal = {**pol["policy"], "informational": pol["policy"]["policy"] == "flat", "reason": pol["reason"],
              "chosen_on": "validation"}
    art = build_artifact(args.out, {args.variant: model}, default_variant=args.variant,
                         normalization=splits.normalizer.to_dict(), signal=signal, horizon=horizon,
                         metrics=metrics, command=command)
    print(json.dumps({"artifact": str(art.path), "hash": art.hash, "metrics": metrics}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(_interim_main())
