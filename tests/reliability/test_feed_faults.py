"""Feed faults during a replayed day of real bars, against the real ``barsignal run`` subprocess.

``barsignal feed serve`` replays 1,440 real 1m bars (one day, spot BTC/USDT 2021-11-12/13, after the
features' warm-up) at 40 bars/s and injects, at once: random disconnects, ``serverShutdown``, a
stalled stream (pings, no data), connection refusals (429 + Retry-After), duplicate, out-of-order,
late, malformed, delayed and dropped closed klines, and REST answering 429 with Retry-After, 418,
503 and timeouts. The daemon's 24 h rollover is shrunk to 8 s of wall time, so it rolls over
several times. Required: the bar record equals the file (no missed bar, no duplicate, same
values), one signal per bar, and the signals equal a fault-free ``barsignal replay`` of the same
bars bit for bit.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests import e2e as h
from tests.conftest import REPO, free_port

START, DAY, TAIL = 2000, 1440, 400  # served bars [START, START + DAY + TAIL); checked: the first DAY signalled
WARMUP = 729  # OnlineFeatures.bars_to_fetch: RESTART_WARMUP_BARS + window - 1
SPEED = 40.0


def test_a_day_of_feed_faults_misses_nothing_and_matches_a_clean_replay(tmp_path: Path, artifact: Path) -> None:
    rows = h.rows()
    times = [int(r[0]) for r in rows]
    rng = random.Random(20261123)
    events = sorted(rng.sample(range(START + 300, START + DAY, 10), 9))
    disconnects, shutdowns, stall = events[:6], events[6:8], events[8]
    spec = ("seed=11,dup=0.03,ooo=0.01,late=0.03,malformed=0.03,drop=0.005,delay=0.02,delay_s=0.05,"
            "rest429=0.15,rest418=0.03,rest5xx=0.1,rest_timeout=0.05,rest_timeout_s=3,retry_after_s=1,refuse=2,"
            + ",".join([f"disconnect={i}" for i in disconnects] + [f"shutdown={i}" for i in shutdowns]
                       + [f"stall={stall}"]))
    port, mport = free_port(), free_port()
    cfg = h.write_config(tmp_path, port, metrics_port=mport, feed="rollover_s = 8.0")
    state = tmp_path / "state"
    logs = [tmp_path / "daemon.log", tmp_path / "feed.log"]
    run = h.start_daemon(tmp_path, cfg, artifact)
    feed = None
    try:
        # The daemon is up and dialling (model loaded, ccxt imported) before the feed starts its day.
        h.wait_for(lambda: "feed.connect_failed" in logs[0].read_text(), 60, "the daemon dialling", [run], logs)
        t0 = time.monotonic()
        feed, _ = h.start_feed(tmp_path, h.SPOT_NOV, START, START + DAY + TAIL, speed=SPEED, faults=spec,
                               port=port)
        h.wait_for(lambda: len(h.read_jsonl(state / "signals.jsonl")) >= DAY, 150, f"{DAY} signals",
                   [run, feed], logs)
        wall = time.monotonic() - t0
        m = h.scrape(mport)
        code = h.stop(run)
    finally:
        h.kill_all(run)
        h.stop(feed)
    assert code == 0, h._tails(logs)
    h.assert_clean_log(tmp_path / "daemon.log")

    # Zero missed closed bars, zero duplicates, the same values as the file.
    rec = h.bar_record(state)
    ots = [b["open_time"] for b in rec]
    first = times.index(ots[0])  # warm-up over REST from the stream's first bar back
    sigs = h.read_jsonl(state / "signals.jsonl")[:DAY]
    stop_i = times.index(sigs[-1]["open_time"]) + 1
    n = stop_i - first
    assert n >= WARMUP - 1 + DAY and ots[:n] == times[first:stop_i], "bar record != the file's bars (missed/dup)"
    assert len(ots) == len(set(ots))
    for b, r in zip(rec[:n], rows[first:stop_i], strict=True):
        assert [b["open"], b["high"], b["low"], b["close"], b["volume"]] == [float(x) for x in r[1:6]]

    # One signal per bar, none duplicated; identical to a fault-free replay of the same bars.
    sig_ots = [s["open_time"] for s in sigs]
    assert sig_ots == times[stop_i - DAY:stop_i], "one signal per closed bar, none missing or duplicated"
    assert len({s["id"] for s in sigs}) == len(sigs)
    bars = h.write_slice(rows, first, stop_i, tmp_path / "day.json")
    ref_path = tmp_path / "replay.jsonl"
    res = subprocess.run([sys.executable, "-m", "barsignal", "replay", "--bars", str(bars), "--config", str(cfg),
                          "--artifact", str(artifact), "--signals", str(ref_path), "--out", str(tmp_path / "replay")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = {s["open_time"]: s for s in h.read_jsonl(ref_path)}
    keys = ("id", "open_time", "p_up", "action", "artifact")
    diffs = [(s["open_time"], {k: (s[k], ref.get(s["open_time"], {}).get(k)) for k in keys})
             for s in sigs if any(s[k] != ref.get(s["open_time"], {}).get(k) for k in keys)]
    assert not diffs, f"{len(diffs)} signals differ from the fault-free replay; first: {diffs[0]}"
    assert len(ref) == len(sigs)

    feed_log = (tmp_path / "feed.log").read_text()
    daemon_log = (tmp_path / "daemon.log").read_text()
    injected = {
        "disconnect": feed_log.count("feed_serve.disconnect"),
        "server_shutdown": feed_log.count("feed_serve.server_shutdown"),
        "stall": feed_log.count("feed_serve.stall"),
        "handshake_refused": daemon_log.count("feed.connect_failed"),
        "bad_frames": int(m["barsignal_bad_frames_total"]),
        "dup_late_ooo_dropped": int(m["barsignal_dropped_frames_total"]),
        "backfilled_bars": int(m["barsignal_backfilled_bars_total"]),
    }
    for line in daemon_log.splitlines():  # REST faults, by kind, from the daemon's own log lines
        if '"feed.rest_rate_limited"' in line:  # 429 / 418: the client waits the whole Retry-After
            kind = "rest_418" if orjson.loads(line)["status"] == 418 else "rest_429"
        elif '"feed.rest_failed"' in line:
            # the error names the URL, whose random port may hold "418", "429" or "503": match the
            # kind of failure, never a bare number
            err = re.sub(r"https?://[^\s/]+", "URL", orjson.loads(line)["error"])
            kind = ("rest_timeout" if "Timeout" in err else "rest_418" if "418" in err else
                    "rest_429" if "429" in err else "rest_5xx" if "503" in err or "unavailable" in err
                    else "rest_other")
        else:
            continue
        injected[kind] = injected.get(kind, 0) + 1
    reasons: dict[str, int] = {}
    for line in daemon_log.splitlines():
        if '"feed.reconnect"' in line:
            r = orjson.loads(line)["reason"]
            reasons[r] = reasons.get(r, 0) + 1
    injected["rollover"] = reasons.get("rollover", 0)
    ws_bars, rest_bars = (int(m[f'barsignal_bars_total{{source="{k}"}}']) for k in ("ws", "rest"))
    total = sum(v for k, v in injected.items() if k != "backfilled_bars")
    print(f"\n[feed faults] {DAY} bars at {SPEED:g} bars/s in {wall:.1f} s; faults injected and handled: "
          f"{total} {injected}; daemon reconnects by reason {reasons}; bars ws/rest "
          f"{ws_bars}/{rest_bars}; missed bars 0, duplicates 0; "
          f"{len(sigs)} signals == fault-free replay (0 differences)")
    assert injected["disconnect"] == 6 and injected["server_shutdown"] == 2 and injected["stall"] == 1
    assert injected["rollover"] >= 1 and injected["bad_frames"] > 0 and injected["dup_late_ooo_dropped"] > 0
    assert injected.get("rest_429", 0) + injected.get("rest_418", 0) == m["barsignal_rest_rate_limited_total"]
    assert injected.get("rest_429", 0) > 0 and injected.get("rest_5xx", 0) > 0 and injected.get("rest_timeout", 0) > 0
    assert m["barsignal_gaps_total"] == 0
