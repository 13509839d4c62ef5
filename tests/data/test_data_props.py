"""Properties: decode(encode(x)) == x for REST rows, the klines query equals a brute-force filter,
and validation of shuffled/duplicated real rows gives back the original series."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from barsignal.daemon.binance.rest import decode_kline_rows, encode_klines, klines_response
from barsignal.data.public_data import kline_path
from barsignal.data.validate import validate
from barsignal.features.bar import BarFrame
from barsignal.features.engine import bar_problem
from tests.conftest import SPOT_1M


@cache
def real_frame(n: int = 3000) -> BarFrame:
    rows = json.loads(SPOT_1M[0].read_text())[:n]  # the first real bars of the 2021-04-20 file
    return BarFrame(np.array([r[0] for r in rows], dtype=np.int64),
                    *(np.array([r[j] for r in rows], dtype=np.float64) for j in range(1, 6)))


eight_dp = st.integers(min_value=0, max_value=10**15).map(lambda n: float(f"{n // 10**8}.{n % 10**8:08d}"))


def _consistent(x: tuple[float, ...]) -> tuple[float, ...]:
    lo, o, c, hi = sorted(x[:4])
    return o, hi, lo, c, x[4]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(eight_dp, eight_dp, eight_dp, eight_dp, eight_dp), min_size=1, max_size=20),
       st.integers(min_value=0, max_value=10**12))
def test_rest_rows_round_trip(values: list[tuple[float, ...]], t0: int) -> None:
    # half the bars made consistent (l <= o, c <= h), so valid bars take part, not only dropped ones
    values = [_consistent(x) if i % 2 else x for i, x in enumerate(values)]
    t = np.arange(len(values), dtype=np.int64) * 60_000 + t0 * 60_000
    cols = np.array(values, dtype=np.float64).T
    frame = BarFrame(t, *cols)
    rows = encode_klines(frame, 60_000)
    assert all(isinstance(x, str) and len(x.split(".")[1]) == 8 for r in rows for x in r[1:6])
    # decode validates: what is not finite, consistent and in range is dropped and counted, the rest
    # comes back exactly
    dropped: dict[str, int] = {}
    valid = [b for b in frame.bars() if bar_problem(b.open, b.high, b.low, b.close, b.volume) is None]
    assert decode_kline_rows(rows, source="file", dropped=dropped) == valid
    assert sum(dropped.values()) == len(values) - len(valid)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), st.integers(-5, 3100)), st.one_of(st.none(), st.integers(-5, 3100)),
       st.one_of(st.none(), st.integers(1, 1500)))
def test_klines_query_equals_brute_force(start_i: int | None, end_i: int | None, limit: int | None) -> None:
    f = real_frame()
    t = f.open_time
    base, step = int(t[0]), 60_000
    params = {"symbol": "BTCUSDT", "interval": "1m"}
    if start_i is not None:
        params["startTime"] = str(base + start_i * step + 1)  # off-grid on purpose
    if end_i is not None:
        params["endTime"] = str(base + end_i * step)
    if limit is not None:
        params["limit"] = str(limit)
    code, rows = klines_response(f, params, symbol="BTCUSDT", interval="1m")
    assert code == 200
    lim = min(limit or 500, 1000)
    sel = [int(x) for x in t if ("startTime" not in params or x >= int(params["startTime"]))
           and ("endTime" not in params or x <= int(params["endTime"]))]
    want = sel[:lim] if "startTime" in params else sel[-lim:] if sel else []
    assert [r[0] for r in rows] == want


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 200))
def test_validate_undoes_shuffle_and_duplicates(rnd, n_dup: int) -> None:  # type: ignore[no-untyped-def]
    f = real_frame(500)
    n = len(f)
    idx = list(range(n)) + [rnd.randrange(n) for _ in range(n_dup)]
    rnd.shuffle(idx)
    ix = np.array(idx)
    cols = {k: getattr(f, k)[ix] for k in ("open_time", "open", "high", "low", "close", "volume")}
    clean, rep = validate(cols, ["shuffled"])
    assert rep.rows == n and rep.duplicates == n_dup and rep.conflicts == 0
    for k, v in clean.items():
        assert np.array_equal(v, getattr(f, k))


def test_public_data_url_layout() -> None:
    assert kline_path("spot", "monthly", "BTCUSDT", "1m", "2024-01") == \
        "data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01.zip"
    assert kline_path("um", "daily", "BTCUSDT", "1m", "2022-05-01") == \
        "data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2022-05-01.zip"
