"""One summation everywhere, fixed by the code: plain left to right (issue 13, "also found").

Python 3.12 made the builtin ``sum`` over floats compensated (Neumaier), so live and replay on two
interpreters could differ in the last bits. These tests pin the features to left-to-right float64
addition on whichever interpreter runs them: a window where left to right, ``math.fsum`` and
Neumaier all give different SMA-7 features must give the left-to-right one.
"""

from __future__ import annotations

import math
from functools import reduce
from operator import add

from hypothesis import given
from hypothesis import strategies as st

from barsignal.features.bar import INTERVAL_MS
from barsignal.features.engine import FeatureEngine, _fsum, _sum_left_to_right

# Seven real-looking BTC closes (2 decimals) where the three summations disagree in the last bit.
CLOSES = [60063.91, 60015.06, 60063.49, 60086.8, 60052.32, 60074.13, 60067.14]


def _neumaier(xs: list[float]) -> float:
    s = c = 0.0
    for x in xs:
        t = s + x
        c += (s - t) + x if abs(s) >= abs(x) else (x - t) + s
        s = t
    return s + c


def test_sma7_uses_left_to_right_summation() -> None:
    l2r, exact, comp = reduce(add, CLOSES, 0.0), math.fsum(CLOSES), _neumaier(CLOSES)
    assert l2r != exact and exact == comp  # the case is one where the choice shows
    eng = FeatureEngine()
    t0 = 1_636_000_020_000 - 1_636_000_020_000 % INTERVAL_MS
    for i, c in enumerate(CLOSES):
        f = eng.step(t0 + i * INTERVAL_MS, c, c, c, c, 1.0)
    c = CLOSES[-1]
    assert f[11] == c / (l2r / 7) - 1.0
    assert f[11] != c / (exact / 7) - 1.0 and f[11] != c / (comp / 7) - 1.0


@given(st.lists(st.floats(min_value=1e-12, max_value=1e12), min_size=1, max_size=120))
def test_fsum_is_left_to_right_bit_for_bit(xs: list[float]) -> None:
    # _fsum is the builtin on <= 3.11 (left to right there) and _sum_left_to_right on 3.12+: both checked
    assert _fsum(xs) == reduce(add, xs, 0.0) == _sum_left_to_right(xs)
