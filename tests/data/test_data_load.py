"""Every real file under ../shared/data/klines loads with the rows and gaps PROVENANCE.md states,
and each supported format (CSV with/without header, ms/µs, zip + .CHECKSUM, freqtrade JSON,
Parquet) gives the same bars."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from barsignal.data import load, load_many
from barsignal.data import parquet as pq_cache
from barsignal.errors import DataError
from tests.conftest import DATA, FUTURES_1M


def ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp() * 1000)


K = DATA / "klines"
# file -> (raw rows, first open, last open, interval ms, gap count, missing bars, listed gaps)
# straight from PROVENANCE.md
EXPECTED = {
    "spot_1m/BTC_USDT-1m_2021-04-20_2021-05-20.json":
        (42915, "2021-04-20 20:42", "2021-05-20 20:40", 60_000, 1, 284,
         [("2021-04-25 04:00", "2021-04-25 08:45", 284)]),
    "spot_1m/BTC_USDT-1m_2021-09-17_2021-10-17.json":
        (43079, "2021-09-17 22:23", "2021-10-17 22:21", 60_000, 1, 120,
         [("2021-09-29 06:59", "2021-09-29 09:00", 120)]),
    "spot_1m/BTC_USDT-1m_2021-11-11_2021-12-11.json":
        (43199, "2021-11-11 09:12", "2021-12-11 09:10", 60_000, 0, 0, []),
    "spot_1m/BTC_USDT-1m_2023-03-16_2023-05-01.json":
        (66087, "2023-03-16 22:15", "2023-05-01 21:01", 60_000, 1, 80,
         [("2023-03-24 12:39", "2023-03-24 14:00", 80)]),
    "spot_5m/BTC_USDT-5m_2021-09-02_2021-12-02.json":
        (26404, "2021-09-02 00:00", "2021-12-02 18:15", 300_000, 1, 24,
         [("2021-09-29 06:55", "2021-09-29 09:00", 24)]),
    "spot_5m/BTC_USDT-5m_2019-11-15_2020-03-12.json":
        (33960, "2019-11-15 12:25", "2020-03-12 21:10", 300_000, 4, 131, []),
    "spot_1h_4h_1d/BTC_USDT-1h_2017-08-17_2022-10.json":
        (45024, "2017-08-17 04:00", "2022-10-11 10:00", 3_600_000, 27, 127,
         [("2018-02-08 00:00", "2018-02-09 10:00", 33)]),
    "spot_1h_4h_1d/BTC_USDT-4h_2017-08-17_2022-10.json":
        (11271, "2017-08-17 04:00", "2022-10-11 04:00", 14_400_000, 8, 16, []),
    "spot_1h_4h_1d/BTC_USDT-1d_2017-08-17_2022-10.json":
        (1881, "2017-08-17 00:00", "2022-10-10 00:00", 86_400_000, 0, 0, []),
}
DUPLICATES = {"spot_5m/BTC_USDT-5m_2019-11-15_2020-03-12.json": ["2020-03-08 10:40"]}


def test_every_shared_kline_file_is_covered() -> None:
    files = {str(p.relative_to(K)) for p in K.rglob("*.json")}
    assert files == set(EXPECTED)
    assert len(FUTURES_1M) == 123


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_shared_json_file_matches_provenance(rel: str) -> None:
    raw_rows, first, last, iv, n_gaps, missing, listed = EXPECTED[rel]
    dups = DUPLICATES.get(rel, [])
    got = load(K / rel)
    r = got.report
    assert r.rows == raw_rows - len(dups) == len(got.frame)
    assert r.duplicates == len(dups)
    assert r.duplicate_times == [ms(d) for d in dups]
    assert (r.first_open_ms, r.last_open_ms, r.interval_ms) == (ms(first), ms(last), iv)
    assert len(r.gaps) == n_gaps and r.missing == missing
    for s, e, m in listed:
        assert (ms(s), ms(e), m) in r.gaps
    assert r.conflicts == r.out_of_order == r.ohlc_errors == r.misaligned == 0
    # gaps are kept, not filled: rows + missing bars span the range exactly
    assert (r.last_open_ms - r.first_open_ms) // iv + 1 == r.rows + r.missing
    t = got.frame.open_time
    assert np.all(np.diff(t) > 0)
    # the frame holds the file's own values (first row, straight from the JSON text)
    first_row = json.loads((K / rel).read_text())[0]
    assert got.frame.bar(0) == got.frame.bar(0).__class__(*first_row, "file")


def test_futures_daily_csvs_each_and_merged() -> None:
    for p in FUTURES_1M[:5] + FUTURES_1M[-2:]:
        r = load(p).report
        assert r.rows == 1440 and r.gaps == [] and r.duplicates == 0 and r.interval_ms == 60_000
    merged = load_many(FUTURES_1M)
    r = merged.report
    assert r.rows == 177_120 and r.gaps == [] and r.duplicates == 0 and r.ohlc_errors == 0
    assert (r.first_open_ms, r.last_open_ms) == (ms("2022-05-01 00:00"), ms("2022-08-31 23:59"))
    assert np.array_equal(merged.extra["close_time"], merged.frame.open_time + 59_999)
    assert set(merged.extra) == {"close_time", "quote_volume", "count", "taker_buy_volume",
                                 "taker_buy_quote_volume"}


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[1:] if not rows[0][0].isdigit() else rows


def test_csv_values_equal_source_text() -> None:
    src = FUTURES_1M[40]
    got = load(src)
    rows = _csv_rows(src)
    assert len(rows) == len(got.frame)
    cols = got.columns()
    for j, name in enumerate(("open_time", "open", "high", "low", "close", "volume", "close_time",
                              "quote_volume", "count", "taker_buy_volume", "taker_buy_quote_volume")):
        conv = int if name in ("open_time", "close_time", "count") else float
        assert cols[name].tolist() == [conv(r[j]) for r in rows], name


def test_headerless_and_microsecond_csv_and_zip(tmp_path: Path) -> None:
    src = FUTURES_1M[0]
    ref = load(src)
    text = src.read_text().splitlines()
    body = text[1:]
    (tmp_path / "noheader.csv").write_text("\n".join(body) + "\n")
    # 2025+ spot dumps: open/close times in µs (16 digits)
    us = []
    for line in body:
        f = line.split(",")
        f[0], f[6] = f[0] + "000", str(int(f[6]) * 1000 + 999)
        us.append(",".join(f))
    (tmp_path / "us.csv").write_text("\n".join(us) + "\n")
    zpath = tmp_path / src.name.replace(".csv", ".zip")
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(src, src.name)
    checksum = zpath.with_name(zpath.name + ".CHECKSUM")
    checksum.write_text(f"{hashlib.sha256(zpath.read_bytes()).hexdigest()}  {zpath.name}\n")
    for p in ("noheader.csv", "us.csv", zpath.name):
        got = load(tmp_path / p)
        assert got.report.to_json() == ref.report.to_json(), p
        for k, v in ref.columns().items():
            assert np.array_equal(got.columns()[k], v), (p, k)
    # a wrong checksum is refused, naming the file
    checksum.write_text(f"{'0' * 64}  {zpath.name}\n")
    with pytest.raises(DataError, match=zpath.name):
        load(zpath)
    # a truncated zip is refused
    bad = tmp_path / "cut.zip"
    bad.write_bytes(zpath.read_bytes()[:500])
    with pytest.raises(DataError, match=r"cut\.zip"):
        load(bad)


def test_parquet_and_gzip_json_round_trip(tmp_path: Path) -> None:
    src = K / "spot_1m" / "BTC_USDT-1m_2021-04-20_2021-05-20.json"
    ref = load(src)
    pq_cache.write(tmp_path / "c.parquet", ref.columns(), {"interval_ms": 60_000})
    gz = tmp_path / "c.json.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    for p in (tmp_path / "c.parquet", gz):
        got = load(p)
        assert got.report.to_json() == ref.report.to_json()
        for k, v in ref.columns().items():
            assert np.array_equal(got.columns()[k], v)
    assert pq_cache.read(tmp_path / "c.parquet")[1] == {"interval_ms": 60_000}


def _rows(n: int = 50) -> list[list[float]]:
    return json.loads((K / "spot_1m" / "BTC_USDT-1m_2021-11-11_2021-12-11.json").read_text())[:n]


def test_conflicting_duplicate_refused_naming_file_and_time(tmp_path: Path) -> None:
    rows = _rows()
    twin = [*rows[5][:4], rows[5][4] + 1.0, rows[5][5]]  # same open time, another close
    bad = [*rows[:10], twin, *rows[10:]]
    p = tmp_path / "conflict.json"
    p.write_text(json.dumps(bad))
    t = datetime.fromtimestamp(rows[5][0] / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(DataError, match=rf"conflict\.json.*{t}.*{int(rows[5][0])}"):
        load(p)
    # inspect mode keeps the first row and counts the conflict
    got = load(p, allow_conflicts=True)
    assert got.report.conflicts == 1 and got.report.rows == 50
    assert got.frame.close[5] == rows[5][4]


def test_conflict_across_files_names_both(tmp_path: Path) -> None:
    rows = _rows()
    (tmp_path / "a.json").write_text(json.dumps(rows[:30]))
    changed = [list(r) for r in rows[20:]]
    changed[0][2] += 5.0
    (tmp_path / "b.json").write_text(json.dumps(changed))
    with pytest.raises(DataError, match=r"a\.json and .*b\.json"):
        load_many([tmp_path / "a.json", tmp_path / "b.json"])
    (tmp_path / "b.json").write_text(json.dumps(rows[20:]))  # exact overlap: dropped
    got = load_many([tmp_path / "b.json", tmp_path / "a.json"])
    assert got.report.rows == 50 and got.report.duplicates == 10 and got.report.gaps == []


def test_out_of_order_ohlc_errors_and_gap_kept(tmp_path: Path) -> None:
    rows = _rows()
    shuffled = rows[:10] + rows[20:] + rows[12:20]  # rows 10, 11 missing; 12..19 late
    shuffled[0] = [shuffled[0][0], shuffled[0][1], shuffled[0][1] - 1.0, *shuffled[0][3:]]  # high < open
    p = tmp_path / "messy.json"
    p.write_text(json.dumps(shuffled))
    r = load(p).report
    assert r.out_of_order == 1 and r.ohlc_errors == 1 and r.rows == 48
    assert r.gaps == [(int(rows[9][0]), int(rows[12][0]), 2)]


def test_malformed_inputs_are_data_errors(tmp_path: Path) -> None:
    cases = {
        "a.json": "[[1, 2, 3]]",
        "b.json": '{"not": "rows"}',
        "c.json": "[[1637000000000, 1, 2",
        "d.csv": "1637000000000,1,2\n",
        "e.csv": "1637000000000,1,2,0.5,1.5,abc,1637000059999,0,0,0,0,0\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=name):
            load(tmp_path / name)
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "absent.json")


def test_fast_json_path_equals_orjson_path(tmp_path: Path) -> None:
    src = K / "spot_1m" / "BTC_USDT-1m_2021-09-17_2021-10-17.json"
    rows = json.loads(src.read_text())
    fast = load(src)  # compact layout: the pyarrow fast path
    assert fast.frame.open_time.tolist() == [r[0] for r in rows]
    for j, k in enumerate(("open", "high", "low", "close", "volume"), start=1):
        assert getattr(fast.frame, k).tolist() == [float(r[j]) for r in rows], k
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(rows, indent=1))  # not compact: the orjson path
    slow = load(pretty)
    for k, v in fast.columns().items():
        assert np.array_equal(slow.columns()[k], v)
    for bad in ("[[1637000000000,1,2,0.5,1.5,NaN]]", "[[1637000000000,1,2,0.5,1.5,null]]"):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(DataError, match=r"bad\.json"):
            load(tmp_path / "bad.json")
