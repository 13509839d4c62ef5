"""Live daemon on a loopback feed at high speed: tick-to-signal p50/p99, start-to-READY, RSS.

The real ``Daemon`` (features, scorer, rule, outbox, bar record, sinks) reads a real ``FeedSimulator``
on 127.0.0.1 serving real bars. Tick-to-signal runs from the closing frame's arrival at the feed
client to the signal stored in the outbox and handed to every sink queue. Sent-to-signal runs from
the simulator handing that frame to the kernel: it adds the loopback, the websockets parser, the
loop's wake-up and any keep-warm rehearsal the frame waited behind. Start-to-READY runs from the start of model
loading to READY, minus the time spent in REST requests (the warm-up fetch). RSS is the process
peak (it includes the in-process feed simulator: an upper bound for the daemon alone).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.bench import SHARED
from barsignal.cli import conventions as conv


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-bars", type=int, default=3000, help="live bars to stream after the warm-up")
    p.add_argument("--speed", type=float, default=200.0, help="bars per second of wall time")
    conv.add_artifact(p, "model artifact (default: bundled)", default=None)
    p.add_argument("--backend", default="onnxruntime", choices=["auto", "onnxruntime", "tensorrt", "torch"])
    conv.add_bars(p, "bar files (default: ../shared/data 2021-11 spot 1m)", aliases=("--data",))
    p.add_argument("--sinks", default="jsonl", help="comma-separated sinks (default: jsonl)")
    p.add_argument("--keep-warm-ms", type=float, default=None,
                   help="[engine] keep_warm_ms (default: the config default)")
    p.add_argument("--compare-keep-warm", type=int, default=0, metavar="ROUNDS",
                   help="alternate keep-warm off / on for ROUNDS rounds each and report the ratios")
    p.add_argument("--symbols", type=int, default=0, metavar="N",
                   help="N symbols in one daemon: the ten real 2023 files (../shared/data multi/spot_1m + BTC), "
                   "then copies of them shifted in time (sim.series.shifted_copies); --n-bars minutes are streamed "
                   "(default speed 1 minute per 2 s) and the time from each minute's last closed frame to its last "
                   "symbol's signal is reported")
    p.add_argument("--close-spread-ms", type=float, default=0.0, metavar="MS",
                   help="with --symbols: the simulator sends each minute's closed frames evenly over MS ms of "
                   "wall time in a random symbol order (default 0: all at once, the worst case)")
    conv.add_json(p, "the figures")


def _default_data() -> Path:
    shared = SHARED
    files = sorted((shared / "data" / "klines" / "spot_1m").glob("*2021-11-11*.json"))
    if not files:
        from barsignal.errors import ConfigError

        raise ConfigError(f"no bar data under {shared}/data/klines/spot_1m; pass --bars FILE")
    return files[0]


def run(args: argparse.Namespace) -> int:
    conv.count_from_bars(args, "n_bars", "--n-bars")
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    if args.symbols:
        with asyncio.Runner(loop_factory=factory) as runner:
            many = runner.run(_bench_many(args))
        if args.json:
            conv.print_json(_summary_many(many))
        else:
            _print_many(args, many)
        return 0
    if not args.compare_keep_warm:
        with asyncio.Runner(loop_factory=factory) as runner:
            res = runner.run(_bench(args, args.keep_warm_ms))
        if args.json:
            conv.print_json(_summary(args, res))
        else:
            _print(args, res)
        return 0
    p50: dict[float, list[float]] = {0.0: [], args.keep_warm_ms or 100.0: []}
    rounds = []
    for r in range(args.compare_keep_warm):
        for kw in p50:
            with asyncio.Runner(loop_factory=factory) as runner:
                res = runner.run(_bench(args, kw))
            rounds.append({"round": r + 1, **_summary(args, res)})
            if not args.json:
                print(f"round {r + 1}, keep_warm_ms = {kw:g}:")
                _print(args, res)
            p50[kw].append(float(np.percentile(res["tick_to_signal_s"], 50)) * 1e3)
    off, on = (np.median(v) for v in p50.values())
    if args.json:
        conv.print_json({"rounds": rounds, "tick_to_signal_p50_ms_off": off, "tick_to_signal_p50_ms_on": on,
                         "off_over_on": off / on})
        return 0
    print(f"keep-warm off / on, median of {args.compare_keep_warm} rounds' tick-to-signal p50: "
          f"{off:.3f} / {on:.3f} ms = {off / on:.2f}x")
    return 0


def _pcts(values: Any, scale: float = 1.0) -> dict[str, float] | None:
    """p50, p99, max and n of ``values`` times ``scale``; None when there are none."""
    a = np.asarray(values, dtype=np.float64) * scale
    if not len(a):
        return None
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "n": len(a)}


def _summary(args: argparse.Namespace, res: dict) -> dict[str, Any]:
    """The figures ``_print`` shows, as one JSON-ready dict."""
    return {"signals": res["signals"], "ws_bars": res["ws_bars"], "speed": args.speed, "backend": res["backend"],
            "sinks": args.sinks, "keep_warm_ms": res["keep_warm_ms"],
            "tick_to_signal_ms": _pcts(res["tick_to_signal_s"], 1e3),
            "sent_to_signal_ms": _pcts(res.get("sent_to_signal_us", ()), 1e-3),
            "wire_to_frame_us": _pcts(res.get("wire_to_frame_us", ())),
            "parts_us": {k: _pcts(v) for k, v in res["parts_us"].items()}, "keep_warm": res.get("keep_warm"),
            "ready_s": res["ready_s"], "rest_s": res["rest_s"], "ready_total_s": res["ready_total_s"],
            "rss_mb": res["rss_mb"]}


def _summary_many(res: dict) -> dict[str, Any]:
    """The figures ``_print_many`` shows, as one JSON-ready dict."""
    out = {k: v for k, v in res.items() if k != "last_frame_to_last_signal_ms"}
    out["last_frame_to_last_signal_ms"] = _pcts(res["last_frame_to_last_signal_ms"])
    return out


def _print(args: argparse.Namespace, res: dict) -> None:
    lat = np.array(res["tick_to_signal_s"]) * 1e3
    print(f"bench live: {res['signals']} signals from {res['ws_bars']} live bars at {args.speed:g} bars/s "
          f"(backend {res['backend']}, sinks {args.sinks}, keep_warm_ms {res['keep_warm_ms']:g})")
    if len(lat):
        print(f"  tick-to-signal  p50 {np.percentile(lat, 50):.3f} ms  p99 {np.percentile(lat, 99):.3f} ms  "
              f"max {lat.max():.3f} ms  (n={len(lat)})")
    sent = np.array(res.get("sent_to_signal_us", ()))
    if len(sent):
        wire = np.array(res["wire_to_frame_us"])
        print(f"  sent-to-signal  p50 {np.percentile(sent, 50) / 1e3:.3f} ms  "
              f"p99 {np.percentile(sent, 99) / 1e3:.3f} ms  (from the closed frame handed to the kernel; "
              f"before the frame reaches the feed client: p50 {np.percentile(wire, 50):.1f} us, "
              f"p99 {np.percentile(wire, 99):.1f} us)")
    for k in ("recv_to_bar", "features", "score", "emit", "store"):
        v = res["parts_us"].get(k)
        if v is not None and len(v):
            print(f"  {k:<15} p50 {np.percentile(v, 50):.1f} us  p99 {np.percentile(v, 99):.1f} us")
    kw = res.get("keep_warm")
    if kw:
        print(f"  keep-warm       {kw['calls']} rehearsals, {kw['busy_s']:.2f} s busy "
              f"({kw['busy_s'] / res['wall_s']:.0%} of the run's wall time)")
    print(f"  start-to-READY  {res['ready_s']:.3f} s excluding REST ({res['rest_s']:.3f} s REST, "
          f"{res['ready_total_s']:.3f} s in all)")
    print(f"  peak RSS        {res['rss_mb']:.1f} MB")


async def _bench(args: argparse.Namespace, keep_warm_ms: float | None) -> dict:
    from barsignal.daemon import config as c
    from barsignal.daemon.app import Daemon, load_model
    from barsignal.daemon.feed.client import FeedClient
    from barsignal.data import load_many

    frame = load_many(args.bars or [_default_data()]).frame
    state = Path(tempfile.mkdtemp(prefix="barsignal-bench-live-"))
    t_start = time.perf_counter()
    engine = c.EngineConfig(backend=args.backend)
    if keep_warm_ms is not None:
        engine = c.EngineConfig(backend=args.backend, keep_warm_ms=keep_warm_ms)
    cfg0 = c.Config(engine=engine)
    loaded = load_model(cfg0, args.artifact, state / "engines")
    start = loaded.warmup_bars + 10
    end = min(len(frame), start + args.n_bars)
    sim, timed_fetch, rest_s = await _serve(frame, args.speed, start, end)

    cfg = c.Config(
        feed=c.FeedConfig(ws_url=sim.ws_url, rest_url=sim.rest_url, reconnect_min_s=0.05, reconnect_max_s=0.5),
        engine=cfg0.engine,
        sinks=c.SinksConfig(enabled=tuple(s for s in args.sinks.split(",") if s),
                          jsonl=c.JsonlSinkConfig(path="signals.jsonl", fsync="interval")),
        metrics=c.MetricsConfig(enabled=False), state=c.StateConfig(dir=str(state)),
    )
    d = Daemon(cfg, loaded=loaded, drain_timeout_s=10,
               source_factory=lambda fc, warm: FeedClient(fc, warmup_bars=warm, fetch=timed_fetch))
    d.record_latency = args.n_bars + 10
    done_ns: dict[int, tuple[int, int]] = {}  # open time -> (its frame's arrival, its signal handed on)
    after = d._after_bar

    def record(bar, sig, recv_ns, node) -> None:
        after(bar, sig, recv_ns, node)
        if sig is not None and recv_ns is not None:
            done_ns[bar.open_time] = (recv_ns, time.perf_counter_ns())

    d._after_bar = record  # type: ignore[method-assign]
    task = asyncio.create_task(d.run())
    t_run = time.perf_counter()
    try:
        while not (sim.done.is_set() and d.pipeline is not None
                   and d.pipeline.last_open_time == int(frame.open_time[end - 1])):
            if task.done():
                task.result()
                raise RuntimeError("the daemon stopped early")
            await asyncio.sleep(0.05)
        d.request_stop()
        await task
    finally:
        await sim.stop()
    ready_total = (d.ready_at or time.monotonic()) - d.started_at + (d.started_at - _mono_at(t_start))
    parts = _latency_parts(state)
    n = min(len(d.tick_to_signal_s), len(parts.get("score", ())))
    if n:  # the rest of tick-to-signal: the outbox transaction and the hand-off to the sink queues
        total_us = np.array(d.tick_to_signal_s[-n:]) * 1e6
        parts["store"] = total_us - sum(parts[k][-n:] for k in ("recv_to_bar", "features", "score", "emit"))
    sent = sim.last_closed_sent_ns  # the simulator shares this process's perf_counter clock
    wire = [((recv - sent[t]) / 1e3, (end - sent[t]) / 1e3) for t, (recv, end) in done_ns.items() if t in sent]
    return {
        "wire_to_frame_us": [w for w, _ in wire], "sent_to_signal_us": [e for _, e in wire],
        "signals": d.pipeline.stats.signals, "ws_bars": d.feed.stats.bars_ws,
        "backend": loaded.model.info.get("backend"), "tick_to_signal_s": d.tick_to_signal_s,
        "ready_total_s": ready_total, "rest_s": rest_s[0], "ready_s": ready_total - rest_s[0],
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parts_us": parts, "keep_warm_ms": engine.keep_warm_ms, "wall_s": time.perf_counter() - t_run,
        "keep_warm": {"calls": d.keep_warm.calls, "busy_s": d.keep_warm.busy_s} if d.keep_warm else None,
    }


def _mono_at(perf_t: float) -> float:
    """The monotonic time that corresponds to a perf_counter reading."""
    return time.monotonic() - (time.perf_counter() - perf_t)


def _latency_parts(state: Path) -> dict[str, np.ndarray]:
    """Per-stage latency (us) of the live (ws) signals, from the jsonl sink's output."""
    import orjson

    p = state / "signals.jsonl"
    if not p.exists():
        return {}
    rows = [orjson.loads(x) for x in p.read_bytes().splitlines() if x.endswith(b"}")]
    rows = [r["latency_us"] for r in rows if r["source"] == "ws"]
    return {k: np.array([r[k] for r in rows]) for k in ("recv_to_bar", "features", "score", "emit")}


def _real_files() -> list[tuple[str, Path]]:
    """The ten real symbols of 2023-03..05 (PROVENANCE.md): (symbol, file), BTC first."""
    from barsignal.errors import ConfigError
    from barsignal.sim.series import symbol_from_path

    multi = sorted((SHARED / "data" / "multi" / "spot_1m").glob("*_USDT-1m.json"))
    btc = SHARED / "data" / "klines" / "spot_1m" / "BTC_USDT-1m_2023-03-16_2023-05-01.json"
    if not multi or not btc.exists():
        raise ConfigError(f"the ten 2023 files are not under {SHARED}/data (PROVENANCE.md)")
    return [(symbol_from_path(str(f)) or f.stem, f) for f in [btc, *multi]]


def _real_2023() -> list:
    """The ten real symbols of 2023-03..05, as simulator series."""
    from barsignal.data import load_many
    from barsignal.sim.series import Series

    return [Series(sym, load_many([f]).frame) for sym, f in _real_files()]


async def _bench_many(args: argparse.Namespace) -> dict:
    import os

    from barsignal.daemon import config as c
    from barsignal.daemon.app import Daemon, load_model
    from barsignal.daemon.feed.client import FeedClient
    from barsignal.sim.series import common_window, shifted_copies

    t_start = time.perf_counter()
    real = _real_2023()
    first, last = common_window(real)
    state = Path(tempfile.mkdtemp(prefix="barsignal-bench-live-many-"))
    engine = c.EngineConfig(backend=args.backend, keep_warm_ms=args.keep_warm_ms if args.keep_warm_ms is not None
                            else 0.0)
    cfg0 = c.Config(engine=engine)
    loaded = load_model(cfg0, args.artifact, state / "engines")
    start = loaded.warmup_bars + 10
    rows = start + args.n_bars + 5
    n = args.symbols
    series = shifted_copies(real, n, rows=rows, shift=1000) if n > len(real) else \
        shifted_copies(real, n, rows=rows, shift=0)
    made = "real" if n <= len(real) else f"{len(real)} real + {n - len(real)} real files shifted 1000*c bars in time"
    speed = args.speed if args.speed != 200.0 else 0.5  # minutes per second: 2 s a minute by default
    sim, timed_fetch, rest_s = await _serve(series, speed, start, start + args.n_bars,
                                            close_spread_ms=args.close_spread_ms)

    syms = tuple(s.symbol for s in series)
    cfg = c.Config(
        feed=c.FeedConfig(ws_url=sim.ws_url, rest_url=sim.rest_url, reconnect_min_s=0.05, reconnect_max_s=0.5,
                          symbols=syms),
        engine=cfg0.engine,
        sinks=c.SinksConfig(enabled=tuple(s for s in args.sinks.split(",") if s),
                          jsonl=c.JsonlSinkConfig(path="signals.jsonl", fsync="interval")),
        metrics=c.MetricsConfig(enabled=False), state=c.StateConfig(dir=str(state)),
    )
    d = Daemon(cfg, loaded=loaded, drain_timeout_s=30, symbol_models={},
               source_factory=lambda fc, warm: FeedClient(fc, warmup_bars=warm, fetch=timed_fetch))
    spans: dict[int, list[int]] = {}  # minute -> [its last closed frame's arrival, its last signal], ns
    after = d._after_bar

    def record(bar, sig, recv_ns, node) -> None:
        after(bar, sig, recv_ns, node)
        if sig is not None and recv_ns is not None:
            sp = spans.setdefault(bar.open_time, [recv_ns, 0, 0])
            sp[0] = max(sp[0], recv_ns)
            sp[1] = time.perf_counter_ns()
            sp[2] += 1

    d._after_bar = record  # type: ignore[method-assign]
    final = int(sim.times[start + args.n_bars - 1]) if hasattr(sim, "times") else None
    task = asyncio.create_task(d.run())
    cpu0 = wall0 = None
    rest_ready = 0.0
    try:
        while not (sim.done.is_set() and d.nodes and all(nd.pipeline.last_open_time == final for nd in d.nodes)):
            if task.done():
                task.result()
                raise RuntimeError("the daemon stopped early")
            if cpu0 is None and d.ready:
                cpu0, wall0 = os.times(), time.perf_counter()
                rest_ready = rest_s[0]  # REST time up to READY (later backfills are not start-up)
            await asyncio.sleep(0.05)
        cpu1, wall1 = os.times(), time.perf_counter()
        d.request_stop()
        await task
    finally:
        await sim.stop()
    ready_total = (d.ready_at or time.monotonic()) - d.started_at + (d.started_at - _mono_at(t_start))
    # From the minute's last closed frame SENT (the in-process simulator's clock is this process's)
    # to its last signal: queueing in the socket and the loop counts, not only the daemon's own work.
    sent = sim.last_closed_sent_ns
    full = {t: (done - sent.get(t, recv)) / 1e6 for t, (recv, done, k) in spans.items()
            if k == n and sent.get(t, recv) >= d.ready_ns}  # a minute sent while still warming up is not live
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) if cpu0 is not None else float("nan")
    minutes = (wall1 - wall0) * speed if wall0 is not None else float("nan")
    return {"symbols": n, "made": made, "window": (first, last), "minutes": len(full), "all_minutes": len(spans),
            "last_frame_to_last_signal_ms": list(full.values()), "signals": sum(nd.pipeline.stats.signals
                                                                               for nd in d.nodes),
            "cpu_s": cpu, "live_minutes": minutes, "ready_total_s": ready_total, "rest_s": rest_ready,
            "ready_s": ready_total - rest_ready, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "backend": loaded.model.info.get("backend"), "speed": speed}


def _print_many(args: argparse.Namespace, res: dict) -> None:
    lat = np.array(res["last_frame_to_last_signal_ms"])
    print(f"bench live --symbols {res['symbols']} ({res['made']}): {res['signals']} signals, "
          f"{res['all_minutes']} live minutes at {res['speed']:g} minutes/s (backend {res['backend']}, "
          f"sinks {args.sinks}, batch-1 per symbol computed on arrival, a burst in passes, handed on in config order; "
          f"closed frames "
          f"{'all at once' if not args.close_spread_ms else f'spread over {args.close_spread_ms:g} ms'})")
    if len(lat):
        print(f"  last closed frame sent -> last symbol's signal  p50 {np.percentile(lat, 50):.2f} ms  "
              f"p99 {np.percentile(lat, 99):.2f} ms  max {lat.max():.2f} ms  (n={len(lat)} minutes with every "
              "symbol live)")
    if res["live_minutes"] == res["live_minutes"] and res["live_minutes"] > 0:
        print(f"  CPU per minute  {res['cpu_s'] / res['live_minutes'] * 1e3:.1f} ms (process user+sys over "
              f"{res['live_minutes']:.0f} streamed minutes, in-process feed simulator included)")
    print(f"  start-to-READY  {res['ready_s']:.3f} s excluding REST ({res['rest_s']:.3f} s REST, "
          f"{res['ready_total_s']:.3f} s in all, {res['symbols']} symbols' warm-up)")
    print(f"  peak RSS        {res['rss_mb']:.1f} MB (simulator included)")


async def _serve(bars: Any, speed: float, start: int, end: int, close_spread_ms: float = 0.0
                 ) -> tuple[Any, Any, list[float]]:
    """A started in-process ``feed serve`` (one closed frame per bar), and a REST fetch that adds
    its time to ``rest_s[0]`` (start-to-READY is reported without it)."""
    from barsignal.daemon.binance.rest import fetch_bars
    from barsignal.sim.simulator import FeedSimulator

    sim = FeedSimulator(bars, speed=speed, start_index=start, end_index=end, intrabar=1,
                        ping_interval_s=None, close_delay_ms=0, close_spread_ms=close_spread_ms)
    await sim.start()
    rest_s = [0.0]  # wall time with at least one REST fetch in flight (fetches may overlap)
    busy = [0, 0.0]  # fetches in flight, when the first of them started

    async def timed_fetch(*a: Any, **kw: Any) -> Any:
        if busy[0] == 0:
            busy[1] = time.perf_counter()
        busy[0] += 1
        try:
            return await fetch_bars(*a, **kw)
        finally:
            busy[0] -= 1
            if busy[0] == 0:
                rest_s[0] += time.perf_counter() - busy[1]

    return sim, timed_fetch, rest_s

