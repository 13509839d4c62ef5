"""``barsignal feed serve``: a local Binance-compatible kline feed (websocket + /api/v3/klines)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("feed", help="local Binance-compatible kline feed for tests and offline demos")
    fsub = p.add_subparsers(dest="feed_command", metavar="SUBCOMMAND")
    s = fsub.add_parser(
        "serve", help="serve historical bars as Binance's kline stream and /api/v3/klines",
        description="Serve bar files (Binance CSV/zip, freqtrade JSON, Parquet) as Binance's combined "
                    "kline stream (ws://HOST:PORT/stream?streams=btcusdt@kline_1m) and /api/v3/klines "
                    "on the same port. Prints one JSON line with ws_url and rest_url when ready.",
    )
    s.add_argument("bars", nargs="+", metavar="BARS", help="bar files, loaded as one series")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0, help="0 = any free port (printed when ready)")
    s.add_argument("--speed", type=float, default=1.0, help="bars per second of wall time (default 1)")
    s.add_argument("--symbol", default="BTCUSDT")
    s.add_argument("--start-index", type=int, default=0,
                   help="bars before this index count as already closed (REST serves them)")
    s.add_argument("--end-index", type=int, default=None, help="stop producing bars at this index")
    s.add_argument("--intrabar", type=int, default=2, help="x:false updates per bar before the closed frame")
    s.add_argument("--faults", default="", help="fault spec, e.g. drop=0.05,gap=120:5,disconnect=200")
    s.add_argument("--ping-interval", type=float, default=20.0, help="server ping period in seconds")
    s.add_argument("--exit-at-end", action="store_true", help="exit once every bar has closed")
    s.set_defaults(func=_serve)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal
    import sys

    import orjson

    from barsignal.data import load_many
    from barsignal.errors import ConfigError
    from barsignal.log import get_logger
    from barsignal.sim.faults import Faults
    from barsignal.sim.simulator import FeedSimulator

    log = get_logger(__name__)
    faults = Faults.parse(args.faults)
    loaded = load_many(args.bars)
    try:
        sim = FeedSimulator(
            loaded.frame, symbol=args.symbol, host=args.host, port=args.port, speed=args.speed,
            start_index=args.start_index, end_index=args.end_index, intrabar=args.intrabar, faults=faults,
            ping_interval_s=args.ping_interval or None, extra=loaded.extra,
        )
    except ValueError as exc:
        raise ConfigError(f"feed serve: {exc}") from None

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await sim.start()
        except OSError as exc:
            raise ConfigError(f"feed serve: cannot listen on {args.host}:{args.port}: {exc}") from None
        sys.stdout.write(orjson.dumps({"ws_url": sim.ws_url, "rest_url": sim.rest_url, "port": sim.port,
                                       "bars": len(loaded.frame)}).decode() + "\n")
        sys.stdout.flush()
        waits = [asyncio.create_task(stop.wait())]
        if args.exit_at_end:
            waits.append(asyncio.create_task(sim.done.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        await sim.stop()
        log.info("feed_serve.stopped", closed_upto=sim.closed_upto, connections=sim.connections_total,
                 rest_requests=sim.rest_requests)
        return 0

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main())


def _loop_factory():  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        import asyncio

        return asyncio.new_event_loop
    return uvloop.new_event_loop
