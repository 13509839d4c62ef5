"""Shared fixtures: the real data in ../shared/data, free ports, the CLI as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BARSIGNAL_SHARED", REPO.parent / "shared")).resolve()
DATA = SHARED / "data"
SPOT_1M = sorted((DATA / "klines" / "spot_1m").glob("*.json"))
FUTURES_1M = sorted((DATA / "klines" / "um_futures_1m_daily").glob("*.csv"))
WIRE = DATA / "wire"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"real data not found at {DATA}: tests need ../shared/data beside the repo")
    return DATA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``barsignal ARGS`` in a subprocess with this interpreter."""
    proc = subprocess.run(
        [sys.executable, "-m", "barsignal", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"barsignal {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc
