"""Reconnect pacing: capped exponential backoff with jitter, and Binance's connection-attempt limit."""

from __future__ import annotations

import random
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
