"""Operations: sd_notify over a real socket, the watchdog, bounded SIGTERM drain, live monitoring."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np

from barsignal.daemon.app import Daemon, load_model
from barsignal.daemon.config import Config, SinksConfig, WebhookSinkConfig
from barsignal.daemon.drift import psi
from barsignal.daemon.metrics import LiveMonitor
from barsignal.daemon.notify import Notifier
from barsignal.features.bar import BarFrame
from barsignal.sim.simulator import FeedSimulator
from tests.daemon.conftest import real_bars
from tests.daemon.test_app import _until, make_cfg


def _recv_all(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_notifier_sends_datagrams_to_notify_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        srv.setblocking(False)
        n = Notifier(path)
        assert n.ready("warm") and n.status("ok") and n.watchdog() and n.stopping()
        n.close()
        assert _recv_all(srv) == ["READY=1\nSTATUS=warm", "STATUS=ok", "WATCHDOG=1", "STOPPING=1"]
    assert Notifier("").notify("READY=1") is False  # not under systemd: a no-op


def test_daemon_notifies_ready_after_warmup_watchdog_only_while_fresh_and_drains_bounded(
        tmp_path: Path, tiny_artifact: Path) -> None:
    """READY after warm-up; WATCHDOG only while bars are fresh; SIGTERM with a hung webhook exits 0 within
    the drain bound and leaves the undelivered signals in the outbox."""
    from aiohttp import web

    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.setblocking(False)
    frame = BarFrame.from_bars(real_bars(1000))
    now = [0.0]

    async def main() -> tuple[int, float, Daemon, list[str], list[str]]:
        release = asyncio.Event()

        async def hang(_: web.Request) -> web.Response:
            await release.wait()
            return web.Response()

        app = web.Application()
        app.router.add_post("/hook", hang)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        sim = FeedSimulator(frame, speed=20.0, start_index=900, end_index=1000, intrabar=0, ping_interval_s=None,
                            close_delay_ms=0)
        await sim.start()
        try:
            base = make_cfg(sim, tmp_path / "state")
            cfg = Config(feed=base.feed, state=base.state, metrics=base.metrics,
                         sinks=SinksConfig(enabled=("webhook",), webhook=WebhookSinkConfig(
                             url=f"http://127.0.0.1:{port}/hook", timeout_s=30, retries=0)))
            notifier = Notifier(path)
            notifier.watchdog_s = 0.03
            d = Daemon(cfg, loaded=load_model(cfg, str(tiny_artifact), None), notifier=notifier,
                       drain_timeout_s=0.5, clock=lambda: now[0])
            got: list[str] = []
            loop = asyncio.get_running_loop()
            loop.add_reader(srv.fileno(), lambda: got.extend(_recv_all(srv)))  # the "systemd" side
            task = asyncio.create_task(d.run())
            await _until(lambda: d.ready and d.pipeline.stats.signals >= 5)
            await _until(lambda: got.count("WATCHDOG=1") >= 2)  # fresh data: pings
            fresh = list(got)
            await sim.stop()  # the feed goes quiet ...
            await asyncio.sleep(0)
            now[0] += 1000.0  # ... for 1000 s (injected clock): no more WATCHDOG
            n = len(got)
            await asyncio.sleep(0.1)  # ten watchdog periods
            stale = got[n:]
            t0 = loop.time()
            d.request_stop()
            code = await asyncio.wait_for(task, 10)
            took = loop.time() - t0
            loop.remove_reader(srv.fileno())
            return code, took, d, fresh, stale + got[n:] + _recv_all(srv)
        finally:
            release.set()
            await sim.stop()  # idempotent
            await runner.cleanup()

    code, took, _, fresh, after = asyncio.run(main())
    srv.close()
    assert code == 0
    assert took < 0.5 + 5.0 + 1.0, f"SIGTERM took {took:.2f} s"  # drain bound + sink close bound
    assert any(m.startswith("READY=1") for m in fresh) and "WATCHDOG=1" in fresh, fresh[:20]
    assert "WATCHDOG=1" not in after and "STOPPING=1" in after
    from barsignal.daemon.outbox import Outbox

    ob = Outbox(tmp_path / "state" / "outbox.sqlite", ["webhook"])
    assert ob.depth("webhook") >= 1, "undelivered signals stay in the outbox for the next start"


def test_live_monitor_scores_outcomes_after_h_bars() -> None:
    mon = LiveMonitor(horizon=2, window=100, n_features=3, psi_every=1000)
    closes = [100, 101, 102, 101, 100, 103]
    ps = [0.9, 0.8, 0.2, 0.3, 0.6, 0.5]
    for i, (c, p) in enumerate(zip(closes, ps, strict=True)):
        t = i * 60_000
        mon.observe_bar(t, c)
        mon.observe_signal(t, c, p, None)
    # outcomes for bars 0..3 (t+2 known): up, a tie (101 -> 101: no direction, no outcome, as in
    # training), down, up
    ys, pred = [1, 0, 1], [ps[0], ps[2], ps[3]]
    s = mon.scores()
    assert s["n"] == 3
    assert s["accuracy"] == np.mean([(p >= 0.5) == (y == 1) for p, y in zip(pred, ys, strict=True)])
    assert np.isclose(s["brier"], np.mean([(p - y) ** 2 for p, y in zip(pred, ys, strict=True)]))


def test_psi_is_small_for_the_reference_and_large_under_drift(capsys) -> None:
    rng = np.random.default_rng(0)
    mon = LiveMonitor(horizon=1, window=2000, n_features=2, psi_warn=0.25, psi_every=10**9)
    for i in range(2000):
        mon.observe_signal(i, 1.0, 0.5, rng.standard_normal((30, 2)))
    assert mon.update_psi().max() < 0.05 and not mon.drift_warned
    for i in range(2000):
        mon.observe_signal(i, 1.0, 0.5, rng.standard_normal((30, 2)) * 2 + 1)
    assert mon.update_psi().min() > 0.25 and mon.drift_warned
    cap = capsys.readouterr()  # structlog writes to stdout or stderr, whichever an earlier test configured
    assert "feature_drift" in cap.out + cap.err
    edges = np.array([0.0])
    assert psi(np.array([-1.0, 1.0]), edges, np.array([0.5, 0.5])) == 0.0
