"""Binance's market-stream control protocol, sans I/O: connection paths, live (un)subscribing, the
5-messages-per-second limit.

What Binance documents (binance-spot-api-docs, web-socket-streams.md) and this module follows:

- ``/ws/<stream>`` is a raw stream (bare payloads), ``/stream?streams=a/b`` a combined one
  (``{"stream": ..., "data": ...}``); ``/ws`` and ``/stream`` alone open a connection with no stream.
  ccxt connects to ``/ws/<n>`` (a stream index, not a stream name) and subscribes afterwards: a path
  segment that is not a stream name opens a connection with no stream too.
- Requests ``{"method": "SUBSCRIBE"|"UNSUBSCRIBE", "params": [streams], "id": ID}`` are answered
  ``{"result": null, "id": ID}``; ``LIST_SUBSCRIPTIONS`` with ``{"result": [streams], "id": ID}``;
  ``SET_PROPERTY``/``GET_PROPERTY`` ``combined`` switch or read the wrapper. ``id`` is a 64-bit signed
  integer, an alphanumeric string of at most 36 characters, or null.
- Errors are ``{"error": {"code": N, "msg": ...}, "id": ID}`` (the shape ccxt parses); codes and
  messages from the documented table: 0 unknown property, 1 bad value type, 2 invalid request,
  3 invalid JSON.
- Incoming messages (text/binary, ping and pong frames) are limited to 5 a second per connection; a
  connection over the limit is closed. At most 1024 streams per connection.

Simulator choices (not documented by Binance): a well-formed stream name this server does not
serve is accepted and carries nothing (as a symbol with no trades would; the REST endpoints answer
``-1121 Invalid symbol`` for it); a malformed one is refused (HTTP 400 at connect,
``code 2 "Invalid request: invalid stream"`` on SUBSCRIBE, the error ccxt's handler shows); a
SUBSCRIBE past 1024 streams gets ``code 2 "Invalid request: too many streams"``. A
request line over 8 KiB (a combined URL of about 450 streams) is refused with HTTP 414 by the
websockets library; Binance does not document its own URL limit, so subscribe beyond that.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

MAX_STREAMS = 1024
MAX_INCOMING_PER_S = 5
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_STREAM_RE = re.compile(r"^[a-z0-9]+@[a-zA-Z0-9_@:+.-]+$")  # <symbol>@<channel>, e.g. btcusdt@kline_1m
_ID_RE = re.compile(r"^[A-Za-z0-9]{1,36}$")
_INT64 = 1 << 63


class PathError(ValueError):
    """A websocket path this server refuses: ``status`` and Binance-style ``code``/``msg``."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


def looks_like_stream(name: str) -> bool:
    return bool(_STREAM_RE.match(name))


def open_path(path: str, *, max_streams: int = MAX_STREAMS) -> tuple[bool, list[str]] | None:
    """``(combined, initial streams)`` for a websocket request path, or None when it is no stream path.

    Raises PathError for a malformed stream name or too many streams.
    """
    url = urlsplit(path)
    p = url.path.rstrip("/") or "/"
    if p == "/stream":
        streams = [s for s in parse_qs(url.query).get("streams", [""])[-1].split("/") if s]
        combined = True
    elif p == "/ws":
        streams, combined = [], False
    elif p.startswith("/ws/") and "/" not in p[4:]:
        name = p[4:]
        streams, combined = ([name] if looks_like_stream(name) else []), False
    else:
        return None
    bad = [s for s in streams if not looks_like_stream(s)]
    if bad:
        raise PathError(400, 2, f"Invalid request: invalid stream {bad[0][:60]!r}")
    if len(set(streams)) > max_streams:
        raise PathError(400, 2, f"Invalid request: too many streams ({len(set(streams))} > {max_streams})")
    return combined, list(dict.fromkeys(streams))


class RateWindow:
    """At most ``limit`` events in any ``window_s`` (a sliding window); times are injected."""

    def __init__(self, limit: int = MAX_INCOMING_PER_S, window_s: float = 1.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._times: deque[float] = deque()

    def hit(self, now: float) -> bool:
        """Count one event at ``now``; False when it is over the limit."""
        t = self._times
        while t and t[0] <= now - self.window_s:
            t.popleft()
        t.append(now)
        return len(t) <= self.limit


def _error(code: int, msg: str, rid: Any = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": rid})


@dataclass
class Session:
    """One connection's subscriptions and wrapper mode; :meth:`handle` answers a control message."""

    combined: bool = True
    streams: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    max_streams: int = MAX_STREAMS

    def handle(self, message: str | bytes) -> tuple[bytes, list[str], list[str]]:
        """``(reply, streams added, streams removed)`` for one incoming text message."""
        try:
            req = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            return _error(3, f"Invalid JSON: {exc}"), [], []
        if not isinstance(req, dict):
            return _error(2, "Invalid request: expected a JSON object"), [], []
        rid = req.get("id")
        if not (rid is None or (type(rid) is int and -_INT64 <= rid < _INT64)
                or (type(rid) is str and _ID_RE.match(rid))):
            return _error(2, "Invalid request: request ID must be an unsigned integer"), [], []
        method = req.get("method")
        if method is None:
            return _error(2, "Invalid request: missing field `method`", rid), [], []
        if method not in METHODS:
            variants = ", ".join(f"`{m}`" for m in METHODS)
            return _error(2, f"Invalid request: unknown variant `{str(method)[:40]}`, expected one of {variants}",
                          rid), [], []
        params = req.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(type(s) is str for s in params):
                return _error(2, "Invalid request: params must be a list of stream names", rid), [], []
            if method == "SUBSCRIBE":
                if not all(looks_like_stream(s) for s in params):
                    return _error(2, "Invalid request: invalid stream", rid), [], []
                added = [s for s in dict.fromkeys(params) if s not in self.streams]
                if len(self.streams) + len(added) > self.max_streams:
                    return _error(2, "Invalid request: too many streams", rid), [], []
                self.streams.update(dict.fromkeys(added))
                return orjson.dumps({"result": None, "id": rid}), added, []
            removed = [s for s in dict.fromkeys(params) if s in self.streams]
            for s in removed:
                del self.streams[s]
            return orjson.dumps({"result": None, "id": rid}), [], removed
        if method == "LIST_SUBSCRIPTIONS":
            if params:
                return _error(2, "Invalid request: too many parameters", rid), [], []
            return orjson.dumps({"result": list(self.streams), "id": rid}), [], []
        # SET_PROPERTY / GET_PROPERTY: the only property is "combined"
        if not isinstance(params, list) or not params or type(params[0]) is not str:
            return _error(2, "Invalid request: property name must be a string", rid), [], []
        if params[0] != "combined":
            return _error(0, "Unknown property", rid), [], []
        if method == "GET_PROPERTY":
            if len(params) != 1:
                return _error(2, "Invalid request: too many parameters", rid), [], []
            return orjson.dumps({"result": self.combined, "id": rid}), [], []
        if len(params) != 2:
            return _error(2, "Invalid request: too many parameters" if len(params) > 2 else
                          "Invalid request: missing the property value", rid), [], []
        if type(params[1]) is not bool:
            return _error(1, "Invalid value type: expected Boolean", rid), [], []
        self.combined = params[1]
        return orjson.dumps({"result": None, "id": rid}), [], []
