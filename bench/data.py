"""Bar data loading throughput: freqtrade JSON, Binance CSV dumps and the Parquet cache.

Loads the real files under ../shared/data/klines (or --data-dir DIR) ``--repeat`` times each and
prints the median wall time and rows per second for: each spot 1m freqtrade JSON file, the 123
USD-M futures daily CSVs merged with ``load_many``, and the same bars read back from Parquet.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from barsignal.bench import SHARED
from barsignal.cli import conventions as conv


def add_arguments(p: argparse.ArgumentParser) -> None:
    default = SHARED / "data"
    p.add_argument("--data-dir", default=str(default), metavar="DIR",
                   help="the shared data directory (default: ../shared/data)")
    conv.alias(p, "--data", "data_dir", metavar="DIR")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per case (median reported)")
    conv.add_json(p, "the figures")


def _time(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    """Median seconds of ``fn()`` (which returns a row count) over ``repeat`` runs."""
    rows, times = 0, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), rows


def run(args: argparse.Namespace) -> int:
    import orjson

    from barsignal.data import load, load_many, parquet
    from barsignal.data.formats import _orjson_rows, read_freqtrade_json
    from barsignal.errors import ConfigError

    k = Path(args.data_dir) / "klines"
    spot = sorted((k / "spot_1m").glob("*.json"))
    fut = sorted((k / "um_futures_1m_daily").glob("*.csv"))
    if not spot or not fut:
        raise ConfigError(f"{k}: real kline files not found; pass --data DIR")
    results = []
    for f in spot:
        sec, rows = _time(lambda f=f: load(f).report.rows, args.repeat)
        results.append({"case": f"json {f.name}", "rows": rows, "seconds": sec})
    big = max(spot, key=lambda f: f.stat().st_size)
    data = big.read_bytes()
    sec, rows = _time(lambda: len(_orjson_rows(data, big.name)), args.repeat)
    results.append({"case": f"json parse only, orjson path, {big.name}", "rows": rows, "seconds": sec})
    sec, rows = _time(lambda: len(read_freqtrade_json(data, big.name)["open_time"]), args.repeat)
    results.append({"case": f"json parse only, fast path, {big.name}", "rows": rows, "seconds": sec})
    sec, rows = _time(lambda: load_many(fut).report.rows, args.repeat)
    results.append({"case": f"csv load_many {len(fut)} futures daily files", "rows": rows, "seconds": sec})
    with tempfile.TemporaryDirectory() as tmp:
        pq = parquet.write(Path(tmp) / "fut.parquet", load_many(fut).columns())
        sec, rows = _time(lambda: load(pq).report.rows, args.repeat)
        results.append({"case": "parquet (same bars, 11 columns)", "rows": rows, "seconds": sec})
    for r in results:
        r["rows_per_s"] = r["rows"] / r["seconds"]
    if args.json:
        print(orjson.dumps({"repeat": args.repeat, "results": results}).decode())
    else:
        for r in results:
            print(f"{r['case']:<72} {r['rows']:>8} rows  {r['seconds'] * 1000:8.1f} ms  "
                  f"{r['rows_per_s'] / 1e6:6.2f} M rows/s")
    return 0
