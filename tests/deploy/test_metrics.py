"""The metric definitions the rules and the dashboard rely on (daemon/metrics.py): series that exist
from the first scrape, scoring by backend, the artifact's own figures, live AUC, paper equity."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from barsignal.daemon.config import JsonlSinkConfig, PaperConfig
from barsignal.daemon.metrics import (
    MOVE_SCORES,
    PSI_TOP,
    DaemonMetrics,
    LiveMonitor,
    paper_equity_reader,
    reference_scores,
)
from barsignal.daemon.sinks import build_sink
from barsignal.engine.metrics import roc_auc
from tests.paper.conftest import _make_signals, _spot_bars


def _samples(m: DaemonMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_series_alerts_watch_exist_from_the_first_scrape() -> None:
    m = DaemonMetrics("BTCUSDT", ("jsonl", "paper", "jsonl"))
    m.bind(last_bar_age=lambda: -1.0)
    s = _samples(m)
    for a in ("long", "short", "flat"):
        assert s[("barsignal_signals_total", (("action", a),))] == 0
    for r in ("ok", "refused"):
        assert s[("barsignal_reloads_total", (("result", r),))] == 0
    for sink in ("jsonl", "paper"):
        assert s[("barsignal_sink_delivered_total", (("sink", sink),))] == 0
        assert s[("barsignal_sink_failures_total", (("sink", sink),))] == 0
    assert s[("barsignal_live_model", (("score", "n"), ("symbol", "BTCUSDT")))] == 0
    assert all(math.isnan(s[("barsignal_live_model", (("score", k), ("symbol", "BTCUSDT")))])
               for k in ("brier", "auc", "ece", "accuracy"))
    assert math.isnan(s[("barsignal_feature_psi_max", (("symbol", "BTCUSDT"),))])
    assert s[("barsignal_live_move", (("score", "n"), ("symbol", "BTCUSDT")))] == 0  # the move head's too
    assert all(math.isnan(s[("barsignal_live_move", (("score", k), ("symbol", "BTCUSDT")))])
               for k in MOVE_SCORES if k != "n")
    assert s[("barsignal_last_bar_age_seconds", (("symbol", "BTCUSDT"),))] == -1.0
    start = s[("process_start_time_seconds", ())]
    assert 1.7e9 < start and math.isnan(s[("barsignal_feature_psi_bound", ())])


def _drifted(symbol: str, shift: float, seed: int) -> LiveMonitor:
    """A monitor of 3 features whose rows are N(0, 1) but feature 1 shifted by ``shift``."""
    mon = LiveMonitor(horizon=1, window=500, n_features=3, psi_every=10**9, symbol=symbol)
    x = np.random.default_rng(seed).standard_normal((400, 3))
    x[:, 1] += shift
    for i, row in enumerate(x):
        mon.observe_signal(i * 60_000, 1.0, 0.5, row[None, :])
    mon.update_psi()
    return mon


def test_live_scores_and_drift_are_by_symbol_with_bounded_series() -> None:
    """Every configured symbol has its live scores and largest PSI from the start; a symbol exports its
    own monitor only, the PSI of its PSI_TOP worst features (not all of them), and an unconfigured
    symbol gets no series."""
    m = DaemonMetrics("BTCUSDT", symbols=("BTCUSDT", "ETHUSDT"))
    s = _samples(m)
    for sym in ("BTCUSDT", "ETHUSDT"):
        assert s[("barsignal_live_model", (("score", "n"), ("symbol", sym)))] == 0
        assert math.isnan(s[("barsignal_feature_psi_max", (("symbol", sym),))])
    assert not [k for k in s if k[0] == "barsignal_feature_psi"]  # nothing measured yet
    eth = _drifted("ETHUSDT", 3.0, seed=1)
    btc = _drifted("BTCUSDT", 0.0, seed=2)
    m.export_monitor(eth)
    m.export_monitor(btc)
    m.export_monitor(_drifted("XRPUSDT", 3.0, seed=3))  # not configured: ignored
    s = _samples(m)
    assert s[("barsignal_feature_psi_max", (("symbol", "ETHUSDT"),))] == float(eth.psi_values.max()) > 1.0
    assert s[("barsignal_feature_psi_max", (("symbol", "BTCUSDT"),))] == float(btc.psi_values.max()) < 0.25
    assert not [k for k in s if ("symbol", "XRPUSDT") in k[1]]
    per_feature = {k[1]: v for k, v in s.items() if k[0] == "barsignal_feature_psi"}
    assert len(per_feature) == 2 * PSI_TOP
    worst = max((v, k) for k, v in per_feature.items() if ("symbol", "ETHUSDT") in k)
    assert dict(worst[1]) == {"symbol": "ETHUSDT", "feature": "1", "name": "ret_3"}
    assert s[("barsignal_live_model", (("score", "n"), ("symbol", "ETHUSDT")))] == 0  # no outcome yet
    # the next export of a symbol replaces its per-feature series (still PSI_TOP, never more)
    two = LiveMonitor(horizon=1, window=20, n_features=2, psi_every=10**9, symbol="ETHUSDT")
    for i in range(20):
        two.observe_signal(i * 60_000, 1.0, 0.5, np.full((1, 2), 5.0))
    two.update_psi()
    m.export_monitor(two)
    eth_now = [k for k in _samples(m) if k[0] == "barsignal_feature_psi" and ("symbol", "ETHUSDT") in k[1]]
    assert sorted(dict(k[1])["feature"] for k in eth_now) == ["0", "1"]


def test_each_symbol_has_its_own_artifact_figures() -> None:
    m = DaemonMetrics("BTCUSDT", symbols=("BTCUSDT", "ETHUSDT"))
    m.set_model("a" * 64, "onnxruntime", {"val_auc": 0.55, "val_brier": 0.249})
    m.set_reference("ETHUSDT", {"test_auc": 0.53})  # ETH's own artifact states an AUC only
    m.set_reference("XRPUSDT", {"val_auc": 0.9})  # not configured: no series
    ref = {k[1]: v for k, v in _samples(m).items() if k[0] == "barsignal_artifact_score"}
    assert ref == {(("key", "val_auc"), ("score", "auc"), ("symbol", "BTCUSDT")): 0.55,
                   (("key", "val_brier"), ("score", "brier"), ("symbol", "BTCUSDT")): 0.249,
                   (("key", "test_auc"), ("score", "auc"), ("symbol", "ETHUSDT")): 0.53}


def test_scoring_is_labelled_by_backend_and_the_artifact_figures_follow_the_model() -> None:
    m = DaemonMetrics("BTCUSDT")
    m.set_model("a" * 64, "onnxruntime", {"val_auc": 0.55, "test_auc": 0.51, "brier": 0.2485, "note": "x"})
    m.scoring.observe(0.0002)
    s = _samples(m)
    assert s[("barsignal_scoring_seconds_count", (("backend", "onnxruntime"),))] == 1
    assert s[("barsignal_artifact_score", (("key", "val_auc"), ("score", "auc"), ("symbol", "BTCUSDT")))] == 0.55
    assert s[("barsignal_artifact_score", (("key", "brier"), ("score", "brier"), ("symbol", "BTCUSDT")))] == 0.2485
    m.set_model("b" * 64, "tensorrt", {})  # a reload to an artifact that states no figure
    m.scoring.observe(0.0001)
    s = _samples(m)
    assert s[("barsignal_scoring_seconds_count", (("backend", "tensorrt"),))] == 1
    assert not [k for k in s if k[0] == "barsignal_artifact_score"]
    assert s[("barsignal_artifact_info", (("artifact", "b" * 16), ("backend", "tensorrt")))] == 1


def test_reference_scores_prefer_validation_and_skip_what_is_not_a_number() -> None:
    got = reference_scores({"auc": 0.52, "validation": {"roc_auc": 0.56, "brier": True}, "test_brier": math.nan,
                            "val_brier": 0.249})
    assert got == {"auc": ("validation.roc_auc", 0.56), "brier": ("val_brier", 0.249)}
    assert reference_scores(None) == {} and reference_scores({"test_auc": "0.5"}) == {}


def test_live_auc_is_the_project_s_roc_auc_over_the_resolved_predictions() -> None:
    mon = LiveMonitor(horizon=1, window=500)
    rng = np.random.default_rng(0)
    closes = 100 + np.cumsum(rng.standard_normal(300))
    p = np.round(rng.random(300), 2)  # ties too
    for i in range(300):
        mon.observe_bar(i * 60_000, float(closes[i]))
        mon.observe_signal(i * 60_000, float(closes[i]), float(p[i]), None)
    y = (np.diff(closes) > 0).astype(float)
    sc = mon.scores()
    assert sc["n"] == 299 and sc["auc"] == roc_auc(y, p[:-1])
    assert math.isclose(sc["brier"], float(((p[:-1] - y) ** 2).mean()))


def test_paper_equity_reads_the_paper_sink_s_ledger(tmp_path: Path) -> None:
    sigs = _make_signals(_spot_bars(120), seed=1)
    sink = build_sink("paper", PaperConfig(ledger="paper.sqlite"), tmp_path)
    read = paper_equity_reader([build_sink("jsonl", JsonlSinkConfig(path="s.jsonl"), tmp_path), sink])
    assert read is not None and read() == {}

    async def deliver() -> dict[str, float]:
        await sink.start()
        for s in sigs:
            await sink.send(s)
        got = read()
        await sink.close()
        return got

    got = asyncio.run(deliver())
    with sqlite3.connect(tmp_path / "paper.sqlite") as db:
        want = db.execute("SELECT symbol, equity FROM equity ORDER BY seq DESC LIMIT 1").fetchone()
    assert got == {want[0]: want[1]} and want[1] != 10_000.0
    assert paper_equity_reader([sink]) is not None and paper_equity_reader([]) is None


def test_live_move_scores_are_those_of_the_resolved_p_move_by_hand() -> None:
    """p_move resolved ``horizon`` bars later against |move| > threshold; a gap leaves no outcome; a
    monitor of an artifact without a move head exports NaN and n = 0."""
    from barsignal.engine.move import MoveSpec

    spec = MoveSpec(3, 10.0, "rvol_logistic", {"a": 0.0, "b": 0.0})
    mon = LiveMonitor(horizon=1, window=250, move=spec)
    rng = np.random.default_rng(1)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.0012, 400)))
    p = np.round(rng.random(400), 2)
    times = [i * 60_000 for i in range(400) if not 200 <= i < 205]  # a 5-bar hole
    idx = {t: i for i, t in enumerate(times)}
    for t in times:
        i = t // 60_000
        mon.observe_bar(t, float(closes[i]))
        mon.observe_signal(t, float(closes[i]), 0.5, None, None if i % 7 == 0 else float(p[i]))
    pairs = [(p[t // 60_000], float(abs(closes[(t + 180_000) // 60_000] / closes[t // 60_000] - 1) > 1e-3))
             for t in times if (t // 60_000) % 7 and t + 180_000 in idx]
    pp, yy = np.array(pairs[-250:]).T  # the window's last 250 outcomes
    sc = mon.move_scores()
    assert sc["n"] == 250 and sc["rate"] == yy.mean() and sc["auc"] == roc_auc(yy, pp)
    assert math.isclose(sc["brier"], float(((pp - yy) ** 2).mean())) and math.isclose(sc["mean_p"], pp.mean())
    bins = np.minimum((pp * 10).astype(int), 9)
    ece = sum((bins == b).mean() * abs(pp[bins == b].mean() - yy[bins == b].mean()) for b in range(10)
              if (bins == b).any())
    assert math.isclose(sc["ece"], ece)
    none = LiveMonitor(horizon=1, window=50)
    none.observe_signal(0, 1.0, 0.5, None, 0.7)
    none.observe_bar(60_000, 1.1)
    assert none.move_scores()["n"] == 0 and math.isnan(none.move_scores()["brier"])
