"""Binance public data (data.binance.vision): URL layout, kline CSV dumps and ``.CHECKSUM`` files.

Layout: ``{base}/data/spot/{monthly|daily}/klines/{SYM}/{iv}/{SYM}-{iv}-{YYYY-MM[-DD]}.zip`` (USD-M
futures: ``data/futures/um/...``), each with ``<zip>.CHECKSUM`` = ``"<sha256>  <zip name>"``.
A zip holds one CSV of the same name. Columns: the 12 of the REST kline row; older dumps have no
header row, newer ones do; spot dumps switched open/close times from ms to µs in 2025.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np

from barsignal.errors import DataError
from barsignal.fsutil import file_sha256

DEFAULT_BASE_URL = "https://data.binance.vision"
MARKETS = {"spot": "spot", "um": "futures/um", "cm": "futures/cm"}

KLINE_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count",
    "taker_buy_volume", "taker_buy_quote_volume", "ignore",
)
INT_COLUMNS = frozenset({"open_time", "close_time", "count"})
# A 16-digit time is µs: anything at or above this (year 5138 in ms, 1973 in µs) is µs.
_US_THRESHOLD = 10**14
_CHECKSUM = re.compile(r"^\s*([0-9a-fA-F]{64})\s+\*?(\S.*?)\s*$")


def kline_path(market: str, period: str, symbol: str, interval: str, stamp: str) -> str:
    """URL path of a kline zip, e.g. ``data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip``."""
    if market not in MARKETS:
        raise ValueError(f"unknown market {market!r}; use one of {', '.join(MARKETS)}")
    if period not in ("monthly", "daily"):
        raise ValueError(f"period must be 'monthly' or 'daily', not {period!r}")
    return f"data/{MARKETS[market]}/{period}/klines/{symbol}/{interval}/{symbol}-{interval}-{stamp}.zip"


def parse_checksum(text: str, source: str = "<checksum>") -> tuple[str, str]:
    """``(sha256 hex, file name)`` from a ``.CHECKSUM`` file's text."""
    m = _CHECKSUM.match(text.strip().splitlines()[0] if text.strip() else "")
    if not m:
        raise DataError(f"{source}: not a Binance .CHECKSUM file (expected '<sha256>  <file name>')")
    return m[1].lower(), m[2]


def verify_checksum(path: str | Path, checksum_path: str | Path) -> None:
    """Raise DataError unless ``path`` has the sha256 named in ``checksum_path``."""
    p, c = Path(path), Path(checksum_path)
    expected, name = parse_checksum(c.read_text(encoding="utf-8", errors="replace"), str(c))
    if name != p.name and not p.name.endswith(".part"):
        raise DataError(f"{c}: checksum is for {name!r}, not {p.name!r}")
    actual = file_sha256(p)
    if actual != expected:
        raise DataError(f"{p}: sha256 {actual} does not match {c} ({expected}); delete it and download again")


def read_kline_csv(data: bytes, source: str) -> dict[str, np.ndarray]:
    """Columns of a kline CSV dump (header optional; ms or µs times, returned as ms).

    Returns at least open_time (int64 ms) and open/high/low/close/volume (float64), plus
    close_time, quote_volume, count, taker_buy_volume, taker_buy_quote_volume when present.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    text_start = data.lstrip()[:1]
    if not text_start:
        return _empty()
    first_line = data.lstrip().split(b"\n", 1)[0].strip()
    header = not (first_line[:1].isdigit() or first_line[:1] == b"-")
    ncols = first_line.count(b",") + 1
    if ncols < 6:
        raise DataError(f"{source}: a kline CSV needs at least 6 columns "
                        f"(open_time,open,high,low,close,volume), found {ncols}")
    names = list(KLINE_COLUMNS[:ncols]) + [f"extra_{i}" for i in range(max(0, ncols - len(KLINE_COLUMNS)))]
    types = {n: (pa.int64() if n in INT_COLUMNS else pa.float64()) for n in names
             if n != "ignore" and not n.startswith("extra_")}
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if header else 0),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types)),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{source}: unreadable kline CSV: {exc}") from None
    cols: dict[str, np.ndarray] = {}
    for name in types:
        col = table.column(name)
        if col.null_count:
            raise DataError(f"{source}: column {name!r} has {col.null_count} empty values")
        arr = col.to_numpy()
        if name in ("open_time", "close_time"):
            arr = np.where(arr >= _US_THRESHOLD, arr // 1000, arr)
        cols[name] = np.ascontiguousarray(arr)
    return cols


def read_kline_zip(path: str | Path, *, verify: bool = True) -> dict[str, np.ndarray]:
    """Columns of a zipped kline dump; checked against ``<zip>.CHECKSUM`` when that file exists."""
    p = Path(path)
    checksum = p.with_name(p.name + ".CHECKSUM")
    if verify and checksum.is_file():
        verify_checksum(p, checksum)
    try:
        with zipfile.ZipFile(p) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) != 1 or not members[0].filename.lower().endswith(".csv"):
                raise DataError(f"{p}: expected one CSV inside, found {[m.filename for m in members]}")
            data = zf.read(members[0])
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{p}: not a readable zip ({exc}); delete it and download again") from None
    return read_kline_csv(data, f"{p}:{members[0].filename}")


def _empty() -> dict[str, np.ndarray]:
    out = {"open_time": np.empty(0, np.int64)}
    out.update({k: np.empty(0, np.float64) for k in ("open", "high", "low", "close", "volume")})
    return out
