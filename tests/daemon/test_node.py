"""The composition root (``barsignal.node``) and the start-up fixes around it: the rule state restored
in one place, the bar record naming the artifact, the ``auto`` backend falling back to ONNX Runtime
when the backend it chose fails to load (a failing backend injected through the registry), no
dynamic-batch session at start, keep-warm errors logged once and exported, and no systemd setting
that the code does not read."""

from __future__ import annotations

import asyncio
import re
import sys
import types
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from barsignal.daemon.config import Config, JsonlSinkConfig, SinksConfig, StateConfig
from barsignal.engine.signal import RuleState
from barsignal.errors import ArtifactError
from barsignal.node import Start, build_node, load_model
from tests.daemon.conftest import real_bars

REPO = Path(__file__).resolve().parents[2]


def _cfg(state: Path, **engine) -> Config:
    from barsignal.daemon.config import EngineConfig

    return Config(sinks=SinksConfig(enabled=("jsonl",), jsonl=JsonlSinkConfig(path="signals.jsonl", fsync="never")),
                  state=StateConfig(dir=str(state)), engine=EngineConfig(**engine))


def test_live_node_resumes_from_the_outbox_and_records_what_it_started_from(tmp_path, tiny_artifact) -> None:
    state = tmp_path / "state"
    cfg = _cfg(state)
    bars = real_bars(900)

    async def first() -> tuple[int, RuleState]:
        node = build_node(cfg, "live", artifact_dir=str(tiny_artifact))
        await node.start()
        for b in bars[:800]:
            node.handle(b)
        await node.drain(10)
        last, rs = node.pipeline.last_signalled, node.pipeline.rule_state
        await node.close()
        return last, rs

    last, rs = asyncio.run(first())
    assert last == bars[799].open_time

    async def second() -> tuple[int | None, RuleState, dict]:
        node = build_node(cfg, "live", artifact_dir=str(tiny_artifact))
        got = node.pipeline.last_signalled, node.pipeline.rule_state
        node.handle(bars[800])
        await node.close()
        heads = [orjson.loads(f.read_bytes().splitlines()[0])["run_start"]
                 for f in sorted((state / "bars").glob("*.jsonl"))]
        return got[0], got[1], heads[-1]

    last2, rs2, head = asyncio.run(second())
    assert last2 == last and rs2 == rs  # restored from the outbox, in Node.restore only
    assert head["last_signalled"] == last and RuleState.from_dict(head["rule_state"]) == rs
    assert head["artifact"]["path"] == str(tiny_artifact.resolve()) and len(head["artifact"]["hash"]) == 64


def test_an_explicit_start_wins_over_the_outbox(tmp_path, tiny_artifact) -> None:
    """Parity starts each recorded run from its run_start line, whatever the (temporary) outbox says."""
    rs = RuleState("long", 7)
    node = build_node(_cfg(tmp_path / "s"), "replay", artifact_dir=str(tiny_artifact), start=Start(123, rs))
    try:
        assert node.pipeline.last_signalled == 123 and node.pipeline.rule_state == rs
        assert node.barlog is None and node.sinks == []
    finally:
        asyncio.run(node.close())


@pytest.fixture
def failing_backend(monkeypatch):
    """A backend that says it can run here and then fails at load, registered as ``tensorrt`` (what
    ``auto`` picks on a GPU host) through the backend registry."""
    from barsignal.engine.backends import BACKENDS

    mod = types.ModuleType("barsignal_test_failing_backend")
    mod.available = lambda: (True, "injected by the test")

    def load(variant, **kw):
        raise ArtifactError(f"{variant.onnx}: no engine could be built (injected failure)")

    mod.load = load
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(BACKENDS, "tensorrt", mod.__name__)
    return mod


def test_auto_falls_back_to_onnxruntime_with_one_line_when_its_backend_fails_to_load(
        failing_backend, tmp_path, tiny_artifact) -> None:
    with structlog.testing.capture_logs() as logs:
        loaded = load_model(_cfg(tmp_path), str(tiny_artifact), None)
    assert loaded.model.info["backend"] == "onnxruntime"
    fb = [e for e in logs if e["event"] == "scorer_fallback"]
    assert len(fb) == 1 and fb[0]["failed"] == "tensorrt" and "injected failure" in fb[0]["error"]
    assert [e["backend"] for e in logs if e["event"] == "scorer loaded"] == ["onnxruntime"]
    import numpy as np

    assert 0.0 <= loaded.model.scorer.score(np.zeros((30, 33), np.float32)) <= 1.0  # it really scores


def test_an_explicitly_requested_backend_that_fails_stops_the_start(failing_backend, tmp_path,
                                                                    tiny_artifact) -> None:
    with pytest.raises(ArtifactError, match="injected failure"):
        load_model(_cfg(tmp_path, backend="tensorrt"), str(tiny_artifact), None)


def test_the_daemon_loads_no_dynamic_batch_session(tmp_path, tiny_artifact) -> None:
    import numpy as np

    scorer = load_model(_cfg(tmp_path), str(tiny_artifact), None).model.scorer
    assert scorer.dynamic is None and scorer.dynamic_path is not None  # present in the artifact, not opened
    w = np.random.default_rng(0).standard_normal((4, 30, 33)).astype(np.float32)
    out = scorer.score_batch(w)  # offline evaluation opens it on first use
    assert scorer.dynamic is not None and out.shape == (4,)


def test_keep_warm_errors_are_logged_once_and_exported(tmp_path, tiny_artifact) -> None:
    from barsignal.daemon.app import Daemon
    from barsignal.daemon.keepwarm import KeepWarm
    from barsignal.daemon.metrics import DaemonMetrics

    d = Daemon(_cfg(tmp_path))
    calls = []

    def warm() -> None:
        calls.append(1)
        raise RuntimeError("rehearsal broke")

    t = [0.0]
    kw = KeepWarm(warm, 0.01, clock=lambda: t[0], on_error=d._keep_warm_failed)

    async def main() -> None:
        task = asyncio.create_task(kw.run())
        for i in range(6):  # arrivals 1 s apart: the busy window opens around the 5th
            t[0] = float(i)
            kw.arrived(t[0])
            await asyncio.sleep(0)
        t[0] = 5.995
        for _ in range(50):
            await asyncio.sleep(0)
            if task.done():
                break
        assert task.done(), "keep-warm must stop at its first error"

    with structlog.testing.capture_logs() as logs:
        asyncio.run(main())
        d._keep_warm_failed("again")  # a second report is not logged again
    assert len(calls) == 1 and kw.errors == 1 and kw.error == "RuntimeError: rehearsal broke"
    stopped = [e for e in logs if e["event"] == "keep_warm_stopped"]
    assert len(stopped) == 1 and stopped[0]["error"] == "RuntimeError: rehearsal broke"
    m = DaemonMetrics()
    m.bind(keep_warm=lambda: kw)
    text = m.render().decode()
    assert "barsignal_keep_warm_errors_total 1.0" in text


def test_systemd_units_set_no_barsignal_variable_the_code_does_not_read() -> None:
    """The GPU drop-in set BARSIGNAL_ENGINE_BACKEND, which no code read: a setting that silently did
    nothing. Every BARSIGNAL_* variable a unit sets must appear in the package's code."""
    code = "\n".join(p.read_text(errors="replace") for p in REPO.rglob("*.py")
                     if not {".venv", "tests"} & set(p.relative_to(REPO).parts))
    units = list((REPO / "systemd").glob("*.service")) + list((REPO / "systemd").glob("*.conf"))
    assert units
    for unit in units:
        for line in unit.read_text().splitlines():
            if line.startswith("Environment="):
                for name in re.findall(r"(BARSIGNAL_[A-Z0-9_]+)=", line):
                    assert name in code, f"{unit.name} sets {name}, which no code reads"


def test_parity_replays_the_rule_settings_the_record_holds_across_a_reload_that_changed_them(
        tmp_path, tiny_artifact) -> None:
    """An operator changes [signal] and reloads: the bar record keeps each rule's settings (run_start and
    swap), so parity with today's config still reproduces the signals made under yesterday's."""
    import subprocess

    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.pipeline import warm

    state = tmp_path / "state"

    def conf(name: str, long_threshold: float, regime_threshold: float) -> Path:
        p = tmp_path / f"{name}.toml"
        p.write_text(f'[state]\ndir = "{state}"\n[sinks]\nenabled = ["jsonl"]\n[sinks.jsonl]\npath = "signals.jsonl"\n'
                     f'fsync = "never"\n[signal]\nlong_threshold = {long_threshold}\nshort_threshold = 0.0\n'
                     f'regime_threshold = {regime_threshold}\n')
        return p

    cfg_a, cfg_b = conf("a", 0.0, 0.1), conf("b", 1.0, 0.99)  # A: always long, active; B: never long, calm
    bars = real_bars(900)

    async def live() -> None:
        node = build_node(cfgmod.load(str(cfg_a)), "live", artifact_dir=str(tiny_artifact))
        await node.start()
        for b in bars[:850]:
            node.handle(b)
        new = load_model(cfgmod.load(str(cfg_b)), str(tiny_artifact), None)  # the reload, by hand
        recent = list(node.pipeline.recent)
        assert warm(new.model.features, recent, new.model.move)  # features and move forecaster, as reload does
        node.swap(new, recent[0].open_time, len(recent))
        for b in bars[850:]:
            node.handle(b)
        await node.drain(10)
        await node.close()

    asyncio.run(live())
    sigs = [orjson.loads(x) for x in (state / "signals.jsonl").read_bytes().splitlines()]
    acts = {s["open_time"]: (s["action"], s["regime"]) for s in sigs}
    assert acts[bars[849].open_time] == ("long", "active") and acts[bars[899].open_time] == ("flat", "calm")
    r = subprocess.run([sys.executable, "-m", "barsignal", "parity", "--live-signals", str(state / "signals.jsonl"),
                        "--bars", str(state / "bars"), "--config", str(cfg_b), "--artifact", str(tiny_artifact)],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "0 differences" in r.stdout and "1 model swap(s) replayed" in r.stdout, \
        r.stdout + r.stderr[-2000:]


def _har_cfg(tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "state"
    p = tmp_path / "har.toml"
    p.write_text(f'[state]\ndir = "{state}"\n[sinks]\nenabled = ["jsonl"]\n[sinks.jsonl]\npath = "signals.jsonl"\n'
                 'fsync = "never"\n')
    return p, state


def _live_run(cfg: Config, artifact: Path, bars: list, seen: list | None = None) -> tuple[Any, ...]:
    """One live run of a node over ``bars`` (the restart's warm-up first, as the feed fetches them):
    the delta it resumed before any bar, the delta after each bar, and the forecaster's final delta."""

    async def main() -> tuple[Any, ...]:
        node = build_node(cfg, "live", artifact_dir=str(artifact))
        mv = node.pipeline.model.move
        resumed = mv.delta
        await node.start()
        deltas = []
        for b in bars:
            node.handle(b)
            deltas.append(mv.delta)
        await node.drain(10)
        await node.close()
        return resumed, deltas, node.pipeline.model.artifact_hash

    return asyncio.run(main())


def test_a_restart_resumes_the_move_correction_and_parity_replays_it_bit_for_bit(tmp_path, har_artifact) -> None:
    """har_seasonal's online correction (delta) is stored with each outbox row and the run_start line:
    a restart resumes it before its warm-up and holds it through the already-signalled bars, so after
    them it is the delta stored with the last row, bit for bit; the p_move that follows tracks an
    uninterrupted run far closer than a fresh start does; and parity replays both runs with 0
    differences."""
    import subprocess

    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.outbox import Outbox

    cfg_path, state = _har_cfg(tmp_path)
    cfg = cfgmod.load(str(cfg_path))
    bars = real_bars(2000)
    cut, warmup = 1500, load_model(cfg, str(har_artifact), None).warmup_bars
    resumed0, d1, art = _live_run(cfg, har_artifact, bars[:cut])
    assert resumed0 == 0.0 and d1[-1] != 0.0
    ob = Outbox(state / "outbox.sqlite", ("jsonl",))
    try:
        last = ob.last("BTCUSDT")
    finally:
        ob.close()
    assert last is not None and last[0] == bars[cut - 1].open_time
    assert last[1].move == {"artifact": art, "delta": d1[-1]}  # exact through orjson and sqlite

    resumed, d2, _ = _live_run(cfg, har_artifact, bars[cut - warmup:])  # the live warm-up, then new bars
    assert resumed == d1[-1]  # before the first warm-up bar
    assert d2[:warmup] == [d1[-1]] * warmup  # held through the warm-up: after it, the stored delta exactly
    assert len(set(d2[warmup:])) > 100  # and learning again from the first new bar
    heads = [orjson.loads(f.read_bytes().splitlines()[0])["run_start"]
             for f in sorted((state / "bars").glob("*.jsonl"))]
    assert heads[-1]["rule_state"]["move"] == {"artifact": art, "delta": d1[-1]}

    sigs = [orjson.loads(x) for x in (state / "signals.jsonl").read_bytes().splitlines()]
    after = [s for s in sigs if s["open_time"] > bars[cut - 1].open_time]
    assert len(after) == len(bars) - cut and all(s["p_move"] is not None for s in after)
    loaded = load_model(cfg, str(har_artifact), None)
    whole = {b.open_time: loaded.model.move.update(b)[0] for b in bars}  # uninterrupted
    fresh = load_model(cfg, str(har_artifact), None).model.move  # a restart that forgot the correction
    cold = {b.open_time: fresh.update(b)[0] for b in bars[cut - warmup:]}
    near = sum(abs(s["p_move"] - whole[s["open_time"]]) for s in after[:100])
    far = sum(abs(cold[s["open_time"]] - whole[s["open_time"]]) for s in after[:100])
    assert near < far / 10, (near, far)

    r = subprocess.run([sys.executable, "-m", "barsignal", "parity", "--live-signals", str(state / "signals.jsonl"),
                        "--bars", str(state / "bars"), "--config", str(cfg_path), "--artifact", str(har_artifact)],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and f"parity OK: {len(sigs)} signals compared, 0 differences" in r.stdout, \
        r.stdout + r.stderr[-2000:]


def test_a_move_state_of_another_artifact_is_ignored_and_an_old_row_without_one_still_loads(tmp_path,
                                                                                          har_artifact) -> None:
    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.outbox import Outbox
    from barsignal.engine.signal import Signal
    from tests.daemon.conftest import write_tiny_artifact
    from tests.tiny_model import har_move_spec

    cfg = cfgmod.load(str(_har_cfg(tmp_path)[0]))
    bars = real_bars(900)
    _, d1, art = _live_run(cfg, har_artifact, bars[:850])
    other = write_tiny_artifact(tmp_path / "other", bias=0.1, move_spec=har_move_spec())
    with structlog.testing.capture_logs() as logs:
        resumed, _, art2 = _live_run(cfg, other, bars[850:])
    assert art2 != art and d1[-1] != 0.0 and resumed == 0.0  # fresh: the stored delta was another artifact's
    ignored = [e for e in logs if e["event"] == "move_state_ignored"]
    assert len(ignored) == 1 and ignored[0]["stored_artifact"] == art[:12]

    old = tmp_path / "old"  # a row stored before the move state was: no "move" in its rule state
    ob = Outbox(old / "outbox.sqlite", ("jsonl",))
    b = bars[10]
    ob.add(Signal(id=f"BTCUSDT-{b.open_time}-x", symbol="BTCUSDT", open_time=b.open_time, bar_open=b.open,
                  bar_close=b.close, p_up=0.6, action="long", artifact="x", source="file"), RuleState("long", 3))
    ob.close()
    node = build_node(cfg, "replay", artifact_dir=str(har_artifact), state=old, start=None)
    try:
        assert node.pipeline.last_signalled == b.open_time and node.pipeline.rule_state.action == "long"
        assert node.pipeline.model.move.delta == 0.0 and node.pipeline.move_hold is None
    finally:
        asyncio.run(node.close())


def test_a_swap_keeps_the_move_correction_for_the_same_artifact_and_resets_it_for_another(tmp_path,
                                                                                        har_artifact) -> None:
    from barsignal.daemon.pipeline import warm
    from tests.daemon.conftest import write_tiny_artifact
    from tests.tiny_model import har_move_spec

    bars = real_bars(1000)
    other = write_tiny_artifact(tmp_path / "other", bias=0.1, move_spec=har_move_spec())
    node = build_node(Config(), "replay", artifact_dir=str(har_artifact), state=tmp_path / "s")
    try:
        for b in bars[:800]:
            node.handle(b)
        recent = list(node.pipeline.recent)
        for path, same in ((har_artifact, True), (other, False)):
            was = node.pipeline.model.move.delta
            new = load_model(Config(), str(path), None)
            ref = load_model(Config(), str(path), None).model.move  # a fresh forecaster warmed the same way
            assert warm(new.model.features, recent, new.model.move)
            for b in recent:
                ref.update(b)
            node.swap(new, recent[0].open_time, len(recent))
            assert node.pipeline.model.move.delta == (was if same else ref.delta) and ref.delta != was
            for b in bars[800:900] if same else bars[900:]:
                node.handle(b)
            recent = list(node.pipeline.recent)
    finally:
        asyncio.run(node.close())
