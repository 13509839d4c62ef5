"""TA-Lib references for the features docs/FEATURES.md checks against TA-Lib (``import talib``, a dev
dependency, imported only when called), and the checks ``barsignal features check`` and the tests run.

Pure: arrays in, figures out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from barsignal.features.bar import BarFrame
from barsignal.features.batch import compute
from barsignal.features.engine import FeatureEngine
from barsignal.features.spec import INDEX, N_FEATURES, NAMES, REL_FLOOR, RESTART_WARMUP_BARS, WARMUP

# feature name -> the TA-Lib function it is checked against
TALIB_REFERENCED: dict[str, str] = {
    "sma7_dev": "SMA", "sma25_dev": "SMA", "sma99_dev": "SMA", "ema12_dev": "EMA", "ema26_dev": "EMA",
    "macd": "MACD", "macd_signal": "MACD", "macd_hist": "MACD", "rsi6": "RSI", "rsi14": "RSI",
    "stoch_k": "STOCH", "stoch_d": "STOCH", "willr14": "WILLR", "cci20": "CCI", "adx14": "ADX",
    "mfi14": "MFI", "atr14": "ATR", "bb_pctb": "BBANDS", "bb_width": "BBANDS",
}


def rel_diff_array(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise ``spec.rel_diff``."""
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), REL_FLOOR)


def talib_features(frame: BarFrame) -> dict[str, np.ndarray]:
    """The referenced features computed from TA-Lib's own functions (NaN where TA-Lib has no value)."""
    import talib

    h, l, c, v = frame.high, frame.low, frame.close, frame.volume
    ref: dict[str, np.ndarray] = {}
    for n in (7, 25, 99):
        ref[f"sma{n}_dev"] = c / talib.SMA(c, n) - 1.0
    for n in (12, 26):
        ref[f"ema{n}_dev"] = c / talib.EMA(c, n) - 1.0
    macd, sig, hist = talib.MACD(c, 12, 26, 9)
    ref["macd"], ref["macd_signal"], ref["macd_hist"] = macd / c, sig / c, hist / c
    ref["rsi6"], ref["rsi14"] = talib.RSI(c, 6) / 100, talib.RSI(c, 14) / 100
    sk, sd = talib.STOCH(h, l, c, 14, 3, 0, 3, 0)
    ref["stoch_k"], ref["stoch_d"] = sk / 100, sd / 100
    ref["willr14"] = talib.WILLR(h, l, c, 14) / 100
    ref["cci20"] = talib.CCI(h, l, c, 20) / 100
    ref["adx14"] = talib.ADX(h, l, c, 14) / 100
    ref["mfi14"] = talib.MFI(h, l, c, v, 14) / 100
    ref["atr14"] = talib.ATR(h, l, c, 14) / c
    up, mid, lo = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref["bb_pctb"] = (c - lo) / (up - lo)  # inf/NaN where TA-Lib's bands collapse: not compared
    ref["bb_width"] = (up - lo) / mid
    assert set(ref) == set(TALIB_REFERENCED)
    return ref


def exact_bbands(close: np.ndarray, n: int = 20, k: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) Bollinger bands by a two-pass mean and centred variance per window (NaN before
    the first full window): accurate where TA-Lib's running sums of x and x^2 cancel."""
    from numpy.lib.stride_tricks import sliding_window_view

    c = np.asarray(close, np.float64)
    up = np.full(len(c), np.nan)
    lo = np.full(len(c), np.nan)
    if len(c) >= n:
        w = sliding_window_view(c, n)  # (N - n + 1, n)
        m = w.mean(axis=1)
        sd = np.sqrt(((w - m[:, None]) ** 2).mean(axis=1))
        up[n - 1:], lo[n - 1:] = m + k * sd, m - k * sd
    return up, lo


def bb_pctb_allowance(close: np.ndarray, up_t: np.ndarray, lo_t: np.ndarray) -> np.ndarray:
    """How far TA-Lib's %B can sit from the exact %B because of TA-Lib's own band error, by the
    conditioning of %B = (c - lo) / (up - lo) in its inputs:
    (|δlo| + |%B| |δ(up - lo)|) / |up - lo|, with δ = TA-Lib's band minus the exact two-pass band.
    Near %B = 0 (the close on the lower band) this is what a relative comparison cannot absorb."""
    up_x, lo_x = exact_bbands(close)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = up_x - lo_x
        pctb = (close - lo_t) / (up_t - lo_t)
        a = (np.abs(lo_t - lo_x) + np.abs(pctb) * np.abs((up_t - lo_t) - width)) / np.abs(width)
    return np.where(np.isfinite(a), a, 0.0)


@dataclass
class CheckResult:
    """Worst figure per feature (NaN: not compared) and whether the bound held."""

    name: str
    bound: float
    worst: np.ndarray = field(default_factory=lambda: np.full(N_FEATURES, np.nan))
    worst_at: np.ndarray = field(default_factory=lambda: np.full(N_FEATURES, -1, dtype=np.int64))
    compared: int = 0  # rows compared
    skipped: int = 0  # values left out (see each check)
    note: str = ""

    @property
    def ok(self) -> bool:
        w = self.worst[~np.isnan(self.worst)]
        return bool(w.size) and bool((w <= self.bound).all())

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok, "bound": self.bound, "rows": self.compared, "skipped": self.skipped,
            "note": self.note,
            "worst": {NAMES[k]: float(self.worst[k])
                      for k in range(N_FEATURES) if not np.isnan(self.worst[k])},
            "worst_at": {NAMES[k]: int(self.worst_at[k]) for k in range(N_FEATURES) if self.worst_at[k] >= 0},
        }


def _fill(res: CheckResult, d: np.ndarray, offset: int = 0) -> CheckResult:
    """Per-column max of d (NaN entries ignored) into res."""
    for k in range(d.shape[1]):
        col = d[:, k]
        ok = ~np.isnan(col)
        if ok.any():
            j = int(np.argmax(np.where(ok, col, -1.0)))
            res.worst[k] = col[j]
            res.worst_at[k] = j + offset
    return res


def check_incremental(frame: BarFrame, gap_policy: str = "continue") -> CheckResult:
    """``update()`` bar by bar against ``batch.compute``: worst absolute difference (bound 0: bit for bit)."""
    X = compute(frame, gap_policy)
    eng = FeatureEngine(gap_policy)
    Y = np.empty_like(X)
    for i, bar in enumerate(frame.bars()):
        Y[i] = eng.update(bar)
    res = CheckResult("incremental_vs_batch", 0.0, compared=len(X))
    bits_equal = X.view(np.int64) == Y.view(np.int64)
    d = np.where(bits_equal, 0.0, np.abs(X - Y))
    d = np.where(bits_equal | (d > 0), d, np.inf)  # differing bits with equal value (e.g. -0.0): count
    return _fill(res, d)


def check_restart(frame: BarFrame, at: int | None = None, warmup: int = RESTART_WARMUP_BARS,
                  gap_policy: str = "continue", X: np.ndarray | None = None) -> CheckResult:
    """A run started ``warmup`` bars before ``at`` (default: the middle) against an uninterrupted one,
    from bar ``at`` to the end: worst ``rel_diff`` (bound ``spec.REL_TOL_RESTART``)."""
    from barsignal.features.spec import REL_TOL_RESTART

    n = len(frame)
    at = n // 2 if at is None else at
    if not warmup <= at < n:
        raise ValueError(f"restart point {at} needs {warmup} bars before it and one after it (file has {n})")
    X = compute(frame, gap_policy) if X is None else X
    R = compute(frame.slice(at - warmup, n), gap_policy)
    res = CheckResult("restart_parity", REL_TOL_RESTART, compared=n - at,
                      note=f"restart at bar {at} after {warmup} warm-up bars")
    return _fill(res, rel_diff_array(X[at:], R[warmup:]), at)


def check_talib(frame: BarFrame, X: np.ndarray | None = None) -> CheckResult:
    """Referenced features against TA-Lib over the whole frame (gap policy "continue", as TA-Lib runs on
    the rows): worst ``rel_diff`` from each feature's first TA-Lib value (bound ``spec.REL_TOL_TALIB``).
    Values where TA-Lib's own output is not finite (a collapsed Bollinger band) are skipped and counted.

    bb_pctb is ill-conditioned near 0 (the close on the lower band): TA-Lib's bands come from running
    sums of x and x^2 that cancel, and their error, divided by the band width, lands on %B in full.
    Its difference is therefore judged after subtracting twice the part TA-Lib's own band error (against
    exact two-pass bands) explains, ``bb_pctb_allowance``; every other feature stays strictly relative."""
    import talib

    from barsignal.features.spec import REL_TOL_TALIB

    X = compute(frame) if X is None else X
    ref = talib_features(frame)
    up_t, _, lo_t = talib.BBANDS(frame.close, 20, 2.0, 2.0, 0)
    allowance = bb_pctb_allowance(frame.close, up_t, lo_t)
    res = CheckResult("talib", REL_TOL_TALIB, compared=len(X),
                      note="bb_pctb: rel. difference beyond 2x TA-Lib's own band error (vs exact two-pass bands)")
    for name, r in ref.items():
        k = INDEX[name]
        valid = ~np.isnan(r)
        if not valid.any():
            continue
        start = max(WARMUP[k] - 1, int(np.argmax(valid)))
        rr = r[start:]
        finite = np.isfinite(rr)
        res.skipped += int((~finite).sum())
        d = np.where(finite, rel_diff_array(X[start:, k], np.where(finite, rr, 0.0)), np.nan)
        if name == "bb_pctb":  # judged beyond what TA-Lib's own band error explains (conditioning)
            a, b = X[start:, k], np.where(finite, rr, 0.0)
            excess = np.maximum(np.abs(a - b) - 2.0 * allowance[start:], 0.0)
            d = np.where(finite, excess / np.maximum(np.maximum(np.abs(a), np.abs(b)), REL_FLOOR), np.nan)
        if (~np.isnan(d)).any():
            j = int(np.nanargmax(d))
            res.worst[k] = d[j]
            res.worst_at[k] = start + j
    return res
