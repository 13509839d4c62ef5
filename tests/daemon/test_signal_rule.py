from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from barsignal.daemon.config import SignalConfig
from barsignal.engine.regime import RegimeRule
from barsignal.engine.signal import RuleState, SignalRule


def run(rule: SignalRule, ps: list[float]) -> list[str]:
    return [rule.update(p) for p in ps]


def test_thresholds_without_short() -> None:
    rule = SignalRule(0.6, 0.4)
    assert run(rule, [0.5, 0.61, 0.59, 0.3, 0.6]) == ["flat", "long", "flat", "flat", "long"]


def test_thresholds_with_short() -> None:
    rule = SignalRule(0.6, 0.4, allow_short=True)
    assert run(rule, [0.5, 0.39, 0.41, 0.4, 0.7]) == ["flat", "short", "flat", "short", "long"]


def test_hysteresis_holds_until_the_band_is_left() -> None:
    rule = SignalRule(0.6, 0.4, hysteresis=0.05, allow_short=True)
    assert run(rule, [0.6, 0.56, 0.551, 0.549, 0.56]) == ["long", "long", "long", "flat", "flat"]
    assert run(rule, [0.4, 0.44, 0.45, 0.4501]) == ["short", "short", "short", "flat"]


def test_cooldown_holds_an_action_for_n_bars() -> None:
    rule = SignalRule(0.6, 0.4, cooldown_bars=2, allow_short=True)
    # change at bar 0 -> bars 1 and 2 locked -> bar 3 may change
    assert run(rule, [0.7, 0.3, 0.3, 0.3, 0.5]) == ["long", "long", "long", "short", "short"]
    assert run(rule, [0.5, 0.5, 0.5]) == ["short", "flat", "flat"]


def test_state_round_trip_resumes_identically() -> None:
    ps = [0.7, 0.3, 0.55, 0.62, 0.2, 0.45, 0.9, 0.1]
    whole = run(SignalRule(0.6, 0.4, 0.05, 2, True), ps)
    first = SignalRule(0.6, 0.4, 0.05, 2, True)
    head = run(first, ps[:3])
    resumed = SignalRule(0.6, 0.4, 0.05, 2, True, RuleState.from_dict(first.state.to_dict()))
    assert head + run(resumed, ps[3:]) == whole


def test_config_overrides_artifact_thresholds() -> None:
    art = {"long_threshold": 0.58, "short_threshold": 0.42}
    r = SignalRule.from_config(SignalConfig(), art)
    assert (r.long_threshold, r.short_threshold) == (0.58, 0.42)
    r = SignalRule.from_config(SignalConfig(long_threshold=0.7, hysteresis=0.01, cooldown_bars=3), art)
    assert (r.long_threshold, r.short_threshold, r.hysteresis, r.cooldown_bars) == (0.7, 0.42, 0.01, 3)


def test_an_artifact_without_short_threshold_works_long_only() -> None:
    art = {"long_threshold": 0.53, "short_threshold": None}
    r = SignalRule.from_config(SignalConfig(), art)
    assert run(r, [0.1, 0.6, 0.5]) == ["flat", "long", "flat"]
    with pytest.raises(ValueError, match="short_threshold"):
        SignalRule.from_config(SignalConfig(allow_short=True), art)


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match="short"):
        SignalRule(0.4, 0.6)


@given(st.lists(st.floats(0, 1), max_size=200), st.floats(0, 0.2), st.integers(0, 5))
def test_actions_only_change_outside_cooldown(ps: list[float], hyst: float, cool: int) -> None:
    rule = SignalRule(0.6, 0.4, hyst, cool, True)
    acts = run(rule, ps)
    last_change = -10**9
    prev = "flat"
    for i, (a, p) in enumerate(zip(acts, ps, strict=True)):
        if a != prev:
            assert i - last_change > cool
            last_change = i
            if a == "long":
                assert p >= 0.6
            if a == "short":
                assert p <= 0.4
        prev = a


def test_minimum_hold_keeps_a_position_for_h_bars_but_not_flat() -> None:
    rule = SignalRule(0.6, 0.4, allow_short=True, min_hold_bars=3)
    assert run(rule, [0.9, 0.1, 0.1, 0.1, 0.5, 0.5]) == ["long", "long", "long", "short", "short", "short"]
    # flat is not held: from flat the rule enters at once
    rule = SignalRule(0.6, 0.4, min_hold_bars=3)
    assert run(rule, [0.5, 0.9, 0.5, 0.5, 0.5]) == ["flat", "long", "long", "long", "flat"]


@given(st.lists(st.floats(0, 1), max_size=200), st.integers(0, 6))
def test_positions_last_at_least_min_hold_bars(ps: list[float], hold: int) -> None:
    acts = run(SignalRule(0.6, 0.4, allow_short=True, min_hold_bars=hold), ps)
    runs, prev, n = [], None, 0
    for a in acts:
        if a != prev and prev is not None:
            runs.append((prev, n))
            n = 0
        prev, n = a, n + 1
    assert all(n >= hold for a, n in runs if a != "flat")  # closed positions were held >= hold bars


def test_stay_flat_artifact_policy_and_artifact_rule_settings() -> None:
    art = {"policy": "flat", "long_threshold": 1.0, "short_threshold": 0.0, "min_hold_bars": 15,
           "hysteresis": 0.02, "cooldown_bars": 2}
    r = SignalRule.from_config(SignalConfig(allow_short=True), art)
    assert r.stay_flat and r.min_hold_bars == 15 and (r.hysteresis, r.cooldown_bars) == (0.02, 2)
    assert set(run(r, [1.0, 0.0, 0.99, 0.01] * 10)) == {"flat"}  # even at p = 1.0 or 0.0
    # the operator's explicit thresholds win over a flat policy
    r = SignalRule.from_config(SignalConfig(long_threshold=0.7), art)
    assert not r.stay_flat and run(r, [0.8]) == ["long"]
    # the config's non-zero hysteresis / cooldown override the artifact's
    r = SignalRule.from_config(SignalConfig(hysteresis=0.05, cooldown_bars=4), {**art, "policy": "trade"})
    assert (r.hysteresis, r.cooldown_bars, r.stay_flat) == (0.05, 4, False)


# -- the regime rule: p_move -> calm / active, beside the action ------------------------------------

NAN = float("nan")


def regimes(rule: SignalRule, pm: list[float], p_up: float = 0.5) -> list[str]:
    out = []
    for p in pm:
        rule.update(p_up, p)
        out.append(rule.state.regime)
    return out


def test_regime_threshold_and_hysteresis() -> None:
    rule = SignalRule(0.6, 0.4, regime=RegimeRule(0.5, 0.1))
    assert regimes(rule, [0.3, 0.5, 0.41, 0.4, 0.399, 0.45, 0.6]) == \
        ["calm", "active", "active", "active", "calm", "calm", "active"]


def test_regime_cooldown_and_nan_holds() -> None:
    rule = SignalRule(0.6, 0.4, regime=RegimeRule(0.5, 0.0, cooldown_bars=2))
    # change at bar 0 -> bars 1, 2 locked -> bar 3 may change; bar 5's 0.9 falls in the next cooldown,
    # and NaN (no forecast) changes nothing, however long it lasts
    assert regimes(rule, [0.9, 0.1, 0.1, 0.1, NAN, 0.9, NAN, NAN, NAN, 0.9]) == \
        ["active", "active", "active", "calm", "calm", "calm", "calm", "calm", "calm", "active"]


def test_regime_leaves_the_action_alone() -> None:
    ps = [0.7, 0.3, 0.55, 0.62, 0.2, 0.45, 0.9, 0.1]
    plain = run(SignalRule(0.6, 0.4, 0.05, 2, True), ps)
    both = SignalRule(0.6, 0.4, 0.05, 2, True, regime=RegimeRule(0.5, 0.05, 1))
    assert [both.update(p, pm) for p, pm in zip(ps, [0.9, 0.1] * 4, strict=True)] == plain


@given(st.lists(st.tuples(st.floats(0, 1), st.one_of(st.floats(0, 1), st.just(NAN))), max_size=120),
       st.integers(0, 119), st.floats(0, 0.2), st.integers(0, 5))
def test_regime_state_round_trip_resumes_identically(seq: list[tuple[float, float]], cut: int, hyst: float,
                                                     cool: int) -> None:
    """The outbox's rule-state row (to_dict, JSON, from_dict) resumes the action and the regime exactly."""
    import orjson

    def make(state: RuleState | None = None) -> SignalRule:
        return SignalRule(0.6, 0.4, 0.02, 1, True, state, regime=RegimeRule(0.5, hyst, cool))

    whole = make()
    want = [(whole.update(p, m), whole.state.regime) for p, m in seq]
    first = make()
    got = [(first.update(p, m), first.state.regime) for p, m in seq[:cut]]
    resumed = make(RuleState.from_dict(orjson.loads(orjson.dumps(first.state.to_dict()))))
    got += [(resumed.update(p, m), resumed.state.regime) for p, m in seq[cut:]]
    assert got == want


@given(st.lists(st.one_of(st.floats(0, 1), st.just(NAN)), max_size=200), st.floats(0, 0.3), st.integers(0, 5))
def test_regime_changes_only_outside_cooldown_and_past_its_thresholds(pm: list[float], hyst: float,
                                                                      cool: int) -> None:
    rs = regimes(SignalRule(0.6, 0.4, regime=RegimeRule(0.5, hyst, cool)), pm)
    last, prev = -10**9, "calm"
    for i, (r, p) in enumerate(zip(rs, pm, strict=True)):
        if r != prev:
            assert i - last > cool and p == p  # never on a NaN
            assert (p >= 0.5) if r == "active" else (p < 0.5 - hyst)
            last = i
        prev = r


def test_regime_from_config_params_and_an_old_state_row() -> None:
    cfg = SignalConfig(regime_threshold=0.6, regime_hysteresis=0.1, regime_cooldown_bars=3)
    r = SignalRule.from_config(cfg, {"long_threshold": 0.58, "short_threshold": 0.42})
    assert r.regime == RegimeRule(0.6, 0.1, 3)
    assert SignalRule.from_params(r.params()).regime == r.regime
    old = {k: v for k, v in r.params().items() if k != "regime"}  # a bar record written before the regime
    assert SignalRule.from_params(old).regime == RegimeRule()
    assert RuleState.from_dict({"action": "long", "held_bars": 3}) == RuleState("long", 3, "calm", 1 << 30)
    with pytest.raises(ValueError, match="unknown regime"):
        RuleState.from_dict({"action": "long", "regime": "wild"})
    with pytest.raises(ValueError, match="regime_hysteresis"):
        SignalConfig(regime_threshold=0.1, regime_hysteresis=0.2)
