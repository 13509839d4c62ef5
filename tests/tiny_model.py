"""A tiny real ONNX model and a real verified artifact around it, for tests that must not wait for a
trained student. The model is sigmoid(sum(tanh(window @ W1) * W2) + b): a MatMul, so batched and
single calls could round differently if a backend let them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from barsignal.features.bar import Bar

T, F = 30, 33
MOVE_HORIZON, MOVE_THRESHOLD_BP = 15, 10.0  # the tiny artifact's move forecast: P(|r_15| > 10 bp)


def write_tiny_onnx(dest: Path, seed: int = 0, bias: float = 0.0) -> tuple[Path, Path]:
    """``static.onnx`` (1,30,33) and ``dynamic.onnx`` (N,30,33) in ``dest``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((F, 16)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((1, T, 16)).astype(np.float32) * 0.05
    out = []
    for name, batch in (("static.onnx", 1), ("dynamic.onnx", "N")):
        g = helper.make_graph(
            [helper.make_node("MatMul", ["input", "W1"], ["h"]),    # (B, T, 16)
             helper.make_node("Tanh", ["h"], ["a"]),
             helper.make_node("Mul", ["a", "W2"], ["m"]),
             helper.make_node("ReduceSum", ["m", "axes"], ["s"], keepdims=0),  # (B,)
             helper.make_node("Add", ["s", "b"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["up_probability"])],
            "tiny",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, T, F])],
            [helper.make_tensor_value_info("up_probability", TensorProto.FLOAT, [batch])],
            [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
             numpy_helper.from_array(np.array([bias], np.float32), "b")],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        dest.mkdir(parents=True, exist_ok=True)
        onnx.save(m, dest / name)
        out.append(dest / name)
    return out[0], out[1]


def write_tiny_artifact(dest: Path, fit_bars: Sequence[Bar], *, seed: int = 0, bias: float = 0.0,
                        signal: dict | None = None, metrics: dict | None = None, move: bool = True) -> Path:
    """A real artifact (``write_artifact``, so it verifies) with the tiny model, variant ``tiny``, a
    Normalizer fitted on ``fit_bars`` and (``move``) the ``rvol_logistic`` move forecast with its a and b
    fitted on the same bars (``engine.move_persistence.fit``)."""
    from barsignal.engine import move_persistence
    from barsignal.engine.artifact import write_artifact
    from barsignal.features import batch
    from barsignal.features.bar import BarFrame
    from barsignal.features.normalize import Normalizer
    from barsignal.features.spec import schema_hash

    rows, ready = batch.compute_with_ready(BarFrame.from_bars(list(fit_bars)))
    static, dynamic = write_tiny_onnx(dest.parent / f".{dest.name}-onnx", seed=seed, bias=bias)
    write_artifact(dest, files={"static.onnx": static, "dynamic.onnx": dynamic}, model_config={"kind": "tiny"},
                   schema_hash=schema_hash(), normalization=Normalizer.fit(rows[ready]).to_dict(),
                   signal=signal or {"long_threshold": 0.52, "short_threshold": 0.48, "rule": "threshold"},
                   variants={"tiny": {"onnx": "static.onnx", "onnx_dynamic": "dynamic.onnx"}},
                   default_variant="tiny", horizon=1, metrics=metrics or {},
                   command="tests/tiny_model.py",
                   extra={"move": move_persistence.fit(fit_bars, MOVE_HORIZON, MOVE_THRESHOLD_BP).to_manifest()}
                   if move else None)
    return dest
