"""``barsignal compress drift-bounds``: the drift PSI's calibrated bounds, written into an artifact.

The bounds (``engine.drift.null_bounds``) come from the artifact's own training split: the same bars,
horizon and window as the model, split as ``barsignal.model.dataset`` splits them. The training bins
(``features.psi_reference``) are recomputed from those rows first and must match the artifact's,
which proves the data is the training data. The validation and test splits, never used for the
bounds, are then measured the same way: the share of their windows at each calibrated size that has
any feature over its bound is recorded beside the bounds (``held_out``).

Running it again on the same artifact and data computes the same bounds; when the artifact already
carries them nothing is written (idempotent), else the artifact is rewritten in place through
``engine.artifact.rewrite_artifact`` (every other manifest key kept) with a ``revisions`` entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.engine.drift import QUANTILE, SIZES, STRIDE, bounds_at, null_bounds, window_psi

GAP_MS = 5 * 60_000  # consecutive rows further apart than this (a hole in the bars) start a new segment


def segments(ws: Any) -> list[np.ndarray]:
    """The last row of every window of ``ws`` (a ``model.dataset.WindowSet``), split into runs of
    consecutive minutes (a tied window dropped leaves a one-minute hole, which does not split)."""
    rows = ws.last_rows().astype(np.float64)
    cut = np.flatnonzero(np.diff(ws.times) > GAP_MS) + 1
    return [s for s in np.split(rows, cut) if len(s)]


def held_out(bounds: dict[str, Any], segs: Sequence[np.ndarray], reference: dict[str, Any],
             stride: int = STRIDE) -> dict[str, float]:
    """Per calibrated size, the share of windows of ``segs`` with any feature's PSI over its bound."""
    out: dict[str, float] = {}
    for size in bounds["sizes"]:
        parts = [window_psi(s, reference["edges"], reference["fractions"], size, stride)
                 for s in segs if len(s) >= size]
        if parts:
            psi = np.concatenate(parts)
            b = bounds_at(bounds, size)
            out[str(size)] = round(float(np.mean((psi > b).any(axis=1))), 5)
    return out


def compute(artifact: Any, data: Sequence[str], *, sizes: Sequence[int] = SIZES, quantile: float = QUANTILE,
            stride: int = STRIDE) -> dict[str, Any]:
    """``features.psi_bounds`` for ``artifact`` from its training bars ``data``."""
    from barsignal.compression.report import psi_reference
    from barsignal.errors import ConfigError
    from barsignal.model.dataset import DatasetSpec, load_splits

    label = artifact.manifest.get("label") or {}
    spec = DatasetSpec(window=int(artifact.window_shape[0]), horizon=int(artifact.horizon),
                       flat_band=float(label.get("flat_band", 0.0)))
    splits = load_splits(data, spec)
    ref = artifact.psi_reference
    if ref is None:
        raise ConfigError(f"{artifact.path}: the artifact ships no training bins (features.psi_reference) to "
                          "calibrate against; rebuild it with `barsignal compress`")
    again = psi_reference(splits.train, bins=int(ref.get("bins", 10)))
    same = again["rows"] == ref.get("rows") and all(
        np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(again["edges"], ref["edges"], strict=True))
    if not same:
        raise ConfigError(f"{artifact.path}: the training bins of --data ({again['rows']} rows) are not the "
                          f"artifact's ({ref.get('rows')} rows): pass the bars the model was trained on")
    b = from_splits(ref, splits.train, splits.val_all, splits.test_all, sizes=sizes, quantile=quantile,
                    stride=stride)
    b["data"] = [Path(p).name for p in data]
    return b


def from_splits(ref: dict[str, Any], train: Any, val: Any, test: Any, *, sizes: Sequence[int] = SIZES,
                quantile: float = QUANTILE, stride: int = STRIDE) -> dict[str, Any]:
    """The bounds from the train split's windows (``model.dataset.WindowSet``s), with the share of the
    validation and test splits' windows over them (``held_out``): what ``barsignal compress`` writes
    into a new artifact and ``drift-bounds`` into an existing one."""
    b = null_bounds(segments(train), ref, sizes=sizes, quantile=quantile, stride=stride,
                    source="train split: last row of every window, normalized, windows of consecutive rows")
    b["held_out"] = {name: held_out(b, segments(ws), ref, stride)
                     for name, ws in (("validation", val), ("test", test)) if ws is not None and len(ws)}
    return b


def write(src: Path, data: Sequence[str], *, dest: Path | None = None, command: str = "", **kw: Any
          ) -> tuple[dict[str, Any], bool]:
    """Compute the bounds for the artifact ``src`` and write them into ``dest`` (default: in place).
    Returns (the bounds, whether the artifact was rewritten: False when it already had them)."""
    from barsignal.engine.artifact import load_artifact, rewrite_artifact

    art = load_artifact(src)
    b = compute(art, data, **kw)
    if art.psi_bounds == b and (dest is None or Path(dest).resolve() == Path(src).resolve()):
        return b, False
    rewrite_artifact(art, dest or src, features={"psi_bounds": b}, revision={
        "command": command or "barsignal compress drift-bounds",
        "what": f"features.psi_bounds: the drift PSI's {b['quantile']:.1%} null bound per feature at "
                f"{len(b['sizes'])} window sizes ({b['sizes'][0]}-{b['sizes'][-1]} rows) from the train split"})
    return b, True
