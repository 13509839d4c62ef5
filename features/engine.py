"""``FeatureEngine``: the 33 features of docs/FEATURES.md, updated one closed bar at a time.

O(1) in the history length per bar, bounded state (fixed-length deques), no NaN or inf ever.
Windowed features are recomputed from their window each bar (a left-to-right sum, ``_fsum``), so they
depend only on the window's bars and agree bit for bit after a restart; recursive ones
(EMA, MACD, RSI, ATR, ADX) follow TA-Lib's seeding and recursions term for term.
``barsignal.features.batch`` drives this same code in a loop: one path for live, replay and training.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Iterable
from itertools import repeat
from operator import mul, sub

import numpy as np

from barsignal.errors import BadMessage, ConfigError
from barsignal.features.bar import INTERVAL_MS, Bar
from barsignal.features.spec import N_FEATURES, WARMUP_BARS

GAP_POLICIES = ("continue", "reset")

_FLAT = 1e-12  # a dispersion <= _FLAT * level counts as zero (flat window): neutral value
_TA_EPS = 1e-14  # TA-Lib's TA_EPSILON (TA_IS_ZERO and the scaled tie test of MFI)
# Accepted magnitudes: every intermediate stays finite inside them (ratios <= 1e24, tp * v <= 1e30).
_MIN_PRICE, _MAX_PRICE, _MAX_VOLUME = 1e-12, 1e12, 1e18


def _sum_left_to_right(xs: Iterable[float]) -> float:
    """``((x0 + x1) + x2) + ...`` in float64: the one summation every feature uses."""
    s = 0.0
    for x in xs:
        s += x
    return s


# One summation, fixed by the code: plain left-to-right. Python 3.12 changed the builtin ``sum`` over
# floats to compensated (Neumaier) summation, so live and replay on different interpreters would
# differ in the last bits. Up to 3.11 the builtin (C, 2x faster) *is* left to right, so it is used
# there; tests/features/test_summation.py pins the result on whichever interpreter runs it.
_fsum = sum if sys.version_info < (3, 12) else _sum_left_to_right
_log = math.log
_log1p = math.log1p
_sqrt = math.sqrt


def bar_problem(o: float, h: float, l: float, c: float, v: float) -> str | None:
    """Why a bar's OHLCV cannot be used (``"not_finite"``, ``"inconsistent"``, ``"out_of_range"``), or
    None when it is finite, consistent (l <= o, c <= h) and in range (prices 1e-12..1e12, volume
    0..1e18): the check :meth:`FeatureEngine.step` applies, for sources that drop such bars first."""
    if _MIN_PRICE <= l <= o <= h <= _MAX_PRICE and l <= c <= h and 0.0 <= v <= _MAX_VOLUME:
        return None
    if not all(map(math.isfinite, (o, h, l, c, v))):
        return "not_finite"
    if not (l <= o <= h and l <= c <= h) or v < 0.0:
        return "inconsistent"
    return "out_of_range"


def _std(d: deque[float], n: int) -> tuple[float, float]:
    """Population mean and standard deviation of a full window (two-pass)."""
    mean = _fsum(d) / n
    dev = list(map(sub, d, repeat(mean)))
    return mean, _sqrt(_fsum(map(mul, dev, dev)) / n)


class FeatureEngine:
    """Incremental features. ``update(bar)`` returns a (33,) float64 array.

    The returned array is an internal buffer, overwritten by the next ``update``: copy it to keep it.
    Before a feature has warmed up (see ``spec.WARMUP``) its value is 0.0; ``ready`` is true once
    all have (``spec.WARMUP_BARS`` bars after the start or the last reset).

    Gap policy (a gap is a missing open time; ``last_gap`` is the number of missing bars):
    - ``"continue"``: indicators run on across the gap, exactly as TA-Lib does on the file's rows.
    - ``"reset"``: the engine resets and warms up again from the bar after the gap.
    A bar whose open time is not after the last one, is not on the interval grid, or whose OHLCV
    is not finite, consistent (l <= o, c <= h) and in range (prices 1e-12..1e12, volume 0..1e18)
    raises ``BadMessage`` and leaves the state untouched.

    ``bars_seen``: bars since the start or the last reset. ``gaps``: gaps seen since construction.
    """

    def __init__(self, gap_policy: str = "continue", interval_ms: int = INTERVAL_MS) -> None:
        if gap_policy not in GAP_POLICIES:
            raise ConfigError(f"features gap_policy {gap_policy!r} is unknown: use one of {GAP_POLICIES}")
        self.gap_policy = gap_policy
        self.interval_ms = int(interval_ms)
        self._out = np.zeros(N_FEATURES, dtype=np.float64)
        self.last_gap = 0
        self.gaps = 0  # gaps seen since construction (not cleared by reset)
        self.reset()

    # -- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every bar: the next bar starts a new warm-up."""
        self.bars_seen = 0
        self.last_open_time: int | None = None
        self._pc = self._ph = self._pl = 0.0  # previous close, high, low
        self._c99: deque[float] = deque(maxlen=99)  # closes: lags up to 60 and SMA99
        self._c7: deque[float] = deque(maxlen=7)
        self._c20: deque[float] = deque(maxlen=20)
        self._c25: deque[float] = deque(maxlen=25)
        self._h14: deque[float] = deque(maxlen=14)
        self._l14: deque[float] = deque(maxlen=14)
        self._fk3: deque[float] = deque(maxlen=3)
        self._sk3: deque[float] = deque(maxlen=3)
        self._tp20: deque[float] = deque(maxlen=20)
        self._pos14: deque[float] = deque(maxlen=14)
        self._neg14: deque[float] = deque(maxlen=14)
        self._r30: deque[float] = deque(maxlen=30)
        self._lv20: deque[float] = deque(maxlen=20)
        self._pv30: deque[float] = deque(maxlen=30)
        self._v30: deque[float] = deque(maxlen=30)
        self._ptp = 0.0  # previous typical price (MFI)
        self._ema12 = self._ema26 = self._mfast = self._sig = 0.0
        self._macd9: list[float] = []  # first 9 MACD values (signal seed); at most 9 long
        self._g6 = self._l6 = self._g14 = self._l14s = 0.0  # RSI average gain / loss
        self._atr = 0.0
        self._pdm = self._mdm = self._tr = self._sdx = self._adx = 0.0
        self._out.fill(0.0)

    @property
    def ready(self) -> bool:
        return self.bars_seen >= WARMUP_BARS

    # -- rehearsal: the update's code on this very state, then the state as it was -----------------
    def snapshot(self) -> tuple[dict[str, object], list[tuple[deque[float], list[float]]], list[float], np.ndarray]:
        """Everything :meth:`update` may change, for :meth:`restore` (reads every value it holds)."""
        state = dict(self.__dict__)
        deques = [(d, list(d)) for d in state.values() if type(d) is deque]
        return state, deques, list(self._macd9), self._out.copy()

    def restore(self, snap: tuple[dict[str, object], list[tuple[deque[float], list[float]]], list[float],
                                  np.ndarray]) -> None:
        """Put back what :meth:`snapshot` read: the same objects, holding the same values."""
        state, deques, macd9, out = snap
        self.__dict__.clear()
        self.__dict__.update(state)
        for d, values in deques:
            d.clear()
            d.extend(values)
        self._macd9[:] = macd9
        self._out[:] = out

    # -- public update -------------------------------------------------------------------------
    def update(self, bar: Bar) -> np.ndarray:
        """Feed one closed bar; return the (33,) float64 feature row (an internal buffer)."""
        self._out[:] = self.step(bar.open_time, bar.open, bar.high, bar.low, bar.close, bar.volume)
        return self._out

    def step(self, t: int, o: float, h: float, l: float, c: float, v: float) -> list[float]:
        """``update`` on raw values, returning a new list of 33 floats (the batch path uses it)."""
        if not (_MIN_PRICE <= l <= o <= h <= _MAX_PRICE and l <= c <= h and 0.0 <= v <= _MAX_VOLUME):
            raise BadMessage(f"bar at open_time {t} is not finite, consistent and in range "
                             f"(o={o} h={h} l={l} c={c} v={v}): drop it")
        last = self.last_open_time
        gap = 0
        if last is not None:
            dt = t - last
            if dt <= 0 or dt % self.interval_ms:
                raise BadMessage(f"bar at open_time {t} does not follow the last one ({last}) on the "
                                 f"{self.interval_ms} ms grid (duplicate, out of order or misaligned): "
                                 "drop it")
            gap = dt // self.interval_ms - 1
            if gap:
                self.gaps += 1
                if self.gap_policy == "reset":
                    self.reset()
        self.last_gap = gap
        self.last_open_time = t
        return self._compute(o, h, l, c, v)

    # -- the formulas (docs/FEATURES.md, in code order) ---------------------------------------------
    def _compute(self, o: float, h: float, l: float, c: float, v: float) -> list[float]:
        i = self.bars_seen  # index of this bar since the start or the last reset
        self.bars_seen = i + 1
        f = [0.0] * N_FEATURES
        pc, ph, pl = self._pc, self._ph, self._pl

        c99 = self._c99
        c99.append(c)
        self._c7.append(c)
        self._c20.append(c)
        self._c25.append(c)
        h14 = self._h14
        l14 = self._l14
        h14.append(h)
        l14.append(l)
        tp = (h + l + c) / 3
        self._tp20.append(tp)
        self._lv20.append(_log1p(v))
        self._pv30.append(tp * v)
        self._v30.append(v)

        # 0-5 log returns over k bars
        if i >= 1:
            r1 = _log(c / pc)
            f[0] = r1
            self._r30.append(r1)
            if i >= 3:
                f[1] = _log(c / c99[-4])
                if i >= 5:
                    f[2] = _log(c / c99[-6])
                    if i >= 15:
                        f[3] = _log(c / c99[-16])
                        if i >= 30:
                            f[4] = _log(c / c99[-31])
                            if i >= 60:
                                f[5] = _log(c / c99[-61])
        # 6-10 bar shape
        f[6] = _log(h / l)
        f[7] = _log(c / o)
        f[8] = (h - (o if o > c else c)) / c
        f[9] = ((o if o < c else c) - l) / c
        f[10] = (c - l) / (h - l) if h > l else 0.5
        # 11-13 SMA deviations
        if i >= 6:
            f[11] = c / (_fsum(self._c7) / 7) - 1.0
            if i >= 24:
                f[12] = c / (_fsum(self._c25) / 25) - 1.0
                if i >= 98:
                    f[13] = c / (_fsum(c99) / 99) - 1.0
        # 14-18 EMA deviations and MACD (TA-Lib: EMA seeded by the SMA of its first n inputs;
        # MACD's fast EMA is seeded on the 12 closes ending where the slow one starts)
        if i >= 11:
            if i == 11:
                self._ema12 = _fsum(c99) / 12
            else:
                self._ema12 = (c - self._ema12) * (2.0 / 13.0) + self._ema12
            f[14] = c / self._ema12 - 1.0
            if i >= 25:
                if i == 25:
                    self._ema26 = _fsum(c99) / 26
                    self._mfast = _fsum(list(c99)[14:]) / 12
                else:
                    self._ema26 = (c - self._ema26) * (2.0 / 27.0) + self._ema26
                    self._mfast = (c - self._mfast) * (2.0 / 13.0) + self._mfast
                f[15] = c / self._ema26 - 1.0
                macd = self._mfast - self._ema26
                f[16] = macd / c
                if i >= 33:
                    if i == 33:
                        self._macd9.append(macd)
                        self._sig = _fsum(self._macd9) / 9
                        self._macd9.clear()
                    else:
                        self._sig = (macd - self._sig) * (2.0 / 10.0) + self._sig
                    f[17] = self._sig / c
                    f[18] = (macd - self._sig) / c
                else:
                    self._macd9.append(macd)
        # 19-20 RSI (Wilder, TA-Lib seeding: plain mean of the first n gains / losses)
        if i >= 1:
            d = c - pc
            gain = d if d > 0.0 else 0.0
            loss = -d if d < 0.0 else 0.0
            # RSI 6
            if i <= 6:
                self._g6 += gain
                self._l6 += loss
                if i == 6:
                    self._g6 /= 6
                    self._l6 /= 6
            else:
                self._g6 = (self._g6 * 5 + gain) / 6
                self._l6 = (self._l6 * 5 + loss) / 6
            if i >= 6:
                s = self._g6 + self._l6
                f[19] = self._g6 / s if s >= _TA_EPS else 0.0
            # RSI 14
            if i <= 14:
                self._g14 += gain
                self._l14s += loss
                if i == 14:
                    self._g14 /= 14
                    self._l14s /= 14
            else:
                self._g14 = (self._g14 * 13 + gain) / 14
                self._l14s = (self._l14s * 13 + loss) / 14
            if i >= 14:
                s = self._g14 + self._l14s
                f[20] = self._g14 / s if s >= _TA_EPS else 0.0
        # 21-23 STOCH 14/3/3 (slow %K, slow %D) and Williams %R 14
        if i >= 13:
            hh = max(h14)
            ll = min(l14)
            rng = hh - ll
            fk = (c - ll) / rng if rng > 0.0 else 0.0  # TA-Lib's value for a flat 14-bar range
            f[23] = (c - hh) / rng if rng > 0.0 else 0.0
            fk3 = self._fk3
            fk3.append(fk)
            if i >= 15:
                sk = _fsum(fk3) / 3
                self._sk3.append(sk)
                f[21] = sk
                if i >= 17:
                    f[22] = _fsum(self._sk3) / 3
        # 24 CCI 20 (/100)
        if i >= 19:
            mean = _fsum(self._tp20) / 20
            md = _fsum(map(abs, map(sub, self._tp20, repeat(mean)))) / 20
            dev = tp - mean
            f[24] = dev / (0.015 * md) / 100 if md > _FLAT * mean else 0.0
        # 25 ADX 14, term for term as TA-Lib (Wilder sums of +DM, -DM, TR; DX averaged, then smoothed)
        if i >= 1:
            tr = h - l
            x = abs(h - pc)
            if x > tr:
                tr = x
            x = abs(l - pc)
            if x > tr:
                tr = x
            dp = h - ph
            dm = pl - l
            if i >= 14:
                self._mdm -= self._mdm / 14
                self._pdm -= self._pdm / 14
            if dm > 0.0 and dp < dm:
                self._mdm += dm
            elif dp > 0.0 and dp > dm:
                self._pdm += dp
            if i < 14:
                self._tr += tr
            else:
                self._tr = self._tr - self._tr / 14 + tr
                dx = -1.0
                if not (-_TA_EPS < self._tr < _TA_EPS):
                    mdi = 100.0 * (self._mdm / self._tr)
                    pdi = 100.0 * (self._pdm / self._tr)
                    s = mdi + pdi
                    if not (-_TA_EPS < s < _TA_EPS):
                        dx = 100.0 * (abs(mdi - pdi) / s)
                if i < 28:
                    if dx >= 0.0:
                        self._sdx += dx
                    if i == 27:
                        self._adx = self._sdx / 14
                elif dx >= 0.0:
                    self._adx = (self._adx * 13 + dx) / 14
                if i >= 27:
                    f[25] = self._adx / 100
            # 27 ATR 14 (Wilder, seeded by the mean of the first 14 true ranges)
            if i <= 14:
                self._atr += tr
                if i == 14:
                    self._atr /= 14
            else:
                self._atr = (self._atr * 13 + tr) / 14
            if i >= 14:
                f[27] = self._atr / c
            # 26 MFI 14 (typical-price money flow; TA-Lib's rule for equal typical prices: none)
            # TA-Lib's tie rule: typical prices within 1e-14 of their magnitude are equal (no flow)
            ptp = self._ptp
            dtp = tp - ptp
            if abs(dtp) <= _TA_EPS * (abs(tp) + abs(ptp)):
                self._pos14.append(0.0)
                self._neg14.append(0.0)
            elif dtp < 0.0:
                self._pos14.append(0.0)
                self._neg14.append(tp * v)
            else:
                self._pos14.append(tp * v)
                self._neg14.append(0.0)
            if i >= 14:
                pos = _fsum(self._pos14)
                tot = pos + _fsum(self._neg14)
                f[26] = pos / tot if tot > 0.0 else 0.0  # TA-Lib: no flow at all -> 0
        self._ptp = tp
        # 28-29 Bollinger %B and width (20, 2 population standard deviations)
        if i >= 19:
            mean, sd = _std(self._c20, 20)
            if sd > _FLAT * mean:
                up = mean + 2.0 * sd
                lo = mean - 2.0 * sd
                f[28] = (c - lo) / (up - lo)
                f[29] = (up - lo) / mean
            else:
                f[28] = 0.5
            # 31 vol_z20: z-score of ln(1 + v) over 20 bars
            lmean, lsd = _std(self._lv20, 20)
            if lsd > _FLAT * lmean:
                f[31] = (self._lv20[-1] - lmean) / lsd
            # 32 vwap30_dev: typical-price VWAP over 30 bars
            if i >= 29:
                vs = _fsum(self._v30)
                vwap = _fsum(self._pv30) / vs if vs > 0.0 else 0.0
                if vwap > _FLAT * c:  # no volume (or flows lost to underflow): 0
                    f[32] = c / vwap - 1.0
                # 30 rvol30: population standard deviation of the last 30 one-bar log returns
                if i >= 30:
                    f[30] = _std(self._r30, 30)[1]
        self._pc, self._ph, self._pl = c, h, l
        return f
