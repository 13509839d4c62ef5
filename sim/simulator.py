"""A local Binance-compatible kline feed: historical bars of one or many symbols replayed as the live
stream, plus REST, all on one clock.

One port serves both, like a tiny Binance:

- websocket ``/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m`` (combined wrapper),
  ``/ws/btcusdt@kline_1m`` (raw payloads) and the bare ``/ws`` and ``/stream`` paths, with live
  SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY (see ``protocol``);
  a connection sending more than 5 messages a second is closed (1008), as Binance does;
- for each bar of each symbol, in-progress updates (``x: false``) then the closed frame, at
  ``speed`` bars per second of wall time. ``intrabar`` evenly spaced updates per bar by default;
  ``update_ms=2000`` gives Binance's cadence (an update about every 2 s of exchange time) and
  ``jitter_ms`` moves each update (and its ``E``) by a random amount, so updates arrive irregularly;
  protocol pings every ``ping_interval_s``; a minute's closed frames go out at once, or, with
  ``close_spread_ms``, evenly over that many ms of wall time in a random order of symbols (how
  many symbols' closes reach a client over a moment rather than in one burst);
- HTTP ``GET /api/v3/klines`` answered from the bars already closed in simulated time, with the
  forming kline as the last row as Binance does, so REST "now" matches the stream;
  ``/api/v3/exchangeInfo`` for the served symbols, ``/api/v3/time``, ``/api/v3/ping``, and empty
  ``/fapi/v1`` and ``/dapi/v1`` exchangeInfo (so ccxt's default ``load_markets`` works unchanged).
  Request weight is counted per minute as Binance does (``X-MBX-USED-WEIGHT-1M``); past
  ``weight_limit`` requests get 429 with Retry-After. The ``Date`` header is the simulated clock.

The clock is the union of every symbol's open times: a symbol without a bar at a tick (a halt, or
outside its file) sends nothing then. Frames are built by
:func:`barsignal.daemon.binance.ws.encode_kline` and match Binance's field for field. Ticks
``[0, start_index)`` count as already closed: a restarted server with a later ``start_index`` has
"missed" bars that clients must backfill over REST. Faults (see ``faults``) apply to each closed
frame of each symbol; scheduled ones name a tick.
"""

from __future__ import annotations

import asyncio
import http
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import numpy as np
import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from barsignal.daemon.binance.rest import encode_klines, klines_response
from barsignal.daemon.binance.ws import KlineEvent, encode_kline, encode_shutdown
from barsignal.data.intervals import INTERVAL_MS
from barsignal.features.bar import BarFrame
from barsignal.log import get_logger
from barsignal.sim.exchange_info import exchange_info, no_markets
from barsignal.sim.faults import Faults
from barsignal.sim.protocol import MAX_INCOMING_PER_S, MAX_STREAMS, PathError, RateWindow, Session, open_path
from barsignal.sim.series import Series, Tape

log = get_logger(__name__)

WEIGHTS = {"/api/v3/klines": 2, "/api/v3/exchangeInfo": 20, "/api/v3/time": 1, "/api/v3/ping": 1,
           "/fapi/v1/exchangeInfo": 1, "/dapi/v1/exchangeInfo": 1}
_YEARS_5 = 5 * 365 * 86_400_000
_COUNTED = (Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG)


class _Connection(ServerConnection):
    """A server connection that reports each incoming message (data, ping, unsolicited pong) to
    ``on_incoming``: what Binance's 5-messages-per-second limit counts."""

    on_incoming: Callable[[], None] | None = None

    def process_event(self, event: Any) -> None:
        counted = (self.request is not None and isinstance(event, Frame) and event.opcode in _COUNTED
                   # a pong answering our own ping is exempt: Binance pings every 20 s, so it never
                   # matters there, and tests that ping every 50 ms must not trip the limit
                   and not (event.opcode is Opcode.PONG and bytes(event.data) in self.pending_pings))
        super().process_event(event)
        if counted and self.on_incoming is not None:
            self.on_incoming()


@dataclass
class _Conn:
    session: Session
    rate: RateWindow
    muted: bool = False  # stalled: pings go on, data stops
    closing: bool = False
    close_task: asyncio.Future[None] | None = None


def _as_series(frame: BarFrame | Sequence[Series], symbol: str, extra: Mapping[str, np.ndarray] | None) -> list[Series]:
    if isinstance(frame, BarFrame):
        return [Series(symbol.upper(), frame, extra or {})]
    series = list(frame)
    if not series:
        raise ValueError("no symbols to serve")
    dup = sorted(sym for sym, k in Counter(s.symbol for s in series).items() if k > 1)
    if dup:
        raise ValueError(f"symbol {dup[0]} is given twice")
    return series


class FeedSimulator:
    """Serve bars as Binance's kline streams on ``host:port`` (0 = any free port).

    ``frame`` is one symbol's BarFrame (named ``symbol``, extras in ``extra``) or a sequence of
    :class:`~barsignal.sim.series.Series`. ``await sim.start()`` / ``await sim.stop()``;
    ``sim.ws_url`` and ``sim.rest_url`` are what a :class:`~barsignal.daemon.config.FeedConfig`
    points at. ``sim.done`` is set when every tick up to ``end_index`` has closed;
    ``sim.closed_upto`` counts closed ticks of the shared clock ``sim.times`` (REST serves those).
    """

    def __init__(
        self,
        frame: BarFrame | Sequence[Series],
        *,
        symbol: str = "BTCUSDT",
        interval: str = "1m",
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        start_index: int = 0,
        end_index: int | None = None,
        intrabar: int = 2,
        update_ms: int | None = None,
        jitter_ms: int = 0,
        faults: Faults | None = None,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float = 60.0,  # Binance drops a client that does not pong within a minute
        close_delay_ms: int = 250,
        close_spread_ms: float = 0.0,
        extra: Mapping[str, np.ndarray] | None = None,
        max_incoming_per_s: int = MAX_INCOMING_PER_S,
        max_streams: int = MAX_STREAMS,
        weight_limit: int = 6000,
        wall_clock: Callable[[], float] = time.time,
        wait_for_subscriber: bool = False,
    ) -> None:
        series = _as_series(frame, symbol, extra)
        if speed <= 0:
            raise ValueError(f"speed must be > 0 bars per second, got {speed}")
        if update_ms is not None and update_ms <= 0:
            raise ValueError(f"update_ms must be > 0, got {update_ms}")
        if jitter_ms < 0:
            raise ValueError(f"jitter_ms must be >= 0, got {jitter_ms}")
        if not 0 <= close_spread_ms < 500.0 / speed:
            raise ValueError(f"close_spread_ms must be >= 0 and under half a bar ({500.0 / speed:g} ms of wall "
                             f"time at {speed:g} bars/s), got {close_spread_ms}")
        self.close_spread_ms = float(close_spread_ms)
        self.interval, self.step_ms = interval, INTERVAL_MS[interval]
        self.times = np.unique(np.concatenate([s.frame.open_time.astype(np.int64) for s in series]))
        self._times = self.times
        n = len(self.times)
        if not 0 <= start_index <= n:
            raise ValueError(f"start_index {start_index} is outside the {n} bars")
        self.host, self.port = host, port
        self.speed, self.intrabar = float(speed), max(0, int(intrabar))
        self.update_ms, self.jitter_ms = update_ms, int(jitter_ms)
        self.start_index = start_index
        self.end_index = n if end_index is None else max(start_index, min(n, end_index))
        self.faults = faults or Faults()
        self.ping_interval_s, self.close_delay_ms = ping_interval_s, close_delay_ms
        self.ping_timeout_s = ping_timeout_s
        self.max_incoming_per_s, self.max_streams, self.weight_limit = max_incoming_per_s, max_streams, weight_limit
        self._wall = wall_clock  # REST weight windows are wall-clock minutes, as on Binance
        halted = np.zeros(n, dtype=bool)  # injected exchange halts, on the clock
        for first, count in self.faults.gaps:
            halted[max(0, first):max(0, first + count)] = True
        self.tapes = [Tape(s, self.times, interval=interval, step_ms=self.step_ms, close_delay_ms=close_delay_ms,
                           halted=halted) for s in series]
        self._by_symbol = {t.symbol: t for t in self.tapes}
        self._served = frozenset(t.stream for t in self.tapes)
        first = self.tapes[0]  # the single-symbol view, as before
        self.frame, self.symbol, self.stream = first.series.frame, first.symbol, first.stream
        self.symbols = [t.symbol for t in self.tapes]
        self._rng = random.Random(self.faults.seed)
        self._rest_rng = random.Random(self.faults.seed + 1)
        self._jit_rng = random.Random(self.faults.seed + 2)
        self.closed_upto = start_index  # ticks [0, closed_upto) are closed
        self._cur = start_index  # the tick being built
        self._cur_started = 0.0
        # True: the first bar starts when a client first subscribes to a stream, not at start()
        self.wait_for_subscriber = bool(wait_for_subscriber)
        self._subscribed = asyncio.Event()
        self._conns: dict[ServerConnection, _Conn] = {}
        self._subs: dict[str, set[ServerConnection]] = {s: set() for s in self._served}
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self.sent_closed: list[tuple[str, int]] = []  # (symbol, open time) of closed frames sent, with repeats
        self.last_closed_sent_ns: dict[int, int] = {}  # open time -> perf_counter_ns() of its last closed frame
        self.frames_sent = 0  # kline frames put on the wire (one per recipient connection)
        self.rest_requests = 0  # /api/v3/klines requests
        self.control_messages = 0
        self.rate_limited = 0  # connections closed for sending over max_incoming_per_s
        self._refused = 0
        self._weight: tuple[int, int] = (0, 0)  # (minute, weight used in it)
        self.connections_total = 0
        self.forged = 0  # closed frames sent dated years ahead (the forge fault)
        self.status: dict[str, str] = {}  # symbol -> exchangeInfo status other than TRADING (BREAK, HALT, DELISTED)

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
            server_header="barsignal-feed-serve", max_size=1 << 16, create_connection=_Connection,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._cur_started = asyncio.get_running_loop().time()
        if self.wait_for_subscriber:  # the clock stands at the start tick's open until a stream is subscribed
            self._cur_started += 1e9
        self._task = asyncio.create_task(self._run(), name="feed-serve")
        self._task.add_done_callback(_log_crash)
        log.info("feed_serve.started", ws_url=self.ws_url, symbols=len(self.tapes),
                 bars=self.end_index - self.start_index, start_index=self.start_index, speed=self.speed,
                 faults=self.faults.describe())
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
        """Bar ``i`` of the first symbol's file as seen ``fraction`` of the way through it (1.0 = closed)."""
        return self.tapes[0].event(i, fraction)

    def _fractions(self) -> list[float]:
        """Where in a bar (0..1) its in-progress updates go: even spacing, or Binance's ~2 s cadence,
        each moved by up to ``jitter_ms``."""
        step = self.step_ms
        if self.update_ms is None:
            if not self.jitter_ms:
                return [j / (self.intrabar + 1) for j in range(1, self.intrabar + 1)]
            base = [step * j / (self.intrabar + 1) for j in range(1, self.intrabar + 1)]
        else:
            base = [float(k * self.update_ms) for k in range(1, math.ceil(step / self.update_ms))]
        if self.jitter_ms:
            r, j = self._jit_rng, self.jitter_ms
            base = sorted(min(step - 1.0, max(1.0, b + r.uniform(-j, j))) for b in base)
        return [b / step for b in base]

    def _malformed(self, tape: Tape, row: int) -> tuple[bytes, bytes]:
        """A bad frame for ``tape``'s subscribers: ``(combined form, raw form)``."""
        ev = tape.event(row, 0.5)
        kind = self._rng.choice(["garbage", "truncated", "wrong_type", "nan", "negative", "symbol",
                                 "oversized"])
        if kind == "garbage":
            return b"\x00not a frame }{", b"\x00not a frame }{"
        if kind == "truncated":
            return encode_kline(ev)[:57], encode_kline(ev, combined=False)[:57]
        good = orjson.loads(encode_kline(ev))
        k = good["data"]["k"]
        if kind == "wrong_type":
            k["t"] = str(k["t"])
        elif kind == "nan":
            k["c"] = "NaN"
        elif kind == "negative":
            k["l"] = "-1.00000000"
        elif kind == "symbol":
            other = next(s for s in ("ETHUSDT", "BNBUSDT", "XRPUSDT", "ZZZUSDT") if s not in self._by_symbol)
            good["stream"] = f"{other.lower()}@kline_{self.interval}"
            good["data"]["s"] = k["s"] = other
        else:
            good["pad"] = good["data"]["pad"] = "x" * 200_000
        raw = dict(good["data"])
        if kind == "oversized":
            del good["data"]["pad"]
        return orjson.dumps(good), orjson.dumps(raw)

    def _closed_sent(self, symbol: str, open_time: int) -> None:
        """A closed frame is on the wire (handed to the kernel): record it and when."""
        self.sent_closed.append((symbol, open_time))
        self.last_closed_sent_ns[open_time] = time.perf_counter_ns()

    def _send(self, stream: str, raw: bytes, combined: bytes | None = None) -> None:
        """Send one payload to the connections subscribed to ``stream``, wrapped for combined ones."""
        subs = self._subs.get(stream)
        if not subs:
            return
        wrapped, bare = [], []
        for c in subs:
            st = self._conns.get(c)
            if st is not None and not st.muted:
                (wrapped if st.session.combined else bare).append(c)
        if wrapped:
            if combined is None:
                combined = b'{"stream":"' + stream.encode() + b'","data":' + raw + b"}"
            broadcast(wrapped, combined.decode())
        if bare:
            broadcast(bare, raw.decode())
        self.frames_sent += len(wrapped) + len(bare)

    def _send_all(self, msg: bytes) -> None:
        live = [c for c, st in self._conns.items() if not st.muted]
        if live:
            broadcast(live, msg.decode())

    # -- the clock ------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """Simulated exchange time: inside the tick being built, or after the last one."""
        if self._cur >= self.end_index:  # every bar served: the close of the last one
            return int(self.times[max(0, self.end_index - 1)]) + self.step_ms
        return int(self.times[self._cur]) + int(self._fraction_now() * self.step_ms)

    def _fraction_now(self) -> float:
        return min(1.0, max(0.0, (asyncio.get_running_loop().time() - self._cur_started) * self.speed))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        per_bar = 1.0 / self.speed
        held: list[tuple[int, Tape, bytes]] = []  # (send after closing tick, tape, raw closed frame)
        if self.wait_for_subscriber:
            await self._subscribed.wait()
            self._cur_started = loop.time()
        t_next = self._cur_started
        fl = self.faults
        for i in range(self.start_index, self.end_index):
            live = [(tp, int(tp.row[i])) for tp in self.tapes if tp.present[i]]
            if not live:
                self.closed_upto = i + 1
                continue
            self._cur, self._cur_started = i, t_next
            schedule = sorted((f, k) for k in range(len(live)) for f in self._fractions())
            for n, (f, k) in enumerate(schedule):
                delay = t_next + per_bar * f - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif n % 256 == 255:
                    await asyncio.sleep(0)  # running late: still let the loop read and write
                tp, row = live[k]
                self._send(tp.stream, encode_kline(tp.event(row, f), combined=False))
            t_next += per_bar
            await asyncio.sleep(max(0.0, t_next - loop.time()))
            self.closed_upto = i + 1
            if i in fl.stall:
                for st in self._conns.values():
                    st.muted = True
                log.info("feed_serve.stall", bar_index=i, connections=len(self._conns))
            if i in fl.shutdown:
                self._send_all(encode_shutdown(int(self.times[i]) + self.step_ms))
                log.info("feed_serve.server_shutdown", bar_index=i)
                for c in list(self._conns):
                    await c.close(1001, "server shutdown")
            if i in fl.disconnect:
                log.info("feed_serve.disconnect", bar_index=i, connections=len(self._conns))
                for c in list(self._conns):
                    c.transport.abort()
            r = self._rng
            if self.close_spread_ms:  # the minute's closed frames over a spread, in a random order
                live = self._jit_rng.sample(live, len(live))
                t_closed = loop.time()
            for k, (tp, row) in enumerate(live):
                if self.close_spread_ms:
                    delay = t_closed + self.close_spread_ms / 1e3 * k / len(live) - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                delay_ms = tp.close_delay_ms + (int(self._jit_rng.uniform(0, self.jitter_ms)) if self.jitter_ms else 0)
                closed = encode_kline(tp.event(row, close_delay_ms=delay_ms), combined=False)
                forged = [n for tick, n in fl.forge if tick == i] if fl.hits(tp.symbol) else []
                if forged:
                    self._send(tp.stream, closed)
                    self._closed_sent(tp.symbol, int(self.times[i]))
                    ev = tp.event(row, close_delay_ms=delay_ms)
                    for k in range(sum(forged)):  # the forged pair: years ahead, E forged to match
                        ahead = _YEARS_5 + (k + 1) * self.step_ms
                        self._send(tp.stream, encode_kline(msgspec.structs.replace(
                            ev, open_time=ev.open_time + ahead, close_time=ev.close_time + ahead,
                            event_time=ev.event_time + ahead), combined=False))
                    self.forged += sum(forged)
                    continue
                if not fl.hits(tp.symbol):
                    self._send(tp.stream, closed)
                    self._closed_sent(tp.symbol, int(self.times[i]))
                    continue
                if fl.malformed and r.random() < fl.malformed:
                    raw_bad_combined, raw_bad = self._malformed(tp, row)
                    self._send(tp.stream, raw_bad, raw_bad_combined)
                if fl.delay and r.random() < fl.delay:
                    await asyncio.sleep(fl.delay_s)
                if fl.drop and r.random() < fl.drop:
                    pass
                elif fl.ooo and r.random() < fl.ooo:
                    held.append((i + 1, tp, closed))
                else:
                    self._send(tp.stream, closed)
                    self._closed_sent(tp.symbol, int(self.times[i]))
                    if fl.dup and r.random() < fl.dup:
                        self._send(tp.stream, closed)
                        self._closed_sent(tp.symbol, int(self.times[i]))
                    if fl.late and r.random() < fl.late:
                        held.append((i + 3, tp, closed))
            for item in [h for h in held if h[0] <= i]:
                held.remove(item)
                self._send(item[1].stream, item[2])
        for _, tp, frame in held:  # frames held back past the last bar go out now
            self._send(tp.stream, frame)
        self._cur = self.end_index
        self.done.set()
        log.info("feed_serve.finished", closed_upto=self.closed_upto, frames_sent=self.frames_sent)

    # -- connections ----------------------------------------------------------------------------

    async def _handler(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        opened = open_path(conn.request.path, max_streams=self.max_streams)
        combined, streams = opened if opened is not None else (True, [])
        st = _Conn(Session(combined=combined, streams=dict.fromkeys(streams),
                           max_streams=self.max_streams), RateWindow(self.max_incoming_per_s))
        self._conns[conn] = st
        self._subscribe(conn, streams)
        self.connections_total += 1
        if isinstance(conn, _Connection):
            conn.on_incoming = lambda: self._incoming(conn, st)
        try:
            async for message in conn:
                if st.closing:  # over the message limit: closed with 1008, not with the handler's 1000
                    if st.close_task is not None:
                        await st.close_task
                    break
                self.control_messages += 1
                reply, added, removed = st.session.handle(message)
                self._subscribe(conn, added)
                for s in removed:
                    self._subs[s].discard(conn)
                if not st.muted:
                    await conn.send(reply.decode())
        except ConnectionClosed:
            pass
        finally:
            self._conns.pop(conn, None)
            for s in st.session.streams:
                self._subs[s].discard(conn)

    def _subscribe(self, conn: ServerConnection, streams: list[str]) -> None:
        for s in streams:
            self._subs.setdefault(s, set()).add(conn)
        if streams:
            self._subscribed.set()
        unknown = [s for s in streams if s not in self._served]
        if unknown:  # allowed, as on Binance, but silent: say so once per subscription
            log.warning("feed_serve.unserved_streams", streams=unknown[:5], count=len(unknown),
                        served=sorted(self._served)[:5])

    def _incoming(self, conn: ServerConnection, st: _Conn) -> None:
        if st.closing or st.rate.hit(asyncio.get_running_loop().time()):
            return
        st.closing = True
        self.rate_limited += 1
        log.warning("feed_serve.rate_limited", limit_per_s=self.max_incoming_per_s,
                    remote=str(conn.remote_address))
        st.close_task = asyncio.ensure_future(conn.close(1008, "Too many requests"))

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        try:
            opened = open_path(request.path, max_streams=self.max_streams)
        except PathError as exc:
            return _json(exc.status, {"code": exc.code, "msg": exc.msg})
        if opened is not None:
            if self._refused < self.faults.refuse:
                self._refused += 1
                return _json(429, {"code": -1003, "msg": "Too many connection attempts (simulated)."},
                             {"Retry-After": str(self.faults.retry_after_s)})
            return None
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path not in WEIGHTS:
            return _json(404, {"code": -1, "msg": f"not served here: {path}"})
        used, over = self._use_weight(WEIGHTS[path])
        # Date is the exchange's clock, as on Binance: here the simulated one (1 s resolution)
        h = {"X-MBX-USED-WEIGHT-1M": str(used), "Date": formatdate(self.now_ms() / 1000, usegmt=True)}
        if over:
            wait = 60 - int(self._wall()) % 60
            return _json(429, {"code": -1003, "msg": f"Too much request weight used; current limit is "
                               f"{self.weight_limit} request weight per 1 MINUTE. Please use WebSocket "
                               "Streams for live updates to avoid polling the API."},
                         {**h, "Retry-After": str(wait)})
        if path == "/api/v3/ping":
            return _json(200, {}, h)
        if path == "/api/v3/time":
            return _json(200, {"serverTime": self.now_ms()}, h)
        if path == "/api/v3/exchangeInfo":
            return _json(*exchange_info(self.tapes, q, server_time=self.now_ms(), status=self.status), h)
        if path in ("/fapi/v1/exchangeInfo", "/dapi/v1/exchangeInfo"):
            return _json(200, no_markets(server_time=self.now_ms()), h)
        self.rest_requests += 1
        fault = await self._rest_fault() if self.faults.hits(q.get("symbol", "")) else None
        if fault is not None:
            return fault
        return _json(*self.klines(q), h)

    def _use_weight(self, weight: int) -> tuple[int, bool]:
        """Add ``weight`` to this wall-clock minute's count (Binance's 1-minute window)."""
        minute = int(self._wall()) // 60
        m, used = self._weight
        used = (used if m == minute else 0) + weight
        self._weight = (minute, used)
        return used, bool(self.weight_limit) and used > self.weight_limit

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
        """``(status, body)`` for ``/api/v3/klines``, as Binance answers: the bars closed so far, then
        the forming kline as the last row when the query reaches it."""
        sym = (q.get("symbol") or "").upper()
        tape = self._by_symbol.get(sym)
        if sym and tape is None:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        tape = tape or self.tapes[0]  # a missing symbol: klines_response names the parameter
        if self.closed_upto == 0:
            visible = int(self.times[0])
        else:
            visible = int(self.times[self.closed_upto - 1]) + self.step_ms
        status, rows = klines_response(tape.rest_frame, q, symbol=tape.symbol, interval=self.interval,
                                       extra=tape.rest_extra, visible_until_ms=visible)
        forming = self._forming_row(tape)
        if status != 200 or forming is None:
            return status, rows
        t = forming[0]
        start = int(q["startTime"]) if q.get("startTime") else None
        end = int(q["endTime"]) if q.get("endTime") else None
        limit = min(int(q.get("limit", 500)), 1000)
        if (end is not None and end < t) or (start is not None and (start > t or len(rows) >= limit)):
            return status, rows
        rows.append(forming)
        return status, rows[-limit:]

    def _forming_row(self, tape: Tape) -> list[Any] | None:
        """The REST row of ``tape``'s kline being built now, or None (between bars, halted, finished)."""
        i = self._cur
        if i < self.closed_upto or i >= self.end_index or not tape.present[i]:
            return None
        ev = tape.event(int(tape.row[i]), min(self._fraction_now(), 1.0 - 1e-9))
        one = BarFrame(np.array([ev.open_time]), np.array([ev.open]), np.array([ev.high]), np.array([ev.low]),
                       np.array([ev.close]), np.array([ev.volume]))
        extra = {"quote_volume": np.array([ev.quote_volume]), "count": np.array([ev.trades]),
                 "taker_buy_volume": np.array([ev.taker_buy_base]),
                 "taker_buy_quote_volume": np.array([ev.taker_buy_quote])}
        return encode_klines(one, self.step_ms, extra=extra)[0]


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("feed_serve.crashed", error=f"{type(exc).__name__}: {exc}")


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    data = orjson.dumps(body)
    h = Headers({"Content-Type": "application/json;charset=UTF-8", "Content-Length": str(len(data)),
                 "Connection": "close", **(headers or {})})
    return Response(status, http.HTTPStatus(status).phrase, h, data)


__all__ = ["FeedSimulator", "Series"]
