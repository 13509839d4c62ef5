"""The trading policy chosen and reported by the live kernel: ``SignalRule`` + the paper broker's ``step``.

``replay`` feeds CONSECUTIVE bars (their p_up, open and close) through the very ``SignalRule`` the
daemon runs and the paper broker's pure state machine (next-open fills, fee and slippage), and
measures what a paper account would have made: net PnL after costs, fees, round trips, exposure,
and a t-statistic over the round trips (they never overlap: one position at a time). No second
backtester: what is chosen here is what the daemon does.

``search`` replays a small grid of settings (thresholds at quantiles of the validation p_up,
long-only or long/short, hysteresis, minimum hold) on validation bars and keeps the best net PnL.
Cost-aware: when no setting is net-positive (with at least ``min_trades`` round trips), the policy
is ``flat``, which is what an artifact then ships; its signals are informational.
Pure: arrays in, figures out (no I/O, no clock, no torch).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from barsignal.engine.broker import Rules, new_account, step
from barsignal.engine.metrics import sum_ci
from barsignal.engine.signal import Signal, SignalRule

DAY_MS = 86_400_000
MIN_VAL_DAYS = 10  # a "trade" policy needs at least this many validation days (and a finite CI)


@dataclass(frozen=True)
class Policy:
    """The signal settings an artifact ships (``signal`` section of the manifest)."""

    policy: str = "flat"  # "trade" or "flat" (stay flat: nothing was net-positive on validation)
    long_threshold: float = 1.0
    short_threshold: float = 0.0
    hysteresis: float = 0.0
    cooldown_bars: int = 0
    min_hold_bars: int = 0
    allow_short: bool = False

    def rule(self) -> SignalRule:
        return SignalRule(self.long_threshold, self.short_threshold, self.hysteresis, self.cooldown_bars,
                          self.allow_short, min_hold_bars=self.min_hold_bars, stay_flat=self.policy == "flat")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, signal: dict[str, Any]) -> Policy:
        """From an artifact's ``signal`` section (older ones: thresholds only, policy "trade")."""
        short = signal.get("short_threshold")
        return cls(policy=str(signal.get("policy", "trade")),
                   long_threshold=float(signal.get("long_threshold", 1.0)),
                   short_threshold=0.0 if short is None else float(short),
                   hysteresis=float(signal.get("hysteresis") or 0.0),
                   cooldown_bars=int(signal.get("cooldown_bars") or 0),
                   min_hold_bars=int(signal.get("min_hold_bars") or 0),
                   allow_short=bool(signal.get("allow_short", short is not None)))


@dataclass(frozen=True)
class Bars:
    """Consecutive scored bars: p_up, open, close and open time (ms) of each, in time order."""

    p: np.ndarray
    open: np.ndarray
    close: np.ndarray
    open_time: np.ndarray

    def __len__(self) -> int:
        return len(self.p)

    @classmethod
    def of(cls, ws: Any, p: np.ndarray) -> Bars:
        """From a ``WindowSet`` with bar prices (every window, ties included) and its p_up."""
        order = np.argsort(ws.times, kind="stable")
        return cls(np.asarray(p, np.float64)[order], ws.bar_open[ws.ends[order]],
                   ws.bar_close[ws.ends[order]], ws.times[order])

    def fold(self, k: int, n: int) -> Bars:
        """The k-th of n consecutive, equal-length chronological folds."""
        a, b = len(self) * k // n, len(self) * (k + 1) // n
        return Bars(self.p[a:b], self.open[a:b], self.close[a:b], self.open_time[a:b])


def replay(bars: Bars, policy: Policy, rules: Rules = Rules(), *, ci: bool = True,
           symbol: str = "SYM") -> dict[str, Any]:
    """Replay ``bars`` through ``policy.rule()`` and the paper broker; figures after costs."""
    rules = replace(rules, allow_short=policy.allow_short)
    rule = policy.rule()
    acct = new_account(symbol, rules)
    trips: list[float] = []
    fills = 0
    in_pos = 0
    equity = np.empty(len(bars))
    p, o, c, t = bars.p.tolist(), bars.open.tolist(), bars.close.tolist(), bars.open_time.tolist()
    for i in range(len(p)):
        action = rule.update(p[i])
        sig = Signal(f"{symbol}-{t[i]}", symbol, t[i], o[i], c[i], p[i], action, "")
        acct, fill, row = step(acct, sig, rules)
        if fill is not None:
            fills += 1
            if fill.trip_pnl is not None:
                trips.append(fill.trip_pnl)
        in_pos += acct.qty != 0.0
        equity[i] = row.equity
    net = float(equity[-1] - rules.initial_cash) if len(equity) else 0.0
    tr = np.asarray(trips, np.float64)
    sd = float(tr.std(ddof=1)) if len(tr) > 1 else 0.0
    out: dict[str, Any] = {
        "bars": len(bars), "net_pnl": net, "net_return": net / rules.initial_cash,
        "fees": float(acct.fees), "gross_pnl": net + float(acct.fees), "fills": fills,
        "trades": len(tr), "exposure": in_pos / max(1, len(bars)),
        "mean_trade_pnl": float(tr.mean()) if len(tr) else 0.0,
        "t_stat": float(tr.mean() / sd * math.sqrt(len(tr))) if sd > 0 else 0.0,
        "win_rate": float((tr > 0).mean()) if len(tr) else 0.0,
        "costs": {"fee_bps": rules.fee_bps, "slippage_bps": rules.slippage_bps, "fill": rules.fill,
                  "initial_cash": rules.initial_cash, "sizing": rules.sizing},
    }
    if ci and len(bars) > 1:
        pnl = np.diff(np.r_[rules.initial_cash, equity])  # per-bar change of equity
        est = sum_ci(pnl, bars.open_time // DAY_MS)
        out["net_pnl_ci95"] = [est.lo, est.hi] if math.isfinite(est.lo) else None  # None: too few days
    return out


def grid(p_val: np.ndarray, horizon: int, quantiles: tuple[float, ...] = (0.95, 0.99, 0.998),
         allow_short: bool = True) -> list[Policy]:
    """The candidate settings: thresholds at validation quantiles of p_up, long-only (and long/short
    when ``allow_short``), hysteresis 0 or a third of the threshold's distance from the median,
    minimum hold h or 2h bars."""
    p = np.asarray(p_val, np.float64)
    med = float(np.median(p))
    out = []
    shorts = (False, True) if allow_short else (False,)
    for q, short, hyst, hold in itertools.product(quantiles, shorts, (0.0, 1 / 3), (1, 2)):
        lt, st = float(np.quantile(p, q)), float(np.quantile(p, 1 - q))
        if not 0.0 <= st <= lt <= 1.0:
            continue
        h = hyst * min(lt - med, med - st) if short else hyst * (lt - med)
        out.append(Policy("trade", lt, st, max(0.0, h), 0, hold * horizon, short))
    return out


def search(bars: Bars, horizon: int, rules: Rules = Rules(), *, min_trades: int = 5,
           candidates: list[Policy] | None = None, allow_short: bool = True,
           min_days: int = MIN_VAL_DAYS) -> dict[str, Any]:
    """The best setting on ``bars`` (validation) by net PnL after costs, or ``flat`` when none is
    net-positive with at least ``min_trades`` round trips. A "trade" policy is also refused (``flat``,
    with the reason) when the validation bars span fewer than ``min_days`` UTC days or the chosen
    setting's day-bootstrap CI is not finite: a figure with no CI is not evidence. Every candidate's
    figures are returned."""
    cands = grid(bars.p, horizon, allow_short=allow_short) if candidates is None else candidates
    results = []
    for pol in cands:
        r = replay(bars, pol, rules, ci=False)
        results.append({"policy": pol.to_dict(), **{k: r[k] for k in
                        ("net_pnl", "fees", "trades", "fills", "exposure", "t_stat")}})
    ok = [i for i, r in enumerate(results) if r["trades"] >= min_trades]
    best = max(ok, key=lambda i: results[i]["net_pnl"]) if ok else None
    chosen = Policy("flat", min_hold_bars=horizon)
    reason = f"no candidate made {min_trades} round trips on validation: stay flat, signals are informational"
    if best is not None:
        if results[best]["net_pnl"] > 0:
            chosen = cands[best]
            reason = "the candidate with the highest validation net PnL after costs"
        else:
            reason = (f"no candidate is net-positive after costs on validation (best {results[best]['net_pnl']:.2f} "
                      f"on {rules.initial_cash:g} initial cash): stay flat, signals are informational")
    best_replay = replay(bars, cands[best], rules) if best is not None else None
    days = len(np.unique(bars.open_time // DAY_MS))
    if chosen.policy == "trade" and best_replay is not None:
        ci = best_replay.get("net_pnl_ci95")
        why = (f"{days} validation days < {min_days}" if days < min_days else
               "its validation net PnL has no finite day-bootstrap CI" if not ci or
               not all(math.isfinite(v) for v in ci) else "")
        if why:
            chosen = Policy("flat", min_hold_bars=horizon)
            reason = (f"refused: the best candidate is net-positive on validation ({results[best]['net_pnl']:.2f}) "
                      f"but {why}: too little evidence to trade; stay flat, signals are informational")
    return {"policy": chosen.to_dict(), "reason": reason, "min_trades": min_trades,
            "candidates": results, "best_candidate": None if best is None else
            {"policy": cands[best].to_dict(), **(best_replay or {})},
            "validation_days": days, "min_days": min_days, "chosen_val": replay(bars, chosen, rules)}
