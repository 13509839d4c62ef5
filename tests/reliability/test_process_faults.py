"""Process faults: ``kill -9`` of the live daemon at random points, repeated, with restarts.

``barsignal feed serve`` plays real bars at 40 bars/s without pause; the daemon (jsonl + paper
sinks, durable outbox) is SIGKILLed 7 times at random points (during start-up and warm-up, and
after a random number of signals), restarted each time, then stopped cleanly. Required: every
bar from the first signalled one on is signalled exactly once in the outbox (restarts catch up
the bars missed while down); the jsonl sink has every signal at least once and exactly once after
de-duplication by id; the paper ledger has one equity row per signal and its fills and equity
equal a fresh ledger fed those signals once each; ``barsignal parity`` finds the signals equal
to a replay of the daemon's bar record (p_move included: the artifact's ``har_seasonal`` move head
learns online, and every restart resumes its correction from the outbox).
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from barsignal.daemon import config as cfgmod
from barsignal.daemon.paper.ledger import PaperLedger
from barsignal.daemon.paper.signals_io import read_signals
from barsignal.engine.broker import Rules
from tests import e2e as h
from tests.conftest import REPO, free_port

START, SPEED, KILLS = 3000, 40.0, 7


def test_kill_9_at_random_points_loses_and_duplicates_nothing(tmp_path: Path, har_artifact: Path) -> None:
    artifact = har_artifact
    rows = h.rows()
    times = [int(r[0]) for r in rows]
    port = free_port()
    cfg = h.write_config(tmp_path, port, sinks=("jsonl", "paper"))
    state = tmp_path / "state"
    sig_path = state / "signals.jsonl"
    feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, START + 20_000, speed=SPEED, port=port)
    rng = random.Random(9_2026)
    kills: list[str] = []
    left = 0  # (signal, sink) deliveries pending in the outbox right after a kill
    run = None
    t0 = time.monotonic()
    try:
        for k in range(KILLS):
            log = tmp_path / f"daemon{k}.log"
            before = len(h.read_jsonl(sig_path))
            run = h.start_daemon(tmp_path, cfg, artifact, name=f"daemon{k}")
            point = rng.choice(["started", "warmup", "signals", "signals", "signals"])
            if point == "started":
                h.wait_for(lambda log=log: "daemon_started" in log.read_text(), 60, "start", [run], [log])
            elif point == "warmup":
                h.wait_for(lambda log=log: "feed.connected" in log.read_text(), 60, "connect", [run], [log])
            else:
                n = rng.randint(1, 120)
                point = f"after {n} signals"
                h.wait_for(lambda want=before + n: len(h.read_jsonl(sig_path)) >= want, 90, point, [run], [log])
            h.stop(run, signal.SIGKILL)
            assert run.returncode == -signal.SIGKILL
            kills.append(point)
            if (state / "outbox.sqlite").exists():  # left undelivered by the kill: the restart sends them
                db = sqlite3.connect(state / "outbox.sqlite")
                left += db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
                db.close()
        # A last, clean run: it catches up and goes on; SIGTERM drains the outbox.
        log = tmp_path / "final.log"
        before = len(h.read_jsonl(sig_path))
        run = h.start_daemon(tmp_path, cfg, artifact, name="final")
        h.wait_for(lambda: len(h.read_jsonl(sig_path)) >= before + 60, 90, "signals after the last restart",
                   [run, feed], [log])
        code = h.stop(run)
        wall = time.monotonic() - t0
    finally:
        h.kill_all(run)
        h.stop(feed)
    assert code == 0, log.read_text()[-3000:]
    for p in tmp_path.glob("daemon*.log"):
        h.assert_clean_log(p)

    # The outbox: one signal per bar from the first on, none missing, none twice, nothing pending.
    db = sqlite3.connect(state / "outbox.sqlite")
    ob = db.execute("SELECT id, open_time FROM signals ORDER BY seq").fetchall()
    pending = db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
    db.close()
    ob_ots = [t for _, t in ob]
    i0 = times.index(ob_ots[0])
    assert ob_ots == times[i0:i0 + len(ob_ots)], "a bar was missed or signalled twice across the kills"
    assert pending == 0

    # The jsonl sink: at least once, exactly once after de-duplication by id.
    lines = h.read_jsonl(sig_path)
    ids = [s["id"] for s in lines]
    assert set(ids) == {i for i, _ in ob}
    uniq = list(dict.fromkeys(ids))
    assert uniq == [i for i, _ in ob], "delivered out of order after de-duplication"
    dups = len(ids) - len(uniq)

    # The paper ledger: one equity row per signal; fills and equity equal a fresh ledger fed the
    # de-duplicated signals once each.
    live = h.ledger_rows(state / "paper.sqlite")
    assert [r[1] for r in live["equity"]] == ob_ots
    signals = list({s.id: s for s in read_signals(sig_path)}.values())
    rules = Rules.from_config(cfgmod.load(cfg).paper)
    with PaperLedger(tmp_path / "ref.sqlite", rules) as ref:
        ref.apply_many(signals)
    assert live == h.ledger_rows(tmp_path / "ref.sqlite"), "the ledger after kills != the same signals applied once"

    # The signals are what a replay of the daemon's bar record gives, bit for bit.
    res = subprocess.run([sys.executable, "-m", "barsignal", "parity", "--live-signals", str(sig_path),
                          "--bars", str(state / "bars"), "--config", str(cfg), "--artifact", str(artifact)],
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"parity OK: {len(ob)} signals compared, 0 differences" in res.stdout, res.stdout
    final_equity = live["equity"][-1][-1]
    print(f"\n[process faults] {len(kills)} x kill -9 ({', '.join(kills)}) + clean stop in {wall:.1f} s: "
          f"{len(ob)} signals, 0 missed, 0 double; {left} deliveries left pending by the kills, sent after "
          f"restart; jsonl lines {len(ids)} ({dups} re-deliveries, exactly "
          f"once after dedup); ledger {len(live['fills'])} fills, {len(live['equity'])} equity rows == "
          f"reference (final equity {final_equity:.2f}); parity 0 differences")
