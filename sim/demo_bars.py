"""Bars for ``barsignal demo``: a slice of the real Binance bars in ``../shared/data``, or, where those
are absent, deterministic synthetic bars (a seeded random walk, labelled synthetic everywhere).

The real files are served where they are; the synthetic ones are freqtrade JSON rows
``[open_time_ms, open, high, low, close, volume]`` written to the demo's output directory.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import orjson

STEP_MS = 60_000
# Real spot 1m bars of ten symbols on one clock (2023-03-16..05-01; the last five from 2023-04-01 21:04).
REAL_FILES = {
    "BTCUSDT": "klines/spot_1m/BTC_USDT-1m_2023-03-16_2023-05-01.json",
    **{f"{b}USDT": f"multi/spot_1m/{b}_USDT-1m.json"
       for b in ("ETH", "SOL", "ADA", "DOGE", "XRP", "DOT", "LINK", "LTC", "AVAX")},
}
REAL_START_MS = 1_681_084_800_000  # 2023-04-10 00:00 UTC: every symbol has gap-free bars around it
SYNTHETIC_START_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def real_available(data_dir: Path, symbols: list[str]) -> bool:
    """Whether ``data_dir`` holds the real bar file of every symbol."""
    return all(s in REAL_FILES and (data_dir / REAL_FILES[s]).is_file() for s in symbols)


def real_window(data_dir: Path, symbols: list[str], before: int, after: int) -> tuple[dict[str, Path], int, int]:
    """The real bar files of ``symbols`` and the window of ``feed serve``'s shared clock (the union of
    the files' open times) to play: ``(files, start_index, end_index)``, with at least ``before`` bars
    before ``REAL_START_MS`` (served over REST for the warm-up) and ``after`` from it. ValueError if a
    symbol has a gap in that window."""
    files = {s: data_dir / REAL_FILES[s] for s in symbols}
    times = {s: np.asarray([r[0] for r in orjson.loads(p.read_bytes())], dtype=np.int64) for s, p in files.items()}
    clock = np.unique(np.concatenate(list(times.values())))
    start = int(np.searchsorted(clock, REAL_START_MS))
    lo, hi = REAL_START_MS - before * STEP_MS, REAL_START_MS + after * STEP_MS
    for sym, t in times.items():
        n = int(((t >= lo) & (t < hi)).sum())
        if n != before + after:
            raise ValueError(f"{sym}: {n} bars in the demo's window, {before + after} wanted (a gap, or the "
                             "file ends); lower --minutes")
    return files, start, start + after


def synthetic_bars(symbols: list[str], before: int, after: int) -> dict[str, list[list[float]]]:
    """Deterministic synthetic 1m bars (the same for the same arguments): a random walk per symbol with
    about 5 bp of volatility a minute, seeded by the symbol's name; not market data."""
    out: dict[str, list[list[float]]] = {}
    n = before + after
    t0 = SYNTHETIC_START_MS - before * STEP_MS
    for sym in symbols:
        rng = np.random.default_rng(zlib.crc32(sym.encode()))
        price0 = 10.0 ** rng.uniform(0, 4)
        logret = rng.normal(0.0, 5e-4, n)
        close = price0 * np.exp(np.cumsum(logret))
        open_ = np.concatenate([[price0], close[:-1]])
        wick = np.abs(rng.normal(0.0, 3e-4, (2, n)))
        high = np.maximum(open_, close) * (1 + wick[0])
        low = np.minimum(open_, close) * (1 - wick[1])
        vol = rng.lognormal(3.0, 0.8, n)
        out[sym] = [[t0 + i * STEP_MS, float(open_[i]), float(high[i]), float(low[i]), float(close[i]),
                     float(vol[i])] for i in range(n)]
    return out


def write_bars(bars: dict[str, list[list[float]]], out_dir: Path, label: str) -> dict[str, Path]:
    """One freqtrade JSON file per symbol, ``<out_dir>/<SYMBOL>-<label>-1m.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for sym, rows in bars.items():
        p = out_dir / f"{sym}-{label}-1m.json"
        p.write_bytes(orjson.dumps(rows))
        paths[sym] = p
    return paths
