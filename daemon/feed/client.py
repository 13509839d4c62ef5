"""The live bar source: Binance's combined kline stream, with REST backfill so no bar is missed.

Protocol per connection:

1. connect to ``{ws_url}/stream?streams=btcusdt@kline_1m/...`` (respecting the attempt limit);
2. on the first kline frame of each symbol, whose open time ``t`` is the exchange's "now",
   fetch the closed bars before ``t`` over REST: ``warmup_bars`` of them at start, the missing
   ones after a reconnect (the exchange clock decides, never the local one);
3. then only closed klines (``x: true``) become bars, keyed by open time: duplicates are dropped,
   late or out-of-order ones counted and ignored; a jump forward is backfilled over REST first;
   what REST cannot fill (an exchange halt) is logged, counted and passed on, never invented.

The connection is replaced before Binance's 24 h limit (the new one opens before the old one
closes, and step 2 covers anything in between), on ``serverShutdown``, and when no closed bar
arrived within interval + grace (stale stream). Failures reconnect with capped exponential
backoff and jitter, reset after a healthy period. Pings are answered by ``websockets``. The
client sends no messages of its own besides control frames, far below Binance's 5 per second.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from barsignal.daemon.binance.ws import INTERVAL_MS, KlineEvent, ServerShutdown, combined_url, decode
from barsignal.daemon.config import FeedConfig
from barsignal.daemon.feed.backoff import AttemptLimiter, Backoff
from barsignal.errors import BadMessage, ConfigError
from barsignal.features.bar import Bar
from barsignal.log import get_logger

log = get_logger(__name__)

FetchBars = Callable[..., Awaitable[list[Bar]]]
"""``fetch(rest_url, symbol, since_ms, until_ms, *, interval, timeout_s, now_ms) -> list[Bar]``: the
bars with ``since_ms <= open_time < until_ms`` closed by exchange time ``now_ms`` (None: the local
clock), i.e. ``barsignal.daemon.binance.rest.fetch_bars``."""


class BarSource(Protocol):
    """Anything that yields closed bars in open-time order (live websocket, replay file...)."""

    def __aiter__(self) -> AsyncIterator[Bar]: ...


@dataclass
class FeedStats:
    """Counters for metrics; plain attributes, read by the pipeline's Prometheus collector."""

    bars_ws: int = 0
    bars_rest: int = 0  # warm-up + backfilled
    warmup_bars: int = 0
    backfilled: int = 0  # REST bars that filled a hole after start
    gaps: int = 0  # holes that REST could not fill (passed on to the features)
    missing_bars: int = 0  # bars inside those holes
    frames: int = 0
    bad_frames: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # the newest closed kline again
    late: int = 0  # closed klines older than the newest (late or out of order), ignored
    connects: int = 0
    reconnects: int = 0
    reconnects_by_reason: dict[str, int] = field(default_factory=dict)
    connect_failures: int = 0
    rest_failures: int = 0
    connected: bool = False
    last_bar_open_time: int | None = None
    last_bar_at: float | None = None  # clock() when the last bar was yielded
    last_recv_ns: int = 0  # perf_counter_ns() when the frame behind the last bar arrived


class _RestUnavailable(Exception):
    pass


def _default_fetch() -> FetchBars:
    import ccxt.async_support  # noqa: F401 - fetch_bars imports it lazily; seconds, so do it up front

    from barsignal.daemon.binance.rest import fetch_bars

    return fetch_bars


class FeedClient:
    """Closed bars for ``cfg.symbols`` from Binance's kline stream, gap-free across reconnects.

    ``async for bar in client`` yields :class:`Bar` (source ``"ws"`` or ``"rest"``) for a
    single-symbol feed; ``async for symbol, bar in client.stream()`` works for any number.
    ``clock``/``sleep``/``rng`` are injectable so tests shrink time instead of sleeping;
    ``stale_after_s`` overrides interval + ``cfg.stale_grace_s``.
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
        rest_attempts: int = 3,
        rest_give_up_cycles: int = 3,
        limiter: AttemptLimiter | None = None,
        close_grace_ms: int = 5_000,
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
        self._clock, self._sleep = clock, sleep
        default_stale = self.step_ms / 1000 + cfg.stale_grace_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else default_stale
        self.open_timeout_s = open_timeout_s
        self.rest_attempts, self.rest_give_up_cycles = rest_attempts, rest_give_up_cycles
        self.backoff = Backoff(cfg.reconnect_min_s, max(cfg.reconnect_min_s, cfg.reconnect_max_s), rng=rng)
        self.limiter = limiter or AttemptLimiter(clock=clock)
        self.stats = FeedStats()
        self._last: dict[str, int] = {}
        self._rest_fail_cycles = 0
        self._stopped = False
        self._end_reason = "closed"
        self._exchange_now = 0  # newest event time seen: the exchange clock
        # A closed kline arrives 0.2-2 s after its close time (WS_RULES.md); past this point into
        # the next bar, a missing closed frame is taken as lost.
        self.close_grace_ms = close_grace_ms

    # -- public API -----------------------------------------------------------------------------

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
                up_since = self._clock()
                reason = "closed"
                try:
                    async for item in self._session(ws, up_since):
                        yield item
                    reason = self._end_reason
                except _RestUnavailable:
                    reason = "rest_unavailable"
                self.stats.connected = False
                if self._clock() - up_since >= self.cfg.healthy_reset_s:
                    self.backoff.reset()
                if self._stopped:
                    break
                self.stats.reconnects += 1
                self.stats.reconnects_by_reason[reason] = self.stats.reconnects_by_reason.get(reason, 0) + 1
                if reason in ("rollover", "server_shutdown"):
                    # Overlap: open the new connection before closing the old one.
                    log.info("feed.reconnect", reason=reason)
                    new = await self._connect()
                    await ws.close()
                    ws = new
                else:
                    await ws.close()
                    ws = None
                    delay = self.backoff.next_delay()
                    log.warning("feed.reconnect", reason=reason, retry_in_s=round(delay, 3))
                    await self._sleep(delay)
        finally:
            self.stats.connected = False
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
                    close_timeout=2.0, max_queue=4096,  # keep reading (and seeing closes) during REST
                    max_size=max(1 << 20, 4 * self.cfg.max_frame_bytes), user_agent_header="barsignal",
                )
            except websockets.InvalidURI as exc:
                raise ConfigError(f"[feed] ws_url gives an invalid URL {self.url!r}: {exc}") from None
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
                self.stats.connect_failures += 1
                delay = max(self.backoff.next_delay(), _retry_after(exc))
                log.warning("feed.connect_failed", url=self.url, error=_short(exc),
                            attempt=self.backoff.attempt, retry_in_s=round(delay, 3),
                            hint="cannot reach the kline feed (no network?); retrying with backoff")
                await self._sleep(delay)
                continue
            self.stats.connects += 1
            self.stats.connected = True
            log.info("feed.connected", url=self.url)
            return ws

    async def _session(self, ws: ClientConnection, up_since: float) -> AsyncIterator[tuple[str, Bar]]:
        """Read one connection until it ends; sets ``self._end_reason``."""
        synced: set[str] = set()
        rollover_at = up_since + self.cfg.rollover_s
        progress_at = up_since
        self._end_reason = "closed"
        while not self._stopped:
            now = self._clock()
            if now >= rollover_at:
                self._end_reason = "rollover"
                return
            if now - progress_at >= self.stale_after_s:
                self._end_reason = "stale"
                log.warning("feed.stale", no_closed_bar_for_s=round(now - progress_at, 3))
                return
            try:
                async with asyncio.timeout(min(rollover_at, progress_at + self.stale_after_s) - now):
                    frame = await ws.recv(decode=False)
            except TimeoutError:
                continue
            except websockets.ConnectionClosed as exc:
                self._end_reason = "closed"
                log.warning("feed.disconnected", error=_short(exc))
                return
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
                continue
            if ev is None:
                continue
            if isinstance(ev, ServerShutdown):
                self._end_reason = "server_shutdown"
                log.warning("feed.server_shutdown", event_time=ev.event_time)
                return
            self._exchange_now = max(self._exchange_now, ev.event_time)
            if ev.symbol not in synced:
                for bar in await self._backfill(ev.symbol, ev.open_time):
                    yield ev.symbol, bar
                synced.add(ev.symbol)
                progress_at = self._clock()  # REST time does not count against the stream
            if ev.closed:
                for bar in await self._on_closed(ev, recv_ns):
                    yield ev.symbol, bar
                progress_at = self._clock()
            elif ev.event_time - ev.open_time >= self.close_grace_ms:
                # Bar t is well under way: if the closed frame of t-1 never came, fetch it now
                # rather than one bar later.
                last = self._last.get(ev.symbol)
                if last is not None and last < ev.open_time - self.step_ms:
                    for bar in await self._backfill(ev.symbol, ev.open_time):
                        yield ev.symbol, bar

    # -- bars -----------------------------------------------------------------------------------

    async def _on_closed(self, ev: KlineEvent, recv_ns: int) -> list[Bar]:
        last = self._last.get(ev.symbol)
        if last is not None and ev.open_time <= last:
            self._drop_old(ev.symbol, ev.open_time, last)
            return []
        out = await self._backfill(ev.symbol, ev.open_time) if last is not None else []
        bar = self._accept(ev.symbol, ev.to_bar("ws"))
        if bar is not None:
            self.stats.last_recv_ns = recv_ns
            out.append(bar)
        return out

    async def _backfill(self, symbol: str, before: int) -> list[Bar]:
        """Closed REST bars from the last one we have (or the warm-up start) up to ``before``."""
        last = self._last.get(symbol)
        start = before - self.warmup_bars * self.step_ms if last is None else last + self.step_ms
        if start >= before:
            return []
        rest = await self._fetch_range(symbol, start, before)
        out: list[Bar] = []
        for b in rest:
            if start <= b.open_time < before and (bar := self._accept(symbol, b)) is not None:
                out.append(bar)
        if last is None:
            self.stats.warmup_bars += len(out)
            log.info("feed.warmup", symbol=symbol, bars=len(out), wanted=self.warmup_bars)
        elif out:
            self.stats.backfilled += len(out)
            log.info("feed.backfilled", symbol=symbol, bars=len(out), from_open_time=start)
        now_ns = time.perf_counter_ns()
        if out:
            self.stats.last_recv_ns = now_ns
        return out

    async def _fetch_range(self, symbol: str, since_ms: int, until_ms: int) -> list[Bar]:
        fetch = self._fetch or _default_fetch()
        for attempt in range(1, self.rest_attempts + 1):
            try:
                bars = await fetch(self.cfg.rest_url, symbol, since_ms, until_ms, interval=self.cfg.interval,
                                   timeout_s=self.cfg.rest_timeout_s, now_ms=self._exchange_now or None)
            except Exception as exc:  # the REST boundary: ccxt raises many types; log, retry, go on
                self.stats.rest_failures += 1
                delay = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** (attempt - 1))
                log.warning("feed.rest_failed", symbol=symbol, since_ms=since_ms, attempt=attempt,
                            error=_short(exc), retry_in_s=round(delay, 3))
                if attempt < self.rest_attempts:
                    await self._sleep(delay)
                continue
            self._rest_fail_cycles = 0
            return sorted((Bar(b.open_time, b.open, b.high, b.low, b.close, b.volume, "rest") for b in bars),
                          key=lambda b: b.open_time)
        self._rest_fail_cycles += 1
        if self._rest_fail_cycles >= self.rest_give_up_cycles:
            self._rest_fail_cycles = 0
            log.error("feed.rest_unavailable", symbol=symbol, since_ms=since_ms, until_ms=until_ms,
                      action="passing the hole on as a gap")
            return []
        raise _RestUnavailable

    def _accept(self, symbol: str, bar: Bar) -> Bar | None:
        """Order and de-duplicate by open time; count holes; update the counters."""
        last = self._last.get(symbol)
        if last is not None:
            if bar.open_time <= last:
                self._drop_old(symbol, bar.open_time, last)
                return None
            if bar.open_time > last + self.step_ms:
                missing = (bar.open_time - last) // self.step_ms - 1
                self.stats.gaps += 1
                self.stats.missing_bars += missing
                log.warning("feed.gap", symbol=symbol, after_open_time=last, next_open_time=bar.open_time,
                            missing=missing)
        self._last[symbol] = bar.open_time
        if bar.source == "ws":
            self.stats.bars_ws += 1
        else:
            self.stats.bars_rest += 1
        self.stats.last_bar_open_time = bar.open_time
        self.stats.last_bar_at = self._clock()
        return bar

    def _drop_old(self, symbol: str, open_time: int, last: int) -> None:
        if open_time == last:
            self.stats.duplicates += 1
        else:
            self.stats.late += 1
            log.debug("feed.late_kline", symbol=symbol, open_time=open_time, last=last)


def _retry_after(exc: BaseException) -> float:
    """Seconds a 429/418 handshake refusal asks us to wait (Binance sends Retry-After), else 0."""
    response = getattr(exc, "response", None)
    if response is None or getattr(response, "status_code", 0) not in (418, 429):
        return 0.0
    try:
        return max(0.0, float(response.headers.get("Retry-After", 0)))
    except ValueError:
        return 0.0


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]
