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
                        signal: dict | None = None, metrics: dict | None = None, move: bool = True,
                        move_spec: dict | None = None) -> Path:
    """A real artifact (``write_artifact``, so it verifies) with the tiny model, variant ``tiny``, a
    Normalizer fitted on ``fit_bars`` and (``move``) the ``rvol_logistic`` move forecast with its a and b
    fitted on the same bars (``engine.move_persistence.fit``), or the ``move_spec`` given (e.g.
    :func:`har_move_spec`)."""
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
                   extra={"move": move_spec or move_persistence.fit(fit_bars, MOVE_HORIZON,
                                                                    MOVE_THRESHOLD_BP).to_manifest()}
                   if move else None)
    return dest


def har_move_spec(eta: float = 0.01) -> dict:
    """A ``har_seasonal`` move section with its online correction on (``eta``): short spans (30 and 60
    bars, so a restart's warm-up refills them), no seasonality, a logistic map set by hand so that
    p_move on the 2021-11 bars sits between 0 and 1 (not fitted: the tests check state, not skill)."""
    from barsignal.engine.move import MoveSpec
    from barsignal.engine.move_har import KIND

    params = {"spans": [30, 60], "coef": [0.0, 0.5, 0.5], "var_scale": 1.0, "minute_factor": [1.0] * 1440,
              "dow_factor": [1.0] * 7, "calib": {"kind": "logistic", "a": -5.2, "b": 1.9, "eta": eta}}
    return MoveSpec(MOVE_HORIZON, MOVE_THRESHOLD_BP, KIND, params).to_manifest()
