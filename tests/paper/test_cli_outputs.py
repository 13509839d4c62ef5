"""What the read and report commands say, run as a user runs them (real subprocesses, real bars and
ledgers): the pending order while flat, an empty outbox, where replay writes by default, one report
naming rule, and the fills of several symbols in the log."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import structlog

from barsignal.daemon.paper.ledger import PaperLedger
from barsignal.engine.broker import Rules
from barsignal.engine.signal import Signal, signal_id

REPO = Path(__file__).resolve().parents[2]
FUT = sorted((Path(__file__).resolve().parents[3] / "shared" / "data" / "klines" / "um_futures_1m_daily")
             .glob("BTCUSDT-1m-2022-05-0*.csv"))[:2]
ART = "0123456789abcdef0123"


def cli(*a: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "barsignal", "--log-format", "json", *a], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def _signals(bars, actions: list[str], symbol: str = "BTCUSDT") -> list[Signal]:
    return [Signal(signal_id(symbol, b.open_time, ART), symbol, b.open_time, b.open, b.close, 0.5, a, ART, "file")
            for b, a in zip(bars, actions, strict=True)]


def test_paper_status_names_a_pending_order_only_when_there_is_one(tmp_path, spot_bars) -> None:
    bars = spot_bars(40)
    flat, goes_long = tmp_path / "flat.sqlite", tmp_path / "long.sqlite"
    with PaperLedger(flat, Rules()) as led:
        led.apply_many(_signals(bars, ["flat"] * 40))
    with PaperLedger(goes_long, Rules()) as led:  # flat all along, then a long signal on the last bar
        led.apply_many(_signals(bars, ["flat"] * 39 + ["long"]))

    st = cli("paper", "status", "--ledger", str(flat))
    assert st.returncode == 0, st.stderr
    assert st.stdout.startswith("BTCUSDT: flat ") and "no order pending" in st.stdout, st.stdout
    assert "order pending for next open" not in st.stdout
    js = orjson.loads(cli("paper", "status", "--ledger", str(flat), "--json").stdout)
    assert [(a["symbol"], a["side"], a["pending_order"]) for a in js["accounts"]] == [("BTCUSDT", "flat", None)]

    st = cli("paper", "status", "--ledger", str(goes_long))
    assert st.returncode == 0, st.stderr
    assert st.stdout.startswith("BTCUSDT: flat ") and "order pending for next open: go long" in st.stdout
    js = orjson.loads(cli("paper", "status", "--ledger", str(goes_long), "--json").stdout)
    assert js["accounts"][0]["pending_order"] == "go long" and js["accounts"][0]["bars"] == 40


def test_outbox_read_commands_say_so_when_the_outbox_is_empty(tmp_path) -> None:
    from barsignal.daemon.outbox import Outbox

    Outbox(tmp_path / "outbox.sqlite", ()).close()  # what a daemon that never signalled leaves
    st = cli("outbox", "status", "--state-dir", str(tmp_path))
    assert st.returncode == 0 and st.stdout == "outbox: empty (0 pending, 0 dead)\n", (st.stdout, st.stderr)
    assert orjson.loads(cli("outbox", "status", "--state-dir", str(tmp_path), "--json").stdout) == \
        {"sinks": {}, "pending": 0, "dead": 0}
    dead = cli("outbox", "dead", "--state-dir", str(tmp_path))
    assert dead.returncode == 0 and dead.stdout == "" and "outbox: no dead letters" in dead.stderr
    assert orjson.loads(cli("outbox", "dead", "--state-dir", str(tmp_path), "--json").stdout) == []
    st = cli("outbox", "status", "--state-dir", str(tmp_path), "--sink", "webhook")
    assert st.stdout == "outbox for webhook: empty (0 pending, 0 dead)\n", st.stdout


def test_replay_without_outputs_writes_signals_report_and_ledger_to_replay_and_says_where(
        tmp_path, tiny_artifact) -> None:
    assert len(FUT) == 2, "needs two real futures daily CSVs in ../shared/data"
    r = cli("replay", "--bars", *map(str, FUT), "--artifact", str(tiny_artifact), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "replay"
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("replayed 2880 bars") and f"signals {Path('replay') / 'signals.jsonl'}" in line, line
    assert f"report {Path('replay') / 'report.md'}" in line and f"ledger {Path('replay') / 'paper.sqlite'}" in line
    n = len((out / "signals.jsonl").read_bytes().splitlines())
    assert n > 2000 and "| Total return |" in (out / "report.md").read_text()
    db = sqlite3.connect(out / "paper.sqlite")
    try:
        assert db.execute("SELECT COUNT(*) FROM equity").fetchone()[0] == n
    finally:
        db.close()

    js = cli("replay", "--bars", *map(str, FUT), "--artifact", str(tiny_artifact), "--out", "elsewhere", "--json",
             cwd=tmp_path)
    assert js.returncode == 0, js.stderr[-3000:]
    doc = orjson.loads(js.stdout)  # one document, nothing else on stdout
    assert (doc["bars"], doc["signals"]) == (2880, n)
    assert doc["signals_path"] == str(Path("elsewhere") / "signals.jsonl") and doc["report"] == \
        str(Path("elsewhere") / "report.md")
    assert _results(tmp_path / doc["signals_path"]) == _results(out / "signals.jsonl")


def _results(path: Path) -> list[dict]:
    """The signals of a JSONL file without their latencies (timings, not results)."""
    rows = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    for r in rows:
        r.pop("latency_us")
    return rows


def test_paper_report_names_the_file_by_one_rule(tmp_path, spot_bars, make_signals) -> None:
    bars = spot_bars(600)
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    with PaperLedger(one, Rules()) as led:
        led.apply_many(make_signals(bars, seed=3, allow_short=False, symbol="ETHUSDT"))
    with PaperLedger(two, Rules()) as led:
        led.apply_many(make_signals(bars, seed=1, allow_short=False, symbol="BTCUSDT"))
        led.apply_many(make_signals(bars, seed=2, allow_short=False, symbol="ETHUSDT"))

    def report(ledger: Path, out: str, *extra: str) -> dict:
        r = cli("paper", "report", "--ledger", str(ledger), "--out", str(tmp_path / out), "--json", *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        return orjson.loads(r.stdout)

    assert report(one, "a") == {"report": str(tmp_path / "a" / "report.md"), "symbol": "ETHUSDT"}
    assert report(one, "b", "--symbol", "ETHUSDT")["report"] == str(tmp_path / "b" / "report.md")
    # several symbols: report_<SYMBOL>.md whether the symbol is asked for or is the default (the first)
    assert report(two, "c") == {"report": str(tmp_path / "c" / "report_BTCUSDT.md"), "symbol": "BTCUSDT"}
    assert report(two, "d", "--symbol", "ETHUSDT")["report"] == str(tmp_path / "d" / "report_ETHUSDT.md")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["equity_ETHUSDT.png", "report_ETHUSDT.md"]


def test_paper_sink_logs_every_fill_of_several_symbols_signalled_together(tmp_path, spot_bars,
                                                                          make_signals) -> None:
    """A minute of several symbols reaches the paper sink as one batch (``send_many``): each fill is
    logged as a single symbol's is; a replay's sink (``log_fills=False``) logs none."""
    from barsignal.daemon.config import PaperConfig
    from barsignal.daemon.paper.sink import PaperSink
    from barsignal.daemon.sinks.base import SinkContext

    bars = spot_bars(300)
    per_symbol = {s: make_signals(bars, seed=i, symbol=s) for i, s in enumerate(("BTCUSDT", "ETHUSDT"))}
    minutes = list(zip(*per_symbol.values(), strict=True))

    def run(state: Path, **kw) -> list[dict]:
        sink = PaperSink(SinkContext("paper", PaperConfig(ledger="paper.sqlite", allow_short=True), state), **kw)

        async def go() -> None:
            await sink.start()
            for minute in minutes:
                await sink.send_many(list(minute))
            await sink.close()

        with structlog.testing.capture_logs() as logs:
            asyncio.run(go())
        return [e for e in logs if e["event"] == "paper_fill"]

    logged = run(tmp_path / "live")
    db = sqlite3.connect(tmp_path / "live" / "paper.sqlite")
    try:
        fills = db.execute("SELECT symbol, open_time, side FROM fills ORDER BY open_time, symbol").fetchall()
    finally:
        db.close()
    assert {s for s, _, _ in fills} == {"BTCUSDT", "ETHUSDT"}
    assert sorted((e["symbol"], e["open_time"], e["side"]) for e in logged) == sorted(fills)
    assert all(e["log_level"] == "info" for e in logged)
    assert run(tmp_path / "replay", log_fills=False) == []


def test_paper_ingest_json_counts_what_it_applied(tmp_path, spot_bars, make_signals) -> None:
    sigs = make_signals(spot_bars(120), seed=5)
    path = tmp_path / "signals.jsonl"
    path.write_bytes(b"".join(orjson.dumps(s.to_dict()) + b"\n" for s in sigs))
    ledger = tmp_path / "paper.sqlite"
    first = cli("paper", "ingest", str(path), "--ledger", str(ledger), "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    assert orjson.loads(first.stdout) == {"applied": 120, "already_in_ledger": 0}
    again = cli("paper", "ingest", str(path), "--ledger", str(ledger), "--json")
    assert orjson.loads(again.stdout) == {"applied": 0, "already_in_ledger": 120}
    fresh = cli("paper", "ingest", str(path), "--ledger", str(tmp_path / "b.sqlite"), "--json", "--progress")
    assert orjson.loads(fresh.stdout) == {"applied": 120, "already_in_ledger": 0}  # progress went to stderr
    assert [int(x) for x in fresh.stderr.split() if x.isdigit()] == [s.open_time for s in sigs]
