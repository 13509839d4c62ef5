"""The paper broker's accounting: a pure state machine from signals to fills and equity (engine layer:
the daemon's paper sink and the offline policy search run the same code).

No I/O and no clock: ``step(account, signal, rules)`` returns the next account, the fill it made
(if any) and the bar's equity row. The SQLite ledger (``ledger.py``) wraps it in one transaction
per signal; replay and live run the same code.

Fill rules: ``next_open`` (default) fills the order of the signal at bar t at the open of bar t+1,
which arrives with the next signal; ``close`` fills at the signal bar's own close (optimistic:
the close is only known once the bar is over). After a gap the pending order fills at the open of
the next bar that arrives. Costs: a taker fee (Binance spot 0.1 %) on every fill's notional plus
slippage in bps against the trader (buys pay more, sells get less). No leverage: a position's
notional is capped by equity. Shorts pay no borrow interest (a simplification, not a venue).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from barsignal.engine.signal import Signal


@dataclass(frozen=True, slots=True)
class Rules:
    """The paper broker's settings (built from ``PaperConfig``)."""

    fill: Literal["next_open", "close"] = "next_open"
    fee_bps: float = 10.0
    slippage_bps: float = 1.0
    sizing: Literal["fixed_notional", "equity_fraction"] = "equity_fraction"
    notional: float = 1000.0
    equity_fraction: float = 1.0
    initial_cash: float = 10_000.0
    allow_short: bool = False

    @classmethod
    def from_config(cls, cfg: object) -> Rules:
        """Build from a ``PaperConfig`` section (any object with the same attribute names)."""
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Account:
    """One symbol's paper account after the last processed signal."""

    symbol: str
    cash: float
    qty: float = 0.0  # signed base quantity: > 0 long, < 0 short
    avg_price: float = 0.0  # average entry price of the open position (execution prices)
    realized: float = 0.0  # realized price PnL, before fees
    fees: float = 0.0  # fees paid so far
    traded_notional: float = 0.0
    trip_pnl: float = 0.0  # net PnL (fees included) of the round trip now open
    pending_dir: int | None = None  # target direction awaiting the next open: -1, 0, +1
    pending_id: str | None = None  # the signal that ordered it
    last_open_time: int | None = None  # the last processed bar
    last_close: float = math.nan
    bars: int = 0

    @property
    def direction(self) -> int:
        return (self.qty > 0) - (self.qty < 0)

    def equity(self, mark: float) -> float:
        return self.cash + self.qty * mark

    def unrealized(self, mark: float) -> float:
        return self.qty * (mark - self.avg_price) if self.qty else 0.0


@dataclass(frozen=True, slots=True)
class Fill:
    """One simulated market order. ``signal_id`` is the signal that ordered it (unique)."""

    signal_id: str
    symbol: str
    open_time: int  # the bar whose open (or close) it filled at
    side: str  # "buy" | "sell"
    qty: float  # base quantity, > 0
    price: float  # execution price, slippage included
    fee: float
    realized: float  # price PnL realized by this fill, before fees
    trip_pnl: float | None  # net PnL of the round trip this fill closed, None if none closed
    position: float  # signed quantity after the fill


@dataclass(frozen=True, slots=True)
class EquityRow:
    """The account marked at one bar's close."""

    signal_id: str
    symbol: str
    open_time: int
    bar_open: float
    bar_close: float
    p_up: float
    action: str
    qty: float
    cash: float
    equity: float
    p_move: float | None = None  # the signal's move forecast and regime (None: it had none)
    sigma_bp: float | None = None
    regime: str | None = None


def new_account(symbol: str, rules: Rules) -> Account:
    return Account(symbol=symbol, cash=rules.initial_cash)


def target_direction(action: str, rules: Rules) -> int:
    """long -> +1, short -> -1 (0 when long-only), flat -> 0."""
    if action == "long":
        return 1
    if action == "short":
        return -1 if rules.allow_short else 0
    if action == "flat":
        return 0
    raise ValueError(f"signal action {action!r} is not one of long, short, flat")


def _trade(acct: Account, direction: int, mid: float, signal_id: str, open_time: int,
           rules: Rules) -> tuple[Account, Fill | None]:
    """Move the position to ``direction`` at market price ``mid``; no order if already there."""
    qty = acct.qty
    if direction == (qty > 0) - (qty < 0):
        return acct, None
    fee_rate = rules.fee_bps / 1e4
    slip = rules.slippage_bps / 1e4
    buying = direction > (qty > 0) - (qty < 0)
    px = mid * (1 + slip) if buying else mid * (1 - slip)
    target = 0.0
    if direction != 0:
        # Equity once the current position is closed at this price and fee, then sized.
        eq_after = acct.cash + qty * px - fee_rate * abs(qty) * px
        cap = max(eq_after, 0.0) / (1 + fee_rate)
        notional = (min(rules.notional, cap) if rules.sizing == "fixed_notional"
                    else rules.equity_fraction * cap)
        target = direction * notional / px
    dq = target - qty
    if dq == 0.0:
        return acct, None
    fee = fee_rate * abs(dq) * px
    avg, realized, trip = acct.avg_price, 0.0, acct.trip_pnl
    trip_closed: float | None = None
    if qty == 0.0 or (qty > 0) == (dq > 0):  # open or add
        avg = (qty * avg + dq * px) / (qty + dq)
        trip -= fee
        qty = qty + dq
    else:  # reduce, close or flip
        closing = min(abs(dq), abs(qty))
        realized = closing * (px - avg) * (1 if qty > 0 else -1)
        close_fee = fee * closing / abs(dq)
        opened = abs(dq) - closing
        qty = 0.0 if target == 0.0 else qty + dq
        if qty == 0.0 or opened > 0:  # the round trip is over
            trip_closed = trip + realized - close_fee
            trip = -(fee - close_fee)
            avg = px if opened > 0 else 0.0
        else:
            trip += realized - close_fee
    fill = Fill(signal_id, acct.symbol, open_time, "buy" if dq > 0 else "sell", abs(dq), px, fee,
                realized, trip_closed, qty)
    acct = Account(acct.symbol, acct.cash - dq * px - fee, qty, avg, acct.realized + realized,
                   acct.fees + fee, acct.traded_notional + abs(dq) * px, trip, acct.pending_dir,
                   acct.pending_id, acct.last_open_time, acct.last_close, acct.bars)
    return acct, fill


def step(acct: Account, sig: Signal, rules: Rules) -> tuple[Account, Fill | None, EquityRow]:
    """Process one signal (a new bar): fill what is pending, mark to the close, queue the next order.

    The caller must drop duplicates and stale signals (``sig.open_time <= acct.last_open_time``).
    """
    fill = None
    want = target_direction(sig.action, rules)
    if rules.fill == "next_open":
        if acct.pending_dir is not None and acct.pending_id is not None:
            acct, fill = _trade(acct, acct.pending_dir, sig.bar_open, acct.pending_id, sig.open_time, rules)
        pending_dir, pending_id = want, sig.id
    else:
        acct, fill = _trade(acct, want, sig.bar_close, sig.id, sig.open_time, rules)
        pending_dir, pending_id = acct.pending_dir, acct.pending_id
    a = acct
    acct = Account(a.symbol, a.cash, a.qty, a.avg_price, a.realized, a.fees, a.traded_notional, a.trip_pnl,
                   pending_dir, pending_id, sig.open_time, sig.bar_close, a.bars + 1)
    row = EquityRow(sig.id, sig.symbol, sig.open_time, sig.bar_open, sig.bar_close, sig.p_up, sig.action,
                    acct.qty, acct.cash, acct.cash + acct.qty * sig.bar_close, sig.p_move, sig.sigma_bp, sig.regime)
    return acct, fill, row
