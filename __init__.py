"""barsignal: a real-time trading-signal daemon for Binance spot klines.

The repository root is this package; its subpackages are the code folders:
``features`` (pure bar features), ``model`` and ``compression`` (torch, offline),
``engine`` (runs artifacts without torch) and ``daemon`` (all I/O). See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
