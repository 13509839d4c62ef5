"""``barsignal feed serve``: a local Binance-compatible kline feed (websocket + REST) for one or many symbols."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from barsignal.sim.series import Series


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("feed", help="local Binance-compatible kline feed for tests and offline demos")
    fsub = p.add_subparsers(dest="feed_command", metavar="SUBCOMMAND")
    s = fsub.add_parser(
        "serve", help="serve historical bars as Binance's kline streams, /api/v3/klines and exchangeInfo",
        description="Serve bar files (Binance CSV/zip, freqtrade JSON, Parquet) of one or many symbols, all "
                    "on one clock, as Binance's kline streams (ws://HOST:PORT/stream?streams=btcusdt@kline_1m, "
                    "/ws/btcusdt@kline_1m, or /ws with SUBSCRIBE) and /api/v3/klines, /api/v3/exchangeInfo on "
                    "the same port. Prints one JSON line with ws_url, rest_url and symbols when ready.",
    )
    # bare FILEs: the older spelling of --bars (one symbol's files, named by --symbol)
    s.add_argument("files", nargs="*", metavar="FILE", help=argparse.SUPPRESS)
    s.add_argument("--bars", nargs="+", action="extend", default=[], metavar="[SYMBOL=]FILE",
                   help="each symbol's bar files, SYMBOL=FILE[,FILE...] (several symbols: several of them); "
                        "without SYMBOL= the symbol comes from the file name (ETH_USDT-1m.json -> ETHUSDT)")
    s.add_argument("--copies", type=int, default=0, metavar="N",
                   help="serve N symbols for load tests: the given ones, then copies of them shifted in time "
                        "(ETH1USDT carries ETHUSDT's bars --copy-shift bars later), cut to their common window")
    s.add_argument("--copy-shift", type=int, default=1000, help="bars between successive copies (default 1000)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0, help="0 = any free port (printed when ready)")
    s.add_argument("--speed", type=float, default=1.0, help="bars per second of wall time (default 1)")
    s.add_argument("--symbol", default="BTCUSDT", help=argparse.SUPPRESS)  # the symbol of bare FILEs
    s.add_argument("--start-index", type=int, default=0,
                   help="ticks of the shared clock before this index count as already closed (REST serves them)")
    s.add_argument("--end-index", type=int, default=None, help="stop producing bars at this tick")
    s.add_argument("--intrabar", type=int, default=None,
                   help="N evenly spaced x:false updates per bar before the closed frame, instead of Binance's "
                        "cadence (fewer frames at high --speed)")
    s.add_argument("--update-ms", type=int, default=None,
                   help="an x:false update every MS of exchange time (default, as Binance: 2000; at --speed S "
                        "that is 29*S updates a second per symbol)")
    s.add_argument("--jitter-ms", type=int, default=None,
                   help="move each update (and its E) by up to MS, and delay closed frames' E by up to MS "
                        "(default 500 with the update cadence, 0 with --intrabar)")
    s.add_argument("--close-spread-ms", type=float, default=0.0, metavar="MS",
                   help="send each minute's closed frames evenly over MS ms of wall time in a random symbol "
                        "order, as the real feed spreads them (default 0: all at once)")
    s.add_argument("--faults", default="", help="fault spec, e.g. drop=0.05,gap=120:5,disconnect=200 "
                                                "(symbols=ETHUSDT+SOLUSDT narrows frame and REST faults)")
    s.add_argument("--ping-interval", type=float, default=20.0, help="server ping period in seconds")
    s.add_argument("--max-messages-per-s", type=int, default=5,
                   help="incoming messages a connection may send a second before it is closed (Binance: 5)")
    s.add_argument("--weight-limit", type=int, default=6000,
                   help="REST request weight per minute before 429 (Binance: 6000; 0 = no limit)")
    s.add_argument("--exit-at-end", action="store_true", help="exit once every bar has closed")
    s.add_argument("--wait-for-subscriber", action="store_true",
                   help="hold the clock at --start-index until a client subscribes to a stream (a demo or test "
                        "whose client starts later sees every bar streamed)")
    s.set_defaults(func=_serve)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _series(args: argparse.Namespace) -> list[Series]:
    from barsignal.data import load_many
    from barsignal.data.intervals import INTERVAL_MS, check_interval
    from barsignal.errors import ConfigError
    from barsignal.sim.series import Series, common_window, shifted_copies, symbol_from_path

    specs: list[tuple[str, list[str]]] = []
    if args.files:
        specs.append((args.symbol.upper(), list(args.files)))
    for spec in args.bars:
        sym, sep, files = spec.partition("=")
        if not sep:
            sym, files = "", spec
        paths = [f for f in files.split(",") if f]
        if not paths:
            raise ConfigError(f"feed serve: --bars {spec!r} names no file; use SYMBOL=FILE")
        if not sep:
            sym = symbol_from_path(paths[0]) or ""
            if not sym:
                raise ConfigError(f"feed serve: --bars {spec!r}: cannot tell the symbol from the file name; "
                                  "write it as SYMBOL=FILE")
        specs.append((sym.upper(), paths))
    if not specs:
        raise ConfigError("feed serve: no bars given; pass --bars SYMBOL=FILE (repeat for more symbols)")
    out = []
    for sym, paths in specs:
        loaded = load_many(paths)
        check_interval(loaded.frame.open_time, INTERVAL_MS["1m"], f"feed serve: {', '.join(paths)}", "the feed")
        try:
            out.append(Series(sym, loaded.frame, loaded.extra))
        except ValueError as exc:
            raise ConfigError(f"feed serve: {exc}") from None
    if args.copies > len(out):
        first, last = common_window(out)
        window = (last - first) // 60_000 + 1  # at most: the copies check it is gap-free
        rows = window - (-(-args.copies // len(out)) - 1) * args.copy_shift
        if rows < 2:
            raise ConfigError(f"feed serve: --copies {args.copies}: the files share {window} bars, too few for "
                              f"copies {args.copy_shift} bars apart; lower --copy-shift")
        try:
            out = shifted_copies(out, args.copies, rows=rows, shift=args.copy_shift)
        except ValueError as exc:
            raise ConfigError(f"feed serve: --copies: {exc}") from None
    return out


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal
    import sys

    import orjson

    from barsignal.errors import ConfigError
    from barsignal.log import get_logger
    from barsignal.sim.faults import Faults
    from barsignal.sim.simulator import FeedSimulator

    log = get_logger(__name__)
    faults = Faults.parse(args.faults)
    series = _series(args)
    update_ms = args.update_ms if args.update_ms is not None or args.intrabar is not None else 2000
    jitter_ms = args.jitter_ms if args.jitter_ms is not None else (500 if update_ms is not None else 0)
    try:
        sim = FeedSimulator(
            series, host=args.host, port=args.port, speed=args.speed, start_index=args.start_index,
            end_index=args.end_index, intrabar=args.intrabar or 0, update_ms=update_ms, jitter_ms=jitter_ms,
            faults=faults, ping_interval_s=args.ping_interval or None, max_incoming_per_s=args.max_messages_per_s,
            weight_limit=args.weight_limit, close_spread_ms=args.close_spread_ms,
            wait_for_subscriber=args.wait_for_subscriber,
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
                                       "bars": len(sim.times), "symbols": sim.symbols, "update_ms": update_ms,
                                       "intrabar": None if update_ms else args.intrabar,
                                       "jitter_ms": jitter_ms}).decode() + "\n")
        sys.stdout.flush()
        waits = [asyncio.create_task(stop.wait())]
        if args.exit_at_end:
            waits.append(asyncio.create_task(sim.done.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        await sim.stop()
        log.info("feed_serve.stopped", closed_upto=sim.closed_upto, connections=sim.connections_total,
                 rest_requests=sim.rest_requests, frames_sent=sim.frames_sent, rate_limited=sim.rate_limited)
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
