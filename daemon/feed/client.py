"""The live bar source: Binance's combined kline streams, with REST backfill so no bar is missed.

This module is the asyncio driver; every decision about bars (order, duplicates, holes, what to
fetch, what is implausible) is made by the sans-I/O :class:`~barsignal.daemon.feed.sequencer.Sequencer`.
The driver:

1. splits the symbols into connections of at most ``[feed] max_streams_per_connection`` streams
   (Binance's limit is 1024) and connects each to ``{ws_url}/stream?streams=btcusdt@kline_1m/...``,
   all sharing Binance's connection-attempt limit (300 per 5 minutes per IP). A URL carries as many
   streams as fit in :data:`~barsignal.daemon.binance.ws.MAX_URL_CHARS`; the rest are subscribed with
   SUBSCRIBE messages, at most 3 a second so that with a ping and a pong Binance's 5 incoming
   messages a second per connection still hold;
2. hands every decoded frame to the one sequencer and yields the bars it emits; each frame's event
   time first goes to the :class:`~barsignal.daemon.feed.clock.ExchangeClock` (the exchange's clock
   fitted on the local one), whose limit bounds what the sequencer may believe (``[feed]
   clock_tolerance_s``); a kline of another interval than ``[feed] interval`` is a bad frame
   (``wrong_interval``): counted and dropped, as a wrong symbol is;
3. runs the REST fetches the sequencer asks for (up to :data:`REST_PARALLEL` at once) in tasks of
   their own, beside the websockets: a REST failure never closes a healthy websocket (issue 12 #4).
   Every call waits for the weight budget (:class:`~barsignal.daemon.feed.backoff.WeightLimiter`,
   ``[feed] rest_weight_per_minute``, which also reads the server's ``X-MBX-USED-WEIGHT-1M``).
   Failures back off; a 429 waits its whole Retry-After, a 418 stops REST calls until the ban ends;
   a warm-up is retried until it succeeds (``ready`` stays false until every symbol's has), a later
   backfill is passed on as a gap after ``backfill_give_up_s``; "Invalid symbol" is fatal
   (ConfigError, exit 2).

Each connection has its own lifecycle: it is replaced before Binance's 24 h limit (the new one
opens before the old one closes), on ``serverShutdown``, and when no NEW closed bar of its own
symbols arrived within interval + grace (stale stream; re-sent old bars do not count). Reconnects
back off with capped exponential delays and jitter; only a healthy connection (it delivered a new
closed bar, or lived ``healthy_reset_s``) resets its backoff or reconnects at once after a rollover
or ``serverShutdown``, so a server that shuts every connection down at once cannot cause a reconnect
storm. One connection down never holds up the others' bars. Pings are answered by ``websockets``.

One symbol with no NEW closed bar for interval + grace while its connection lives on (the other
symbols keep it fresh) is resubscribed on that connection (UNSUBSCRIBE + SUBSCRIBE, paced with the
rest) and backfilled over REST up to the exchange's current minute, backing off from interval +
grace to 16 times that while it stays stale (``feed.symbol_stale``, ``symbol_resyncs``).

``exchangeInfo`` is read beside the stream at start: a symbol it does not list (HTTP 400 -1121) or
does not trade raises ConfigError (exit 2) naming it; a transient failure is retried with the REST
backoff and never taken for an unknown symbol. It is read again every ``[feed]
exchange_info_every_s``: a symbol whose status leaves TRADING (BREAK, HALT, delisted) is logged,
its status exported, and its bars are no longer handed on (its node stops; the others go on) until
it trades again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import select
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from barsignal.daemon.binance.rest import (
    EXCHANGE_INFO_WEIGHT,
    MAX_LIMIT,
    UNKNOWN,
    KlinePage,
    RateLimited,
    SymbolStatuses,
    retry_after_s,
)
from barsignal.daemon.binance.ws import (
    INTERVAL_MS,
    MAX_SUBSCRIBE_STREAMS,
    ServerShutdown,
    connection_plan,
    decode,
    decode_reply,
    groups,
    resubscribe_messages,
)
from barsignal.daemon.config import FeedConfig
from barsignal.daemon.feed.backoff import KLINES_WEIGHT, AttemptLimiter, Backoff, RestGate, WeightLimiter
from barsignal.daemon.feed.clock import ExchangeClock
from barsignal.daemon.feed.sequencer import Emit, FeedStats, Fetch, Output, Sequencer
from barsignal.errors import BadMessage, ConfigError
from barsignal.features.bar import Bar
from barsignal.log import get_logger

__all__ = ["BarSource", "FeedClient", "FeedStats", "FetchBars"]

log = get_logger(__name__)

REST_PARALLEL = 4  # REST fetches in flight at once (one per symbol at most: the sequencer's rule)
SUBSCRIBE_EVERY_S = 0.34  # <= 3 SUBSCRIBE messages a second; a ping and a pong fit in Binance's 5/s

FetchBars = Callable[..., Awaitable["list[Bar] | KlinePage"]]
"""``fetch(rest_url, symbol, since_ms, until_ms, *, interval, timeout_s, now_ms) -> KlinePage | list[Bar]``:
the closed bars with ``since_ms <= open_time < until_ms`` by exchange time ``now_ms``, i.e.
``barsignal.daemon.binance.rest.fetch_page`` (with ``max_retries=0``: the driver does the waiting)."""


# A stream quiet this long (local ms) before its exchange clock could be fitted releases its held bars
# under the votes' provisional estimate (ExchangeClock.provisional_ms).
_QUIET_MS = 1_000.0

class BarSource(Protocol):
    """Anything that yields closed bars in open-time order (live websocket, replay file...)."""

    def __aiter__(self) -> AsyncIterator[Bar]: ...


def _default_fetch() -> FetchBars:
    import aiohttp  # noqa: F401 - fetch_page imports it lazily; do it before the stream starts

    from barsignal.daemon.binance.rest import fetch_page

    return functools.partial(fetch_page, max_retries=0)


@dataclass(eq=False)
class _Link:
    """One combined-stream connection: its streams and its own reconnect, rollover and stale state."""

    index: int
    symbols: tuple[str, ...]
    url: str
    subscribes: list[tuple[int, bytes]]  # (id, SUBSCRIBE message) for the streams the URL cannot carry
    backoff: Backoff
    ws: ClientConnection | None = None
    recv: asyncio.Future[Any] | None = None
    opening: asyncio.Task[ClientConnection] | None = None  # (back off, then) connect
    up_since: float = 0.0
    rollover_at: float = 0.0
    progress_at: float = 0.0  # the last NEW closed bar of this connection's symbols
    healthy: bool = False
    end_reason: str = "closed"
    to_send: deque[tuple[int, bytes]] = field(default_factory=deque)
    send_at: float = 0.0
    awaiting: set[int] = field(default_factory=set)  # SUBSCRIBE ids not answered yet
    connects: int = 0
    next_id: int = 0  # the id of the next control message beyond the start's SUBSCRIBEs
    symbols_checked_at: float = 0.0  # when its symbols' own staleness was last looked at

    def tag(self) -> dict[str, Any]:
        return {"connection": self.index, "streams": len(self.symbols)}


class FeedClient:
    """Closed bars for ``cfg.symbols`` from Binance's kline streams, gap-free across reconnects.

    ``async for bar in client`` yields :class:`Bar` (source ``"ws"`` or ``"rest"``) for a
    single-symbol feed; ``async for symbol, bar in client.stream()`` works for any number.
    ``ready`` (alias ``can_signal``): every symbol's warm-up came over REST, so what follows can be
    signalled; a daemon must not report READY / healthy before. ``clock``/``sleep``/``rng`` are
    injectable so tests shrink time instead of sleeping; ``stale_after_s`` overrides interval +
    ``cfg.stale_grace_s``. ``links`` are the connections (one per ``cfg.max_streams_per_connection``
    symbols); ``weight`` is the REST weight budget; ``max_subscribe_streams`` caps one SUBSCRIBE.
    """

    def __init__(
        self,
        cfg: FeedConfig,
        *,
        warmup_bars: int = 0,
        fetch: FetchBars | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
        stale_after_s: float | None = None,
        open_timeout_s: float = 10.0,
        limiter: AttemptLimiter | None = None,
        weight: WeightLimiter | None = None,
        close_grace_ms: int = 5_000,
        backfill_give_up_s: float = 600.0,
        wall_clock: Callable[[], float] = time.time,
        max_subscribe_streams: int = MAX_SUBSCRIBE_STREAMS,
        symbol_info: Callable[..., Awaitable[SymbolStatuses | None]] | None = None,
    ) -> None:
        if not cfg.symbols:
            raise ConfigError("[feed] symbols is empty; name at least one, e.g. symbols = [\"BTCUSDT\"]")
        if not cfg.ws_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"[feed] ws_url {cfg.ws_url!r} must start with ws:// or wss://")
        self.cfg = cfg
        self.symbols = tuple(dict.fromkeys(s.upper() for s in cfg.symbols))
        self._symbol_set = frozenset(self.symbols)
        self.step_ms = INTERVAL_MS[cfg.interval]
        self.warmup_bars = max(0, int(warmup_bars))
        self._fetch = fetch
        # exchangeInfo: the real one with the real REST client; a client given its own fetch checks
        # symbols only when it is given symbol_info too.
        self._symbol_info = symbol_info
        self._check_symbols = cfg.check_symbols and (symbol_info is not None or fetch is None)
        self._watch: asyncio.Task[None] | None = None
        self.halted: set[str] = set()  # symbols the exchange does not trade now: their nodes are stopped
        self._clock, self._sleep, self._wall = clock, sleep, wall_clock
        default_stale = self.step_ms / 1000 + cfg.stale_grace_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else default_stale
        self.open_timeout_s = open_timeout_s
        self.backfill_give_up_s = backfill_give_up_s
        self.links: list[_Link] = []
        for i, syms in enumerate(groups(self.symbols, cfg.max_streams_per_connection)):
            url, msgs = connection_plan(cfg.ws_url, syms, cfg.interval, max_subscribe=max_subscribe_streams)
            self.links.append(_Link(i, syms, url, list(enumerate(msgs, start=1)),
                                    Backoff(cfg.reconnect_min_s, max(cfg.reconnect_min_s, cfg.reconnect_max_s),
                                            rng=rng)))
        self.url = self.links[0].url
        self.backoff = self.links[0].backoff
        self.rest_gate = RestGate(cfg.reconnect_min_s, cfg.reconnect_max_s, clock=clock, rng=rng)
        self.limiter = limiter or AttemptLimiter(clock=clock)  # one for all connections: the limit is per IP
        self.weight = weight or WeightLimiter(cfg.rest_weight_per_minute, clock=clock, wall=wall_clock)
        self.stats = FeedStats(connections_wanted=len(self.links))
        self.seq = Sequencer(self.symbols, step_ms=self.step_ms, warmup_bars=self.warmup_bars,
                             close_grace_ms=close_grace_ms, stats=self.stats, bounded=True)
        # The exchange's clock against the local one (perf_counter: real time, whatever ``clock`` is).
        self.exchange_clock = ExchangeClock(tolerance_ms=cfg.clock_tolerance_s * 1000.0)
        self._last_frame_ms, self._provisional_done = 0.0, True  # see _QUIET_MS
        # (E, local ms, symbol) of the frames handled since the loop last waited: fed to the clock then,
        # off the path from a frame to its bar (a bucket's close sorts and refits: ~10 us)
        self._clock_samples: list[tuple[int, float, str | None]] = []
        self.symbol_progress_at: dict[str, float] = {}  # ``clock()`` of each symbol's last NEW closed bar
        self._resync_after: dict[str, tuple[float, int]] = {}  # symbol -> (next resync due, resyncs so far)
        self._resynced: list[tuple[str, Bar, int]] = []  # bars a resync released, handed out next
        self._queue: deque[Fetch] = deque()  # fetches the sequencer asked for, not yet running
        self._rest_tasks: set[asyncio.Task[tuple[Fetch, KlinePage | Exception]]] = set()
        self._failing_since: dict[Fetch, float] = {}
        self._stopped = False

    # -- public API -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every symbol is warm (its warm-up came over REST): the daemon can signal."""
        return self.seq.ready

    can_signal = ready

    def __aiter__(self) -> AsyncIterator[Bar]:
        if len(self.symbols) != 1:
            raise ConfigError("a multi-symbol feed yields (symbol, bar): iterate over feed.stream()")
        return self._bars_only()

    async def _bars_only(self) -> AsyncIterator[Bar]:
        async for _, bar in self.stream():
            yield bar

    def frame_pending(self) -> bool:
        """A frame is on its way through the event loop and not handed out yet: bytes waiting on a
        socket, a whole message buffered in websockets, or a receive done but not handled. Keep-warm
        asks before each rehearsal: a rehearsal run then would hold the frame back."""
        for link in self.links:
            if link.recv is not None and link.recv.done():
                return True
            ws = link.ws
            if ws is not None and (_message_ready(ws) or _readable(ws)):
                return True
        return False

    def stop(self) -> None:
        """Ask :meth:`stream` to end after the current frame."""
        self._stopped = True

    async def stream(self) -> AsyncIterator[tuple[str, Bar]]:
        """Yield ``(symbol, bar)`` forever (until :meth:`stop` or cancellation)."""
        if self._fetch is None:
            self._fetch = _default_fetch()  # import the HTTP client before the stream starts
        links = self.links
        try:
            if self._check_symbols:
                self._watch = asyncio.ensure_future(self._watch_symbols())
            for link in links:
                link.opening = asyncio.ensure_future(self._connect(link))
            while not self._stopped:
                known = self.exchange_clock.known
                if self._clock_samples:
                    samples, self._clock_samples = self._clock_samples, []
                    for e, loc, src in samples:
                        self.exchange_clock.observe(e, loc, src)
                if not known:
                    loc = time.perf_counter_ns() / 1e6
                    self.exchange_clock.tick(loc)
                    if self.exchange_clock.known:  # release what was held meanwhile
                        lim, est = self.exchange_clock.limit_ms(loc), self.exchange_clock.now_ms(loc)
                        held = self.seq.clock_known(est, lim) if lim is not None and est is not None else []
                        for item in self._outputs(held):
                            yield self._hand_out(item)
                    elif not self._provisional_done and loc - self._last_frame_ms >= _QUIET_MS:
                        # The stream went quiet before the clock could be fitted: what was held goes out
                        # up to its newest vote plus the tolerance (ExchangeClock.provisional_ms).
                        self._provisional_done = True
                        est = self.exchange_clock.provisional_ms(loc)
                        if est is not None:
                            lim = est + int(self.exchange_clock.tolerance_ms)
                            for item in self._outputs(self.seq.clock_known(est, lim)):
                                yield self._hand_out(item)
                now = self._clock()
                deadline = math.inf
                for link in links:
                    if link.ws is None or await self._due(link, now):
                        continue
                    deadline = min(deadline, link.rollover_at, link.progress_at + self.stale_after_s,
                                   link.symbols_checked_at + self._symbol_check_s())
                    if link.to_send:
                        deadline = min(deadline, link.send_at)
                    if link.recv is None:
                        link.recv = asyncio.ensure_future(link.ws.recv(decode=False))
                if self._resynced:
                    items, self._resynced = self._resynced, []
                    for item in items:
                        yield self._hand_out(item)
                self._pump_rest()
                waiters: set[asyncio.Future[Any]] = set(self._rest_tasks)
                if self._watch is not None:
                    if self._watch.done():
                        watch, self._watch = self._watch, None
                        watch.result()  # an unknown or non-trading symbol at start: ConfigError
                    else:
                        waiters.add(self._watch)
                for link in links:
                    for fut in (link.recv, link.opening):
                        if fut is not None:
                            waiters.add(fut)
                if not waiters:
                    break  # stopped while every connection was ending
                timeout = None if deadline == math.inf else max(0.0, deadline - now)
                if not self.exchange_clock.known and self.exchange_clock.waiting:
                    timeout = 0.03 if timeout is None else min(timeout, 0.03)  # the vote of the last frames
                elif not self.exchange_clock.known and not self._provisional_done and self._last_frame_ms > 0:
                    timeout = 0.25 if timeout is None else min(timeout, 0.25)  # a quiet stream's held bars
                done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for task in [t for t in self._rest_tasks if t in done]:
                    self._rest_tasks.discard(task)
                    for item in self._rest_done(*task.result()):
                        yield self._hand_out(item)
                for link in links:
                    if link.opening is not None and link.opening in done:
                        opening, link.opening = link.opening, None
                        self._session_start(link, opening.result())
                    if link.recv is not None and link.recv in done:
                        recv: asyncio.Future[Any] | None
                        recv, link.recv = link.recv, None
                        while True:  # this frame, then those already buffered behind it (a burst)
                            try:  # a buffered message: recv returns it without waiting
                                frame = recv.result() if recv is not None else await link.ws.recv(decode=False)
                            except websockets.ConnectionClosed as exc:
                                link.end_reason = "closed"
                                log.warning("feed.disconnected", error=_short(exc), **link.tag())
                                await self._end(link)
                                break
                            recv = None
                            for item in self._on_frame(link, frame):
                                yield self._hand_out(item)
                            if link.end_reason in ("server_shutdown", "subscribe_failed"):
                                await self._end(link)
                                break
                            if link.ws is None or not _message_ready(link.ws):
                                break
        finally:
            self.stats.connected = False
            self.stats.connections = 0
            pending: list[asyncio.Future[Any]] = [*self._rest_tasks]
            if self._watch is not None:
                pending.append(self._watch)
                self._watch = None
            for link in links:
                pending += [f for f in (link.recv, link.opening) if f is not None]
                link.recv = link.opening = None
            for fut in pending:
                fut.cancel()
            for fut in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fut
            self._rest_tasks.clear()
            for link in links:
                if link.ws is not None:
                    ws, link.ws = link.ws, None
                    await ws.close()

    # -- one connection -------------------------------------------------------------------------

    async def _connect(self, link: _Link) -> ClientConnection:
        """Connect, retrying with backoff; one log line per failed attempt, no traceback."""
        while True:
            wait = self.limiter.wait_s()
            if wait > 0:
                log.warning("feed.connect_rate_limited", wait_s=round(wait, 1), **link.tag())
                await self._sleep(wait)
                continue
            self.limiter.record()
            try:
                ws = await connect(
                    link.url, open_timeout=self.open_timeout_s, proxy=None, compression=None,
                    close_timeout=2.0, max_queue=4096,
                    max_size=max(1 << 20, 4 * self.cfg.max_frame_bytes), user_agent_header="barsignal",
                )
            except websockets.InvalidURI as exc:
                raise ConfigError(f"[feed] ws_url gives an invalid URL {_brief(link.url)!r}: {exc}") from None
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
                self.stats.connect_failures += 1
                delay = max(link.backoff.next_delay(), _handshake_retry_after(exc))
                log.warning("feed.connect_failed", url=_brief(link.url), error=_short(exc),
                            attempt=link.backoff.attempt, retry_in_s=round(delay, 3), **link.tag(),
                            hint="cannot reach the kline feed (no network?); retrying with backoff")
                await self._sleep(delay)
                continue
            self.stats.connects += 1
            link.connects += 1
            log.info("feed.connected", url=_brief(link.url), subscribe_messages=len(link.subscribes), **link.tag())
            return ws

    async def _reopen(self, link: _Link, old: ClientConnection, *, overlap: bool, delay: float) -> ClientConnection:
        """Replace ``old``: open the new connection first (``overlap``), or close, back off, connect."""
        if overlap:
            new = await self._connect(link)
            with contextlib.suppress(Exception):
                await old.close()
            return new
        with contextlib.suppress(Exception):
            await old.close()
        await self._sleep(delay)
        return await self._connect(link)

    def _session_start(self, link: _Link, ws: ClientConnection) -> None:
        link.ws = ws
        self.seq.connected(link.symbols)
        link.up_since = link.progress_at = link.send_at = self._clock()
        link.rollover_at = link.up_since + self.cfg.rollover_s
        link.end_reason, link.healthy = "closed", False
        link.to_send = deque(link.subscribes)
        link.awaiting = set()
        self._count_connections()

    def _symbol_check_s(self) -> float:
        return max(0.05, min(1.0, self.stale_after_s / 4))

    def _stale_symbols(self, link: _Link, now: float) -> list[str]:
        """The symbols of a live connection with no NEW closed bar for ``stale_after_s`` (the connection
        itself is fresh: other symbols' bars keep it so), whose resync is due: each one backs off,
        doubling from ``stale_after_s`` up to 16 times that, until its stream brings a bar again."""
        link.symbols_checked_at = now
        since = link.up_since
        out = []
        for sym in link.symbols:
            if sym in self.halted or now - max(self.symbol_progress_at.get(sym, since), since) < self.stale_after_s:
                continue
            due, n = self._resync_after.get(sym, (0.0, 0))
            if now >= due:
                out.append(sym)
                self._resync_after[sym] = (now + self.stale_after_s * 2 ** min(n, 4), n + 1)
        return out

    def _resync(self, link: _Link, symbols: list[str]) -> list[tuple[str, Bar, int]]:
        """Resubscribe ``symbols`` on ``link`` (UNSUBSCRIBE then SUBSCRIBE, paced with the others) and
        backfill each over REST up to the exchange's current minute."""
        first = max(link.next_id, len(link.subscribes) + 1)
        msgs = resubscribe_messages(symbols, self.cfg.interval, first)
        link.next_id = first + len(msgs)
        link.to_send.extend(msgs)
        log.warning("feed.symbol_stale", symbols=symbols[:10], count=len(symbols),
                    no_new_closed_bar_for_s=round(self.stale_after_s, 3),
                    action="resubscribing and backfilling over REST", **link.tag())
        outs: list[Output] = []
        for sym in symbols:
            outs += self.seq.resync(sym)
        return self._outputs(outs)

    def _count_connections(self) -> None:
        up = sum(1 for link in self.links if link.ws is not None)
        self.stats.connections, self.stats.connected = up, up == len(self.links)

    async def _due(self, link: _Link, now: float) -> bool:
        """Health, rollover, staleness and paced SUBSCRIBEs of a live connection; True if it ended."""
        if now - link.up_since >= self.cfg.healthy_reset_s:
            link.healthy = True
        if now >= link.rollover_at:
            link.end_reason = "rollover"
        elif now - link.progress_at >= self.stale_after_s:
            link.end_reason = "stale"
            log.warning("feed.stale", no_new_closed_bar_for_s=round(now - link.progress_at, 3), **link.tag())
        else:
            if now - link.symbols_checked_at >= self._symbol_check_s() and self.seq.current_minute() is not None:
                stale = self._stale_symbols(link, now)
                if stale:
                    self._resynced.extend(self._resync(link, stale))
            if not (link.to_send and now >= link.send_at):
                return False
            rid, msg = link.to_send.popleft()
            link.send_at = now + SUBSCRIBE_EVERY_S
            link.awaiting.add(rid)
            try:
                assert link.ws is not None
                await link.ws.send(msg.decode())
                return False
            except websockets.ConnectionClosed as exc:
                link.end_reason = "closed"
                log.warning("feed.disconnected", error=_short(exc), **link.tag())
        await self._end(link)
        return True

    async def _end(self, link: _Link) -> None:
        """The connection ended (``link.end_reason``): schedule its replacement in ``link.opening``."""
        reason = link.end_reason
        if link.recv is not None:
            link.recv.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await link.recv
            link.recv = None
        ws, link.ws = link.ws, None
        assert ws is not None
        self._count_connections()
        self.seq.disconnected(link.symbols)
        if link.healthy:
            link.backoff.reset()
        if self._stopped:
            await ws.close()
            return
        self.stats.reconnects += 1
        self.stats.reconnects_by_reason[reason] = self.stats.reconnects_by_reason.get(reason, 0) + 1
        if reason in ("rollover", "server_shutdown") and link.healthy:
            log.info("feed.reconnect", reason=reason, **link.tag())
            link.opening = asyncio.ensure_future(self._reopen(link, ws, overlap=True, delay=0.0))
        else:
            delay = link.backoff.next_delay()
            log.warning("feed.reconnect", reason=reason, retry_in_s=round(delay, 3), healthy=link.healthy,
                        **link.tag())
            link.opening = asyncio.ensure_future(self._reopen(link, ws, overlap=False, delay=delay))

    def _hand_out(self, item: tuple[str, Bar, int]) -> tuple[str, Bar]:
        symbol, bar, recv_ns = item
        self.stats.last_recv_ns = recv_ns
        self.stats.last_bar_at = self._clock()
        return symbol, bar

    def _on_frame(self, link: _Link, frame: bytes | str) -> list[tuple[str, Bar, int]]:
        recv_ns = time.perf_counter_ns()
        self.stats.frames += 1
        if link.awaiting:
            reply = decode_reply(frame)
            if reply is not None:
                self._on_reply(link, reply.id, reply.ok, reply.error)
                return []
        try:
            ev = decode(frame, symbols=self._symbol_set, max_bytes=self.cfg.max_frame_bytes,
                        interval=self.cfg.interval)
        except BadMessage as exc:
            reason = getattr(exc, "reason", "bad")
            self.stats.bad_frames += 1
            seen = self.stats.bad_by_reason[reason] = self.stats.bad_by_reason.get(reason, 0) + 1
            # The first of each kind is worth a warning; the rest are counted (metrics) and dropped.
            (log.warning if seen == 1 else log.debug)("feed.bad_frame", reason=reason, error=str(exc),
                                                      count=seen)
            return []
        if ev is None:
            return []
        local_ms = recv_ns / 1e6
        self._last_frame_ms, self._provisional_done = local_ms, False
        limit = self.exchange_clock.limit_ms(local_ms)  # this frame is observed once the loop is free
        self._clock_samples.append((ev.event_time, local_ms, getattr(ev, "symbol", None)))
        if isinstance(ev, ServerShutdown):
            self.seq.server_time(ev.event_time, limit)
            link.end_reason = "server_shutdown"
            log.warning("feed.server_shutdown", event_time=ev.event_time, **link.tag())
            return []
        progress = self.seq.progress
        outs = self.seq.kline(ev, limit)
        if self.seq.progress != progress:  # a NEW closed bar: this connection is alive and healthy
            link.progress_at, link.healthy = self._clock(), True
            self.symbol_progress_at[ev.symbol] = link.progress_at
            if ev.symbol in self._resync_after:
                del self._resync_after[ev.symbol]
        live = ev.open_time if ev.closed else None
        return self._outputs(outs, recv_ns, live)

    def _on_reply(self, link: _Link, rid: Any, ok: bool, error: str) -> None:
        link.awaiting.discard(rid)
        if ok:
            log.debug("feed.subscribed", id=rid, **link.tag())
            return
        link.end_reason = "subscribe_failed"
        log.error("feed.subscribe_failed", id=rid, error=error, action="reconnecting with backoff", **link.tag())

    def _outputs(self, outs: list[Output], recv_ns: int = 0, live: int | None = None) -> list[tuple[str, Bar, int]]:
        """Queue the fetches; return the bars with the receive time their latency is measured from
        (the frame's own for the bar it closed, the hand-off time for bars held back or from REST)."""
        bars = []
        for o in outs:
            if isinstance(o, Fetch):
                self._queue.append(o)
            elif isinstance(o, Emit):
                if self.halted and o.symbol in self.halted:
                    self.stats.halted_bars += 1
                    continue
                own = o.bar.source == "ws" and o.bar.open_time == live
                bars.append((o.symbol, o.bar, recv_ns if own else time.perf_counter_ns()))
        return bars

    # -- exchangeInfo: is each symbol listed and trading? --------------------------------------------

    async def _watch_symbols(self) -> None:
        """Each symbol's status at start (unknown or not TRADING: ConfigError, exit 2) and every
        ``[feed] exchange_info_every_s`` after. A transient failure is retried with the REST backoff,
        never taken for an unknown symbol, and never holds up the stream meanwhile."""
        first = True
        while True:
            got = await self._read_statuses()
            if got is None:
                log.warning("feed.exchange_info_unavailable", rest_url=self.cfg.rest_url,
                            action="symbols not checked: the server does not serve /api/v3/exchangeInfo")
                return
            self._apply_statuses(got.status, first=first)
            first = False
            if not self.cfg.exchange_info_every_s:
                return
            await asyncio.sleep(self.cfg.exchange_info_every_s)  # a period, not a backoff: real time

    async def _read_statuses(self) -> SymbolStatuses | None:
        info = self._symbol_info
        if info is None:
            from barsignal.daemon.binance.rest import fetch_symbol_status as info
        while True:
            wait = max(self.rest_gate.wait_s(), self.weight.wait_s(EXCHANGE_INFO_WEIGHT))
            if wait > 0:
                await self._sleep(wait)
                continue
            try:
                got = await info(self.cfg.rest_url, list(self.symbols), timeout_s=self.cfg.rest_timeout_s)
            except RateLimited as exc:
                self.stats.rest_rate_limited += 1
                delay = self.rest_gate.rate_limited(exc.status, exc.retry_after_s)
                log.warning("feed.exchange_info_failed", status=exc.status, retry_in_s=round(delay, 3))
                continue
            except Exception as exc:  # the REST boundary: the network, 5xx, an unreadable answer
                if isinstance(exc, ConfigError):
                    raise
                self.stats.rest_failures += 1
                delay = self.rest_gate.failed()
                log.warning("feed.exchange_info_failed", error=_short(exc), retry_in_s=round(delay, 3),
                            hint="cannot read exchangeInfo; retrying with backoff (symbols are not assumed unknown)")
                continue
            cost = EXCHANGE_INFO_WEIGHT * max(1, got.requests if got is not None else 1)
            self.weight.spend(cost)
            self.stats.rest_weight_spent += cost
            if got is not None and got.used_weight is not None:
                self.weight.observe(got.used_weight, got.server_time_ms)
            return got

    def _apply_statuses(self, status: dict[str, str], *, first: bool) -> None:
        bad = {s: status.get(s, UNKNOWN) for s in self.symbols if status.get(s, UNKNOWN) != "TRADING"}
        if first and bad:
            why = ", ".join(f"{s} ({'not listed: HTTP 400 code -1121 Invalid symbol' if st == UNKNOWN else st})"
                            for s, st in bad.items())
            raise ConfigError(f"[feed] symbols: {self.cfg.rest_url} exchangeInfo does not trade {why}; "
                              "fix [feed] symbols")
        known = self.stats.symbol_status
        for s in self.symbols:
            st = status.get(s, UNKNOWN)
            if not first and known.get(s) != st:
                if st == "TRADING":
                    log.warning("feed.symbol_status", symbol=s, status=st, was=known.get(s),
                                action="trading again: its node resumes")
                else:
                    log.error("feed.symbol_status", symbol=s, status="DELISTED" if st == UNKNOWN else st,
                              was=known.get(s), action="its node stops: no bars until it trades again")
            known[s] = st
        self.halted = {s for s in self.symbols if known[s] != "TRADING"}

    # -- REST, beside the websockets ----------------------------------------------------------------

    def _pump_rest(self) -> None:
        while self._queue and len(self._rest_tasks) < REST_PARALLEL:
            self._rest_tasks.add(asyncio.ensure_future(self._run_fetch(self._queue.popleft())))

    def _cost(self, f: Fetch) -> int:
        """Weight of the klines calls ``f`` takes: one per MAX_LIMIT bars, plus the one that finds the end."""
        bars = -(-(f.until_ms - f.since_ms) // self.step_ms)
        return KLINES_WEIGHT * (max(0, bars) // MAX_LIMIT + 1)

    async def _run_fetch(self, f: Fetch) -> tuple[Fetch, KlinePage | Exception]:
        cost = self._cost(f)
        paced = 0.0
        while True:
            gate, budget = self.rest_gate.wait_s(), self.weight.wait_s(cost)
            wait = max(gate, budget)
            if wait <= 0:
                break
            if budget >= gate:
                paced += wait
            await self._sleep(wait)
        self.weight.spend(cost)
        self.stats.rest_weight_spent += cost
        if paced:
            self.stats.rest_paced += 1
            self.stats.rest_paced_s += paced
            log.debug("feed.rest_paced", symbol=f.symbol, waited_s=round(paced, 3), weight=cost,
                      budget_per_minute=self.weight.per_minute)
        fetch = self._fetch or _default_fetch()
        try:
            got = await fetch(self.cfg.rest_url, f.symbol, f.since_ms, f.until_ms, interval=self.cfg.interval,
                              timeout_s=self.cfg.rest_timeout_s, now_ms=self.seq.trusted_now())
        except Exception as exc:  # the REST boundary: any failure; the caller sorts them
            return f, exc
        page = got if isinstance(got, KlinePage) else KlinePage(list(got))
        more = KLINES_WEIGHT * page.requests - cost
        if more > 0:  # it took more pages than estimated
            self.weight.spend(more)
            self.stats.rest_weight_spent += more
        if page.used_weight is not None:
            self.weight.observe(page.used_weight, page.server_time_ms)
            self.stats.rest_server_weight = page.used_weight
        return f, page

    def _rest_done(self, f: Fetch, res: KlinePage | Exception) -> list[tuple[str, Bar, int]]:
        if isinstance(res, KlinePage):
            self.rest_gate.ok()
            self.stats.rest_banned_until = 0.0
            self._failing_since.pop(f, None)
            for why, n in res.dropped.items():
                self.stats.invalid_bars += n
                self.stats.invalid_by_reason[why] = self.stats.invalid_by_reason.get(why, 0) + n
            return self._outputs(self.seq.rest_page(f, res.bars, res.server_time_ms))
        if isinstance(res, ConfigError):
            raise res  # "Invalid symbol": retrying cannot help
        self.stats.rest_failures += 1
        if isinstance(res, RateLimited):
            self.stats.rest_rate_limited += 1
            delay = self.rest_gate.rate_limited(res.status, res.retry_after_s)
            if res.status == 418:
                self.stats.rest_banned_until = self._wall() + delay
            log.warning("feed.rest_rate_limited", symbol=f.symbol, status=res.status, retry_after_s=delay,
                        action="no REST call until then" if res.status == 418 else "waiting Retry-After")
        else:
            delay = self.rest_gate.failed()
            log.warning("feed.rest_failed", symbol=f.symbol, since_ms=f.since_ms, error=_short(res),
                        retry_in_s=round(delay, 3), warmup=f.warmup)
        since = self._failing_since.setdefault(f, self._clock())
        if not f.warmup and self._clock() - since >= self.backfill_give_up_s:
            self._failing_since.pop(f, None)
            return self._outputs(self.seq.rest_gave_up(f))
        self._queue.appendleft(f)  # retried once the gate opens; the websocket carries on meanwhile
        return []


def _message_ready(ws: Any) -> bool:
    """A whole message is already buffered, so ``ws.recv()`` returns it without waiting: a burst of
    frames is handed out in one go, not one event-loop round trip (a task and a wait) each. Reads
    websockets' frame queue (``recv_messages.frames``); False where that is absent."""
    frames = getattr(getattr(getattr(ws, "recv_messages", None), "frames", None), "queue", None)
    return bool(frames) and bool(getattr(frames[0], "fin", False))


def _readable(ws: Any) -> bool:
    """Bytes are waiting on the connection's socket (a zero-timeout poll; False without a socket)."""
    sock = ws.transport.get_extra_info("socket") if getattr(ws, "transport", None) is not None else None
    if sock is None:
        return False
    try:
        fd = sock.fileno()
        if fd < 0:
            return False
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return False


def _brief(url: str) -> str:
    """A URL fit for a log line: a 1024-stream one is cut, with the count of what was left out."""
    if len(url) <= 160:
        return url
    return f"{url[:140]}...(+{url.count('/', 140)} streams)"


def _handshake_retry_after(exc: BaseException) -> float:
    """Seconds a 429/418 handshake refusal asks us to wait (Binance sends Retry-After), else 0."""
    response = getattr(exc, "response", None)
    if response is None or getattr(response, "status_code", 0) not in (418, 429):
        return 0.0
    return retry_after_s(response.headers, default=0.0)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]
