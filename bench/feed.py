"""Kline feed speed: frame decoding, and bars through the websocket client from a loopback feed.

``decode``: per-frame time of ``binance.ws.decode`` on the real recorded BTCUSDT frame and on
closed frames built from real bars (typed fast path), and of the field-by-field checked path.
``loopback``: ``feed serve`` in-process at ``--speed`` bars per second, the FeedClient reading
it; figures are the receive -> bar latency inside the client (frame off the socket to ``Bar``
yielded) and the delivered bars per second. Every bar must arrive exactly once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from barsignal.bench import SHARED


def add_arguments(p: argparse.ArgumentParser) -> None:
    default = SHARED / "data"
    p.add_argument("--data", default=str(default), help="the shared data directory (default: ../shared/data)")
    p.add_argument("--bars", type=int, default=3000, help="bars to stream in the loopback case")
    p.add_argument("--speed", type=float, default=500.0, help="loopback feed speed, bars per second")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")


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
    from barsignal.data import load
    from barsignal.errors import ConfigError
    from barsignal.sim.simulator import FeedSimulator

    data = Path(args.data)
    spot = sorted((data / "klines" / "spot_1m").glob("*2021-11-11*.json"))
    sample = data / "wire" / "real_kline_ws_samples.jsonl"
    if not spot or not sample.is_file():
        raise ConfigError(f"{data}: real klines or wire samples not found; pass --data DIR")
    loaded = load(spot[0])
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

        start, n = 1000, args.bars
        async with FeedSimulator(loaded.frame, speed=args.speed, start_index=start, end_index=start + n + 5,
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
    if args.json:
        print(orjson.dumps(out).decode())
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0 if out["loopback"]["every_bar_once_in_order"] else 1  # type: ignore[index]
