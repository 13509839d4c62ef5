"""Reconnect pacing: capped exponential backoff with jitter, and Binance's connection-attempt limit."""

from __future__ import annotations

import random
import statistics
from collections import deque
from collections.abc import Callable


class Backoff:
    """Delay before reconnect attempt n: ``min(cap, base * factor**n)`` scaled by a random factor in
    ``[1 - jitter, 1]`` ("equal jitter": spreads reconnect storms, never waits longer than the cap).
    ``reset()`` after a healthy connection brings the next delay back to ``base``.
    """

    def __init__(self, base_s: float, cap_s: float, *, factor: float = 2.0, jitter: float = 0.5,
                 rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError(f"bad backoff: base {base_s}, cap {cap_s}, factor {factor}, jitter {jitter}")
        self.base_s, self.cap_s, self.factor, self.jitter = base_s, cap_s, factor, jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The un-jittered delay for the current attempt."""
        return min(self.cap_s, self.base_s * self.factor ** min(self.attempt, 64))

    def next_delay(self) -> float:
        """The delay to sleep before the next attempt; advances the attempt count."""
        d = self.ceiling() * (1.0 - self.jitter * self._rng.random())
        self.attempt += 1
        return d

    def reset(self) -> None:
        self.attempt = 0


class AttemptLimiter:
    """At most ``max_attempts`` connection attempts in any ``window_s`` (Binance: 300 per 5 min per IP)."""

    def __init__(self, max_attempts: int = 300, window_s: float = 300.0,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self.max_attempts, self.window_s = max_attempts, window_s
        self._clock = clock or time.monotonic
        self._times: deque[float] = deque(maxlen=max_attempts)

    def wait_s(self) -> float:
        """Seconds to wait before another attempt is allowed (0 when one is allowed now)."""
        if len(self._times) < self.max_attempts:
            return 0.0
        return max(0.0, self._times[0] + self.window_s - self._clock())

    def record(self) -> None:
        self._times.append(self._clock())


class RestGate:
    """When the next REST call may go: capped backoff after a failure, the full ``Retry-After`` after
    a 429, and no call at all until a 418 ban ends (Binance bans an IP that keeps calling: the ban
    grows). ``ok()`` after a success resets it. ``clock`` is injectable (seconds, monotonic)."""

    def __init__(self, base_s: float, cap_s: float, *, clock: Callable[[], float],
                 rng: random.Random | None = None) -> None:
        self.backoff = Backoff(base_s, max(base_s, cap_s), rng=rng)
        self._clock = clock
        self.next_at = 0.0
        self.banned_until: float | None = None  # clock() when a 418 ban ends

    def wait_s(self) -> float:
        """Seconds until a REST call is allowed (0: now)."""
        return max(0.0, self.next_at - self._clock())

    def failed(self) -> float:
        """A failed call (network, 5xx, bad page): back off; returns the delay."""
        d = self.backoff.next_delay()
        self.next_at = max(self.next_at, self._clock() + d)
        return d

    def rate_limited(self, status: int, retry_after_s: float) -> float:
        """429 or 418: wait the whole Retry-After (however long), or back off when it names none."""
        d = retry_after_s if retry_after_s > 0 else self.backoff.next_delay()
        now = self._clock()
        self.next_at = max(self.next_at, now + d)
        if status == 418:
            self.banned_until = max(self.banned_until or 0.0, now + d)
        return d

    def ok(self) -> None:
        self.backoff.reset()
        self.banned_until = None


KLINES_WEIGHT = 2  # GET /api/v3/klines costs 2 request weight a call on spot (Binance REST docs)


class WeightLimiter:
    """Binance's REST request weight, spent within a budget: at most ``per_minute`` in any 60 s.

    A token bucket: a quarter of the budget may go at once (a start's warm-ups), the rest comes back
    at an even rate of ``(per_minute - burst) / 60`` a second, so no 60 s window, and so none of
    Binance's wall-clock minutes, carries more than ``per_minute`` of our own. The server's count
    (``X-MBX-USED-WEIGHT-1M``: this IP's weight in the current minute, other clients included) is
    passed to :meth:`observe`; when it is more than we spent, the difference counts against the
    budget until that minute ends. That minute is the exchange's: the response's ``Date`` header
    (1 s resolution) gives the offset of the exchange's clock to ``wall``, the median of the last
    15, so a local clock that is off by seconds still starts and ends Binance's minutes when Binance
    does. A ``Date`` more than an hour away from ``wall`` is not a skewed clock but a replaying
    simulator's (its weight minutes are wall-clock ones): it is not used. ``clock`` (monotonic) and
    ``wall`` (unix seconds) are injectable; sans I/O.
    """

    def __init__(self, per_minute: int = 2400, *, burst: int | None = None, clock: Callable[[], float],
                 wall: Callable[[], float]) -> None:
        if per_minute < KLINES_WEIGHT:
            raise ValueError(f"a weight budget of {per_minute} a minute cannot pay for one klines call")
        self.per_minute = int(per_minute)
        self.burst = max(KLINES_WEIGHT, min(self.per_minute // 2,
                                            self.per_minute // 4 if burst is None else int(burst)))
        self.rate = (self.per_minute - self.burst) / 60.0  # weight a second
        self._clock, self._wall = clock, wall
        self._tokens = float(self.burst)
        self._at = clock()
        self._minute = -1  # the wall-clock minute the counts below are for
        self._ours = 0  # weight we spent in that minute
        self._others = 0  # weight the server counted beyond ours in that minute
        self.spent = 0  # all weight spent, for metrics
        self.server_used = 0  # the last X-MBX-USED-WEIGHT-1M seen
        self._skew: deque[float] = deque(maxlen=15)  # exchange clock - wall, seconds, from Date headers

    def exchange_wall(self) -> float:
        """Unix seconds on the exchange's clock: ``wall`` plus the offset the Date headers measured."""
        return self._wall() + (statistics.median(self._skew) if self._skew else 0.0)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        minute = int(self.exchange_wall() // 60)
        if minute > self._minute:
            self._minute, self._ours, self._others = minute, 0, 0

    def wait_s(self, cost: int = KLINES_WEIGHT) -> float:
        """Seconds until ``cost`` may be spent (0: now)."""
        self._refill()
        cost = min(cost, self.burst)  # a call dearer than the burst goes when the bucket is full
        short = cost - self._tokens
        wait = 0.0 if short <= 1e-6 else short / self.rate  # (float dust is not worth a wait)
        if self._others and self._ours + self._others + cost > self.per_minute:
            wall = self.exchange_wall()
            wait = max(wait, (self._minute + 1) * 60 - wall + 0.05)  # the server's minute must end first
        return wait

    def spend(self, cost: int = KLINES_WEIGHT) -> None:
        """Record a call of ``cost`` going out now (call right after :meth:`wait_s` said 0)."""
        self._refill()
        self._tokens -= cost
        self._ours += cost
        self.spent += cost

    def observe(self, used: int | None, server_time_ms: int | None = None) -> None:
        """The server's ``X-MBX-USED-WEIGHT-1M`` of a response that arrived just now, and its ``Date``."""
        if server_time_ms is not None:
            skew = server_time_ms / 1000 + 0.5 - self._wall()  # Date is truncated to the second
            if abs(skew) <= 3600:
                self._skew.append(skew)
        if used is None:
            return
        self._refill()
        self.server_used = int(used)
        self._others = max(self._others, int(used) - self._ours)
