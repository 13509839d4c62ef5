"""Binance kline interval names and their lengths in milliseconds; the interval of a bar series."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from barsignal.errors import ConfigError

# Binance kline interval names -> length in ms (months are not fixed-length and are left out).
INTERVAL_MS: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": 86_400_000, "3d": 259_200_000, "1w": 604_800_000,
}


def interval_ms(name: str) -> int:
    """Length of a Binance interval such as ``"1m"`` in milliseconds; ValueError if unknown."""
    try:
        return INTERVAL_MS[name]
    except KeyError:
        raise ValueError(f"unknown kline interval {name!r}; use one of {', '.join(INTERVAL_MS)}") from None


def interval_name(ms: int) -> str | None:
    """The Binance name of an interval length, or None."""
    for name, value in INTERVAL_MS.items():
        if value == ms:
            return name
    return None


def common_step(open_times: Sequence[int] | np.ndarray) -> int | None:
    """The interval of a series: the most common step between consecutive open times, sorted (what
    ``barsignal data inspect`` reports; gaps do not change it). None for fewer than two bars."""
    t = np.sort(np.asarray(open_times, dtype=np.int64))
    d = np.diff(t)
    d = d[d > 0]
    if not len(d):
        return None
    steps, counts = np.unique(d, return_counts=True)
    return int(steps[np.argmax(counts)])


class IntervalMismatch(ConfigError):
    """Bars of another interval than the model's (or the feed's): a usage error, exit 2."""


def check_interval(open_times: Sequence[int] | np.ndarray, expected_ms: int, source: str,
                   expected_what: str = "the model") -> None:
    """Raise :class:`IntervalMismatch` naming both intervals when ``open_times`` are not ``expected_ms``
    apart (their :func:`common_step`); a series of one bar or none passes."""
    got = common_step(open_times)
    if got is None or got == expected_ms:
        return
    raise IntervalMismatch(
        f"{source}: the bars are {interval_name(got) or '?'} bars ({got} ms apart), but {expected_what} "
        f"works on {interval_name(expected_ms) or '?'} bars ({expected_ms} ms); give it "
        f"{interval_name(expected_ms) or f'{expected_ms} ms'} bars (barsignal data inspect shows a file's interval)")
