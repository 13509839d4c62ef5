"""The systemd unit verifies and its offline security exposure stays <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "barsignal.service"
INSTALLED_BIN = "/opt/barsignal/venv/bin/barsignal"

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed on this host")


def _unit_here(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointed at this venv's barsignal (verify checks it exists)."""
    here = Path(sys.executable).parent / "barsignal"
    out = tmp_path / "barsignal.service"
    out.write_text((text or UNIT.read_text()).replace(INSTALLED_BIN, str(here)))
    return out


def exposure(unit: Path) -> float:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


def test_unit_has_the_required_settings() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StartLimitBurst=", "DynamicUser=yes",
                 "StateDirectory=barsignal", "ConfigurationDirectory=barsignal", "LoadCredential=",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "RestrictAddressFamilies=", "SystemCallFilter=@system-service", "CapabilityBoundingSet=\n",
                 "MemoryDenyWriteExecute=yes", "RestartPreventExitStatus=2", f"ExecStart={INSTALLED_BIN}"):
        assert line in text, f"barsignal.service lacks {line!r}"


@needs_systemd
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    unit = _unit_here(tmp_path)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "barsignal.service" not in proc.stderr, proc.stderr


@needs_systemd
def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    figure = exposure(_unit_here(tmp_path))
    print(f"systemd-analyze security --offline=true: overall exposure {figure}")
    assert figure <= 2.0


@needs_systemd
def test_exposure_check_can_fail(tmp_path: Path) -> None:
    """The same measurement on an unhardened unit is far above 2.0, so the bound means something."""
    bare = "\n".join(ln for ln in UNIT.read_text().splitlines()
                     if not re.match(r"(Protect|Private|Restrict|SystemCall|Capability|NoNew|Memory|Lock|"
                                     r"DynamicUser|UMask|Remove|Keyring|Device|ProcSubset)", ln))
    assert exposure(_unit_here(tmp_path, bare)) > 5.0


@needs_systemd
def test_gpu_dropin_verifies(tmp_path: Path) -> None:
    """The unit with the GPU drop-in's [Service] lines applied on top verifies, and lifts MDWE."""
    dropin = (REPO / "systemd" / "barsignal-gpu.conf").read_text()
    service = dropin.split("[Service]", 1)[1]
    merged = UNIT.read_text().replace("[Install]", service.strip() + "\n\n[Install]")
    unit = _unit_here(tmp_path, merged)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "barsignal.service:" not in proc.stderr, proc.stderr
    print(f"exposure with the GPU drop-in: {exposure(unit)}")
