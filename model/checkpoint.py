"""Model checkpoints: ``model.safetensors`` (weights) + ``config.json`` (the config that rebuilds it).

``config.json`` is ``{"format": "barsignal-informer", "version": 1, "config": {...InformerConfig},
"meta": {...}}``; ``meta`` is free-form JSON the trainer fills (label horizon, feature schema,
normalizer statistics, metrics). Optimizer state for resuming lives beside them in ``train_state.pt``
(see ``barsignal.model.train``); ``load`` does not need it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from barsignal.errors import ArtifactError
from barsignal.fsutil import atomic_write_bytes, atomic_write_text
from barsignal.model.informer import Informer, InformerConfig

FORMAT = "barsignal-informer"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save(model: Informer, directory: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> Path:
    """Write the weights and config of ``model`` to ``directory`` (created); returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    atomic_write_bytes(out / WEIGHTS, save_bytes(state, metadata={"format": FORMAT}))
    doc = {"format": FORMAT, "version": VERSION, "config": _unwrap(model).cfg.to_dict(), "meta": meta or {}}
    atomic_write_text(out / CONFIG, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out


def read_config(directory: str | os.PathLike[str]) -> tuple[InformerConfig, dict[str, Any]]:
    """(config, meta) of the checkpoint in ``directory``."""
    path = Path(directory) / CONFIG
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no checkpoint at {directory}: {CONFIG} is missing "
                            "(train one with `barsignal train teacher|student`)") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"checkpoint config {path} is not valid JSON: {exc}") from None
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ArtifactError(f"{path} is not a {FORMAT} v{VERSION} checkpoint "
                            f"(format={doc.get('format')!r}, version={doc.get('version')!r})")
    try:
        cfg = InformerConfig.from_dict(doc["config"])
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"checkpoint config {path} does not rebuild a model: {exc}") from None
    return cfg, doc.get("meta", {})


def load(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Informer:
    """Rebuild the model saved in ``directory`` and load its weights; returned in eval mode."""
    cfg, _ = read_config(directory)
    model = Informer(cfg)
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"checkpoint {directory} has a config but no {WEIGHTS}")
    state = load_file(str(path), device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"checkpoint {directory} does not match its config: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(map_location).eval()


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def _unwrap(model: torch.nn.Module) -> Informer:
    """The Informer inside a DDP / compiled wrapper."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    if not isinstance(inner, Informer):
        raise TypeError(f"expected an Informer, got {type(inner).__name__}")
    return inner
