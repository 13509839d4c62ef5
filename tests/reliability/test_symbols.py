"""Symbols checked against the exchange's exchangeInfo, against the real simulator (a ``barsignal feed
serve`` process, or the in-process FeedSimulator on a loopback port): an unknown symbol (``FOOUSDT``)
or a non-trading one exits 2 at start with one line naming it, within the REST timeout; a transient
failure to reach exchangeInfo is retried, never taken for an unknown symbol; a symbol that stops
trading at run time is logged, exported and stops only its own bars."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from barsignal.daemon.binance.rest import UNKNOWN, fetch_symbol_status
from barsignal.daemon.feed.client import FeedClient
from barsignal.errors import ConfigError
from barsignal.sim.series import Series
from barsignal.sim.simulator import FeedSimulator
from tests import e2e as h
from tests.conftest import REPO
from tests.feed.conftest import feed_cfg


@pytest.fixture(scope="module")
def frame():
    from barsignal.data import load

    return load(h.SPOT_NOV).frame


def _run_against_feed(tmp: Path, artifact: Path, symbols: str,
                      timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    feed, port = h.start_feed(tmp, h.SPOT_NOV, 2000, 2600, speed=2.0)
    try:
        cfg = h.write_config(tmp, port, feed=f"symbols = {symbols}")
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "barsignal", "--log-format", "json", "run", "--config",
                              str(cfg), "--artifact", str(artifact)], cwd=REPO, capture_output=True, text=True,
                             timeout=timeout, env={**os.environ, **h.daemon_env(tmp)})
        return res, time.monotonic() - t0
    finally:
        h.kill_all(feed)


def test_an_unknown_symbol_exits_2_naming_it_within_the_rest_timeout(tmp_path: Path, artifact: Path) -> None:
    res, took = _run_against_feed(tmp_path, artifact, '["BTCUSDT", "FOOUSDT"]')
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    failed = [orjson.loads(x) for x in res.stderr.splitlines() if '"daemon_failed"' in x]
    assert len(failed) == 1, res.stderr[-3000:]
    err = failed[0]["error"]
    assert "FOOUSDT" in err and "-1121" in err and "BTCUSDT" not in err, err
    assert "feed.rest_failed" not in res.stderr and "feed.stale" not in res.stderr  # no retry loop, no hang
    print(f"\n[symbols] FOOUSDT: exit {res.returncode} after {took:.2f} s: {err}")


def test_statuses_from_the_simulator_name_the_unknown_ones_from_the_whole_listing(frame) -> None:
    """Binance's -1121 names no symbol: the whole listing is read once, and says which."""
    async def main() -> Any:
        series = [Series(s, frame) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
        async with FeedSimulator(series, speed=2, start_index=2000, end_index=2100) as sim:
            sim.status["ETHUSDT"] = "BREAK"
            return await fetch_symbol_status(sim.rest_url, ["BTCUSDT", "FOOUSDT", "ETHUSDT", "BARUSDT", "SOLUSDT"])

    got = asyncio.run(main())
    assert got is not None and got.status == {"BTCUSDT": "TRADING", "FOOUSDT": UNKNOWN, "ETHUSDT": "BREAK",
                                              "BARUSDT": UNKNOWN, "SOLUSDT": "TRADING"}
    assert got.requests == 2  # the batch (refused with -1121), then the whole listing


def test_a_non_trading_symbol_at_start_is_a_config_error_naming_it(frame) -> None:
    async def main() -> None:
        series = [Series(s, frame) for s in ("BTCUSDT", "ETHUSDT")]
        async with FeedSimulator(series, speed=20, start_index=2000, end_index=2400) as sim:
            sim.status["ETHUSDT"] = "HALT"
            c = FeedClient(feed_cfg(sim.ws_url, sim.rest_url, symbols=("BTCUSDT", "ETHUSDT")), warmup_bars=5)
            async for _ in c.stream():
                pass

    with pytest.raises(ConfigError, match=r"ETHUSDT \(HALT\)") as e:
        asyncio.run(asyncio.wait_for(main(), 30))
    assert "BTCUSDT" not in str(e.value)


class _Flaky:
    """A loopback TCP port that resets the first ``n`` connections, then forwards to ``target``
    (exchangeInfo unreachable for a while: a transient failure, not an unknown symbol)."""

    def __init__(self, target: int, n: int) -> None:
        self.target, self.left = target, n
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reset = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self.left > 0:
                self.left -= 1
                self.reset += 1
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()
                continue
            threading.Thread(target=self._pipe, args=(c,), daemon=True).start()

    def _pipe(self, c: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.target))

        def copy(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=copy, args=(up, c), daemon=True).start()
        copy(c, up)


def test_a_transient_failure_is_retried_not_taken_for_an_unknown_symbol(frame) -> None:
    async def main() -> tuple[FeedClient, int]:
        async with FeedSimulator(frame, speed=20, start_index=2000, end_index=2400) as sim:
            flaky = _Flaky(sim.port, 3)
            c = FeedClient(feed_cfg(sim.ws_url, f"http://127.0.0.1:{flaky.port}", reconnect_min_s=0.05,
                                    reconnect_max_s=0.2), warmup_bars=5)
            n = 0
            async for _ in c.stream():
                n += 1
                if c.stats.symbol_status and n >= 10:
                    break
            flaky.sock.close()
            return c, flaky.reset

    c, reset = asyncio.run(asyncio.wait_for(main(), 60))
    assert reset == 3 and c.stats.rest_failures >= 1
    assert c.stats.symbol_status == {"BTCUSDT": "TRADING"} and not c.halted


def test_a_symbol_that_stops_trading_at_run_time_stops_only_its_own_bars(frame) -> None:
    """ETHUSDT goes to BREAK while running: logged, exported (its status), its bars stop; BTCUSDT's go on;
    back to TRADING, its bars resume."""
    async def main() -> tuple[FeedClient, dict[str, list[int]], list[str]]:
        series = [Series(s, frame) for s in ("BTCUSDT", "ETHUSDT")]
        async with FeedSimulator(series, speed=20, start_index=2000, end_index=2600, intrabar=1) as sim:
            cfg = feed_cfg(sim.ws_url, sim.rest_url, symbols=("BTCUSDT", "ETHUSDT"), exchange_info_every_s=0.3)
            c = FeedClient(cfg, warmup_bars=5, stale_after_s=600)
            got: dict[str, list[int]] = {"BTCUSDT": [], "ETHUSDT": []}
            phases: list[str] = []
            async for sym, bar in c.stream():
                got[sym].append(bar.open_time)
                n = len(got["BTCUSDT"])
                if n == 30:
                    sim.status["ETHUSDT"] = "BREAK"
                elif n == 60:
                    phases.append(f"halted={sorted(c.halted)} eth={len(got['ETHUSDT'])}")
                    sim.status.pop("ETHUSDT")
                elif n == 90:
                    break
            return c, got, phases

    c, got, phases = asyncio.run(asyncio.wait_for(main(), 60))
    assert phases and phases[0].startswith("halted=['ETHUSDT']")
    assert c.stats.halted_bars > 0 and not c.halted and c.stats.symbol_status["ETHUSDT"] == "TRADING"
    btc = got["BTCUSDT"]
    assert btc == sorted(set(btc)) and all(b - a == 60_000 for a, b in itertools.pairwise(btc))  # BTC never stopped
    assert got["ETHUSDT"][-1] > int(frame.open_time[2000 + 5 + 60])  # ETH resumed after the break
