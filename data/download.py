"""``barsignal data download``: Binance public-data kline zips -> verified local mirror -> Parquet.

Whole past months come as monthly zips (falling back to daily zips when a month is not there),
the rest as daily zips. Each zip is checked against its ``.CHECKSUM`` (sha256) before it is kept.
Resumable: a verified zip already on disk is not fetched again, and an interrupted download
(``<zip>.part``) continues with an HTTP Range request where the server allows it.
"""

from __future__ import annotations

import calendar
import contextlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from barsignal.data import parquet
from barsignal.data import public_data as pd
from barsignal.data.load import Loaded, load_many
from barsignal.errors import ConfigError, DataError, TransientError
from barsignal.fsutil import file_sha256
from barsignal.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Item:
    period: str  # "monthly" | "daily"
    stamp: str  # "2022-05" | "2022-05-01"


@dataclass
class Result:
    parquet: Path | None
    loaded: Loaded | None
    fetched: list[str] = field(default_factory=list)  # zip names downloaded now
    skipped: list[str] = field(default_factory=list)  # zip names already verified on disk
    missing: list[str] = field(default_factory=list)  # periods the server does not have (404)


def plan(start: date, end: date, today: date) -> list[Item]:
    """Monthly items for whole months in [start, end] that ended before ``today``, daily for the rest."""
    if end < start:
        raise ConfigError(f"--end {end} is before --start {start}")
    items: list[Item] = []
    d = start
    while d <= end:
        last = date(d.year, d.month, calendar.monthrange(d.year, d.month)[1])
        if d.day == 1 and last <= end and last < today:
            items.append(Item("monthly", f"{d:%Y-%m}"))
            d = last + timedelta(days=1)
        else:
            items.append(Item("daily", f"{d:%Y-%m-%d}"))
            d += timedelta(days=1)
    return items


def days_of(month: str) -> list[Item]:
    y, m = (int(x) for x in month.split("-"))
    return [Item("daily", f"{date(y, m, i):%Y-%m-%d}") for i in range(1, calendar.monthrange(y, m)[1] + 1)]


class Fetcher:
    """Plain-HTTP GETs with retries; 404 -> None; other failures -> TransientError after retries."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0, retries: int = 3,
                 backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s, self.retries, self.backoff_s, self.sleep = timeout_s, retries, backoff_s, sleep
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        # environment proxies apply to real hosts, never to a loopback test server
        loopback = host in ("127.0.0.1", "::1", "localhost")
        self._opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if loopback else []))

    def get(self, path: str) -> bytes | None:
        """The body at ``path``, or None on 404."""
        return self._with_retries(path, lambda url: self._get(url))

    def to_file(self, path: str, dest: Path) -> bool:
        """Download ``path`` into ``dest`` (appending to a partial file via Range); False on 404."""
        return bool(self._with_retries(path, lambda url: self._to_file(url, dest)))

    def _with_retries(self, path: str, fn: Callable[[str], object]) -> object:
        url = f"{self.base_url}/{path}"
        for attempt in range(self.retries + 1):
            try:
                return fn(url)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code < 500 and exc.code not in (408, 429):
                    raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
                err: Exception = exc
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                err = exc
            if attempt < self.retries:
                self.sleep(self.backoff_s * 2**attempt)
        raise TransientError(f"{url}: {err}; check the network or --base-url and run again (it resumes)")

    def _get(self, url: str) -> bytes:
        with self._opener.open(url, timeout=self.timeout_s) as resp:
            return resp.read()

    def _to_file(self, url: str, dest: Path) -> bool:
        have = dest.stat().st_size if dest.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            resp = self._opener.open(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # partial file is whole or stale: start over
                dest.unlink()
                return self._to_file(url, dest)
            raise
        expected = int(resp.headers.get("Content-Length") or -1)
        written = 0
        with resp, open(dest, "ab" if resp.status == 206 else "wb") as f:
            while chunk := resp.read(1 << 16):
                f.write(chunk)
                written += len(chunk)
        if 0 <= written < expected:  # read(amt) returns short at EOF instead of raising
            raise http.client.IncompleteRead(b"", expected - written)
        return True


def download(symbol: str, interval: str, start: date, end: date, out: str | Path, *,
             market: str = "spot", base_url: str = pd.DEFAULT_BASE_URL, today: date | None = None,
             progress: bool = True, fetcher: Fetcher | None = None) -> Result:
    """Mirror the kline zips for ``symbol``/``interval`` over [start, end] into ``out/raw`` and
    write them as one Parquet file ``out/<market>-<SYM>-<iv>-<start>_<end>.parquet``."""
    from tqdm import tqdm

    symbol = symbol.upper()
    if market not in pd.MARKETS:
        raise ConfigError(f"--market {market!r}: use one of {', '.join(pd.MARKETS)}")
    out = Path(out)
    today = today or datetime.now(UTC).date()
    fetcher = fetcher or Fetcher(base_url)
    result = Result(parquet=None, loaded=None)
    zips: list[Path] = []
    queue = plan(start, end, today)
    bar = tqdm(total=len(queue), unit="file", desc=f"{symbol} {interval}", disable=None if progress else True)
    try:
        while queue:
            item = queue.pop(0)
            rel = pd.kline_path(market, item.period, symbol, interval, item.stamp)
            got = _fetch_one(fetcher, rel, out / "raw" / rel, result)
            if got is None and item.period == "monthly":
                days = days_of(item.stamp)
                log.info("monthly_missing_fallback_daily", month=item.stamp, days=len(days))
                queue[:0] = days
                bar.total += len(days)
            elif got is not None:
                zips.append(got)
            else:
                result.missing.append(item.stamp)
            bar.update(1)
    finally:
        bar.close()
    if result.missing:
        log.warning("periods_missing", count=len(result.missing), first=result.missing[0])
    if not zips:
        raise DataError(f"{base_url}: no kline files for {market} {symbol} {interval} {start}..{end}")
    loaded = load_many(sorted(zips))
    target = out / f"{market}-{symbol}-{interval}-{start}_{end}.parquet"
    parquet.write(target, loaded.columns(), {
        "symbol": symbol, "interval": interval, "interval_ms": loaded.report.interval_ms, "market": market,
        "source": base_url, "files": [z.name for z in sorted(zips)],
    })
    result.parquet, result.loaded = target, loaded
    log.info("download_done", parquet=str(target), rows=loaded.report.rows, fetched=len(result.fetched),
             skipped=len(result.skipped), gaps=len(loaded.report.gaps), missing_periods=len(result.missing))
    return result


def _fetch_one(fetcher: Fetcher, rel: str, dest: Path, result: Result) -> Path | None:
    """A verified local zip for ``rel`` (downloaded if needed), or None if the server lacks it."""
    checksum = dest.with_name(dest.name + ".CHECKSUM")
    if dest.is_file() and checksum.is_file():
        try:
            pd.verify_checksum(dest, checksum)
            result.skipped.append(dest.name)
            return dest
        except DataError:
            log.warning("local_zip_bad_refetching", file=str(dest))
            dest.unlink()
    body = fetcher.get(rel + ".CHECKSUM")
    if body is None:
        return None
    expected, name = pd.parse_checksum(body.decode("utf-8", "replace"), rel + ".CHECKSUM")
    if name != dest.name:
        raise DataError(f"{rel}.CHECKSUM names {name!r}, not {dest.name!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in (1, 2):
        if not fetcher.to_file(rel, part):
            return None
        actual = file_sha256(part)
        if actual == expected:
            break
        part.unlink()
        if attempt == 2:
            raise DataError(f"{fetcher.base_url}/{rel}: sha256 {actual} does not match its .CHECKSUM "
                            f"({expected}) twice; the file is corrupt on the server or in transit")
        log.warning("checksum_mismatch_retrying", file=dest.name)
    os.replace(part, dest)
    tmp = checksum.with_name(checksum.name + ".tmp")
    tmp.write_bytes(body)
    os.replace(tmp, checksum)
    with contextlib.suppress(OSError):
        dest.with_name(dest.name + ".part").unlink()
    result.fetched.append(dest.name)
    return dest
