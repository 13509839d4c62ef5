"""``barsignal data download`` against a loopback public-data server, and ``data inspect``."""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from barsignal.data import parquet
from barsignal.data.download import Fetcher, download, plan
from barsignal.errors import DataError
from tests.conftest import DATA, run_cli

FUT = DATA / "klines" / "um_futures_1m_daily"
NUMERIC = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count",
           "taker_buy_volume", "taker_buy_quote_volume")
FAR_FUTURE = date(2030, 1, 1)


def source_rows(days: list[str]) -> dict[str, list]:
    """The source CSVs' values, parsed independently with the csv module."""
    cols: dict[str, list] = {k: [] for k in NUMERIC}
    for d in days:
        with open(FUT / f"BTCUSDT-1m-{d}.csv", newline="") as f:
            rows = list(csv.reader(f))[1:]
        for r in rows:
            for j, k in enumerate(NUMERIC):
                cols[k].append(int(r[j]) if k in ("open_time", "close_time", "count") else float(r[j]))
    return cols


def assert_parquet_equals_sources(path: Path, days: list[str]) -> None:
    cols, meta = parquet.read(path)
    want = source_rows(days)
    assert set(cols) == set(NUMERIC)
    for k in NUMERIC:
        assert cols[k].tolist() == want[k], k
    assert meta["interval_ms"] == 60_000 and meta["symbol"] == "BTCUSDT"


def zip_requests(server, name: str = "") -> list[tuple[str, str]]:
    return [r for r in server.requests if r[0].endswith(".zip") and name in r[0]]


def test_plan_uses_monthly_for_whole_past_months() -> None:
    items = plan(date(2022, 5, 30), date(2022, 7, 2), FAR_FUTURE)
    assert [(i.period, i.stamp) for i in items] == [
        ("daily", "2022-05-30"), ("daily", "2022-05-31"), ("monthly", "2022-06"),
        ("daily", "2022-07-01"), ("daily", "2022-07-02")]
    # the current month is not published as a monthly file yet
    assert all(i.period == "daily" for i in plan(date(2022, 6, 1), date(2022, 6, 30), date(2022, 6, 30)))


def test_cli_download_writes_parquet_equal_to_sources_and_resumes(dump_server, tmp_path: Path) -> None:
    args = ["data", "download", "--market", "um", "--symbol", "BTCUSDT", "--interval", "1m",
            "--start", "2022-05-30", "--end", "2022-06-02", "--out", str(tmp_path),
            "--base-url", dump_server.base_url, "--no-progress"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "um-BTCUSDT-1m-2022-05-30_2022-06-02.parquet"
    assert f"wrote {out}: 5760 bars, 0 gaps" in proc.stdout
    days = ["2022-05-30", "2022-05-31", "2022-06-01", "2022-06-02"]
    assert_parquet_equals_sources(out, days)
    raw = tmp_path / "raw" / "data" / "futures" / "um" / "daily" / "klines" / "BTCUSDT" / "1m"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [f"BTCUSDT-1m-{d}.zip" for d in days] + [f"BTCUSDT-1m-{d}.zip.CHECKSUM" for d in days])
    assert len(zip_requests(dump_server)) == 4
    # resume: everything is verified on disk, nothing is fetched again
    dump_server.requests.clear()
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "0 files fetched, 4 already present" in proc.stdout
    assert dump_server.requests == []
    assert_parquet_equals_sources(out, days)


def test_monthly_zip_and_daily_fallback(dump_server, tmp_path: Path) -> None:
    dump_server.monthly = {"2022-06"}
    res = download("BTCUSDT", "1m", date(2022, 6, 1), date(2022, 7, 2), tmp_path, market="um",
                   base_url=dump_server.base_url, today=FAR_FUTURE, progress=False)
    assert res.fetched == ["BTCUSDT-1m-2022-06.zip", "BTCUSDT-1m-2022-07-01.zip", "BTCUSDT-1m-2022-07-02.zip"]
    june = [f"2022-06-{d:02d}" for d in range(1, 31)]
    assert_parquet_equals_sources(res.parquet, [*june, "2022-07-01", "2022-07-02"])
    # July has no monthly zip on this server: fall back to its daily zips
    res = download("BTCUSDT", "1m", date(2022, 7, 1), date(2022, 7, 31), tmp_path, market="um",
                   base_url=dump_server.base_url, today=FAR_FUTURE, progress=False)
    monthly = "monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2022-07.zip.CHECKSUM"
    assert any(monthly in p for p, _ in dump_server.requests)
    assert res.skipped == ["BTCUSDT-1m-2022-07-01.zip", "BTCUSDT-1m-2022-07-02.zip"]
    assert len(res.fetched) == 29
    assert res.loaded.report.rows == 31 * 1440 and res.loaded.report.gaps == []


def test_days_the_server_lacks_are_reported_as_gaps(dump_server, tmp_path: Path) -> None:
    # 2022-04-30 is not in the shared data: a 404, so the series starts on 05-01
    res = download("BTCUSDT", "1m", date(2022, 4, 30), date(2022, 5, 1), tmp_path, market="um",
                   base_url=dump_server.base_url, today=FAR_FUTURE, progress=False)
    assert res.missing == ["2022-04-30"] and res.loaded.report.rows == 1440


def test_corrupt_zip_is_refused_then_resume_fetches_only_it(dump_server, tmp_path: Path) -> None:
    dump_server.corrupt = {"BTCUSDT-1m-2022-05-31.zip"}
    args = ["data", "download", "--market", "um", "--symbol", "BTCUSDT", "--start", "2022-05-30",
            "--end", "2022-06-01", "--out", str(tmp_path), "--base-url", dump_server.base_url,
            "--no-progress"]
    proc = run_cli(*args)
    assert proc.returncode == 1
    assert "BTCUSDT-1m-2022-05-31.zip" in proc.stderr and "does not match" in proc.stderr
    raw = tmp_path / "raw" / "data" / "futures" / "um" / "daily" / "klines" / "BTCUSDT" / "1m"
    assert sorted(p.name for p in raw.glob("*.zip")) == ["BTCUSDT-1m-2022-05-30.zip"]
    assert not list(raw.glob("*.part")) and not list(tmp_path.glob("*.parquet"))
    assert len(zip_requests(dump_server, "2022-05-31")) == 2  # one retry, then refused
    dump_server.corrupt.clear()
    dump_server.requests.clear()
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert [p for p, _ in zip_requests(dump_server)] == [
        "/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2022-05-31.zip",
        "/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2022-06-01.zip"]
    assert_parquet_equals_sources(tmp_path / "um-BTCUSDT-1m-2022-05-30_2022-06-01.parquet",
                                  ["2022-05-30", "2022-05-31", "2022-06-01"])


def test_interrupted_download_resumes_with_range(dump_server, tmp_path: Path) -> None:
    dump_server.truncate_once = {"BTCUSDT-1m-2022-06-01.zip"}
    fetcher = Fetcher(dump_server.base_url, backoff_s=0.0, sleep=lambda s: None)
    res = download("BTCUSDT", "1m", date(2022, 6, 1), date(2022, 6, 1), tmp_path, market="um",
                   base_url=dump_server.base_url, today=FAR_FUTURE, progress=False, fetcher=fetcher)
    reqs = zip_requests(dump_server, "2022-06-01")
    assert len(reqs) == 2 and reqs[0][1] == "" and reqs[1][1].startswith("bytes=")
    assert int(reqs[1][1][6:-1]) > 0
    assert_parquet_equals_sources(res.parquet, ["2022-06-01"])


def test_unreachable_server_is_transient(tmp_path: Path) -> None:
    from tests.conftest import free_port

    fetcher = Fetcher(f"http://127.0.0.1:{free_port()}", retries=1, backoff_s=0.0, sleep=lambda s: None)
    from barsignal.errors import TransientError

    with pytest.raises(TransientError, match="resumes"):
        download("BTCUSDT", "1m", date(2022, 6, 1), date(2022, 6, 1), tmp_path, market="um",
                 base_url="x", today=FAR_FUTURE, progress=False, fetcher=fetcher)
    with pytest.raises(DataError, match="no kline files"):
        download("BTCUSDT", "1m", date(2021, 6, 1), date(2021, 6, 1), tmp_path, market="um",
                 base_url="x", today=FAR_FUTURE, progress=False,
                 fetcher=type("F", (), {"get": lambda self, p: None, "base_url": "x"})())


def test_download_usage_errors_exit_2(tmp_path: Path) -> None:
    base = ["data", "download", "--symbol", "BTCUSDT", "--out", str(tmp_path), "--base-url", "http://127.0.0.1:9"]
    proc = run_cli(*base, "--start", "2022-06-02", "--end", "2022-06-01")
    assert proc.returncode == 2 and "before --start" in proc.stderr
    proc = run_cli(*base, "--start", "2022-06-01", "--end", "2022-06-01", "--interval", "7m")
    assert proc.returncode == 2 and "7m" in proc.stderr
    proc = run_cli(*base, "--start", "June", "--end", "2022-06-01")
    assert proc.returncode == 2 and "YYYY-MM-DD" in proc.stderr


def test_inspect_json_and_text() -> None:
    f5 = DATA / "klines" / "spot_5m" / "BTC_USDT-5m_2019-11-15_2020-03-12.json"
    f1d = DATA / "klines" / "spot_1h_4h_1d" / "BTC_USDT-1d_2017-08-17_2022-10.json"
    proc = run_cli("data", "inspect", "--json", "--bars", str(f5))
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert list(obj) == ["rows", "first_open_ms", "last_open_ms", "interval_ms", "duplicates", "conflicts",
                         "gaps"]
    assert obj["rows"] == 33959 and obj["duplicates"] == 1 and obj["conflicts"] == 0
    assert obj["interval_ms"] == 300_000 and len(obj["gaps"]) == 4 and sum(g[2] for g in obj["gaps"]) == 131
    assert obj["gaps"][0] == [1574646900000, 1574654400000, 24]  # 2019-11-25 01:55 -> 04:00
    proc = run_cli("data", "inspect", "--json", "--bars", str(f5), str(f1d))
    objs = json.loads(proc.stdout)
    assert isinstance(objs, list) and [o["rows"] for o in objs] == [33959, 1881]
    proc = run_cli("data", "inspect", "--bars", str(f5))
    assert proc.returncode == 0
    assert "duplicates dropped 1" in proc.stdout
    assert "2019-11-25T01:55:00Z -> 2019-11-25T04:00:00Z  (24 missing)" in proc.stdout


def test_inspect_merge_conflicts_and_missing(tmp_path: Path) -> None:
    src = DATA / "klines" / "spot_1m" / "BTC_USDT-1m_2021-11-11_2021-12-11.json"
    rows = json.loads(src.read_text())[:20]
    bad = [*rows, [rows[3][0], rows[3][1] + 1, *rows[3][2:]]]
    (tmp_path / "c.json").write_text(json.dumps(bad))
    proc = run_cli("data", "inspect", "--json", "--bars", str(tmp_path / "c.json"))
    assert proc.returncode == 1 and json.loads(proc.stdout)["conflicts"] == 1
    assert "conflicting" in proc.stderr
    proc = run_cli("data", "inspect", "--bars", str(tmp_path / "nope.csv"))
    assert proc.returncode == 1 and "nope.csv" in proc.stderr
    days = sorted(FUT.glob("*.csv"))[:3]
    proc = run_cli("data", "inspect", "--json", "--merge", "--bars", *map(str, days))
    merged = json.loads(proc.stdout)
    assert merged["rows"] == 3 * 1440 and merged["gaps"] == []
    assert np.diff([merged["first_open_ms"], merged["last_open_ms"]])[0] == (3 * 1440 - 1) * 60_000


def test_bench_data_runs() -> None:
    proc = run_cli("bench", "data", "--repeat", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)["results"]
    rows = {r["case"]: r["rows"] for r in res}
    assert rows["csv load_many 123 futures daily files"] == 177_120
    assert rows["parquet (same bars, 11 columns)"] == 177_120
    assert all(r["seconds"] > 0 for r in res)
