"""``barsignal run`` (a real subprocess) against the hostile loopback server (tests/hostile.py), which
replays real bars with chosen misbehaviours: issue 13 #1, #2, #8 (config), #11 end to end, one case
at live cadence (1 bar/s), and a hostile-feed property test whose misbehaviour per bar and per REST
request is drawn by hypothesis.

Every case checks the same contract: the daemon never exits non-zero; it never signals a bar the
source did not have (open time and close price are the file's); once the source is healthy, every
real bar is signalled exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import e2e as h
from tests.conftest import REPO, free_port
from tests.hostile import BAR_FAULTS, HostileServer

START = 2000  # bars before START are history (the daemon's 729-bar warm-up comes from REST)
INJECTED: dict[str, int] = {}  # every fault the suite injected, for docs/RELIABILITY.md


@pytest.fixture(scope="module")
def frame():
    from barsignal.data import load

    return load(h.SPOT_NOV).frame


def _run(tmp: Path, artifact: Path, srv_port: int, mport: int, feed: str = "") -> tuple[Path, object]:
    cfg = h.write_config(tmp, srv_port, metrics_port=mport, feed=feed)
    return cfg, h.start_daemon(tmp, cfg, artifact)


def _signals(tmp: Path) -> list[dict]:
    return h.read_jsonl(tmp / "state" / "signals.jsonl")


def _check_signals(sigs: list[dict], frame, last: int) -> list[int]:
    """No invented bar; strictly increasing, no duplicate; every real bar up to ``last``."""
    t = frame.open_time
    ots = [s["open_time"] for s in sigs]
    assert ots == sorted(set(ots)), "a bar was signalled twice or out of order"
    for s in sigs:
        i = int(np.searchsorted(t, s["open_time"]))
        assert i < len(t) and int(t[i]) == s["open_time"], f"signal for a bar the source never had: {s}"
        assert s["bar_close"] == float(frame.close[i]), f"signal on a value the source never sent: {s}"
    first = int(np.searchsorted(t, ots[0]))
    assert ots == [int(x) for x in t[first:last + 1]], "a real bar was not signalled"
    return ots


def _tally(srv: HostileServer) -> None:
    for k, v in srv.injected.items():
        INJECTED[k] = INJECTED.get(k, 0) + v


def test_live_cadence_future_and_absurd_bars_are_dropped_and_every_real_bar_signalled_once(
        tmp_path: Path, artifact: Path, frame) -> None:
    """#1 and #2 at 1 bar/s: future-dated klines (E honest, E forged), 1e13 / 1e-13 prices, a 1e19
    volume, duplicates, a reordered pair, NaN / negative / misaligned rows in the REST warm-up."""
    n = 24
    plan = {START + 3: "future", START + 6: "future_e", START + 9: "price_high", START + 12: "volume_high",
            START + 14: "dup", START + 16: "reorder", START + 19: "price_low"}
    port, mport = free_port(), free_port()
    _, run = _run(tmp_path, artifact, port, mport)
    logs = [tmp_path / "daemon.log"]
    srv = None
    try:
        h.wait_for(lambda: "feed.connect_failed" in logs[0].read_text(), 60, "the daemon dialling", [run], logs)
        srv = HostileServer(frame, start=START, end=START + n, speed=1.0, plan=plan,
                            rest_plan=lambda k: "bad_rows", port=port).start_in_thread()
        last = START + n - 1
        h.wait_for(lambda: any(s["open_time"] == int(frame.open_time[last]) for s in _signals(tmp_path)),
                   n + 40, "the last bar signalled", [run], logs)
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=5) as r:
            health = orjson.loads(r.read())
        m = h.scrape(mport)
        code = h.stop(run)
    finally:
        h.kill_all(run)
        if srv is not None:
            srv.stop_thread()
    assert code == 0, h._tails(logs)
    h.assert_clean_log(logs[0])
    ots = _check_signals(_signals(tmp_path), frame, START + n - 1)
    assert ots[0] <= int(frame.open_time[START + 1])  # signalling from the first live bars on
    assert health["status"] == "ok"
    assert m["barsignal_future_bars_total"] == 2 and m["barsignal_invalid_bars_total"] >= 3 + 3
    assert m["barsignal_rest_rate_limited_total"] == 0 and m["barsignal_rest_ban_remaining_seconds"] == 0
    log = logs[0].read_text()
    assert '"feed.future_bar"' in log and '"warning"' in log.split('"feed.future_bar"')[1][:400]
    _tally(srv)
    print(f"\n[hostile live 1 bar/s] {n} bars, injected {srv.injected}; {len(ots)} signals, each real bar "
          f"once; future_bars {m['barsignal_future_bars_total']:g}, invalid_bars "
          f"{m['barsignal_invalid_bars_total']:g}")


def test_418_ban_is_honoured_and_the_warmup_retried_not_ready_until_then(tmp_path: Path, artifact: Path,
                                                                          frame) -> None:
    """#7: the warm-up's first REST call answers 418 with Retry-After 6 s: no REST call until the ban
    ends, /healthz not ok meanwhile, then the warm-up is retried and every bar is signalled."""
    n, ban = 16, 6
    port, mport = free_port(), free_port()
    _, run = _run(tmp_path, artifact, port, mport)
    logs = [tmp_path / "daemon.log"]
    srv = None
    during: list[tuple[str, float]] = []
    try:
        h.wait_for(lambda: "feed.connect_failed" in logs[0].read_text(), 60, "the daemon dialling", [run], logs)
        srv = HostileServer(frame, start=START, end=START + n, speed=1.0, rest_plan={0: "418"}, retry_after_s=ban,
                            port=port).start_in_thread()
        h.wait_for(lambda: len(srv.rest_requests) >= 1, 30, "the first REST call", [run], logs)
        while len(srv.rest_requests) < 2 and time.monotonic() - srv.rest_requests[0][0] < ban + 5:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=2) as r:
                    status = orjson.loads(r.read())["status"]
            except urllib.error.HTTPError as exc:  # 503 while not healthy
                status = orjson.loads(exc.read())["status"]
            during.append((status, h.scrape(mport).get("barsignal_rest_ban_remaining_seconds", -1.0)))
            time.sleep(0.3)
        last = START + n - 1
        h.wait_for(lambda: any(s["open_time"] == int(frame.open_time[last]) for s in _signals(tmp_path)),
                   n + 40, "the last bar signalled", [run], logs)
        m = h.scrape(mport)
        code = h.stop(run)
    finally:
        h.kill_all(run)
        if srv is not None:
            srv.stop_thread()
    assert code == 0, h._tails(logs)
    (t0, first), (t1, _) = srv.rest_requests[:2]
    assert first == "418" and t1 - t0 >= ban - 0.1, f"a REST call {t1 - t0:.2f} s into a {ban} s ban"
    assert during and all(st_ != "ok" for st_, _ in during), during  # not healthy before it can signal
    assert max(r for _, r in during) > 0  # the ban was exported while it lasted
    assert m["barsignal_rest_rate_limited_total"] == 1 and m["barsignal_rest_ban_remaining_seconds"] == 0
    ots = _check_signals(_signals(tmp_path), frame, START + n - 1)
    assert ots[0] <= int(frame.open_time[START + ban + 2])  # the warm-up came after the ban, not a gap
    assert m["barsignal_gaps_total"] == 0
    _tally(srv)
    print(f"\n[hostile 418] ban {ban} s: {len(srv.rest_requests)} REST calls, the 2nd {t1 - t0:.2f} s after "
          f"the 418; /healthz during the ban: {sorted({s for s, _ in during})}; {len(ots)} signals, none missed")


def test_invalid_symbol_from_rest_exits_2_with_one_line(tmp_path: Path, artifact: Path, frame) -> None:
    """#11b: REST answers HTTP 400 code -1121 ("Invalid symbol"): exit 2, one line, no retry loop."""
    port = free_port()
    srv = HostileServer(frame, start=START, end=START + 600, speed=20, rest_plan=lambda k: "invalid_symbol",
                        port=port).start_in_thread()
    try:
        cfg = h.write_config(tmp_path, port)
        res = subprocess.run([sys.executable, "-m", "barsignal", "--log-format", "json", "run", "--config",
                              str(cfg), "--artifact", str(artifact)], cwd=REPO, capture_output=True, text=True,
                             timeout=90)
    finally:
        srv.stop_thread()
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    failed = [orjson.loads(x) for x in res.stderr.splitlines() if '"daemon_failed"' in x]
    assert len(failed) == 1 and "-1121" in failed[0]["error"] and "BTCUSDT" in failed[0]["error"]
    assert "no network" not in res.stderr
    _tally(srv)


@pytest.mark.parametrize(("feed", "names"), [
    ('symbols = ["BTC/USDT"]', "BTC/USDT"),
    ('symbols = [""]', "symbols"),
    ("rollover_s = 0.000001", "rollover_s"),
    ("reconnect_max_s = 0.01", "reconnect_max_s"),  # below the harness's reconnect_min_s = 0.05
])
def test_bad_feed_config_exits_2_naming_it(tmp_path: Path, artifact: Path, feed: str, names: str) -> None:
    """#8 (rollover_s), #11a: refused at config load, before any state is touched."""
    cfg = h.write_config(tmp_path, free_port()).read_text().replace("reconnect_max_s = 0.5\n", "")
    keep = "" if "reconnect_max" in feed else "reconnect_max_s = 0.5\n"
    cfg = cfg.replace("[feed]\n", f"[feed]\n{feed}\n{keep}", 1)
    path = tmp_path / "bad.toml"
    path.write_text(cfg)
    res = subprocess.run([sys.executable, "-m", "barsignal", "run", "--config", str(path), "--artifact",
                          str(artifact)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr[-2000:]
    assert names in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "state").exists(), "the state directory was touched before the config was checked"


_FAULTS = st.sampled_from(tuple(f for f in BAR_FAULTS if f != "disconnect") + ("ok",) * 6 + ("disconnect",))
_REST = st.sampled_from(("ok",) * 5 + ("500", "429", "418", "bad_rows"))


@settings(max_examples=3, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
@given(plan=st.lists(_FAULTS, min_size=40, max_size=40), rest=st.lists(_REST, min_size=12, max_size=12))
def test_hostile_feed_property(tmp_path_factory: pytest.TempPathFactory, artifact: Path, frame,
                               plan: list[str], rest: list[str]) -> None:
    """Per bar and per REST request, a misbehaviour drawn by hypothesis (garbage, absurd and future
    values, duplicates, reordering, stalls, re-sent bars, disconnects; 500 / 429 / 418 with
    Retry-After 1 s, bad rows), then 8 healthy bars: exit 0, no invented signal, every real bar once."""
    tmp = tmp_path_factory.mktemp("prop")
    speed, n = 10.0, len(plan) + 8
    faults = dict(zip(range(START, START + len(plan)), plan, strict=True))
    port, mport = free_port(), free_port()
    _, run = _run(tmp, artifact, port, mport, feed="stale_grace_s = 1.0")
    logs = [tmp / "daemon.log"]
    srv = None
    try:
        h.wait_for(lambda: "feed.connect_failed" in logs[0].read_text(), 60, "the daemon dialling", [run], logs)
        srv = HostileServer(frame, start=START, end=START + n, speed=speed, plan=faults, retry_after_s=1,
                            rest_plan=lambda k: rest[k] if k < len(rest) else "ok", port=port).start_in_thread()
        last = START + n - 1
        h.wait_for(lambda: any(s["open_time"] == int(frame.open_time[last]) for s in _signals(tmp)),
                   n / speed + 45, "the last bar signalled", [run], logs)
        code = h.stop(run)
    finally:
        h.kill_all(run)
        if srv is not None:
            srv.stop_thread()
    assert code == 0, h._tails(logs)
    h.assert_clean_log(logs[0])
    ots = _check_signals(_signals(tmp), frame, START + n - 1)
    assert ots[0] <= int(frame.open_time[START + len(plan)])  # signalling before the healthy tail
    _tally(srv)
    print(f"\n[hostile property] {n} bars at {speed:g}/s, injected {srv.injected}; {len(ots)} signals, "
          f"each real bar once (suite total so far {INJECTED})")

