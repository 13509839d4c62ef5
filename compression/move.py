"""``barsignal compress move``: fit the move-size forecast and its baselines into an artifact.

The bars are split exactly as ``model.dataset`` splits them (the artifact's window and horizon, its
normalizer), every move forecaster of ``model/move.py`` is fitted on the training split, the shipped
one's calibration is chosen on validation (``[move] calibration = "auto"``; then the rate of its
online intercept correction, ``model.move.ETA_GRID``, by validation log-loss), and the artifact is
written again through ``engine.artifact.rewrite_artifact`` with the manifest's ``move`` section:

    "move": {"horizon": h, "threshold_bp": c, "kind": "har_seasonal", "params": {...},
             "baselines": {...}, "fitted_on": {...}, "validation": {...}}

plus one ``revisions`` entry. Every file is re-hashed and verified. Running it again on the same
bars gives the same manifest (the fit is deterministic and the earlier ``move:`` revision is
replaced, not repeated). The shipped forecaster is a train-fitted baseline, not a network head:
compression fidelity does not apply to it (nothing is distilled, pruned or quantized; the
daemon runs the same float64 arithmetic as the fit, tested bit for bit).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.compression.config import MoveSection
from barsignal.engine import move_har
from barsignal.engine.artifact import Artifact, load_artifact, rewrite_artifact
from barsignal.errors import DataError

REVISION = "move:"


def fit_section(art: Artifact, bars: Sequence[str | os.PathLike[str]], cfg: MoveSection,
                n_boot: int = 200) -> dict[str, Any]:
    """The manifest's ``move`` section for ``art``, fitted on the training split of ``bars``."""
    from barsignal.features.normalize import Normalizer
    from barsignal.model import move as mv
    from barsignal.model.dataset import DatasetSpec, build, load_segments

    h = art.horizon
    segs = load_segments(bars)
    label = art.manifest.get("label") or {}
    sp = build(segs, DatasetSpec(window=art.window_shape[0], horizon=h,
                                 flat_band=float(label.get("flat_band", 0.0))),
               Normalizer.from_dict(art.normalization))
    if sp.val_all is None or len(sp.val_all) == 0:
        raise DataError(f"bars {list(map(str, bars))}: no validation windows to choose the move calibration on")
    mb = mv.MoveBars.of(segs)
    c = float(cfg.threshold_bp)
    fitted = mv.fit(mb, sp.train, sp.val_all, h, c, None if cfg.calibration == "auto" else cfg.calibration)
    val = mv.report(fitted, mb, sp.val_all, n_boot=n_boot)
    brief = {n: {m: s[m]["value"] for m in mv.MOVE_METRICS} for n, s in val["scores"].items()}
    return {"horizon": h, "threshold_bp": c, "kind": move_har.KIND, "params": fitted["forecaster"],
            "baselines": fitted["baselines"],
            "fitted_on": {"split": "train", "windows": len(sp.train), "bars": [Path(b).name for b in bars],
                          "val_start_ms": sp.info["val_start_ms"], "test_start_ms": sp.info["test_start_ms"],
                          "calibration": fitted.get("calib_choice") or cfg.calibration,
                          "online_rate": fitted.get("eta_choice")},
            "validation": {"windows": val["windows"], "days": val["days"], "rate": val["rate"], "scores": brief},
            "warmup_bars": int(fitted["forecaster"]["min_bars"]) + 1,
            "full_history_bars": max(fitted["forecaster"]["spans"]) + 1}


def write(src: str | os.PathLike[str], dest: str | os.PathLike[str], bars: Sequence[str | os.PathLike[str]],
          cfg: MoveSection, command: str = "") -> tuple[Artifact, dict[str, Any]]:
    """Fit the ``move`` section on ``bars`` and write ``src`` again to ``dest`` (may be ``src``)."""
    art = load_artifact(src)
    section = fit_section(art, bars, cfg)
    out = rewrite_artifact(src, dest, sections={"move": _finite(section)}, replaces=REVISION, revision={
        "command": command or "barsignal compress move",
        "what": f"{REVISION} {move_har.KIND} P(|r_{section['horizon']}| > {section['threshold_bp']:g} bp) and its "
                "baselines fitted on the training split"})
    return out, section


def _finite(o: Any) -> Any:
    """JSON without NaN (the manifest refuses it): NaN -> None."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, float | np.floating):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o
