"""Atomic writes: the old file or the new one, never a torn one, and no temporary left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from barsignal.fsutil import atomic_open, atomic_write_bytes, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "stage.json"
    atomic_write_text(p, '{"v": 1}\n')
    with pytest.raises(RuntimeError), atomic_open(p) as f:
        f.write(b'{"v": 2, "half')
        raise RuntimeError("crash in the middle")
    assert p.read_text() == '{"v": 1}\n'
    assert sorted(x.name for x in p.parent.iterdir()) == ["stage.json"]
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and oct(p.stat().st_mode & 0o777) == "0o644"


def test_npz_through_atomic_open_loads_back(tmp_path: Path) -> None:
    p = tmp_path / "data.npz"
    with atomic_open(p) as f:
        np.savez(f, key=np.array("k"), x=np.arange(5))
    with np.load(p) as z:
        assert str(z["key"]) == "k" and z["x"].tolist() == [0, 1, 2, 3, 4]
    assert [x.name for x in tmp_path.iterdir()] == ["data.npz"]


def test_a_process_killed_while_writing_leaves_the_old_file(tmp_path: Path) -> None:
    p = tmp_path / "model.onnx"
    atomic_write_bytes(p, b"old" * 1000)
    code = ("import os, sys\nfrom barsignal.fsutil import atomic_open\n"
            f"with atomic_open({str(p)!r}) as f:\n"
            "    f.write(b'new' * 100000); f.flush(); os.kill(os.getpid(), 9)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert r.returncode == -9
    assert p.read_bytes() == b"old" * 1000, "a kill -9 mid-write replaced the file with a torn one"
