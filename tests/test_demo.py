"""``barsignal demo`` end to end, as a user runs it: a subprocess that runs ``feed serve``, the daemon,
``paper status``/``report`` and ``parity`` as subprocesses of their own (shortened with --minutes)."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson

from tests.conftest import REPO


def demo(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    r = subprocess.run([sys.executable, "-m", "barsignal", "demo", "--out", str(out), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=480, env={**os.environ, **(env or {})})
    assert r.returncode == 0, f"demo exited {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stdout + r.stderr
    return r


def signals(out: Path) -> list[dict]:
    return [orjson.loads(x) for x in (out / "state" / "signals.jsonl").read_bytes().splitlines()]


def log_events(path: Path) -> list[str]:
    return [orjson.loads(x).get("event", "") for x in path.read_bytes().splitlines() if x.startswith(b"{")]


def test_demo_on_real_bars_shows_flat_signals_a_report_and_parity_ok(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "demo"
    r = demo(out, "--minutes", "30", "--speed", "8")
    text = r.stdout
    lines = text.strip().splitlines()
    assert lines[-1] == "parity OK", text[-2000:]
    assert "parity OK: 3 of 3 symbols with 0 differences" in text
    assert "real Binance spot 1m bars from" in text and "BTCUSDT, ETHUSDT, SOLUSDT" in text
    # where everything is, as printed, and it is there
    for what in ("config.toml", "state/signals.jsonl", "state/paper.sqlite", "daemon.log"):
        assert str(out / what) in text and (out / what).exists(), what
    assert "/metrics" in text and "/healthz" in text and '"status":"ok"' in text
    # the bundled artifact stays flat, and the demo says so; the signals carry p_up
    assert "policy is to stay flat" in text
    got = signals(out)
    assert {s["symbol"] for s in got} == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    assert {s["action"] for s in got} == {"flat"} and all(0 < s["p_up"] < 1 for s in got)
    last = 1_681_084_800_000 + 29 * 60_000  # 2023-04-10 00:29 UTC, the 30th streamed bar
    for sym in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        # the warm-up's last bar, then every streamed bar once (the feed waits for the daemon's subscription)
        times = [s["open_time"] for s in got if s["symbol"] == sym]
        assert times == list(range(last - 30 * 60_000, last + 1, 60_000)), sym
    events = log_events(out / "daemon.log")
    assert "signals_informational" in events and "signal_policy_overridden" not in events
    assert "daemon_stopped" in events and "the daemon exited 0 (drained: True" in text
    # paper status and the report per symbol
    status = text.split("paper status --config", 1)[1].split("\n$ ", 1)[0]
    assert all(f"{sym}: flat" in status for sym in ("BTCUSDT", "ETHUSDT", "SOLUSDT")), status
    for sym in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        mds = list((out / "report" / sym).glob("*.md"))
        assert len(mds) == 1 and "| Round trips | 0 |" in mds[0].read_text(), sym
        assert "| Round trips | 0 | 0 |" in text  # the report's table, shown by the demo


def test_demo_without_real_bars_uses_labelled_synthetic_bars_and_a_threshold_override_trades(
        tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = demo(out, "--symbols", "BTCUSDT,ETHUSDT", "--minutes", "40", "--speed", "8", "--long-threshold", "0.5",
             "--json", env={"BARSIGNAL_DATA": str(tmp_path / "no-data-here")})
    # --json: one object on stdout, the progress lines on stderr
    info = orjson.loads(r.stdout)
    assert info["parity_ok"] is True and info["bars"] == "synthetic" and info["out"] == str(out)
    assert info["signals"] == {"BTCUSDT": 41, "ETHUSDT": 41}  # the warm-up's last bar, then the 40 streamed
    assert all(Path(p).is_file() for ps in info["reports"].values() for p in ps) and len(info["reports"]) == 2
    text = r.stderr
    assert text.strip().splitlines()[-1] == "parity OK"
    assert "SYNTHETIC bars (a seeded random walk, not market data; no real bars of BTCUSDT, ETHUSDT at" in text
    assert sorted(p.name for p in (out / "bars").iterdir()) == ["BTCUSDT-SYNTHETIC-1m.json",
                                                                  "ETHUSDT-SYNTHETIC-1m.json"]
    assert "parity OK: 2 of 2 symbols with 0 differences" in text
    assert "long_threshold = 0.5 overrides the artifact's flat policy" in text
    assert "long_threshold = 0.5" in (out / "config.toml").read_text()
    # the log tells the truth: the override, not "every action is flat"; and the rule goes long
    events = log_events(out / "daemon.log")
    assert "signal_policy_overridden" in events and "signals_informational" not in events
    got = signals(out)
    assert {s["action"] for s in got} == {"flat", "long"}
    for sym in ("BTCUSDT", "ETHUSDT"):  # entries at p_up >= 0.5, exits below it (after the minimum hold)
        mine = [s for s in got if s["symbol"] == sym]
        for a, b in itertools.pairwise(mine):
            if (a["action"], b["action"]) == ("flat", "long"):
                assert b["p_up"] >= 0.5, b
            elif (a["action"], b["action"]) == ("long", "flat"):
                assert b["p_up"] < 0.5, b
    with sqlite3.connect(out / "state" / "paper.sqlite") as db:
        tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        fills = db.execute("SELECT COUNT(*) FROM fills").fetchone()[0] if "fills" in tables else None
    assert fills, f"no paper fills ({tables})"


def test_demo_refuses_bad_arguments_with_exit_2_and_makes_nothing(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    for args, want in ((["--out", str(tmp_path / "used")], "is not empty; name a new or empty directory"),
                       (["--out", str(tmp_path / "o1"), "--data-dir", str(tmp_path / "nope")],
                        f"--data-dir {tmp_path / 'nope'}: no real bars there for BTCUSDT, ETHUSDT, SOLUSDT"),
                       (["--out", str(tmp_path / "o2"), "--symbols", "BTCUSDT,BTCUSDT"], "each once"),
                       (["--out", str(tmp_path / "o3"), "--long-threshold", "1.5"], "between 0 and 1")):
        r = run_cli("demo", *args)
        assert r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]
