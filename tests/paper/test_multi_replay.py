"""``barsignal replay --bars SYMBOL=FILE ... --jobs K`` (issue 14): several symbols' real bars, each in
a process of its own; the signals, ledgers and reports do not depend on K; the total report adds up
the per-symbol accounts (cash split: each symbol its own initial cash)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson

from tests import e2e as h
from tests.conftest import REPO

DATA = Path("/work/shared/data")
FILES = {"BTCUSDT": DATA / "klines" / "spot_1m" / "BTC_USDT-1m_2023-03-16_2023-05-01.json",
         "ETHUSDT": DATA / "multi" / "spot_1m" / "ETH_USDT-1m.json",
         "XRPUSDT": DATA / "multi" / "spot_1m" / "XRP_USDT-1m.json"}


def _replay(tmp: Path, files: dict[str, Path], jobs: int, artifact: Path, name: str) -> tuple[list[dict], Path]:
    cfg = tmp / "replay.toml"
    cfg.write_text('[paper]\nallow_short = true\n[signal]\nlong_threshold = 0.5\nshort_threshold = 0.5\n')
    out = tmp / name
    args = [sys.executable, "-m", "barsignal", "replay", "--config", str(cfg), "--artifact", str(artifact),
            "--jobs", str(jobs), "--signals", str(out / "signals.jsonl"), "--out", str(out / "report")]
    for sym, f in files.items():
        args += ["--bars", f"{sym}={f}"]
    out.mkdir()
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"with {jobs} process(es)" in r.stderr
    sigs = [orjson.loads(x) for x in (out / "signals.jsonl").read_bytes().splitlines()]
    for s in sigs:
        s.pop("latency_us")  # timings, not results
    return sigs, out / "report"


def _fills(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT * FROM fills ORDER BY 1, 2").fetchall()
    finally:
        db.close()


def test_replay_of_three_symbols_gives_the_same_results_on_one_and_two_processes(tmp_path: Path,
                                                                                  tiny_artifact: Path) -> None:
    files = {}
    for i, (sym, f) in enumerate(FILES.items()):
        rows = h.rows(f)
        files[sym] = h.write_slice(rows, 2000 + 300 * i, 3400 + 300 * i, tmp_path / f"{sym}.json")
    one, rep1 = _replay(tmp_path, files, 1, tiny_artifact, "k1")
    two, rep2 = _replay(tmp_path, files, 2, tiny_artifact, "k2")
    assert one == two
    syms = [s["symbol"] for s in one]
    assert list(dict.fromkeys(syms)) == list(FILES)  # merged in the order given, each symbol whole
    for sym in FILES:
        times = [s["open_time"] for s in one if s["symbol"] == sym]
        assert times == sorted(set(times)) and len(times) > 500
    for sym in FILES:
        assert _fills(rep1 / f"paper_{sym}.sqlite") == _fills(rep2 / f"paper_{sym}.sqlite")
        assert (rep1 / f"report_{sym}.md").read_text() == (rep2 / f"report_{sym}.md").read_text()
    total = (rep1 / "report.md").read_text()
    assert total == (rep2 / "report.md").read_text()
    assert "Cash is split" in total and "initial 30,000.00" in total
    # the total's fills and final equity are the sums of the symbols' rows
    rows = {m[0]: m for m in re.findall(r"^\| \**(\w+)\** \|.*?\| (\d+) \| ([\d,.]+) \| ([\d,.]+) \|$", total, re.M)}
    assert set(rows) == {*FILES, "total"}
    fl = lambda x: float(x.replace(",", ""))  # noqa: E731
    assert int(rows["total"][1]) == sum(int(rows[s][1]) for s in FILES) > 0
    assert abs(fl(rows["total"][3]) - sum(fl(rows[s][3]) for s in FILES)) < 0.02


def test_bench_replay_symbols_times_each_process_count_and_checks_the_signals_agree() -> None:
    from tests.conftest import run_cli

    r = run_cli("bench", "replay", "--symbols", "2", "--limit", "1000", "--jobs", "1,2", check=True)
    out = r.stdout
    for k in (1, 2):
        m = re.search(rf"--symbols 2 --jobs {k}: (\d+) bars -> (\d+) signals in [\d.]+ s = [\d,]+ bars/s", out)
        assert m and int(m.group(1)) == 2000 and int(m.group(2)) > 0, out
    assert "signals identical across --jobs 1,2 (latency_us left out): True" in out
