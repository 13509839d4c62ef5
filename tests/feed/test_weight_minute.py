"""The REST weight minute is the exchange's (X-MBX-USED-WEIGHT-1M counts Binance's minutes): the
``Date`` headers measure the offset of its clock to ours, so a local clock 30 s off still ends the
server's minute when the server does."""

from __future__ import annotations

from barsignal.daemon.feed.backoff import KLINES_WEIGHT, WeightLimiter

MIN0 = 28_000_000 * 60  # the start of some minute, unix seconds


def _limiter(local_offset_s: float) -> tuple[WeightLimiter, list[float]]:
    """A limiter whose local wall clock reads ``local_offset_s`` off the exchange's (``t[0]``: exchange time)."""
    t = [float(MIN0 + 10)]
    lim = WeightLimiter(100, clock=lambda: t[0], wall=lambda: t[0] + local_offset_s)
    return lim, t


def _fill_the_server_minute(lim: WeightLimiter, t: list[float], date: bool) -> None:
    """Another client used 90 of the server's 100 this minute; we spend and ask."""
    lim.spend(KLINES_WEIGHT)
    lim.observe(92, int(t[0] * 1000) if date else None)


def test_the_minute_ends_when_the_exchange_says_not_when_the_local_clock_does() -> None:
    for skew in (-30.0, 0.0, 30.0, 45.0):
        lim, t = _limiter(skew)
        _fill_the_server_minute(lim, t, date=True)
        assert abs(lim.exchange_wall() - t[0]) <= 0.5  # the Date header measured the local clock's error
        wait = lim.wait_s(10)  # 92 + 10 > 100: the server's minute must end first
        assert 49.0 <= wait <= 51.0, (skew, wait)  # 50 s of the exchange's minute were left, whatever the skew
        t[0] += wait
        assert lim.wait_s(KLINES_WEIGHT) == 0.0  # a new server minute: the other client's weight is gone


def test_without_date_headers_the_local_clock_is_all_there_is() -> None:
    """The check above fails for a skewed clock when the Date is not used: it waits for the LOCAL minute."""
    lim, t = _limiter(30.0)
    _fill_the_server_minute(lim, t, date=False)
    assert 19.0 <= lim.wait_s(10) <= 21.0  # local clock at :40, so it waits 20 s: 30 s short of the server's minute


def test_a_replaying_simulators_date_is_not_a_clock_error() -> None:
    """A Date years away (a simulator replaying history) is not taken as the local clock's error."""
    lim, t = _limiter(0.0)
    lim.observe(10, int((t[0] - 3 * 365 * 86_400) * 1000))
    assert lim.exchange_wall() == t[0]
