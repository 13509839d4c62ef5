"""Everything that knows Binance's live wire format lives here; the rest of barsignal sees ``Bar``.

``ws``: websocket kline frames. ``rest``: REST klines over aiohttp (backfill) and the pure helpers
a kline server needs. The public-data dumps and interval names are in ``barsignal.data``.
"""

from __future__ import annotations

from barsignal.data.intervals import INTERVAL_MS, interval_ms, interval_name

__all__ = ["INTERVAL_MS", "interval_ms", "interval_name"]
