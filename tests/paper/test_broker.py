"""The broker's accounting: a hand-worked example, then invariants on real bars (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barsignal.engine.broker import Rules, new_account, step, target_direction
from barsignal.engine.signal import Signal


def sig(t: int, o: float, c: float, action: str) -> Signal:
    return Signal(f"X-{t}", "X", t * 60_000, o, c, 0.5, action, "a" * 20)


def run(rules: Rules, signals: list[Signal]):
    acct = new_account("X", rules)
    fills, rows = [], []
    for s in signals:
        acct, f, r = step(acct, s, rules)
        fills.append(f)
        rows.append(r)
    return acct, fills, rows


def test_next_open_round_trip_by_hand() -> None:
    rules = Rules(fee_bps=10, slippage_bps=1, initial_cash=10_000)
    acct, fills, rows = run(rules, [sig(0, 100, 101, "long"), sig(1, 102, 103, "long"),
                                    sig(2, 104, 105, "flat"), sig(3, 106, 100, "flat")])
    assert fills[0] is None and rows[0].equity == 10_000  # the order waits for the next open
    buy = fills[1]
    px = 102 * 1.0001
    notional = 10_000 / 1.001
    assert buy.signal_id == "X-0" and buy.side == "buy" and buy.open_time == 60_000
    assert buy.price == pytest.approx(px) and buy.qty == pytest.approx(notional / px)
    assert buy.fee == pytest.approx(notional * 0.001) and buy.trip_pnl is None
    assert rows[1].cash == pytest.approx(0.0, abs=1e-9)
    assert rows[1].equity == pytest.approx(buy.qty * 103)
    assert fills[2] is None and rows[2].equity == pytest.approx(buy.qty * 105)
    sell = fills[3]
    spx = 106 * 0.9999
    assert sell.signal_id == "X-2" and sell.side == "sell" and sell.qty == pytest.approx(buy.qty)
    assert sell.realized == pytest.approx(buy.qty * (spx - px))
    assert sell.trip_pnl == pytest.approx(buy.qty * (spx - px) - buy.fee - sell.fee)
    assert acct.qty == 0.0 and acct.cash == pytest.approx(10_000 + sell.trip_pnl)
    assert rows[3].equity == pytest.approx(acct.cash)  # flat: the close of 100 no longer matters
    assert acct.pending_dir == 0 and acct.pending_id == "X-3"


def test_close_fill_and_flip_to_short() -> None:
    rules = Rules(fill="close", fee_bps=10, slippage_bps=0, allow_short=True, sizing="fixed_notional",
                  notional=1000)
    acct, fills, _ = run(rules, [sig(0, 100, 100, "long"), sig(1, 100, 110, "short")])
    assert fills[0].price == 100 and fills[0].qty == pytest.approx(10)
    flip = fills[1]
    assert flip.side == "sell" and flip.price == 110
    assert flip.realized == pytest.approx(100)  # 10 units closed at +10
    assert flip.position == pytest.approx(-1000 / 110)
    assert flip.trip_pnl == pytest.approx(100 - 1.0 - 1.1)  # realized - entry fee - exit fee
    assert acct.qty < 0 and acct.avg_price == 110


def test_long_only_maps_short_to_flat() -> None:
    assert target_direction("short", Rules(allow_short=False)) == 0
    assert target_direction("short", Rules(allow_short=True)) == -1
    with pytest.raises(ValueError, match="not one of"):
        target_direction("buy", Rules())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), fill=st.sampled_from(["next_open", "close"]),
       sizing=st.sampled_from(["fixed_notional", "equity_fraction"]), short=st.booleans(),
       frac=st.floats(0.1, 1.0), fee=st.floats(0, 30), slip=st.floats(0, 10))
def test_accounting_identities_on_real_bars(spot_bars, make_signals, seed, fill, sizing, short, frac, fee,
                                            slip) -> None:
    rules = Rules(fill=fill, fee_bps=fee, slippage_bps=slip, sizing=sizing, equity_fraction=frac,
                  notional=3000, allow_short=short)
    signals = make_signals(spot_bars(400), seed=seed, allow_short=short)
    acct = new_account("BTCUSDT", rules)
    pending = None
    for s in signals:
        prev = acct
        acct, f, row = step(acct, s, rules)
        # equity = initial + realized - fees + unrealized, at every bar
        assert row.equity == pytest.approx(
            rules.initial_cash + acct.realized - acct.fees + acct.unrealized(s.bar_close), rel=1e-9, abs=1e-6)
        if f is not None:
            assert f.fee == pytest.approx(fee / 1e4 * f.qty * f.price)
            ref = s.bar_open if fill == "next_open" else s.bar_close
            slipped = ref * (1 + slip / 1e4) if f.side == "buy" else ref * (1 - slip / 1e4)
            assert f.price == pytest.approx(slipped)
            assert f.signal_id == (pending if fill == "next_open" else s.id)
            # no leverage: the position never exceeds equity
            assert abs(acct.qty) * f.price <= prev.equity(f.price) * (1 + 1e-9) + 1e-6
        want = acct.pending_dir if fill == "next_open" else target_direction(s.action, rules)
        if fill == "close":
            assert acct.direction == want
        if not short:
            assert acct.qty >= 0.0
        pending = acct.pending_id
    trips = acct.realized - acct.fees
    assert math.isfinite(trips)
