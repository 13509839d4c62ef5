"""The har_seasonal move forecaster: incremental == the research batch bit for bit on real bars, gaps,
warm-up, snapshot/restore, and its parameters fitted on real bars (model/move.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barsignal.engine import move_har, move_registry
from barsignal.engine.move import MoveSpec
from barsignal.features.bar import Bar

from .conftest import SPOT_FILE


@pytest.fixture(scope="module")
def real() -> tuple[list, dict]:
    """The month's gap-free segments and har_seasonal params fitted on its first 60 % (two spans
    shortened so the test also crosses a full span)."""
    from barsignal.model import move as mv
    from barsignal.model.dataset import load_segments

    segs = load_segments([SPOT_FILE])
    mb = mv.MoveBars.of(segs)
    a, b = mb.bounds[0]
    ends = np.arange(a + 40, a + int(0.6 * (b - a)))
    params = mv.fit_har(mb, ends, 15, spans=(30, 60, 240, 1440))
    params["calib"] = {"kind": "logistic", "a": -7.0, "b": 1.9}
    return segs, params


@pytest.fixture(scope="module")
def bars(real: tuple[list, dict]) -> list[Bar]:
    """The first 1,600 bars of the month's longest gap-free segment."""
    return list(max(real[0], key=lambda s: len(s.frame)).frame.slice(0, 1600).bars())


def _forecaster(params: dict, threshold_bp: float = 20.0) -> move_har.HarSeasonal:
    f = move_registry.build(MoveSpec(15, threshold_bp, move_har.KIND, params))
    assert isinstance(f, move_har.HarSeasonal)
    return f


@pytest.mark.parametrize(("kind", "eta"), [("logistic", 0.0), ("normal", 0.0), ("logistic", 0.002)])
def test_incremental_equals_batch_bit_for_bit_on_real_bars(real: tuple[list, dict], kind: str, eta: float) -> None:
    params = real[1]
    frames = [fr.slice(a, min(a + 20_000, len(fr)) - 7) for fr in (s.frame for s in real[0])
              for a in range(0, len(fr), 20_000)]  # gaps of 7 bars every 20,000 bars, and the file's own
    p = {**params, "calib": {**params["calib"], "kind": kind, "eta": eta}}
    f = _forecaster(p)
    inc_p, inc_s, bat_p, bat_s = [], [], [], []
    delta = 0.0
    for fr in frames:  # the runs one after another: the forecaster restarts at each gap
        for bar in fr.bars():
            pm, sb = f.update(bar)
            inc_p.append(pm)
            inc_s.append(sb)
        bp, bs, delta = move_har.batch_run(_forecaster(p), fr.open_time, fr.close, delta=delta)
        bat_p += bp.tolist()
        bat_s += bs.tolist()
        assert delta == f.delta  # the online correction, carried across the gap, bit for bit
    inc = np.array([inc_p, inc_s])
    bat = np.array([bat_p, bat_s])
    assert len(frames) > 2 and inc.shape[1] == sum(len(fr) for fr in frames) > 40_000
    assert np.array_equal(inc, bat, equal_nan=True)  # bit for bit, NaN where warming
    ok = np.isfinite(inc[0])
    assert ok.mean() > 0.99 and np.all((inc[0][ok] > 0) & (inc[0][ok] < 1)) and np.all(inc[1][ok] > 0)
    if eta:
        assert f.delta != 0.0  # it learned; the static map with the same sigma differs
        static = _forecaster({**p, "calib": {**p["calib"], "eta": 0.0}})
        st_p = np.array([static.update(b)[0] for fr in frames for b in fr.bars()])
        assert np.array_equal(np.isnan(st_p), np.isnan(inc[0])) and not np.array_equal(st_p[ok], inc[0][ok])


def test_online_correction_learns_the_level_from_known_outcomes(real: tuple[list, dict], bars: list[Bar]) -> None:
    """An intercept far too high is pulled down by outcomes h bars old; a gap keeps it, reset clears it."""
    params = real[1]
    p = {**params, "calib": {**params["calib"], "a": params["calib"]["a"] + 3.0, "eta": 0.01}}
    f = _forecaster(p)
    deltas = []
    for i, b in enumerate(bars):
        f.update(b)
        deltas.append(f.delta)
        if i < 15 + f.min_bars:  # nothing forecast h bars ago yet: nothing learned
            assert f.delta == 0.0
    assert deltas[-1] < -1.0 and deltas[-1] < deltas[len(bars) // 2] < 0.0
    kept = f.delta
    after_gap = Bar(bars[-1].open_time + 10 * 60_000, 1.0, 1.0, 1.0, bars[-1].close, 1.0)
    assert math.isnan(f.update(after_gap)[0])
    assert f.delta == kept  # a gap keeps what was learned
    # ... and forgets the forecasts whose outcome spans it: after the gap it runs as a fresh
    # forecaster holding the same correction
    g = _forecaster(p)
    g._delta = kept
    g.update(after_gap)
    later = [Bar(b.open_time + (after_gap.open_time - bars[0].open_time), b.open, b.high, b.low, b.close, b.volume)
             for b in bars[:200]]
    assert np.array_equal(np.array([f.update(b) for b in later[1:]]), np.array([g.update(b) for b in later[1:]]),
                          equal_nan=True)
    assert f.delta == g.delta != kept
    f.reset()
    assert f.delta == 0.0


def test_warm_up_and_gaps(real: tuple[list, dict], bars: list[Bar]) -> None:
    params = real[1]
    bars = bars[:400]
    f = _forecaster(params)
    out = [f.update(b) for b in bars]
    first = next(i for i, (pm, _) in enumerate(out) if math.isfinite(pm))
    assert first == f.warmup_bars - 1 == 30  # 31 bars: 30 returns
    assert all(math.isfinite(pm) for pm, _ in out[first:])
    # a missing bar: the forecaster starts afresh, as a fresh one fed from the bar after the gap
    f2 = _forecaster(params)
    got = [f2.update(b) for b in bars[:200] + bars[201:]]
    fresh = _forecaster(params)
    want = [fresh.update(b) for b in bars[201:]]
    assert np.array_equal(np.array(got[200:]), np.array(want), equal_nan=True)
    assert all(math.isnan(pm) for pm, _ in got[200:200 + f.warmup_bars - 1])
    # a repeated bar and a bar out of order are gaps too; a non-positive close resets
    f3 = _forecaster(params)
    for b in bars[:100]:
        f3.update(b)
    assert math.isnan(f3.update(bars[99])[0]) and math.isnan(f3.update(bars[50])[0])
    bad = Bar(bars[51].open_time, 1.0, 1.0, 1.0, 0.0, 0.0)
    assert math.isnan(f3.update(bad)[0]) and math.isnan(f3.update(bars[52])[0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 1500), rehearse=st.lists(st.tuples(st.integers(-2, 3), st.floats(0.5, 2.0)),
                                                   min_size=1, max_size=4))
def test_snapshot_restore_leaves_it_unchanged(real: tuple[list, dict], bars: list[Bar], cut: int,
                                              rehearse: list[tuple[int, float]]) -> None:
    params = {**real[1], "calib": {**real[1]["calib"], "eta": 0.002}}  # the online state too
    bars = bars[:cut + 40]
    a, b = _forecaster(params), _forecaster(params)
    for bar in bars[:cut]:
        a.update(bar)
        b.update(bar)
    snap = b.snapshot()
    last = bars[cut - 1] if cut else bars[0]
    for step, mult in rehearse:  # anything: next minute, a gap, a repeat, out of order
        b.update(Bar(last.open_time + step * 60_000, last.close, last.close, last.close, last.close * mult, 1.0))
    b.restore(snap)
    for bar in bars[cut:]:
        assert np.array_equal(np.array(a.update(bar)), np.array(b.update(bar)), equal_nan=True)
    a.reset()
    b.reset()
    assert a.snapshot() == b.snapshot()


def test_bad_params_are_named(real: tuple[list, dict]) -> None:
    with pytest.raises(ValueError, match=r"move.*params"):
        move_registry.build(MoveSpec(15, 20.0, move_har.KIND, {"coef": [0.0]}))
    with pytest.raises(ValueError, match=r"calib.eta"):
        move_registry.build(MoveSpec(15, 20.0, move_har.KIND, {**real[1], "calib": {"kind": "normal", "eta": 0.01}}))
    with pytest.raises(ValueError, match="unknown kind"):
        move_registry.build(MoveSpec(15, 20.0, "nope", {}))


def test_minute_of_week() -> None:
    assert move_har.minute_of_week(0) == 3 * 1440  # 1970-01-01 00:00 UTC, a Thursday
    assert move_har.minute_of_week(1_669_593_600_000) == 0  # 2022-11-28 00:00 UTC, a Monday


def test_persisted_state_round_trips_bit_for_bit_and_a_bad_one_is_refused(real: tuple[list, dict],
                                                                         bars: list[Bar]) -> None:
    """``persisted`` is the learned delta alone (a float64 exact through orjson); ``resume`` sets it and
    nothing else; without the online correction there is nothing to persist."""
    import orjson

    params = real[1]
    p = {**params, "calib": {**params["calib"], "eta": 0.01}}
    f, g = _forecaster(p), _forecaster(p)
    for b in bars[:1200]:
        f.update(b)
    for b in bars[1000:1200]:
        g.update(b)
    d = orjson.loads(orjson.dumps(f.persisted()))
    assert set(d) == {"delta"} and d["delta"] == f.delta != 0.0 and g.delta != f.delta
    before = g.snapshot()
    g.resume(d)
    assert g.delta == f.delta and g.snapshot()[:6] == before[:6]  # the run's bars untouched
    for bad in ({}, {"delta": None}, {"delta": float("nan")}, {"delta": "0.1"}, {"delta": True}):
        with pytest.raises(ValueError, match="move state: delta"):
            g.resume(bad)
    assert g.delta == f.delta
    assert _forecaster({**params, "calib": {**params["calib"], "eta": 0.0}}).persisted() is None
