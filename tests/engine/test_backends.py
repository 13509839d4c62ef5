"""Backends on the bundled artifact: ONNX Runtime vs the PyTorch reference, auto selection, no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from barsignal.engine.artifact import load_artifact
from barsignal.engine.backends.ort import OnnxRuntimeScorer
from barsignal.engine.scorer import Scorer
from barsignal.engine.select import choose_backend, load_scorer
from barsignal.errors import ArtifactError, ConfigError


@pytest.fixture(scope="module")
def ort_scorer() -> OnnxRuntimeScorer:
    s = load_scorer(backend="onnxruntime")
    assert isinstance(s, OnnxRuntimeScorer)
    return s


def test_ort_scores_real_windows_like_pytorch(ort_scorer: OnnxRuntimeScorer, real_windows: np.ndarray,
                                              fp32_variant: str) -> None:
    """The shipped ONNX vs the shipped weights in PyTorch on real windows: FP32 max |Δp| <= 1e-5.
    (The 10,000-window parity of a fresh export is in test_onnx_export.)"""
    from barsignal.model import torch_backend as torch_ref

    name = fp32_variant
    if name != load_artifact().default_variant:
        ort_scorer = load_scorer(backend="onnxruntime", variant=name)
    torch_scorer = torch_ref.load(load_artifact().variant(name))
    windows = real_windows[::4]
    ref = torch_scorer.score_batch(windows)
    got = np.array([ort_scorer.score(w) for w in windows], np.float32)
    assert isinstance(ort_scorer, Scorer)
    assert np.all((got > 0) & (got < 1))
    d = np.abs(got.astype(np.float64) - ref)
    assert d.max() <= 1e-5, f"max |Δp| {d.max():.3g}"
    # Batch scoring (the dynamic-batch ONNX) gives the same probabilities as N batch-1 calls.
    batch = ort_scorer.score_batch(windows[:2000])
    assert batch.dtype == np.float32 and batch.shape == (2000,)
    np.testing.assert_allclose(batch, got[:2000], rtol=0, atol=2e-6)
    # A single torch call agrees too (the reference backend's batch-1 path).
    assert abs(torch_scorer.score(real_windows[0]) - got[0]) <= 1e-5


def test_score_reuses_bound_buffers(ort_scorer: OnnxRuntimeScorer, real_windows: np.ndarray) -> None:
    """The hot path writes into the same preallocated input, and results do not leak between calls."""
    buf = ort_scorer._in.ctypes.data
    a, b = real_windows[0], real_windows[1]
    pa, pb, pa2 = ort_scorer.score(a), ort_scorer.score(b), ort_scorer.score(a)
    assert ort_scorer._in.ctypes.data == buf
    assert pa == pa2 and pa != pb
    # float64 input is cast into the float32 buffer; the wrong shape is a clear error.
    assert ort_scorer.score(a.astype(np.float64)) == pa
    with pytest.raises(ValueError, match=r"window shape \(29, 33\)"):
        ort_scorer.score(a[:29])
    with pytest.raises(ValueError, match=r"expected \(N, 30, 33\)"):
        ort_scorer.score_batch(a)


def test_auto_falls_back_to_onnxruntime_without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, even where installed
    name, reason = choose_backend("auto")
    assert name == "onnxruntime"
    assert "tensorrt not importable" in reason
    with pytest.raises(ConfigError, match=r"engine\.backend = 'tensorrt' but it cannot run here"):
        choose_backend("tensorrt")
    with pytest.raises(ConfigError, match="unknown"):
        choose_backend("tflite")


def test_load_scorer_logs_choice(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from barsignal import log

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    log.configure(level="info", fmt="json")  # writes to whatever sys.stderr is (capsys)
    s = load_scorer(None, backend="auto")
    assert s.name == "onnxruntime"
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "scorer loaded" in ln]
    assert len(lines) == 1 and '"backend":"onnxruntime"' in lines[0] and "tensorrt not importable" in lines[0]


def test_unknown_variant_and_bad_onnx(artifact_copy: Path) -> None:
    with pytest.raises(ArtifactError, match="no variant 'nope'"):
        load_scorer(artifact_copy, variant="nope")
    bad = artifact_copy / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ArtifactError, match=r"bad\.onnx: ONNX Runtime cannot load it"):
        OnnxRuntimeScorer(bad)


def test_engine_scores_without_torch() -> None:
    """The engine path (artifact -> select -> onnxruntime -> score) never imports torch."""
    code = (
        "import sys, numpy as np\n"
        "from barsignal.engine.select import load_scorer\n"
        "import barsignal.engine.backends.trt, barsignal.model.torch_backend, barsignal.bench.scoring\n"
        "s = load_scorer(backend='onnxruntime')\n"
        "p = s.score(np.zeros((30, 33), np.float32))\n"
        "assert 0 < p < 1, p\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "ok", out.stderr[-2000:]


@pytest.mark.gpu
def test_tensorrt_matches_onnxruntime(tmp_path: Path, real_windows: np.ndarray,
                                      ort_scorer: OnnxRuntimeScorer) -> None:
    from barsignal.engine.backends import trt

    ok, why = trt.available()
    if not ok:
        pytest.skip(f"TensorRT backend cannot run here: {why}")
    s = load_scorer(backend="tensorrt", cache_dir=tmp_path)
    engines = list(tmp_path.glob("*.engine"))
    assert len(engines) == 1 and (tmp_path / "timing.cache").is_file()
    got = np.array([s.score(w) for w in real_windows[:2000]])
    ref = np.array([ort_scorer.score(w) for w in real_windows[:2000]])
    assert np.abs(got - ref).max() <= 1e-4
    # A second load deserializes the cached engine instead of building.
    mtime = engines[0].stat().st_mtime_ns
    load_scorer(backend="tensorrt", cache_dir=tmp_path)
    assert engines[0].stat().st_mtime_ns == mtime
