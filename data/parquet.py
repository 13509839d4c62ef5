"""The project's Parquet bar cache: open_time int64 ms, OHLCV float64, plus any full-kline columns.

Key-value metadata ``barsignal`` holds JSON such as ``{"interval_ms": 60000, "symbol": "BTCUSDT"}``.
Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from barsignal.errors import DataError

REQUIRED = ("open_time", "open", "high", "low", "close", "volume")
_META_KEY = b"barsignal"


def write(path: str | Path, cols: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> Path:
    """Write bar columns (REQUIRED first, then extras in the given order) to ``path`` atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    names = list(REQUIRED) + [k for k in cols if k not in REQUIRED]
    table = pa.table({k: np.asarray(cols[k]) for k in names})
    table = table.replace_schema_metadata({_META_KEY: orjson.dumps(meta or {})})
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, p)
    return p


def read(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(columns, metadata)`` of a bar Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    try:
        table = pq.read_table(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{p}: not a readable Parquet file ({exc})") from None
    missing = [k for k in REQUIRED if k not in table.column_names]
    if missing:
        raise DataError(f"{p}: Parquet bar file lacks columns {missing}; expected {list(REQUIRED)}")
    cols: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        if col.null_count:
            raise DataError(f"{p}: column {name!r} has {col.null_count} nulls")
        cols[name] = np.ascontiguousarray(col.to_numpy())
    cols["open_time"] = cols["open_time"].astype(np.int64, copy=False)
    for k in REQUIRED[1:]:
        cols[k] = cols[k].astype(np.float64, copy=False)
    raw = (table.schema.metadata or {}).get(_META_KEY)
    return cols, (orjson.loads(raw) if raw else {})
