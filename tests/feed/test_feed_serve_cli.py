"""``barsignal feed serve`` as a real subprocess: killed mid-run and restarted later, the client still
gets every closed bar exactly once (the ones that closed while it was down come over REST); many
symbols from many files (``--bars SYMBOL=FILE``) on one clock."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import numpy as np
import orjson
from websockets.asyncio.client import connect

from barsignal.daemon.feed.client import FeedClient
from barsignal.data import load
from tests.conftest import DATA, REPO, free_port, run_cli
from tests.feed.conftest import SPOT_NOV, expected_times, feed_cfg


def _serve(port: int, start_index: int) -> tuple[subprocess.Popen[str], dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "barsignal", "--log-format", "json", "feed", "serve", "--bars", f"BTCUSDT={SPOT_NOV}",
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
    r = run_cli("feed", "serve", "--bars", f"BTCUSDT={SPOT_NOV}", "--faults", "explode=1", timeout=60)
    assert r.returncode == 2 and "--faults item 'explode=1'" in r.stderr
    r = run_cli("feed", "serve", "--bars", f"BTCUSDT={SPOT_NOV}", "--close-spread-ms", "900", "--speed", "1",
                timeout=60)
    assert r.returncode == 2 and "close_spread_ms must be >= 0 and under half a bar" in r.stderr
    r = run_cli("feed", "serve", "--bars", "BTCUSDT=/nonexistent/bars.json", timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_bench_feed_runs_and_checks_every_bar() -> None:
    r = run_cli("bench", "feed", "--n-bars", "200", "--speed", "400", "--symbols", "20", "--serve-speed", "10",
                "--serve-bars", "10", "--json", timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    out = orjson.loads(r.stdout.strip().splitlines()[-1])
    serve = out["serve"]  # 20 symbols (10 real, 10 shifted copies) on one clock, every tick complete
    assert serve["symbols"] == 20 and serve["complete_ticks"] == serve["ticks"] >= 5
    assert serve["frames_per_s"] > 0 and serve["tick_spread_ms"]["p50"] >= 0
    assert out["loopback"]["every_bar_once_in_order"] and out["loopback"]["stats"]["bars_ws"] >= 200
    assert out["decode real frame"]["n"] == 20000 and out["decode real frame"]["p50_us"] > 0


BTC_2023 = DATA / "klines" / "spot_1m" / "BTC_USDT-1m_2023-03-16_2023-05-01.json"
ETH = DATA / "multi" / "spot_1m" / "ETH_USDT-1m.json"
XRP = DATA / "multi" / "spot_1m" / "XRP_USDT-1m.json"


def test_many_symbols_from_many_files_on_one_clock() -> None:
    files = {"BTCUSDT": BTC_2023, "ETHUSDT": ETH, "XRPUSDT": XRP}
    frames = {s: load(p).frame for s, p in files.items()}
    clock = np.unique(np.concatenate([f.open_time for f in frames.values()]))
    k = int(np.searchsorted(clock, frames["XRPUSDT"].open_time[0])) + 100  # all three trade from here
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "barsignal", "--log-format", "json", "feed", "serve",
         "--bars", f"BTCUSDT={BTC_2023}", "--bars", str(ETH), "--bars", f"xrpusdt={XRP}",  # ETH: from its name
         "--port", str(port), "--speed", "20", "--start-index", str(k), "--end-index", str(k + 20),
         "--update-ms", "20000", "--jitter-ms", "3000", "--exit-at-end"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    ready = orjson.loads(proc.stdout.readline() or "{}")
    assert ready.get("symbols") == ["BTCUSDT", "ETHUSDT", "XRPUSDT"], proc.stderr.read()[-2000:]

    async def main():
        url = ready["ws_url"] + "/stream?streams=" + "/".join(f"{s.lower()}@kline_1m" for s in files)
        closed: list[tuple[str, int, list[float]]] = []
        info = await asyncio.to_thread(_get_json, f"{ready['rest_url']}/api/v3/exchangeInfo")  # before it exits
        async with connect(url, proxy=None) as ws:
            while len([c for c in closed if c[1] == clock[k + 19]]) < 3:
                k_ = orjson.loads(await asyncio.wait_for(ws.recv(), 10))["data"]["k"]
                if k_["x"]:
                    closed.append((k_["s"], k_["t"], [float(k_[c]) for c in "ohlcv"]))
        return closed, info

    closed, info = asyncio.run(main())
    rc = proc.wait(30)
    stderr = proc.stderr.read()
    ticks = sorted({t for _, t, _ in closed})
    assert ticks[-1] == clock[k + 19] and len(ticks) >= 12  # 20 ticks in 1 s; we join within the first few
    for t in ticks[1:]:  # every tick after the first (which may have begun before we joined): all three
        assert sorted(s for s, tt, _ in closed if tt == t) == sorted(files)
    for s, t, ohlcv in closed:
        f = frames[s]
        i = int(np.searchsorted(f.open_time, t))
        assert ohlcv == [f.open[i], f.high[i], f.low[i], f.close[i], f.volume[i]]
    assert [x["symbol"] for x in info["symbols"]] == list(files)
    assert rc == 0 and "feed_serve.stopped" in stderr and "Traceback" not in stderr


def _get_json(url: str):
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return orjson.loads(r.read())


def test_bars_usage_errors() -> None:
    r = run_cli("feed", "serve", "--bars", "BTC/USDT=" + str(BTC_2023), timeout=60)
    assert r.returncode == 2 and "'BTC/USDT' is not a Binance id" in r.stderr
    r = run_cli("feed", "serve", "--bars", str(SPOT_NOV.with_name("bars.json")), timeout=60)
    assert r.returncode == 2 and "cannot tell the symbol" in r.stderr
    r = run_cli("feed", "serve", timeout=60)
    assert r.returncode == 2 and "no bars given" in r.stderr
    r = run_cli("feed", "serve", "--bars", f"ETHUSDT={ETH}", "--bars", f"ETHUSDT={ETH}", timeout=60)
    assert r.returncode == 2 and "ETHUSDT is given twice" in r.stderr


def test_copies_serve_many_symbols_made_from_real_files_shifted_in_time() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "barsignal", "feed", "serve", "--bars", str(BTC_2023), "--bars", str(XRP),
         "--copies", "5", "--copy-shift", "1000", "--port", str(port), "--speed", "20", "--start-index", "10",
         "--end-index", "30", "--intrabar", "0", "--exit-at-end"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    ready = orjson.loads(proc.stdout.readline() or "{}")
    assert ready.get("symbols") == ["BTCUSDT", "XRPUSDT", "BTC1USDT", "XRP1USDT", "BTC2USDT"], proc.stderr.read()

    async def main():
        got = []
        async with connect(ready["ws_url"] + "/stream?streams=btc2usdt@kline_1m", proxy=None) as ws:
            while len(got) < 5:
                got.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10))["data"]["k"])
        return got

    got = asyncio.run(main())
    proc.wait(30)
    btc, xrp = load(BTC_2023).frame, load(XRP).frame
    t0 = int(xrp.open_time[0])  # the files' common window starts with XRP's file
    i0 = int(np.searchsorted(btc.open_time, t0))
    for k in got:
        j = (k["t"] - t0) // 60_000  # the copy's row on the shared clock
        assert k["s"] == "BTC2USDT" and float(k["c"]) == btc.close[i0 + 2000 + j]  # BTC's bars 2000 later


def test_default_cadence_is_binances_irregular_2s_updates() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "barsignal", "feed", "serve", "--bars", f"BTCUSDT={SPOT_NOV}", "--port", str(port),
         "--speed", "2", "--start-index", "300", "--end-index", "304", "--exit-at-end"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    ready = orjson.loads(proc.stdout.readline() or "{}")
    assert (ready.get("update_ms"), ready.get("jitter_ms")) == (2000, 500), proc.stderr.read()[-2000:]

    async def main():
        frames = []
        async with connect(ready["ws_url"] + "/ws/btcusdt@kline_1m", proxy=None) as ws:
            while len([f for f in frames if f["k"]["x"]]) < 3:
                frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
        return frames

    frames = asyncio.run(main())
    proc.wait(30)
    closed = [f["k"]["t"] for f in frames if f["k"]["x"]]
    for t in closed[1:]:  # bars seen whole
        e = [f["E"] - t for f in frames if f["k"]["t"] == t and not f["k"]["x"]]
        assert len(e) == 29 and len(set(np.diff(e))) > 1 and 1500 < np.mean(np.diff(e)) < 2500
