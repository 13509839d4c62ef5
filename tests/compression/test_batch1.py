"""The batch-1 serving graph against PyTorch, and an artifact rewritten to carry it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from barsignal.compression.batch1 import LAYOUT, batch1_graph, rewrite_artifact
from barsignal.compression.onnx_export import build_artifact, export_onnx, torch_probabilities
from barsignal.model.informer import Informer, student_config, teacher_config
from tests.conftest import SPOT_1M

CONFIGS = {
    "one head, one layer (the bundled student's shape)": dict(e_layers=1, layer_heads=(1,), head_dim=48,
                                                              layer_d_ff=(129,)),
    "two heads, two layers, distilling": dict(),
    "pruned heads per layer, three layers": dict(n_heads=4, e_layers=3, layer_heads=(4, 1, 2),
                                                 layer_d_ff=(50, 60, 70)),
}


def _model(seed: int, **over) -> Informer:
    torch.manual_seed(seed)
    m = Informer(student_config(**over)).eval()
    for mod in m.modules():  # BatchNorm statistics far from the identity, so a wrong fold shows
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.3, 3.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.3, 0.3)
    return m


def _ort(proto_or_path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    src = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    s = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return np.array([s.run(None, {"input": w[None]})[0].reshape(-1)[0] for w in x], np.float32)


@pytest.mark.parametrize("over", list(CONFIGS.values()), ids=list(CONFIGS))
def test_serving_graph_gives_torch_probabilities_with_fewer_nodes(tmp_path, over):
    m = _model(1, **over)
    x = np.random.default_rng(2).standard_normal((200, 30, 33)).astype(np.float32) * 1.5
    g = batch1_graph(m)
    dp = np.abs(_ort(g, x).astype(np.float64) - torch_probabilities(m, x).astype(np.float64))
    assert dp.max() <= 1e-6, dp.max()
    assert float(np.std(torch_probabilities(m, x))) > 1e-3  # the windows move p: the check has teeth
    exported = export_onnx(m, tmp_path / "static.onnx")
    assert len(g.graph.node) < exported.nodes
    ins = g.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in ins] == [1, 30, 33]
    if m.cfg.heads_at(0) == 1 and m.cfg.e_layers == 1:
        ops = {n.op_type for n in g.graph.node}
        assert not ops & {"Transpose", "Add", "ReduceMean"}  # residuals in the Gemms' C, mean as a Gemm
        assert len(g.graph.node) == 19


def test_serving_graph_refuses_probsparse():
    with pytest.raises(ValueError, match="full attention"):
        batch1_graph(Informer(teacher_config(d_model=32, n_heads=4, e_layers=2, d_ff=64)).eval())


def test_rewrite_artifact_replaces_only_the_static_graph(tmp_path):
    from barsignal.engine.artifact import load_artifact
    from barsignal.engine.backends.ort import OnnxRuntimeScorer
    from barsignal.features.normalize import Normalizer

    if not SPOT_1M:
        pytest.fail("real spot 1m bars not found in ../shared/data/klines/spot_1m")
    m = _model(3, **CONFIGS["one head, one layer (the bundled student's shape)"])
    norm = Normalizer.fit(np.random.default_rng(0).standard_normal((500, 33)) * 1e-3).to_dict()
    src = tmp_path / "src"
    build_artifact(src, {"fp32": m}, default_variant="fp32", normalization=norm,
                   signal={"long_threshold": 0.52, "short_threshold": 0.48, "rule": "threshold"},
                   horizon=1, metrics={"auc": 0.5}, command="test")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    dest = tmp_path / "dest"
    info = rewrite_artifact(src, dest, SPOT_1M[0], windows=300, command="barsignal compress serving (test)")

    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the source is untouched
    art = load_artifact(dest)  # verifies every hash
    for name, data in before.items():
        if name not in ("fp32.onnx", "manifest.json"):
            assert (dest / name).read_bytes() == data, name
    served = onnx.load(str(dest / "fp32.onnx"))
    assert served.producer_name == "barsignal.compression.batch1"
    entry = art.manifest["variants"]["fp32"]
    assert entry["serving_graph"]["layout"] == LAYOUT and entry["serving_graph"]["windows"] == 300
    assert entry["serving_graph"]["max_abs_dp_vs_exported"] == info["max_abs_dp_vs_exported"] <= 1e-6
    assert entry["batch_drift"] == info["batch_drift"] <= 1e-6
    assert art.manifest["revisions"][-1]["command"] == "barsignal compress serving (test)"
    assert art.manifest["created_by"] == json.loads(before["manifest.json"])["created_by"]
    assert art.hash != load_artifact(src).hash
    # the daemon's scorer on the rewritten artifact: PyTorch's probabilities
    x = np.random.default_rng(4).standard_normal((50, 30, 33)).astype(np.float32)
    scorer = OnnxRuntimeScorer(art.variant("fp32").onnx, warmup=1)
    got = np.array([scorer.score(w) for w in x])
    assert np.abs(got - torch_probabilities(m, x)).max() <= 1e-6
