"""Backtest report: metrics of a paper account beside buy-and-hold on the same bars, Markdown + PNG,
and the move head scored against what happened (:func:`move_scores`: realized exceedance rate beside
the mean p_move, Brier, log-loss, AUC, calibration, and the exceedance rate in each regime).

Returns are per bar (1 minute). Sharpe and Sortino are annualized with sqrt(525,600), the number of
1-minute bars in a 365-day year (crypto trades around the clock), and use a zero risk-free rate.
matplotlib is imported only to draw the PNG; without it the report is Markdown only and says how
to add the chart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.daemon.paper.ledger import PaperLedger
from barsignal.engine.broker import Fill, Rules
from barsignal.engine.metrics import roc_auc
from barsignal.engine.move import MoveSpec

BARS_PER_YEAR = 525_600  # 1-minute bars in 365 days
ANNUALIZATION = math.sqrt(BARS_PER_YEAR)


@dataclass(frozen=True)
class Series:
    """One account's per-bar marks (columns) and its fills."""

    symbol: str
    open_time: np.ndarray  # int64 ms
    bar_open: np.ndarray
    bar_close: np.ndarray
    qty: np.ndarray
    equity: np.ndarray
    fills: list[Fill]
    p_move: np.ndarray | None = None  # the signals' p_move (NaN where a signal had none)
    active: np.ndarray | None = None  # the signals' regime was "active" (bool)

    @classmethod
    def from_ledger(cls, ledger: PaperLedger, symbol: str) -> Series:
        rows = list(ledger.equity_rows(symbol))
        cols = list(zip(*[(r.open_time, r.bar_open, r.bar_close, r.qty, r.equity) for r in rows],
                        strict=True)) or [(), (), (), (), ()]
        p_move = np.array([math.nan if r.p_move is None else r.p_move for r in rows], np.float64)
        active = np.array([r.regime == "active" for r in rows], bool)
        return cls(symbol, np.array(cols[0], dtype=np.int64),
                   *(np.array(c, dtype=np.float64) for c in cols[1:]), ledger.fills(symbol), p_move, active)


@dataclass(frozen=True)
class Metrics:
    total_return: float
    sharpe: float
    sortino: float
    max_drawdown: float  # a fraction, <= 0
    hit_rate: float  # winning round trips / closed round trips (net of fees); NaN if none
    round_trips: int
    fills: int
    turnover: float  # traded notional / initial cash
    fees: float
    exposure: float  # fraction of bars with a position at the close
    final_equity: float
    trade_t_stat: float = math.nan  # mean / sd * sqrt(n) of the round trips' net PnL (they never overlap)


def drawdown(equity: np.ndarray) -> np.ndarray:
    """Drawdown from the running peak, as a fraction (<= 0)."""
    if len(equity) == 0:
        return equity
    peak = np.maximum.accumulate(equity)
    return equity / peak - 1.0


def _ratios(equity: np.ndarray, initial: float) -> tuple[float, float]:
    eq = np.concatenate([[initial], equity])
    r = eq[1:] / eq[:-1] - 1.0
    if len(r) < 2:
        return math.nan, math.nan
    sd = float(r.std(ddof=1))
    down = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
    mean = float(r.mean())
    sharpe = mean / sd * ANNUALIZATION if sd > 0 else math.nan
    sortino = mean / down * ANNUALIZATION if down > 0 else math.nan
    return sharpe, sortino


def metrics(s: Series, rules: Rules) -> Metrics:
    """The strategy's figures from its per-bar equity and fills."""
    initial = rules.initial_cash
    eq = s.equity
    trips = [f.trip_pnl for f in s.fills if f.trip_pnl is not None]
    sharpe, sortino = _ratios(eq, initial)
    return Metrics(
        total_return=float(eq[-1] / initial - 1.0) if len(eq) else 0.0,
        sharpe=sharpe, sortino=sortino,
        max_drawdown=float(drawdown(np.concatenate([[initial], eq])).min()),
        hit_rate=(sum(t > 0 for t in trips) / len(trips)) if trips else math.nan,
        round_trips=len(trips), fills=len(s.fills),
        turnover=sum(f.qty * f.price for f in s.fills) / initial,
        fees=sum(f.fee for f in s.fills),
        exposure=float(np.mean(s.qty != 0)) if len(s.qty) else 0.0,
        final_equity=float(eq[-1]) if len(eq) else initial,
        trade_t_stat=_t_stat(trips),
    )


def _t_stat(trips: list[float]) -> float:
    """t-statistic of the round trips' net PnL: one position at a time, so trips never overlap."""
    if len(trips) < 2:
        return math.nan
    a = np.asarray(trips, np.float64)
    sd = float(a.std(ddof=1))
    return float(a.mean() / sd * math.sqrt(len(a))) if sd > 0 else math.nan


def buy_and_hold(s: Series, rules: Rules) -> tuple[Metrics, np.ndarray]:
    """Buy with all the cash at the first price the fill rule allows, hold, mark at each close.

    It pays the entry fee and slippage; like the strategy's open position at the end, it is
    marked to the last close without an exit fee.
    """
    n = len(s.open_time)
    initial = rules.initial_cash
    eq = np.full(n, initial, dtype=np.float64)
    fee_rate, slip = rules.fee_bps / 1e4, rules.slippage_bps / 1e4
    entry = 1 if rules.fill == "next_open" else 0
    fee = 0.0
    if n > entry:
        px = (s.bar_open[entry] if rules.fill == "next_open" else s.bar_close[0]) * (1 + slip)
        notional = initial / (1 + fee_rate)
        qty = notional / px
        fee = notional * fee_rate
        eq[entry:] = initial - notional - fee + qty * s.bar_close[entry:]
    sharpe, sortino = _ratios(eq, initial)
    m = Metrics(
        total_return=float(eq[-1] / initial - 1.0) if n else 0.0, sharpe=sharpe, sortino=sortino,
        max_drawdown=float(drawdown(np.concatenate([[initial], eq])).min()),
        hit_rate=math.nan, round_trips=0, fills=1 if n > entry else 0,
        turnover=(initial / (1 + fee_rate)) / initial if n > entry else 0.0, fees=fee,
        exposure=float(np.mean(np.arange(n) >= entry)) if n else 0.0,
        final_equity=float(eq[-1]) if n else initial,
    )
    return m, eq


@dataclass(frozen=True)
class MoveScores:
    """The move head over a replay: each bar with a p_move whose bar ``horizon`` later is in the series."""

    horizon: int
    threshold_bp: float
    n: int  # bars scored
    realized: float  # share of them whose |move| exceeded the threshold
    mean_p: float  # mean p_move over them
    brier: float
    brier_base: float  # Brier of always forecasting ``realized`` (in hindsight): skill needs below this
    log_loss: float
    auc: float
    ece: float  # expected calibration error, 10 equal-width bins
    active_share: float  # share of the scored bars in the "active" regime
    realized_active: float  # exceedance rate in the active regime (NaN: none)
    realized_calm: float


def move_scores(s: Series, spec: MoveSpec, step_ms: int = 60_000) -> MoveScores | None:
    """Score ``s.p_move`` against ``|close[t+h] / close[t] - 1| > threshold`` (None: nothing to score)."""
    if s.p_move is None or not len(s.open_time):
        return None
    later = s.open_time + spec.horizon * step_ms
    j = np.searchsorted(s.open_time, later)
    j_ok = j < len(s.open_time)
    has = np.zeros(len(j), bool)
    has[j_ok] = s.open_time[j[j_ok]] == later[j_ok]  # the bar h later is there (no gap)
    ok = has & np.isfinite(s.p_move)
    if not ok.any():
        return None
    p = np.clip(s.p_move[ok], 1e-12, 1 - 1e-12)
    y = (np.abs(s.bar_close[j[ok]] / s.bar_close[ok] - 1.0) > spec.threshold_bp / 1e4).astype(np.float64)
    act = s.active[ok] if s.active is not None else np.zeros(len(p), bool)
    rate = float(y.mean())
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(float((bins == b).mean()) * abs(float(p[bins == b].mean() - y[bins == b].mean()))
              for b in range(10) if (bins == b).any())
    return MoveScores(
        spec.horizon, spec.threshold_bp, len(p), rate, float(p.mean()), float(((p - y) ** 2).mean()),
        rate * (1 - rate), float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        roc_auc(y, p) if 0 < rate < 1 else math.nan, ece, float(act.mean()),
        float(y[act].mean()) if act.any() else math.nan, float(y[~act].mean()) if (~act).any() else math.nan)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 100:+.2f} %"


def _num(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _settings(rules: Rules) -> str:
    fill = "the next bar's open" if rules.fill == "next_open" else "the signal bar's close"
    size = (f"{rules.equity_fraction * 100:g} % of equity" if rules.sizing == "equity_fraction"
            else f"fixed notional {rules.notional:g}")
    side = "long/short" if rules.allow_short else "long-only"
    return (f"fill at {fill}, fee {rules.fee_bps:g} bps and slippage {rules.slippage_bps:g} bps per "
            f"fill, sizing {size}, {side}, initial cash {rules.initial_cash:,.2f}")


def verdict(strat: Metrics, bh: Metrics, rules: Rules, policy: Mapping[str, Any] | None = None) -> str:
    """The report's first sentences. No fills: it says so and why (never "made money" or "beat
    buy-and-hold"); ``policy`` is the artifact's ``signal`` section, when known."""
    if strat.fills == 0:
        pol = dict(policy or {})
        if pol.get("policy") == "flat" or pol.get("informational"):
            why = pol.get("reason") or "no setting of the rule was net-positive after costs on validation"
            return (f"**No trades: the artifact's policy is flat** ({why}). Every action was flat, so the "
                    f"account kept its cash ({_pct(strat.total_return)}); its p_up is informational. "
                    f"Buy-and-hold returned {_pct(bh.total_return)} over these bars.")
        return ("**No trades:** no signal reached the rule's thresholds over these bars, so the account "
                f"kept its cash ({_pct(strat.total_return)}). Buy-and-hold returned {_pct(bh.total_return)}.")
    if strat.total_return < 0:
        first = "**The strategy lost money after fees.**"
    elif strat.total_return == 0:
        first = "The strategy broke even after fees."
    else:
        first = "The strategy made money after fees."
    vs = ("It did worse than buy-and-hold." if strat.total_return < bh.total_return
          else "It did as well as buy-and-hold." if strat.total_return == bh.total_return
          else "It beat buy-and-hold over these bars.")
    gross = strat.final_equity + strat.fees - rules.initial_cash
    return (f"{first} {vs} Its trades' price PnL before fees was {gross:+,.2f} "
            f"({gross / rules.initial_cash * 100:+.2f} % of the initial cash); fees took {strat.fees:,.2f}.")


def render_move(ms: MoveScores | None, spec: MoveSpec | None, artifact_known: bool = True) -> list[str]:
    """The move head's section (Markdown lines)."""
    head = ["## Move head: p_move", ""]
    if not artifact_known:
        return [*head, "Not scored: the artifact that made these signals was not given (its move horizon and "
                "threshold say what p_move forecasts); pass --artifact DIR.", ""]
    if spec is None:
        return [*head, "The artifact has no move forecast (its signals carry p_move = null).", ""]
    target = f"|close[t+{spec.horizon}] / close[t] − 1| > {spec.threshold_bp:g} bp"
    if ms is None:
        return [*head, f"No bar had both a p_move and the bar {spec.horizon} later: nothing scored ({target}).", ""]
    rows = [
        ("Bars scored", f"{ms.n:,}"),
        ("Realized exceedance rate", _pct(ms.realized).lstrip("+")),
        ("Mean p_move", _pct(ms.mean_p).lstrip("+")),
        ("Brier score (lower is better)", f"{ms.brier:.4f}"),
        ("Brier of the realized rate, known in hindsight", f"{ms.brier_base:.4f}"),
        ("Log-loss", f"{ms.log_loss:.4f}"),
        ("AUC", _num(ms.auc) if math.isnan(ms.auc) else f"{ms.auc:.3f}"),
        ("Calibration error (ECE, 10 bins)", f"{ms.ece:.4f}"),
        ("Bars in the active regime", _pct(ms.active_share).lstrip("+")),
        ("Exceedance rate when active / calm",
         f"{_pct(ms.realized_active).lstrip('+')} / {_pct(ms.realized_calm).lstrip('+')}"),
    ]
    return [*head, f"p_move forecasts P({target}); scored on every bar whose bar {spec.horizon} later is "
            "in the replay.", "", "| | |", "|---|---:|", *[f"| {a} | {b} |" for a, b in rows], ""]


def render_markdown(s: Series, rules: Rules, strat: Metrics, bh: Metrics, png: str | None,
                    png_note: str = "", *, policy: Mapping[str, Any] | None = None,
                    move: MoveSpec | None = None, artifact_known: bool = True) -> str:
    n = len(s.open_time)
    span = f"{_ts(int(s.open_time[0]))} → {_ts(int(s.open_time[-1]))} UTC" if n else "no bars"
    rows = [
        ("Total return", _pct(strat.total_return), _pct(bh.total_return)),
        ("Sharpe (annualized, sqrt(525600))", _num(strat.sharpe), _num(bh.sharpe)),
        ("Sortino (annualized, sqrt(525600))", _num(strat.sortino), _num(bh.sortino)),
        ("Max drawdown", _pct(strat.max_drawdown), _pct(bh.max_drawdown)),
        ("Hit rate (round trips won, net of fees)", _pct(strat.hit_rate).lstrip("+"), "n/a"),
        ("Round trips", str(strat.round_trips), "0"),
        ("t-statistic of the round trips' net PnL", _num(strat.trade_t_stat), "n/a"),
        ("Fills", str(strat.fills), str(bh.fills)),
        ("Turnover (traded notional / initial cash)", f"{strat.turnover:.1f}x", f"{bh.turnover:.1f}x"),
        ("Fees paid", f"{strat.fees:,.2f}", f"{bh.fees:,.2f}"),
        ("Exposure (bars with a position)", _pct(strat.exposure).lstrip("+"), _pct(bh.exposure).lstrip("+")),
        ("Final equity", f"{strat.final_equity:,.2f}", f"{bh.final_equity:,.2f}"),
    ]
    lines = [
        f"# Backtest report: {s.symbol}",
        "",
        f"{n:,} one-minute bars, {span}.",
        "",
        verdict(strat, bh, rules, policy),
        "",
        "| | strategy | buy-and-hold |",
        "|---|---:|---:|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Settings: {_settings(rules)}.",
        "",
        "Returns are per 1-minute bar; Sharpe and Sortino are annualized by sqrt(525,600) (1-minute "
        "bars in a 365-day year), risk-free rate 0. Open positions are marked to the last close "
        "without an exit fee, for both columns. Shorts pay no borrow interest.",
        "",
    ]
    if png:
        lines += [f"![equity and drawdown]({png})", ""]
    elif png_note:
        lines += [png_note, ""]
    lines += render_move(move_scores(s, move) if move is not None else None, move, artifact_known)
    return "\n".join(lines)


def plot(s: Series, bh_equity: np.ndarray, path: Path) -> None:
    """Equity of the strategy and buy-and-hold, drawdown underneath (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = s.open_time.astype("datetime64[ms]")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(t, s.equity, label="strategy (after fees)", lw=1)
    ax1.plot(t, bh_equity, label="buy-and-hold", lw=1, alpha=0.7)
    ax1.set_ylabel("equity")
    ax1.legend(loc="best")
    ax1.set_title(f"{s.symbol} paper account")
    ax2.fill_between(t, drawdown(s.equity) * 100, 0, color="tab:red", alpha=0.4, label="strategy")
    ax2.plot(t, drawdown(bh_equity) * 100, color="tab:orange", lw=0.8, label="buy-and-hold")
    ax2.set_ylabel("drawdown %")
    ax2.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(ledger: PaperLedger, out_dir: str | Path, symbol: str | None = None,
                 png: bool = True, name: str | None = None, *, artifact: Any = None) -> Path:
    """Write the report (and ``equity_<SYMBOL>.png`` when matplotlib is installed) for ``symbol``
    (default: the ledger's first symbol). One rule names the file: ``report.md`` for a ledger of one
    symbol, ``report_<SYMBOL>.md`` for a ledger of several, whichever is asked for; ``name`` overrides it.
    ``artifact`` (the ``Artifact`` that made the signals): its policy explains a run without trades, and
    its move spec scores the p_move section."""
    from barsignal.errors import DataError

    symbols = ledger.symbols()
    if not symbols:
        raise DataError(f"{ledger.path}: the paper ledger has no bars yet; nothing to report")
    if symbol is not None and symbol not in symbols:
        raise DataError(f"{ledger.path}: no bars for {symbol!r} in the paper ledger; it has {', '.join(symbols)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sym = symbol or symbols[0]
    s = Series.from_ledger(ledger, sym)
    strat = metrics(s, ledger.rules)
    bh, bh_eq = buy_and_hold(s, ledger.rules)
    png_name, note = None, ""
    if png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            note = ("(No chart: matplotlib is not installed. Install it with "
                    "`pip install matplotlib` and run `barsignal paper report` again.)")
        else:
            plot(s, bh_eq, out / f"equity_{sym}.png")
            png_name = f"equity_{sym}.png"
    md = out / (name or ("report.md" if len(symbols) == 1 else f"report_{sym}.md"))
    policy = artifact.signal if artifact is not None else None
    move = artifact.move if artifact is not None else None
    md.write_text(render_markdown(s, ledger.rules, strat, bh, png_name, note, policy=policy, move=move,
                                  artifact_known=artifact is not None), encoding="utf-8")
    return md


@dataclass(frozen=True)
class Total:
    """Several symbols' paper accounts, each with its own cash (split: ``initial_cash`` per symbol),
    added up bar by bar. An account counts its initial cash before its first bar and its last equity
    after its last one."""

    symbols: list[str]
    per_symbol: list[Metrics]
    buy_and_hold: list[Metrics]
    open_time: np.ndarray
    equity: np.ndarray  # the sum of the accounts' equity at each open time of any of them
    initial: float

    @property
    def metrics(self) -> Metrics:
        eq = self.equity
        sharpe, sortino = _ratios(eq, self.initial)
        ms = self.per_symbol
        return Metrics(
            total_return=float(eq[-1] / self.initial - 1.0) if len(eq) else 0.0, sharpe=sharpe, sortino=sortino,
            max_drawdown=float(drawdown(np.concatenate([[self.initial], eq])).min()),
            hit_rate=math.nan, round_trips=sum(m.round_trips for m in ms), fills=sum(m.fills for m in ms),
            turnover=sum(m.turnover for m in ms) / len(ms) if ms else 0.0, fees=sum(m.fees for m in ms),
            exposure=float(np.mean([m.exposure for m in ms])) if ms else 0.0,
            final_equity=float(eq[-1]) if len(eq) else self.initial,
        )


def total(accounts: list[tuple[Series, Rules]]) -> Total:
    """Add up per-symbol accounts (see :class:`Total`)."""
    times = np.unique(np.concatenate([s.open_time for s, _ in accounts])) if accounts else np.zeros(0, np.int64)
    eq = np.zeros(len(times), np.float64)
    initial = 0.0
    per, bhs = [], []
    for s, rules in accounts:
        initial += rules.initial_cash
        per.append(metrics(s, rules))
        bhs.append(buy_and_hold(s, rules)[0])
        if not len(s.open_time):
            eq += rules.initial_cash
            continue
        idx = np.searchsorted(s.open_time, times, side="right") - 1  # the account's last bar at or before
        eq += np.where(idx >= 0, s.equity[np.clip(idx, 0, None)], rules.initial_cash)
    return Total([s.symbol for s, _ in accounts], per, bhs, times, eq, initial)


def render_total_markdown(t: Total, rules: Rules) -> str:
    n = len(t.open_time)
    span = f"{_ts(int(t.open_time[0]))} → {_ts(int(t.open_time[-1]))} UTC" if n else "no bars"
    m = t.metrics
    rows = [f"| {sym} | {_pct(a.total_return)} | {_pct(b.total_return)} | {_pct(a.max_drawdown)} | {a.fills} | "
            f"{a.fees:,.2f} | {a.final_equity:,.2f} |"
            for sym, a, b in zip(t.symbols, t.per_symbol, t.buy_and_hold, strict=True)]
    bh_final = sum(b.final_equity for b in t.buy_and_hold)
    lines = [
        f"# Backtest report: {len(t.symbols)} symbols",
        "",
        f"{n:,} one-minute bar times, {span}. Cash is split: each symbol's paper account starts with "
        f"{rules.initial_cash:,.2f} of its own and trades only its symbol; the total is the sum of the "
        f"accounts (initial {t.initial:,.2f}).",
        "",
        "| symbol | return | buy-and-hold | max drawdown | fills | fees | final equity |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        f"| **total** | {_pct(m.total_return)} | {_pct(bh_final / t.initial - 1.0)} | {_pct(m.max_drawdown)} | "
        f"{m.fills} | {m.fees:,.2f} | {m.final_equity:,.2f} |",
        "",
        f"Total Sharpe {_num(m.sharpe)}, Sortino {_num(m.sortino)} (annualized, sqrt(525600), per-bar returns "
        "of the summed equity). The total's max drawdown is that of the summed equity, not the sum of the "
        "symbols' drawdowns.",
        "",
        f"Settings (every symbol): {_settings(rules)}.",
        "",
    ]
    return "\n".join(lines)


def write_total_report(ledgers: list[str | Path], out_dir: str | Path, *, cfg_path: str | None = None) -> Path:
    """``<out_dir>/report.md``: every symbol of every ledger, one row each, and the total."""
    from barsignal.daemon import config as cfgmod
    from barsignal.engine.broker import Rules as _Rules

    rules = _Rules.from_config(cfgmod.load(cfg_path).paper)
    accounts: list[tuple[Series, Rules]] = []
    for path in ledgers:
        if not Path(path).exists():
            continue
        led = PaperLedger(path, rules)
        try:
            accounts += [(Series.from_ledger(led, sym), led.rules) for sym in led.symbols()]
        finally:
            led.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(render_total_markdown(total(accounts), rules), encoding="utf-8")
    return md
