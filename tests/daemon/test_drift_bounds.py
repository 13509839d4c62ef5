"""Calibrated drift bounds: the null PSI of training windows (engine/drift.py), shipped in the bundled
artifact, and the live monitor judging real bars against them.

The replays run real bars through the daemon's own node (features, window, scorer) and feed its live
monitor exactly as the daemon does (``mon.observe_signal(..., pipe.last_window)``), then export it through
``DaemonMetrics`` as ``/metrics`` would: the figure the ``BarsignalFeatureDrift`` rule reads
(``barsignal_feature_drift_ratio > 1``). In-distribution windows of the training symbol (two stretches
of the training period, one of the validation period) stay under 1; a copy of real bars whose distribution really
moved (returns scaled up, prices shifted up) goes over it.

What the whole of each period does (the validation split 5 % of its windows over, the calm test
split and 2023 spot more, on the share of closes at a bar's extreme) is measured by
``barsignal compress drift-bounds`` (``psi_bounds.held_out``) and written in docs/MODEL.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barsignal.daemon.drift import psi
from barsignal.daemon.metrics import DaemonMetrics, LiveMonitor
from barsignal.engine.artifact import load_artifact
from barsignal.engine.drift import bounds_at, null_bounds, window_psi
from barsignal.features.bar import Bar
from tests.conftest import DATA

FUT = DATA / "klines" / "um_futures_1m_daily"
FUT_B = DATA / "klines" / "um_futures_1m_daily_2022b"
WINDOW = 1440  # [metrics] monitor_window, the default


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), size=st.integers(5, 60), stride=st.integers(1, 7))
def test_window_psi_equals_binning_each_window_at_once(seed: int, size: int, stride: int) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.standard_t(3, size=(200, 3))
    edges = [np.sort(rng.normal(size=9)) for _ in range(3)]
    fractions = [np.full(10, 0.1) for _ in range(3)]
    got = window_psi(rows, edges, fractions, size, stride)
    starts = range(0, 200 - size + 1, stride)
    want = np.array([[psi(rows[s:s + size, j], edges[j], fractions[j]) for j in range(3)] for s in starts])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_bounds_fall_with_the_window_size_and_the_lookup_is_conservative() -> None:
    rng = np.random.default_rng(0)
    seg = np.cumsum(rng.normal(size=(20_000, 2)), axis=0) * 0.01 + rng.normal(size=(20_000, 2))  # slow drift + noise
    e = [np.quantile(seg[:, j], np.arange(1, 10) / 10).tolist() for j in range(2)]
    ref = {"edges": e, "fractions": [[0.1] * 10] * 2}
    b = null_bounds([seg], ref, sizes=(100, 400, 1600))
    arr = np.array(b["bounds"])
    assert b["sizes"] == [100, 400, 1600] and (np.diff(arr, axis=0) <= 0).all()
    assert bounds_at(b, 99) is None  # fewer rows than any calibrated size: no calibrated bound
    assert bounds_at(b, 100).tolist() == bounds_at(b, 399).tolist() == arr[0].tolist()  # the larger bound
    assert bounds_at(b, 5000).tolist() == arr[2].tolist()
    assert b["quantile"] == 0.995 and b["windows"][0] == len(range(0, 20_000 - 100 + 1, 10))


def test_the_bundled_artifact_ships_bounds_for_the_monitor_window() -> None:
    art = load_artifact()
    b = art.psi_bounds
    assert b is not None and WINDOW in b["sizes"] and b["quantile"] == 0.995
    assert len(b["bounds"][b["sizes"].index(WINDOW)]) == 33
    assert b["rows"] == art.psi_reference["rows"]  # the training bins' own rows
    # held out: the validation and test periods' windows of the monitor's size, with the bounds in place
    assert all(0 <= v <= 1 for part in b["held_out"].values() for v in part.values())


def _bars(paths: list[Path], start: int = 0, n: int | None = None) -> list[Bar]:
    from barsignal.data import load_many

    f = load_many(paths).frame
    stop = len(f.open_time) if n is None else start + n
    return [Bar(int(f.open_time[i]), float(f.open[i]), float(f.high[i]), float(f.low[i]), float(f.close[i]),
                float(f.volume[i]), "rest") for i in range(start, min(stop, len(f.open_time)))]


def _moved(bars: list[Bar], how: str) -> list[Bar]:
    """A copy of real bars whose distribution moved beyond every training day's: ``rescaled``: every
    price's log distance from the first close times 10 (returns and ranges ten times larger);
    ``shifted``: every price plus 19 times the first close (the same moves on a price twenty times
    higher: returns a twentieth). A factor of 3 either way stays inside 2022's own regimes."""
    c0 = bars[0].close
    if how == "rescaled":
        f = lambda p: c0 * (p / c0) ** 10  # noqa: E731
    else:
        f = lambda p: p + 19 * c0  # noqa: E731
    return [Bar(b.open_time, f(b.open), f(b.high), f(b.low), f(b.close), b.volume, b.source) for b in bars]


def _replay_ratios(bars: list[Bar]) -> tuple[list[float], float]:
    """Every drift measure of the live monitor over a replay of ``bars`` through the node, as exported to
    ``barsignal_feature_drift_ratio``, once the window is full; and the largest PSI of any of them."""
    from barsignal.daemon.config import Config
    from barsignal.node import build_node

    art = load_artifact()
    mon = LiveMonitor(art.horizon, WINDOW, reference=art.psi_reference, bounds=art.psi_bounds, symbol="BTCUSDT",
                      psi_every=60)
    metrics = DaemonMetrics(symbols=("BTCUSDT",))
    node = build_node(Config(), "replay")
    ratios: list[float] = []
    rows: list[np.ndarray] = []
    worst_psi = 0.0
    try:
        for bar in bars:
            sig = node.handle(bar)
            mon.observe_bar(bar.open_time, bar.close)  # as the daemon does, for every bar
            if sig is None:
                continue
            mon.observe_signal(sig.open_time, sig.bar_close, sig.p_up, node.pipeline.last_window)
            rows.append(np.array(node.pipeline.last_window[-1], np.float64))
            if mon._since_psi == 0 and mon.psi_rows == WINDOW:  # just measured, on a full window
                if not ratios:  # the live statistic is the calibrated one: engine.drift on the same rows
                    off = window_psi(np.array(rows[-WINDOW:]), art.psi_reference["edges"],
                                     art.psi_reference["fractions"], WINDOW)[0]
                    np.testing.assert_allclose(mon.psi_values, off, rtol=1e-9, atol=1e-12)
                    np.testing.assert_allclose(mon.drift_ratio, (off / bounds_at(art.psi_bounds, WINDOW)).max())
                metrics.export_monitor(mon)
                got = next(s.value for m in metrics.registry.collect() if m.name == "barsignal_feature_drift_ratio"
                           for s in m.samples)
                assert got == mon.drift_ratio
                ratios.append(got)
                worst_psi = max(worst_psi, float(mon.psi_values.max()))
    finally:
        from barsignal.node import run

        run(node.close())
    return ratios, worst_psi


IN_DISTRIBUTION = {
    # training period (2022-01-01 .. 10-19): 2022-05-10 .. 05-14 (the LUNA crash) and 08-09 .. 08-13
    "training, May": lambda: _bars(sorted(FUT.glob("*.csv"))[9:14]),
    "training, August": lambda: _bars(sorted(FUT.glob("*.csv"))[100:105]),
    # validation period (2022-10-20 .. 11-25): 2022-10-23 .. 10-27
    "validation": lambda: _bars([p for p in sorted(FUT_B.glob("*.csv"))
                                 if any(f"2022-10-{d}" in p.name for d in range(23, 28))]),
}


@pytest.mark.parametrize("period", list(IN_DISTRIBUTION))
def test_the_drift_alert_stays_silent_on_in_distribution_windows_of_the_training_symbol(period: str) -> None:
    """These windows are silent; over the whole of each split the rates are in the manifest
    (``psi_bounds.held_out``) and docs/MODEL.md: by construction 0.5 % of training windows."""
    ratios, worst_psi = _replay_ratios(IN_DISTRIBUTION[period]())
    print(f"{period}: {len(ratios)} full-window measures, drift ratio max {max(ratios):.3f}, "
          f"median {np.median(ratios):.3f}; largest PSI {worst_psi:.3f} (the fixed 0.25 would fire)")
    assert len(ratios) >= 40
    assert max(ratios) <= 1.0


@pytest.mark.parametrize("how", ["rescaled", "shifted"])
def test_the_drift_alert_fires_on_a_copy_of_real_bars_whose_distribution_moved(how: str) -> None:
    ratios, _ = _replay_ratios(_moved(IN_DISTRIBUTION["training, May"](), how))
    print(f"{how}: {len(ratios)} full-window measures, drift ratio min {min(ratios):.3f}, max {max(ratios):.3f}")
    assert len(ratios) >= 40
    assert min(ratios) > 1.0  # over the bound at every measure: `for: 30m` is met


def test_a_monitor_window_outside_the_calibrated_sizes(caplog: pytest.LogCaptureFixture) -> None:
    art = load_artifact()
    b = art.psi_bounds
    small = LiveMonitor(15, window=b["sizes"][0] - 1, reference=art.psi_reference, bounds=b, psi_warn=0.25)
    assert small.bounds is None and small.bound_source == "drift_psi_warn"  # not calibrated: the fixed bound
    big = LiveMonitor(15, window=b["sizes"][-1] * 2, reference=art.psi_reference, bounds=b)
    assert big.bounds is b and big.min_rows == b["sizes"][0]
    rows = np.random.default_rng(1).normal(size=(b["sizes"][-1] * 2, 33))
    for r in rows:
        big.observe_signal(0, 1.0, 0.5, r[None])
    big.update_psi()
    np.testing.assert_array_equal(big.psi_bound_values, bounds_at(b, b["sizes"][-1]))  # the largest size's
    assert math.isfinite(big.drift_ratio)


def test_drift_bounds_refuse_bars_that_are_not_the_artifact_s_training_data(tmp_path: Path) -> None:
    """`barsignal compress drift-bounds` recomputes the training bins from --data first: two days of
    the right market are not the training split, and it exits 2 naming both row counts."""
    from tests.conftest import FUTURES_1M, run_cli

    r = run_cli("compress", "drift-bounds", "--artifact", str(load_artifact().path), "--out", str(tmp_path / "a"),
                "--data", *map(str, FUTURES_1M[:2]))
    assert r.returncode == 2 and "are not the artifact's (419749 rows)" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "a").exists()
