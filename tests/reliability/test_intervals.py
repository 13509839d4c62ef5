"""A 5-minute bar file (made here by resampling real 1-minute bars, in a tmp dir) is refused wherever bars
come in for the 1-minute model: replay, eval, train and ``feed serve`` exit 2 with one line naming both
intervals; the live stream drops a kline of another interval as a bad frame (``wrong_interval``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from barsignal.daemon.binance.ws import KlineEvent, decode, encode_kline
from barsignal.data import load
from barsignal.data.intervals import IntervalMismatch, check_interval
from barsignal.errors import BadMessage
from tests import e2e as h
from tests.conftest import REPO


@pytest.fixture(scope="module")
def five_minute_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real BTC/USDT 1m bars resampled to 5m (open of the first, max high, min low, close of the last,
    summed volume), as freqtrade JSON."""
    f = load(h.SPOT_NOV).frame
    n = (min(len(f), 5 * 3000) // 5) * 5
    t, o, hi, lo, c, v = (np.asarray(x[:n]) for x in (f.open_time, f.open, f.high, f.low, f.close, f.volume))
    assert np.all(np.diff(t) == 60_000)  # gap-free there (PROVENANCE.md), so every group is 5 bars
    rows = [[int(t[i]), float(o[i]), float(hi[i:i + 5].max()), float(lo[i:i + 5].min()), float(c[i + 4]),
             float(v[i:i + 5].sum())] for i in range(0, n, 5)]
    out = tmp_path_factory.mktemp("bars5m") / "BTC_USDT-5m.json"
    out.write_bytes(orjson.dumps(rows))
    assert load(out).report.interval_ms == 300_000  # what `data inspect` reports
    return out


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "barsignal", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _refused(res: subprocess.CompletedProcess, path: Path) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr
    line = next(x for x in res.stderr.splitlines() if "5m bars" in x)
    assert path.name in line and "300000 ms" in line and "1m bars (60000 ms)" in line, line
    return line


@pytest.mark.parametrize("form", ["positional", "symbol"])
def test_replay_exits_2_naming_both_intervals(five_minute_file: Path, artifact: Path, tmp_path: Path,
                                              form: str) -> None:
    bars = [str(five_minute_file)] if form == "positional" else ["--bars", f"BTCUSDT={five_minute_file}"]
    res = _cli("replay", *bars, "--artifact", str(artifact), "--signals", str(tmp_path / "s.jsonl"))
    print(f"\n[intervals] replay ({form}):", _refused(res, five_minute_file))
    assert not (tmp_path / "s.jsonl").exists() or not (tmp_path / "s.jsonl").read_text()


def test_eval_exits_2_naming_both_intervals(five_minute_file: Path, artifact: Path) -> None:
    print("\n[intervals] eval:", _refused(_cli("eval", "--model", str(artifact), "--bars", str(five_minute_file)),
                                          five_minute_file))


def test_train_exits_2_naming_both_intervals(five_minute_file: Path, tmp_path: Path) -> None:
    res = _cli("train", "student", "--data", str(five_minute_file), "--out", str(tmp_path / "ckpt"), "--epochs", "1",
               "--no-progress")
    print("\n[intervals] train:", _refused(res, five_minute_file))
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_feed_serve_exits_2_naming_both_intervals(five_minute_file: Path) -> None:
    res = _cli("feed", "serve", str(five_minute_file), "--port", "0", timeout=60)
    line = _refused(res, five_minute_file)
    assert "the feed works on 1m bars" in line


def test_the_same_bars_at_1m_pass_and_the_check_is_the_one_data_inspect_reports() -> None:
    f = load(h.SPOT_NOV).frame
    check_interval(f.open_time, 60_000, "1m")  # a real gap-free 1m file passes
    check_interval(np.delete(f.open_time[:500], np.arange(10, 500, 7)), 60_000, "gaps")  # gaps do not change it
    with pytest.raises(IntervalMismatch, match=r"x: the bars are 5m bars \(300000 ms apart\)"):
        check_interval(f.open_time[:500:5], 60_000, "x")


def test_a_live_kline_of_another_interval_is_a_bad_frame() -> None:
    ev = KlineEvent(symbol="BTCUSDT", interval="5m", open_time=1_636_921_800_000, close_time=1_636_922_099_999,
                    open=1.0, high=2.0, low=0.5, close=1.5, volume=3.0, closed=True, event_time=1_636_922_100_100)
    for combined in (True, False):
        frame = encode_kline(ev, combined=combined)
        assert decode(frame).interval == "5m"  # without the feed's interval it is a kline like any
        with pytest.raises(BadMessage) as e:
            decode(frame, interval="1m")
        assert e.value.reason == "wrong_interval"  # type: ignore[attr-defined]


def test_parity_exits_2_naming_both_intervals(five_minute_file: Path, artifact: Path, tmp_path: Path) -> None:
    live = tmp_path / "live.jsonl"
    live.write_text("")
    res = _cli("parity", "--live-signals", str(live), "--bars", str(five_minute_file), "--artifact", str(artifact))
    print("\n[intervals] parity:", _refused(res, five_minute_file))
