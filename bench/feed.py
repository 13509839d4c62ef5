"""Kline feed speed: frame decoding, and bars through the websocket client from a loopback feed.

``decode``: per-frame time of ``binance.ws.decode`` on the real recorded BTCUSDT frame and on
closed frames built from real bars (typed fast path), and of the field-by-field checked path.
``loopback``: ``feed serve`` in-process at ``--speed`` bars per second, the FeedClient reading
it; figures are the receive -> bar latency inside the client (frame off the socket to ``Bar``
yielded) and the delivered bars per second. Every bar must arrive exactly once.
``serve`` (with ``--symbols N``): the server alone, in its own process, playing N symbols (the ten
real 2023 files, then copies of them shifted in time: ``sim.series.shifted_copies``) at
``--serve-speed`` bars per second to raw websocket readers subscribed over ``/ws``. Figures: frames
per second delivered, whether it kept pace (tick period seen / wanted), the spread of each tick's
closed frames (first to last symbol, as received) and the server's CPU share.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from barsignal.bench import SHARED
from barsignal.cli import conventions as conv


def add_arguments(p: argparse.ArgumentParser) -> None:
    default = SHARED / "data"
    p.add_argument("--data-dir", default=str(default), metavar="DIR",
                   help="the shared data directory (default: ../shared/data)")
    conv.alias(p, "--data", "data_dir", metavar="DIR")
    conv.add_bars(p, "bar files encoded and streamed (default: the 2021-11-11 spot 1m file in the data directory)")
    p.add_argument("--n-bars", type=int, default=3000, help="bars to stream in the loopback case")
    p.add_argument("--speed", type=float, default=500.0, help="loopback feed speed, bars per second")
    p.add_argument("--symbols", type=int, default=0, help="also measure the server alone with N symbols")
    p.add_argument("--serve-speed", type=float, default=2.0, help="bars per second in the --symbols case")
    p.add_argument("--serve-bars", type=int, default=60, help="ticks to play in the --symbols case")
    p.add_argument("--intrabar", type=int, default=2, help="x:false updates per bar in the --symbols case")
    conv.add_json(p, "the figures")


def _pct(ns: list[int]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ns, dtype=np.float64) / 1000.0
    return {"p50_us": round(float(np.percentile(a, 50)), 2), "p99_us": round(float(np.percentile(a, 99)), 2),
            "n": len(ns)}


def run(args: argparse.Namespace) -> int:
    import asyncio
    import time

    import orjson

    from barsignal.daemon.binance import ws
    from barsignal.data import load_many
    from barsignal.errors import ConfigError
    from barsignal.sim.simulator import FeedSimulator

    conv.count_from_bars(args, "n_bars", "--n-bars")
    data = Path(args.data_dir)
    spot = args.bars or sorted((data / "klines" / "spot_1m").glob("*2021-11-11*.json"))[:1]
    sample = data / "wire" / "real_kline_ws_samples.jsonl"
    if not spot or not sample.is_file():
        raise ConfigError(f"{data}: real klines or wire samples not found; pass --data-dir DIR")
    loaded = load_many(spot)
    real = orjson.loads(sample.read_text().splitlines()[0])["raw"].encode()
    sim = FeedSimulator(loaded.frame)
    frames = [ws.encode_kline(sim.event(i)) for i in range(2000)]
    syms = frozenset({"BTCUSDT"})
    perf = time.perf_counter_ns
    out: dict[str, object] = {}
    for name, fn, batch in (("decode real frame", lambda f: ws.decode(f, symbols=syms), [real] * 20000),
                            ("decode closed frames from real bars", lambda f: ws.decode(f, symbols=syms),
                             frames * 10),
                            ("checked path only", lambda f: ws._slow(f, syms), frames * 10)):
        ns = []
        for f in batch:
            t0 = perf()
            fn(f)
            ns.append(perf() - t0)
        out[name] = _pct(ns)

    async def loopback() -> dict[str, object]:
        from barsignal.daemon.config import FeedConfig
        from barsignal.daemon.feed.client import FeedClient

        # 200 bars served past the n read: the exchange clock is fitted on frames spread over time, and
        # a stream that ended before it is known would hold its last bars
        start, n = 1000, args.n_bars
        async with FeedSimulator(loaded.frame, speed=args.speed, start_index=start, end_index=start + n + 200,
                                 intrabar=1) as s:
            cfg = FeedConfig(ws_url=s.ws_url, rest_url=s.rest_url, reconnect_min_s=0.05, reconnect_max_s=0.5)
            client = FeedClient(cfg, warmup_bars=0, stale_after_s=10)
            lat, got = [], []
            t0 = time.perf_counter()
            async for bar in client:
                if bar.source == "ws":
                    lat.append(perf() - client.stats.last_recv_ns)
                got.append(bar.open_time)
                if len(got) >= n:
                    break
            wall = time.perf_counter() - t0
        ok = got == sorted(set(got)) and len(got) == n
        return {"receive_to_bar": _pct(lat), "bars_per_s": round(n / wall, 1), "bars": n,
                "feed_speed": args.speed, "every_bar_once_in_order": ok, "stats": {
                    k: getattr(client.stats, k) for k in ("bars_ws", "bars_rest", "backfilled", "reconnects",
                                                          "bad_frames", "duplicates", "late")}}

    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        out["loopback"] = runner.run(loopback())
        if args.symbols:
            out["serve"] = runner.run(_serve_bench(data, args))
    if args.json:
        print(orjson.dumps(out).decode())
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    ok = out["loopback"]["every_bar_once_in_order"]  # type: ignore[index]
    if args.symbols:
        ok = ok and out["serve"]["complete_ticks"] > 0  # type: ignore[index]
    return 0 if ok else 1


REAL_2023 = ("klines/spot_1m/BTC_USDT-1m_2023-03-16_2023-05-01.json",
             *(f"multi/spot_1m/{b}_USDT-1m.json" for b in ("ETH", "SOL", "ADA", "DOGE", "XRP", "DOT", "LINK",
                                                          "LTC", "AVAX")))
_WARM_TICKS = 5  # ticks played before measuring, while the readers connect and subscribe


def _serve_child(conn, data: str, n: int, speed: float, bars: int, intrabar: int) -> None:  # type: ignore[no-untyped-def]
    """The server process: N symbols on one clock, reports its CPU seconds when every tick has closed."""
    import asyncio
    import time

    from barsignal.data import load
    from barsignal.sim.series import Series, common_window, shifted_copies
    from barsignal.sim.simulator import FeedSimulator

    real = []
    for rel in REAL_2023:
        ld = load(Path(data) / rel)
        real.append(Series(Path(rel).name.split("-")[0].replace("_", ""), ld.frame))
    rows = bars + _WARM_TICKS + 1
    copies = -(-n // len(real))
    first, last = common_window(real)  # 43,198 gap-free bars for the ten 2023 files
    shift = min(1000, ((last - first) // 60_000 + 1 - rows) // max(1, copies - 1))
    series = shifted_copies(real, n, rows=rows, shift=shift)

    async def main() -> None:
        sim = FeedSimulator(series, speed=speed, intrabar=intrabar, ping_interval_s=None, close_delay_ms=0,
                            end_index=bars + _WARM_TICKS, max_incoming_per_s=1000)
        await sim.start()
        conn.send(sim.port)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await sim.done.wait()
        conn.send({"cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - t0,
                   "frames_sent": sim.frames_sent})
        await sim.stop()

    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


async def _serve_bench(data: Path, args: argparse.Namespace) -> dict[str, object]:
    import asyncio
    import multiprocessing as mp
    import time

    import numpy as np
    import orjson
    from websockets.asyncio.client import connect

    n, speed, bars = args.symbols, args.serve_speed, args.serve_bars
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_serve_child, args=(there, str(data), n, speed, bars, args.intrabar), daemon=True)
    proc.start()
    port = await asyncio.to_thread(here.recv)
    closed: dict[int, list[float]] = {}
    frames = [0]
    perf = time.perf_counter

    async def reader(chunk: list[str]) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws", proxy=None, max_size=1 << 20, max_queue=None) as ws:
            await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": chunk, "id": 1}).decode())
            while True:
                msg = await ws.recv(decode=False)
                frames[0] += 1
                if b'"x":true' in msg:
                    closed.setdefault(orjson.loads(msg)["k"]["t"], []).append(perf())

    from barsignal.sim.series import split_symbol

    names = []
    for c in range(-(-n // len(REAL_2023))):
        for rel in REAL_2023:
            sym = Path(rel).name.split("-")[0].replace("_", "")
            base, quote = split_symbol(sym)
            names.append((sym if c == 0 else f"{base}{c}{quote}").lower() + "@kline_1m")
    streams = names[:n]
    tasks = [asyncio.create_task(reader(streams[i:i + 1024])) for i in range(0, n, 1024)]
    try:
        report = await asyncio.wait_for(asyncio.to_thread(here.recv), bars / speed + 60)
        await asyncio.sleep(0.2)  # the last frames in flight
    finally:
        for t in tasks:
            t.cancel()
        proc.join(10)
    ticks = sorted(closed)[_WARM_TICKS:]
    full = [t for t in ticks if len(closed[t]) == n]
    spread = [1000 * (max(closed[t]) - min(closed[t])) for t in full]
    firsts = [min(closed[t]) for t in full]
    period = float(np.mean(np.diff(firsts))) if len(firsts) > 1 else float("nan")
    wall = report["wall_s"]
    return {"symbols": n, "speed": speed, "intrabar": args.intrabar, "ticks": len(ticks), "complete_ticks": len(full),
            "closed_frames_per_s": round(n * speed, 1), "frames_per_s": round(report["frames_sent"] / wall, 1),
            "kept_pace": round((1 / speed) / period, 3) if period == period else None,
            "tick_spread_ms": {"p50": round(float(np.percentile(spread, 50)), 2),
                               "p99": round(float(np.percentile(spread, 99)), 2)} if spread else None,
            "server_cpu_share": round(report["cpu_s"] / wall, 3), "frames_received": frames[0]}
