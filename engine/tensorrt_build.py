"""TensorRT engine build from an artifact's ONNX (TensorRT 10.x / 11.x Python API).

- The network is created STRONGLY_TYPED: precision comes from the ONNX itself (FP32 from the
  FP32 ONNX, FP16 from the FP16 ONNX, INT8 from the Q/DQ ONNX); there are no builder precision
  flags or calibrators (11.x removed them).
- The ONNX first goes through ``trt_ops.prepare_for_tensorrt`` (1D pooling as 2D) and must pass
  ``trt_ops.check_graph``.
- One optimization profile, (1, 30, 33) for min/opt/max.
- A timing cache is read from and saved beside the engine.
- The engine file is named by :func:`engine_cache_key` (GPU name, compute capability, TensorRT
  version, ONNX sha256, version-compatible flag), written atomically.
- ``version_compatible=True`` sets BuilderFlag.VERSION_COMPATIBLE (the runtime must then allow
  the lean runtime: ``runtime.engine_host_code_allowed = True``).

``tensorrt`` and ``cuda-python`` are the ``gpu`` extra and are imported inside functions. They cannot
be installed on the development machines: only :func:`engine_cache_key` and the ONNX preparation are
tested there; the build itself is tested where a GPU and TensorRT exist.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barsignal.errors import ArtifactError, ConfigError
from barsignal.fsutil import atomic_write_bytes, file_sha256

WINDOW = (1, 30, 33)
INPUT = "input"


@dataclass(frozen=True)
class GpuInfo:
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: tuple[int, int]  # e.g. (9, 0)


def engine_cache_key(gpu_name: str, compute_capability: tuple[int, int], trt_version: str,
                     onnx_sha256: str, version_compatible: bool = False) -> str:
    """The file stem of a cached engine. Pure: equal inputs give equal keys, any change changes it.

    Readable parts (sanitized GPU name, sm version, TensorRT version, ONNX hash prefix) plus a
    short digest of the exact inputs, so two GPUs whose names sanitize alike still differ.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", onnx_sha256):
        raise ValueError(f"onnx_sha256 must be 64 lowercase hex digits, got {onnx_sha256!r}")
    major, minor = (int(v) for v in compute_capability)
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name.strip()).strip("-").lower() or "gpu"
    trt = re.sub(r"[^0-9A-Za-z.]+", "-", trt_version.strip())
    exact = f"{gpu_name}\x00{major}.{minor}\x00{trt_version}\x00{onnx_sha256}\x00{int(version_compatible)}"
    digest = hashlib.sha256(exact.encode()).hexdigest()[:12]
    vc = "-vc" if version_compatible else ""
    return f"{gpu}_sm{major}{minor}_trt{trt}_{onnx_sha256[:16]}{vc}_{digest}"


def engine_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.engine"


def timing_cache_path(cache_dir: Path) -> Path:
    """One timing cache per cache directory, beside the engines (valid across ONNX files)."""
    return Path(cache_dir) / "timing.cache"


def cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime`` in >= 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[no-redef]
        except ImportError as exc:
            raise ConfigError("cuda-python is not installed: pip install 'barsignal[gpu]'") from exc
    return runtime


def cuda_check(result: Any) -> Any:
    """Unwrap a cuda-python ``(err, *values)`` tuple, raising on error."""
    rt = cudart()
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != int(rt.cudaError_t.cudaSuccess):
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else tuple(rest)


def gpu_info(device: int = 0) -> GpuInfo:
    rt = cudart()
    props = cuda_check(rt.cudaGetDeviceProperties(device))
    raw = props.name
    name = raw.decode(errors="replace").rstrip("\x00") if isinstance(raw, bytes) else str(raw)
    return GpuInfo(name=name, compute_capability=(int(props.major), int(props.minor)))


def _write_atomic(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def build_engine(onnx_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str], *,
                 version_compatible: bool = False, workspace_mb: int = 256, log: Any = None) -> Path:
    """Build (or find) the engine for ``onnx_path`` on this GPU; return the engine file's path."""
    import tensorrt as trt


    onnx_path, cache_dir = Path(onnx_path), Path(cache_dir)
    gpu = gpu_info()
    key = engine_cache_key(gpu.name, gpu.compute_capability, trt.__version__, file_sha256(onnx_path),
                           version_compatible)
    out = engine_path(cache_dir, key)
    if out.is_file():
        return out
    import onnx  # only to build; a cached engine needs neither onnx nor the checks

    from barsignal.engine.trt_ops import check_graph, prepare_for_tensorrt

    prepared = prepare_for_tensorrt(onnx.load(str(onnx_path)))
    problems = check_graph(prepared, static=True)
    if problems:
        raise ArtifactError(f"{onnx_path}: not buildable by TensorRT: " + "; ".join(problems[:5]))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(prepared.SerializeToString(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"{onnx_path}: TensorRT's ONNX parser refused it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, WINDOW, WINDOW, WINDOW)
    config.add_optimization_profile(profile)
    tc_path = timing_cache_path(cache_dir)
    cache = config.create_timing_cache(tc_path.read_bytes() if tc_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    _write_atomic(out, bytes(serialized))
    _write_atomic(tc_path, bytes(config.get_timing_cache().serialize()))
    if log is not None:
        log.info("tensorrt engine built", onnx=str(onnx_path), engine=str(out), gpu=gpu.name,
                 trt=trt.__version__, version_compatible=version_compatible)
    return out
