"""The forged pair end to end: ``barsignal run`` (a real subprocess) on three real symbols against
``barsignal feed serve`` (the real simulator process), which sends, right after SOLUSDT's closed frame
of one minute, two more closed frames dated five years ahead with forged event times. No signal for a
bar the source did not have; every real bar of every symbol signalled once; the two forged bars
dropped and counted for SOLUSDT only; no gap fetch; SOLUSDT's next bar signalled as the others'."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import orjson

from barsignal.data import load
from tests import e2e as h
from tests.conftest import REPO, free_port

MULTI = REPO.parent / "shared" / "data" / "multi" / "spot_1m"
SYMS = ("ETHUSDT", "SOLUSDT", "ADAUSDT")
START, N, FORGE_AT = 2000, 60, 2025  # ticks [START, START + N) live; history before START (the warm-up)


def _file(sym: str) -> Path:
    return MULTI / f"{sym[:-4]}_USDT-1m.json"


def test_a_forged_pair_of_one_symbol_invents_nothing_and_moves_no_other_symbol(tmp_path: Path,
                                                                                artifact: Path) -> None:
    frames = {s: load(_file(s)).frame for s in SYMS}
    t = frames[SYMS[0]].open_time
    assert all(np.array_equal(f.open_time[:START + N], t[:START + N]) for f in frames.values())
    port, mport = free_port(), free_port()
    feed = h._popen(["feed", "serve", *[a for s in SYMS for a in ("--bars", f"{s}={_file(s)}")], "--port", str(port),
                     "--speed", "2", "--start-index", str(START), "--end-index", str(START + N), "--intrabar", "1",
                     "--ping-interval", "1", "--faults", f"forge={FORGE_AT},symbols=SOLUSDT"],
                    tmp_path / "feed.log", stdout=subprocess.PIPE)
    assert feed.stdout is not None and feed.stdout.readline(), (tmp_path / "feed.log").read_text()[-3000:]
    cfg = h.write_config(tmp_path, port, metrics_port=mport, feed=f"symbols = {list(SYMS)!r}".replace("'", '"'))
    run = h.start_daemon(tmp_path, cfg, artifact)
    logs = [tmp_path / "daemon.log", tmp_path / "feed.log"]
    last = int(t[START + N - 1])
    sig_path = tmp_path / "state" / "signals.jsonl"
    try:
        h.wait_for(lambda: {s["symbol"] for s in h.read_jsonl(sig_path) if s["open_time"] == last} == set(SYMS),
                   N / 2 + 90, "the last bar of every symbol signalled", [run], logs)
        m = h.scrape(mport)
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=5) as r:
            health = orjson.loads(r.read())
        code = h.stop(run)
    finally:
        h.kill_all(run, feed)
    assert code == 0, h._tails(logs)
    h.assert_clean_log(logs[0])
    sigs = h.read_jsonl(sig_path)
    for s in SYMS:
        f = frames[s]
        mine = [x for x in sigs if x["symbol"] == s]
        ots = [x["open_time"] for x in mine]
        assert ots == sorted(set(ots)), f"{s}: a bar signalled twice or out of order"
        for x in mine:
            i = int(np.searchsorted(f.open_time, x["open_time"]))
            assert i < len(f.open_time) and int(f.open_time[i]) == x["open_time"], f"{s}: invented bar {x}"
            assert x["bar_close"] == float(f.close[i]), f"{s}: a value the source never sent {x}"
        first = int(np.searchsorted(t, ots[0]))
        # signalled from the first bar the daemon saw live (the server starts streaming before it connects)
        assert first <= START + 10 and ots == [int(x) for x in t[first:START + N]], f"{s}: a real bar was missed"
        assert first < FORGE_AT - 5
    log = logs[0].read_text()
    assert '"feed.gap"' not in log and '"feed.clock_jump"' not in log
    assert m['barsignal_symbol_future_bars_total{symbol="SOLUSDT"}'] == 2
    assert m['barsignal_symbol_future_bars_total{symbol="ETHUSDT"}'] == 0
    assert m['barsignal_symbol_future_bars_total{symbol="ADAUSDT"}'] == 0
    assert m["barsignal_clock_ahead_frames_total"] == 2 and m["barsignal_gaps_total"] == 0
    # REST: the three warm-ups (729 bars: 1 page each) and a few backfills, nothing like millions of bars
    assert m["barsignal_rest_weight_spent_total"] <= 20 * 3 + 2 * 3 * 10
    assert health["status"] == "ok" and health["stale_symbols"] == []
    print(f"\n[forged pair] SOLUSDT at tick {FORGE_AT}: future bars {m['barsignal_future_bars_total']:.0f}, "
          f"clock-ahead frames {m['barsignal_clock_ahead_frames_total']:.0f}, REST weight "
          f"{m['barsignal_rest_weight_spent_total']:.0f}; {len(sigs)} signals, every real bar once")
