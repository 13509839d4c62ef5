"""The Binance kline feed: a sans-I/O sequencer and the asyncio driver around it.

- ``sequencer.Sequencer``: kline events and REST pages in; bars (each once, in order, never past the
  exchange's current minute), gaps and "fetch this range" requests out. No sockets, clock or asyncio.
- ``client.FeedClient(cfg: FeedConfig, *, warmup_bars=N)``: the live ``BarSource``. ``async for bar
  in client`` yields closed :class:`~barsignal.features.bar.Bar` (source ``"ws"`` or ``"rest"``),
  gap-free across reconnects; ``client.stats`` (:class:`sequencer.FeedStats`) holds the counters;
  ``client.ready`` says the warm-up is done (the daemon can signal).
  One connection per up to ``[feed] max_streams_per_connection`` symbols (``client.links``), each with
  its own reconnect/rollover/stale lifecycle.
- ``clock.ExchangeClock``: the exchange's clock fitted on the local one (rate and offset from one vote
  per symbol per quarter second); its limit is what the sequencer may believe.
- ``backoff``: capped exponential backoff with jitter, the connection-attempt limit, the REST gate
  (Retry-After, 418 bans) and the REST weight budget (``WeightLimiter``).

Binance's wire format itself lives in ``barsignal.daemon.binance``; the ``feed serve`` simulator in
``barsignal.sim``.
"""
