"""The windows every compression stage uses: the teacher's own dataset, cached, within a budget.

The bars are the ones the teacher was trained on (its checkpoint's ``meta["data"]``) unless the
config names others, split exactly as ``barsignal.model.dataset`` splits them (so the normalizer is
the teacher's). Next-bar returns come from the closes of the same rows, for backtests. The result is
cached in ``<workdir>/data.npz`` (rows + indices, not (N, T, F) copies), keyed by the bar paths and
the feature-schema hash. The student is trained on these windows, so the artifact declares *their*
schema hash and normalizer (the teacher's are recorded beside them; a teacher trained on other
features is still a valid source of soft labels, and its fidelity is measured on these windows).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.compression.config import CompressionConfig
from barsignal.compression.distill import Data, Split
from barsignal.errors import ConfigError
from barsignal.log import get_logger

log = get_logger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BARS = REPO.parent / "shared" / "data" / "klines" / "spot_1m"


def bar_paths(cfg: CompressionConfig, teacher_meta: dict[str, Any]) -> list[str]:
    paths = list(cfg.data.bars) or list(teacher_meta.get("data") or []) or [str(DEFAULT_BARS)]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise ConfigError(f"bar files {missing} do not exist; set [data] bars in compression.toml")
    return paths


def _build(paths: list[str], horizon: int, window: int) -> dict[str, Any]:
    from barsignal.model.dataset import load_segments

    return _build_segments(load_segments(paths), horizon, window)


def _build_segments(segments: list[Any], horizon: int, window: int) -> dict[str, Any]:
    from barsignal.model.dataset import DatasetSpec, build

    splits = build(segments, DatasetSpec(window=window, horizon=horizon))
    close = np.concatenate([s.frame.close for s in segments]).astype(np.float64)
    out: dict[str, Any] = {"rows": splits.train.rows, "close": close,
                           "normalizer": json.dumps(splits.normalizer.to_dict()),
                           "info": json.dumps(splits.info)}
    for name in ("train", "val", "test"):
        ws = getattr(splits, name)
        out[f"{name}_ends"] = ws.ends
        out[f"{name}_labels"] = ws.labels
    return out


def _split(raw: dict[str, Any], name: str, window: int, limit: int) -> Split:
    ends, labels = raw[f"{name}_ends"], raw[f"{name}_labels"]
    if 0 < limit < len(ends):  # evenly spaced over the whole period, deterministic
        idx = np.linspace(0, len(ends) - 1, limit).round().astype(np.int64)
        ends, labels = ends[idx], labels[idx]
    rows, close = raw["rows"], raw["close"]
    x = rows[ends[:, None] + np.arange(-window + 1, 1)]  # (N, T, F) float32
    ret = close[ends + 1] / close[ends] - 1.0  # next-bar simple return (ends + 1 is in the segment)
    return Split(np.ascontiguousarray(x, dtype=np.float32), labels.astype(np.float32), ret)


def data_from_segments(segments: list[Any], *, horizon: int = 1, window: int = 30, max_train: int = 0,
                       max_val: int = 5000, max_test: int = 10_000) -> Data:
    """The same splits from in-memory segments (``barsignal.model.dataset.Segment``), uncached."""
    from barsignal.features.spec import schema_hash

    raw = _build_segments(segments, horizon, window)
    return Data(_split(raw, "train", window, max_train), _split(raw, "val", window, max_val),
                _split(raw, "test", window, max_test),
                meta={"bars": [s.name for s in segments], "horizon": horizon, "window": window,
                      "schema_hash": schema_hash(),
                      "normalizer": json.loads(raw["normalizer"]), "dataset": json.loads(raw["info"])})


def load_data(cfg: CompressionConfig, teacher_meta: dict[str, Any], workdir: Path,
              val_windows: int = 5000) -> Data:
    """Train (capped at ``[data] max_windows``), validation (capped at ``val_windows``) and test
    (capped at ``[eval] windows``) splits."""
    paths = bar_paths(cfg, teacher_meta)
    horizon = int(teacher_meta.get("horizon", 1))
    window = int(teacher_meta.get("window", 30))
    from barsignal.features.spec import schema_hash

    sh = schema_hash()  # the features the windows are built with (and the artifact declares)
    key = hashlib.sha256(json.dumps([paths, horizon, window, sh]).encode()).hexdigest()[:16]
    cache = workdir / "data.npz"
    raw: dict[str, Any] | None = None
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                raw = {k: z[k] for k in z.files}
    if raw is None:
        raw = _build(paths, horizon, window)
        workdir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=np.array(key), **raw)
        raw = {**raw, "normalizer": np.array(raw["normalizer"]), "info": np.array(raw["info"])}
    data = Data(
        _split(raw, "train", window, cfg.data.max_windows),
        _split(raw, "val", window, val_windows),
        _split(raw, "test", window, cfg.eval.windows),
        meta={"bars": paths, "horizon": horizon, "window": window, "schema_hash": sh,
              "normalizer": json.loads(str(raw["normalizer"])), "dataset": json.loads(str(raw["info"]))},
    )
    log.info("compression data", train=len(data.train), val=len(data.val), test=len(data.test),
             bars=paths)
    return data
