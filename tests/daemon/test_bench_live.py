"""``barsignal bench live`` as a user runs it: the real daemon on a loopback feed, keep-warm off and on."""

from __future__ import annotations

import re

from tests.conftest import run_cli


def test_bench_live_compares_keep_warm_off_and_on() -> None:
    r = run_cli("bench", "live", "--n-bars", "300", "--speed", "200", "--compare-keep-warm", "1", check=True)
    out = r.stdout
    counts = [(int(a), int(b)) for a, b in re.findall(r"(\d+) signals from (\d+) live bars", out)]
    # The feed trusts the exchange clock only once a second frame agrees with the first, so at 200
    # bars/s the first few streamed bars reach the daemon inside its REST warm-up (not signalled);
    # every later one is signalled once (+1: the warm-up's last bar).
    assert len(counts) == 2 and all(sig == bars + 1 and bars >= 290 for sig, bars in counts), out
    assert "keep_warm_ms 0)" in out and "keep_warm_ms 100)" in out
    rehearsals = [int(x) for x in re.findall(r"keep-warm\s+(\d+) rehearsals", out)]
    assert len(rehearsals) == 1 and rehearsals[0] > 0, out  # only the round with it on
    p50 = [float(x) for x in re.findall(r"tick-to-signal\s+p50 ([\d.]+) ms", out)]
    assert len(p50) == 2 and all(0 < x < 1000 for x in p50), out
    for part in ("recv_to_bar", "features", "score", "emit", "store"):
        assert out.count(f"  {part} ") == 2, part
    assert re.search(r"keep-warm off / on, median of 1 rounds' tick-to-signal p50: [\d.]+ / [\d.]+ ms = [\d.]+x", out)


def test_bench_live_json_with_the_older_spellings_of_count_and_bars() -> None:
    """``--bars N --data FILE`` (the count and the file, as spelt before) still run; ``--json`` is one
    document on stdout."""
    import orjson

    from tests.conftest import SPOT_1M

    day = next(f for f in SPOT_1M if "2021-11-11" in f.name)
    r = run_cli("bench", "live", "--bars", "200", "--data", str(day), "--speed", "200", "--json", check=True)
    assert "--bars 200 is read as --n-bars 200" in r.stderr
    fig = orjson.loads(r.stdout)
    assert fig["ws_bars"] >= 100 and fig["signals"] == fig["ws_bars"] + 1, fig  # the first bars may land in the warm-up
    tts = fig["tick_to_signal_ms"]
    assert tts["n"] > 0 and 0 < tts["p50"] <= tts["p99"] <= tts["max"]
    assert set(fig["parts_us"]) >= {"recv_to_bar", "features", "score", "emit", "store"}
    assert fig["rss_mb"] > 0 and fig["ready_s"] > 0
