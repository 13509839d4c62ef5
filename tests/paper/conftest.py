"""Real bars and signals for the paper tests, as fixtures (test modules cannot import each other
under --import-mode=importlib). A seeded p_up stands in for a model: the broker and the ledger only
see signals, and their actions come from the real signal rule."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from barsignal.engine.signal import Signal, SignalRule, signal_id
from barsignal.features.bar import Bar
from tests.tiny_model import T, har_move_spec, write_tiny_artifact, write_tiny_onnx

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("BARSIGNAL_SHARED", REPO.parent / "shared")).resolve()
SPOT_1M = sorted((SHARED / "data" / "klines" / "spot_1m").glob("*.json"))
ART = "0123456789abcdef0123"


@cache
def _spot_bars(n: int, file_index: int = 2, start: int = 0) -> tuple[Bar, ...]:
    """``n`` real 1m bars of a spot file from row ``start`` (index 2: Nov-Dec 2021, no gaps; index 0
    has a real 284-bar exchange gap at 2021-04-25 04:00)."""
    if not SPOT_1M:
        pytest.fail(f"real data not found under {SHARED}/data/klines/spot_1m")
    rows = json.loads(SPOT_1M[file_index].read_text())[start:start + n]
    return tuple(Bar(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]), "file")
                 for r in rows)


def _make_signals(bars: tuple[Bar, ...] | list[Bar], seed: int = 0, allow_short: bool = True,
                  symbol: str = "BTCUSDT") -> list[Signal]:
    rng = np.random.default_rng(seed)
    rule = SignalRule(0.55, 0.45, hysteresis=0.02, cooldown_bars=1, allow_short=allow_short)
    out = []
    for b in bars:
        p = float(np.float32(rng.beta(5, 5)))
        out.append(Signal(signal_id(symbol, b.open_time, ART), symbol, b.open_time, b.open, b.close, p,
                          rule.update(p), ART, b.source))
    return out


@pytest.fixture(scope="session")
def spot_bars() -> Callable[..., tuple[Bar, ...]]:
    return _spot_bars


@pytest.fixture(scope="session")
def make_signals() -> Callable[..., list[Signal]]:
    return _make_signals


# -- a real pipeline: real features (OnlineFeatures), a real ONNX model on ONNX Runtime, the real rule --


@pytest.fixture(scope="session")
def make_pipeline(tmp_path_factory) -> Callable[..., object]:
    """``make_pipeline(last_signalled=None)`` -> a fresh real Pipeline (same model every call)."""
    from barsignal.daemon.pipeline import Model, Pipeline
    from barsignal.engine.backends.ort import OnnxRuntimeScorer
    from barsignal.features import batch
    from barsignal.features.bar import BarFrame
    from barsignal.features.normalize import Normalizer
    from barsignal.features.online import OnlineFeatures

    static, dynamic = write_tiny_onnx(tmp_path_factory.mktemp("onnx"))
    scorer = OnnxRuntimeScorer(static, dynamic)
    from barsignal.engine import move_persistence
    from barsignal.engine.move_registry import build
    from barsignal.engine.regime import RegimeRule
    from tests.tiny_model import MOVE_HORIZON, MOVE_THRESHOLD_BP

    X, ready = batch.compute_with_ready(BarFrame.from_bars(list(_spot_bars(3000, 0))))
    norm = Normalizer.fit(X[ready])
    move = move_persistence.fit(list(_spot_bars(3000, 0)), MOVE_HORIZON, MOVE_THRESHOLD_BP)  # the same bars

    def make(last_signalled: int | None = None) -> Pipeline:
        rule = SignalRule(0.52, 0.48, hysteresis=0.01, cooldown_bars=2, allow_short=True,
                          regime=RegimeRule(0.75, 0.02, 2))
        return Pipeline("BTCUSDT", Model(OnlineFeatures(norm, T), scorer, rule, "cd" * 32, move=build(move)),
                        last_signalled=last_signalled)

    return make


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    """A real, verified model artifact around the tiny ONNX model (normalizer fit on real bars)."""
    return write_tiny_artifact(tmp_path_factory.mktemp("art") / "artifact", _spot_bars(3000, 0), seed=1)


@pytest.fixture(scope="session")
def har_artifact(tmp_path_factory) -> Path:
    """The same artifact with a ``har_seasonal`` move head that learns online (its correction is stored
    with the rule state and resumed by a restart)."""
    return write_tiny_artifact(tmp_path_factory.mktemp("art") / "har", _spot_bars(3000, 0), seed=1,
                               move_spec=har_move_spec())
