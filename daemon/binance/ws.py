"""Binance's websocket wire format for kline streams: decode frames into typed events, encode bars.

Everything that knows the shape of a Binance market-stream frame lives here. The rest of
barsignal sees :class:`KlineEvent` (and, through the feed client, :class:`~barsignal.features.bar.Bar`).

Frames come in two wrappings: combined streams (``{"stream": "btcusdt@kline_1m", "data": {...}}``)
and raw streams (the payload alone). Non-kline market events (depth, trades, book tickers) and
subscription replies decode to ``None``; ``serverShutdown`` decodes to :class:`ServerShutdown`.
Anything malformed raises :class:`~barsignal.errors.BadMessage` whose ``reason`` attribute is a
short label fit for a metrics counter.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import msgspec
import orjson

from barsignal.daemon.binance import INTERVAL_MS
from barsignal.errors import BadMessage
from barsignal.features.bar import Bar

DEFAULT_MAX_FRAME_BYTES = 65_536
PRICE_DECIMALS = 8  # spot frames carry prices and volumes as strings with 8 decimals


class KlineEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One kline update (``e == "kline"``). Times are ms since the epoch, UTC."""

    symbol: str  # upper case, e.g. BTCUSDT
    interval: str  # e.g. 1m
    open_time: int  # k.t: identifies the kline
    close_time: int  # k.T = open_time + interval - 1
    open: float
    high: float
    low: float
    close: float
    volume: float  # base asset volume
    closed: bool  # k.x: only closed klines become bars
    event_time: int  # E: exchange clock when the frame was produced
    first_trade_id: int = -1  # k.f
    last_trade_id: int = -1  # k.L
    trades: int = 0  # k.n
    quote_volume: float = 0.0  # k.q
    taker_buy_base: float = 0.0  # k.V
    taker_buy_quote: float = 0.0  # k.Q

    def to_bar(self, source: str = "ws") -> Bar:
        return Bar(self.open_time, self.open, self.high, self.low, self.close, self.volume, source)

    @property
    def stream(self) -> str:
        return stream_name(self.symbol, self.interval)


class ServerShutdown(msgspec.Struct, frozen=True):
    """``{"e": "serverShutdown", "E": ...}``: the server is going away; reconnect now."""

    event_time: int


def stream_name(symbol: str, interval: str = "1m") -> str:
    """``BTCUSDT``, ``1m`` -> ``btcusdt@kline_1m`` (Binance stream names are lower case)."""
    return f"{symbol.lower()}@kline_{interval}"


def combined_url(base: str, symbols: Collection[str], interval: str = "1m") -> str:
    """The combined-stream URL for ``symbols`` under ``base`` (``wss://host:port``)."""
    streams = "/".join(stream_name(s, interval) for s in symbols)
    return f"{base.rstrip('/')}/stream?streams={streams}"


MAX_STREAMS_PER_CONNECTION = 1024  # Binance: "A single connection can listen to a maximum of 1024 streams"
# Binance refuses a websocket URL past about 8000 characters (measured by unicorn-binance-websocket-api,
# issue #17) and websockets' own HTTP parser a request line past 8 KiB (the simulator's limit); a
# SUBSCRIBE of about 440 streams was seen to fail silently (ccxws issue #161). Half of each, to be safe.
MAX_URL_CHARS = 4000
MAX_SUBSCRIBE_STREAMS = 200


def groups(symbols: Sequence[str], per_connection: int = MAX_STREAMS_PER_CONNECTION) -> list[tuple[str, ...]]:
    """``symbols`` (one kline stream each) split, in order, into connections of at most ``per_connection``."""
    if not 1 <= per_connection <= MAX_STREAMS_PER_CONNECTION:
        raise ValueError(f"streams per connection must be 1..{MAX_STREAMS_PER_CONNECTION}, got {per_connection}")
    syms = tuple(symbols)
    return [syms[i:i + per_connection] for i in range(0, len(syms), per_connection)]


def connection_plan(base: str, symbols: Sequence[str], interval: str = "1m", *, max_url_chars: int = MAX_URL_CHARS,
                    max_subscribe: int = MAX_SUBSCRIBE_STREAMS, first_id: int = 1) -> tuple[str, list[bytes]]:
    """``(url, SUBSCRIBE messages)`` for one connection carrying ``symbols``' kline streams.

    The URL names as many streams as fit in ``max_url_chars`` (all of them, for a few symbols: then no
    message is needed); the rest are subscribed with ``{"method": "SUBSCRIBE", "params": [...], "id": N}``
    messages of at most ``max_subscribe`` streams each, ids counting from ``first_id``.
    """
    streams = [stream_name(s, interval) for s in symbols]
    url = f"{base.rstrip('/')}/stream?streams="
    n = 0
    for st in streams:
        extra = len(st) + (1 if n else 0)
        if n and len(url) + extra > max_url_chars:
            break
        url += ("/" if n else "") + st
        n += 1
    rest = streams[n:]
    msgs = [orjson.dumps({"method": "SUBSCRIBE", "params": rest[i:i + max_subscribe], "id": first_id + k})
            for k, i in enumerate(range(0, len(rest), max_subscribe))]
    return url, msgs


def resubscribe_messages(symbols: Sequence[str], interval: str, first_id: int) -> list[tuple[int, bytes]]:
    """``[(id, UNSUBSCRIBE), (id + 1, SUBSCRIBE)]`` of ``symbols``' kline streams: a stale stream
    asked for again on a connection that stays up."""
    streams = [stream_name(s, interval) for s in symbols]
    return [(first_id + k, orjson.dumps({"method": m, "params": streams, "id": first_id + k}))
            for k, m in enumerate(("UNSUBSCRIBE", "SUBSCRIBE"))]


class Reply(msgspec.Struct, frozen=True):
    """The answer to a control message: ``{"result": ..., "id": N}`` or an error with ``code``/``msg``."""

    id: Any
    ok: bool
    error: str = ""


def decode_reply(frame: str | bytes) -> Reply | None:
    """A control reply (``{"result": null, "id": 1}``, ``{"error": {"code": 2, "msg": ...}, "id": 1}`` or
    Binance's ``{"code": 2, "msg": ..., "id": 1}``), or None when the frame is something else."""
    if len(frame) > 4096 or frame[:1] not in (b"{", "{") or frame[:10] in (b'{"stream":', '{"stream":'):
        return None
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(msg, dict) or "id" not in msg or "e" in msg:
        return None
    if "result" in msg and "error" not in msg:
        return Reply(msg["id"], True)
    err = msg.get("error", msg)
    if isinstance(err, dict) and "code" in err:
        return Reply(msg["id"], False, f"code {err.get('code')}: {str(err.get('msg', ''))[:200]}")
    return None


def _bad(reason: str, detail: str) -> BadMessage:
    exc = BadMessage(f"bad kline frame ({reason}): {detail}")
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


def _int(k: dict[str, Any], key: str) -> int:
    v = k.get(key)
    if type(v) is not int:
        raise _bad("wrong_type", f"{key!r} must be an integer, got {type(v).__name__}")
    return v


def _num(k: dict[str, Any], key: str, *, positive: bool) -> float:
    v = k.get(key)
    if type(v) is not str:
        raise _bad("wrong_type", f"{key!r} must be a decimal string, got {type(v).__name__}")
    try:
        x = float(v)
    except ValueError:
        raise _bad("wrong_type", f"{key!r} is not a number: {v[:40]!r}") from None
    if not math.isfinite(x):
        raise _bad("not_finite", f"{key!r} is {v[:40]!r}")
    if x < 0 or (positive and x == 0):
        raise _bad("negative", f"{key!r} is {v[:40]!r}")
    return x


class _K(msgspec.Struct):
    t: int
    T: int
    s: str
    i: str
    f: int
    L: int
    o: str
    c: str
    h: str
    l: str
    v: str
    n: int
    x: bool
    q: str
    V: str
    Q: str


class _Kline(msgspec.Struct):
    e: str
    E: int
    s: str
    k: _K


class _Combined(msgspec.Struct):
    stream: str
    data: _Kline


_COMBINED = msgspec.json.Decoder(_Combined)
_RAW = msgspec.json.Decoder(_Kline)


def _fast(frame: str | bytes, symbols: Collection[str] | None, interval: str | None = None) -> KlineEvent | None:
    """The common case, typed by msgspec: a well-formed kline frame, or None (then the slow path
    below decides what the frame is, and why it is bad). It accepts only what the slow path accepts."""
    try:
        if frame[:10] in (b'{"stream":', '{"stream":'):
            c = _COMBINED.decode(frame)
            msg, stream = c.data, c.stream
        else:
            msg, stream = _RAW.decode(frame), None
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    k = msg.k
    step = INTERVAL_MS.get(k.i)
    if (msg.e != "kline" or k.s != msg.s or step is None or (symbols is not None and msg.s not in symbols)
            or (interval is not None and k.i != interval)
            or (stream is not None and stream != stream_name(msg.s, k.i))):
        return None
    t = k.t
    if t <= 0 or (step <= 86_400_000 and t % step) or k.T != t + step - 1:
        return None
    try:
        o, h, lo, c_, v = float(k.o), float(k.h), float(k.l), float(k.c), float(k.v)
        q, vb, qb = float(k.q), float(k.V), float(k.Q)
    except ValueError:
        return None
    if not (0 < lo <= o <= h < math.inf and lo <= c_ <= h and 0 <= v < math.inf
            and 0 <= q < math.inf and 0 <= vb < math.inf and 0 <= qb < math.inf):
        return None  # NaN fails too: every comparison with NaN is False
    return KlineEvent(
        symbol=msg.s, interval=k.i, open_time=t, close_time=k.T, open=o, high=h, low=lo, close=c_,
        volume=v, closed=k.x, event_time=msg.E, first_trade_id=k.f, last_trade_id=k.L, trades=k.n,
        quote_volume=q, taker_buy_base=vb, taker_buy_quote=qb,
    )


def decode(
    frame: str | bytes,
    *,
    symbols: Collection[str] | None = None,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    interval: str | None = None,
) -> KlineEvent | ServerShutdown | None:
    """Decode one websocket text frame.

    Returns a :class:`KlineEvent`, a :class:`ServerShutdown`, or ``None`` for frames that are
    valid but not ours (other event types, subscription replies). ``symbols`` (upper case), when
    given, is the set of symbols subscribed to: a kline for another symbol is a bad frame; so is a
    kline of another ``interval`` than the one subscribed to (reason ``wrong_interval``).
    Raises :class:`BadMessage` (with ``.reason``) for anything malformed.
    """
    if len(frame) > max_bytes:
        raise _bad("oversized", f"{len(frame)} bytes > {max_bytes}")
    ev = _fast(frame, symbols, interval)
    return ev if ev is not None else _slow(frame, symbols, interval)


def _slow(frame: str | bytes, symbols: Collection[str] | None,
          interval_wanted: str | None = None) -> KlineEvent | ServerShutdown | None:
    """Any frame, checked field by field: says what a frame is, or exactly why it is bad."""
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise _bad("not_json", str(exc)[:80]) from None
    if not isinstance(msg, dict):
        raise _bad("wrong_type", f"frame is a JSON {type(msg).__name__}, expected an object")
    stream = None
    if "data" in msg and "stream" in msg:  # combined-stream wrapper
        stream, msg = msg["stream"], msg["data"]
        if type(stream) is not str or not isinstance(msg, dict):
            raise _bad("wrong_type", "combined frame needs a string 'stream' and an object 'data'")
    event = msg.get("e")
    if event is None:
        if "result" in msg and "id" in msg:  # reply to SUBSCRIBE / LIST_SUBSCRIPTIONS
            return None
        if stream is not None and "@kline_" not in stream:  # bookTicker frames carry no 'e'
            return None
        if stream is None and "u" in msg and "b" in msg:  # raw bookTicker
            return None
        raise _bad("no_event", "frame has no event type 'e'")
    if event == "serverShutdown":
        return ServerShutdown(_int(msg, "E"))
    if event != "kline":
        if type(event) is not str:
            raise _bad("wrong_type", "'e' must be a string")
        return None
    k = msg.get("k")
    if not isinstance(k, dict):
        raise _bad("wrong_type", "kline frame needs an object 'k'")
    symbol = msg.get("s")
    if type(symbol) is not str or k.get("s") != symbol:
        raise _bad("wrong_type", "kline symbol 's' missing or disagrees with 'k.s'")
    if symbols is not None and symbol not in symbols:
        raise _bad("wrong_symbol", f"{symbol[:20]!r} is not subscribed")
    interval = k.get("i")
    step = INTERVAL_MS.get(interval) if type(interval) is str else None
    if step is None:
        raise _bad("wrong_type", f"unknown interval {str(interval)[:10]!r}")
    if interval_wanted is not None and interval != interval_wanted:
        raise _bad("wrong_interval", f"a {interval} kline on a {interval_wanted} feed")
    if stream is not None and stream != stream_name(symbol, interval):
        raise _bad("wrong_symbol", f"stream {stream[:40]!r} does not carry {symbol} {interval}")
    closed = k.get("x")
    if type(closed) is not bool:
        raise _bad("wrong_type", "'x' must be a boolean")
    t, T, E = _int(k, "t"), _int(k, "T"), _int(msg, "E")
    if t <= 0 or (step <= 86_400_000 and t % step) or T != t + step - 1:
        raise _bad("bad_time", f"kline t={t} T={T} is not a {interval} kline")
    o, h = _num(k, "o", positive=True), _num(k, "h", positive=True)
    lo, c = _num(k, "l", positive=True), _num(k, "c", positive=True)
    if not (lo <= min(o, c) and max(o, c) <= h):
        raise _bad("ohlc", f"o={o} h={h} l={lo} c={c} are inconsistent")
    return KlineEvent(
        symbol=symbol, interval=interval, open_time=t, close_time=T,
        open=o, high=h, low=lo, close=c, volume=_num(k, "v", positive=False),
        closed=closed, event_time=E,
        first_trade_id=_int(k, "f"), last_trade_id=_int(k, "L"), trades=_int(k, "n"),
        quote_volume=_num(k, "q", positive=False),
        taker_buy_base=_num(k, "V", positive=False), taker_buy_quote=_num(k, "Q", positive=False),
    )


def _fmt(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


def encode_kline(ev: KlineEvent, *, combined: bool = True, decimals: int = PRICE_DECIMALS) -> bytes:
    """Encode an event as Binance sends it: same keys, same order, same JSON types."""
    d = decimals
    payload = {
        "e": "kline",
        "E": ev.event_time,
        "s": ev.symbol,
        "k": {
            "t": ev.open_time, "T": ev.close_time, "s": ev.symbol, "i": ev.interval,
            "f": ev.first_trade_id, "L": ev.last_trade_id,
            "o": _fmt(ev.open, d), "c": _fmt(ev.close, d), "h": _fmt(ev.high, d), "l": _fmt(ev.low, d),
            "v": _fmt(ev.volume, d), "n": ev.trades, "x": ev.closed,
            "q": _fmt(ev.quote_volume, d), "V": _fmt(ev.taker_buy_base, d),
            "Q": _fmt(ev.taker_buy_quote, d), "B": "0",
        },
    }
    if combined:
        return orjson.dumps({"stream": stream_name(ev.symbol, ev.interval), "data": payload})
    return orjson.dumps(payload)


def encode_shutdown(event_time: int) -> bytes:
    return orjson.dumps({"e": "serverShutdown", "E": event_time})
