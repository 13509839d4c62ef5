"""Real spot 1m files: TA-Lib cross-check, restart parity, numpy references, golden values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _data import SPOT_1M, features_of

from barsignal.features.batch import compute
from barsignal.features.reference import (
    TALIB_REFERENCED,
    check_restart,
    check_talib,
    rel_diff_array,
)
from barsignal.features.spec import (
    INDEX,
    NAMES,
    REL_TOL_RESTART,
    REL_TOL_TALIB,
    RESTART_WARMUP_BARS,
    WARMUP,
    WARMUP_BARS,
    schema_hash,
)

GOLDEN = Path(__file__).parent / "golden.json"
IDS = [p.name[12:33] for p in SPOT_1M]


def test_real_files_present() -> None:
    assert len(SPOT_1M) == 4, f"expected the 4 spot 1m files in ../shared/data, found {SPOT_1M}"


@pytest.mark.parametrize("path", SPOT_1M, ids=IDS)
def test_talib_cross_check_every_spot_file(path: Path) -> None:
    frame, X, _ = features_of(path)
    res = check_talib(frame, X)
    checked = {NAMES[k] for k in range(len(NAMES)) if not np.isnan(res.worst[k])}
    assert checked == set(TALIB_REFERENCED)
    bad = {NAMES[k]: float(res.worst[k]) for k in range(len(NAMES)) if res.worst[k] > REL_TOL_TALIB}
    assert not bad, f"features beyond {REL_TOL_TALIB} relative of TA-Lib: {bad}"
    assert res.skipped < 100  # only where TA-Lib's Bollinger band collapses (flat closes)
    assert res.ok


@pytest.mark.parametrize("path", SPOT_1M, ids=IDS)
def test_restart_parity_after_declared_warmup(path: Path) -> None:
    """Restarts at 3 points: from RESTART_WARMUP_BARS bars after the restart, within 1e-9 relative."""
    frame, X, _ = features_of(path)
    n = len(frame)
    horizon = 3000
    for at in (RESTART_WARMUP_BARS, n // 2, n - horizon):
        R = compute(frame.slice(at - RESTART_WARMUP_BARS, at + horizon))
        d = rel_diff_array(X[at:at + horizon], R[RESTART_WARMUP_BARS:])
        worst = d.max(axis=0)
        assert (worst <= REL_TOL_RESTART).all(), {NAMES[k]: worst[k] for k in np.flatnonzero(worst > 1e-9)}


def test_restart_check_to_end_of_file_and_warmup_is_needed() -> None:
    """The CLI's check (restart at the middle, compared to the end) holds, and a far shorter warm-up
    does not: the declared figure is not vacuous."""
    frame, X, _ = features_of(SPOT_1M[0])
    assert check_restart(frame, X=X).ok
    short = check_restart(frame, warmup=WARMUP_BARS, X=X)
    assert not short.ok
    assert short.worst[INDEX["adx14"]] > REL_TOL_RESTART


@pytest.mark.parametrize("path", SPOT_1M[:2], ids=IDS[:2])
def test_own_features_against_numpy(path: Path) -> None:
    """The features TA-Lib has no function for, against vectorized numpy on the same bars."""
    frame, X, _ = features_of(path)
    o, h, l, c, v = frame.open, frame.high, frame.low, frame.close, frame.volume
    n = len(c)
    ref: dict[str, np.ndarray] = {}
    for k, lag in zip(range(6), (1, 3, 5, 15, 30, 60), strict=True):
        r = np.zeros(n)
        r[lag:] = np.log(c[lag:] / c[:-lag])
        ref[NAMES[k]] = r
    ref["hl_range"] = np.log(h / l)
    ref["body"] = np.log(c / o)
    ref["upper_wick"] = (h - np.maximum(o, c)) / c
    ref["lower_wick"] = (np.minimum(o, c) - l) / c
    with np.errstate(invalid="ignore", divide="ignore"):
        ref["close_pos"] = np.where(h > l, (c - l) / (h - l), 0.5)
    sw = np.lib.stride_tricks.sliding_window_view
    r1 = np.log(c[1:] / c[:-1])
    rv = np.zeros(n)
    rv[30:] = sw(r1, 30).std(axis=1)
    ref["rvol30"] = rv
    lv = sw(np.log1p(v), 20)
    z = np.zeros(n)
    sd = lv.std(axis=1)
    z[19:] = np.where(sd > 0, (lv[:, -1] - lv.mean(axis=1)) / np.where(sd > 0, sd, 1), 0.0)
    ref["vol_z20"] = z
    tp = (h + l + c) / 3
    vw = np.zeros(n)
    vw[29:] = c[29:] / (sw(tp * v, 30).sum(axis=1) / sw(v, 30).sum(axis=1)) - 1
    ref["vwap30_dev"] = vw
    for name, r in ref.items():
        k = INDEX[name]
        d = rel_diff_array(X[:, k], r)
        assert d.max() <= 1e-9, (name, float(d.max()), int(d.argmax()))
        assert (X[: WARMUP[k] - 1, k] == 0).all()


def _golden_rows() -> dict:
    return json.loads(GOLDEN.read_text())


def test_golden_values() -> None:
    """Checked-in values at chosen real bars: a silent change of any definition fails here.
    If a definition changes on purpose, bump spec.CODE_VERSION and regenerate (see the file's note)."""
    g = _golden_rows()
    assert g["names"] == list(NAMES)
    assert g["schema_hash"] == schema_hash(), "schema changed: bump CODE_VERSION and regenerate golden.json"
    for entry in g["bars"]:
        path = next(p for p in SPOT_1M if p.name == entry["file"])
        frame, X, _ = features_of(path)
        i = entry["index"]
        assert int(frame.open_time[i]) == entry["open_time"]
        got = X[i]
        want = np.array(entry["values"])
        d = rel_diff_array(got, want)
        assert d.max() <= 1e-12, {NAMES[k]: (got[k], want[k]) for k in np.flatnonzero(d > 1e-12)}
