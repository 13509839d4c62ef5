"""Fixtures for the daemon tests: real bars, a real (tiny) ONNX model on ONNX Runtime, redis."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import numpy as np
import orjson
import pytest

from barsignal.features.bar import Bar
from tests import e2e, tiny_model
from tests.conftest import SPOT_1M

T, F = 30, 33
_K = (np.arange(F) + 1) / F
_M = np.arange(F) % 3


def real_bars(n: int, start: int = 0, path: Path | None = None) -> list[Bar]:
    """``n`` consecutive real BTCUSDT 1m bars from ../shared/data (the 2021-11 file has no gaps)."""
    path = path or next(p for p in SPOT_1M if "2021-11-11" in p.name)
    rows = orjson.loads(path.read_bytes())[start:start + n]
    return [Bar(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]), "file")
            for r in rows]


class TinyFeatures:
    """Stand-in for features.online.OnlineFeatures where a test needs no real features: the window
    is 33 log-return/range columns of the last 30 bars. Same contract: ``update(bar) -> window|None``."""

    def __init__(self) -> None:
        self.bars: deque[Bar] = deque(maxlen=T + 1)
        self.buf = np.zeros((T, F), np.float32)

    def update(self, bar: Bar) -> np.ndarray | None:
        self.bars.append(bar)
        if len(self.bars) <= T:
            return None
        c = np.array([b.close for b in self.bars])
        rng = np.array([(b.high - b.low) / b.close for b in self.bars])[1:]
        r = np.diff(np.log(c)) * 100
        self.buf[:] = r[:, None] * _K + rng[:, None] * _M
        return self.buf

    def rehearse(self, bar: Bar) -> None:
        bars, buf = list(self.bars), self.buf.copy()
        self.update(bar)
        self.bars.clear()
        self.bars.extend(bars)
        self.buf[:] = buf


@pytest.fixture
def tiny_scorer(tmp_path: Path):
    from barsignal.engine.backends.ort import OnnxRuntimeScorer

    static, dynamic = tiny_model.write_tiny_onnx(tmp_path / "tiny")
    return OnnxRuntimeScorer(static, dynamic, warmup=2)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """$BARSIGNAL_TEST_REDIS_URL (make test starts one), else our own redis-server on a free port."""
    url = os.environ.get("BARSIGNAL_TEST_REDIS_URL")
    if url:
        yield url
        return
    srv = e2e.RedisServer(tmp_path_factory.mktemp("redis"))
    srv.start()
    yield srv.url
    srv.stop()


def write_tiny_artifact(dest: Path, *, bias: float = 0.0, n_fit: int = 3000, move_spec: dict | None = None) -> Path:
    """The shared tiny artifact (tests/tiny_model.py), its Normalizer fitted on real bars."""
    return tiny_model.write_tiny_artifact(dest, real_bars(n_fit, start=20_000), bias=bias, move_spec=move_spec)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_artifact(tmp_path_factory.mktemp("artifact") / "tiny")


@pytest.fixture(scope="session")
def har_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artifact with a ``har_seasonal`` move head that learns online (``tiny_model.har_move_spec``)."""
    return write_tiny_artifact(tmp_path_factory.mktemp("artifact") / "har", move_spec=tiny_model.har_move_spec())
