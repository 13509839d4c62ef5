"""Dataset: gap-free segments, labels, chronological purged splits, and no look-ahead anywhere."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from barsignal.features.bar import INTERVAL_MS, BarFrame
from barsignal.model.dataset import DatasetSpec, Segment, all_windows, build, features_of, load_segments
from tests.conftest import FUTURES_1M, SPOT_1M

SPEC = DatasetSpec(window=30, horizon=1)


@pytest.fixture(scope="module")
def spot_first() -> list[Segment]:
    return load_segments([SPOT_1M[0]])  # 2021-04-20 .. 05-20, one 284-bar gap on 2021-04-25


@pytest.fixture(scope="module")
def spot_splits(spot_first):
    return build(spot_first, SPEC)


def _slice(segs: list[Segment], n: int) -> BarFrame:
    return segs[-1].frame.slice(0, n)


def test_a_gap_splits_the_file_and_no_window_spans_it(spot_first, spot_splits) -> None:
    assert len(spot_first) == 2
    a, b = spot_first
    assert b.frame.open_time[0] - a.frame.open_time[-1] == 285 * INTERVAL_MS  # 284 bars missing
    splits = spot_splits
    for ws in (splits.train, splits.val, splits.test):
        t = np.concatenate([s.frame.open_time for s in spot_first])
        span = t[ws.ends] - t[ws.ends - (SPEC.window - 1)]
        assert (span == (SPEC.window - 1) * INTERVAL_MS).all()  # every window is 30 consecutive bars
        assert (t[ws.ends + SPEC.horizon] - t[ws.ends] == SPEC.horizon * INTERVAL_MS).all()


def test_futures_block_is_one_segment_and_sources_stay_apart() -> None:
    segs = load_segments([*FUTURES_1M[:2], SPOT_1M[2]])
    assert [len(s.frame) for s in segs] == [2880, 43199]  # 2 contiguous days; a gap-free spot file


def test_labels_are_the_close_horizon_bars_ahead(spot_first) -> None:
    frame = _slice(spot_first, 3000)
    for h in (1, 5):
        splits = build([Segment("s", frame)], DatasetSpec(horizon=h))
        for ws in (splits.train, splits.test):
            expect = (frame.close[ws.ends + h] > frame.close[ws.ends]).astype(np.float32)
            assert np.array_equal(ws.labels, expect)
            assert np.array_equal(ws.last_up, (frame.close[ws.ends] > frame.close[ws.ends - 1]))
            assert (frame.close[ws.ends + h] != frame.close[ws.ends]).all()  # ties dropped


def test_ties_are_dropped_from_the_splits_but_kept_in_the_consecutive_sets(spot_first) -> None:
    frame = _slice(spot_first, 3000)
    cols = {n: getattr(frame, n).copy() for n in ("open_time", "open", "high", "low", "close", "volume")}
    for k in (2500, 2550, 2800, 2900):  # ties in val and test: close[k + 1] == close[k]
        cols["close"][k + 1] = cols["close"][k]
        cols["high"][k + 1] = max(cols["high"][k + 1], cols["close"][k + 1])
        cols["low"][k + 1] = min(cols["low"][k + 1], cols["close"][k + 1])
    frame = BarFrame(**cols)
    splits = build([Segment("s", frame)], DatasetSpec(horizon=1))
    for lab, full in ((splits.val, splits.val_all), (splits.test, splits.test_all)):
        assert full is not None and full.tied is not None
        tie = frame.close[full.ends + 1] == frame.close[full.ends]
        assert tie.any() and np.array_equal(full.tied, tie)  # real spot bars tie
        assert np.array_equal(lab.ends, full.ends[~tie])
        assert (np.diff(full.ends) == 1).all()  # every bar of the period, consecutive
        assert np.allclose(full.ret, frame.close[full.ends + 1] / frame.close[full.ends] - 1.0)
    assert splits.info["tied"]["test"] == int(splits.test_all.tied.sum())


def test_flat_band_drops_moves_inside_a_volatility_scaled_band(spot_first) -> None:
    from barsignal.features.spec import INDEX

    frame = _slice(spot_first, 3000)
    h, k = 5, 0.5
    splits = build([Segment("s", frame)], DatasetSpec(horizon=h, flat_band=k))
    full = splits.test_all
    raw = features_of(frame)[0]
    band = k * raw[full.ends, INDEX["rvol30"]] * np.sqrt(h)
    r = frame.close[full.ends + h] / frame.close[full.ends] - 1.0
    assert np.array_equal(full.tied, np.abs(r) <= band) and full.tied.mean() > 0.05
    assert np.array_equal(splits.test.labels, (r[~full.tied] > 0).astype(np.float32))


def test_splits_are_chronological_80_10_10_with_a_purge(spot_splits) -> None:
    splits = spot_splits
    tr, va, te = splits.train, splits.val, splits.test
    n = len(tr) + len(va) + len(te)
    assert abs(len(tr) / n - 0.8) < 0.01 and abs(len(va) / n - 0.1) < 0.01 and abs(len(te) / n - 0.1) < 0.01
    gap = (SPEC.window + SPEC.horizon) * INTERVAL_MS
    assert tr.times.max() + gap <= va.times.min()
    assert va.times.max() + gap <= te.times.min()
    # no input bar or label bar is shared between splits
    for a, b in ((tr, va), (va, te)):
        assert a.ends.max() + SPEC.horizon < b.ends.min() - SPEC.window + 1


def _perturb(frame: BarFrame, k: int) -> BarFrame:
    """The same bars with bar ``k`` changed (close, high, low, volume), still a valid bar."""
    cols = {n: getattr(frame, n).copy() for n in ("open_time", "open", "high", "low", "close", "volume")}
    cols["close"][k] *= 1.01
    cols["high"][k] = max(cols["high"][k], cols["close"][k])
    cols["low"][k] = min(cols["low"][k], cols["close"][k], cols["open"][k])
    cols["volume"][k] *= 3.0
    return BarFrame(**cols)


def test_changing_a_future_bar_changes_no_earlier_window_label_or_statistic(spot_first) -> None:
    frame = _slice(spot_first, 4000)
    base = build([Segment("s", frame)], SPEC)
    k = int(base.test.ends[len(base.test) // 2])  # a bar inside the test split
    moved = build([Segment("s", _perturb(frame, k))], SPEC)
    assert moved.normalizer.to_dict() == base.normalizer.to_dict()  # statistics: train only
    for name in ("train", "val"):
        a, b = getattr(base, name), getattr(moved, name)
        assert np.array_equal(a.x(), b.x()) and np.array_equal(a.labels, b.labels)
    before = base.test.ends < k  # windows that end before the changed bar
    assert before.any() and (~before).any()
    assert np.array_equal(base.test.x(before), moved.test.x(before))
    early = base.test.ends + SPEC.horizon < k  # labels decided before the changed bar
    assert np.array_equal(base.test.labels[early], moved.test.labels[early])
    # ... and the change is visible from bar k on (the test could fail)
    at_k = base.test.ends == k
    assert not np.array_equal(base.test.x(at_k), moved.test.x(at_k))


def test_features_and_labels_of_bars_before_a_changed_train_bar_do_not_move(spot_first) -> None:
    frame = _slice(spot_first, 2000)
    k = 1200  # a train bar: the normalizer moves, but no raw feature row or label before k may
    x0, r0 = features_of(frame)
    x1, r1 = features_of(_perturb(frame, k))
    assert np.array_equal(x0[:k], x1[:k]) and np.array_equal(r0, r1)
    assert not np.array_equal(x0[k], x1[k])
    ident = type("Ident", (), {"transform": staticmethod(lambda a: a)})()
    w0 = all_windows([Segment("s", frame)], ident)
    w1 = all_windows([Segment("s", _perturb(frame, k))], ident)
    early = w0.ends + SPEC.horizon < k
    assert np.array_equal(w0.x(early), w1.x(early)) and np.array_equal(w0.labels[early], w1.labels[early])


def test_normalized_rows_are_float32_and_train_standardized(spot_splits) -> None:
    splits = spot_splits
    assert splits.train.rows.dtype == np.float32
    x = splits.train.last_rows()
    assert np.isfinite(x).all()
    assert np.abs(np.median(x, axis=0)).max() < 1.0  # centred on train


def test_too_little_data_is_a_clear_error(spot_first) -> None:
    from barsignal.errors import DataError

    with pytest.raises(DataError, match="windows"):
        build([Segment("s", _slice(spot_first, 120))], SPEC)
    with pytest.raises(ValueError, match="purge"):
        _ = replace(SPEC, purge=5).purge_bars
