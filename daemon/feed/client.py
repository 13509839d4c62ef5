"""The live bar source: Binance's combined kline stream, with REST backfill so no bar is missed.

This module is the asyncio driver; every decision about bars (order, duplicates, holes, what to
fetch, what is implausible) is made by the sans-I/O :class:`~barsignal.daemon.feed.sequencer.Sequencer`.
The driver:

1. connects to ``{ws_url}/stream?streams=btcusdt@kline_1m/...`` (respecting Binance's attempt limit);
2. hands every decoded frame to the sequencer and yields the bars it emits;
3. runs the REST fetches the sequencer asks for in a task of their own, beside the websocket: a REST
   failure never closes a healthy websocket (issue 12 #4). Failures back off; a 429 waits its whole
   Retry-After, a 418 stops REST calls until the ban ends; the warm-up is retried until it succeeds
   (``ready`` stays false until then), a later backfill is passed on as a gap after
   ``backfill_give_up_s``; "Invalid symbol" is fatal (ConfigError, exit 2).

The connection is replaced before Binance's 24 h limit (the new one opens before the old one
closes), on ``serverShutdown``, and when no NEW closed bar arrived within interval + grace (stale
stream; re-sent old bars do not count). Reconnects back off with capped exponential delays and
jitter; only a healthy connection (it delivered a new closed bar, or lived ``healthy_reset_s``)
resets the backoff or reconnects at once after a rollover or ``serverShutdown``, so a server that
shuts every connection down at once cannot cause a reconnect storm. Pings are answered by
``websockets``; the client sends no messages of its own besides control frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from barsignal.daemon.binance.rest import KlinePage, RateLimited, retry_after_s
from barsignal.daemon.binance.ws import INTERVAL_MS, ServerShutdown, combined_url, decode
from barsignal.daemon.config import FeedConfig
from barsignal.daemon.feed.backoff import AttemptLimiter, Backoff, RestGate
from barsignal.daemon.feed.sequencer import Emit, FeedStats, Fetch, Output, Sequencer
from barsignal.errors import BadMessage, ConfigError
from barsignal.features.bar import Bar
from barsignal.log import get_logger

__all__ = ["BarSource", "FeedClient", "FeedStats", "FetchBars"]

log = get_logger(__name__)

FetchBars = Callable[..., Awaitable["list[Bar] | KlinePage"]]
"""``fetch(rest_url, symbol, since_ms, until_ms, *, interval, timeout_s, now_ms) -> KlinePage | list[Bar]``:
the closed bars with ``since_ms <= open_time < until_ms`` by exchange time ``now_ms``, i.e.
``barsignal.daemon.binance.rest.fetch_page`` (with ``max_retries=0``: the driver does the waiting)."""


class BarSource(Protocol):
    """Anything that yields closed bars in open-time order (live websocket, replay file...)."""

    def __aiter__(self) -> AsyncIterator[Bar]: ...


def _default_fetch() -> FetchBars:
    import ccxt.async_support  # noqa: F401 - fetch_page imports it lazily; seconds, so do it up front

    from barsignal.daemon.binance.rest import fetch_page

    return functools.partial(fetch_page, max_retries=0)


class FeedClient:
    """Closed bars for ``cfg.symbols`` from Binance's kline stream, gap-free across reconnects.

    ``async for bar in client`` yields :class:`Bar` (source ``"ws"`` or ``"rest"``) for a
    single-symbol feed; ``async for symbol, bar in client.stream()`` works for any number.
    ``ready`` (alias ``can_signal``): every symbol's warm-up came over REST, so what follows can be
    signalled; a daemon must not report READY / healthy before. ``clock``/``sleep``/``rng`` are
    injectable so tests shrink time instead of sleeping; ``stale_after_s`` overrides interval +
    ``cfg.stale_grace_s``.
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
        close_grace_ms: int = 5_000,
        backfill_give_up_s: float = 600.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not cfg.symbols:
            raise ConfigError("[feed] symbols is empty; name at least one, e.g. symbols = [\"BTCUSDT\"]")
        if not cfg.ws_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"[feed] ws_url {cfg.ws_url!r} must start with ws:// or wss://")
        self.cfg = cfg
        self.symbols = tuple(s.upper() for s in cfg.symbols)
        self._symbol_set = frozenset(self.symbols)
        self.step_ms = INTERVAL_MS[cfg.interval]
        self.url = combined_url(cfg.ws_url, self.symbols, cfg.interval)
        self.warmup_bars = max(0, int(warmup_bars))
        self._fetch = fetch
        self._clock, self._sleep, self._wall = clock, sleep, wall_clock
        default_stale = self.step_ms / 1000 + cfg.stale_grace_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else default_stale
        self.open_timeout_s = open_timeout_s
        self.backfill_give_up_s = backfill_give_up_s
        self.backoff = Backoff(cfg.reconnect_min_s, max(cfg.reconnect_min_s, cfg.reconnect_max_s), rng=rng)
        self.rest_gate = RestGate(cfg.reconnect_min_s, cfg.reconnect_max_s, clock=clock, rng=rng)
        self.limiter = limiter or AttemptLimiter(clock=clock)
        self.stats = FeedStats()
        self.seq = Sequencer(self.symbols, step_ms=self.step_ms, warmup_bars=self.warmup_bars,
                             close_grace_ms=close_grace_ms, stats=self.stats)
        self._queue: deque[Fetch] = deque()  # fetches the sequencer asked for, not yet running
        self._rest_task: asyncio.Task[tuple[Fetch, KlinePage | Exception]] | None = None
        self._failing_since: dict[Fetch, float] = {}
        self._stopped = False
        self._end_reason = "closed"
        self._healthy = False

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

    def stop(self) -> None:
        """Ask :meth:`stream` to end after the current frame."""
        self._stopped = True

    async def stream(self) -> AsyncIterator[tuple[str, Bar]]:
        """Yield ``(symbol, bar)`` forever (until :meth:`stop` or cancellation)."""
        ws: ClientConnection | None = None
        if self._fetch is None:
            self._fetch = _default_fetch()  # import ccxt (seconds) before the stream starts
        try:
            while not self._stopped:
                if ws is None:
                    ws = await self._connect()
                async for item in self._session(ws):
                    yield item
                reason = self._end_reason
                self.stats.connected = False
                self.seq.disconnected()
                if self._healthy:
                    self.backoff.reset()
                if self._stopped:
                    break
                self.stats.reconnects += 1
                self.stats.reconnects_by_reason[reason] = self.stats.reconnects_by_reason.get(reason, 0) + 1
                if reason in ("rollover", "server_shutdown") and self._healthy:
                    # Overlap: open the new connection before closing the old one.
                    log.info("feed.reconnect", reason=reason)
                    new = await self._connect()
                    await ws.close()
                    ws = new
                else:
                    await ws.close()
                    ws = None
                    delay = self.backoff.next_delay()
                    log.warning("feed.reconnect", reason=reason, retry_in_s=round(delay, 3),
                                healthy=self._healthy)
                    await self._sleep(delay)
        finally:
            self.stats.connected = False
            if self._rest_task is not None:
                self._rest_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._rest_task
                self._rest_task = None
            if ws is not None:
                await ws.close()

    # -- one connection -------------------------------------------------------------------------

    async def _connect(self) -> ClientConnection:
        """Connect, retrying with backoff; one log line per failed attempt, no traceback."""
        while True:
            wait = self.limiter.wait_s()
            if wait > 0:
                log.warning("feed.connect_rate_limited", wait_s=round(wait, 1))
                await self._sleep(wait)
                continue
            self.limiter.record()
            try:
                ws = await connect(
                    self.url, open_timeout=self.open_timeout_s, proxy=None, compression=None,
                    close_timeout=2.0, max_queue=4096,
                    max_size=max(1 << 20, 4 * self.cfg.max_frame_bytes), user_agent_header="barsignal",
                )
            except websockets.InvalidURI as exc:
                raise ConfigError(f"[feed] ws_url gives an invalid URL {self.url!r}: {exc}") from None
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
                self.stats.connect_failures += 1
                delay = max(self.backoff.next_delay(), _handshake_retry_after(exc))
                log.warning("feed.connect_failed", url=self.url, error=_short(exc),
                            attempt=self.backoff.attempt, retry_in_s=round(delay, 3),
                            hint="cannot reach the kline feed (no network?); retrying with backoff")
                await self._sleep(delay)
                continue
            self.stats.connects += 1
            self.stats.connected = True
            log.info("feed.connected", url=self.url)
            return ws

    async def _session(self, ws: ClientConnection) -> AsyncIterator[tuple[str, Bar]]:
        """Read one connection until it ends; sets ``self._end_reason`` and ``self._healthy``."""
        seq = self.seq
        seq.connected()
        up_since = self._clock()
        rollover_at = up_since + self.cfg.rollover_s
        progress, progress_at = seq.progress, up_since
        self._end_reason, self._healthy = "closed", False
        recv: asyncio.Task[Any] | None = None
        try:
            while not self._stopped:
                now = self._clock()
                if seq.progress != progress:  # a NEW closed bar: the stream is alive and healthy
                    progress, progress_at, self._healthy = seq.progress, now, True
                if now - up_since >= self.cfg.healthy_reset_s:
                    self._healthy = True
                if now >= rollover_at:
                    self._end_reason = "rollover"
                    return
                if now - progress_at >= self.stale_after_s:
                    self._end_reason = "stale"
                    log.warning("feed.stale", no_new_closed_bar_for_s=round(now - progress_at, 3))
                    return
                self._pump_rest()
                if recv is None:
                    recv = asyncio.ensure_future(ws.recv(decode=False))
                waiters: set[asyncio.Future[Any]] = {recv}
                if self._rest_task is not None:
                    waiters.add(self._rest_task)
                timeout = max(0.0, min(rollover_at, progress_at + self.stale_after_s) - now)
                done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if self._rest_task is not None and self._rest_task in done:
                    task, self._rest_task = self._rest_task, None
                    for item in self._rest_done(*task.result()):
                        yield self._hand_out(item)
                if recv in done:
                    task, recv = recv, None
                    try:
                        frame = task.result()
                    except websockets.ConnectionClosed as exc:
                        self._end_reason = "closed"
                        log.warning("feed.disconnected", error=_short(exc))
                        return
                    for item in self._on_frame(frame):
                        yield self._hand_out(item)
                    if self._end_reason == "server_shutdown":
                        return
        finally:
            if recv is not None:
                recv.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await recv

    def _hand_out(self, item: tuple[str, Bar, int]) -> tuple[str, Bar]:
        symbol, bar, recv_ns = item
        self.stats.last_recv_ns = recv_ns
        self.stats.last_bar_at = self._clock()
        return symbol, bar

    def _on_frame(self, frame: bytes | str) -> list[tuple[str, Bar, int]]:
        recv_ns = time.perf_counter_ns()
        self.stats.frames += 1
        try:
            ev = decode(frame, symbols=self._symbol_set, max_bytes=self.cfg.max_frame_bytes)
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
        if isinstance(ev, ServerShutdown):
            self.seq.server_time(ev.event_time)
            self._end_reason = "server_shutdown"
            log.warning("feed.server_shutdown", event_time=ev.event_time)
            return []
        outs = self.seq.kline(ev)
        live = ev.open_time if ev.closed else None
        return self._outputs(outs, recv_ns, live)

    def _outputs(self, outs: list[Output], recv_ns: int = 0, live: int | None = None) -> list[tuple[str, Bar, int]]:
        """Queue the fetches; return the bars with the receive time their latency is measured from
        (the frame's own for the bar it closed, the hand-off time for bars held back or from REST)."""
        bars = []
        for o in outs:
            if isinstance(o, Fetch):
                self._queue.append(o)
            elif isinstance(o, Emit):
                own = o.bar.source == "ws" and o.bar.open_time == live
                bars.append((o.symbol, o.bar, recv_ns if own else time.perf_counter_ns()))
        return bars

    # -- REST, beside the websocket -----------------------------------------------------------------

    def _pump_rest(self) -> None:
        if self._rest_task is None and self._queue:
            self._rest_task = asyncio.ensure_future(self._run_fetch(self._queue.popleft()))

    async def _run_fetch(self, f: Fetch) -> tuple[Fetch, KlinePage | Exception]:
        wait = self.rest_gate.wait_s()
        if wait > 0:
            await self._sleep(wait)
        fetch = self._fetch or _default_fetch()
        try:
            got = await fetch(self.cfg.rest_url, f.symbol, f.since_ms, f.until_ms, interval=self.cfg.interval,
                              timeout_s=self.cfg.rest_timeout_s, now_ms=self.seq.now_ms)
        except Exception as exc:  # the REST boundary: ccxt raises many types; the caller sorts them
            return f, exc
        return f, got if isinstance(got, KlinePage) else KlinePage(list(got))

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


def _handshake_retry_after(exc: BaseException) -> float:
    """Seconds a 429/418 handshake refusal asks us to wait (Binance sends Retry-After), else 0."""
    response = getattr(exc, "response", None)
    if response is None or getattr(response, "status_code", 0) not in (418, 429):
        return 0.0
    return retry_after_s(response.headers, default=0.0)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]
