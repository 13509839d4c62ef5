"""`barsignal compress` is registered, lists its stages, and imports no torch until it runs."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, run_cli


def test_cli_module_imports_without_torch():
    code = "import sys, barsignal.cli, barsignal.cli.compress; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_compress_help_lists_every_stage():
    proc = run_cli("compress", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for stage in ("distill", "prune", "export", "quantize", "report", "engine", "serving", "move"):
        assert stage in proc.stdout


def test_missing_teacher_is_a_clear_error(tmp_path):
    proc = run_cli("compress", "distill", "--teacher", str(tmp_path / "nope"), "--workdir", str(tmp_path / "w"),
                   timeout=120)
    assert proc.returncode == 2
    assert "no checkpoint" in proc.stderr and "barsignal train" in proc.stderr
