"""``barsignal replay`` and ``barsignal parity`` as a user runs them: real files, real subprocesses."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

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
    r = cli("replay", *map(str, FUT), "--artifact", str(tiny_artifact), "--config", str(cfg),
            "--signals", str(d / "signals.jsonl"), "--report", str(d / "report"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "replayed 2880 bars" in r.stderr
    return d


def test_replay_writes_live_format_signals_and_report(replayed) -> None:
    recs = [orjson.loads(x) for x in (replayed / "signals.jsonl").read_bytes().splitlines()]
    assert len(recs) > 2000
    assert set(recs[0]) == {"id", "symbol", "open_time", "bar_open", "bar_close", "p_up", "action",
                            "artifact", "source", "latency_us"}
    assert {r["source"] for r in recs} == {"file"}
    assert all(b["open_time"] - a["open_time"] == 60_000 for a, b in itertools.pairwise(recs))
    md = (replayed / "report" / "report.md").read_text()
    assert "| Total return |" in md and "buy-and-hold" in md
    assert (replayed / "report" / "equity_BTCUSDT.png").is_file()


def test_parity_cli_ok_then_first_difference(replayed, tiny_artifact) -> None:
    args = ["--bars", *map(str, FUT), "--artifact", str(tiny_artifact), "--config", str(replayed / "c.toml")]
    ok = cli("parity", "--live-signals", str(replayed / "signals.jsonl"), *args, "--batch", "1")
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


def test_bench_replay_runs_and_checks_batched_equals_one_by_one(tmp_path, tiny_artifact) -> None:
    out = tmp_path / "bench.json"
    r = cli("bench", "replay", *map(str, FUT), "--artifact", str(tiny_artifact), "--limit", "2000",
            "--verify", "1500", "--batch", "64", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "identical = True" in r.stdout and "bars/s" in r.stdout
    fig = orjson.loads(out.read_bytes())
    assert fig["bars"] == 2000 and fig["signals"] > 0 and fig["matmul_ceiling_gflops"] > 0
    assert fig["batched_equals_one_by_one"]["identical"] is True
