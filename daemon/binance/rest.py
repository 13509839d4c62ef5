"""Binance REST klines: backfill over aiohttp, and the pure helpers a kline server needs.

``fetch_page`` pages through ``GET /api/v3/klines`` (one small HTTP client; ccxt, used before,
cost 90 MB of RSS just to import) and returns a
:class:`KlinePage`: closed, valid bars only (``source="rest"``), the server time from the HTTP
``Date`` header, the server's ``X-MBX-USED-WEIGHT-1M`` count, and the rows it dropped by reason.
``fetch_bars`` returns just the bars. Network
trouble raises TransientError; HTTP 429 waits the ``Retry-After`` the server asks for and retries
(``max_retries=0``: raise ``RateLimited`` at once); HTTP 418 (IP ban) raises ``RateLimited`` with
the full Retry-After; HTTP 400 code -1121 ("Invalid symbol") raises ``InvalidSymbol``, a ConfigError.

``encode_klines`` / ``klines_response`` turn a BarFrame into Binance's 12-column rows (prices and
volumes as strings with 8 decimals, as spot does) and answer a klines query; ``feed serve`` uses them.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from barsignal.daemon.binance import INTERVAL_MS
from barsignal.errors import BadMessage, ConfigError, DataError, TransientError
from barsignal.features.bar import Bar, BarFrame
from barsignal.features.engine import bar_problem
from barsignal.log import get_logger

log = get_logger(__name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
EXTRA_COLUMNS = ("quote_volume", "count", "taker_buy_volume", "taker_buy_quote_volume")


class RateLimited(TransientError):
    """Binance asked us to back off (429 beyond our patience, or 418: IP banned for a while)."""

    def __init__(self, message: str, retry_after_s: float, status: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = status


class InvalidSymbol(ConfigError):
    """HTTP 400 with Binance code -1121: the configured symbol does not exist. Retrying cannot help."""


@dataclass
class KlinePage:
    """What one REST fetch returned: closed valid bars (oldest first), the server's clock, drops."""

    bars: list[Bar]
    server_time_ms: int | None = None  # the HTTP Date header of the last response (1 s resolution)
    dropped: dict[str, int] = field(default_factory=dict)  # rows left out, by reason (not the open bar)
    used_weight: int | None = None  # X-MBX-USED-WEIGHT-1M of the last response: this IP's weight this minute
    requests: int = 0  # klines calls made (each costs 2 weight on spot)


def retry_after_s(headers: Mapping[str, str] | None, default: float = 1.0) -> float:
    """Seconds a 429/418 reply's ``Retry-After`` header asks for (``default`` when absent or unreadable).

    The one Retry-After parser: the REST client and the websocket handshake both use it."""
    for k, v in (headers or {}).items():
        if k.lower() == "retry-after":
            try:
                return max(0.0, float(v))
            except (TypeError, ValueError):
                return default
    return default


def used_weight(headers: Mapping[str, str] | None) -> int | None:
    """``X-MBX-USED-WEIGHT-1M``: the request weight this IP used in the current minute (None if absent)."""
    for k, v in (headers or {}).items():
        if k.lower() == "x-mbx-used-weight-1m":
            try:
                return int(v)
            except (TypeError, ValueError):
                return None
    return None


def date_header_ms(headers: Mapping[str, str] | None) -> int | None:
    """The HTTP ``Date`` header as ms since the epoch (None when absent or unreadable)."""
    for k, v in (headers or {}).items():
        if k.lower() == "date":
            try:
                return int(email.utils.parsedate_to_datetime(v).timestamp() * 1000)
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
    return None


# ---------------------------------------------------------------------------------------------
# Pure helpers: rows <-> bars, and a klines query answered from a BarFrame.


def decode_kline_rows(rows: Any, *, now_ms: int | None = None, source: str = "rest", interval_ms: int | None = None,
                      dropped: dict[str, int] | None = None) -> list[Bar]:
    """Valid bars from REST kline rows ``[open_time, "o", "h", "l", "c", "v", close_time, ...]``.

    With ``now_ms``, a row whose close time is not yet past (the bar still open) is left out.
    A row that does not parse (``"malformed"``), whose times are off the ``interval_ms`` grid
    (``"misaligned"``), or whose OHLCV is NaN, negative, inconsistent or absurd (the features' own
    check, :func:`~barsignal.features.engine.bar_problem`) is dropped and counted in ``dropped``
    by reason, never raised. A response that is not a list raises BadMessage.
    """
    if not isinstance(rows, list):
        raise BadMessage(f"klines response is not a list: {str(rows)[:200]}")
    counts = dropped if dropped is not None else {}
    bars = []
    for row in rows:
        try:
            t, o, h, lo, c, v, close_t = (int(row[0]), float(row[1]), float(row[2]), float(row[3]),
                                          float(row[4]), float(row[5]), int(row[6]))
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            counts["malformed"] = counts.get("malformed", 0) + 1
            continue
        if interval_ms is not None and (t <= 0 or (interval_ms <= 86_400_000 and t % interval_ms)
                                        or close_t != t + interval_ms - 1):
            counts["misaligned"] = counts.get("misaligned", 0) + 1
            continue
        if now_ms is not None and close_t >= now_ms:
            continue
        why = bar_problem(o, h, lo, c, v)
        if why is not None:
            counts[why] = counts.get(why, 0) + 1
            continue
        bars.append(Bar(t, o, h, lo, c, v, source))
    return bars


def _s(x: float) -> str:
    """Binance's 8-decimal string. The shortest round-trip repr, padded, keeps the source's digits
    where ``f"{x:.8f}"`` would not (104737787.3657063 -> ...36570629 with .8f)."""
    r = repr(x)
    head, dot, frac = r.partition(".")
    if dot and len(frac) <= 8 and "e" not in frac and head.lstrip("-").isdigit():
        return f"{head}.{frac:0<8}"
    return f"{x:.8f}"


def encode_klines(frame: BarFrame, interval_ms: int, *, extra: Mapping[str, np.ndarray] | None = None,
                  start: int = 0, stop: int | None = None) -> list[list[Any]]:
    """Rows ``frame[start:stop]`` as Binance REST kline rows (12 columns, numbers as strings).

    Quote volume, trade count and taker volumes come from ``extra`` when given (the full-kline
    columns of a CSV dump); a source without them (freqtrade OHLCV) encodes them as 0.
    """
    stop = len(frame) if stop is None else stop
    ex = extra or {}
    cols = [frame.open_time[start:stop].tolist()] + [
        getattr(frame, k)[start:stop].tolist() for k in ("open", "high", "low", "close", "volume")]
    extras = [ex[k][start:stop].tolist() if k in ex else None for k in EXTRA_COLUMNS]
    out = []
    for i, t in enumerate(cols[0]):
        qv, n, tb, tq = (e[i] if e is not None else 0 for e in extras)
        out.append([t, _s(cols[1][i]), _s(cols[2][i]), _s(cols[3][i]), _s(cols[4][i]), _s(cols[5][i]),
                    t + interval_ms - 1, _s(qv), int(n), _s(tb), _s(tq), "0"])
    return out


def _error(code: int, msg: str) -> tuple[int, dict[str, Any]]:
    return 400, {"code": code, "msg": msg}


def klines_response(frame: BarFrame, params: Mapping[str, str], *, symbol: str, interval: str,
                    extra: Mapping[str, np.ndarray] | None = None, visible_until_ms: int | None = None,
                    ) -> tuple[int, Any]:
    """``(http_status, json_body)`` answering ``GET /api/v3/klines`` from ``frame`` as Binance does.

    Query: symbol, interval (must match), startTime/endTime (inclusive bounds on open time), limit
    (default 500, at most 1000). With only endTime, the last ``limit`` bars up to it; with neither,
    the most recent. ``visible_until_ms`` hides bars that have not closed by then (a replay clock).
    Errors use Binance's codes (-1102 missing parameter, -1121 bad symbol, -1120 bad interval,
    -1100 bad number).
    """
    sym = params.get("symbol")
    if not sym:
        return _error(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
    if sym.upper() != symbol.upper():
        return _error(-1121, "Invalid symbol.")
    iv = params.get("interval")
    if not iv:
        return _error(-1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.")
    if iv != interval or iv not in INTERVAL_MS:
        return _error(-1120, "Invalid interval.")
    iv_ms = INTERVAL_MS[iv]
    try:
        limit = int(params.get("limit", DEFAULT_LIMIT))
        start = int(params["startTime"]) if params.get("startTime") else None
        end = int(params["endTime"]) if params.get("endTime") else None
    except ValueError:
        return _error(-1100, "Illegal characters found in a parameter.")
    if limit < 1:
        return _error(-1100, "Illegal characters found in parameter 'limit'; legal range is '1'-'1000'.")
    limit = min(limit, MAX_LIMIT)
    t = frame.open_time
    hi = len(t)
    if visible_until_ms is not None:
        hi = int(np.searchsorted(t, visible_until_ms - iv_ms, side="right"))  # close < visible_until
    if end is not None:
        hi = min(hi, int(np.searchsorted(t, end, side="right")))
    if start is not None:
        lo = int(np.searchsorted(t, start, side="left"))
        hi = max(lo, min(hi, lo + limit))
    else:
        lo = max(0, hi - limit)
    return 200, encode_klines(frame, iv_ms, extra=extra, start=lo, stop=hi)


# ---------------------------------------------------------------------------------------------
# The HTTP client (aiohttp: a core dependency already, for the webhook sink)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context (verification on, the system's CA store) for every fetch: loading a CA file is
    most of a small fetch's CPU time on this class of machine, so it is made once."""
    return ssl.create_default_context()


async def fetch_bars(rest_url: str, symbol: str, since_ms: int, until_ms: int, **kwargs: Any) -> list[Bar]:
    """Closed bars with ``since_ms <= open_time < until_ms`` (:func:`fetch_page` without the page)."""
    return (await fetch_page(rest_url, symbol, since_ms, until_ms, **kwargs)).bars


async def fetch_page(rest_url: str, symbol: str, since_ms: int, until_ms: int, *, interval: str = "1m",
                     limit: int = MAX_LIMIT, timeout_s: float = 10.0, now_ms: int | None = None,
                     max_retries: int = 3, max_wait_s: float = 60.0,
                     sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> KlinePage:
    """Closed valid bars with ``since_ms <= open_time < until_ms`` from ``rest_url`` (e.g.
    ``https://api.binance.com``), oldest first, paginated ``limit`` at a time.

    ``now_ms`` (default: the wall clock) decides which bars have closed; the server's ``Date``
    header, when it is earlier, does too. A 429 waits the server's Retry-After (at most
    ``max_wait_s``) up to ``max_retries`` times; 418 raises RateLimited at once. Timeouts, refused
    connections and 5xx raise TransientError; "Invalid symbol" raises InvalidSymbol.
    """
    import aiohttp

    if interval not in INTERVAL_MS:
        raise ValueError(f"unknown kline interval {interval!r}")
    step = INTERVAL_MS[interval]
    limit = max(1, min(int(limit), MAX_LIMIT))
    base = rest_url.rstrip("/")
    url = f"{base}/api/v3/klines"
    page = KlinePage([])
    cursor = since_ms
    connector = aiohttp.TCPConnector(ssl=_ssl_context() if base.startswith("https://") else False, limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     headers={"Accept": "application/json"}) as http:
        while cursor < until_ms:
            params = {"symbol": symbol.upper(), "interval": interval, "startTime": str(cursor),
                      "endTime": str(until_ms - 1), "limit": str(limit)}
            page.requests += 1
            rows, headers = await _get_klines(http, url, params, base, max_retries, max_wait_s, sleep)
            weight = used_weight(headers)
            if weight is not None:
                page.used_weight = weight
            server = date_header_ms(headers)
            if server is not None:
                page.server_time_ms = max(page.server_time_ms or 0, server)
            now = int(time.time() * 1000) if now_ms is None else now_ms
            if server is not None:
                # Date has 1 s resolution (truncated): a bar whose close time is within that second
                # may not have closed by the server's own clock; the next fetch gets it.
                now = min(now, server)
            got = decode_kline_rows(rows, now_ms=now, interval_ms=step, dropped=page.dropped)
            page.bars.extend(b for b in got if since_ms <= b.open_time < until_ms and b.open_time >= cursor)
            if not isinstance(rows, list) or len(rows) < limit:
                break  # the last page
            try:
                last = int(rows[-1][0])
            except (TypeError, ValueError, IndexError, KeyError):
                break
            if last < cursor or (rows and _row_open(rows[-1], now, step)):
                break  # it reached the bar still open, or the server went backwards
            cursor = last + 1
    if page.dropped:
        log.warning("rest_rows_dropped", symbol=symbol, since_ms=since_ms, until_ms=until_ms, **page.dropped)
    log.debug("rest_backfill", symbol=symbol, since_ms=since_ms, until_ms=until_ms, bars=len(page.bars))
    return page


def _row_open(row: Any, now_ms: int, step: int) -> bool:
    try:
        return int(row[0]) + step - 1 >= now_ms
    except (TypeError, ValueError, IndexError, KeyError):
        return False


async def _get_klines(http: Any, url: str, params: dict[str, str], base: str, max_retries: int,
                      max_wait_s: float, sleep: Callable[[float], Awaitable[Any]]) -> tuple[Any, dict[str, str]]:
    """One klines call: ``(decoded JSON body, response headers)``, with 429 waited and retried."""
    import aiohttp

    for attempt in range(max_retries + 1):
        try:
            async with http.get(url, params=params) as resp:
                code, headers, body = resp.status, dict(resp.headers), await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"{base}: klines request failed ({type(exc).__name__}: {exc}); "
                                 "will retry") from None
        if code == 200:
            try:
                return orjson.loads(body), headers
            except orjson.JSONDecodeError:
                raise TransientError(f"{base}: klines response is not JSON ({body[:120]!r}); will retry") from None
        if code in (418, 429):
            wait = retry_after_s(headers)
            if code == 418:
                raise RateLimited(f"{base}: HTTP 418, IP banned by Binance for {wait:.0f} s; "
                                  "back off until then", wait, 418) from None
            if wait > max_wait_s or attempt == max_retries:
                raise RateLimited(f"{base}: HTTP {code} rate limited (Retry-After {wait:.0f} s)", wait, code)
            log.warning("rest_rate_limited", status=code, retry_after_s=wait, attempt=attempt + 1)
            await sleep(wait)
            continue
        text = body[:200].decode("utf-8", "replace")
        if code >= 500:
            raise TransientError(f"{base}: HTTP {code} from the klines endpoint: {text}")
        if _binance_code(body) == -1121:
            raise InvalidSymbol(f"[feed] symbols: {base} does not know symbol {params['symbol']!r} "
                                "(HTTP 400, code -1121 Invalid symbol); fix [feed] symbols")
        raise DataError(f"{base}: klines request refused (HTTP {code}: {text}); check symbol and interval")
    raise AssertionError("unreachable")


def _binance_code(body: Any) -> int | None:
    try:
        msg = orjson.loads(body) if isinstance(body, (str, bytes)) else None
    except orjson.JSONDecodeError:
        return None
    code = msg.get("code") if isinstance(msg, dict) else None
    return code if type(code) is int else None


EXCHANGE_INFO_WEIGHT = 20  # GET /api/v3/exchangeInfo, with or without symbols (Binance REST docs)
EXCHANGE_INFO_BATCH = 100  # symbols per exchangeInfo call (the URL stays short)
UNKNOWN = "UNKNOWN"  # the status given to a symbol the exchange does not list (HTTP 400 code -1121)


@dataclass
class SymbolStatuses:
    """What ``GET /api/v3/exchangeInfo`` says of some symbols: ``{symbol: status}`` (``TRADING``,
    ``BREAK``, ``HALT``..., or :data:`UNKNOWN`), the calls it took and the server's weight count."""

    status: dict[str, str]
    requests: int = 0
    used_weight: int | None = None
    server_time_ms: int | None = None


async def fetch_symbol_status(rest_url: str, symbols: list[str], *, timeout_s: float = 10.0) -> SymbolStatuses | None:
    """Each symbol's status from ``GET /api/v3/exchangeInfo?symbols=[...]`` (``EXCHANGE_INFO_BATCH`` a
    call). Binance answers HTTP 400 code -1121 for the whole call when one symbol is unknown and does
    not say which: then the whole listing is read once (no parameters, the same weight) and a symbol
    it does not hold is :data:`UNKNOWN`. None when the server does not serve exchangeInfo (HTTP 404: a
    klines-only mirror).
    Network trouble, 5xx and unreadable answers raise TransientError; 429/418 raise RateLimited.
    """
    import aiohttp

    base = rest_url.rstrip("/")
    url = f"{base}/api/v3/exchangeInfo"
    out = SymbolStatuses({})
    everything: dict[str, str] | None = None  # the whole listing, read at most once
    connector = aiohttp.TCPConnector(ssl=_ssl_context() if base.startswith("https://") else False, limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     headers={"Accept": "application/json"}) as http:

        async def one(batch: list[str] | None) -> dict[str, str] | None:
            """``{symbol: status}`` listed for ``batch`` (None: all); None when exchangeInfo is not served,
            {} for -1121 (an unknown symbol in ``batch``)."""
            params = ({} if batch is None else {"symbols": orjson.dumps(batch).decode()} if len(batch) > 1
                      else {"symbol": batch[0]})
            out.requests += 1
            try:
                async with http.get(url, params=params) as resp:
                    code, headers, body = resp.status, dict(resp.headers), await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise TransientError(f"{base}: exchangeInfo request failed ({type(exc).__name__}: {exc}); "
                                     "will retry") from None
            w = used_weight(headers)
            if w is not None:
                out.used_weight = w
            out.server_time_ms = date_header_ms(headers) or out.server_time_ms
            if code in (418, 429):
                wait = retry_after_s(headers)
                raise RateLimited(f"{base}: HTTP {code} on exchangeInfo (Retry-After {wait:.0f} s)", wait, code)
            if code == 404:
                return None
            if code == 400 and _binance_code(body) == -1121 and batch is not None:
                return {}
            if code != 200:
                raise TransientError(f"{base}: HTTP {code} from exchangeInfo: {body[:200]!r}; will retry")
            try:
                return {str(x["symbol"]).upper(): str(x["status"]) for x in orjson.loads(body)["symbols"]}
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise TransientError(f"{base}: exchangeInfo answer is unreadable ({exc}); will retry") from None

        for i in range(0, len(symbols), EXCHANGE_INFO_BATCH):
            batch = [s.upper() for s in symbols[i:i + EXCHANGE_INFO_BATCH]]
            listed = await one(batch)
            if listed is None:
                return None
            if not listed:  # an unknown symbol among them: which, the whole listing says
                if everything is None:
                    everything = await one(None)
                    if everything is None:
                        return None
                listed = everything
            for sym in batch:
                out.status[sym] = listed.get(sym, UNKNOWN)
    return out


def fetch_bars_sync(rest_url: str, symbol: str, since_ms: int, until_ms: int, **kwargs: Any) -> list[Bar]:
    """``fetch_bars`` for synchronous callers (runs its own event loop)."""
    return asyncio.run(fetch_bars(rest_url, symbol, since_ms, until_ms, **kwargs))
