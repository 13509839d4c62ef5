"""Scoring backends, a registry keyed by the name used in config.toml (``engine.backend``).

Each module exposes ``load(variant, *, intra_op_threads, spinning, cache_dir) -> Scorer`` and
``available() -> tuple[bool, str]`` (whether it can run here, and why not). Modules import their
heavy dependencies (torch, tensorrt, cuda) inside functions, never at module level.
"""

from __future__ import annotations

BACKENDS: dict[str, str] = {
    "onnxruntime": "barsignal.engine.backends.ort",
    "tensorrt": "barsignal.engine.backends.trt",
    "torch": "barsignal.model.torch_backend",  # needs torch: lives with the model, loaded by name
}
