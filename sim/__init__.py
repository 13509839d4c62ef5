"""The Binance-like kline server behind ``barsignal feed serve``: many symbols on one clock
(``simulator``), Binance's stream control protocol (``protocol``), exchangeInfo (``exchange_info``),
one symbol's bars as frames and rows (``series``), injected faults (``faults``).

A test and demo tool; never on the daemon's run path.
"""
