"""``[health] stale_symbol_watchdog_s``: what a long-stale symbol does to the systemd watchdog. 0 (the
default): nothing (it resubscribes and backfills by itself; only the whole feed going stale withholds
the watchdog); N: a symbol with no bar for N s withholds it, so systemd restarts the daemon. A symbol
the exchange does not trade now (exchangeInfo) is neither stale nor waited for."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from barsignal.daemon.app import Daemon
from barsignal.daemon.config import Config, FeedConfig, HealthConfig, StateConfig

SYMS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


class _Notifier:
    watchdog_s = 0.03

    def __init__(self) -> None:
        self.pings = 0

    def watchdog(self) -> None:
        self.pings += 1


def _daemon(tmp: Path, limit: float, now: list[float]) -> Daemon:
    cfg = Config(feed=FeedConfig(symbols=SYMS), health=HealthConfig(stale_symbol_watchdog_s=limit),
                 state=StateConfig(dir=str(tmp / "state")))
    d = Daemon(cfg, clock=lambda: now[0], notifier=_Notifier())  # type: ignore[arg-type]
    d.ready = True
    return d


def _pings(d: Daemon) -> int:
    """Watchdog pings the daemon sends in 0.2 s of its own watchdog loop."""
    async def run() -> None:
        task = asyncio.ensure_future(d._watchdog())
        await asyncio.sleep(0.2)
        task.cancel()

    before = d.notifier.pings  # type: ignore[attr-defined]
    asyncio.run(run())
    return d.notifier.pings - before  # type: ignore[attr-defined]


def test_by_default_one_stale_symbol_does_not_withhold_the_watchdog(tmp_path: Path) -> None:
    now = [1000.0]
    d = _daemon(tmp_path, 0.0, now)
    now[0] += 3600.0
    d.last_bar_at = now[0]
    d.last_bar_by = {"BTCUSDT": now[0], "ETHUSDT": now[0]}  # SOL: no bar for an hour
    assert d.stale_symbols() == ["SOLUSDT"] and d.long_stale_symbols() == []
    assert _pings(d) > 0


def test_a_symbol_stale_past_the_bound_withholds_the_watchdog_and_a_halted_one_does_not(tmp_path: Path) -> None:
    now = [1000.0]
    d = _daemon(tmp_path, 600.0, now)
    now[0] += 300.0
    d.last_bar_at = now[0]
    d.last_bar_by = {s: now[0] for s in SYMS[:2]}
    assert d.long_stale_symbols() == [] and _pings(d) > 0  # SOL stale for 300 s: under the bound
    now[0] += 301.0
    d.last_bar_at = now[0]
    d.last_bar_by = {s: now[0] for s in SYMS[:2]}
    assert d.long_stale_symbols() == ["SOLUSDT"] and _pings(d) == 0  # 601 s: withheld, systemd restarts it
    d.feed = SimpleNamespace(halted={"SOLUSDT"})  # exchangeInfo says SOL is in BREAK: not waited for
    assert d.long_stale_symbols() == [] and d.stale_symbols() == [] and _pings(d) > 0
    assert d.health()[1]["halted_symbols"] == ["SOLUSDT"]
