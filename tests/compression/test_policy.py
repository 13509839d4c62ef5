"""The policy is chosen and reported by the live kernel: SignalRule + the paper broker's step."""

from __future__ import annotations

import numpy as np
import pytest

from barsignal.engine.broker import Rules
from barsignal.engine.policy import Bars, Policy, grid, replay, search

T0 = 1_669_000_000_000


def _bars(p, o, c) -> Bars:
    n = len(p)
    return Bars(np.asarray(p, float), np.asarray(o, float), np.asarray(c, float), T0 + 60_000 * np.arange(n))


def test_replay_by_hand_next_open_fills_fee_and_slippage() -> None:
    rules = Rules(fee_bps=10.0, slippage_bps=1.0, initial_cash=10_000.0)
    o = [100.0, 101.0, 102.0, 104.0, 104.0]
    c = [100.5, 101.5, 103.0, 104.5, 104.0]
    bars = _bars([0.9, 0.9, 0.1, 0.1, 0.1], o, c)
    r = replay(bars, Policy("trade", 0.8, 0.2, 0.0, 0, 1, False), rules)
    fee, slip = 1e-3, 1e-4
    buy = 101.0 * (1 + slip)  # signal at bar 0 fills at bar 1's open
    qty = 10_000.0 / (1 + fee) / buy
    sell = 104.0 * (1 - slip)  # flat at bar 2 fills at bar 3's open
    net = qty * (sell - buy) - fee * qty * buy - fee * qty * sell
    assert r["trades"] == 1 and r["fills"] == 2
    assert r["net_pnl"] == pytest.approx(net, rel=1e-12)
    assert r["fees"] == pytest.approx(fee * qty * (buy + sell), rel=1e-12)
    assert r["exposure"] == pytest.approx(2 / 5)  # held over bars 1 and 2


def test_minimum_hold_keeps_the_position_h_bars() -> None:
    o = c = np.full(12, 100.0)
    p = [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    short = replay(_bars(p, o, c), Policy("trade", 0.8, 0.2, 0.0, 0, 1, False))
    held = replay(_bars(p, o, c), Policy("trade", 0.8, 0.2, 0.0, 0, 5, False))
    assert short["exposure"] == pytest.approx(1 / 12) and held["exposure"] == pytest.approx(5 / 12)


def test_flat_policy_never_trades() -> None:
    rng = np.random.default_rng(0)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, 500)))
    r = replay(_bars(rng.uniform(0, 1, 500), np.r_[c[0], c[:-1]], c), Policy("flat"))
    assert r["trades"] == 0 and r["fills"] == 0 and r["net_pnl"] == 0.0


def test_search_stays_flat_when_nothing_pays_the_costs() -> None:
    rng = np.random.default_rng(1)
    n = 3 * 1440
    c = 100 * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))  # 2 bp moves: below a 22 bp round trip
    p = rng.uniform(0.3, 0.7, n)
    res = search(_bars(p, np.r_[c[0], c[:-1]], c), horizon=5)
    assert res["policy"]["policy"] == "flat" and "stay flat" in res["reason"]
    assert res["best_candidate"]["net_pnl"] <= 0 and res["chosen_val"]["trades"] == 0
    assert len(res["candidates"]) == len(grid(p, 5)) == 24  # 3 quantiles x long/short x 2 x 2
    assert all(c["net_pnl"] <= 0 for c in res["candidates"])


def _leaky(days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """30 bp bar moves and a p_up that knows the next bar: a big (impossible) edge."""
    rng = np.random.default_rng(2)
    n = days * 1440
    r = rng.normal(0, 3e-3, n)
    c = 100 * np.exp(np.cumsum(r))
    o = np.r_[c[0], c[:-1]]
    nxt = np.r_[c[2:] / c[1:-1] - 1, 0, 0]  # the move of the bar after the fill bar (open t+1 .. close t+1)
    return np.clip(0.5 + 50 * nxt, 0.01, 0.99), o, c


def test_search_refuses_to_trade_on_too_few_validation_days() -> None:
    p, o, c = _leaky(3)
    res = search(_bars(p, o, c), horizon=1)
    assert res["best_candidate"]["net_pnl"] > 0  # it would have made money on these bars
    assert res["policy"]["policy"] == "flat" and res["chosen_val"]["trades"] == 0
    days = len(np.unique((T0 + 60_000 * np.arange(len(p))) // 86_400_000))  # 3 days of bars over 4 UTC days
    assert res["validation_days"] == days == 4
    assert "refused" in res["reason"] and "4 validation days < 10" in res["reason"]


def test_search_refuses_a_policy_without_a_finite_ci() -> None:
    p, o, c = _leaky(3)  # 3 days: the day bootstrap gives no CI below 5 days
    res = search(_bars(p, o, c), horizon=1, min_days=1)
    assert res["best_candidate"]["net_pnl"] > 0 and res["best_candidate"]["net_pnl_ci95"] is None
    assert res["policy"]["policy"] == "flat" and res["chosen_val"]["trades"] == 0
    assert "refused" in res["reason"] and "no finite day-bootstrap CI" in res["reason"]


def test_a_small_research_run_on_real_bars_never_ships_trade() -> None:
    """As a new user would: a few days of real futures bars, the chronological splits, a p_up that
    knows the future (it makes money on validation): the policy search refuses it, naming why."""
    from barsignal.model.dataset import DatasetSpec, build, load_segments
    from tests.conftest import DATA

    files = sorted((DATA / "klines" / "um_futures_1m_daily").glob("*.csv"))[:5]
    sp = build(load_segments(files), DatasetSpec(window=30, horizon=15))
    val = sp.val_all
    assert val is not None
    assert val.ret is not None
    p = np.clip(0.5 + 100 * val.ret, 0.01, 0.99)  # knows close[t + 15] / close[t] - 1
    bars = Bars.of(val, p)
    res = search(bars, horizon=15)
    assert res["best_candidate"]["net_pnl"] > 0 and len(val) > 500  # it would have shipped "trade"
    assert res["policy"]["policy"] == "flat" and "refused" in res["reason"]
    assert f"{res['validation_days']} validation days < 10" in res["reason"]


def test_search_trades_when_a_setting_is_net_positive() -> None:
    rng = np.random.default_rng(2)
    n = 12 * 1440
    r = rng.normal(0, 3e-3, n)  # 30 bp bar moves
    c = 100 * np.exp(np.cumsum(r))
    o = np.r_[c[0], c[:-1]]
    nxt = np.r_[c[2:] / c[1:-1] - 1, 0, 0]  # the move of the bar after the fill bar (open t+1 .. close t+1)
    p = np.clip(0.5 + 50 * nxt, 0.01, 0.99)  # p_up knows the next bar: a big edge
    res = search(_bars(p, o, c), horizon=1)
    assert res["policy"]["policy"] == "trade" and res["chosen_val"]["net_pnl"] > 0
    assert res["chosen_val"]["t_stat"] > 2
    chosen = Policy(**res["policy"])
    assert replay(_bars(p, o, c), chosen)["net_pnl"] == pytest.approx(res["chosen_val"]["net_pnl"])
