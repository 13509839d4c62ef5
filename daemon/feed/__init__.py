"""The Binance kline feed: websocket client with REST backfill, and the ``feed serve`` simulator.

``client.FeedClient`` is the live :class:`BarSource`; ``simulator.FeedSimulator`` serves
historical bars as Binance's kline stream (and ``/api/v3/klines``) on loopback.
"""
