"""Replay through the live Pipeline: batched scoring gives the same signals as one by one, the
signals JSONL is the live format, parity catches any difference, a resumed run signals nothing twice."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sqlite3

import numpy as np
import orjson
import pytest

from barsignal.daemon.config import JsonlSinkConfig
from barsignal.daemon.paper.broker import Rules
from barsignal.daemon.paper.ledger import PaperLedger
from barsignal.daemon.paper.parity import compare, f32_bits
from barsignal.daemon.paper.replay import replay
from barsignal.daemon.paper.signals_io import read_signals
from barsignal.daemon.sinks import build_sink

RULES = Rules(allow_short=True)


def strip(path) -> list[dict]:
    """JSONL records without the latency breakdown (wall-clock figures, not results)."""
    return [{k: v for k, v in orjson.loads(line).items() if k != "latency_us"}
            for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize("where", [(2, 0), (0, 4500)], ids=["gapless", "across-a-real-gap"])
def test_batched_replay_equals_one_by_one(tmp_path, spot_bars, make_pipeline, where) -> None:
    bars = spot_bars(2500, *where)
    gaps = sum(b.open_time - a.open_time > 60_000 for a, b in itertools.pairwise(bars))
    assert gaps == (where[0] == 0)
    one = replay(bars, make_pipeline(), ledger=PaperLedger(tmp_path / "one.sqlite", RULES),
                 signals_path=tmp_path / "one.jsonl", batch=1)
    many = replay(bars, make_pipeline(), ledger=PaperLedger(tmp_path / "many.sqlite", RULES),
                  signals_path=tmp_path / "many.jsonl", batch=256, chunk=700)  # crosses chunk ends
    assert one.bars == many.bars == 2500
    assert one.signals == many.signals > 2000 and one.fills == many.fills > 0
    lines = (tmp_path / "many.jsonl").read_bytes().splitlines()
    sigs = list(read_signals(tmp_path / "many.jsonl"))
    assert lines == [orjson.dumps(s.to_dict()) for s in sigs]  # byte for byte what the jsonl sink writes
    a, b = strip(tmp_path / "one.jsonl"), strip(tmp_path / "many.jsonl")
    assert a == b
    assert len({r["action"] for r in a}) == 3  # the rule really trades: long, short and flat
    for t in ("fills", "equity", "positions"):
        rows = [sqlite3.connect(tmp_path / f"{n}.sqlite").execute(f"SELECT * FROM {t}").fetchall()
                for n in ("one", "many")]
        assert rows[0] == rows[1], t


def test_parity_zero_differences_and_catches_one_ulp(tmp_path, spot_bars, make_pipeline) -> None:
    bars = spot_bars(1500)
    reference = []
    replay(bars, make_pipeline(), on_signal=reference.append, batch=512)

    # "live": the same pipeline one bar at a time, written by the live jsonl sink
    async def live() -> None:
        sink = build_sink("jsonl", JsonlSinkConfig(path="live.jsonl", fsync="never"), tmp_path)
        await sink.start()
        pipe = make_pipeline()
        for b in bars:
            s = pipe.process(b)
            if s is not None:
                await sink.send(s)
        await sink.close()

    asyncio.run(live())
    live_sigs = list(read_signals(tmp_path / "live.jsonl"))
    assert all(s.latency_us for s in live_sigs)
    res = compare(live_sigs, reference)
    assert res.ok and res.compared == len(reference) > 1000

    k = 700
    nudged = np.nextafter(np.float32(live_sigs[k].p_up), np.float32(2))
    bad = [*live_sigs[:k], dataclasses.replace(live_sigs[k], p_up=float(nudged)), *live_sigs[k + 1:]]
    d = compare(bad, reference).differences
    assert len(d) == 1 and d[0].what == "p_up" and d[0].open_time == live_sigs[k].open_time
    assert f32_bits(float(nudged)) - f32_bits(live_sigs[k].p_up) == 1
    flipped = {"long": "flat", "flat": "short", "short": "long"}[live_sigs[k].action]
    d = compare([*live_sigs[:k], dataclasses.replace(live_sigs[k], action=flipped)], reference).differences
    assert d[0].what == "action" and d[0].index == k
    assert {x.what for x in d[1:]} == {"extra in replay"}
    d = compare(live_sigs[1:] + live_sigs[:1], reference[:-1]).differences  # order-free, tail missing
    assert [x.what for x in d] == ["missing in replay"] and d[0].open_time == live_sigs[-1].open_time


def test_resumed_replay_signals_only_new_bars(tmp_path, spot_bars, make_pipeline) -> None:
    bars = spot_bars(1800)
    full: list = []
    replay(bars, make_pipeline(), on_signal=full.append)
    led = PaperLedger(tmp_path / "l.sqlite", RULES)
    replay(bars[:1000], make_pipeline(), ledger=led)
    cut = led.last_open_time("BTCUSDT")
    assert cut == bars[999].open_time
    # a restart: warm-up from history, but bars at or before the ledger's last bar are not signalled
    again: list = []
    res = replay(bars, make_pipeline(last_signalled=cut), ledger=led, on_signal=again.append)
    assert res.duplicates == 0 and [s.open_time for s in again] == [b.open_time for b in bars[1000:]]
    assert [f32_bits(s.p_up) for s in again] == [f32_bits(s.p_up) for s in full if s.open_time > cut]
    assert len(list(led.equity_rows("BTCUSDT"))) == len(full)
