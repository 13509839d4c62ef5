"""Signal thresholds chosen on the validation split, with the rule written down for the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from barsignal.compression.metrics import backtest

RULE = (
    "long_threshold = the candidate maximising the validation backtest Sharpe (next-bar return, "
    "{fee_bps:g} bp per unit of turnover) among the {lo:g}..{hi:g} quantiles (step {step:g}) of the "
    "model's validation probabilities, keeping only candidates with exposure >= {min_exposure:g}; "
    "short_threshold = the mirror quantile when shorts are allowed, else none"
)


@dataclass(frozen=True)
class Thresholds:
    long_threshold: float
    short_threshold: float | None
    rule: str
    val_sharpe: float
    val_exposure: float
    quantile: float

    def to_manifest(self) -> dict[str, Any]:
        return asdict(self)


def choose_thresholds(p_val: np.ndarray, ret_val: np.ndarray, *, fee_bps: float = 10.0,
                      allow_short: bool = False, lo: float = 0.5, hi: float = 0.98, step: float = 0.02,
                      min_exposure: float = 0.01) -> Thresholds:
    """Pick the signal thresholds on validation predictions ``p_val`` and next-bar returns ``ret_val``."""
    p_val = np.asarray(p_val, dtype=np.float64)
    if len(p_val) == 0:
        raise ValueError("choose_thresholds: empty validation set")
    best: tuple[float, float, float, float | None, float] | None = None
    for q in np.arange(lo, hi + 1e-9, step):
        long_t = float(np.quantile(p_val, q))
        short_t = float(np.quantile(p_val, 1.0 - q)) if allow_short else None
        if short_t is not None and short_t >= long_t:
            continue
        bt = backtest(p_val, ret_val, long_t, short_t, fee_bps)
        if bt["exposure"] < min_exposure:
            continue
        if best is None or bt["sharpe"] > best[0]:
            best = (bt["sharpe"], float(q), long_t, short_t, bt["exposure"])
    if best is None:  # every candidate was below the exposure floor: fall back to the median
        long_t = float(np.quantile(p_val, 0.5))
        bt = backtest(p_val, ret_val, long_t, None, fee_bps)
        best = (bt["sharpe"], 0.5, long_t, None, bt["exposure"])
    sharpe, q, long_t, short_t, exposure = best
    rule = RULE.format(fee_bps=fee_bps, lo=lo, hi=hi, step=step, min_exposure=min_exposure)
    return Thresholds(long_t, short_t, rule, sharpe, exposure, q)
