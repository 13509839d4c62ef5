"""The one pipeline: warm-up, one signal per bar, restart dedup, invalid bars dropped, hot swap (real ORT)."""

from __future__ import annotations

import numpy as np

from barsignal.daemon.pipeline import Model, Pipeline
from barsignal.engine.signal import SignalRule
from tests.daemon.conftest import TinyFeatures, real_bars


def make(scorer, last_signalled=None, state=None) -> Pipeline:
    rule = SignalRule(0.52, 0.48, 0.01, 1, True, state)
    return Pipeline("BTCUSDT", Model(TinyFeatures(), scorer, rule, "ab" * 32), last_signalled=last_signalled)


def test_one_signal_per_bar_after_warmup(tiny_scorer) -> None:
    bars = real_bars(400)
    p = make(tiny_scorer)
    sigs = [s for b in bars if (s := p.process(b, recv_ns=None)) is not None]
    assert len(sigs) == 400 - 30  # TinyFeatures needs 31 bars for its first window
    assert [s.open_time for s in sigs] == [b.open_time for b in bars[30:]]
    assert len({s.id for s in sigs}) == len(sigs)
    assert set(s.action for s in sigs) <= {"long", "short", "flat"}
    assert len(set(s.action for s in sigs)) > 1, "the test data should exercise more than one action"
    assert all(set(s.latency_us) == {"recv_to_bar", "features", "score", "emit"} for s in sigs)
    assert all(np.float32(s.p_up) == s.p_up for s in sigs)


def test_restart_emits_no_duplicate_and_resumes_the_rule(tiny_scorer) -> None:
    bars = real_bars(600)
    p0 = make(tiny_scorer)
    whole = [s for b in bars if (s := p0.process(b)) is not None]
    first = make(tiny_scorer)
    head = [s for b in bars[:300] if (s := first.process(b)) is not None]
    last, state = head[-1].open_time, first.rule_state
    # restart: the warm-up bars overlap what was already signalled
    second = make(tiny_scorer, last_signalled=last, state=state)
    tail = [s for b in bars[300 - 100:] if (s := second.process(b)) is not None]
    assert second.stats.already_signalled == 100
    assert [(s.id, s.p_up, s.action) for s in head + tail] == [(s.id, s.p_up, s.action) for s in whole]


def test_out_of_order_and_duplicate_bars_are_ignored(tiny_scorer) -> None:
    bars = real_bars(100)
    p = make(tiny_scorer)
    sigs = []
    for i, b in enumerate(bars):
        for bb in ([b, b] if i % 10 == 0 else [b]) + ([bars[i - 5]] if i > 50 else []):
            s = p.process(bb)
            if s is not None:
                sigs.append(s)
    assert [s.open_time for s in sigs] == [b.open_time for b in bars[30:]]
    assert p.stats.out_of_order == 10 + 49


def test_an_invalid_bar_is_dropped_and_counted_without_touching_state(tiny_artifact) -> None:
    """The real features (their BadMessage check), as live: absurd, negative, NaN and off-grid bars
    are dropped before any state changes, so the signals equal a run that never saw them."""
    import dataclasses

    from barsignal.daemon.config import Config
    from barsignal.node import load_model

    def fresh() -> Pipeline:
        loaded = load_model(Config(), str(tiny_artifact), None)
        return Pipeline("BTCUSDT", loaded.model, min_bars=loaded.warmup_bars)

    bars = real_bars(1000)
    clean = fresh()
    ref = [s for b in bars if (s := clean.process(b)) is not None]
    assert len(ref) > 100
    p = fresh()
    got = []
    bad_at = {300: {"high": 1e13}, 500: {"volume": -1.0}, 800: {"close": float("nan")},
              900: {"open_time": bars[900].open_time - 30_000}}
    for i, b in enumerate(bars):
        if i in bad_at:  # each before the real bar
            assert p.process(dataclasses.replace(b, **bad_at[i])) is None
        if (s := p.process(b)) is not None:
            got.append(s)
    assert p.stats.invalid == 4 and p.stats.bars == 1000
    assert [_key(s) for s in got] == [_key(s) for s in ref]  # the move forecaster never saw a bad bar either


def test_swap_carries_the_rule_state_and_applies_from_the_next_bar(tiny_scorer) -> None:
    from barsignal.daemon.pipeline import warm

    bars = real_bars(300)
    p = make(tiny_scorer)
    for b in bars[:150]:
        p.process(b)
    state = p.rule_state
    feats = TinyFeatures()
    assert warm(feats, list(bars[119:150]))  # TinyFeatures needs 31 bars for a window
    assert not warm(TinyFeatures(), list(bars[120:150]))
    new = Model(feats, tiny_scorer, SignalRule(0.9, 0.1, 0.0, 0, True), "cd" * 32)
    p.swap(new)
    assert p.rule_state is state  # the rule resumes where it was
    s = p.process(bars[150])
    assert s is not None and s.artifact == "cd" * 32 and s.id.endswith("-" + "cd" * 6)


def test_compute_many_equals_process_bar_by_bar(tiny_artifact, tmp_path) -> None:
    """Replay's chunked path (``node.compute_many``: features, then the scorer's calls back to back,
    then the rules) against the live one-bar path on the real features and the real ONNX scorer: same
    signals and the same rule state after each, bit for bit, across chunk edges, an invalid bar and a
    restart's already-signalled bars."""
    import dataclasses

    from barsignal.daemon.config import Config
    from barsignal.node import Start, build_node, compute_many, load_model

    def fresh(last_signalled: int | None = None) -> Pipeline:
        loaded = load_model(Config(), str(tiny_artifact), None)
        return Pipeline("BTCUSDT", loaded.model, min_bars=loaded.warmup_bars, last_signalled=last_signalled)

    bars = real_bars(1200)
    bars.insert(700, dataclasses.replace(bars[700], close=float("nan")))
    for last in (None, bars[900].open_time):
        one = fresh(last)
        node = build_node(Config(), "replay", artifact_dir=str(tiny_artifact), state=tmp_path / str(last),
                          start=Start(last_signalled=last))
        many = node.pipeline
        ref = [(s, one.rule_state) for b in bars if (s := one.process(b)) is not None]
        got = []
        for k in range(0, len(bars), 97):  # chunks that do not line up with anything
            got += [g for g in compute_many([(node, b, None) for b in bars[k:k + 97]]) if g is not None]
        assert len(ref) > 200 and many.stats.invalid == 1 and many.stats == one.stats
        assert [(*_key(s), st) for s, st in got] == [(*_key(s), st) for s, st in ref]
        assert all(s.p_move is not None for s, _ in got)
        assert len({s.p_up for s, _ in got}) > 100, "distinct windows must give distinct scores"


def _key(s) -> tuple:
    """What a signal says: its id, both heads and both rule outputs."""
    return (s.id, s.p_up, s.action, s.p_move, s.sigma_bp, s.regime)


def _fresh(tiny_artifact, last_signalled=None, state=None, cfg=None) -> Pipeline:
    from barsignal.daemon.config import Config
    from barsignal.node import load_model

    loaded = load_model(cfg or Config(), str(tiny_artifact), None)
    if state is not None:
        loaded.model.rule.state = state
    return Pipeline("BTCUSDT", loaded.model, min_bars=loaded.warmup_bars, last_signalled=last_signalled)


def test_every_signal_carries_the_move_forecast_of_every_bar_seen(tiny_artifact) -> None:
    """The forecaster sees every bar the features accept, the warm-up's included: each signal's p_move and
    sigma_bp are those of a forecaster fed all the bars, and its regime is the regime rule's on them."""
    import math

    from barsignal.daemon.config import Config, SignalConfig
    from barsignal.engine.artifact import load_artifact
    from barsignal.engine.move_registry import build
    from barsignal.engine.regime import RegimeRule

    bars = real_bars(1000)
    cfg = Config(signal=SignalConfig(regime_threshold=0.7, regime_hysteresis=0.02, regime_cooldown_bars=3))
    p = _fresh(tiny_artifact, cfg=cfg)
    sigs = {s.open_time: s for b in bars if (s := p.process(b)) is not None}
    ref, rule = build(load_artifact(tiny_artifact).move), RegimeRule(0.7, 0.02, 3)
    regime, held, seen = "calm", 1 << 30, []
    for b in bars:
        pm, sg = ref.update(b)
        s = sigs.get(b.open_time)
        if s is not None:
            regime, held = rule.step(regime, held, pm)
            seen.append(s.regime)
            assert (s.p_move, s.sigma_bp, s.regime) == (pm, sg, regime)
            assert 0 < s.p_move < 1 and s.sigma_bp > 0 and math.isfinite(s.sigma_bp)
    assert len(sigs) > 200 and set(seen) == {"calm", "active"}, "the real bars should visit both regimes"


def test_a_restart_resumes_the_move_forecast_and_the_regime_exactly(tiny_artifact) -> None:
    bars = real_bars(1200)
    one = _fresh(tiny_artifact)
    whole = [s for b in bars if (s := one.process(b)) is not None]
    first = _fresh(tiny_artifact)
    head = [s for b in bars[:800] if (s := first.process(b)) is not None]
    warmup = first.min_bars
    second = _fresh(tiny_artifact, head[-1].open_time, first.rule_state)
    tail = [s for b in bars[800 - warmup:] if (s := second.process(b)) is not None]  # the live warm-up
    assert second.stats.already_signalled == warmup
    assert [_key(s) for s in head + tail] == [_key(s) for s in whole]


def test_an_artifact_without_a_move_section_signals_nulls(tmp_path) -> None:
    import orjson

    from tests.tiny_model import write_tiny_artifact

    art = write_tiny_artifact(tmp_path / "nomove", real_bars(3000, start=20_000), move=False)
    p = _fresh(art)
    sigs = [s for b in real_bars(1000) if (s := p.process(b)) is not None]
    assert sigs and p.model.move is None
    assert all(s.p_move is None and s.sigma_bp is None and s.regime is None for s in sigs)
    d = orjson.loads(orjson.dumps(sigs[-1]))
    assert d["p_move"] is None and d["sigma_bp"] is None and d["regime"] is None  # JSON null, never NaN
    assert p.rule_state.regime == "calm"


def test_a_swap_to_an_artifact_without_a_move_head_signals_nulls_from_the_next_bar(tiny_artifact, tmp_path) -> None:
    from barsignal.daemon.config import Config
    from barsignal.daemon.pipeline import warm
    from barsignal.node import load_model
    from tests.tiny_model import write_tiny_artifact

    bars = real_bars(1100)
    p = _fresh(tiny_artifact)
    before = [s for b in bars[:1000] if (s := p.process(b)) is not None]
    assert before and before[-1].p_move is not None
    new = load_model(Config(), str(write_tiny_artifact(tmp_path / "nomove", real_bars(3000, start=20_000),
                                                       move=False)), None)
    assert warm(new.model.features, bars[:1000], new.model.move) and new.model.move is None
    p.swap(new.model)
    after = [s for b in bars[1000:] if (s := p.process(b)) is not None]
    assert len(after) == 100 and all(s.p_move is None and s.sigma_bp is None and s.regime is None for s in after)
