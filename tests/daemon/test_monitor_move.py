"""Live monitoring of the move head: each symbol's monitor scores its signals' p_move against what
happened at the artifact's move horizon, and exports ``barsignal_live_move{symbol,score}``.

The daemon runs in-process on real simultaneous 1m bars of BTC and ETH with the tiny artifact (its move
forecast fitted on real BTC bars, horizon 15, threshold 10 bp); the figures are recomputed from the
signals the jsonl sink wrote."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from barsignal.daemon.app import Daemon
from barsignal.daemon.config import Config, FeedConfig, JsonlSinkConfig, MetricsConfig, SinksConfig, StateConfig
from barsignal.daemon.metrics import MOVE_SCORES
from barsignal.engine.artifact import load_artifact
from barsignal.engine.metrics import roc_auc
from barsignal.node import load_model
from barsignal.node import run as run_async
from tests import e2e as h
from tests.daemon.conftest import real_bars
from tests.daemon.test_multi_symbol import FILES, _Feed

SIGNALS = 400


def test_every_symbol_scores_its_p_move_against_the_move_that_followed(tmp_path: Path, tiny_artifact: Path) -> None:
    syms = ["BTCUSDT", "ETHUSDT"]
    cfg = Config(feed=FeedConfig(symbols=tuple(syms)), state=StateConfig(dir=str(tmp_path / "state")),
                 metrics=MetricsConfig(enabled=False),
                 sinks=SinksConfig(enabled=("jsonl",), jsonl=JsonlSinkConfig(path="s.jsonl", fsync="never")))
    loaded = load_model(cfg, str(tiny_artifact), None)
    bars = {s: real_bars(loaded.warmup_bars - 1 + SIGNALS, start=30_000, path=FILES[s]) for s in syms}
    d: Daemon | None = None

    def factory(feed_cfg, want):
        assert d is not None
        return _Feed(bars, d.request_stop)

    d = Daemon(cfg, artifact_dir=str(tiny_artifact), loaded=loaded, source_factory=factory)
    assert run_async(d.run()) == 0
    got = h.read_jsonl(tmp_path / "state" / "s.jsonl")
    spec = load_artifact(tiny_artifact).move
    assert spec is not None and spec.horizon == 15
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for fam in text_string_to_metric_families(d.metrics.render().decode()) for s in fam.samples}
    for sym in syms:
        mine = [g for g in got if g["symbol"] == sym]
        assert len(mine) == SIGNALS and all(g["p_move"] is not None for g in mine)
        close = {g["open_time"]: g["bar_close"] for g in mine}
        p, y = [], []
        for g in mine:  # the bar h later closed inside the run: the outcome is known
            later = close.get(g["open_time"] + spec.horizon * 60_000)
            if later is not None:
                p.append(g["p_move"])
                y.append(float(abs(later / g["bar_close"] - 1) > spec.threshold_bp / 1e4))
        p, y = np.array(p), np.array(y)
        live = {k: samples[("barsignal_live_move", frozenset({("symbol", sym), ("score", k)}))] for k in MOVE_SCORES}
        assert live == d.monitors[sym].move_scores()  # the last signal's scores were exported
        assert live["n"] == len(p) == SIGNALS - spec.horizon
        assert live["rate"] == y.mean() and 0 < y.mean() < 1
        assert math.isclose(live["mean_p"], p.mean()) and math.isclose(live["brier"], ((p - y) ** 2).mean())
        assert live["brier_base"] == y.mean() * (1 - y.mean())
        assert live["auc"] == roc_auc(y, p)
        assert 0 <= live["ece"] < 1
    assert not [k for k in samples if k[0] == "barsignal_live_move" and ("symbol", "XRPUSDT") in k[1]]
