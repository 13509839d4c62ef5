"""A hostile Binance-like server for the tests: websocket kline stream + ``/api/v3/klines`` on one
loopback port, replaying real bars (``/work/shared/data``) with chosen misbehaviours.

Written for the tests, independent of ``barsignal.sim``: it speaks just enough of Binance's protocol
(combined-stream frames, 12-column REST rows, the ``Date`` header as the exchange clock, Binance's
error bodies) and breaks it on purpose. ``plan`` maps a bar index to what happens to that bar's
frames, ``rest_plan`` maps the n-th REST request to what it answers; everything injected is counted
in ``injected`` so the tests can report it.

Bar misbehaviours (``BAR_FAULTS``): ``drop`` (no closed frame: REST must fill it), ``dup``,
``reorder`` (sent after the next bar), ``future`` (an extra closed kline five years ahead, honest E),
``future_e`` (its E five years ahead too), ``price_high`` / ``price_low`` / ``volume_high`` (the real
bar's closed frame with a price of 1e13 or 1e-13, or a volume of 1e19), ``garbage`` (a non-JSON
frame and a truncated one, besides the real frame), ``resend`` (the last real closed frame again
instead of this bar's), ``stall`` (nothing at all for the bar), ``disconnect`` (connections closed after it).
REST answers (``REST_FAULTS``): ``ok``, ``500``, ``429`` / ``418`` (with ``Retry-After``),
``bad_rows`` (NaN, negative and misaligned rows mixed into the real ones), ``invalid_symbol``.
"""

from __future__ import annotations

import asyncio
import http
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from barsignal.features.bar import BarFrame

STEP = 60_000
YEARS_5 = 5 * 365 * 86_400_000
BAR_FAULTS = ("drop", "dup", "reorder", "future", "future_e", "price_high", "price_low", "volume_high",
              "garbage", "resend", "stall", "disconnect")
REST_FAULTS = ("ok", "500", "429", "418", "bad_rows", "invalid_symbol")


def _num(x: float) -> str:
    return f"{x:.8f}" if 1e-8 <= abs(x) < 1e15 or x == 0 else repr(float(x))


class HostileServer:
    """Serve ``frame`` bars ``[start, end)`` at ``speed`` bars per second (``first``/``last`` after
    construction); bars before ``start`` are history (REST only). ``shutdown_on_connect``: every new
    connection gets ``serverShutdown`` at once."""

    def __init__(self, frame: BarFrame, *, start: int, end: int, speed: float = 1.0,
                 plan: Mapping[int, str] | Callable[[int], str] | None = None,
                 rest_plan: Mapping[int, str] | Callable[[int], str] | None = None,
                 retry_after_s: int = 2, shutdown_on_connect: bool = False, symbol: str = "BTCUSDT",
                 host: str = "127.0.0.1", port: int = 0, start_delay_s: float = 0.0) -> None:
        self.frame, self.first, self.last, self.speed = frame, start, end, speed
        self._plan = plan if callable(plan) else (lambda i, p=dict(plan or {}): p.get(i, "ok"))
        self._rest_plan = rest_plan if callable(rest_plan) else (lambda n, p=dict(rest_plan or {}): p.get(n, "ok"))
        self.retry_after_s, self.shutdown_on_connect, self.symbol = retry_after_s, shutdown_on_connect, symbol
        self.host, self.port, self.start_delay_s = host, port, start_delay_s
        self.t = frame.open_time
        self.conns: set[ServerConnection] = set()
        self.connections = 0
        self.connect_times: list[float] = []
        self.rest_requests: list[tuple[float, str]] = []  # (monotonic time, what was answered)
        self.injected: dict[str, int] = {}
        self.sent_closed: list[int] = []  # open times of the real closed frames sent (not faked ones)
        self.closed_upto = start  # bars [0, closed_upto) have closed on the exchange
        self.done: asyncio.Event | None = None  # set when the last bar was sent (made in start())
        self._t0 = 0.0
        self._last_real: bytes | None = None
        self._server: Any = None
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the exchange clock --------------------------------------------------------------------------
    def now_ms(self) -> int:
        """Exchange time: bar ``start`` opens when the stream starts; ``speed`` bars per second."""
        el = max(0.0, time.monotonic() - self._t0)
        return int(self.t[self.first]) + int(el * self.speed * STEP)

    def _count(self, what: str) -> None:
        self.injected[what] = self.injected.get(what, 0) + 1

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> HostileServer:
        self.done = asyncio.Event()
        self._server = await serve(self._handler, self.host, self.port, process_request=self._process_request,
                                   ping_interval=1.0, ping_timeout=5.0, max_queue=64)
        self.port = self._server.sockets[0].getsockname()[1]
        self._t0 = time.monotonic() + self.start_delay_s
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> HostileServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> HostileServer:
        """Run on a loop of its own in a daemon thread (for tests that drive a subprocess)."""
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="hostile-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("hostile server did not start")
        return self

    def stop_thread(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- websocket ----------------------------------------------------------------------------------
    def _kline(self, i: int, *, closed: bool, e: int, t: int | None = None, price: float | None = None,
               volume: float | None = None) -> bytes:
        f = self.frame
        t = int(self.t[i]) if t is None else t
        o, h, lo, c = (f.open[i], f.high[i], f.low[i], f.close[i]) if price is None else (price,) * 4
        v = f.volume[i] if volume is None else volume
        k = {"t": t, "T": t + STEP - 1, "s": self.symbol, "i": "1m", "f": 1, "L": 2,
             "o": _num(o), "c": _num(c), "h": _num(h), "l": _num(lo), "v": _num(v),
             "n": 10, "x": closed, "q": "1.00000000", "V": "0.50000000", "Q": "0.50000000", "B": "0"}
        data = {"e": "kline", "E": e, "s": self.symbol, "k": k}
        return orjson.dumps({"stream": f"{self.symbol.lower()}@kline_1m", "data": data})

    async def _send(self, msg: bytes | str) -> None:
        for c in list(self.conns):
            try:
                await c.send(msg.decode() if isinstance(msg, bytes) else msg)
            except ConnectionClosed:
                self.conns.discard(c)

    async def _sleep_until_ms(self, exch_ms: int) -> None:
        while (d := (exch_ms - self.now_ms()) / (self.speed * STEP)) > 0:
            await asyncio.sleep(min(d, 0.5))

    async def _run(self) -> None:
        held: list[bytes] = []
        for i in range(self.first, self.last):
            t = int(self.t[i])
            act = self._plan(i)
            if act != "ok":
                self._count(act)
            await self._sleep_until_ms(t + STEP // 2)
            if act != "stall":
                await self._send(self._kline(i, closed=False, e=self.now_ms()))
            await self._sleep_until_ms(t + STEP + 200)
            self.closed_upto = i + 1
            e = self.now_ms()
            real = self._kline(i, closed=True, e=e)
            if act in ("ok", "disconnect"):
                await self._send(real)
            elif act == "dup":
                await self._send(real)
                await self._send(real)
            elif act == "reorder":
                held.append(real)
                continue
            elif act == "future":
                await self._send(real)
                await self._send(self._kline(i, closed=True, e=e, t=t + YEARS_5))
            elif act == "future_e":
                await self._send(self._kline(i, closed=True, e=e + YEARS_5, t=t + YEARS_5))
                await self._send(real)
            elif act == "price_high":
                await self._send(self._kline(i, closed=True, e=e, price=1e13))
            elif act == "price_low":
                await self._send(self._kline(i, closed=True, e=e, price=1e-13))
            elif act == "volume_high":
                await self._send(self._kline(i, closed=True, e=e, volume=1e19))
            elif act == "garbage":
                await self._send("{not json")
                await self._send(real[: len(real) // 2])
                await self._send(real)
            elif act == "resend":  # the last real closed frame again (same E: a replayed frame)
                if self._last_real is not None:
                    await self._send(self._last_real)
            if act in ("ok", "dup", "future", "future_e", "garbage", "disconnect"):
                self.sent_closed.append(t)
                self._last_real = real
            for h in held:
                await self._send(h)
                self.sent_closed.append(int(orjson.loads(h)["data"]["k"]["t"]))
            held.clear()
            if act == "disconnect":
                for c in list(self.conns):
                    await c.close(1001, "going away")
        assert self.done is not None
        self.done.set()

    async def _handler(self, conn: ServerConnection) -> None:
        self.connections += 1
        self.connect_times.append(time.monotonic())
        if self.shutdown_on_connect:
            self._count("server_shutdown")
            await conn.send(orjson.dumps({"e": "serverShutdown", "E": self.now_ms()}).decode())
            await conn.close(1001, "server shutdown")
            return
        self.conns.add(conn)
        try:
            await conn.wait_closed()
        finally:
            self.conns.discard(conn)

    # -- REST ---------------------------------------------------------------------------------------
    def _rows(self, q: Mapping[str, str]) -> list[list[Any]]:
        limit = min(1000, int(q.get("limit", 500)))
        now = self.now_ms()
        t = self.t
        lo = int(np.searchsorted(t, int(q["startTime"]), side="left")) if q.get("startTime") else 0
        hi = int(np.searchsorted(t, int(q["endTime"]), side="right")) if q.get("endTime") else len(t)
        hi = min(hi, int(np.searchsorted(t, now, side="right")))  # up to the forming bar, as Binance does
        if not q.get("startTime"):
            lo = max(0, hi - limit)
        hi = min(hi, lo + limit)
        f = self.frame
        return [[int(t[i]), _num(f.open[i]), _num(f.high[i]), _num(f.low[i]), _num(f.close[i]), _num(f.volume[i]),
                 int(t[i]) + STEP - 1, "1.0", 10, "0.5", "0.5", "0"] for i in range(lo, hi)]

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path.startswith("/stream") or url.path.startswith("/ws"):
            return None
        date = {"Date": formatdate(self.now_ms() / 1000, usegmt=True)}
        if url.path != "/api/v3/klines":
            return _json(404, {"code": -1, "msg": "not here"}, date)
        n = len(self.rest_requests)
        act = self._rest_plan(n)
        self.rest_requests.append((time.monotonic(), act))
        if act != "ok":
            self._count(f"rest_{act}")
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if act == "500":
            return _json(500, {"code": -1000, "msg": "An unknown error occurred while processing the request."},
                         date)
        if act in ("429", "418"):
            return _json(int(act), {"code": -1003, "msg": "Way too many requests; IP banned."},
                         {**date, "Retry-After": str(self.retry_after_s)})
        if act == "invalid_symbol" or q.get("symbol", "").upper() != self.symbol:
            return _json(400, {"code": -1121, "msg": "Invalid symbol."}, date)
        rows = self._rows(q)
        if act == "bad_rows" and rows:
            r = rows[len(rows) // 2]
            nan = [*r[:4], "NaN", *r[5:]]
            neg = [*r[:5], "-5.00000000", *r[6:]]
            mis = [r[0] + 1, *r[1:6], r[0] + STEP, *r[7:]]
            rows = [*rows[:1], nan, neg, mis, *rows[1:]]  # extra rows: the real ones stay
        return _json(200, rows, date)


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    data = orjson.dumps(body)
    h = Headers({"Content-Type": "application/json;charset=UTF-8", "Content-Length": str(len(data)),
                 "Connection": "close", **(headers or {})})
    return Response(status, http.HTTPStatus(status).phrase, h, data)
