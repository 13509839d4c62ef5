"""ONNX export: graph contract, parity with PyTorch on real windows, rewrites that keep the outputs,
and TensorRT's ONNX parser rules (checked without TensorRT, from the op table kept as data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from barsignal.compression.onnx_export import export_onnx, parity, rewrite, torch_probabilities
from barsignal.engine.artifact import load_artifact
from barsignal.engine.backends.ort import OnnxRuntimeScorer
from barsignal.engine.trt_ops import OPS_FILE, check_graph, op_table, prepare_for_tensorrt

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(fp32_variant: str):  # the bundled student's FP32 weights
    from barsignal.model.torch_backend import build_model

    return build_model(load_artifact().variant(fp32_variant))


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx")
    out = {"static": d / "s.onnx", "dynamic": d / "d.onnx", "plain": d / "p.onnx"}
    export_onnx(model, out["static"])
    export_onnx(model, out["dynamic"], dynamic_batch=True)
    export_onnx(model, out["plain"], passes=())
    return out


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def test_graph_contract(exported: dict[str, Path]) -> None:
    m = onnx.load(str(exported["static"]))
    assert {o.domain: o.version for o in m.opset_import}[""] >= 19
    assert [i.name for i in m.graph.input] == ["input"] and _dims(m.graph.input[0]) == [1, 30, 33]
    assert [o.name for o in m.graph.output] == ["up_probability"] and _dims(m.graph.output[0]) == [1]
    assert m.graph.node[-1].op_type == "Sigmoid", "the probability, not the logit, leaves the graph"
    pads = [n for n in m.graph.node if n.op_type == "Pad"]
    assert pads and all(helper.get_attribute_value(a) == b"wrap" for n in pads for a in n.attribute
                        if a.name == "mode")
    # Single file: every initializer is stored inline, none as external data.
    assert all(t.data_location != TensorProto.EXTERNAL for t in m.graph.initializer)
    assert not list(exported["static"].parent.glob("*.data"))
    d = onnx.load(str(exported["dynamic"]))
    assert isinstance(_dims(d.graph.input[0])[0], str) and _dims(d.graph.input[0])[1:] == [30, 33]


def test_parity_with_pytorch_on_10k_real_windows(model, exported: dict[str, Path],
                                                 real_windows: np.ndarray) -> None:
    r = parity(model, exported["static"], real_windows)
    assert r["n"] == 10_000
    assert r["max_abs"] <= 1e-5, r
    # The dynamic-batch graph, run batched, agrees as well.
    dyn = OnnxRuntimeScorer(exported["static"], exported["dynamic"], warmup=1)
    ref = torch_probabilities(model, real_windows)
    assert np.abs(dyn.score_batch(real_windows) - ref).max() <= 1e-5


def test_rewrites_shrink_the_graph_and_keep_outputs(model, exported: dict[str, Path],
                                                    real_windows: np.ndarray) -> None:
    plain, opt = onnx.load(str(exported["plain"])), onnx.load(str(exported["static"]))
    ops_plain = [n.op_type for n in plain.graph.node]
    ops_opt = [n.op_type for n in opt.graph.node]
    assert len(ops_opt) < len(ops_plain)
    # Fused QKV: one projection MatMul per layer instead of three, split afterwards.
    n_layers = model.cfg.e_layers
    assert ops_opt.count("Split") == n_layers
    assert ops_plain.count("MatMul") - ops_opt.count("MatMul") == 2 * n_layers
    # The attention scale is folded into weights: fewer Mul nodes.
    assert ops_opt.count("Mul") < ops_plain.count("Mul")
    assert ops_opt.count("Transpose") + ops_opt.count("Reshape") < ops_plain.count("Transpose") + \
        ops_plain.count("Reshape")
    a = OnnxRuntimeScorer(exported["plain"], warmup=1)
    b = OnnxRuntimeScorer(exported["static"], warmup=1)
    w = real_windows[::5]
    pa = np.array([a.score(x) for x in w])
    pb = np.array([b.score(x) for x in w])
    assert np.abs(pa - pb).max() <= 2e-6


def test_unknown_pass_is_refused(model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown ONNX passes"):
        export_onnx(model, tmp_path / "x.onnx", passes=("magic",))
    assert not list(tmp_path.iterdir())


# --- TensorRT's ONNX parser rules ------------------------------------------------------------------


def test_op_table_is_data_with_its_source() -> None:
    text = OPS_FILE.read_text()
    assert "onnx/onnx-tensorrt" in text and "docs/operators.md" in text
    t = op_table()
    assert {"MatMul", "LayerNormalization", "Pad", "Conv", "Split", "Sigmoid"} <= t.supported
    assert {"Unique", "NonMaxSuppression"} & t.unsupported == {"Unique"}
    assert (t.opset_min, t.opset_max) == (9, 24)


def test_exported_student_passes_tensorrt_rules(exported: dict[str, Path]) -> None:
    m = onnx.load(str(exported["static"]))
    before = check_graph(m)
    assert all("1D pooling" in p for p in before), before  # a 1-layer student has no pooling
    prepared = prepare_for_tensorrt(m)
    assert check_graph(prepared) == []
    # The 2D-pool rewrite changes nothing numerically.
    x = np.random.default_rng(0).standard_normal((1, 30, 33)).astype(np.float32)
    import onnxruntime as ort

    ya = ort.InferenceSession(m.SerializeToString()).run(None, {"input": x})[0]
    yb = ort.InferenceSession(prepared.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_array_equal(ya, yb)
    # The dynamic-batch variant is for replay, not for TensorRT: its dynamic shapes are reported.
    dyn = prepare_for_tensorrt(onnx.load(str(exported["dynamic"])))
    assert any("dynamic shape" in p for p in check_graph(dyn, static=True))
    assert check_graph(dyn, static=False) == []


def test_teacher_probsparse_topk_is_sorted(tmp_path: Path) -> None:
    from barsignal.model.informer import Informer, teacher_config

    torch.manual_seed(0)
    teacher = Informer(teacher_config(d_model=32, n_heads=2, e_layers=2, d_ff=64)).eval()
    info = export_onnx(teacher, tmp_path / "t.onnx")
    m = onnx.load(str(tmp_path / "t.onnx"))
    assert info.ops.get("TopK", 0) >= 1
    assert check_graph(prepare_for_tensorrt(m)) == []
    unsorted = onnx.load(str(tmp_path / "t.onnx"))
    for n in unsorted.graph.node:
        if n.op_type == "TopK":
            for a in n.attribute:
                if a.name == "sorted":
                    a.i = 0
    assert any("sorted must be 1" in p for p in check_graph(prepare_for_tensorrt(unsorted)))
    # The export's topk pass repairs exactly that.
    assert rewrite(unsorted, ("topk",))["topk"] == info.ops["TopK"]
    assert check_graph(prepare_for_tensorrt(unsorted)) == []


def _tiny(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto] | None = None,
          out_shape: list[int] | None = None) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or [1, 4])],
                          initializer=inits or [])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def test_rule_violations_are_reported() -> None:
    rnd = _tiny([helper.make_node("RandomNormalLike", ["x"], ["r"]),
                 helper.make_node("Add", ["x", "r"], ["y"])])
    assert any("random op" in p for p in check_graph(rnd))
    uniq = _tiny([helper.make_node("Unique", ["x"], ["y"])])
    assert any("listed as unsupported" in p for p in check_graph(uniq, static=False))
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    topk_dyn_k = _tiny([helper.make_node("Shape", ["x"], ["s"]),
                        helper.make_node("Slice", ["s", "one", "two"], ["kk"]),
                        helper.make_node("TopK", ["x", "kk"], ["y", "i"], sorted=1)],
                       [numpy_helper.from_array(np.array([1], np.int64), "one"),
                        numpy_helper.from_array(np.array([2], np.int64), "two")], out_shape=[1, 2])
    assert any("K must be a constant" in p for p in check_graph(topk_dyn_k, static=False))
    ok = _tiny([helper.make_node("TopK", ["x", "k"], ["y", "i"], sorted=1)], [k], out_shape=[1, 2])
    assert check_graph(ok) == []
    custom = _tiny([helper.make_node("Foo", ["x"], ["y"], domain="com.example")])
    assert any("custom domain" in p for p in check_graph(custom, static=False))
    old = _tiny([helper.make_node("Relu", ["x"], ["y"])])
    old.opset_import[0].version = 8
    assert any("opset 8 outside" in p for p in check_graph(old))
