"""Live monitoring for every symbol of a many-symbol daemon: one LiveMonitor per symbol, with its own
model's horizon and PSI reference, fed that symbol's bars and signals only, exported with a
``symbol`` label; ``feature_drift`` is logged once, naming the symbol.

The daemon runs in-process on real simultaneous 1m bars of BTC, ETH and SOL (2023-04, the files of
issue 14). The default artifact's PSI reference is the distribution of BTC's own feature rows over
the signalled minutes (so BTC sits on it); ETH is scored by the same artifact and so measured
against BTC's bins; SOL has its own artifact ([model.symbols]) with horizon 2 and SOL's rows as its
reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
import structlog
import structlog.testing
from prometheus_client.parser import text_string_to_metric_families

from barsignal.daemon.app import Daemon
from barsignal.daemon.config import (
    Config,
    FeedConfig,
    JsonlSinkConfig,
    MetricsConfig,
    ModelConfig,
    SinksConfig,
    StateConfig,
)
from barsignal.daemon.metrics import PSI_CLEAR, PSI_MIN_ROWS, PSI_TOP, LiveMonitor, feature_name
from barsignal.features import batch
from barsignal.features.bar import Bar, BarFrame
from barsignal.node import engine_cache_dir, load_model, load_symbol_models
from barsignal.node import run as run_async
from tests import e2e as h
from tests.daemon.conftest import real_bars
from tests.daemon.test_multi_symbol import FILES, _Feed

SIGNALS = PSI_MIN_ROWS  # per symbol: the first PSI measure (every 60 signals from 240 rows) covers them all
BOUND = 0.25  # [metrics] drift_psi_warn (the default)


def _reference(rows: np.ndarray, bins: int = 10) -> dict:
    """Decile edges and bin fractions of normalized rows (as compression/report.py's psi_reference)."""
    edges, fractions = [], []
    for j in range(rows.shape[1]):
        e = np.quantile(rows[:, j], np.arange(1, bins) / bins)
        counts = np.bincount(np.searchsorted(e, rows[:, j], side="right"), minlength=bins)
        edges.append([float(v) for v in e])
        fractions.append([float(v) for v in counts / len(rows)])
    return {"edges": edges, "fractions": fractions, "rows": len(rows), "bins": bins}


def _artifact(dest: Path, fit: list[Bar], live: list[Bar], *, horizon: int, metrics: dict) -> Path:
    """The tiny model with a Normalizer fitted on ``fit`` and, as its training bins, the normalized
    newest rows of the windows the daemon will signal on ``live`` (its last SIGNALS bars)."""
    from barsignal.engine.artifact import write_artifact
    from barsignal.features.normalize import Normalizer
    from barsignal.features.spec import schema_hash
    from tests.tiny_model import write_tiny_onnx

    rows, ready = batch.compute_with_ready(BarFrame.from_bars(fit))
    norm = Normalizer.fit(rows[ready])
    live_rows, _ = batch.compute_with_ready(BarFrame.from_bars(live))
    newest = norm.transform(live_rows[-SIGNALS:]).astype(np.float32).astype(np.float64)  # as the window holds them
    static, dynamic = write_tiny_onnx(dest.parent / f".{dest.name}-onnx")
    write_artifact(dest, files={"static.onnx": static, "dynamic.onnx": dynamic}, model_config={"kind": "tiny"},
                   schema_hash=schema_hash(), normalization=norm.to_dict(),
                   signal={"long_threshold": 0.52, "short_threshold": 0.48, "rule": "threshold"},
                   variants={"tiny": {"onnx": "static.onnx", "onnx_dynamic": "dynamic.onnx"}},
                   default_variant="tiny", horizon=horizon, metrics=metrics, command=__name__,
                   psi_reference=_reference(newest))
    return dest


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_symbol_has_its_own_drift_and_live_scores(tmp_path: Path, tiny_artifact: Path, events) -> None:
    syms = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    cfg = Config(feed=FeedConfig(symbols=tuple(syms)), state=StateConfig(dir=str(tmp_path / "state")),
                 metrics=MetricsConfig(enabled=False, drift_psi_warn=BOUND),
                 sinks=SinksConfig(enabled=("jsonl",), jsonl=JsonlSinkConfig(path="s.jsonl", fsync="never")))
    warmup = load_model(cfg, str(tiny_artifact), None).warmup_bars  # the tiny model's (every artifact here)
    n = warmup - 1 + SIGNALS
    bars = {s: real_bars(n, start=30_000, path=FILES[s]) for s in syms}
    fit = real_bars(3000, start=20_000, path=FILES["BTCUSDT"])
    default = _artifact(tmp_path / "default", fit, bars["BTCUSDT"], horizon=1,
                        metrics={"val_auc": 0.55, "val_brier": 0.249})
    sol = _artifact(tmp_path / "sol", fit, bars["SOLUSDT"], horizon=2, metrics={"val_auc": 0.53})
    cfg = msgspec.structs.replace(cfg, model=ModelConfig(symbols={"SOLUSDT": str(sol)}))
    loaded = load_model(cfg, str(default), engine_cache_dir(cfg))
    d: Daemon | None = None

    def factory(feed_cfg, want):
        assert d is not None
        return _Feed(bars, d.request_stop)

    d = Daemon(cfg, artifact_dir=str(default), loaded=loaded, symbol_models=load_symbol_models(cfg, None),
               source_factory=factory)
    assert run_async(d.run()) == 0
    got = h.read_jsonl(tmp_path / "state" / "s.jsonl")
    counts = {s: len([g for g in got if g["symbol"] == s]) for s in syms}
    assert counts == dict.fromkeys(syms, SIGNALS)

    # One monitor per symbol, with the horizon and training bins of the model that scores it.
    mons = d.monitors
    assert {s: (m.symbol, m.h, m.psi_source) for s, m in mons.items()} == {
        "BTCUSDT": ("BTCUSDT", 1, "artifact training bins"), "ETHUSDT": ("ETHUSDT", 1, "artifact training bins"),
        "SOLUSDT": ("SOLUSDT", 2, "artifact training bins")}
    assert len({id(m) for m in mons.values()}) == 3 and [nd.monitor for nd in d.nodes] == [mons[s] for s in syms]
    assert all(m.psi_rows == SIGNALS for m in mons.values())

    s = _samples(d.metrics.render().decode())
    psi_max = {sym: s[("barsignal_feature_psi_max", frozenset({("symbol", sym)}))] for sym in syms}
    # BTC and SOL sit on their own training bins; ETH, measured against BTC's, is far off.
    assert psi_max["BTCUSDT"] < 0.05 and psi_max["SOLUSDT"] < 0.05, psi_max
    assert psi_max["ETHUSDT"] > 4 * BOUND, psi_max
    assert psi_max == {sym: float(m.psi_values.max()) for sym, m in mons.items()}
    assert s[("barsignal_feature_psi_bound", frozenset())] == BOUND
    per_feature = [dict(k[1]) for k in s if k[0] == "barsignal_feature_psi"]
    assert sorted(f["symbol"] for f in per_feature) == sorted(syms * PSI_TOP)  # bounded: 3 a symbol, not 33
    worst_eth = max((v, dict(k[1])) for k, v in s.items()
                    if k[0] == "barsignal_feature_psi" and ("symbol", "ETHUSDT") in k[1])
    assert worst_eth[0] == psi_max["ETHUSDT"]
    assert worst_eth[1]["feature"] == str(int(mons["ETHUSDT"].psi_values.argmax()))

    # Live scores, every symbol: exported every 10 signals; an outcome is known h bars after its signal.
    for sym, hz in (("BTCUSDT", 1), ("ETHUSDT", 1), ("SOLUSDT", 2)):
        live = {k: s[("barsignal_live_model", frozenset({("symbol", sym), ("score", k)}))]
                for k in ("n", "brier", "auc", "accuracy", "ece")}
        closes = [g["bar_close"] for g in got if g["symbol"] == sym]
        ties = sum(a == b for a, b in zip(closes, closes[hz:], strict=False))  # no direction: no outcome
        assert ties > 0 and live["n"] == SIGNALS - hz - ties, (sym, ties, live)  # the last signal was exported
        assert live == mons[sym].scores(), sym
        assert all(math.isfinite(v) for v in live.values()) and 0 < live["brier"] < 1, (sym, live)
    assert not [k for k in s if ("symbol", "XRPUSDT") in k[1] or ("symbol", "") in k[1]]
    # Each symbol's live scores are set against the figures of the artifact that scores it.
    ref = {(dict(k[1])["symbol"], dict(k[1])["score"]): v for k, v in s.items() if k[0] == "barsignal_artifact_score"}
    assert ref == {("BTCUSDT", "auc"): 0.55, ("BTCUSDT", "brier"): 0.249, ("ETHUSDT", "auc"): 0.55,
                   ("ETHUSDT", "brier"): 0.249, ("SOLUSDT", "auc"): 0.53}

    # feature_drift: for ETH only, naming it and its worst feature.
    drift = _drift(events)
    assert [(e["event"], e["symbol"]) for e in drift] == [("feature_drift", "ETHUSDT")], drift
    assert drift[0]["name"] == feature_name(int(mons["ETHUSDT"].psi_values.argmax())), drift


@pytest.fixture
def events() -> Iterator[list[dict]]:
    """The log events (dicts) of the test, whatever an earlier test configured (format, stream, level)."""
    from barsignal import log as logmod

    old = structlog.get_config()
    logmod.configure(level="info", fmt="json")
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**old)


def _drift(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] in ("feature_drift", "feature_drift_cleared")]


def test_feature_drift_is_logged_once_per_symbol_per_episode(events) -> None:
    """Two symbols measured many times: the drifting one logs one ``feature_drift`` line per episode,
    naming itself, though its PSI wavers about the bound (an episode ends under PSI_CLEAR of the
    bound); the steady one logs none. One feature, two training bins (half the rows each side of 0):
    a share p of rows above 0 gives PSI (p - 0.5) ln(p / (1 - p))."""
    ref = {"edges": [[0.0]], "fractions": [[0.5, 0.5]]}
    mons = {s: LiveMonitor(horizon=1, window=100, n_features=1, psi_warn=BOUND, psi_every=100, reference=ref,
                           symbol=s) for s in ("ETHUSDT", "BTCUSDT")}

    def measure(sym: str, p: float) -> float:  # 100 rows: the window, then one PSI measure on them
        for i in range(100):
            mons[sym].observe_signal(0, 1.0, 0.5, np.array([[1.0 if i < round(100 * p) else -1.0]]))
        return float(mons[sym].psi_values[0])

    # p:      0.9 (0.88)  0.73 (0.23) 0.75 (0.27) 0.73  0.6 (0.04)  0.6  0.9  0.9
    got = [measure("ETHUSDT", p) for p in (0.9, 0.73, 0.75, 0.73, 0.6, 0.6, 0.9, 0.9)]
    steady = [measure("BTCUSDT", 0.5) for _ in range(8)]
    assert [v > BOUND for v in got] == [True, False, True, False, False, False, True, True], got
    lines = _drift(events)
    kinds = [e["event"] for e in lines]
    assert kinds == ["feature_drift", "feature_drift_cleared", "feature_drift"], lines  # not one per crossing
    assert all(e["symbol"] == "ETHUSDT" for e in lines) and lines[0]["name"] == feature_name(0), lines
    assert PSI_CLEAR * BOUND < got[1] < BOUND and max(steady) < 1e-3, (got, steady)  # the wavering was real


def test_drift_is_not_judged_on_fewer_rows_than_the_minimum(events) -> None:
    """Rows drawn from the training distribution itself: on 60 of them the largest of 33 PSIs is over
    the bound (small-sample bias), so nothing is measured, exported or logged before PSI_MIN_ROWS."""
    from barsignal.daemon.metrics import DaemonMetrics

    rng = np.random.default_rng(3)
    mon = LiveMonitor(horizon=1, psi_warn=BOUND, symbol="ETHUSDT")  # standard-normal deciles, 33 features
    early = LiveMonitor(horizon=1, psi_warn=BOUND, symbol="EARLY", min_rows=60)  # what 60 rows would say
    m = DaemonMetrics("ETHUSDT")
    for i in range(PSI_MIN_ROWS):
        row = rng.standard_normal((1, 33))
        mon.observe_signal(i, 1.0, 0.5, row)
        early.observe_signal(i, 1.0, 0.5, row)
        if i + 1 == 60:
            assert early.psi_rows == 60 and early.psi_values.max() > BOUND and mon.psi_rows == 0
            m.export_monitor(mon)
            got = _samples(m.render().decode())
            assert math.isnan(got[("barsignal_feature_psi_max", frozenset({("symbol", "ETHUSDT")}))])
            assert not [k for k in got if k[0] == "barsignal_feature_psi"]
    assert mon.psi_rows == PSI_MIN_ROWS and mon.psi_values.max() < BOUND
    warned = [e for e in _drift(events) if e["event"] == "feature_drift"]
    assert len(warned) == 1 and warned[0]["symbol"] == "EARLY", warned


def test_a_reload_that_changes_a_symbols_artifact_gives_it_a_fresh_monitor(tmp_path: Path, tiny_artifact: Path) -> None:
    """SIGHUP to a config that gives ETH its own artifact (horizon 2): ETH's monitor starts afresh with
    that horizon and that artifact's figures; BTC's (artifact unchanged) goes on as it was."""
    from barsignal.daemon import config as cfgmod

    syms = ["BTCUSDT", "ETHUSDT"]
    bars = {s: real_bars(800, start=30_000, path=FILES[s]) for s in syms}
    own = _artifact(tmp_path / "eth", bars["BTCUSDT"][:3000], bars["ETHUSDT"], horizon=2,
                    metrics={"val_brier": 0.26})
    conf = tmp_path / "c.toml"
    body = (f'[feed]\nsymbols = ["BTCUSDT", "ETHUSDT"]\n[sinks]\nenabled = ["jsonl"]\n[sinks.jsonl]\npath = "s.jsonl"\n'
            f'fsync = "never"\n[state]\ndir = "{tmp_path / "state"}"\n[metrics]\nenabled = false\n'
            f'[model]\nartifact = "{tiny_artifact}"\n')
    conf.write_text(body)
    cfg = cfgmod.load(conf)
    d: Daemon | None = None
    before: dict[str, object] = {}
    swap_at = 780

    class Hup(_Feed):
        async def stream(self):
            i = 0
            async for sym, bar in super().stream():
                yield sym, bar
                i += 1
                if i == swap_at * len(syms):
                    assert d is not None
                    before.update(d.monitors)
                    conf.write_text(body + f'[model.symbols]\nETHUSDT = "{own}"\n')
                    assert await d.reload()

    def factory(feed_cfg, want):
        assert d is not None
        return Hup(bars, d.request_stop)

    d = Daemon(cfg, config_path=str(conf), loaded=load_model(cfg, None, engine_cache_dir(cfg)), source_factory=factory)
    assert run_async(d.run()) == 0
    btc, eth = d.monitors["BTCUSDT"], d.monitors["ETHUSDT"]
    assert btc is before["BTCUSDT"] and btc.h == 1 and len(btc.outcomes) > 40
    assert eth is not before["ETHUSDT"] and eth.h == 2 and d.nodes[1].monitor is eth
    assert eth.artifact == d.nodes[1].loaded.model.artifact_hash != btc.artifact
    closes = [b.close for b in bars["ETHUSDT"][swap_at:]]
    ties = sum(a == b for a, b in zip(closes, closes[2:], strict=False))  # no direction: no outcome
    # only the new model's predictions, resolved 2 bars on
    assert len(eth.outcomes) == 800 - swap_at - 2 - ties, (len(eth.outcomes), ties)
    ref = {(dict(k[1])["symbol"], dict(k[1])["score"]): v for k, v in _samples(d.metrics.render().decode()).items()
           if k[0] == "barsignal_artifact_score"}
    assert ref == {("ETHUSDT", "brier"): 0.26}  # the tiny default states no figure; ETH's own does
