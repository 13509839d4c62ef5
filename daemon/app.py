"""The live daemon: feed -> bar record -> pipeline -> outbox -> sinks, with metrics and systemd.

``Daemon`` composes the parts; ``run_daemon`` starts it on uvloop through
``asyncio.Runner(loop_factory=uvloop.new_event_loop)``. SIGTERM/SIGINT: stop reading the feed,
drain the sinks for at most ``drain_timeout_s`` (what is left stays in the outbox for the next
start) and exit 0. SIGHUP: re-read the config and the artifact off the event loop, warm the new
model's features on the recent bars, then swap features, scorer, rule and hash in one assignment;
a bad config or artifact keeps the old model and logs why.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from barsignal.daemon import config as cfgmod
from barsignal.daemon.barlog import BarLog
from barsignal.daemon.config import Config
from barsignal.daemon.keepwarm import KeepWarm
from barsignal.daemon.metrics import DaemonMetrics, LiveMonitor, MetricsServer, nvml_reader
from barsignal.daemon.notify import Notifier
from barsignal.daemon.outbox import Outbox, SinkWorker
from barsignal.daemon.pipeline import Model, Pipeline, warm
from barsignal.daemon.sinks import build_sink
from barsignal.daemon.sinks.registry import section_for
from barsignal.engine.signal import RuleState, SignalRule
from barsignal.errors import ArtifactError, BarsignalError, ConfigError
from barsignal.log import get_logger

log = get_logger(__name__)

MAX_CATCHUP_BARS = 1440  # after a long stop, signal at most the last day of missed bars


def state_dir(cfg: Config) -> Path:
    """``$STATE_DIRECTORY`` (systemd's StateDirectory=) when set, else ``[state] dir``."""
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(env or cfg.state.dir)


@dataclass(slots=True)
class Loaded:
    """A model ready to plug into the pipeline (built off the event loop), and what it came from."""

    model: Model
    artifact: Any
    window_len: int
    warmup_bars: int  # bars a start must feed before its first signal is exact


def load_model(cfg: Config, artifact_dir: str | None, cache_dir: Path | None,
               rule_state: RuleState | None = None) -> Loaded:
    """Verify the artifact, open its scorer, build features and rule. Raises ArtifactError/ConfigError."""
    from barsignal.engine.artifact import load_artifact
    from barsignal.engine.select import load_scorer
    from barsignal.features.normalize import Normalizer
    from barsignal.features.online import OnlineFeatures

    art = load_artifact(artifact_dir or cfg.model.artifact or None)
    normalizer = Normalizer.from_dict(art.normalization)
    window_len = art.window_shape[0]
    scorer = load_scorer(art, cfg.engine.backend, cfg.model.variant, cfg.engine.intra_op_threads,
                         cfg.engine.spinning, cache_dir)
    try:
        rule = SignalRule.from_config(cfg.signal, art.signal, rule_state)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"signal rule: {exc}") from None
    features = OnlineFeatures(normalizer, window_len, cfg.features.gap_policy)
    return Loaded(Model(features, scorer, rule, art.hash, art.horizon,
                        {"backend": getattr(scorer, "name", "?"), "path": str(art.path)}),
                  art, window_len, features.bars_to_fetch)


class Daemon:
    """One live daemon. ``await run()`` returns the exit code."""

    def __init__(self, cfg: Config, *, config_path: str | None = None, artifact_dir: str | None = None,
                 loaded: Loaded | None = None, source_factory: Callable[..., Any] | None = None,
                 notifier: Notifier | None = None, drain_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.artifact_dir = artifact_dir
        self.symbol = cfg.feed.symbols[0].upper()
        self.state = state_dir(cfg)
        cache = cfg.engine.engine_cache_dir
        self.cache_dir = Path(cache) if cache else self.state / "engines"
        self._loaded = loaded
        self._source_factory = source_factory
        self.notifier = notifier or Notifier()
        self.drain_timeout_s = drain_timeout_s
        self._clock = clock
        self.metrics = DaemonMetrics()
        self.stop_event: asyncio.Event | None = None
        self.ready = False
        self.started_at = clock()
        self.ready_at: float | None = None
        self.ready_ns = 1 << 62  # perf_counter_ns() at READY
        self.last_bar_at: float | None = None
        self.workers: list[SinkWorker] = []
        self.keep_warm: KeepWarm | None = None
        self.feed: Any = None
        self.pipeline: Pipeline | None = None
        self.outbox: Outbox | None = None
        self.monitor: LiveMonitor | None = None
        self.server: MetricsServer | None = None
        self.tick_to_signal_s: list[float] = []  # bounded: only kept when record_latency is set
        self.record_latency = 0
        self._reloading = False

    # -- health --------------------------------------------------------------------------------
    def stale_after_s(self) -> float:
        return 60.0 + self.cfg.feed.stale_grace_s

    def data_fresh(self) -> bool:
        ref = self.last_bar_at if self.last_bar_at is not None else self.started_at
        return self._clock() - ref <= self.stale_after_s()

    def health(self) -> tuple[bool, dict[str, Any]]:
        age = None if self.last_bar_at is None else round(self._clock() - self.last_bar_at, 3)
        ok = self.ready and self.data_fresh()
        st = "ok" if ok else ("starting" if not self.ready else "stale")
        return ok, {"status": st, "ready": self.ready, "last_bar_age_s": age,
                    "last_signalled": self.pipeline.last_signalled if self.pipeline else None,
                    "outbox_depth": self.outbox.depth() if self.outbox else None}

    # -- run -----------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        cfg = self.cfg
        self.state.mkdir(parents=True, exist_ok=True)
        enabled = tuple(dict.fromkeys(cfg.sinks.enabled))
        sinks = [build_sink(n, section_for(n, cfg.sinks, cfg), self.state) for n in enabled]
        self.outbox = ob = Outbox(self.state / "outbox.sqlite", enabled)
        for stale in set(ob.sinks_pending()) - set(enabled):
            log.warning("outbox_sink_dropped", sink=stale, pending=ob.depth(stale),
                        hint="no longer in [sinks] enabled; its undelivered signals are forgotten")
            ob.drop_sink(stale)
        last = ob.last(self.symbol)
        loaded = self._loaded or await asyncio.to_thread(load_model, cfg, self.artifact_dir, self.cache_dir,
                                                         last[1] if last else None)
        if last is not None:
            loaded.model.rule.state = last[1]
        keep = loaded.warmup_bars + 8
        self.pipeline = pipe = Pipeline(self.symbol, loaded.model, last_signalled=last[0] if last else None,
                                        min_bars=loaded.warmup_bars, keep_bars=keep)
        self.monitor = LiveMonitor(loaded.model.horizon, cfg.metrics.monitor_window,
                                   psi_warn=cfg.metrics.drift_psi_warn,
                                   reference=_psi_reference(loaded.artifact))
        self.metrics.set_model(loaded.model.artifact_hash, loaded.model.info.get("backend", "?"))
        barlog = BarLog(self.state / "bars", self.symbol, last_signalled=last[0] if last else None,
                        rule_state=last[1] if last else None)
        warmup = loaded.warmup_bars
        if last is not None:  # also re-signal bars missed while stopped (at most a day of them)
            missed = int(time.time() * 1000 - last[0]) // 60_000
            warmup += max(0, min(missed, MAX_CATCHUP_BARS))
        self.feed = feed = self._make_source(warmup)
        self.metrics.bind(feed_stats=lambda: getattr(feed, "stats", None), outbox_depth=ob.depth,
                          last_bar_age=self._last_bar_age,
                          gpu=nvml_reader() if loaded.model.info.get("backend") == "tensorrt" else None)
        if cfg.metrics.enabled:
            self.server = MetricsServer(self.metrics, cfg.metrics.host, cfg.metrics.port, self.health)
            try:
                await self.server.start()
            except OSError as exc:
                where = f"{cfg.metrics.host}:{cfg.metrics.port}"
                raise ConfigError(f"[metrics] cannot listen on {where} ({exc}); "
                                  "change the port or set enabled = false") from None
        for s in sinks:
            try:
                await s.start()
            except Exception as exc:  # a sink that is down at start retries on send
                log.warning("sink_start_failed", sink=s.name, error=f"{type(exc).__name__}: {exc}")
            w = SinkWorker(s, ob, queue_size=cfg.sinks.queue_size,
                           on_delivered=lambda n, _s: self.metrics.delivered.labels(sink=n).inc(),
                           on_failed=lambda n, _e: self.metrics.sink_failures.labels(sink=n).inc())
            w.start()
            self.workers.append(w)
        for sig_, handler in ((signal.SIGTERM, lambda: self.request_stop("TERM")),
                              (signal.SIGINT, lambda: self.request_stop("INT")), (signal.SIGHUP, self._on_hup)):
            try:
                loop.add_signal_handler(sig_, handler)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        log.info("daemon_started", symbol=self.symbol, artifact=loaded.model.artifact_hash[:12],
                 backend=loaded.model.info.get("backend"), sinks=list(enabled), state_dir=str(self.state),
                 warmup_bars=warmup, last_signalled=last[0] if last else None)
        self.notifier.status(f"warming up: fetching {warmup} bars")
        consume = loop.create_task(self._consume(barlog), name="consume")
        watchdog = loop.create_task(self._watchdog(), name="watchdog")
        stop = loop.create_task(self.stop_event.wait(), name="stop")
        if cfg.engine.keep_warm_ms > 0:
            self.keep_warm = KeepWarm(self._warm_hot_path, cfg.engine.keep_warm_ms / 1e3)
            self.metrics.bind(keep_warm=lambda: self.keep_warm)
            background = (watchdog, loop.create_task(self.keep_warm.run(), name="keep_warm"))
        else:
            background = (watchdog,)
        code = 0
        try:
            done, _ = await asyncio.wait({consume, stop}, return_when=asyncio.FIRST_COMPLETED)
            if consume in done and consume.exception() is not None:
                exc = consume.exception()
                if isinstance(exc, BarsignalError):
                    log.error("daemon_failed", error=str(exc))
                    code = exc.exit_code
                else:
                    log.error("daemon_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                    code = 1
        finally:
            self.notifier.stopping()
            log.info("daemon_stopping", drain_timeout_s=self.drain_timeout_s)
            stop_feed = getattr(feed, "stop", None)
            if stop_feed:
                stop_feed()
            for t in (consume, stop, *background):
                t.cancel()
            await asyncio.gather(consume, stop, *background, return_exceptions=True)
            deadline = self._clock() + self.drain_timeout_s
            drained = True
            for w in self.workers:
                drained &= await w.drain(max(0.0, deadline - self._clock()))
            for w in self.workers:
                try:
                    await asyncio.wait_for(w.stop(), 5.0)
                except Exception as exc:
                    log.warning("sink_close_failed", sink=w.name, error=str(exc))
            left = ob.depth()
            log.info("daemon_stopped", drained=drained, outbox_depth=left, signals=pipe.stats.signals)
            barlog.close()
            ob.close()
            if self.server is not None:
                await self.server.stop()
            self.notifier.close()
        return code

    def _make_source(self, warmup: int) -> Any:
        if self._source_factory is not None:
            return self._source_factory(self.cfg.feed, warmup)
        from barsignal.daemon.feed.client import FeedClient

        return FeedClient(self.cfg.feed, warmup_bars=warmup)

    def _warm_hot_path(self) -> None:
        """Keep-warm: rehearse the pipeline (features on a copy, the scorer) and read the outbox's
        newest row, discarding all of it. Nothing a signal depends on changes."""
        if self.pipeline is not None:
            self.pipeline.rehearse()
        if self.outbox is not None:
            self.outbox.touch()

    def _last_bar_age(self) -> float:
        return (self._clock() - self.last_bar_at) if self.last_bar_at is not None else -1.0

    def request_stop(self, why: str = "request") -> None:
        """Stop: drain the sinks (bounded) and return 0. SIGTERM and SIGINT call this."""
        log.info("stop_requested", by=why)
        if self.stop_event is not None:
            self.stop_event.set()

    # -- the hot path --------------------------------------------------------------------------
    async def _consume(self, barlog: BarLog) -> None:
        pipe, ob, m, mon = self.pipeline, self.outbox, self.metrics, self.monitor
        assert pipe is not None and ob is not None and mon is not None
        stats = getattr(self.feed, "stats", None)
        perf = time.perf_counter_ns
        async for bar in self.feed:
            recv_ns = stats.last_recv_ns if (stats is not None and bar.source == "ws") else None
            if recv_ns is not None and recv_ns < self.ready_ns:
                recv_ns = None  # received during warm-up: queued behind the REST fetch, not a live tick
            self.last_bar_at = self._clock()
            barlog.record(bar)
            mon.observe_bar(bar.open_time, bar.close)
            sig = pipe.process(bar, recv_ns)
            if sig is not None:
                seq = ob.add(sig, pipe.rule_state)
                if seq is not None:
                    for w in self.workers:
                        w.offer(seq, sig)
                t_end = perf()
                if recv_ns is not None:
                    dt = (t_end - recv_ns) / 1e9
                    m.tick_to_signal.observe(dt)
                    if self.record_latency and len(self.tick_to_signal_s) < self.record_latency:
                        self.tick_to_signal_s.append(dt)
                m.scoring.observe(sig.latency_us["score"] / 1e6)
                m.signals.labels(action=sig.action).inc()
                mon.observe_signal(sig.open_time, sig.bar_close, sig.p_up, pipe.last_window)
                if pipe.stats.signals % 10 == 0:
                    m.export_monitor(mon)
            if recv_ns is not None and self.keep_warm is not None:
                self.keep_warm.arrived(recv_ns / 1e9)
            if not self.ready and (pipe.warm or sig is not None):
                self._became_ready(bar.open_time)
            elif self.ready and bar.source == "ws" and pipe.stats.bars % 10 == 0:
                self.notifier.status(f"ok: last bar {bar.open_time}, {pipe.stats.signals} signals")

    def _became_ready(self, open_time: int) -> None:
        self.ready = True
        self.ready_ns = time.perf_counter_ns()
        self.ready_at = self._clock()
        self.notifier.ready(f"ready: warm at bar {open_time}")
        log.info("daemon_ready", warm_at=open_time, after_s=round(self.ready_at - self.started_at, 3))

    async def _watchdog(self) -> None:
        period = self.notifier.watchdog_s
        if not period:
            return
        while True:
            await asyncio.sleep(period / 3)
            if self.data_fresh():
                self.notifier.watchdog()
            else:
                log.warning("watchdog_withheld", reason="no fresh bar", stale_after_s=self.stale_after_s())

    # -- SIGHUP --------------------------------------------------------------------------------
    def _on_hup(self) -> None:
        if self._reloading:
            log.info("reload_skipped", reason="a reload is in progress")
            return
        asyncio.get_running_loop().create_task(self.reload(), name="reload")

    async def reload(self) -> bool:
        """Re-read config and artifact; swap atomically; keep the old model on any error."""
        pipe = self.pipeline
        assert pipe is not None
        self._reloading = True
        self.notifier.reloading()
        try:
            new_cfg = cfgmod.load(self.config_path) if self.config_path else self.cfg
            for sec in ("feed", "sinks", "metrics", "state", "logging", "paper"):
                if getattr(new_cfg, sec) != getattr(self.cfg, sec):
                    log.warning("reload_needs_restart", section=sec, hint="applied at the next start")
            snapshot = list(pipe.recent)
            loaded = await asyncio.to_thread(load_model, new_cfg, self.artifact_dir, self.cache_dir)
            await asyncio.to_thread(warm, loaded.model.features, snapshot)
            # bars that arrived while loading (none are lost: we are back on the loop)
            last = snapshot[-1].open_time if snapshot else None
            ready = warm(loaded.model.features,
                         [b for b in pipe.recent if last is None or b.open_time > last])
            if not ready and pipe.warm:
                raise ArtifactError("the new model's features did not warm up on the recent bars "
                                    f"({len(pipe.recent)} kept; it needs {loaded.warmup_bars})")
            loaded.model.rule.state = pipe.rule_state  # the rule resumes where it was
            old = pipe.model.artifact_hash
            pipe.swap(loaded.model)  # one assignment: the next bar uses the new model
            self.cfg = msgspec.structs.replace(self.cfg, signal=new_cfg.signal, model=new_cfg.model,
                                               engine=new_cfg.engine, features=new_cfg.features)
            self.metrics.set_model(loaded.model.artifact_hash, loaded.model.info.get("backend", "?"))
            self.metrics.reloads.labels(result="ok").inc()
            log.info("reloaded", old_artifact=old[:12], new_artifact=loaded.model.artifact_hash[:12],
                     backend=loaded.model.info.get("backend"))
            return True
        except (BarsignalError, OSError, ValueError) as exc:
            self.metrics.reloads.labels(result="refused").inc()
            log.error("reload_refused", error=str(exc), kept_artifact=pipe.model.artifact_hash[:12])
            return False
        finally:
            self._reloading = False
            self.notifier.notify("READY=1", "STATUS=reload finished")


def _psi_reference(artifact: Any) -> dict[str, Any] | None:
    """Per-feature reference bins for drift, when the artifact ships them."""
    if artifact is None:
        return None
    return (artifact.manifest.get("features") or {}).get("psi_reference")


def run_daemon(cfg: Config, **kw: Any) -> int:
    """Run the daemon on uvloop (asyncio's default loop where uvloop is absent)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(Daemon(cfg, **kw).run())
