"""``barsignal replay`` and ``barsignal parity`` as a user runs them: real files, real subprocesses."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
FUT = sorted((Path(__file__).resolve().parents[3] / "shared" / "data" / "klines" / "um_futures_1m_daily")
             .glob("BTCUSDT-1m-2022-05-0*.csv"))[:2]


def cli(*a: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "barsignal", "--log-format", "json", *a],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory, tiny_artifact) -> Path:
    assert len(FUT) == 2, "needs two real futures daily CSVs in ../shared/data"
    d = tmp_path_factory.mktemp("cli")
    cfg = d / "c.toml"
    cfg.write_text('[signal]\nallow_short = true\n[paper]\nallow_short = true\n')
    r = cli("replay", "--bars", *map(str, FUT), "--artifact", str(tiny_artifact), "--config", str(cfg),
            "--signals", str(d / "signals.jsonl"), "--out", str(d / "report"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "replayed 2880 bars" in r.stderr
    return d


def test_replay_writes_live_format_signals_and_report(replayed) -> None:
    recs = [orjson.loads(x) for x in (replayed / "signals.jsonl").read_bytes().splitlines()]
    assert len(recs) > 2000
    assert set(recs[0]) == {"id", "symbol", "open_time", "bar_open", "bar_close", "p_up", "action",
                            "artifact", "source", "latency_us", "p_move", "sigma_bp", "regime"}
    assert all(0 < r["p_move"] < 1 and r["sigma_bp"] > 0 and r["regime"] in ("calm", "active") for r in recs)
    assert {r["source"] for r in recs} == {"file"}
    assert all(b["open_time"] - a["open_time"] == 60_000 for a, b in itertools.pairwise(recs))
    md = (replayed / "report" / "report.md").read_text()
    assert "| Total return |" in md and "buy-and-hold" in md
    assert "## Move head: p_move" in md and "| Bars scored |" in md and "| Brier score (lower is better) |" in md
    assert (replayed / "report" / "equity_BTCUSDT.png").is_file()


def test_parity_cli_ok_then_first_difference(replayed, tiny_artifact) -> None:
    args = ["--bars", *map(str, FUT), "--artifact", str(tiny_artifact), "--config", str(replayed / "c.toml")]
    ok = cli("parity", "--live-signals", str(replayed / "signals.jsonl"), *args)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "0 differences" in ok.stdout
    lines = (replayed / "signals.jsonl").read_bytes().splitlines()
    rec = orjson.loads(lines[1000])
    rec["action"] = {"long": "flat", "flat": "short", "short": "long"}[rec["action"]]
    lines[1000] = orjson.dumps(rec)
    bad = replayed / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    r = cli("parity", "--live-signals", str(bad), *args)
    assert r.returncode == 1
    assert f"open_time {rec['open_time']}): action differs" in r.stderr
    js = cli("parity", "--live-signals", str(bad), *args, "--json")
    assert js.returncode == 1
    doc = orjson.loads(js.stdout)
    assert doc["ok"] is False and [s["symbol"] for s in doc["symbols"]] == ["BTCUSDT"]
    first = doc["symbols"][0]["differences"][0]
    assert (first["open_time"], first["what"]) == (rec["open_time"], "action")
    ok = orjson.loads(cli("parity", "--live-signals", str(replayed / "signals.jsonl"), *args, "--json").stdout)
    assert ok["ok"] is True and ok["symbols"][0]["compared"] == len(lines) and ok["symbols"][0]["differences"] == []
    lines = (replayed / "signals.jsonl").read_bytes().splitlines()
    rec = orjson.loads(lines[1200])
    rec["p_move"] = float(np.nextafter(rec["p_move"], 2.0))  # one float64 ulp of the move head
    lines[1200] = orjson.dumps(rec)
    bad.write_bytes(b"\n".join(lines) + b"\n")
    r = cli("parity", "--live-signals", str(bad), *args)
    assert r.returncode == 1
    assert f"open_time {rec['open_time']}): p_move differs" in r.stderr


def test_bench_replay_runs_through_the_node(tmp_path, tiny_artifact) -> None:
    r = cli("bench", "replay", "--bars", *map(str, FUT), "--artifact", str(tiny_artifact), "--limit", "2000",
            "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bars/s" in r.stderr  # the text beside the JSON document, which has stdout to itself
    fig = orjson.loads(r.stdout)
    assert fig["bars"] == 2000 and fig["signals"] > 0 and fig["matmul_ceiling_gflops"] > 0
    assert fig["seconds"]["scoring"] > 0 and fig["fills"] >= 0


def test_parity_replays_each_run_from_the_state_it_started_from(tmp_path, tiny_artifact, spot_bars) -> None:
    """Run A is killed in its warm-up (no signal); run B starts afresh with a REST warm-up that overlaps
    A's bars and signals once warm; run C restarts from B's last signal and catches up. One series
    through one pipeline would signal B's bars earlier than B could (the first kill -9 CI failure);
    parity replays each run from its ``run_start`` line and finds 0 differences."""
    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.barlog import BarLog
    from barsignal.daemon.paper.parity import compare
    from barsignal.daemon.paper.replay import load_bars, replay
    from barsignal.node import Start, build_node, load_model

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text("[signal]\nallow_short = true\n")
    cfg = cfgmod.load(cfg_path)
    bars = list(spot_bars(2000))
    state = tmp_path / "bars"
    live: list = []

    def run(rid: str, part: list, last=None, rule_state=None) -> object:
        pipe = build_node(cfg, "replay", artifact_dir=str(tiny_artifact), start=Start(last, rule_state)).pipeline
        log = BarLog(state, "BTCUSDT", run_id=rid, last_signalled=last, rule_state=rule_state)
        for b in part:
            log.record(b)
            if (s := pipe.process(b)) is not None:
                live.append(s)
        log.close()
        return pipe

    warm = load_model(cfg, str(tiny_artifact), None).warmup_bars
    run("20260101T000000000Z", bars[:warm - 10])
    assert live == []
    end_b = warm - 40 + warm + 200
    b = run("20260101T000001000Z", bars[warm - 40:end_b])
    first_b = len(live)
    assert first_b == 201 and live[0].open_time == bars[end_b - 201].open_time
    run("20260101T000002000Z", bars[end_b - warm:end_b + 100], last=live[-1].open_time, rule_state=b.rule_state)
    assert [s.open_time for s in live] == [x.open_time for x in bars[end_b - 201:end_b + 100]]
    sig_path = tmp_path / "signals.jsonl"
    sig_path.write_bytes(b"".join(orjson.dumps(s) + b"\n" for s in live))

    merged: list = []
    replay(load_bars([str(state)], "BTCUSDT"),
           build_node(cfg, "replay", artifact_dir=str(tiny_artifact), on_signal=merged.append))
    assert not compare(live, merged).ok, "one series through one pipeline should differ here"
    r = cli("parity", "--live-signals", str(sig_path), "--bars", str(state), "--artifact", str(tiny_artifact),
            "--config", str(cfg_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"parity OK: {len(live)} signals compared, 0 differences" in r.stdout


def test_parity_drops_an_invalid_recorded_bar_as_live_did(tmp_path, tiny_artifact, spot_bars) -> None:
    """Issue 13 #2: a bar record holding an absurd bar (price 1e13, here between two real bars) made
    ``barsignal parity`` crash. The live node drops it (the features refuse it before any state
    changes); parity drops it the same way, counts it, and finds 0 differences."""
    import dataclasses

    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.barlog import BarLog
    from barsignal.node import build_node

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text("[signal]\nallow_short = true\n")
    cfg = cfgmod.load(cfg_path)
    bars = list(spot_bars(1100))
    node = build_node(cfg, "replay", artifact_dir=str(tiny_artifact))
    live: list = []
    log = BarLog(tmp_path / "bars", "BTCUSDT", run_id="20260101T000000000Z",
                 artifact={"hash": node.pipeline.model.artifact_hash, "path": str(tiny_artifact)})
    for i, b in enumerate(bars):
        if i == 1000:
            bad = dataclasses.replace(b, high=1e13, source="ws")
            log.record(bad)
            assert node.pipeline.process(bad) is None
        log.record(b)
        if (s := node.pipeline.process(b)) is not None:
            live.append(s)
    log.close()
    import asyncio

    asyncio.run(node.close())
    assert node.pipeline.stats.invalid == 1 and len(live) > 50
    sig_path = tmp_path / "signals.jsonl"
    sig_path.write_bytes(b"".join(orjson.dumps(s) + b"\n" for s in live))
    r = cli("parity", "--live-signals", str(sig_path), "--bars", str(tmp_path / "bars"), "--config", str(cfg_path))
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert f"parity OK: {len(live)} signals compared, 0 differences" in r.stdout
    assert "1 invalid bar(s) dropped as live dropped them" in r.stdout


def test_parity_names_a_recorded_artifact_it_cannot_find(tmp_path, spot_bars) -> None:
    """A run recorded with an artifact that is no longer anywhere parity looks: one line naming the
    hash and what to pass, exit 1 (not a replay with another model that would report differences)."""
    from barsignal.daemon.barlog import BarLog

    log = BarLog(tmp_path / "bars", "BTCUSDT", run_id="20260101T000000000Z",
                 artifact={"hash": "f" * 64, "path": str(tmp_path / "gone")})
    for b in spot_bars(50):
        log.record(b)
    log.close()
    (tmp_path / "signals.jsonl").write_bytes(b"")
    r = cli("parity", "--live-signals", str(tmp_path / "signals.jsonl"), "--bars", str(tmp_path / "bars"))
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    assert "artifact ffffffffffff" in r.stderr and "pass --artifact DIR holding it" in r.stderr
