"""Keep-warm: when it plans to busy-poll, that it runs only around expected bars, and that signals are
identical with it on or off (the real daemon on a real loopback feed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from barsignal.daemon.app import Daemon, load_model
from barsignal.daemon.config import EngineConfig
from barsignal.daemon.keepwarm import KeepWarm
from barsignal.features.bar import BarFrame
from barsignal.sim.simulator import FeedSimulator
from tests.daemon.conftest import real_bars
from tests.daemon.test_app import make_cfg, signals


def test_window_is_the_median_interval_ahead_with_a_capped_lead() -> None:
    kw = KeepWarm(lambda: None, lead_s=0.1, clock=lambda: 0.0)
    for t in (0.0, 60.0, 120.2):
        kw.arrived(t)
    assert kw.window() is None  # two intervals are not enough
    kw.arrived(179.9)
    assert kw.window() == pytest.approx((239.9 - 0.1, 239.9 + 0.1))  # median of 60, 60.2, 59.7
    kw.arrived(240.0)
    assert kw.window() == pytest.approx((300.05 - 0.1, 300.05 + 0.1))  # median of 60, 60.2, 59.7, 60.1
    fast = KeepWarm(lambda: None, lead_s=0.1, clock=lambda: 0.0)
    for i in range(5):
        fast.arrived(i * 0.005)  # 200 bars/s: the lead shrinks to a quarter of the interval
    assert fast.window() == pytest.approx((0.025 - 0.00125, 0.025 + 0.00125))


def test_busy_only_around_expected_bars_and_idle_once_they_stop() -> None:
    async def go() -> tuple[int, int, int, float]:
        calls = [0]

        def warm() -> None:
            calls[0] += 1

        kw = KeepWarm(warm, lead_s=0.005, period_s=0.0005)
        task = asyncio.create_task(kw.run())
        for _ in range(12):  # bars every 30 ms: busy windows of +-5 ms around each expected one
            kw.arrived()
            await asyncio.sleep(0.03)
        during = calls[0]
        await asyncio.sleep(0.1)  # the feed stops: at most one more window, then it waits
        after_window = calls[0]
        await asyncio.sleep(0.2)
        idle = calls[0]
        task.cancel()
        return during, after_window, idle, kw.busy_s

    during, after_window, idle, busy = asyncio.run(go())
    assert during > 0 and busy > 0
    assert idle == after_window, "keep-warm kept scoring with no bars coming"
    assert busy < 0.36 * 0.5, f"busy {busy:.3f} s of 0.36 s: windows are +-5 ms of each 30 ms, not all the time"


def test_no_rehearsal_starts_while_a_frame_is_on_its_way() -> None:
    """``busy()`` True (a frame read but not handed out yet): the window goes on polling the loop but
    runs no rehearsal, so none holds the frame back; False again: rehearsals resume."""
    async def go() -> tuple[int, int, int, int]:
        calls = [0]
        pending = [False]

        def warm() -> None:
            calls[0] += 1

        kw = KeepWarm(warm, lead_s=0.02, period_s=0.0005, busy=lambda: pending[0])
        task = asyncio.create_task(kw.run())
        for _ in range(4):  # bars every 30 ms: a plan, then busy windows of +-7.5 ms
            kw.arrived()
            await asyncio.sleep(0.03)
        before = calls[0]
        pending[0] = True
        await asyncio.sleep(0.03)  # a whole window with a frame "on its way"
        during, skipped = calls[0] - before, kw.skipped
        pending[0] = False
        kw.arrived()
        await asyncio.sleep(0.03)
        resumed = calls[0] - before - during
        task.cancel()
        return before, during, skipped, resumed

    before, during, skipped, resumed = asyncio.run(go())
    assert before > 0 and resumed > 0
    assert during == 0 and skipped > 0


def test_signals_are_identical_with_keep_warm_on_and_off(tmp_path: Path, tiny_artifact: Path) -> None:
    bars = real_bars(1100)
    frame = BarFrame.from_bars(bars)

    async def one_run(keep_warm_ms: float) -> tuple[list[dict], Daemon]:
        sim = FeedSimulator(frame, speed=200.0, start_index=900, end_index=1100, intrabar=1,
                            ping_interval_s=None, close_delay_ms=0)
        await sim.start()
        try:
            state = tmp_path / f"kw{keep_warm_ms:g}"
            cfg = make_cfg(sim, state)
            cfg = msgspec.structs.replace(cfg, engine=EngineConfig(keep_warm_ms=keep_warm_ms))
            d = Daemon(cfg, loaded=load_model(cfg, str(tiny_artifact), None), drain_timeout_s=5)
            task = asyncio.create_task(d.run())
            end = bars[1099].open_time
            while not (d.pipeline is not None and d.pipeline.last_open_time == end):
                assert not task.done(), "the daemon stopped early"
                await asyncio.sleep(0.01)
            d.request_stop()
            assert await asyncio.wait_for(task, 15) == 0
            return signals(state), d
        finally:
            await sim.stop()

    off, d_off = asyncio.run(one_run(0.0))
    on, d_on = asyncio.run(one_run(50.0))
    assert d_off.keep_warm is None
    assert d_on.keep_warm is not None and d_on.keep_warm.calls > 0, "keep-warm never ran"
    # Each run's REST warm-up ends where the feed was when it connected; compare the bars both signalled
    # (the default rule has no hysteresis or cooldown, so an action depends on its p_up only).
    a = {s["open_time"]: (s["id"], s["p_up"], s["action"], s["p_move"], s["sigma_bp"], s["regime"]) for s in off}
    b = {s["open_time"]: (s["id"], s["p_up"], s["action"], s["p_move"], s["sigma_bp"], s["regime"]) for s in on}
    common = sorted(a.keys() & b.keys())
    assert len(common) > 150 and common[-1] == bars[1099].open_time
    assert [a[t] for t in common] == [b[t] for t in common]


def test_rehearsals_between_bars_change_no_signal(tiny_artifact: Path) -> None:
    from barsignal.daemon.config import Config
    from barsignal.daemon.pipeline import Pipeline

    bars = real_bars(1000)
    pipes = []
    for _ in range(2):
        loaded = load_model(Config(), str(tiny_artifact), None)
        pipes.append(Pipeline("BTCUSDT", loaded.model, min_bars=loaded.warmup_bars, keep_bars=8))
    plain, rehearsed = pipes
    ran, moved = [0], [0]
    own = rehearsed.model.features.rehearse
    rehearsed.model.features.rehearse = lambda bar: (ran.__setitem__(0, ran[0] + 1), own(bar))[-1]
    mv = rehearsed.model.move
    assert mv is not None, "the tiny artifact has a move forecast"

    class Spy:  # the real forecaster, its updates counted while a rehearsal runs
        spec, rehearsing = mv.spec, False

        def update(self, bar):
            moved[0] += self.rehearsing
            return mv.update(bar)

        def snapshot(self):
            return mv.snapshot()

        def restore(self, snap):
            mv.restore(snap)

        def persisted(self):
            return mv.persisted()

    spy = rehearsed.model.move = Spy()
    a, b = [], []
    for bar in bars:
        a.append(plain.process(bar))
        for _ in range(3):
            before = mv.snapshot()
            spy.rehearsing = True
            done = rehearsed.rehearse()  # what keep-warm runs while waiting for the bar
            spy.rehearsing = False
            assert mv.snapshot() == before, "a rehearsal changed the move forecaster"
            if done is not None:
                assert done[0].p_move is not None and done[0].regime in ("calm", "active")
        b.append(rehearsed.process(bar))
    sigs = [s for s in a if s is not None]
    assert len(sigs) > 200
    key = lambda s: (s.id, s.p_up, s.action, s.p_move, s.sigma_bp, s.regime)  # noqa: E731
    assert [key(s) for s in sigs] == [key(s) for s in b if s is not None]
    assert moved[0] > 3 * 200, "the rehearsal never ran the move forecaster"
    assert rehearsed._rehearsal is not None and rehearsed._rehearsal[0][0] == bars[-2].open_time
    assert rehearsed._rehearsal[2] == bars[-2].open_time + 60_000  # the bar after the last one
    assert ran[0] > 3 * 200, "the rehearsal never ran the features"


def test_feed_rehearsal_runs_the_sequencers_live_case_and_leaves_the_feed_as_it_was() -> None:
    import copy
    from unittest import mock

    import orjson

    from barsignal.daemon.binance.ws import decode
    from barsignal.daemon.config import FeedConfig
    from barsignal.daemon.feed.client import FeedClient
    from barsignal.daemon.feed.sequencer import Emit, Sequencer
    from barsignal.daemon.keepwarm import FeedRehearsal

    def closed(t: int) -> bytes:
        k = {"t": t, "T": t + 59_999, "s": "BTCUSDT", "i": "1m", "f": 1, "L": 2, "o": "10.0", "c": "10.5",
             "h": "11.0", "l": "9.5", "v": "3.0", "n": 4, "x": True, "q": "30.0", "V": "1.0", "Q": "10.0", "B": "0"}
        return orjson.dumps({"stream": "btcusdt@kline_1m",
                             "data": {"e": "kline", "E": t + 60_050, "s": "BTCUSDT", "k": k}})

    feed = FeedClient(FeedConfig(symbols=["BTCUSDT"], ws_url="ws://127.0.0.1:9", rest_url="http://127.0.0.1:9"))

    t0 = 1_700_000_040_000
    for e in range(0, 400, 25):  # the exchange clock fitted, as the driver's first frames fit it
        feed.exchange_clock.observe(t0 - 60_000 + e, 1000.0 + e, "BTCUSDT")
    feed.exchange_clock.tick(2000.0)
    assert feed.exchange_clock.known

    def take(frame: bytes) -> list[int]:  # what the driver does with a frame: decode, sequence within the limit
        ev = decode(frame, symbols={"BTCUSDT"})
        return [o.bar.open_time for o in feed.seq.kline(ev, ev.event_time + 5_000) if isinstance(o, Emit)]

    def state() -> dict:
        return {k: (vars(v) if k == "stats" else v) for k, v in vars(copy.deepcopy(feed.seq)).items()}

    assert take(closed(t0)) + take(closed(t0 + 60_000)) == [t0, t0 + 60_000]
    before, frames = state(), feed.stats.frames
    rehearse = FeedRehearsal(feed)
    got: list = []
    real = Sequencer._next_closed
    with mock.patch.object(Sequencer, "_next_closed", autospec=True,
                           side_effect=lambda *a: got.append(real(*a)) or got[-1]):
        for _ in range(3):
            rehearse()
    assert state() == before and feed.stats.frames == frames  # every value put back
    assert len(got) == 3 and all(o is not None and o[0].bar.open_time == t0 + 120_000 for o in got)  # the live case
    assert take(closed(t0 + 120_000)) == [t0 + 120_000]  # the feed's own next frame is the next bar, once
    assert feed.seq.progress == before["progress"] + 1


def test_node_rehearsal_runs_the_commit_code_on_shadows_and_changes_nothing(tiny_artifact: Path,
                                                                            tmp_path: Path) -> None:
    """``Node.rehearse`` between live bars (what keep-warm runs) leaves the outbox's bookkeeping, its
    writer's queue and every sink queue exactly as they were, and every signal and outbox row the
    same as a run without it; its shadow ``add`` and queue code did run."""
    import orjson

    from barsignal.daemon.config import Config
    from barsignal.daemon.outbox import Outbox
    from barsignal.node import build_node
    from tests.daemon.test_outbox import ListSink

    def state(node) -> tuple:
        ob = node.outbox
        return (ob._next, ob._submitted, ob._added, {k: set(v) for k, v in ob._pending.items()}, dict(ob._refs),
                dict(ob._last), list(ob._ids), len(ob.writer._deferred),
                [(w.queue.qsize(), w.queue._unfinished_tasks, w.backlog, w._missed) for w in node.workers])

    async def run(rehearse: bool, where: Path) -> tuple[list, list, int]:
        loaded = load_model(Config(), str(tiny_artifact), None)
        sink = ListSink("list")
        node = build_node(Config(), "replay", state=where, loaded=loaded, sinks=[sink])
        adds = [0]
        shadow_add = Outbox.add

        def counting(self, sig, rule_state):  # the shadow's add (the real one is the node's outbox)
            adds[0] += self is not node.outbox
            return shadow_add(self, sig, rule_state)

        Outbox.add = counting  # type: ignore[method-assign]
        await node.start()  # the sink worker: it delivers what is offered once committed
        try:
            for bar in real_bars(900):
                if rehearse:
                    for _ in range(3):
                        before = state(node)
                        node.rehearse()
                        assert state(node) == before, "a rehearsal changed the outbox, its writer or a queue"
                node.handle(bar)
                await asyncio.sleep(0)
            node.outbox.flush()
            assert await node.drain(10.0)
            rows = node.outbox.writer.call(lambda: node.outbox._db().execute(
                "SELECT seq, id, payload, rule_state FROM signals ORDER BY seq").fetchall())
            rows = [(seq, i, {k: v for k, v in orjson.loads(p).items() if k != "latency_us"}, r)
                    for seq, i, p, r in rows]  # the timings differ from run to run
        finally:
            Outbox.add = shadow_add  # type: ignore[method-assign]
            await node.close()
        return rows, sink.got, adds[0]

    plain, got_plain, _ = asyncio.run(run(False, tmp_path / "plain"))
    rehearsed, got_rehearsed, shadow_adds = asyncio.run(run(True, tmp_path / "rehearsed"))
    assert len(plain) > 100 and got_plain == [r[1] for r in plain]  # every signal delivered, once, in order
    assert rehearsed == plain and got_rehearsed == got_plain
    assert shadow_adds > 3 * 100, "the rehearsal never ran the outbox's add"
