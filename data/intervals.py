"""Binance kline interval names and their lengths in milliseconds."""

from __future__ import annotations

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
