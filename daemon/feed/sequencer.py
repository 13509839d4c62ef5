"""The feed's state machine, sans I/O: kline events and REST pages in; bars, gaps and fetches out.

No sockets, no clock, no asyncio (the split python-websockets makes between ``protocol.py`` and its
connection). The asyncio driver (``client.FeedClient``) reads frames and calls REST; this class
decides what they mean:

- **Inputs**: :meth:`Sequencer.connected` / :meth:`disconnected`, :meth:`kline` (a decoded
  :class:`KlineEvent`, with its event time ``E``), :meth:`server_time` (``E`` of any other frame),
  :meth:`rest_page` (the answer to a :class:`Fetch`, with the server time of its HTTP ``Date``
  header), :meth:`rest_gave_up` (the driver stopped trying a backfill).
- **Outputs** (lists returned by those calls): :class:`Emit` (a bar, each exactly once, in open-time
  order), :class:`Gap` (a hole REST could not fill, passed on, never invented), :class:`Fetch`
  (closed bars ``since_ms <= open_time < until_ms`` wanted from REST; at most one in flight per
  symbol). Drops are counted in :class:`FeedStats` by reason.

The exchange's clock is the newest trusted event time. The driver bounds it: each frame comes with
``limit_ms``, the latest exchange time it may believe now (the local clock plus the measured offset
to the exchange, and a small tolerance: :class:`~barsignal.daemon.feed.clock.ExchangeClock`). An
event time past the limit is not believed (``clock_ahead``), however many frames agree, and the
current minute never passes the limit; so one symbol's forged ``E`` moves no other symbol's state
and asks REST for nothing; until the driver's clock is known (``limit_ms`` None) nothing is believed.
Without a driver's clock (``bounded=False``, the pure tests), a frame can move the clock forward by
at most ``max_clock_jump_ms`` on its own and a bigger jump is believed once a second, later frame
agrees with it. A bar whose open time is after the exchange's current minute is dropped, counted
(``future_bars``, and by symbol) and logged at warning level, rate-limited. So is a bar that is not
finite, consistent and in range (the features' own check, ``invalid_bars``). ``progress`` counts NEW
closed bars only: re-sent old ones do not keep a stale stream alive (issue 13 #9). ``ready`` says
every symbol finished its warm-up
from REST: the feed can signal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from barsignal.daemon.binance.ws import KlineEvent
from barsignal.features.bar import Bar
from barsignal.features.engine import bar_problem
from barsignal.log import get_logger

log = get_logger(__name__)


@dataclass
class FeedStats:
    """Counters for metrics; plain attributes, read by the daemon's Prometheus collector."""

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
    future_bars: int = 0  # closed bars dated after the exchange's current minute, dropped
    future_by_symbol: dict[str, int] = field(default_factory=dict)
    clock_ahead: int = 0  # frames whose event time was past the exchange clock's limit: not believed
    symbol_resyncs: int = 0  # stale symbols resubscribed and backfilled while their connection lived on
    symbol_status: dict[str, str] = field(default_factory=dict)  # exchangeInfo's status of each symbol, once read
    halted_bars: int = 0  # bars of a symbol the exchange does not trade now, not handed on
    invalid_bars: int = 0  # bars (ws or REST) not finite, consistent and in range, dropped
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    connects: int = 0
    reconnects: int = 0
    reconnects_by_reason: dict[str, int] = field(default_factory=dict)
    connect_failures: int = 0
    rest_failures: int = 0
    rest_rate_limited: int = 0  # REST answers 429 / 418
    rest_banned_until: float = 0.0  # unix seconds a 418 ban ends (0: not banned)
    connected: bool = False  # every connection is up
    connections: int = 0  # connections up now
    connections_wanted: int = 1  # one per up to [feed] max_streams_per_connection streams
    rest_weight_spent: int = 0  # REST request weight we spent (klines: 2 a call)
    rest_server_weight: int = 0  # the last X-MBX-USED-WEIGHT-1M the server reported
    rest_paced: int = 0  # REST calls that waited for the weight budget
    rest_paced_s: float = 0.0  # seconds they waited, in all
    last_bar_open_time: int | None = None
    last_bar_at: float | None = None  # driver clock when the last bar was yielded
    last_recv_ns: int = 0  # perf_counter_ns() when the frame behind the last bar arrived


@dataclass(frozen=True)
class Fetch:
    """Ask REST for the closed bars of ``symbol`` with ``since_ms <= open_time < until_ms``."""

    symbol: str
    since_ms: int
    until_ms: int
    warmup: bool = False  # the start's warm-up: never given up on


@dataclass(frozen=True)
class Emit:
    symbol: str
    bar: Bar


@dataclass(frozen=True)
class Gap:
    symbol: str
    after_open_time: int
    next_open_time: int
    missing: int


Output = Emit | Gap | Fetch


@dataclass
class _Symbol:
    last: int | None = None  # open time of the last bar emitted
    warm: bool = False  # the warm-up fetch is done
    synced: bool = False  # this connection's first frame was seen
    want_until: int | None = None  # REST should be asked for bars before this open time
    covered: int = -(1 << 62)  # REST was asked for everything below this: holes there are real
    fetch: Fetch | None = None  # in flight
    pending: dict[int, Bar] = field(default_factory=dict)  # closed ws bars held behind a fetch


class Sequencer:
    """Turns closed-kline events and REST pages into each bar once, in order. See the module doc."""

    def __init__(self, symbols: tuple[str, ...], *, step_ms: int, warmup_bars: int = 0,
                 close_grace_ms: int = 5_000, max_clock_jump_ms: int | None = None,
                 max_pending: int = 10_000, stats: FeedStats | None = None, bounded: bool = False) -> None:
        self.step_ms = int(step_ms)
        self.warmup_bars = max(0, int(warmup_bars))
        # A closed kline arrives 0.2-2 s after its close time (WS_RULES.md); past this point into the
        # next bar, a missing closed frame is taken as lost and fetched.
        self.close_grace_ms = close_grace_ms
        self.max_clock_jump_ms = 15 * self.step_ms if max_clock_jump_ms is None else max_clock_jump_ms
        self.max_pending = max_pending
        self.stats = stats or FeedStats()
        self._syms = {s: _Symbol() for s in symbols}
        self.now_ms: int | None = None  # the exchange's clock: newest trusted event time
        self.limit_ms: int | None = None  # the latest exchange time the driver's clock allows (bounded mode)
        self._bounded = bounded  # the driver gives limits (None: no clock yet): the two-frame jump rule is off
        self._jump: int | None = None  # an event time too far ahead, waiting for a second opinion
        self.progress = 0  # NEW closed bars seen (not duplicates, late, future or invalid ones)

    # -- state -------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Every symbol finished its warm-up: the bars that follow can be signalled."""
        return all(s.warm for s in self._syms.values())

    def trusted_now(self) -> int | None:
        """The trusted exchange time: the newest believed event time, never past the driver's limit."""
        now = self.now_ms
        if self._bounded and now is not None:
            lim = self.limit_ms
            return None if lim is None else min(now, lim)
        return now

    def current_minute(self) -> int | None:
        """Open time of the exchange's current bar (None before the clock is known)."""
        now = self.trusted_now()
        return None if now is None else now - now % self.step_ms

    def last(self, symbol: str) -> int | None:
        return self._syms[symbol].last

    # -- inputs ------------------------------------------------------------------------------------
    def connected(self, symbols: Iterable[str] | None = None) -> None:
        """A new connection (carrying ``symbols``; default all): each symbol's first frame on it decides
        what REST must fill."""
        self.disconnected(symbols)

    def disconnected(self, symbols: Iterable[str] | None = None) -> None:
        for s in (self._syms.values() if symbols is None else (self._syms[x] for x in symbols)):
            s.synced = False

    def server_time(self, event_time_ms: int, limit_ms: int | None = None) -> None:
        """The event time of a frame that carries no bar (e.g. ``serverShutdown``)."""
        self._observe(event_time_ms, limit_ms)

    def kline(self, ev: KlineEvent, limit_ms: int | None = None) -> list[Output]:
        """One decoded kline frame (closed or still forming); ``limit_ms``: see the module doc."""
        self._observe(ev.event_time, limit_ms, ev.symbol)
        s = self._syms.get(ev.symbol)
        if s is None:
            return []
        out = self._next_closed(ev, s)
        return out if out is not None else self._kline(ev, s)

    def _next_closed(self, ev: KlineEvent, s: _Symbol) -> list[Output] | None:
        """The live case, once a minute per symbol: the closed frame of the bar after the last one, of
        a warm, synced symbol with nothing held or fetched, not past the exchange's minute, and no
        hole to ask for after it. It goes out at once (:meth:`_kline` would do exactly the same:
        tests/feed/test_sequencer.py checks the two agree on every frame of its interleavings);
        None for any other frame."""
        t, last, now, step = ev.open_time, s.last, self.trusted_now(), self.step_ms
        if not (ev.closed and last is not None and t == last + step and s.synced and s.warm and s.fetch is None
                and not s.pending and now is not None and t <= now - now % step and self.max_pending > 0
                and (s.want_until is None or s.want_until <= max(t + step, s.covered))
                and bar_problem(ev.open, ev.high, ev.low, ev.close, ev.volume) is None):
            return None
        self.progress += 1
        s.last = t
        st = self.stats
        st.bars_ws += 1
        st.last_bar_open_time = t
        return [Emit(ev.symbol, Bar(t, ev.open, ev.high, ev.low, ev.close, ev.volume, "ws"))]

    def rehearse(self, ev: KlineEvent, limit_ms: int | None = None) -> None:
        """Keep-warm: :meth:`kline` on this sequencer's own state for the next closed bar of a symbol
        (``daemon/keepwarm.py``), then every value it changed put back. Only the live case is run
        (:meth:`_next_closed`, what the real next frame takes); any other frame changes nothing.
        ``limit_ms``: the driver's limit when that frame arrives (a bounded sequencer's last limit is
        a minute old by then)."""
        s = self._syms.get(ev.symbol)
        now = self.trusted_now()
        limit = self.limit_ms if limit_ms is None else limit_ms
        if (s is None or now is None or ev.event_time > now + self.max_clock_jump_ms
                or (self._bounded and ev.event_time > (limit or 0))):
            return  # the clock is not trusted, or this would be a jump: not the live case
        st = self.stats
        saved = (self.now_ms, self._jump, self.progress, s.last, st.bars_ws, st.last_bar_open_time, self.limit_ms,
                 st.clock_ahead)
        try:
            self._observe(ev.event_time, limit if self._bounded else None)
            self._next_closed(ev, s)
        finally:
            (self.now_ms, self._jump, self.progress, s.last, st.bars_ws, st.last_bar_open_time, self.limit_ms,
             st.clock_ahead) = saved

    def _kline(self, ev: KlineEvent, s: _Symbol) -> list[Output]:
        """:meth:`kline` for any frame, after the clock has seen it."""
        now_min = self.current_minute()
        beyond = now_min is None or ev.open_time > now_min
        if beyond and now_min is not None and not self._vouched(ev.open_time):
            if ev.closed:
                self._count_future(ev.symbol, ev.open_time, "ws")
            return []
        if ev.closed:
            why = bar_problem(ev.open, ev.high, ev.low, ev.close, ev.volume)
            if why is not None:
                self._count_invalid(ev.symbol, ev.open_time, why, "ws")
                return []
        if beyond:
            # The clock is not trusted yet, or jumps ahead on this frame's word alone: hold the bar;
            # the next frame decides (at live cadence the next kline update, ~2 s later).
            if ev.closed:
                self._receive(ev.symbol, s, ev.to_bar("ws"))
            return []
        if not s.synced:
            s.synced = True
            self._want(s, ev.open_time)
        if ev.closed:
            self._receive(ev.symbol, s, ev.to_bar("ws"))
        elif (s.last is not None and max(s.pending, default=s.last) < ev.open_time - self.step_ms
              and ev.event_time - ev.open_time >= self.close_grace_ms):
            # Bar t is well under way: the closed frame of t-1 never came; fetch it now.
            self._want(s, ev.open_time)
        return self._drain(ev.symbol, s)

    def rest_page(self, fetch: Fetch, bars: list[Bar], server_time_ms: int | None = None) -> list[Output]:
        """The answer to ``fetch``: closed bars, oldest first (already decoded and validated)."""
        s = self._syms[fetch.symbol]
        if s.fetch != fetch:
            return []  # not the one in flight (cannot happen with one driver; ignore it)
        # REST's Date bounds its own page; it does not move the clock (a loopback simulator's Date is
        # the wall clock, years after the E of the bars it replays).
        now = self.trusted_now()
        cap = now if server_time_ms is None or now is None else min(now, server_time_ms)
        cap_min = None if cap is None else cap - cap % self.step_ms
        s.fetch = None
        out: list[Output] = []
        n = 0
        for b in sorted(bars, key=lambda b: b.open_time):
            if not fetch.since_ms <= b.open_time < fetch.until_ms:
                continue
            why = bar_problem(b.open, b.high, b.low, b.close, b.volume)
            if why is not None:
                self._count_invalid(fetch.symbol, b.open_time, why, "rest")
                continue
            if s.last is not None and b.open_time <= s.last:
                continue  # already emitted (a ws bar got there first): nothing lost, nothing to count
            if cap_min is not None and b.open_time > cap_min:
                self._count_future(fetch.symbol, b.open_time, "rest")
                continue
            if self._emit(fetch.symbol, s, Bar(b.open_time, b.open, b.high, b.low, b.close, b.volume,
                                                "rest"), out):
                n += 1
        s.covered = max(s.covered, fetch.until_ms)
        if fetch.warmup:
            s.warm = True
            self.stats.warmup_bars += n
            log.info("feed.warmup", symbol=fetch.symbol, bars=n, wanted=self.warmup_bars)
        elif n:
            self.stats.backfilled += n
            log.info("feed.backfilled", symbol=fetch.symbol, bars=n, from_open_time=fetch.since_ms)
        out += self._drain(fetch.symbol, s)
        return out

    def clock_known(self, now_ms: int, limit_ms: int) -> list[Output]:
        """The driver's clock became known between frames (``now_ms``: its estimate): the closed bars held
        while it was not go out now (after their warm-ups), as the next frame would release them; a
        stream that ended meanwhile leaves none behind."""
        self.limit_ms, self._bounded = limit_ms, True
        if self.now_ms is None or self.now_ms < min(now_ms, limit_ms):
            self.now_ms = min(now_ms, limit_ms)
        now_min = self.current_minute()
        out: list[Output] = []
        if now_min is None:
            return out
        for symbol, s in self._syms.items():
            if s.pending and not s.synced and min(s.pending) <= now_min:
                s.synced = True
                self._want(s, min(s.pending))
            if s.pending:
                out += self._drain(symbol, s)
        return out

    def resync(self, symbol: str) -> list[Output]:
        """``symbol`` went stale while its connection lived on and was resubscribed: ask REST for every
        bar its stream should have brought, up to the exchange's current minute (a symbol that never had
        a frame: its warm-up, ending there); its next frame re-syncs it as a reconnect does."""
        s = self._syms[symbol]
        s.synced = False
        self.stats.symbol_resyncs += 1
        now_min = self.current_minute()
        if now_min is not None and (s.last is not None or not s.warm):
            self._want(s, now_min)
        return self._drain(symbol, s)

    def rest_gave_up(self, fetch: Fetch) -> list[Output]:
        """The driver stopped trying ``fetch`` (a backfill, never a warm-up): pass its hole on."""
        s = self._syms[fetch.symbol]
        if s.fetch != fetch or fetch.warmup:
            return []
        s.fetch = None
        s.covered = max(s.covered, fetch.until_ms)
        log.error("feed.rest_unavailable", symbol=fetch.symbol, since_ms=fetch.since_ms,
                  until_ms=fetch.until_ms, action="passing the hole on as a gap")
        return self._drain(fetch.symbol, s)

    # -- internals ---------------------------------------------------------------------------------
    def _observe(self, t: int, limit: int | None = None, symbol: str | None = None) -> None:
        if limit is not None or self._bounded:
            self._bounded = True
            if limit is not None:
                self.limit_ms = limit
            if limit is None or t > limit:
                if limit is not None:
                    self.stats.clock_ahead += 1
                    n = self.stats.clock_ahead
                    (log.warning if _loud(n) else log.debug)(
                        "feed.clock_ahead", symbol=symbol, event_time=t, limit_ms=limit, count=n,
                        action="not believed: past the local clock plus the measured offset to the exchange")
                return
            if self.now_ms is None or t > self.now_ms:
                self.now_ms = t
            return
        now = self.now_ms
        if now is not None and t <= now + self.max_clock_jump_ms:
            if t > now:
                self.now_ms = t
            self._jump = None
            return
        # No clock yet, or a jump further ahead than one frame may move it: believe it when a second,
        # later observation agrees (a duplicated frame, with the same time, does not).
        j = self._jump
        if j is not None and j < t <= j + self.max_clock_jump_ms:
            self.now_ms, self._jump = t, None
            if now is not None:
                log.info("feed.clock_jump", from_ms=now, to_ms=t)
        else:
            self._jump = t

    def _vouched(self, open_time: int) -> bool:
        """A bar past the trusted clock, but not past a jump that waits for a second opinion."""
        j = self._jump
        return j is not None and open_time <= j - j % self.step_ms

    def _want(self, s: _Symbol, until: int) -> None:
        s.want_until = until if s.want_until is None else max(s.want_until, until)

    def _receive(self, symbol: str, s: _Symbol, bar: Bar) -> None:
        t = bar.open_time
        if s.last is not None and t <= s.last:
            if t == s.last:
                self.stats.duplicates += 1
            else:
                self.stats.late += 1
                log.debug("feed.late_kline", symbol=symbol, open_time=t, last=s.last)
            return
        if t in s.pending:
            self.stats.duplicates += 1
            return
        newest = max(s.pending) if s.pending else s.last
        if newest is None or t > newest:
            self.progress += 1
        s.pending[t] = bar
        if len(s.pending) > self.max_pending:
            del s.pending[min(s.pending)]  # the oldest becomes a hole that REST fills later

    def _drain(self, symbol: str, s: _Symbol) -> list[Output]:
        """Emit held bars that may go now; ask REST for what must come first."""
        out: list[Output] = []
        step = self.step_ms
        while s.fetch is None:
            if not s.warm:
                if s.want_until is None:
                    break  # no trusted frame yet: nothing to anchor the warm-up to
                if self.warmup_bars > 0:
                    # The warm-up ends where the stream starts: the first bar held, or this frame's.
                    until = min(s.want_until, min(s.pending, default=s.want_until))
                    out.append(self._start(s, Fetch(symbol, until - self.warmup_bars * step, until,
                                                    warmup=True)))
                    break
                s.warm = True  # no warm-up: the first bar held goes first
            if s.pending:
                t = min(s.pending)
                now_min = self.current_minute()
                if now_min is None or (t > now_min and self._vouched(t)):
                    break  # wait for the clock to be confirmed
                if s.last is not None and t <= s.last:
                    del s.pending[t]  # REST delivered it first
                    continue
                if t > now_min:
                    del s.pending[t]
                    self._count_future(symbol, t, "ws")
                    continue
                if s.last is None or t == s.last + step or t <= s.covered:
                    self._emit(symbol, s, s.pending.pop(t), out)
                    continue
            if s.last is None:
                break
            # A hole after the last bar: up to the first held bar, or to where a frame says we are.
            start = max(s.last + step, s.covered)
            ends = [min(s.pending)] if s.pending else []
            if s.want_until is not None and s.want_until > start:
                ends.append(s.want_until)
            if not ends or min(ends) <= start:
                break
            out.append(self._start(s, Fetch(symbol, start, min(ends))))
        return out

    def _start(self, s: _Symbol, f: Fetch) -> Fetch:
        s.fetch = f
        return f

    def _emit(self, symbol: str, s: _Symbol, bar: Bar, out: list[Output]) -> bool:
        now_min = self.current_minute()
        if now_min is None or bar.open_time > now_min:
            self._count_future(symbol, bar.open_time, bar.source)
            return False
        if s.last is not None and bar.open_time > s.last + self.step_ms:
            missing = (bar.open_time - s.last) // self.step_ms - 1
            self.stats.gaps += 1
            self.stats.missing_bars += missing
            log.warning("feed.gap", symbol=symbol, after_open_time=s.last, next_open_time=bar.open_time,
                        missing=missing)
            out.append(Gap(symbol, s.last, bar.open_time, missing))
        s.last = bar.open_time
        if bar.source == "ws":
            self.stats.bars_ws += 1
        else:
            self.stats.bars_rest += 1
        self.stats.last_bar_open_time = bar.open_time
        out.append(Emit(symbol, bar))
        return True

    def _count_future(self, symbol: str, open_time: int, source: str) -> None:
        st = self.stats
        st.future_bars += 1
        n = st.future_by_symbol[symbol] = st.future_by_symbol.get(symbol, 0) + 1
        (log.warning if _loud(n) else log.debug)(
            "feed.future_bar", symbol=symbol, open_time=open_time, source=source, exchange_now_ms=self.trusted_now(),
            action="dropped: dated after the exchange's current minute", count=n, total=st.future_bars)

    def _count_invalid(self, symbol: str, open_time: int, why: str, source: str) -> None:
        self.stats.invalid_bars += 1
        n = self.stats.invalid_by_reason[why] = self.stats.invalid_by_reason.get(why, 0) + 1
        (log.warning if _loud(n) else log.debug)(
            "feed.invalid_bar", symbol=symbol, open_time=open_time, reason=why, source=source,
            action="dropped: not finite, consistent and in range", count=n)


def _loud(n: int) -> bool:
    """Warn for the first ten of a kind, then every hundredth (the counters carry the rest)."""
    return n <= 10 or n % 100 == 0
