"""The compact recent-bars ring (daemon/recent.py) behaves as ``deque(maxlen=...)`` of the same bars."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barsignal.daemon.recent import BarRing
from barsignal.features.bar import Bar

_bar = st.builds(Bar, st.integers(0, 2**62), st.floats(allow_nan=False), st.floats(allow_nan=False),
                 st.floats(allow_nan=False), st.floats(allow_nan=False), st.floats(allow_nan=False),
                 st.sampled_from(["ws", "rest", "file", "x"]))


@settings(max_examples=60, deadline=None)
@given(maxlen=st.integers(0, 12), bars=st.lists(_bar, max_size=40))
def test_ring_equals_a_bounded_deque(maxlen: int, bars: list[Bar]) -> None:
    ring, ref = BarRing(maxlen), deque(maxlen=maxlen)
    for b in bars:
        ring.append(b)
        ref.append(b)
        assert len(ring) == len(ref) and bool(ring) == bool(ref)
    assert list(ring) == list(ref)
    for k in range(-len(ref), len(ref)):
        assert ring[k] == ref[k]
    with pytest.raises(IndexError):
        ring[len(ref)]
