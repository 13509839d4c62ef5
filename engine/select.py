"""Backend selection: ``load_scorer(artifact, backend="auto", ...)``.

``auto`` picks TensorRT when it is importable and a CUDA device is present, else ONNX Runtime.
One log line says what was chosen and why. When ``auto`` chose a backend other than ONNX Runtime and
that backend fails to load (no engine can be built, a driver error, anything), the scorer falls back
to ONNX Runtime with one warning line (``scorer_fallback``) instead of stopping the daemon. A backend
named explicitly (``[engine] backend = "tensorrt"``) that fails still stops the start: the operator
asked for it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from barsignal.engine.artifact import Artifact, load_artifact
from barsignal.engine.backends import BACKENDS
from barsignal.engine.scorer import Scorer
from barsignal.errors import ConfigError
from barsignal.log import get_logger

log = get_logger(__name__)

FALLBACK = "onnxruntime"  # the CPU default, always installed


def backend_module(name: str) -> Any:
    if name not in BACKENDS:
        raise ConfigError(f"engine.backend {name!r} unknown; choose auto or one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def choose_backend(requested: str = "auto") -> tuple[str, str]:
    """(backend name, reason). ``auto``: tensorrt if available here, else onnxruntime."""
    if requested != "auto":
        ok, why = backend_module(requested).available()
        if not ok:
            raise ConfigError(f"engine.backend = {requested!r} but it cannot run here: {why}")
        return requested, f"requested ({why})"
    ok, why = backend_module("tensorrt").available()
    if ok:
        return "tensorrt", f"auto: {why}"
    return FALLBACK, f"auto: {why}; using the CPU default"


def load_scorer(artifact: Artifact | str | os.PathLike[str] | None = None, backend: str = "auto",
                variant: str = "", intra_op_threads: int = 1, spinning: bool = False,
                cache_dir: str | os.PathLike[str] | None = None) -> Scorer:
    """A warmed-up scorer for ``artifact`` (a verified Artifact, a directory, or None = bundled)."""
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    var = art.variant(variant)
    name, reason = choose_backend(backend)
    cache = Path(cache_dir) if cache_dir else None
    try:
        scorer = backend_module(name).load(var, intra_op_threads=intra_op_threads, spinning=spinning,
                                           cache_dir=cache)
    except Exception as exc:
        if backend != "auto" or name == FALLBACK:
            raise
        log.warning("scorer_fallback", failed=name, error=f"{type(exc).__name__}: {exc}"[:500],
                    using=FALLBACK, hint=f"auto chose {name} but it failed to load; set [engine] backend "
                    f"to {FALLBACK!r} to skip it, or to {name!r} to make this failure stop the start")
        name, reason = FALLBACK, f"auto: fell back after {name} failed to load"
        scorer = backend_module(name).load(var, intra_op_threads=intra_op_threads, spinning=spinning,
                                           cache_dir=cache)
    log.info("scorer loaded", backend=name, reason=reason, variant=var.name, artifact=art.hash[:12],
             path=str(art.path), intra_op_threads=intra_op_threads, spinning=spinning)
    return scorer
