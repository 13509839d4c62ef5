"""``barsignal features check`` on real files, as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _data import REPO, SHARED

from barsignal.features.spec import NAMES, schema_hash

FUT = SHARED / "data" / "klines" / "um_futures_1m_daily"
SPOT_5M = sorted((SHARED / "data" / "klines" / "spot_5m").glob("*.json"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "barsignal", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=dict(os.environ))


def test_check_json_on_real_files_exits_0() -> None:
    files = [str(FUT / "BTCUSDT-1m-2022-05-09.csv"), str(FUT / "BTCUSDT-1m-2022-06-13.csv")]
    proc = _cli("features", "check", *files, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["schema_hash"] == schema_hash()
    assert [f["file"] for f in doc["files"]] == files
    for f in doc["files"]:
        assert f["ok"] and f["rows"] == 1440
        checks = f["checks"]
        assert set(checks) == {"incremental_vs_batch", "restart_parity", "talib"}
        assert checks["incremental_vs_batch"]["bound"] == 0.0
        assert set(checks["incremental_vs_batch"]["worst"]) == set(NAMES)
        assert all(v == 0.0 for v in checks["incremental_vs_batch"]["worst"].values())
        assert checks["restart_parity"]["ok"] and checks["restart_parity"]["rows"] == 720
        assert len(checks["talib"]["worst"]) == 19
        assert all(v <= 1e-6 for v in checks["talib"]["worst"].values())


def test_check_table_output_and_failure_exit() -> None:
    proc = _cli("features", "check", str(FUT / "BTCUSDT-1m-2022-05-01.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "features check: OK" in proc.stdout and "rvol30" in proc.stdout
    # a 5-minute file is refused (the features are defined on 1-minute bars): exit 1
    proc = _cli("features", "check", str(SPOT_5M[0]), "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and "1-minute" in doc["files"][0]["error"]
