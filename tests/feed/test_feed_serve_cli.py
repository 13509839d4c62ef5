"""``barsignal feed serve`` as a real subprocess: killed mid-run and restarted later, the client still
gets every closed bar exactly once (the ones that closed while it was down come over REST)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import ccxt.async_support  # noqa: F401 - imported up front (seconds), not while the feed runs
import numpy as np
import orjson

from barsignal.daemon.feed.client import FeedClient
from tests.conftest import REPO, free_port, run_cli
from tests.feed.conftest import SPOT_NOV, expected_times, feed_cfg


def _serve(port: int, start_index: int) -> tuple[subprocess.Popen[str], dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "barsignal", "--log-format", "json", "feed", "serve", str(SPOT_NOV),
         "--port", str(port), "--speed", "20", "--start-index", str(start_index), "--intrabar", "1",
         "--ping-interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    line = proc.stdout.readline()  # one JSON line once it listens
    if not line:
        raise AssertionError(f"feed serve did not start: {proc.stderr.read()[-2000:]}")
    return proc, orjson.loads(line)


def test_kill_restart_subprocess_every_bar_once(spot) -> None:
    port = free_port()
    times = spot.frame.open_time

    async def main():
        p1, ready = await asyncio.to_thread(_serve, port, 300)
        assert ready["port"] == port and ready["ws_url"] == f"ws://127.0.0.1:{port}"
        backing_off = asyncio.Event()

        async def sleep(s: float) -> None:
            backing_off.set()
            await asyncio.sleep(s)

        client = FeedClient(feed_cfg(ready["ws_url"], ready["rest_url"]), warmup_bars=10, stale_after_s=5,
                            sleep=sleep)
        bars = []
        it = client.__aiter__()
        try:
            while not bars or bars[-1].open_time < times[320]:
                bars.append(await asyncio.wait_for(anext(it), 20))
            p1.kill()  # SIGKILL mid-run
            p1.wait()
            backing_off.clear()
            waiter = asyncio.ensure_future(backing_off.wait())
            while True:  # drain what was already received, until it backs off
                nxt = asyncio.ensure_future(anext(it))
                done, _ = await asyncio.wait([nxt, waiter], timeout=20, return_when=asyncio.FIRST_COMPLETED)
                assert done, "the client neither read nor backed off after the kill"
                if nxt not in done:
                    break
                bars.append(nxt.result())
            last = int(np.searchsorted(times, bars[-1].open_time))
            p2, _ = await asyncio.to_thread(_serve, port, last + 15)  # bars last+1..last+14 "missed"
            if not nxt.done():
                bars.append(await asyncio.wait_for(nxt, 30))
            while bars[-1].open_time < times[last + 30]:
                bars.append(await asyncio.wait_for(anext(it), 20))
        finally:
            await it.aclose()
        p2.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(p2.wait, 20)
        return bars, client.stats, last, rc, p2.stderr.read()

    bars, stats, last, rc, stderr = asyncio.run(main())
    got = [b.open_time for b in bars]
    first = int(np.searchsorted(times, got[0]))
    assert got == expected_times(spot, first, last + 31)  # every bar, once, in order
    src = {b.open_time: b.source for b in bars}
    assert all(src[int(t)] == "rest" for t in times[last + 1:last + 15])
    assert stats.reconnects >= 1 and stats.backfilled >= 14 and stats.gaps == 0
    assert rc == 0 and "feed_serve.stopped" in stderr and "Traceback" not in stderr


def test_feed_serve_usage_errors() -> None:
    r = run_cli("feed", "serve", str(SPOT_NOV), "--faults", "explode=1", timeout=60)
    assert r.returncode == 2 and "--faults item 'explode=1'" in r.stderr
    r = run_cli("feed", "serve", "/nonexistent/bars.json", timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_bench_feed_runs_and_checks_every_bar() -> None:
    r = run_cli("bench", "feed", "--bars", "200", "--speed", "400", "--json", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert out["loopback"]["every_bar_once_in_order"] and out["loopback"]["stats"]["bars_ws"] == 200
    assert out["decode real frame"]["n"] == 20000 and out["decode real frame"]["p50_us"] > 0
