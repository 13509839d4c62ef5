"""TensorRT engine cache key (a pure function, tested everywhere) and the build (only with a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from barsignal.engine.tensorrt_build import engine_cache_key, engine_path, timing_cache_path

SHA = "ab" * 32
BASE = dict(gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), trt_version="10.7.0",
            onnx_sha256=SHA)


def test_cache_key_is_pure_and_readable() -> None:
    k = engine_cache_key(**BASE)
    assert k == engine_cache_key(**BASE)
    assert k.startswith("nvidia-h100-80gb-hbm3_sm90_trt10.7.0_abababababababab_")
    assert "/" not in k and " " not in k
    assert engine_path(Path("/c"), k) == Path(f"/c/{k}.engine")
    assert timing_cache_path(Path("/c")) == Path("/c/timing.cache")


@pytest.mark.parametrize("change", [
    {"gpu_name": "NVIDIA A100-SXM4-80GB"},
    {"gpu_name": "NVIDIA H100 80GB HBM3 "[:-1] + "!"},  # sanitizes like the original: digest differs
    {"compute_capability": (8, 9)},
    {"trt_version": "11.0.0"},
    {"onnx_sha256": "cd" * 32},
    {"version_compatible": True},
])
def test_every_input_changes_the_key(change: dict) -> None:
    assert engine_cache_key(**{**BASE, **change}) != engine_cache_key(**BASE)


def test_bad_hash_is_refused() -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        engine_cache_key(**{**BASE, "onnx_sha256": "xyz"})


@pytest.mark.gpu
def test_build_engine_writes_engine_and_timing_cache(tmp_path: Path) -> None:
    from barsignal.engine.backends import trt

    ok, why = trt.available()
    if not ok:
        pytest.skip(f"TensorRT cannot run here: {why}")
    from barsignal.engine.artifact import load_artifact
    from barsignal.engine.tensorrt_build import build_engine

    onnx_file = load_artifact().variant().onnx
    p = build_engine(onnx_file, tmp_path)
    assert p.is_file() and p.stat().st_size > 0 and timing_cache_path(tmp_path).is_file()
    assert build_engine(onnx_file, tmp_path) == p
