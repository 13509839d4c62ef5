"""The backtest report: figures checked against hand computations, chart or install hint, CLI."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from barsignal.daemon.paper.ledger import PaperLedger
from barsignal.daemon.paper.report import ANNUALIZATION, Series, buy_and_hold, drawdown, metrics, write_report
from barsignal.engine.broker import Rules

REPO = Path(__file__).resolve().parents[2]
RULES = Rules()  # the defaults: next open, 10 bps fee, 1 bp slippage, all equity, long-only


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory, spot_bars, make_signals) -> Path:
    p = tmp_path_factory.mktemp("rep") / "paper.sqlite"
    with PaperLedger(p, RULES) as led:
        led.apply_many(make_signals(spot_bars(3000), seed=7, allow_short=False))
    return p


def test_figures(ledger_path, spot_bars) -> None:
    bars = spot_bars(3000)
    with PaperLedger(ledger_path, RULES) as led:
        s = Series.from_ledger(led, "BTCUSDT")
        m = metrics(s, RULES)
        bh, bh_eq = buy_and_hold(s, RULES)
        acct = led.account("BTCUSDT")
    assert len(s.equity) == 3000 and acct is not None
    assert m.final_equity == pytest.approx(acct.equity(bars[-1].close))
    assert m.fees == pytest.approx(acct.fees) and m.fills == len(s.fills) > 10
    assert m.turnover == pytest.approx(acct.traded_notional / RULES.initial_cash)
    assert 0 < m.exposure < 1 and m.max_drawdown < 0
    trips = np.array([f.trip_pnl for f in s.fills if f.trip_pnl is not None])
    assert m.trade_t_stat == pytest.approx(trips.mean() / trips.std(ddof=1) * math.sqrt(len(trips)))
    # buy-and-hold by hand: all cash at bar 1's open (next-open rule), marked at the last close
    qty = RULES.initial_cash / 1.001 / (bars[1].open * 1.0001)
    assert bh.final_equity == pytest.approx(qty * bars[-1].close)
    assert bh.total_return == pytest.approx(qty * bars[-1].close / RULES.initial_cash - 1)
    assert bh_eq[0] == RULES.initial_cash
    eq = np.concatenate([[RULES.initial_cash], bh_eq])
    r = np.diff(eq) / eq[:-1]
    assert bh.sharpe == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(525_600))
    assert ANNUALIZATION == math.sqrt(525_600)
    assert drawdown(np.array([1.0, 2.0, 1.0, 3.0])).tolist() == [0.0, 0.0, -0.5, 0.0]


def test_report_markdown_and_png(ledger_path, tmp_path) -> None:
    with PaperLedger(ledger_path, RULES) as led:
        md = write_report(led, tmp_path)
        m = metrics(Series.from_ledger(led, "BTCUSDT"), RULES)
    text = md.read_text()
    png = tmp_path / "equity_BTCUSDT.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![equity and drawdown](equity_BTCUSDT.png)" in text
    for label in ("Total return", "Sharpe", "Sortino", "Max drawdown", "Hit rate", "Round trips",
                  "Turnover", "Fees paid", "Exposure", "buy-and-hold", "sqrt(525,600)"):
        assert label in text
    verdict = "**The strategy lost money after fees.**" if m.total_return < 0 else "made money after fees"
    assert verdict in text
    assert f"{m.fees:,.2f}" in text


def test_report_without_matplotlib_says_how_to_install(ledger_path, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as in the core install: import fails
    with PaperLedger(ledger_path, RULES) as led:
        md = write_report(led, tmp_path)
    assert "pip install matplotlib" in md.read_text()
    assert not list(tmp_path.glob("*.png"))


def test_cli_status_and_report(ledger_path, tmp_path) -> None:
    def cli(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "barsignal", *a], capture_output=True, text=True,
                              cwd=REPO, timeout=60)

    st = cli("paper", "status", "--ledger", str(ledger_path))
    assert st.returncode == 0, st.stderr
    assert st.stdout.startswith("BTCUSDT: ") and "equity" in st.stdout and "fees" in st.stdout
    rp = cli("paper", "report", "--ledger", str(ledger_path), "--out", str(tmp_path / "r"))
    assert rp.returncode == 0, rp.stderr
    assert (tmp_path / "r" / "report.md").is_file()
    missing = cli("paper", "status", "--ledger", str(tmp_path / "nope.sqlite"))
    assert missing.returncode == 2 and "no paper ledger here" in missing.stderr


# -- the move head, and a run without trades -----------------------------------------------------------


def _with_move(sigs, seed: int = 0):
    """The signals with a p_move and a regime (a seeded stand-in for a forecaster: the report only scores it)."""
    import dataclasses

    rng = np.random.default_rng(seed)
    out = []
    for i, s in enumerate(sigs):
        if i % 10 == 0:  # every tenth without a forecast
            out.append(s)
            continue
        p = float(rng.uniform(0.05, 0.95))
        out.append(dataclasses.replace(s, p_move=p, sigma_bp=10.0, regime="active" if p >= 0.5 else "calm"))
    return out


def test_move_scores_by_hand(tmp_path, spot_bars, make_signals) -> None:
    from barsignal.daemon.paper.report import move_scores
    from barsignal.engine.metrics import roc_auc
    from barsignal.engine.move import MoveSpec

    bars = spot_bars(2000)
    sigs = _with_move(make_signals(bars, seed=2))
    sigs = sigs[:700] + sigs[720:]  # a 20-bar hole: the bars before it have no outcome h later
    with PaperLedger(tmp_path / "l.sqlite", RULES) as led:
        led.apply_many(sigs)
        s = Series.from_ledger(led, "BTCUSDT")
    spec = MoveSpec(15, 10.0, "rvol_logistic", {"a": 0.0, "b": 0.0})
    ms = move_scores(s, spec)
    by_t = {x.open_time: x for x in sigs}
    p, y, act = [], [], []
    for x in sigs:
        later = by_t.get(x.open_time + 15 * 60_000)
        if x.p_move is not None and later is not None:
            p.append(x.p_move)
            y.append(float(abs(later.bar_close / x.bar_close - 1) > 10 / 1e4))
            act.append(x.regime == "active")
    p, y, act = np.array(p), np.array(y), np.array(act)
    assert ms is not None and ms.n == len(p) and len(p) < len(sigs) - len(sigs) // 10 - 15
    assert ms.realized == pytest.approx(y.mean()) and 0 < y.mean() < 1
    assert ms.mean_p == pytest.approx(p.mean())
    assert ms.brier == pytest.approx(((p - y) ** 2).mean())
    assert ms.log_loss == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert ms.auc == pytest.approx(roc_auc(y, p))
    assert ms.active_share == pytest.approx(act.mean())
    assert ms.realized_active == pytest.approx(y[act].mean()) and ms.realized_calm == pytest.approx(y[~act].mean())


def _flat_artifact(tmp_path, bars):
    from tests.tiny_model import write_tiny_artifact

    return write_tiny_artifact(tmp_path / "flat", bars, signal={
        "policy": "flat", "long_threshold": 1.0, "short_threshold": 0.0, "rule": "threshold",
        "reason": "no threshold was net-positive after costs on validation (test artifact)"})


def test_no_trades_says_so_and_why_never_made_money(tmp_path, spot_bars, make_signals) -> None:
    import dataclasses

    from barsignal.engine.artifact import load_artifact

    bars = spot_bars(1500)
    flat = [dataclasses.replace(s, action="flat") for s in make_signals(bars, seed=4)]
    with PaperLedger(tmp_path / "l.sqlite", RULES) as led:
        led.apply_many(flat)
        art = load_artifact(_flat_artifact(tmp_path, spot_bars(3000)))
        text = write_report(led, tmp_path / "a", artifact=art).read_text()
        plain = write_report(led, tmp_path / "b").read_text()  # no artifact given: no policy to name
    assert "**No trades: the artifact's policy is flat** (no threshold was net-positive after costs" in text
    assert "+0.00 %" in text and "p_up is informational" in text
    assert "**No trades:** no signal reached the rule's thresholds" in plain
    for t in (text, plain):
        assert "made money" not in t and "beat buy-and-hold" not in t
    assert "## Move head: p_move" in text and "carry p_move = null" not in text  # the flat artifact has a move head
    assert "pass --artifact DIR" in plain


def test_replay_of_a_flat_artifact_logs_informational_and_reports_both_heads(tmp_path, spot_bars) -> None:
    """``barsignal replay`` as a user runs it: the flat policy is logged as the daemon logs it, the report
    says there were no trades and why, and scores p_move."""
    import json

    art = _flat_artifact(tmp_path, spot_bars(3000))
    bars = spot_bars(2500, 2, 3000)
    f = tmp_path / "BTC_USDT-1m.json"
    f.write_text(json.dumps([[b.open_time, b.open, b.high, b.low, b.close, b.volume] for b in bars]))
    r = subprocess.run([sys.executable, "-m", "barsignal", "--log-format", "json", "replay", str(f), "--artifact",
                        str(art), "--report", str(tmp_path / "rep")], capture_output=True, text=True, cwd=REPO,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    assert [e["reason"] for e in events if e.get("event") == "signals_informational"] == [
        "no threshold was net-positive after costs on validation (test artifact)"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**No trades: the artifact's policy is flat**" in md and "made money" not in md
    assert "p_move forecasts P(|close[t+15] / close[t] − 1| > 10 bp)" in md
    assert "| Bars scored |" in md and "| AUC |" in md
