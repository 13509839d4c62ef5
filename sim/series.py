"""One served symbol: its bars as Binance kline events and REST rows, and what exchangeInfo says of it.

A :class:`Series` is what ``feed serve`` is given (a symbol and its bars); a :class:`Tape` is a
series laid on the simulator's shared clock, ready to play. Kline fields a bar file does not carry
(trade count, trade ids, quote and taker volumes) come from the file's extra columns when it has
them (Binance CSV dumps) and are 0 otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from barsignal.daemon.binance.ws import KlineEvent, stream_name
from barsignal.features.bar import BarFrame

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")  # Binance symbol ids
# Quote assets tried, longest first, to split a Binance id into base and quote (BTCUSDT -> BTC, USDT).
QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "DAI", "EUR", "TRY", "BRL", "GBP", "JPY",
          "BTC", "ETH", "BNB")

_EXTRA_KEYS = {"trades": ("count", "trades", "number_of_trades"),
               "quote_volume": ("quote_volume", "quote_asset_volume"),
               "taker_buy_base": ("taker_buy_volume", "taker_buy_base_volume"),
               "taker_buy_quote": ("taker_buy_quote_volume",)}


@dataclass(frozen=True)
class Series:
    """A symbol (Binance id, e.g. ``ETHUSDT``) and its bars, with the full-kline extras if the file had them."""

    symbol: str
    frame: BarFrame
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not SYMBOL_RE.match(self.symbol):
            raise ValueError(f"symbol {self.symbol!r} is not a Binance id (upper case letters and digits, "
                             "e.g. BTCUSDT)")
        if len(self.frame) == 0:
            raise ValueError(f"{self.symbol}: no bars to serve")


def split_symbol(symbol: str) -> tuple[str, str]:
    """``ETHUSDT`` -> ``("ETH", "USDT")``; ValueError when no known quote asset ends the id."""
    for q in QUOTES:
        if symbol.endswith(q) and len(symbol) > len(q):
            return symbol[: -len(q)], q
    raise ValueError(f"symbol {symbol!r}: cannot tell its quote asset (known: {', '.join(QUOTES)})")


def symbol_from_path(path: str | Path) -> str | None:
    """``ETH_USDT-1m.json`` (freqtrade) or ``ETHUSDT-1m-2023-04.zip`` (Binance dump) -> ``ETHUSDT``."""
    name = Path(path).name
    m = re.match(r"^([A-Z0-9]+)_([A-Z0-9]+)-", name) or re.match(r"^([A-Z0-9]+)()-\d+[smhdwM]-", name)
    if m is None:
        return None
    sym = m.group(1) + m.group(2)
    return sym if SYMBOL_RE.match(sym) else None


def _extra_column(extra: Mapping[str, np.ndarray], names: tuple[str, ...], n: int) -> np.ndarray:
    for name in names:
        if name in extra and len(extra[name]) == n:
            return np.asarray(extra[name], dtype=np.float64)
    return np.zeros(n)


def decimals_of(values: np.ndarray, max_decimals: int = 8) -> int:
    """The fewest decimals that write every value exactly (0..8): the tick or lot step the data shows."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)][:20_000]
    for d in range(max_decimals + 1):
        scaled = v * 10.0 ** d
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-9 * np.maximum(1.0, np.abs(scaled))):
            return d
    return max_decimals


class Tape:
    """``series`` on the shared clock ``times`` (open times, ms): ``row[k]`` is its bar at tick ``k``
    (-1 where it has none: a halt, or outside its file); ``present[k]`` is False there and inside an
    injected halt. Builds kline events and holds the REST view (bars outside halts)."""

    def __init__(self, series: Series, times: np.ndarray, *, interval: str, step_ms: int,
                 close_delay_ms: int, halted: np.ndarray) -> None:
        self.series, self.symbol, self.interval = series, series.symbol, interval
        self.step_ms, self.close_delay_ms = step_ms, close_delay_ms
        self.stream = stream_name(self.symbol, interval)
        f, n = series.frame, len(series.frame)
        ft = f.open_time.astype(np.int64)
        pos = np.clip(np.searchsorted(ft, times), 0, n - 1)
        self.row = np.where(ft[pos] == times, pos, -1).astype(np.int64)
        self.present = (self.row >= 0) & ~halted
        # columns stay numpy (read one row per frame): hundreds of symbols must not cost a Python
        # float per value
        self._f, self._t = f, ft
        ex = series.extra or {}
        cols = {k: _extra_column(ex, names, n) if any(nm in ex for nm in names) else None
                for k, names in _EXTRA_KEYS.items()}
        trades = cols.pop("trades")
        self._trades = None if trades is None else trades.astype(np.int64)
        self._first_trade = (None if self._trades is None else
                             np.concatenate([[1], 1 + np.cumsum(self._trades)[:-1]]).astype(np.int64))
        self._qv, self._tb, self._tq = cols["quote_volume"], cols["taker_buy_base"], cols["taker_buy_quote"]
        # every row is on the clock (the clock is the union of every file's times); rows inside an
        # injected halt leave REST too: nothing can fill an exchange halt
        halted_rows = np.zeros(n, dtype=bool)
        halted_rows[self.row[(self.row >= 0) & halted]] = True
        if halted_rows.any():
            keep = np.flatnonzero(~halted_rows)
            self.rest_frame = BarFrame(*(getattr(f, k)[keep] for k in
                                         ("open_time", "open", "high", "low", "close", "volume")))
            self.rest_extra = {k: np.asarray(v)[keep] for k, v in ex.items() if len(v) == n}
        else:
            self.rest_frame, self.rest_extra = f, {k: v for k, v in ex.items() if len(v) == n}
        self.tick_decimals = decimals_of(f.close)
        self.lot_decimals = decimals_of(f.volume)

    def event(self, i: int, fraction: float = 1.0, *, close_delay_ms: int | None = None) -> KlineEvent:
        """Row ``i`` as seen ``fraction`` of the way through its bar (1.0 = the closed kline)."""
        f = self._f
        o, h, lo, c, v = float(f.open[i]), float(f.high[i]), float(f.low[i]), float(f.close[i]), float(f.volume[i])
        t = int(self._t[i])
        closed = fraction >= 1.0
        if closed:
            price, hi, low, frac = c, h, lo, 1.0
        else:
            # A deterministic path o -> first extreme -> other extreme -> c, sampled at `fraction`.
            a, b = (lo, h) if c >= o else (h, lo)
            pts, x = (o, a, b, c), fraction * 3
            seg = min(2, int(x))
            price = pts[seg] + (pts[seg + 1] - pts[seg]) * (x - seg)
            price = round(price, self.tick_decimals)  # on the tick grid, as a trade price is
            seen = [*pts[:seg + 1], price]
            hi, low, frac = max(seen), min(seen), fraction
        n_all = 0 if self._trades is None else int(self._trades[i])
        n = n_all if closed else int(n_all * frac)
        first = 0 if self._first_trade is None else int(self._first_trade[i])
        delay = self.close_delay_ms if close_delay_ms is None else close_delay_ms
        return KlineEvent(
            symbol=self.symbol, interval=self.interval, open_time=t, close_time=t + self.step_ms - 1,
            open=o, high=hi, low=low, close=price, volume=v * frac, closed=closed,
            event_time=t + self.step_ms - 1 + delay if closed else t + int(self.step_ms * frac),
            first_trade_id=first if n_all else -1, last_trade_id=first + n - 1 if n_all else -1, trades=n,
            quote_volume=0.0 if self._qv is None else float(self._qv[i]) * frac,
            taker_buy_base=0.0 if self._tb is None else float(self._tb[i]) * frac,
            taker_buy_quote=0.0 if self._tq is None else float(self._tq[i]) * frac,
        )


def common_window(series: list[Series]) -> tuple[int, int]:
    """``(first, last)`` open time that every series covers (their files' overlap)."""
    return (max(int(s.frame.open_time[0]) for s in series), min(int(s.frame.open_time[-1]) for s in series))


def shifted_copies(series: list[Series], n: int, *, rows: int, shift: int = 1000) -> list[Series]:
    """``n`` symbols made from real ones, for load tests (real files shifted in time).

    Every series is cut to start at the files' common first bar; copy ``c`` of series ``j`` is named
    ``<BASE><c><QUOTE>`` (``ETH3USDT``) and carries the real bars ``c * shift`` rows later, stamped with
    the first ``rows`` open times, so all copies share one clock. Copy 0 is the real series. The
    common window must have no gap (the ten real 2023 files share 43,198 gap-free bars)."""
    t0, _ = common_window(series)
    cut = [s.frame.slice(int(np.searchsorted(s.frame.open_time, t0)), len(s.frame)) for s in series]
    clock = cut[0].open_time[:rows]
    out: list[Series] = []
    for c in range(-(-n // len(series))):
        for s, f in zip(series, cut, strict=True):
            if len(out) == n:
                return out
            lo = c * shift
            if len(f) < lo + rows or not np.array_equal(f.open_time[:rows], clock):
                raise ValueError(f"{s.symbol}: too few gap-free bars for copy {c} ({lo + rows} needed)")
            base, quote = split_symbol(s.symbol)
            name = s.symbol if c == 0 else f"{base}{c}{quote}"
            cols = [getattr(f, k)[lo:lo + rows] for k in ("open", "high", "low", "close", "volume")]
            out.append(Series(name, BarFrame(clock, *cols)))
    return out
