"""``barsignal data``: ``inspect`` bar files and ``download`` Binance public-data klines to Parquet."""

from __future__ import annotations

import argparse
import sys
from datetime import date

from barsignal.cli import conventions as conv


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect bar files; download Binance public-data klines to Parquet")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    i = dsub.add_parser("inspect", help="rows, time range, interval, duplicates, conflicts and gaps per file",
                        description="Load each bar file (Binance CSV or zip, freqtrade JSON, Parquet) and report "
                                    "rows, first/last open time, interval, duplicates dropped, conflicts "
                                    "and gaps (start, end, missing bars). Exit 1 if any file has conflicts "
                                    "or cannot be read.")
    conv.add_bars(i, "bar files (Binance CSV or zip, freqtrade JSON, Parquet)", required=True, positional=True)
    i.add_argument("--json", action="store_true",
                   help="print one JSON object per file (a list for several files) with keys rows, first_open_ms, "
                        "last_open_ms, interval_ms, duplicates, conflicts, gaps, as one JSON document on stdout")
    i.add_argument("--merge", action="store_true", help="treat all the bar files as one series")
    i.set_defaults(func=_inspect)

    d = dsub.add_parser("download", help="fetch monthly/daily kline zips (checksum-verified, resumable) "
                                         "and write Parquet")
    d.add_argument("--symbol", required=True, help="e.g. BTCUSDT")
    d.add_argument("--interval", default="1m", help="kline interval (default 1m)")
    d.add_argument("--start", required=True, type=_date, help="first day, YYYY-MM-DD (UTC)")
    d.add_argument("--end", required=True, type=_date, help="last day, YYYY-MM-DD (UTC), inclusive")
    d.add_argument("--market", default="spot", choices=["spot", "um", "cm"],
                   help="spot, um (USD-M futures) or cm (COIN-M futures)")
    d.add_argument("--out", required=True, help="output directory (zips under OUT/raw, Parquet in OUT)")
    d.add_argument("--base-url", default=None, help="public-data host (default https://data.binance.vision)")
    conv.add_progress(d, True, "the progress bar")
    conv.add_json(d, "what was written and fetched")
    d.set_defaults(func=_download)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def _inspect(args: argparse.Namespace) -> int:
    import orjson

    from barsignal.data import load, load_many

    loaded = ([load_many(args.bars, allow_conflicts=True)] if args.merge
              else [load(f, allow_conflicts=True) for f in args.bars])
    reports = [x.report for x in loaded]
    if args.json:
        objs = [r.to_json() for r in reports]
        sys.stdout.write(orjson.dumps(objs[0] if len(objs) == 1 else objs).decode() + "\n")
    else:
        for r in reports:
            print(r.describe())
    bad = [r for r in reports if r.conflicts]
    for r in bad:
        print(f"barsignal data inspect: {r.source}: {r.conflicts} open times have conflicting rows",
              file=sys.stderr)
    return 1 if bad else 0


def _download(args: argparse.Namespace) -> int:
    from barsignal.data.download import download
    from barsignal.data.intervals import interval_ms
    from barsignal.data.public_data import DEFAULT_BASE_URL
    from barsignal.errors import ConfigError

    try:
        interval_ms(args.interval)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    res = download(args.symbol, args.interval, args.start, args.end, args.out, market=args.market,
                   base_url=args.base_url or DEFAULT_BASE_URL, progress=args.progress)
    assert res.loaded is not None
    r = res.loaded.report
    if args.json:
        conv.print_json({"parquet": str(res.parquet), "rows": r.rows, "gaps": len(r.gaps), "missing_bars": r.missing,
                         "fetched": res.fetched, "skipped": res.skipped, "not_on_server": res.missing})
        return 0
    print(f"wrote {res.parquet}: {r.rows} bars, {len(r.gaps)} gaps ({r.missing} bars missing); "
          f"{len(res.fetched)} files fetched, {len(res.skipped)} already present, "
          f"{len(res.missing)} periods not on the server")
    return 0
