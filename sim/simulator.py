"""A local Binance-compatible kline feed: historical bars replayed as the live stream, plus REST.

One port serves both, like a tiny Binance:

- websocket ``/stream?streams=btcusdt@kline_1m`` (combined wrapper) and ``/ws/btcusdt@kline_1m``
  (raw): for each bar, ``intrabar`` updates with ``x: false`` then the closed frame, at ``speed``
  bars per second of wall time; protocol pings every ``ping_interval_s``;
- HTTP ``GET /api/v3/klines`` (also ``/api/v3/ping``, ``/api/v3/time``) answered from the bars
  already closed in simulated time, so REST "now" matches the stream.

Frames are built by :func:`barsignal.daemon.binance.ws.encode_kline` and match Binance's field for
field. Kline fields a bar file does not carry (trade count, trade ids, quote and taker volumes)
come from the file's extra columns when it has them (Binance CSV dumps) and are 0 otherwise.
Bars ``[0, start_index)`` count as already closed: a restarted server with a later
``start_index`` has "missed" bars that clients must backfill over REST. Faults: see ``faults``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from barsignal.daemon.binance.ws import KlineEvent, encode_kline, encode_shutdown, stream_name
from barsignal.data.intervals import INTERVAL_MS
from barsignal.features.bar import BarFrame
from barsignal.log import get_logger
from barsignal.sim.faults import Faults

log = get_logger(__name__)

_EXTRA_KEYS = {"trades": ("count", "trades", "number_of_trades"),
               "quote_volume": ("quote_volume", "quote_asset_volume"),
               "taker_buy_base": ("taker_buy_volume", "taker_buy_base_volume"),
               "taker_buy_quote": ("taker_buy_quote_volume",)}


def _extra_column(extra: Mapping[str, np.ndarray], names: tuple[str, ...], n: int) -> np.ndarray:
    for name in names:
        if name in extra and len(extra[name]) == n:
            return np.asarray(extra[name], dtype=np.float64)
    return np.zeros(n)


class FeedSimulator:
    """Serve ``frame`` as Binance's kline stream for ``symbol`` on ``host:port`` (0 = any free port).

    ``await sim.start()`` / ``await sim.stop()``; ``sim.ws_url`` and ``sim.rest_url`` are what a
    :class:`~barsignal.daemon.config.FeedConfig` points at. ``sim.done`` is set when every bar up
    to ``end_index`` has closed; ``sim.closed_upto`` counts closed bars (REST serves those).
    """

    def __init__(
        self,
        frame: BarFrame,
        *,
        symbol: str = "BTCUSDT",
        interval: str = "1m",
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        start_index: int = 0,
        end_index: int | None = None,
        intrabar: int = 2,
        faults: Faults | None = None,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float = 60.0,  # Binance drops a client that does not pong within a minute
        close_delay_ms: int = 250,
        extra: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        n = len(frame)
        if n == 0:
            raise ValueError("no bars to serve")
        if not 0 <= start_index <= n:
            raise ValueError(f"start_index {start_index} is outside the {n} bars")
        if speed <= 0:
            raise ValueError(f"speed must be > 0 bars per second, got {speed}")
        self.frame, self.symbol, self.interval = frame, symbol.upper(), interval
        self.step_ms = INTERVAL_MS[interval]
        self.host, self.port = host, port
        self.speed, self.intrabar = float(speed), max(0, int(intrabar))
        self.start_index = start_index
        self.end_index = n if end_index is None else max(start_index, min(n, end_index))
        self.faults = faults or Faults()
        self.ping_interval_s, self.close_delay_ms = ping_interval_s, close_delay_ms
        self.ping_timeout_s = ping_timeout_s
        self.stream = stream_name(self.symbol, interval)
        ex = extra or {}
        self._trades = _extra_column(ex, _EXTRA_KEYS["trades"], n).astype(np.int64)
        self._qv = _extra_column(ex, _EXTRA_KEYS["quote_volume"], n)
        self._tb = _extra_column(ex, _EXTRA_KEYS["taker_buy_base"], n)
        self._tq = _extra_column(ex, _EXTRA_KEYS["taker_buy_quote"], n)
        self._first_trade = np.concatenate([[1], 1 + np.cumsum(self._trades)[:-1]]).astype(np.int64)
        self._present = np.ones(n, dtype=bool)  # False inside injected exchange halts
        for first, count in self.faults.gaps:
            self._present[max(0, first):max(0, first + count)] = False
        self._times = frame.open_time.astype(np.int64)
        keep = np.flatnonzero(self._present)  # REST never shows bars inside an injected halt
        self._rest_frame = BarFrame(*(getattr(frame, k)[keep] for k in
                                      ("open_time", "open", "high", "low", "close", "volume")))
        self._rest_extra = {k: np.asarray(v)[keep] for k, v in ex.items() if len(v) == n}
        self._rng = random.Random(self.faults.seed)
        self._rest_rng = random.Random(self.faults.seed + 1)
        self.closed_upto = start_index  # bars [0, closed_upto) are closed
        self._cur = start_index  # the bar being built
        self._cur_started = 0.0
        self._conns: dict[ServerConnection, bool] = {}  # connection -> muted (stalled)
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self.sent_closed: list[int] = []  # open times of closed frames sent (with repeats)
        self.rest_requests = 0
        self._refused = 0
        self.connections_total = 0

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FeedSimulator:
        self._server = await serve(
            self._handler, self.host, self.port, process_request=self._process_request,
            ping_interval=self.ping_interval_s, ping_timeout=self.ping_timeout_s, compression=None,
            server_header="barsignal-feed-serve", max_size=1 << 16,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._cur_started = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._run(), name="feed-serve")
        self._task.add_done_callback(_log_crash)
        log.info("feed_serve.started", ws_url=self.ws_url, bars=self.end_index - self.start_index,
                 start_index=self.start_index, speed=self.speed, faults=self.faults.describe())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FeedSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    # -- frames ---------------------------------------------------------------------------------

    def event(self, i: int, fraction: float = 1.0) -> KlineEvent:
        """Kline ``i`` as seen ``fraction`` of the way through it (1.0 = the closed kline)."""
        f = self.frame
        o, h, lo, c, v = (float(a[i]) for a in (f.open, f.high, f.low, f.close, f.volume))
        t = int(self._times[i])
        closed = fraction >= 1.0
        if closed:
            price, hi, low, frac = c, h, lo, 1.0
        else:
            # A deterministic path o -> first extreme -> other extreme -> c, sampled at `fraction`.
            a, b = (lo, h) if c >= o else (h, lo)
            pts, x = (o, a, b, c), fraction * 3
            seg = min(2, int(x))
            price = pts[seg] + (pts[seg + 1] - pts[seg]) * (x - seg)
            seen = [*pts[:seg + 1], price]
            hi, low, frac = max(seen), min(seen), fraction
        n_all = int(self._trades[i])
        n = n_all if closed else int(n_all * frac)
        first = int(self._first_trade[i])
        return KlineEvent(
            symbol=self.symbol, interval=self.interval, open_time=t, close_time=t + self.step_ms - 1,
            open=o, high=hi, low=low, close=price, volume=v * frac, closed=closed,
            event_time=t + self.step_ms - 1 + self.close_delay_ms if closed else t + int(self.step_ms * frac),
            first_trade_id=first if n_all else -1, last_trade_id=first + n - 1 if n_all else -1, trades=n,
            quote_volume=float(self._qv[i]) * frac, taker_buy_base=float(self._tb[i]) * frac,
            taker_buy_quote=float(self._tq[i]) * frac,
        )

    def _malformed(self, i: int) -> bytes:
        good = orjson.loads(encode_kline(self.event(i, 0.5)))
        kind = self._rng.choice(["garbage", "truncated", "wrong_type", "nan", "negative", "symbol",
                                 "oversized"])
        k = good["data"]["k"]
        if kind == "garbage":
            return b"\x00not a frame }{"
        if kind == "truncated":
            return encode_kline(self.event(i, 0.5))[:57]
        if kind == "wrong_type":
            k["t"] = str(k["t"])
        elif kind == "nan":
            k["c"] = "NaN"
        elif kind == "negative":
            k["l"] = "-1.00000000"
        elif kind == "symbol":
            good["stream"] = "ethusdt@kline_1m"
            good["data"]["s"] = k["s"] = "ETHUSDT"
        else:
            good["pad"] = "x" * 200_000
        return orjson.dumps(good)

    def _send(self, msg: bytes) -> None:
        live = [c for c, muted in self._conns.items() if not muted]
        if live:
            broadcast(live, msg.decode())

    # -- the clock ------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """Simulated exchange time: inside the bar being built, or after the last one."""
        if self._cur >= self.end_index:  # every bar served: the close of the last one
            return int(self._times[max(0, self.end_index - 1)]) + self.step_ms
        frac = min(1.0, max(0.0, (asyncio.get_running_loop().time() - self._cur_started) * self.speed))
        return int(self._times[self._cur]) + int(frac * self.step_ms)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        per_bar = 1.0 / self.speed
        held: list[tuple[int, bytes]] = []  # (send after closing bar index, frame)
        t_next = self._cur_started
        fl = self.faults
        for i in range(self.start_index, self.end_index):
            if not self._present[i]:
                self.closed_upto = i + 1
                continue
            self._cur, self._cur_started = i, t_next
            for j in range(1, self.intrabar + 1):
                await asyncio.sleep(max(0.0, t_next + per_bar * j / (self.intrabar + 1) - loop.time()))
                self._send(encode_kline(self.event(i, j / (self.intrabar + 1))))
            t_next += per_bar
            await asyncio.sleep(max(0.0, t_next - loop.time()))
            self.closed_upto = i + 1
            if i in fl.stall:
                for c in self._conns:
                    self._conns[c] = True
                log.info("feed_serve.stall", bar_index=i, connections=len(self._conns))
            if i in fl.shutdown:
                self._send(encode_shutdown(int(self._times[i]) + self.step_ms))
                log.info("feed_serve.server_shutdown", bar_index=i)
                for c in list(self._conns):
                    await c.close(1001, "server shutdown")
            if i in fl.disconnect:
                log.info("feed_serve.disconnect", bar_index=i, connections=len(self._conns))
                for c in list(self._conns):
                    c.transport.abort()
            closed = encode_kline(self.event(i))
            r = self._rng
            if fl.malformed and r.random() < fl.malformed:
                self._send(self._malformed(i))
            if fl.delay and r.random() < fl.delay:
                await asyncio.sleep(fl.delay_s)
            if fl.drop and r.random() < fl.drop:
                pass
            elif fl.ooo and r.random() < fl.ooo:
                held.append((i + 1, closed))
            else:
                self._send(closed)
                self.sent_closed.append(int(self._times[i]))
                if fl.dup and r.random() < fl.dup:
                    self._send(closed)
                    self.sent_closed.append(int(self._times[i]))
                if fl.late and r.random() < fl.late:
                    held.append((i + 3, closed))
            for item in [h for h in held if h[0] <= i]:
                held.remove(item)
                self._send(item[1])
        for _, frame in held:  # frames held back past the last bar go out now
            self._send(frame)
        self._cur = self.end_index
        self.done.set()
        log.info("feed_serve.finished", closed_upto=self.closed_upto)

    # -- connections ----------------------------------------------------------------------------

    async def _handler(self, conn: ServerConnection) -> None:
        self._conns[conn] = False
        self.connections_total += 1
        try:
            await conn.wait_closed()
        finally:
            self._conns.pop(conn, None)

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/stream" or url.path.startswith("/ws/"):
            if self._refused < self.faults.refuse:
                self._refused += 1
                return _json(429, {"code": -1003, "msg": "Too many connection attempts (simulated)."},
                             {"Retry-After": str(self.faults.retry_after_s)})
        if url.path == "/stream":
            streams = q.get("streams", "").split("/")
            if self.stream not in streams:
                return _json(400, {"code": -1121, "msg": f"this feed serves only {self.stream}"})
            return None
        if url.path.startswith("/ws/"):
            if url.path[4:] != self.stream:
                return _json(400, {"code": -1121, "msg": f"this feed serves only {self.stream}"})
            return None
        if url.path == "/api/v3/ping":
            return _json(200, {})
        if url.path == "/api/v3/time":
            return _json(200, {"serverTime": self.now_ms()})
        if url.path == "/api/v3/klines":
            self.rest_requests += 1
            fault = await self._rest_fault()
            if fault is not None:
                return fault
            return _json(*self.klines(q))
        return _json(404, {"code": -1, "msg": f"not served here: {url.path}"})

    async def _rest_fault(self) -> Response | None:
        fl, r = self.faults, self._rest_rng
        retry = {"Retry-After": str(fl.retry_after_s)}
        if fl.rest429 and r.random() < fl.rest429:
            return _json(429, {"code": -1003, "msg": "Too many requests."}, retry)
        if fl.rest418 and r.random() < fl.rest418:
            return _json(418, {"code": -1003, "msg": "IP banned (simulated)."}, retry)
        if fl.rest5xx and r.random() < fl.rest5xx:
            return _json(503, {"code": -1001, "msg": "Service unavailable (simulated)."})
        if fl.rest_timeout and r.random() < fl.rest_timeout:
            await asyncio.sleep(fl.rest_timeout_s)
        return None

    def klines(self, q: Mapping[str, str]) -> tuple[int, Any]:
        """``(status, body)`` for ``/api/v3/klines``, as Binance answers, from the bars closed so far."""
        from barsignal.daemon.binance.rest import klines_response

        if self.closed_upto == 0:
            visible = int(self._times[0])
        else:
            visible = int(self._times[self.closed_upto - 1]) + self.step_ms
        return klines_response(self._rest_frame, q, symbol=self.symbol, interval=self.interval,
                               extra=self._rest_extra, visible_until_ms=visible)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("feed_serve.crashed", error=f"{type(exc).__name__}: {exc}")


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    import http

    data = orjson.dumps(body)
    h = Headers({"Content-Type": "application/json;charset=UTF-8", "Content-Length": str(len(data)),
                 "Connection": "close", **(headers or {})})
    return Response(status, http.HTTPStatus(status).phrase, h, data)
