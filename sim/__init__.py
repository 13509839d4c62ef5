"""The Binance-like kline server behind ``barsignal feed serve``.

A test and demo tool; never on the daemon's run path.
"""
