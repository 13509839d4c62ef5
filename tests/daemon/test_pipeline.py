"""The one pipeline: warm-up, one signal per bar, restart dedup, batch == one by one (real ORT)."""

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


def test_batch_scoring_equals_one_by_one(tiny_scorer) -> None:
    bars = real_bars(1500)
    p1 = make(tiny_scorer)
    one = [s for b in bars if (s := p1.process(b)) is not None]
    for batch in (1, 7, 512, 4096):
        many = make(tiny_scorer).process_many(bars, batch=batch)
        assert [(s.id, s.open_time, s.action) for s in many] == [(s.id, s.open_time, s.action) for s in one]
        a = np.array([s.p_up for s in many], np.float32).view(np.uint32)
        b = np.array([s.p_up for s in one], np.float32).view(np.uint32)
        assert np.array_equal(a, b), f"batch={batch}: p_up differs bitwise"


def test_score_batch_is_used_only_when_the_scorer_declares_it_exact(tiny_scorer) -> None:
    bars = real_bars(300)
    calls = {"batch": 0}

    class Exact:
        name = "exact"
        batch_exact = True

        def score(self, w):
            return tiny_scorer.score(w)

        def score_batch(self, ws):
            calls["batch"] += 1
            return np.array([tiny_scorer.score(w) for w in ws], np.float32)

    p1 = make(tiny_scorer)
    one = [s for b in bars if (s := p1.process(b)) is not None]
    many = make(Exact()).process_many(bars, batch=64)
    assert calls["batch"] == -(-len(one) // 64)
    assert [(s.id, s.p_up, s.action) for s in many] == [(s.id, s.p_up, s.action) for s in one]


def test_restart_emits_no_duplicate_and_resumes_the_rule(tiny_scorer) -> None:
    bars = real_bars(600)
    whole = make(tiny_scorer).process_many(bars)
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
