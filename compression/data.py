"""The windows every compression stage uses: the teacher's own dataset, cached, within a budget.

The bars are the ones the teacher was trained on (its checkpoint's ``meta["data"]``) unless the
config names others, split exactly as ``barsignal.model.dataset`` splits them (so the normalizer is
the teacher's, with the teacher's label: horizon and flat band, ties dropped). ``Data.sets`` also holds
the whole train split and every validation / test window, ties included, consecutive bar by bar, as
``model.dataset.WindowSet``: the baselines are fitted on the first, and the trading policy is chosen
and reported by replaying the others through ``SignalRule`` and the paper broker
(``engine.policy``). The result is cached in ``<workdir>/data.npz`` (rows + indices, not (N, T, F)
copies), keyed by the bar paths, the label and the feature-schema hash. The student is trained on
these windows, so the artifact declares *their* schema hash and normalizer (the teacher's are
recorded beside them; a teacher trained on other features is still a valid source of soft labels,
and its fidelity is measured on these windows).
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
from barsignal.fsutil import atomic_open
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


SETS = ("train", "val_all", "test_all")
_FIELDS = ("ends", "labels", "times", "last_up", "ret", "tied")


def _build(paths: list[str], horizon: int, window: int, flat_band: float = 0.0) -> dict[str, Any]:
    from barsignal.model.dataset import load_segments

    return _build_segments(load_segments(paths), horizon, window, flat_band)


def _build_segments(segments: list[Any], horizon: int, window: int, flat_band: float = 0.0) -> dict[str, Any]:
    from barsignal.model.dataset import DatasetSpec, build

    splits = build(segments, DatasetSpec(window=window, horizon=horizon, flat_band=flat_band))
    out: dict[str, Any] = {"rows": splits.train.rows, "bar_open": splits.train.bar_open,
                           "bar_close": splits.train.bar_close,
                           "normalizer": json.dumps(splits.normalizer.to_dict()),
                           "info": json.dumps(splits.info)}
    for name, ws in (("train", splits.train), ("val_all", splits.val_all), ("test_all", splits.test_all)):
        for f in _FIELDS:
            out[f"{name}_{f}"] = getattr(ws, f)
    return out


def _sets(raw: dict[str, Any], window: int) -> dict[str, Any]:
    from barsignal.model.dataset import WindowSet

    return {name: WindowSet(raw["rows"], raw[f"{name}_ends"], raw[f"{name}_labels"], raw[f"{name}_times"],
                            raw[f"{name}_last_up"], window, raw[f"{name}_ret"], raw[f"{name}_tied"].astype(bool),
                            raw["bar_open"], raw["bar_close"]) for name in SETS}


def _split(ws: Any, limit: int) -> Split:
    ws = ws.labelled()
    if 0 < limit < len(ws):  # evenly spaced over the whole period, deterministic
        ws = ws.every(limit)
    x = ws.x()  # (N, T, F) float32
    return Split(np.ascontiguousarray(x, dtype=np.float32), ws.labels.astype(np.float32), ws.ret)


def data_from_segments(segments: list[Any], *, horizon: int = 1, window: int = 30, max_train: int = 0,
                       max_val: int = 5000, max_test: int = 10_000, flat_band: float = 0.0) -> Data:
    """The same splits from in-memory segments (``barsignal.model.dataset.Segment``), uncached."""
    from barsignal.features.spec import schema_hash

    raw = _build_segments(segments, horizon, window, flat_band)
    sets = _sets(raw, window)
    return Data(_split(sets["train"], max_train), _split(sets["val_all"], max_val),
                _split(sets["test_all"], max_test),
                meta={"bars": [s.name for s in segments], "horizon": horizon, "window": window,
                      "flat_band": flat_band, "schema_hash": schema_hash(),
                      "normalizer": json.loads(raw["normalizer"]), "dataset": json.loads(raw["info"])},
                sets=sets)


def load_data(cfg: CompressionConfig, teacher_meta: dict[str, Any], workdir: Path,
              val_windows: int = 5000) -> Data:
    """Train (capped at ``[data] max_windows``), validation (capped at ``val_windows``) and test
    (capped at ``[eval] windows``) splits."""
    paths = bar_paths(cfg, teacher_meta)
    horizon = int(teacher_meta.get("horizon", 1))
    window = int(teacher_meta.get("window", 30))
    flat_band = float(teacher_meta.get("flat_band", 0.0))
    from barsignal.features.spec import schema_hash

    sh = schema_hash()  # the features the windows are built with (and the artifact declares)
    key = hashlib.sha256(json.dumps([paths, horizon, window, flat_band, sh, 2]).encode()).hexdigest()[:16]
    cache = workdir / "data.npz"
    raw: dict[str, Any] | None = None
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                raw = {k: z[k] for k in z.files}
    if raw is None:
        raw = _build(paths, horizon, window, flat_band)
        workdir.mkdir(parents=True, exist_ok=True)
        with atomic_open(cache) as f:  # a crash never leaves a torn cache that np.load half-reads
            np.savez(f, key=np.array(key), **raw)
        raw = {**raw, "normalizer": np.array(raw["normalizer"]), "info": np.array(raw["info"])}
    sets = _sets(raw, window)
    data = Data(
        _split(sets["train"], cfg.data.max_windows),
        _split(sets["val_all"], val_windows),
        _split(sets["test_all"], cfg.eval.windows),
        meta={"bars": paths, "horizon": horizon, "window": window, "flat_band": flat_band, "schema_hash": sh,
              "normalizer": json.loads(str(raw["normalizer"])), "dataset": json.loads(str(raw["info"]))},
        sets=sets,
    )
    log.info("compression data", train=len(data.train), val=len(data.val), test=len(data.test),
             bars=paths)
    return data
