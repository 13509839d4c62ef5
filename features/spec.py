"""The feature schema: the 33 names in code order, their parameters, warm-ups and the schema hash.

docs/FEATURES.md documents every entry (formula, warm-up, reference, edge cases). A model artifact
stores ``schema_hash()``; an artifact built for other features is refused at load.
"""

from __future__ import annotations

import hashlib
import json

# Bump when any formula changes (even with the same names): it changes the schema hash.
CODE_VERSION = 1

NAMES: tuple[str, ...] = (
    "ret_1", "ret_3", "ret_5", "ret_15", "ret_30", "ret_60",
    "hl_range", "body", "upper_wick", "lower_wick", "close_pos",
    "sma7_dev", "sma25_dev", "sma99_dev", "ema12_dev", "ema26_dev",
    "macd", "macd_signal", "macd_hist",
    "rsi6", "rsi14", "stoch_k", "stoch_d", "willr14", "cci20", "adx14", "mfi14", "atr14",
    "bb_pctb", "bb_width",
    "rvol30", "vol_z20", "vwap30_dev",
)
N_FEATURES = 33
INDEX: dict[str, int] = {name: i for i, name in enumerate(NAMES)}

# Every parameter a formula uses; part of the schema hash.
PARAMS: dict[str, object] = {
    "ret_lags": [1, 3, 5, 15, 30, 60],
    "sma": [7, 25, 99], "ema": [12, 26], "macd": [12, 26, 9],
    "rsi": [6, 14], "stoch": [14, 3, 3], "willr": 14, "cci": [20, 0.015], "adx": 14, "mfi": 14,
    "atr": 14, "bbands": [20, 2.0, 2.0], "rvol": 30, "vol_z": 20, "vwap": 30,
    "flat_eps": 1e-12, "talib_zero": 1e-8, "interval_ms": 60_000,
}

# Bars (counting the current one) a feature needs before it has its defined value; before that
# it is 0.0. These are TA-Lib's lookbacks + 1, so the first valid bar matches TA-Lib's first output.
WARMUP: tuple[int, ...] = (
    2, 4, 6, 16, 31, 61,          # ret_k: k + 1 closes
    1, 1, 1, 1, 1,                # single-bar shape
    7, 25, 99, 12, 26,            # SMA n, EMA n (seeded by the SMA of the first n closes)
    26, 34, 34,                   # MACD 12/26 line, signal 9
    7, 15,                        # RSI n: n + 1 closes
    16, 18, 14, 20,               # STOCH 14/3/3 slow %K, slow %D; WILLR 14; CCI 20
    28, 15, 15,                   # ADX 14 (2n), MFI 14 (n + 1), ATR 14 (n + 1)
    20, 20,                       # BBANDS 20
    31, 20, 30,                   # rvol30 (30 returns), vol_z20, vwap30
)

# Bars until ``FeatureEngine.ready``: every feature has its defined value.
WARMUP_BARS: int = max(WARMUP)

# Bars a live start must fetch (and feed) so that every feature agrees with an uninterrupted run
# within REL_TOL_RESTART from then on. Measured on the 4 real spot 1m files, restarting every 500
# bars (361 restarts, 4000 bars compared after each): the worst restart needed 381 bars to be within
# 1e-9 (macd, 2021-04/05 file; ema26_dev 379, adx14 352, rsi14 309, atr14 302), and 617 bars to be
# bit-identical (median 528). Declared: 700, past both. Recursive features (EMA, MACD, RSI, ATR,
# ADX) forget their start only exponentially; windowed ones agree exactly once their window refills.
# tests/features/test_real_data.py checks the figure on every file.
RESTART_WARMUP_BARS: int = 700

# Tolerances and the one relative-difference measure used by tests and `barsignal features check`.
REL_TOL_RESTART = 1e-9
REL_TOL_TALIB = 1e-6
REL_FLOOR = 1e-6  # features are dimensionless and O(1e-4..1); the floor only matters at zero crossings


def rel_diff(a: float, b: float) -> float:
    """``|a - b| / max(|a|, |b|, REL_FLOOR)``."""
    return abs(a - b) / max(abs(a), abs(b), REL_FLOOR)


def schema() -> dict[str, object]:
    """What the schema hash covers: names, order, parameters, code version."""
    return {"names": list(NAMES), "params": PARAMS, "warmup": list(WARMUP), "code_version": CODE_VERSION}


def schema_hash() -> str:
    """sha256 (hex) of the canonical JSON of :func:`schema`."""
    blob = json.dumps(schema(), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


assert len(NAMES) == N_FEATURES == len(WARMUP) == len(set(NAMES))
