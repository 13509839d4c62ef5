"""Issue 13 #1, the restart part, in process on a real SQLite outbox and ledger: state that holds a
bar dated after the wall clock is not trusted at start (the end-to-end case is
tests/reliability/test_hostile_feed.py::test_restart_with_a_future_last_signalled_resumes_from_the_last_plausible_bar)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from barsignal.daemon.outbox import Outbox
from barsignal.daemon.paper.ledger import PaperLedger
from barsignal.engine.broker import Rules
from barsignal.engine.signal import RuleState, Signal
from barsignal.node import Start, resume_start

STEP = 60_000
NOW = 1_796_083_200_000  # 2026-12-01 00:00 UTC, injected
ACTIONS = ("long", "long", "flat", "short", "short", "long", "flat", "long")


def _sig(t: int, i: int) -> Signal:
    px = 100.0 + i
    return Signal(f"BTCUSDT-{t}-abc", "BTCUSDT", t, px, px + 0.5, 0.5 + 0.01 * i, ACTIONS[i % len(ACTIONS)], "abc")


def _real(n: int) -> list[Signal]:
    return [_sig(NOW - (n - i) * STEP, i) for i in range(n)]


def test_resume_start_distrusts_a_last_signal_more_than_one_bar_ahead(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.sqlite", ())
    try:
        real = _real(5)
        for i, s in enumerate(real):
            ob.add(s, RuleState(s.action, i))
        assert resume_start(ob, "BTCUSDT", now_ms=NOW) == Start(real[-1].open_time, RuleState(real[-1].action, 4))
        ob.add(_sig(NOW + STEP, 9), RuleState("short", 0))  # one bar ahead: a clock a little fast, trusted
        assert resume_start(ob, "BTCUSDT", now_ms=NOW).last_signalled == NOW + STEP
        fut = NOW + 5 * 365 * 86_400_000
        ob.add(_sig(fut, 10), RuleState("long", 0))
        with structlog.testing.capture_logs() as logs:
            st = resume_start(ob, "BTCUSDT", now_ms=NOW)
        assert st == Start(NOW + STEP, RuleState("short", 0))  # the last at most one bar ahead
        warn = [e for e in logs if e["event"] == "last_signalled_in_future"]
        assert len(warn) == 1 and warn[0]["log_level"] == "warning" and warn[0]["last_signalled"] == fut
        assert warn[0]["dead_lettered"] == 0  # no sink: nothing pending
        assert resume_start(ob, "BTCUSDT").last_signalled == fut  # no clock given (replay): as stored
        assert resume_start(ob, "ETHUSDT", now_ms=NOW) == Start()
    finally:
        ob.close()


def test_resume_start_with_only_a_future_signal_starts_fresh_and_dead_letters_it(tmp_path: Path) -> None:
    """A future signal still pending (a crash before its delivery) is never delivered: it becomes a
    dead letter of each sink, kept and counted, across a reopen of the outbox."""
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path, ("jsonl", "paper"))
    fut = _sig(NOW + 2 * STEP, 0)
    try:
        seq = ob.add(fut, RuleState("long", 0))
        assert ob.flush(5) and ob.depth("paper") == 1
    finally:
        ob.close()
    ob = Outbox(path, ("jsonl", "paper"))
    try:
        assert resume_start(ob, "BTCUSDT", now_ms=NOW) == Start()
        assert ob.depth() == 0 and ob.dead_counts() == {"jsonl": 1, "paper": 1}
        assert ob.pending("paper") == [] and ob.dead_lettered == {"jsonl": 1, "paper": 1}
        assert {(d["sink"], d["seq"]) for d in ob.dead_letters()} == {("jsonl", seq), ("paper", seq)}
    finally:
        ob.close()
    ob = Outbox(path, ("jsonl", "paper"))
    try:
        assert ob.depth() == 0 and ob.dead_counts() == {"jsonl": 1, "paper": 1}
    finally:
        ob.close()


@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_ledger_drops_future_bars_and_equals_a_clean_ledger(tmp_path: Path, fill: str) -> None:
    rules = Rules(fill=fill, allow_short=True)  # type: ignore[arg-type]
    real = _real(8)
    more = [_sig(NOW + i * STEP, 20 + i) for i in range(1, 4)]  # later real bars, once the clock gets there
    fut = _sig(NOW + 5 * 365 * 86_400_000, 30)
    with PaperLedger(tmp_path / "p.sqlite", rules) as led:
        led.apply_many(real)
        assert not led.apply(fut).duplicate
        assert all(led.apply(s).duplicate for s in more)  # stuck: every later real bar looks applied
        assert any(f.open_time == fut.open_time for f in led.fills())  # the future bar traded
    with structlog.testing.capture_logs() as logs, \
            PaperLedger(tmp_path / "p.sqlite", rules, not_after_ms=NOW + STEP) as led:
        assert led.last_open_time("BTCUSDT") == real[-1].open_time
        assert [led.apply(s).duplicate for s in more] == [False] * 3
        eq, fills, acct = list(led.equity_rows("BTCUSDT")), led.fills(), led.account("BTCUSDT")
    warn = [e for e in logs if e["event"] == "paper_future_bars_dropped"]
    assert len(warn) == 1 and warn[0]["equity_rows"] == 1 and warn[0]["resumed_from"] == real[-1].open_time
    with PaperLedger(tmp_path / "clean.sqlite", rules) as clean:
        clean.apply_many(real + more)
        assert eq == list(clean.equity_rows("BTCUSDT")) and fills == clean.fills()
        assert acct == clean.account("BTCUSDT")
    assert all(f.open_time < fut.open_time for f in fills)  # its fill undone with it


def test_ledger_with_only_a_future_bar_starts_the_account_afresh(tmp_path: Path) -> None:
    rules = Rules()
    with PaperLedger(tmp_path / "p.sqlite", rules) as led:
        led.apply(_sig(NOW + 5 * STEP, 0))
    with PaperLedger(tmp_path / "p.sqlite", rules, not_after_ms=NOW + STEP) as led:
        assert led.account("BTCUSDT") is None and list(led.equity_rows("BTCUSDT")) == []
        assert not led.apply(_sig(NOW, 1)).duplicate
    with PaperLedger(tmp_path / "p.sqlite", rules, not_after_ms=NOW + STEP) as led:  # nothing more to drop
        assert led.last_open_time("BTCUSDT") == NOW and len(list(led.equity_rows("BTCUSDT"))) == 1
