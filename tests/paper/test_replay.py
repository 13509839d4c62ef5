"""Replay through the live node: the signals reach the live jsonl and paper sinks through the outbox
and the sink workers (as live), equal the pipeline one bar at a time, parity catches any difference,
and a replay resumed into the same state directory signals nothing twice."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sqlite3
from pathlib import Path

import numpy as np
import orjson
import pytest

from barsignal.daemon.config import JsonlSinkConfig, PaperConfig
from barsignal.daemon.outbox import Outbox
from barsignal.daemon.paper.ledger import PaperLedger
from barsignal.daemon.paper.parity import compare, f32_bits
from barsignal.daemon.paper.replay import replay
from barsignal.daemon.paper.signals_io import read_signals
from barsignal.daemon.paper.sink import PaperSink
from barsignal.daemon.sinks import build_sink
from barsignal.daemon.sinks.base import SinkContext
from barsignal.engine.broker import Rules
from barsignal.node import Node, Start

PAPER = PaperConfig(allow_short=True, ledger="paper.sqlite")
RULES = Rules.from_config(PAPER)


def node_for(pipeline, state: Path, *, jsonl: bool = True, paper: bool = True, on_signal=None) -> Node:
    """A node around a test pipeline: the live outbox in ``state``, the live jsonl and paper sinks,
    resumed from the outbox's last signal like ``build_node``."""
    sinks = []
    if jsonl:
        sinks.append(build_sink("jsonl", JsonlSinkConfig(path="signals.jsonl", fsync="never"), state))
    if paper:
        sinks.append(PaperSink(SinkContext(name="paper", section=PAPER, state_dir=state), durability="off"))
    ob = Outbox(state / "outbox.sqlite", tuple(s.name for s in sinks))
    node = Node(pipeline, ob, sinks, state=state, on_signal=on_signal)
    last = ob.last(pipeline.symbol)
    node.restore(Start(*last) if last else Start())
    return node


def _dump(db: Path) -> dict[str, list]:
    c = sqlite3.connect(db)
    try:
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("fills", "equity", "positions")}
    finally:
        c.close()


@pytest.mark.parametrize("where", [(2, 0), (0, 4500)], ids=["gapless", "across-a-real-gap"])
def test_replay_reaches_the_live_sinks_through_the_outbox(tmp_path, spot_bars, make_pipeline, where) -> None:
    bars = spot_bars(2500, *where)
    gaps = sum(b.open_time - a.open_time > 60_000 for a, b in itertools.pairwise(bars))
    assert gaps == (where[0] == 0)
    one = make_pipeline()
    ref = [s for b in bars if (s := one.process(b)) is not None]  # the pipeline bar by bar
    state = tmp_path / "state"
    seen: list = []
    res = replay(bars, node_for(make_pipeline(), state, on_signal=seen.append))
    assert res.bars == 2500 and res.signals == len(ref) > 2000 and res.fills > 0 and res.duplicates == 0
    assert [(s.id, f32_bits(s.p_up), s.action) for s in seen] == [(s.id, f32_bits(s.p_up), s.action) for s in ref]
    # The outbox holds every signal, nothing pending: each sink acknowledged each one.
    db = sqlite3.connect(state / "outbox.sqlite")
    payloads = [r[0] for r in db.execute("SELECT payload FROM signals ORDER BY seq")]
    assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
    db.close()
    assert [orjson.loads(p)["id"] for p in payloads] == [s.id for s in ref]
    # The jsonl sink wrote the live format, byte for byte what the outbox stored.
    lines = (state / "signals.jsonl").read_bytes().splitlines()
    assert lines == [orjson.dumps(orjson.loads(p)) for p in payloads]
    assert len({orjson.loads(x)["action"] for x in lines}) == 3  # the rule really trades
    # The paper sink's ledger equals a ledger fed the same signals one by one.
    with PaperLedger(tmp_path / "ref.sqlite", RULES) as led:
        led.apply_many(read_signals(state / "signals.jsonl"))
    assert _dump(state / "paper.sqlite") == _dump(tmp_path / "ref.sqlite")


def test_parity_zero_differences_and_catches_one_ulp(tmp_path, spot_bars, make_pipeline) -> None:
    bars = spot_bars(1500)
    reference: list = []
    replay(bars, node_for(make_pipeline(), tmp_path / "r", jsonl=False, paper=False, on_signal=reference.append))

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
    # the move head: one ulp of p_move or sigma_bp (float64), a null, a flipped regime
    assert len({s.regime for s in live_sigs}) == 2 and all(s.p_move is not None for s in live_sigs)
    s = live_sigs[k]
    for change, what in ((dict(p_move=float(np.nextafter(s.p_move, 2.0))), "p_move"), (dict(p_move=None), "p_move"),
                         (dict(sigma_bp=float(np.nextafter(s.sigma_bp, 0.0))), "sigma_bp"),
                         (dict(regime={"calm": "active", "active": "calm"}[s.regime]), "regime")):
        d = compare([*live_sigs[:k], dataclasses.replace(s, **change), *live_sigs[k + 1:]], reference).differences
        assert [(x.what, x.open_time) for x in d] == [(what, s.open_time)], change
    d = compare(live_sigs[1:] + live_sigs[:1], reference[:-1]).differences  # order-free, tail missing
    assert [x.what for x in d] == ["missing in replay"] and d[0].open_time == live_sigs[-1].open_time


def test_resumed_replay_signals_only_new_bars(tmp_path, spot_bars, make_pipeline) -> None:
    bars = spot_bars(1800)
    full: list = []
    replay(bars, node_for(make_pipeline(), tmp_path / "full", jsonl=False, paper=False, on_signal=full.append))
    state = tmp_path / "state"
    replay(bars[:1000], node_for(make_pipeline(), state))
    with PaperLedger(state / "paper.sqlite", RULES) as led:
        cut = led.last_open_time("BTCUSDT")
    assert cut == bars[999].open_time
    # a restart into the same state: warm-up from history, the outbox says what was signalled
    again: list = []
    res = replay(bars, node_for(make_pipeline(), state, on_signal=again.append))
    assert res.duplicates == 0 and [s.open_time for s in again] == [b.open_time for b in bars[1000:]]
    assert [f32_bits(s.p_up) for s in again] == [f32_bits(s.p_up) for s in full if s.open_time > cut]
    with PaperLedger(state / "paper.sqlite", RULES) as led:
        assert len(list(led.equity_rows("BTCUSDT"))) == len(full)
    ids = [orjson.loads(x)["id"] for x in (state / "signals.jsonl").read_bytes().splitlines()]
    assert ids == [s.id for s in full], "the jsonl sink got each signal once, in order, across the resume"
