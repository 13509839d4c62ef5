"""The SQLite ledger: idempotent by signal id, restart-then-resume == uninterrupted, and a real
process killed with SIGKILL at random points loses no fill and duplicates none."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from barsignal.daemon.config import PaperConfig
from barsignal.daemon.paper.ledger import PaperLedger
from barsignal.daemon.paper.signals_io import read_signals, write_signals
from barsignal.daemon.sinks import build_sink
from barsignal.engine.broker import Rules
from barsignal.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
RULES = Rules(allow_short=True)


def dump(path: Path) -> dict[str, list[tuple]]:
    """Every table's rows, in order (floats compared exactly)."""
    db = sqlite3.connect(path)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("fills", "equity", "positions", "meta")}
    finally:
        db.close()


def test_apply_twice_is_a_no_op(tmp_path, spot_bars, make_signals) -> None:
    sigs = make_signals(spot_bars(600), seed=1)
    with PaperLedger(tmp_path / "l.sqlite", RULES) as led:
        assert led.apply_many(sigs) == (600, 0)
        fills = led.fills()
        assert fills, "the seeded rule should trade on 600 bars"
        assert led.apply_many(sigs) == (0, 600)
        assert led.apply_many(sigs[::-1]) == (0, 600)  # older bars are stale, not re-applied
        assert led.fills() == fills
        assert led.last_open_time("BTCUSDT") == sigs[-1].open_time


def test_restart_then_resume_equals_uninterrupted(tmp_path, spot_bars, make_signals) -> None:
    sigs = make_signals(spot_bars(800), seed=2)
    with PaperLedger(tmp_path / "a.sqlite", RULES) as led:
        led.apply_many(sigs)
    for cut in (1, 137, 400, 799):
        p = tmp_path / f"b{cut}.sqlite"
        with PaperLedger(p, RULES) as led:
            led.apply_many(sigs[:cut])
        with PaperLedger(p, RULES) as led:  # reopened: state comes from the file
            assert led.apply_many(sigs) == (800 - cut, cut)
        assert dump(p) == dump(tmp_path / "a.sqlite"), cut


def test_apply_batch_equals_one_transaction_per_signal(tmp_path, spot_bars, make_signals) -> None:
    sigs = make_signals(spot_bars(900), seed=5)
    with PaperLedger(tmp_path / "one.sqlite", RULES) as led:
        led.apply_many(sigs)
    with PaperLedger(tmp_path / "batch.sqlite", RULES) as led:
        got = led.apply_batch(sigs[:300]) + led.apply_batch(sigs[250:611])  # overlaps: 50 duplicates
    with PaperLedger(tmp_path / "batch.sqlite", RULES) as led:  # reopened mid-way
        got += led.apply_batch(sigs[611:])
    assert sum(a.duplicate for a in got) == 50
    assert dump(tmp_path / "batch.sqlite") == dump(tmp_path / "one.sqlite")


def test_other_settings_are_refused(tmp_path, spot_bars, make_signals) -> None:
    p = tmp_path / "l.sqlite"
    with PaperLedger(p, RULES) as led:
        led.apply_many(make_signals(spot_bars(50)))
    with pytest.raises(ConfigError, match=r"other \[paper\] settings"):
        PaperLedger(p, Rules(allow_short=True, fee_bps=5))
    # the sink refuses it when built (the daemon builds sinks before it starts), not at the first signal
    with pytest.raises(ConfigError, match=r"other \[paper\] settings"):
        build_sink("paper", PaperConfig(ledger=str(p), allow_short=True, fee_bps=5), tmp_path)
    build_sink("paper", PaperConfig(ledger=str(p), allow_short=True), tmp_path)


def test_garbage_file_is_a_clear_error(tmp_path) -> None:
    p = tmp_path / "l.sqlite"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DataError, match="cannot open the paper ledger"):
        PaperLedger(p, RULES)


def test_sink_resumes_from_ledger_without_duplicates(tmp_path, spot_bars, make_signals) -> None:
    sigs = make_signals(spot_bars(300), seed=3, allow_short=False)
    cfg = PaperConfig(ledger="paper.sqlite")

    async def deliver(batch) -> None:
        sink = build_sink("paper", cfg, tmp_path)
        await sink.start()
        for s in batch:
            await sink.send(s)
        await sink.close()

    asyncio.run(deliver(sigs[:200]))
    asyncio.run(deliver(sigs[150:]))  # the outbox re-delivers 150..199 after a restart
    with PaperLedger(tmp_path / "ref.sqlite", Rules.from_config(cfg)) as ref:
        ref.apply_many(sigs)
    got, want = dump(tmp_path / "paper.sqlite"), dump(tmp_path / "ref.sqlite")
    assert got == want and len(got["equity"]) == 300


def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path, spot_bars, make_signals) -> None:
    sigs = make_signals(spot_bars(1200), seed=4)
    src = tmp_path / "signals.jsonl"
    write_signals(src, sigs)
    assert list(read_signals(src)) == sigs  # the live format round-trips exactly
    cfg = tmp_path / "c.toml"
    cfg.write_text("[paper]\nallow_short = true\n")
    ref = tmp_path / "ref.sqlite"
    with PaperLedger(ref, Rules.from_config(PaperConfig(allow_short=True))) as led:
        led.apply_many(sigs)

    victim = tmp_path / "victim.sqlite"
    cmd = [sys.executable, "-m", "barsignal", "paper", "ingest", "-", "--config", str(cfg),
           "--ledger", str(victim), "--progress"]
    lines = src.read_bytes().splitlines(keepends=True)
    rng = random.Random(20261123)
    kills = applied = 0
    while applied < len(sigs) - 200 and kills < 40:
        # Each run gets every signal so far again (re-delivery, as after a crash) plus up to 400 new
        # ones; it is killed after a random number of new fills commit, so it dies at a random point
        # while it still has work: inside a transaction, between two, or while re-reading.
        hi = min(len(sigs), applied + rng.randint(100, 400))
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                cwd=REPO)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"".join(lines[:hi]))
        proc.stdin.flush()
        for _ in range(rng.randint(0, hi - applied - 1)):
            assert proc.stdout.readline()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except BrokenPipeError:
                pass
        # Every restart sees a consistent ledger: one equity row per applied bar, each fill once.
        state = dump(victim) if victim.exists() else {"equity": [], "fills": []}
        applied = len(state["equity"])
        assert [r[3] for r in state["equity"]] == [s.open_time for s in sigs[:applied]]
        assert state["fills"] == dump(ref)["fills"][:len(state["fills"])]
    proc2 = subprocess.run(cmd, input=b"".join(lines), capture_output=True, cwd=REPO)  # finish the job
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    assert kills >= 5
    assert dump(victim) == dump(ref)


def test_equity_rows_carry_the_move_forecast_and_an_older_ledger_gains_its_columns(tmp_path, spot_bars,
                                                                                   make_signals) -> None:
    import dataclasses

    sigs = make_signals(spot_bars(300), seed=3)
    moved = [dataclasses.replace(s, p_move=0.25 + i / 1e4, sigma_bp=11.5 + i, regime=("calm", "active")[i % 2])
             if i % 5 else s for i, s in enumerate(sigs)]  # every fifth without a forecast
    path = tmp_path / "old.sqlite"
    with PaperLedger(path, RULES) as led:
        led.apply_many(moved[:100])
    db = sqlite3.connect(path)  # the ledger as it was before the move columns: drop them
    for col in ("p_move", "sigma_bp", "regime"):
        db.execute(f"ALTER TABLE equity DROP COLUMN {col}")
    db.commit()
    db.close()
    with PaperLedger(path, RULES) as led:  # opened again: the columns come back, the old rows read null
        led.apply_many(moved[100:])
        rows = list(led.equity_rows("BTCUSDT"))
    assert [r.signal_id for r in rows] == [s.id for s in moved]
    assert all(r.p_move is None and r.regime is None for r in rows[:100])
    assert [(r.p_move, r.sigma_bp, r.regime) for r in rows[100:]] == [(s.p_move, s.sigma_bp, s.regime)
                                                                       for s in moved[100:]]
    assert any(r.p_move is None for r in rows[100:]) and any(r.p_move is not None for r in rows[100:])
