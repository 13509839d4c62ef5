"""Open a checkpoint (torch) or a model artifact (``barsignal.engine``, no torch) as one scorer.

``open_model(path)`` returns a :class:`ScoredModel` whose ``predict(windows (N, T, F) float32)``
gives up-probabilities (N,), plus the normalizer, window length and horizon the model was built with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.errors import ArtifactError


@dataclass
class ScoredModel:
    path: str
    kind: str  # "teacher", "student" or "artifact:<variant>"
    window: int
    horizon: int
    normalizer: Any  # barsignal.features.normalize.Normalizer
    predict: Callable[[np.ndarray], np.ndarray]  # (N, T, F) float32 -> (N,) p_up
    flat_band: float = 0.0  # the label's volatility-scaled flat band (0: exact ties only)
    manifest: dict[str, Any] | None = None  # the artifact's manifest (baselines, signal policy); None: checkpoint


def open_model(path: str | os.PathLike[str] | None = None) -> ScoredModel:
    """A checkpoint directory (``config.json`` + ``model.safetensors``) or an artifact (``manifest.json``)."""
    from barsignal.features.normalize import Normalizer

    p = Path(path) if path is not None else None
    if p is not None and (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return _open_checkpoint(Path(path), Normalizer)  # torch; an artifact below needs no torch
    from barsignal.engine.artifact import default_artifact_dir, load_artifact

    root = Path(path) if path is not None else default_artifact_dir()
    if not (root / "manifest.json").is_file():
        raise ArtifactError(f"{root} is neither a checkpoint (config.json + model.safetensors) "
                            "nor a model artifact (manifest.json)")
    art = load_artifact(root)
    try:
        from barsignal.engine.select import load_scorer
    except ImportError as exc:
        raise ArtifactError(f"cannot score artifact {root}: the engine has no scorer loader yet "
                            f"({exc})") from None
    scorer = load_scorer(art)
    if not art.normalization:
        raise ArtifactError(f"artifact {root}: manifest has no normalization statistics")
    t, _ = art.window_shape

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(scorer.score_batch(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float64)

    label = art.manifest.get("label") or {}
    return ScoredModel(str(root), f"artifact:{art.default_variant}", t, art.horizon,
                       Normalizer.from_dict(art.normalization), predict,
                       float(label.get("flat_band", 0.0)), art.manifest)


def _open_checkpoint(path: Path, normalizer_cls: Any) -> ScoredModel:
    import torch

    from barsignal.model import checkpoint

    model = checkpoint.load(path).export_mode(True)
    _, meta = checkpoint.read_config(path)
    if "normalizer" not in meta:
        raise ArtifactError(f"checkpoint {path} has no normalizer statistics in config.json meta "
                            "(was it written by `barsignal train`?)")

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # (N, T, F)
        return torch.sigmoid(model(xt)).double().numpy()  # (N,)

    return ScoredModel(str(path), str(meta.get("kind", "checkpoint")),
                       int(meta.get("window", model.cfg.window)), int(meta.get("horizon", 1)),
                       normalizer_cls.from_dict(meta["normalizer"]), predict, float(meta.get("flat_band", 0.0)))
