"""Fixtures: a small slice of real spot bars and a tiny teacher (trained for a moment on it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SPOT_1M

BARS = 2500  # ~2,400 windows: train / val / test by the dataset's chronological split


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Two shared cores: one intra-op thread is faster than two fighting for them."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def slice_data():
    from barsignal.compression.data import data_from_segments
    from barsignal.data import load
    from barsignal.model.dataset import Segment

    if not SPOT_1M:
        pytest.fail("real spot 1m bars not found in ../shared/data/klines/spot_1m")
    frame = load(SPOT_1M[2]).frame.slice(0, BARS)
    return data_from_segments([Segment("spot_1m_slice", frame)], max_train=400, max_val=150, max_test=300)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, slice_data) -> Path:
    """A small ProbSparse teacher (d_model 32, 4 heads, 2 layers) saved as a real checkpoint."""
    import torch

    from barsignal.compression.config import DistillSection
    from barsignal.compression.distill import Data, train
    from barsignal.features.spec import schema_hash
    from barsignal.model import checkpoint
    from barsignal.model.informer import Informer, teacher_config

    torch.manual_seed(0)
    model = Informer(teacher_config(d_model=32, n_heads=4, e_layers=2, d_ff=64))
    small = Data(slice_data.train.head(256), slice_data.val.head(64), slice_data.test, slice_data.meta)
    train(model, small, DistillSection(epochs=1, batch_size=128), label="teacher")
    out = tmp_path_factory.mktemp("teacher")
    checkpoint.save(model, out, meta={"horizon": 1, "window": 30, "schema_hash": schema_hash(),
                                      "normalizer": slice_data.meta["normalizer"], "data": []})
    return out


def small_student():
    from barsignal.model.informer import Informer, student_config

    return Informer(student_config(d_model=24, n_heads=2, e_layers=2, d_ff=48))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
