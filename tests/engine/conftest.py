"""Engine test fixtures: real windows from a real spot 1m file, the bundled artifact in a tmp copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
SPOT_FILE = SHARED_DATA / "klines" / "spot_1m" / "BTC_USDT-1m_2021-11-11_2021-12-11.json"


@pytest.fixture(scope="session")
def real_windows() -> np.ndarray:
    """10,000 real normalized windows (N, 30, 33) float32, evenly spaced over a month of real bars."""
    if not SPOT_FILE.is_file():
        pytest.fail(f"real data not found at {SPOT_FILE}")
    from barsignal.model.dataset import all_windows, build, load_segments

    segments = load_segments([SPOT_FILE])
    splits = build(segments)
    ws = all_windows(segments, splits.normalizer).every(10_000)
    x = ws.x()
    assert x.shape == (10_000, 30, 33) and x.dtype == np.float32
    return x


@pytest.fixture(scope="session")
def bundled() -> Path:
    from barsignal.engine.artifact import default_artifact_dir

    return default_artifact_dir()


@pytest.fixture()
def artifact_copy(tmp_path: Path, bundled: Path) -> Path:
    """A private copy of the bundled artifact that a test may corrupt."""
    dst = tmp_path / "artifact"
    shutil.copytree(bundled, dst)
    return dst


@pytest.fixture(scope="session")
def fp32_variant() -> str:
    """The bundled artifact's FP32 variant (the default may be a quantized one)."""
    from barsignal.engine.artifact import load_artifact

    art = load_artifact()
    names = [art.default_variant, *art.variant_names]
    for name in names:
        if art.manifest["variants"][name].get("precision", "fp32") == "fp32":
            return name
    pytest.fail(f"the bundled artifact has no FP32 variant (variants: {art.variant_names})")
