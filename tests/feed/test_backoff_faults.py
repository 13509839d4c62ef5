"""Reconnect pacing (backoff, attempt limit) and the fault-spec parser."""

from __future__ import annotations

import random

import pytest

from barsignal.daemon.feed.backoff import AttemptLimiter, Backoff
from barsignal.errors import ConfigError
from barsignal.sim.faults import Faults


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(1.0, 30.0, jitter=0.5, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    ceilings = [min(30.0, 2.0**i) for i in range(10)]
    for d, cap in zip(delays, ceilings, strict=True):
        assert cap * 0.5 <= d <= cap  # jittered below its ceiling, never above
    assert max(delays) <= 30.0 and delays[-1] >= 15.0  # capped
    assert sorted(delays[:5]) == delays[:5]  # grows (ceilings double, jitter at most halves)
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jitter spreads the capped delays
    b.reset()
    assert 0.5 <= b.next_delay() <= 1.0


def test_backoff_without_jitter_is_exact_and_rejects_nonsense() -> None:
    b = Backoff(0.1, 0.8, jitter=0.0)
    assert [round(b.next_delay(), 6) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_attempt_limiter_window() -> None:
    now = [0.0]
    lim = AttemptLimiter(max_attempts=3, window_s=300.0, clock=lambda: now[0])
    for t in (0.0, 1.0, 2.0):
        now[0] = t
        assert lim.wait_s() == 0.0
        lim.record()
    assert lim.wait_s() == pytest.approx(298.0)  # the 4th must wait until the 1st leaves the window
    now[0] = 300.0
    assert lim.wait_s() == 0.0


def test_fault_spec_parses_and_rejects() -> None:
    f = Faults.parse("drop=0.1, dup=0.05,gap=120:5,gap=300,disconnect=7,shutdown=9,stall=11,"
                     "rest429=0.5,rest_timeout_s=2,seed=4")
    assert f.drop == 0.1 and f.dup == 0.05 and f.gaps == ((120, 5), (300, 1))
    assert f.disconnect == (7,) and f.shutdown == (9,) and f.stall == (11,) and f.rest429 == 0.5
    assert f.rest_timeout_s == 2.0 and f.seed == 4
    assert Faults.parse("") == Faults() and Faults().describe() == "none"
    for bad in ("drop=2", "nope=1", "drop", "gap=x:1"):
        with pytest.raises(ConfigError, match="--faults item"):
            Faults.parse(bad)
