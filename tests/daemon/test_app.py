"""The daemon in process against a real loopback feed simulator: signals, metrics, drain, restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from barsignal.daemon.app import Daemon, load_model
from barsignal.daemon.barlog import read_runs
from barsignal.daemon.config import Config, FeedConfig, JsonlSinkConfig, MetricsConfig, SinksConfig, StateConfig
from barsignal.features.bar import BarFrame
from barsignal.sim.simulator import FeedSimulator
from tests.conftest import free_port
from tests.daemon.conftest import real_bars


def make_cfg(sim: FeedSimulator, state: Path, port: int = 0) -> Config:
    return Config(
        feed=FeedConfig(ws_url=sim.ws_url, rest_url=sim.rest_url, reconnect_min_s=0.05, reconnect_max_s=0.2,
                        rest_timeout_s=5.0),
        sinks=SinksConfig(enabled=("jsonl",), jsonl=JsonlSinkConfig(path="signals.jsonl", fsync="never")),
        metrics=MetricsConfig(enabled=port > 0, port=port or 9464),
        state=StateConfig(dir=str(state)),
    )


async def _http_get(port: int, path: str) -> tuple[int, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def _until(cond, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def signals(state: Path) -> list[dict]:
    p = state / "signals.jsonl"
    return [orjson.loads(x) for x in p.read_bytes().splitlines()] if p.exists() else []


def test_daemon_signals_every_bar_serves_metrics_and_resumes_without_duplicates(tmp_path: Path,
                                                                                 tiny_artifact: Path) -> None:
    bars = real_bars(1200)  # the warm-up (RESTART_WARMUP_BARS + 29) fits before index 900
    frame = BarFrame.from_bars(bars)
    state = tmp_path / "state"
    port = free_port()

    async def one_run(start: int, end: int, metrics_port: int) -> tuple[int, Daemon, dict]:
        sim = FeedSimulator(frame, speed=200.0, start_index=start, end_index=end, intrabar=1,
                            ping_interval_s=None, close_delay_ms=0)
        await sim.start()
        try:
            cfg = make_cfg(sim, state, metrics_port)
            d = Daemon(cfg, loaded=load_model(cfg, str(tiny_artifact), None), drain_timeout_s=5)
            task = asyncio.create_task(d.run())
            await _until(lambda: sim.done.is_set())
            await _until(lambda: d.pipeline is not None and d.pipeline.last_open_time == bars[end - 1].open_time)
            seen: dict = {}
            if metrics_port:
                await _until(lambda: d.workers and d.workers[0].idle())
                seen["metrics"] = await _http_get(metrics_port, "/metrics")
                seen["healthz"] = await _http_get(metrics_port, "/healthz")
            d.request_stop()
            code = await asyncio.wait_for(task, 15)
            return code, d, seen
        finally:
            await sim.stop()

    code, d, seen = asyncio.run(one_run(900, 960, port))
    assert code == 0
    warm = d.pipeline.min_bars
    # The bars the daemon used (its record): REST warm-up, then the stream, contiguous to the end.
    used = next(iter(read_runs(state / "bars").values()))
    start = next(i for i, b in enumerate(bars) if b.open_time == used[0].open_time)
    assert [b.open_time for b in used] == [b.open_time for b in bars[start:960]]
    n_rest = sum(b.source == "rest" for b in used)
    assert n_rest == warm and all(b.source == "ws" for b in used[warm:])
    # One signal per closed bar from the end of the warm-up on: none missing, none duplicated.
    got = signals(state)
    first = start + warm - 1
    assert [s["open_time"] for s in got] == [b.open_time for b in bars[first:960]]
    assert got[0]["source"] == "rest" and {s["source"] for s in got[1:]} == {"ws"}
    assert len({s["id"] for s in got}) == len(got)
    status, body = seen["metrics"]
    assert status == 200
    text = body.decode()
    assert f'barsignal_bars_total{{source="ws"}} {float(len(used) - warm)}' in text
    assert f'barsignal_bars_total{{source="rest"}} {float(warm)}' in text
    assert f'barsignal_sink_delivered_total{{sink="jsonl"}} {float(len(got))}' in text
    assert "barsignal_outbox_depth 0.0" in text and "barsignal_tick_to_signal_seconds_bucket" in text
    assert seen["healthz"][0] == 200 and orjson.loads(seen["healthz"][1])["status"] == "ok"

    # restart later: bars 960..979 were missed while down; no duplicate, no hole
    code, d2, _ = asyncio.run(one_run(980, 1000, 0))
    assert code == 0
    got = signals(state)
    assert [s["open_time"] for s in got] == [b.open_time for b in bars[first:1000]]
    assert len({s["id"] for s in got}) == len(got)
    assert d2.pipeline.stats.already_signalled > 0


def test_hot_swap_keeps_the_old_model_when_the_new_artifact_is_bad(tmp_path: Path, tiny_artifact: Path) -> None:
    import shutil

    from tests.daemon.conftest import write_tiny_artifact

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    bars = real_bars(1000)
    frame = BarFrame.from_bars(bars)

    async def main() -> tuple[str, str, str, Daemon]:
        sim = FeedSimulator(frame, speed=50.0, start_index=900, end_index=1000, intrabar=0, ping_interval_s=None,
                            close_delay_ms=0)
        await sim.start()
        try:
            cfg = make_cfg(sim, tmp_path / "state")
            d = Daemon(cfg, artifact_dir=str(art), loaded=load_model(cfg, str(art), None), drain_timeout_s=5)
            task = asyncio.create_task(d.run())
            await _until(lambda: d.ready and d.pipeline.stats.signals > 3)
            h0 = d.pipeline.model.artifact_hash
            (art / "static.onnx").write_bytes(b"corrupted")  # a bad new artifact: hash mismatch
            assert await d.reload() is False
            h1 = d.pipeline.model.artifact_hash
            shutil.rmtree(art)
            write_tiny_artifact(art, bias=0.5)  # a good new one
            assert await d.reload() is True
            h2 = d.pipeline.model.artifact_hash
            n = d.pipeline.stats.signals  # the old model kept scoring while the new one loaded
            await _until(lambda: d.pipeline.stats.signals > n + 3)
            d.request_stop()
            assert await asyncio.wait_for(task, 15) == 0
            return h0, h1, h2, d
        finally:
            await sim.stop()

    h0, h1, h2, d = asyncio.run(main())
    assert h0 == h1 != h2
    got = signals(tmp_path / "state")
    arts = [s["artifact"] for s in got]
    assert arts[0] == h0 and arts[-1] == h2
    ots = [s["open_time"] for s in got]
    assert ots == sorted(set(ots)) and ots[-1] - ots[0] == 60_000 * (len(ots) - 1), "no bar lost in the swap"
    assert d.metrics.reloads.labels(result="refused")._value.get() == 1
    assert d.metrics.reloads.labels(result="ok")._value.get() == 1


def test_the_start_log_says_which_policy_the_actions_follow() -> None:
    # The bundled artifact's policy is to stay flat. Without [signal] thresholds the rule stays flat
    # and the log says so; with one set, the rule follows it and the log says that instead.
    from structlog.testing import capture_logs

    from barsignal.daemon.config import SignalConfig
    from barsignal.node import warn_informational

    flat = load_model(Config(), None, None)
    assert flat.artifact.informational and flat.model.rule.stay_flat
    with capture_logs() as logs:
        assert warn_informational(flat)
    assert [e["event"] for e in logs] == ["signals_informational"]
    assert "every action is flat" in logs[0]["hint"]
    assert flat.model.rule.update(0.99) == "flat"

    over = load_model(Config(signal=SignalConfig(long_threshold=0.53)), None, None)
    assert not over.model.rule.stay_flat
    with capture_logs() as logs:
        assert not warn_informational(over)
    assert [e["event"] for e in logs] == ["signal_policy_overridden"]
    assert logs[0]["long_threshold"] == 0.53 and logs[0]["short_threshold"] is None
    assert "every action is flat" not in str(logs)
    assert over.model.rule.update(0.54) == "long"  # what the log now says: actions follow the threshold
