"""The compact rolling monitor state (daemon/drift.py) against the direct computation: the PSI of the
stacked last ``window`` rows binned at once (``drift.psi``), and the last ``window`` outcomes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from barsignal.daemon.drift import RollingOutcomes, RollingPSI, psi


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), window=st.integers(1, 60), n_rows=st.integers(0, 150),
       widths=st.lists(st.integers(1, 12), min_size=1, max_size=6))
def test_rolling_psi_equals_binning_the_window_at_once(seed: int, window: int, n_rows: int, widths: list[int]) -> None:
    rng = np.random.default_rng(seed)
    edges = [np.sort(rng.normal(size=w)) for w in widths]  # features with different bin counts
    fractions = [rng.dirichlet(np.ones(w + 1)) for w in widths]
    rows = rng.normal(scale=1.5, size=(n_rows, len(widths)))
    rows[rng.random(rows.shape) < 0.1] = edges[0][0]  # values exactly on an edge
    r = RollingPSI(edges, fractions, window)
    for row in rows:
        r.add(row)
    held = rows[-window:] if n_rows else rows
    assert len(r) == len(held)
    want = [psi(held[:, j], edges[j], fractions[j]) for j in range(len(widths))] if len(held) else [0.0] * len(widths)
    np.testing.assert_allclose(r.psi(), want, rtol=1e-12, atol=1e-15)


def test_rolling_outcomes_keep_the_last_window_in_order() -> None:
    o = RollingOutcomes(4)
    assert len(o) == 0 and o.arrays()[0].size == 0
    for i in range(7):
        o.append(i / 10, i % 2)
    p, y = o.arrays()
    assert len(o) == 4 and list(p) == [0.3, 0.4, 0.5, 0.6] and list(y) == [1.0, 0.0, 1.0, 0.0]
