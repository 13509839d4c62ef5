"""The Binance kline feed: websocket client with REST backfill, and the ``feed serve`` simulator.

- ``client.FeedClient(cfg: FeedConfig, *, warmup_bars=N)``: the live ``BarSource``. ``async for bar
  in client`` yields closed :class:`~barsignal.features.bar.Bar` (source ``"ws"`` or ``"rest"``),
  gap-free across reconnects; ``client.stats`` (:class:`client.FeedStats`) holds the counters.
- ``simulator.FeedSimulator(frame, ...)``: historical bars served as Binance's kline stream and
  ``/api/v3/klines`` on one loopback port (``barsignal feed serve`` on the command line).
- ``faults.Faults.parse(spec)``: what the simulator breaks on purpose.
- ``backoff``: capped exponential backoff with jitter, and the connection-attempt limit.

Binance's wire format itself lives in ``barsignal.daemon.binance.ws``.
"""
