"""The built wheel, installed into a clean venv, imports from the venv (not the checkout), ships
every subpackage, and ``import barsignal.daemon, barsignal.engine`` leaves torch unimported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                              ".pytest_cache", ".ruff_cache", "runs", "state", ".redis", "tests", ".whl",
                              ".gl")


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, \
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(venv, wheel): a wheel built from a copy of the source, installed into a fresh venv."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
          "-w", str(tmp / "dist")], cwd=tmp, timeout=180)
    wheel = next((tmp / "dist").glob("barsignal-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=tmp)
    # Dependencies come from the dev venv's site-packages, added as a plain path (a .pth path line
    # does not run that directory's own .pth files, so the editable finder stays out).
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.check_output([str(py), "-c", where], text=True).strip())
    (site / "zz_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv, wheel


def test_wheel_ships_every_subpackage(installed: tuple[Path, Path]) -> None:
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    outside = {"tests", "build", "dist", "runs", "state", "docs", "systemd"}
    source_pkgs = []
    for root, dirs, files in os.walk(REPO):  # pruned walk: never into .venv
        dirs[:] = [d for d in dirs
                   if d not in outside and not d.startswith(".") and not d.endswith(".egg-info")]
        if "__init__.py" in files:
            source_pkgs.append(Path(root).relative_to(REPO))
    assert len(source_pkgs) >= 6
    missing = [str(d) for d in source_pkgs if f"barsignal/{d}/__init__.py".replace("/./", "/") not in names]
    assert not missing, f"packages missing from the wheel (add them to pyproject's packages): {missing}"
    assert "barsignal/data/load.py" in names and "barsignal/daemon/binance/rest.py" in names


def test_installed_wheel_imports_from_the_venv(installed: tuple[Path, Path], tmp_path: Path) -> None:
    venv, _ = installed
    code = (
        "import barsignal, barsignal.daemon, barsignal.features, barsignal.model, barsignal.compression, "
        "barsignal.engine, barsignal.data, barsignal.daemon.binance, pathlib\n"
        "mods = [barsignal, barsignal.daemon, barsignal.features, barsignal.model, barsignal.compression,"
        " barsignal.engine]\n"
        "print('\\n'.join(str(pathlib.Path(m.__file__).resolve()) for m in mods))\n"
    )
    out = _run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path).stdout.split()
    assert len(out) == 6
    for f in out:
        assert f.startswith(str(venv.resolve())), f"{f} is not from the installed wheel"
        assert not f.startswith(str(REPO)), f
    proc = _run([str(venv / "bin" / "barsignal"), "--version"], cwd=tmp_path)
    assert proc.stdout.startswith("barsignal ")


def test_daemon_and_engine_import_without_torch(installed: tuple[Path, Path], tmp_path: Path) -> None:
    venv, _ = installed
    code = ("import sys, barsignal.daemon, barsignal.engine\n"
            "import barsignal.data, barsignal.daemon.binance.rest\n"
            "import importlib.util\n"
            "assert importlib.util.find_spec('torch') is not None, 'torch should be importable here'\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
            "print('ok')\n")
    assert _run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path).stdout.strip() == "ok"


def test_run_path_works_with_torch_uninstallable(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """As in a core-only install: with torch made unimportable, the installed wheel loads its bundled
    artifact (package data), verifies it, scores a window on ONNX Runtime and builds the run command."""
    venv, wheel = installed
    assert "barsignal/engine/default_artifact/manifest.json" in zipfile.ZipFile(wheel).namelist()
    code = (
        "import sys, importlib.abc\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'onnxscript', 'torchao', 'matplotlib', 'ccxt'):\n"
        "            raise ImportError(f'{name} is not installed (core-only)')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import numpy as np, pathlib\n"
        "from barsignal.engine.artifact import load_artifact, default_artifact_dir\n"
        "from barsignal.engine.select import load_scorer\n"
        "import barsignal.daemon.app, barsignal.cli.run, barsignal.daemon.paper\n"
        "from barsignal.cli import build_parser\n"
        "build_parser()\n"
        "a = load_artifact()\n"
        "assert str(default_artifact_dir()).startswith(sys.prefix), default_artifact_dir()\n"
        "s = load_scorer(a, backend='auto')\n"
        "p = s.score(np.zeros(tuple(a.window_shape), np.float32))\n"
        "assert s.name == 'onnxruntime' and 0.0 < p < 1.0, (s.name, p)\n"
        "print('ok', s.name, round(p, 4))\n"
    )
    out = _run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path).stdout.strip().splitlines()[-1]
    assert out.startswith("ok onnxruntime")
