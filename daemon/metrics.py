"""Prometheus metrics and ``/healthz`` on loopback (127.0.0.1 by default), plus live model monitoring.

A private ``CollectorRegistry`` per daemon (no global state). Feed counters and the outbox depth
are read at scrape time from the objects that own them. The HTTP endpoint is a tiny asyncio
server in the daemon's own loop: ``GET /metrics`` (text exposition) and ``GET /healthz``
(JSON; 200 while data is fresh, 503 while starting or stale).

Live monitoring (:class:`LiveMonitor`, one per symbol, with that symbol's model's horizon and
reference): once ``horizon`` bars have passed, a prediction's outcome (close at t+h above close at
t) is known; rolling accuracy, Brier score and calibration error are exported over the last
``monitor_window`` outcomes. Feature drift: PSI of the newest feature row of each window against the
training distribution. The artifact's normalization makes the training features mean 0 / std 1; the
reference is the manifest's ``features.psi_reference`` (per-feature bin edges and fractions) when the
artifact ships one, else the standard normal's deciles. Each feature's bound is the artifact's
calibrated one at the rows held (``features.psi_bounds``; consecutive minutes are not independent
draws, so the PSI of in-distribution rows is far above a textbook 0.25), else ``[metrics]
drift_psi_warn``; ``barsignal_feature_drift_ratio{symbol}`` (largest PSI / bound) is what the alert
watches.

The move head (an artifact with a ``move`` section): once its ``horizon`` bars have passed, a
p_move's outcome (``|close[t+h] / close[t] - 1| > threshold_bp``) is known; Brier, the Brier of the
window's own exceedance rate (``brier_base``: a p_move with skill scores below it), calibration, AUC,
the realized rate and the mean p_move are exported over the last ``monitor_window`` outcomes as
``barsignal_live_move{symbol,score}`` (:data:`MOVE_SCORES`).

Label cardinality is bounded by the config: every ``symbol`` label is one of ``[feed] symbols``. Per
symbol: ``barsignal_live_model{symbol,score}`` (5 scores), ``barsignal_live_move{symbol,score}`` (7),
``barsignal_feature_psi_max{symbol}``,
``barsignal_artifact_score{symbol,score,key}`` (at most 2) and ``barsignal_feature_psi{symbol,feature,name}``
for the symbol's :data:`PSI_TOP` worst features only (not all 33: 400 symbols make 1,200 series, not 13,200).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from barsignal.daemon.drift import RollingOutcomes, RollingPSI
from barsignal.engine.drift import bounds_at
from barsignal.engine.metrics import roc_auc
from barsignal.engine.move import MoveSpec
from barsignal.features.spec import NAMES
from barsignal.log import get_logger

log = get_logger(__name__)

LATENCY_BUCKETS = (50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6, 1e-3, 1.5e-3, 2e-3, 5e-3, 10e-3, 50e-3,
                   0.25, 1.0)
# Standard-normal deciles: equal-probability bins for a mean-0 / std-1 training feature.
_NORMAL_DECILES = np.array([-1.2815516, -0.8416212, -0.5244005, -0.2533471, 0.0,
                            0.2533471, 0.5244005, 0.8416212, 1.2815516])
LIVE_SCORES = ("accuracy", "brier", "ece", "auc", "n")
MOVE_SCORES = ("brier", "brier_base", "ece", "auc", "rate", "mean_p", "n")  # barsignal_live_move{score}
PSI_TOP = 3  # per symbol, the worst features exported with their own PSI series
PSI_CLEAR = 0.8  # a drift episode ends once the largest PSI is back under this share of the bound
# Rows before the PSI is measured at all (or the window, if smaller). Fewer rows bias it up by about
# (bins - 1) / rows: rows drawn from the training distribution itself give a largest-of-33 PSI over
# 0.25 in 98.5 % of draws of 60 rows, and in none of 200 draws of 240 (median 0.42 and 0.08).
PSI_MIN_ROWS = 240
SIGNAL_ACTIONS = ("long", "short", "flat")  # engine.signal.ACTIONS: every series exists from the start
RELOAD_RESULTS = ("ok", "refused")
# Manifest ``metrics`` keys read as the artifact's own figure for a live score, first found wins
# (validation first; ``barsignal_artifact_score{key}`` says which one was used).
REFERENCE_KEYS = {"auc": ("val_auc", "validation_auc", "val_roc_auc", "auc", "roc_auc", "test_auc"),
                  "brier": ("val_brier", "validation_brier", "brier", "test_brier")}


class LiveMonitor:
    """One symbol's rolling live accuracy / Brier / calibration, and feature drift (PSI). Bounded state.

    PSI is measured every ``psi_every`` signals once ``min_rows`` rows are held (default
    ``min(PSI_MIN_ROWS, window)``); before that ``psi_rows`` is 0 and nothing is judged.
    Each feature's PSI is judged against its own bound for the rows held: the artifact's calibrated
    ``bounds`` (``features.psi_bounds``: the null distribution's 99.5 % at that window size,
    ``engine.drift``), else the fixed ``psi_warn`` for every feature. ``drift_ratio`` is the largest
    PSI / bound. ``feature_drift`` is logged once per episode (the ratio goes over 1), naming the
    symbol and the feature; ``feature_drift_cleared`` when it is back under ``PSI_CLEAR`` (hysteresis:
    a PSI that wavers around its bound is one episode, not a line per measure)."""

    def __init__(self, horizon: int, window: int = 1440, step_ms: int = 60_000, n_features: int = 33,
                 psi_warn: float = 0.25, psi_every: int = 60,
                 reference: dict[str, Any] | None = None, symbol: str = "", artifact: str = "",
                 min_rows: int | None = None, move: MoveSpec | None = None,
                 bounds: Mapping[str, Any] | None = None) -> None:
        self.symbol = symbol
        self.artifact = artifact  # the hash of the model monitored (a reload to another starts a new monitor)
        self.h = max(1, int(horizon))
        self.step_ms = step_ms
        self.pending: deque[tuple[int, float, float]] = deque(maxlen=self.h + 8)  # open_time, close, p_up
        self.closes: deque[tuple[int, float]] = deque(maxlen=self.h + 1)
        self.outcomes = RollingOutcomes(window)  # (p_up, up) of resolved predictions; ties are dropped
        self.psi_warn = psi_warn
        self.psi_every = max(1, min(psi_every, window))  # at least once a window
        self.min_rows = max(1, min(PSI_MIN_ROWS, window) if min_rows is None else min_rows)
        self.n_features = n_features
        ref = reference or {}
        if "edges" in ref and "fractions" in ref:
            self.edges = [np.asarray(e, np.float64) for e in ref["edges"]]
            self.fractions = [np.asarray(f, np.float64) for f in ref["fractions"]]
            self.psi_source = "artifact training bins"
        else:
            self.edges = [_NORMAL_DECILES] * n_features
            self.fractions = [np.full(10, 0.1)] * n_features
            self.psi_source = "standard-normal deciles"
            log.info("psi_reference_fallback", symbol=symbol, reference=self.psi_source,
                     hint="the artifact ships no training bins (features.psi_reference): drift PSI is "
                          "measured against N(0, 1) deciles; rebuild the artifact for training bins")
        self.rows = RollingPSI(self.edges[:n_features], self.fractions[:n_features], window)  # binned rows
        # -- calibrated drift bounds (features.psi_bounds) -----------------------------------------
        self.bounds = _usable_bounds(bounds, window, symbol, psi_warn) if self.psi_source.startswith("artifact") \
            else None
        if self.bounds is not None:  # never measured on fewer rows than the smallest calibrated size
            self.min_rows = max(self.min_rows, int(self.bounds["sizes"][0]))
        self.bound_source = "calibrated" if self.bounds is not None else "drift_psi_warn"
        self.psi_bound_values = np.full(n_features, float(psi_warn))  # each feature's bound at the rows held
        self.drift_ratio = math.nan  # max over the features of PSI / bound (NaN: not measured yet)
        # -- end calibrated drift bounds -------------------------------------------------------------
        self.psi_values = np.zeros(n_features)
        self.psi_rows = 0  # rows the last PSI was measured on (0: not measured yet)
        self._since_psi = 0
        self.drift_warned = False
        # -- the move head: (open_time, close, p_move) until its horizon has passed, then (p_move, exceeded)
        self.move = move
        mh = move.horizon if move is not None else 1
        self.move_pending: deque[tuple[int, float, float]] = deque(maxlen=mh + 8)
        self.move_outcomes = RollingOutcomes(window if move is not None else 1)

    def observe_bar(self, open_time: int, close: float) -> None:
        """A closed bar: resolve the prediction made ``h`` bars before it, if any."""
        target = open_time - self.h * self.step_ms
        while self.pending and self.pending[0][0] < target:
            self.pending.popleft()  # its t+h bar never came (a gap): no outcome
        if self.pending and self.pending[0][0] == target:
            _, c0, p = self.pending.popleft()
            if close != c0:  # the label is the direction; a flat move is no outcome (as in training)
                self.outcomes.append(p, 1 if close > c0 else 0)
        if self.move is not None:
            self._resolve_move(open_time, close)

    def _resolve_move(self, open_time: int, close: float) -> None:
        """The p_move made ``move.horizon`` bars before this bar: its outcome is known now."""
        mv, pend = self.move, self.move_pending
        assert mv is not None
        target = open_time - mv.horizon * self.step_ms
        while pend and pend[0][0] < target:
            pend.popleft()  # its t+h bar never came (a gap): no outcome
        if pend and pend[0][0] == target:
            _, c0, p = pend.popleft()
            self.move_outcomes.append(p, 1 if abs(close / c0 - 1.0) > mv.threshold_bp / 1e4 else 0)

    def observe_signal(self, open_time: int, close: float, p_up: float, window: np.ndarray | None,
                       p_move: float | None = None) -> None:
        self.pending.append((open_time, close, p_up))
        if p_move is not None and self.move is not None:
            self.move_pending.append((open_time, close, p_move))
        if window is not None:
            self.rows.add(window[-1])
            self._since_psi += 1
            if self._since_psi >= self.psi_every:
                self.update_psi()

    def update_psi(self) -> np.ndarray:
        self._since_psi = 0
        if len(self.rows) < self.min_rows:
            return self.psi_values
        self.psi_values = self.rows.psi()
        self.psi_rows = len(self.rows)
        b = bounds_at(self.bounds, self.psi_rows) if self.bounds is not None else None
        self.psi_bound_values = b[: len(self.psi_values)] if b is not None else np.full(len(self.psi_values),
                                                                                         float(self.psi_warn))
        ratio = self.psi_values / self.psi_bound_values
        j = int(ratio.argmax())
        self.drift_ratio = worst = float(ratio[j])
        if worst > 1.0 and not self.drift_warned:
            log.warning("feature_drift", symbol=self.symbol, psi=round(float(self.psi_values[j]), 4), feature=j,
                        name=feature_name(j), bound=round(float(self.psi_bound_values[j]), 4),
                        bound_source=self.bound_source, rows=self.psi_rows, reference=self.psi_source)
            self.drift_warned = True
        elif worst <= PSI_CLEAR and self.drift_warned:
            log.info("feature_drift_cleared", symbol=self.symbol, ratio=round(worst, 4), rows=self.psi_rows)
            self.drift_warned = False
        return self.psi_values

    def worst_features(self, k: int = PSI_TOP) -> list[tuple[int, float]]:
        """The ``k`` features nearest (or furthest over) their bound, by PSI / bound, that first:
        ``[(index, psi)]`` (none before the first measurement)."""
        if not self.psi_rows:
            return []
        order = np.argsort(-(self.psi_values / self.psi_bound_values), kind="stable")[:k]
        return [(int(j), float(self.psi_values[j])) for j in order]

    def scores(self) -> dict[str, float]:
        """accuracy, brier, ece (expected calibration error, 10 bins), n."""
        if not len(self.outcomes):
            return {"accuracy": math.nan, "brier": math.nan, "ece": math.nan, "n": 0.0}
        p, y = self.outcomes.arrays()
        bins = np.minimum((p * 10).astype(int), 9)
        ece = 0.0
        for b in range(10):
            m = bins == b
            if m.any():
                ece += m.mean() * abs(p[m].mean() - y[m].mean())
        return {"accuracy": float(((p >= 0.5) == (y == 1)).mean()), "brier": float(((p - y) ** 2).mean()),
                "ece": float(ece), "auc": roc_auc(y, p), "n": float(len(p))}

    def move_scores(self) -> dict[str, float]:
        """The move head's :data:`MOVE_SCORES` over the resolved p_move (NaN and n = 0 before any)."""
        if self.move is None or not len(self.move_outcomes):
            return {k: 0.0 if k == "n" else math.nan for k in MOVE_SCORES}
        p, y = self.move_outcomes.arrays()
        rate = float(y.mean())
        return {"brier": float(((p - y) ** 2).mean()), "brier_base": rate * (1.0 - rate), "ece": _ece(p, y),
                "auc": roc_auc(y, p) if 0.0 < rate < 1.0 else math.nan, "rate": rate, "mean_p": float(p.mean()),
                "n": float(len(p))}


def _ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width bins of ``p``."""
    b = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    m = n > 0
    gap = np.abs(np.bincount(b, p, bins)[m] / n[m] - np.bincount(b, y, bins)[m] / n[m])
    return float(np.sum(n[m] / len(p) * gap))


# -- calibrated drift bounds ---------------------------------------------------------------------


def _usable_bounds(bounds: Mapping[str, Any] | None, window: int, symbol: str, psi_warn: float
                   ) -> Mapping[str, Any] | None:
    """The artifact's ``psi_bounds`` if they cover ``monitor_window``; what a window outside the
    calibrated sizes does is logged once. Below the smallest size: the fixed ``drift_psi_warn`` (a
    PSI over so few rows has no calibrated null). Above the largest: the largest size's bounds
    (conservative: a PSI over more rows is less noisy, so its null bound is lower)."""
    if not bounds or not bounds.get("sizes"):
        return None
    sizes = [int(x) for x in bounds["sizes"]]
    if window < sizes[0]:
        log.warning("psi_bounds_not_calibrated", symbol=symbol, monitor_window=window, smallest=sizes[0],
                    bound=psi_warn, hint=f"the artifact's drift bounds start at {sizes[0]} rows: the fixed "
                    f"[metrics] drift_psi_warn = {psi_warn:g} is used; set monitor_window >= {sizes[0]}")
        return None
    if window > sizes[-1]:
        log.info("psi_bounds_largest_size", symbol=symbol, monitor_window=window, largest=sizes[-1],
                 hint=f"beyond {sizes[-1]} rows the bounds of {sizes[-1]} rows are used (conservative); "
                 "recompute them with `barsignal compress drift-bounds` for this window")
    return bounds


# -- end calibrated drift bounds -----------------------------------------------------------------


def feature_name(j: int) -> str:
    """The schema's name of feature ``j`` (features.spec.NAMES), else its index."""
    return NAMES[j] if 0 <= j < len(NAMES) else str(j)


def reference_scores(metrics: Mapping[str, Any] | None) -> dict[str, tuple[str, float]]:
    """The artifact's own figures for the live scores: ``{score: (manifest key, value)}``.

    Looks at the manifest's ``metrics`` (and a nested ``validation``/``val`` dict, whose keys win)
    for the first key of :data:`REFERENCE_KEYS` holding a finite number."""
    m = dict(metrics or {})
    nested = next((m[k] for k in ("validation", "val") if isinstance(m.get(k), Mapping)), {})
    out: dict[str, tuple[str, float]] = {}
    for score, keys in REFERENCE_KEYS.items():
        for where, d in (("validation.", nested), ("", m)):
            hit = next(((k, d[k]) for k in (*keys, score) if isinstance(d.get(k), int | float)
                        and not isinstance(d.get(k), bool) and math.isfinite(d[k])), None)
            if hit is not None:
                out[score] = (where + hit[0], float(hit[1]))
                break
    return out


class DaemonMetrics:
    """Every metric the daemon exports, on a private registry.

    Labelled series an alert watches are created at start (zero or NaN), so that "no signal",
    "reload refused" or "sink failing" rules see a series from the first scrape on (the live scores
    and the largest PSI of every configured symbol too). ``symbols`` are the only ``symbol`` label
    values (``symbol`` alone: a one-symbol daemon); ``sinks`` are the enabled sinks. The deploy/ rules
    and dashboard query these names (tests/deploy checks each one has samples on a real Prometheus).
    """

    def __init__(self, symbol: str = "", sinks: Sequence[str] = (), symbols: Sequence[str] = ()) -> None:
        self.registry = r = CollectorRegistry()
        self.symbol = symbol
        self.symbols = tuple(dict.fromkeys(symbols or ((symbol,) if symbol else ())))  # the only symbol labels
        self.sinks = tuple(dict.fromkeys(sinks))
        ProcessCollector(registry=r)  # process_start_time_seconds (restarts), CPU, RSS, fds
        self.signals = Counter("barsignal_signals", "signals emitted, by action", ["action"], registry=r)
        self.delivered = Counter("barsignal_sink_delivered", "signals delivered, by sink", ["sink"],
                                 registry=r)
        self.sink_failures = Counter("barsignal_sink_failures", "failed delivery attempts, by sink", ["sink"],
                                     registry=r)
        self.tick_to_signal = Histogram("barsignal_tick_to_signal_seconds",
                                        "closing frame received -> signal in the outbox and queues",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.scoring_by_backend = Histogram("barsignal_scoring_seconds", "model scoring time per window, by backend",
                                            ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.scoring: Any = None  # the child of the backend in use (set_model); .observe(seconds)
        self.reloads = Counter("barsignal_reloads", "SIGHUP reloads, by result", ["result"], registry=r)
        self.live = Gauge("barsignal_live_model", "rolling live model scores once h bars passed, by symbol",
                          ["symbol", "score"], registry=r)
        self.live_move = Gauge("barsignal_live_move", "rolling live scores of p_move (the move head) once its "
                               "horizon passed, by symbol (NaN, n = 0: none yet, or no move head)",
                               ["symbol", "score"], registry=r)
        self.psi = Gauge("barsignal_feature_psi", f"feature drift: PSI vs the symbol's training distribution, "
                         f"its {PSI_TOP} worst features only", ["symbol", "feature", "name"], registry=r)
        self.psi_max = Gauge("barsignal_feature_psi_max", "largest feature PSI, by symbol (NaN: not measured yet)",
                             ["symbol"], registry=r)
        self.psi_bound = Gauge("barsignal_feature_psi_bound", "the fixed PSI drift bound ([metrics] "
                               "drift_psi_warn), for an artifact without calibrated bounds", registry=r)
        self.drift_ratio = Gauge("barsignal_feature_drift_ratio", "largest PSI / bound over the features, by symbol "
                                 "(bounds: the artifact's calibrated ones, else drift_psi_warn; NaN: not measured "
                                 "yet)", ["symbol"], registry=r)
        self.info = Gauge("barsignal_artifact_info", "the model in use", ["artifact", "backend"], registry=r)
        self.reference = Gauge("barsignal_artifact_score", "the figure for a live score of the artifact a symbol "
                               "uses (manifest metrics; key names which)", ["symbol", "score", "key"], registry=r)
        self._refs: dict[str, dict[str, tuple[str, float]]] = {}  # symbol -> reference_scores()
        self._psi_shown: dict[str, list[tuple[str, str, str]]] = {}  # symbol -> its barsignal_feature_psi labels
        # By symbol: one series per configured symbol, created here (bounded; no other label value).
        self.symbol_signals = Counter("barsignal_symbol_signals", "signals emitted, by symbol", ["symbol"],
                                      registry=r)
        self._symbol_signals = {s: self.symbol_signals.labels(symbol=s) for s in self.symbols}
        for a in SIGNAL_ACTIONS:
            self.signals.labels(action=a)
        for res in RELOAD_RESULTS:
            self.reloads.labels(result=res)
        for s in dict.fromkeys(sinks):
            self.delivered.labels(sink=s)
            self.sink_failures.labels(sink=s)
        for s in self.symbols:
            for k in LIVE_SCORES:
                self.live.labels(symbol=s, score=k).set(0.0 if k == "n" else math.nan)
            for k in MOVE_SCORES:
                self.live_move.labels(symbol=s, score=k).set(0.0 if k == "n" else math.nan)
            self.psi_max.labels(symbol=s).set(math.nan)
            self.drift_ratio.labels(symbol=s).set(math.nan)
        self.psi_bound.set(math.nan)
        self._sources: dict[str, Callable[[], Any]] = {}
        r.register(_Collector(self))

    def bind(self, *, feed_stats: Callable[[], Any] | None = None,
             outbox_depth: Callable[[], int] | None = None,
             last_bar_age: Callable[[], float | dict[str, float]] | None = None,
             gpu: Callable[[], dict[str, float]] | None = None,
             keep_warm: Callable[[], Any] | None = None,
             paper_equity: Callable[[], dict[str, float]] | None = None,
             dead_letters: Callable[[], tuple[dict[str, int], dict[str, int]]] | None = None) -> None:
        """Read these at scrape time. ``dead_letters``: (dead letters made by this process, dead letters
        kept in the outbox), by sink."""
        for k, v in (("feed", feed_stats), ("outbox", outbox_depth), ("age", last_bar_age), ("gpu", gpu),
                     ("keep_warm", keep_warm), ("paper", paper_equity), ("dead", dead_letters)):
            if v is not None:
                self._sources[k] = v

    def count_signal(self, symbol: str) -> None:
        """One signal of ``symbol`` (a configured one; any other is not given a series)."""
        c = self._symbol_signals.get(symbol)
        if c is not None:
            c.inc()

    def _known(self, symbol: str) -> bool:
        return not self.symbols or symbol in self.symbols

    def set_model(self, artifact: str, backend: str, metrics: Mapping[str, Any] | None = None) -> None:
        """The (default) model in use: its hash and backend, and, with ``metrics`` (its manifest's),
        its own figures for every configured symbol (:meth:`set_reference` then sets a symbol's own)."""
        self.info.clear()
        self.info.labels(artifact=artifact[:16], backend=backend).set(1)
        self.scoring = self.scoring_by_backend.labels(backend=backend)
        if metrics is not None:
            for s in self.symbols or (self.symbol,):
                self.set_reference(s, metrics)

    def set_reference(self, symbol: str, metrics: Mapping[str, Any] | None) -> None:
        """``symbol``'s artifact's own figures for the live scores (its manifest ``metrics``)."""
        if not self._known(symbol):
            return
        for score, (key, _) in self._refs.pop(symbol, {}).items():
            self.reference.remove(symbol, score, key)
        self._refs[symbol] = refs = reference_scores(metrics)
        for score, (key, value) in refs.items():
            self.reference.labels(symbol=symbol, score=score, key=key).set(value)

    def export_monitor(self, mon: LiveMonitor) -> None:
        """Publish one symbol's monitor (``mon.symbol``; a symbol not configured gets no series)."""
        sym = mon.symbol or self.symbol
        if not self._known(sym):
            return
        for k, v in mon.scores().items():
            self.live.labels(symbol=sym, score=k).set(v)
        for k, v in mon.move_scores().items():
            self.live_move.labels(symbol=sym, score=k).set(v)
        for labels in self._psi_shown.pop(sym, []):
            self.psi.remove(*labels)
        shown = []
        for j, v in mon.worst_features():
            labels = (sym, str(j), feature_name(j))
            self.psi.labels(*labels).set(v)
            shown.append(labels)
        self._psi_shown[sym] = shown
        self.psi_max.labels(symbol=sym).set(float(mon.psi_values.max()) if shown else math.nan)
        self.drift_ratio.labels(symbol=sym).set(mon.drift_ratio if shown else math.nan)
        self.psi_bound.set(mon.psi_warn)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    """Scrape-time metrics from the feed's counters, the outbox and the GPU."""

    def __init__(self, m: DaemonMetrics) -> None:
        self.m = m

    def collect(self) -> Any:
        src = self.m._sources
        st = src["feed"]() if "feed" in src else None
        if st is not None:
            bars = CounterMetricFamily("barsignal_bars", "closed bars used, by source", labels=["source"])
            bars.add_metric(["ws"], st.bars_ws)
            bars.add_metric(["rest"], st.bars_rest)
            yield bars
            for name, doc, val in (
                ("barsignal_gaps", "holes REST could not fill", st.gaps),
                ("barsignal_missing_bars", "bars inside those holes", st.missing_bars),
                ("barsignal_backfilled_bars", "bars backfilled over REST after a reconnect", st.backfilled),
                ("barsignal_reconnects", "websocket reconnects", st.reconnects),
                ("barsignal_bad_frames", "frames that failed to decode or validate", st.bad_frames),
                ("barsignal_dropped_frames", "duplicate, late or out-of-order closed klines dropped",
                 st.duplicates + st.late),
                ("barsignal_rest_failures", "failed REST requests", st.rest_failures),
                ("barsignal_future_bars", "closed bars dated after the exchange's current minute, dropped",
                 getattr(st, "future_bars", 0)),
                ("barsignal_invalid_bars", "bars not finite, consistent and in range (ws or REST), dropped",
                 getattr(st, "invalid_bars", 0)),
                ("barsignal_rest_rate_limited", "REST answers 429 (rate limited) or 418 (IP banned)",
                 getattr(st, "rest_rate_limited", 0)),
                ("barsignal_rest_weight_spent", "REST request weight spent (klines: 2 a call)",
                 getattr(st, "rest_weight_spent", 0)),
                ("barsignal_rest_paced", "REST calls that waited for the [feed] rest_weight_per_minute budget",
                 getattr(st, "rest_paced", 0)),
                ("barsignal_clock_ahead_frames", "frames whose event time was past the local clock plus the "
                 "measured offset to the exchange (and [feed] clock_tolerance_s): not believed",
                 getattr(st, "clock_ahead", 0)),
                ("barsignal_symbol_resyncs", "stale symbols resubscribed and backfilled over REST on a live "
                 "connection", getattr(st, "symbol_resyncs", 0)),
            ):
                yield CounterMetricFamily(name, doc, value=val)
            status = getattr(st, "symbol_status", None)
            if status:
                trading = GaugeMetricFamily("barsignal_symbol_trading", "1 while exchangeInfo says the symbol "
                                            "is TRADING, 0 when it is not (its node is stopped)", labels=["symbol"])
                for sym in self.m.symbols:
                    if sym in status:
                        trading.add_metric([sym], float(status[sym] == "TRADING"))
                yield trading
            by_sym = getattr(st, "future_by_symbol", None)
            if by_sym is not None:
                fut = CounterMetricFamily("barsignal_symbol_future_bars", "closed bars dated after the "
                                          "exchange's current minute, dropped, by symbol", labels=["symbol"])
                for sym in self.m.symbols:
                    fut.add_metric([sym], by_sym.get(sym, 0))
                yield fut
            banned = getattr(st, "rest_banned_until", 0.0)
            yield GaugeMetricFamily("barsignal_rest_ban_remaining_seconds",
                                    "seconds until a REST 418 ban ends (0: not banned)",
                                    value=max(0.0, banned - time.time()) if banned else 0.0)
            yield GaugeMetricFamily("barsignal_feed_connected", "websocket connected (every connection up)",
                                    value=int(st.connected))
            yield GaugeMetricFamily("barsignal_feed_connections", "websocket connections up now",
                                    value=getattr(st, "connections", int(st.connected)))
            yield GaugeMetricFamily("barsignal_feed_connections_wanted", "websocket connections the symbols need "
                                    "(one per [feed] max_streams_per_connection streams)",
                                    value=getattr(st, "connections_wanted", 1))
        if "outbox" in src:
            yield GaugeMetricFamily("barsignal_outbox_depth", "signals not yet delivered to every sink",
                                    value=src["outbox"]())
        if "dead" in src:
            made, kept = src["dead"]()
            total = CounterMetricFamily("barsignal_sink_dead_letters", "signals a sink's receiver refused "
                                        "for good (kept in the outbox as dead letters), by sink", labels=["sink"])
            gauge = GaugeMetricFamily("barsignal_outbox_dead_letters", "dead letters kept in the outbox "
                                      "(`barsignal outbox redrive` sends them again), by sink", labels=["sink"])
            for sink in dict.fromkeys((*self.m.sinks, *made, *kept)):
                total.add_metric([sink], made.get(sink, 0))
                gauge.add_metric([sink], kept.get(sink, 0))
            yield total
            yield gauge
        if "age" in src:
            age = GaugeMetricFamily("barsignal_last_bar_age_seconds",
                                    "seconds since the last closed bar (-1: none yet)", labels=["symbol"])
            ages = src["age"]()  # one symbol's age, or {symbol: age} for every configured symbol
            for sym, v in (ages.items() if isinstance(ages, dict) else ((self.m.symbol, ages),)):
                age.add_metric([sym], v)
            yield age
        if "paper" in src:
            eq = GaugeMetricFamily("barsignal_paper_equity", "paper account equity (quote currency) at the "
                                   "last bar's close", labels=["symbol"])
            for sym, v in src["paper"]().items():
                eq.add_metric([sym], v)
            yield eq
        if "keep_warm" in src:
            kw = src["keep_warm"]()
            yield CounterMetricFamily("barsignal_keep_warm_busy_seconds",
                                      "CPU seconds spent busy-polling around expected bars", value=kw.busy_s)
            yield CounterMetricFamily("barsignal_keep_warm_rehearsals", "hot-path rehearsals run to keep it warm",
                                      value=kw.calls)
            yield CounterMetricFamily("barsignal_keep_warm_errors", "keep-warm rehearsals that failed "
                                      "(keep-warm stops at the first; signals are unaffected)",
                                      value=getattr(kw, "errors", 0))
        if "gpu" in src:
            try:
                g = src["gpu"]()
            except Exception as exc:  # NVML trouble must not break a scrape
                log.debug("nvml_failed", error=str(exc))
                g = {}
            for k, v in g.items():
                yield GaugeMetricFamily(f"barsignal_gpu_{k}", f"GPU {k} (NVML)", value=v)


def paper_equity_reader(sinks: Iterable[Any]) -> Callable[[], dict[str, float]] | None:
    """A reader of the paper sink's equity per symbol (its ledger's in-memory accounts), or None."""
    paper = next((s for s in sinks if getattr(s, "name", "") == "paper"), None)
    if paper is None:
        return None

    def read() -> dict[str, float]:
        ledger = getattr(paper, "ledger", None)
        if ledger is None:
            return {}
        out = {}
        for sym in ledger.symbols():
            a = ledger.account(sym)
            if a is not None and a.bars:
                out[sym] = float(a.equity(a.last_close))
        return out

    return read


def nvml_reader(index: int = 0) -> Callable[[], dict[str, float]] | None:
    """A reader of GPU utilization and memory through NVML, or None where NVML is absent."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return None

    def read() -> dict[str, float]:
        u = pynvml.nvmlDeviceGetUtilizationRates(handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {"utilization_ratio": u.gpu / 100.0, "memory_used_bytes": float(mem.used),
                "memory_total_bytes": float(mem.total)}

    return read


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP/1.1 in the daemon's event loop."""

    def __init__(self, metrics: DaemonMetrics, host: str, port: int,
                 health: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        self.metrics = metrics
        self.host, self.port = host, port
        self.health = health
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics_listening", url=f"http://{self.host}:{self.port}/metrics")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = self.metrics.render()
            elif path == "/healthz":
                ok, info = self.health()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "application/json", orjson.dumps(info) + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics or /healthz\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + (body if method == "GET" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
