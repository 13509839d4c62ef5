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
