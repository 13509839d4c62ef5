"""The live daemon as a supervisor: OS signals, health, watchdog, metrics; the node does the work.

``Daemon`` builds one :class:`~barsignal.node.Node` per symbol of ``[feed] symbols`` (``build_nodes``:
feed -> bar record -> pipeline -> outbox -> sinks, the same assembly replay and parity use; the
symbols share the state directory, the outbox and the sink workers) and supervises them. With
several symbols the bars of one minute are handed on in the config's order (``consume_many``);
``/healthz`` names the stale symbols, and per-symbol metrics carry only configured symbols;
each symbol has its own live monitor (drift PSI and live scores, with its own model's horizon
and training bins). ``run_daemon`` starts it on uvloop through
``asyncio.Runner(loop_factory=uvloop.new_event_loop)``.

- SIGTERM/SIGINT: stop reading the feed, drain the sinks for at most ``drain_timeout_s`` (what is
  left stays in the outbox for the next start) and exit 0.
- SIGHUP: re-read the config and the artifact off the event loop, warm the new model's features on
  the recent bars, swap it in between two bars (``Node.reload``); the bar record logs the swap. A bad
  config or artifact keeps the old model and logs why. ``--artifact`` given at start wins over
  ``[model] artifact`` at every reload, and the reload log says which was used. The handlers are
  installed first thing in :meth:`Daemon.run`; before that, from the start of ``barsignal run``,
  :func:`hold_sighup` catches SIGHUP (a process-wide handler: no thread of the process keeps
  SIGHUP's default action, which ends the process), and a SIGHUP caught then is one reload once the
  daemon is up.
- Reloads are counted in ``barsignal_reloads_total{result}``: ``result="ok"`` or ``"refused"``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from barsignal.daemon import config as cfgmod
from barsignal.daemon.config import Config
from barsignal.daemon.keepwarm import FeedRehearsal, KeepWarm
from barsignal.daemon.metrics import DaemonMetrics, LiveMonitor, MetricsServer, nvml_reader, paper_equity_reader
from barsignal.daemon.notify import Notifier
from barsignal.daemon.outbox import Outbox, SinkWorker
from barsignal.daemon.pipeline import Pipeline
from barsignal.daemon.statelock import StateLock
from barsignal.engine.signal import Signal
from barsignal.errors import BarsignalError, ConfigError
from barsignal.features.bar import Bar
from barsignal.log import get_logger
from barsignal.node import (
    MAX_CATCHUP_BARS,
    Loaded,
    Node,
    build_nodes,
    close_nodes,
    consume,
    consume_many,
    engine_cache_dir,
    for_symbol,
    live_warmup_bars,
    load_model,
    load_symbol_models,
    state_dir,
    warn_informational,
)

__all__ = ["MAX_CATCHUP_BARS", "Daemon", "Loaded", "hold_sighup", "load_model", "run_daemon", "state_dir"]

log = get_logger(__name__)

RESTART_SECTIONS = ("feed", "sinks", "metrics", "state", "logging", "paper")


_early_hups = 0  # SIGHUPs caught by hold_sighup's handler before the daemon's own


def _early_hup(signum: int, frame: Any) -> None:
    global _early_hups
    _early_hups += 1


def hold_sighup() -> None:
    """Catch SIGHUP until :meth:`Daemon.run` installs its handler: a reload requested during start-up
    is remembered (and done once the daemon is up) instead of killing the process. A handler, not a
    signal mask: the disposition is process-wide, so a native thread started earlier (a BLAS pool)
    cannot take the signal with its default action."""
    try:
        signal.signal(signal.SIGHUP, _early_hup)
    except (AttributeError, OSError, ValueError):  # no SIGHUP here / not the main thread
        pass


class Daemon:
    """One live daemon. ``await run()`` returns the exit code."""

    def __init__(self, cfg: Config, *, config_path: str | None = None, artifact_dir: str | None = None,
                 loaded: Loaded | None = None, symbol_models: dict[str, Loaded] | None = None,
                 source_factory: Callable[..., Any] | None = None,
                 notifier: Notifier | None = None, drain_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.artifact_dir = artifact_dir
        self.symbols = tuple(s.upper() for s in cfg.feed.symbols)
        self.symbol = self.symbols[0]
        self.state = state_dir(cfg)
        self.cache_dir = engine_cache_dir(cfg, self.state)
        self._loaded = loaded
        self._symbol_models = symbol_models  # [model.symbols], loaded and verified before the start
        self._source_factory = source_factory
        self.notifier = notifier or Notifier()
        self.drain_timeout_s = drain_timeout_s
        self._clock = clock
        self.metrics = DaemonMetrics(self.symbol, tuple(cfg.sinks.enabled), symbols=self.symbols)
        self.stop_event: asyncio.Event | None = None
        self.ready = False
        self.started_at = clock()
        self.ready_at: float | None = None
        self.ready_ns = 1 << 62  # perf_counter_ns() at READY
        self.last_bar_at: float | None = None  # any symbol's
        self.last_bar_by: dict[str, float] = {}  # per symbol
        self._rank = {s: i for i, s in enumerate(self.symbols)}  # staggers the monitors' publishing
        self._to_export: dict[int, LiveMonitor] = {}  # monitors to publish once the loop is free
        self.hold_s = 0.5  # how long one minute's bars wait for a symbol whose bar is late (MinuteOrder)
        self.keep_warm: KeepWarm | None = None
        self.feed: Any = None
        self.node: Node | None = None  # the first symbol's (it owns the outbox and the sink workers)
        self.nodes: list[Node] = []
        self._warm_symbols: set[str] = set()
        self.monitor: LiveMonitor | None = None  # the first symbol's (self.monitors[self.symbol])
        self.monitors: dict[str, LiveMonitor] = {}  # one per symbol: its own model's horizon and PSI reference
        self.server: MetricsServer | None = None
        self.tick_to_signal_s: list[float] = []  # bounded: only kept when record_latency is set
        self.record_latency = 0
        self._reloading = False
        self._hup_pending = False  # a SIGHUP that arrived before the node was up
        self._feed_rehearsal: FeedRehearsal | None = None
        self._keep_warm_error_logged = False

    # -- what the node holds (tests and benchmarks read these) ---------------------------------
    @property
    def pipeline(self) -> Pipeline | None:
        return self.node.pipeline if self.node is not None else None

    @property
    def outbox(self) -> Outbox | None:
        return self.node.outbox if self.node is not None else None

    @property
    def workers(self) -> list[SinkWorker]:
        return self.node.workers if self.node is not None else []

    # -- health --------------------------------------------------------------------------------
    def stale_after_s(self) -> float:
        return 60.0 + self.cfg.feed.stale_grace_s

    def data_fresh(self) -> bool:
        """Some symbol had a bar lately (the process is doing its work: the watchdog is fed)."""
        ref = self.last_bar_at if self.last_bar_at is not None else self.started_at
        return self._clock() - ref <= self.stale_after_s()

    def long_stale_symbols(self) -> list[str]:
        """The symbols with no bar for longer than ``[health] stale_symbol_watchdog_s`` (none when 0): they
        withhold the watchdog. A symbol the exchange no longer trades is not waited for."""
        limit = self.cfg.health.stale_symbol_watchdog_s
        if not limit:
            return []
        now = self._clock()
        halted = getattr(self.feed, "halted", None) or ()
        return [s for s in self.symbols
                if s not in halted and now - self.last_bar_by.get(s, self.started_at) > limit]

    def stale_symbols(self) -> list[str]:
        """The configured symbols with no bar for longer than interval + grace (since start if none)."""
        now, limit = self._clock(), self.stale_after_s()
        halted = getattr(self.feed, "halted", None) or ()
        return [s for s in self.symbols
                if s not in halted and now - self.last_bar_by.get(s, self.started_at) > limit]

    def health(self) -> tuple[bool, dict[str, Any]]:
        age = None if self.last_bar_at is None else round(self._clock() - self.last_bar_at, 3)
        stale = self.stale_symbols()
        ok = self.ready and not stale and getattr(self.feed, "ready", True)  # feed: warm-up done
        st = "ok" if ok else ("starting" if not self.ready else "stale")
        info: dict[str, Any] = {"status": st, "ready": self.ready, "last_bar_age_s": age,
                                "last_signalled": self.pipeline.last_signalled if self.pipeline else None,
                                "outbox_depth": self.outbox.depth() if self.outbox else None,
                                "stale_symbols": stale,
                                "halted_symbols": sorted(getattr(self.feed, "halted", None) or ())}
        if len(self.nodes) > 1:
            info["last_signalled_by_symbol"] = {n.symbol: n.pipeline.last_signalled for n in self.nodes}
        return ok, info

    # -- run -----------------------------------------------------------------------------------
    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig_, handler in ((signal.SIGTERM, lambda: self.request_stop("TERM")),
                              (signal.SIGINT, lambda: self.request_stop("INT")), (signal.SIGHUP, self._on_hup)):
            try:
                loop.add_signal_handler(sig_, handler)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        if _early_hups:  # caught during start-up: one reload once the node is up
            self._hup_pending = True

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self._install_signal_handlers(loop)
        cfg = self.cfg
        # First, before anything touches the state: one daemon per state directory (exit 2 naming the
        # holder's PID), and a read-only / unusable directory refused with one line.
        self._state_lock = StateLock(self.state).acquire()
        loaded = self._loaded or await asyncio.to_thread(load_model, cfg, self.artifact_dir, self.cache_dir)
        if cfg.metrics.enabled:  # before the state directory is touched: a busy port changes nothing
            self.server = MetricsServer(self.metrics, cfg.metrics.host, cfg.metrics.port, self.health)
            await _listen(self.server, f"{cfg.metrics.host}:{cfg.metrics.port}")
        if self._symbol_models is None:
            self._symbol_models = await asyncio.to_thread(load_symbol_models, cfg, self.cache_dir)
        models = {**self._symbol_models, "": loaded}
        self.monitors = {s: self._new_monitor(s, models.get(s, loaded)) for s in self.symbols}
        self.monitor = self.monitors[self.symbol]
        self.nodes = nodes = build_nodes(cfg, "live", symbols=self.symbols, loaded=models,
                                         artifact_dir=self.artifact_dir, state=self.state, monitor=self.monitors)
        self.node = node = nodes[0]
        self._set_model(loaded)
        warmup = _align_warmup(nodes)
        self.feed = feed = self._make_source(warmup)
        self.metrics.bind(feed_stats=lambda: getattr(feed, "stats", None), outbox_depth=node.outbox.depth,
                          dead_letters=node.outbox.dead_letter_stats,
                          last_bar_age=self._last_bar_age if len(nodes) == 1 else self._last_bar_ages,
                          paper_equity=paper_equity_reader(node.sinks),
                          gpu=nvml_reader() if loaded.model.info.get("backend") == "tensorrt" else None)
        m = self.metrics
        await node.start(on_delivered=lambda n, _s: m.delivered.labels(sink=n).inc(),
                         on_failed=lambda n, _e: m.sink_failures.labels(sink=n).inc())
        last = node.pipeline.last_signalled
        log.info("daemon_started", symbol=self.symbol if len(nodes) == 1 else list(self.symbols),
                 artifact=loaded.model.artifact_hash[:12],
                 backend=loaded.model.info.get("backend"), artifact_from=loaded.source,
                 sinks=[s.name for s in node.sinks], state_dir=str(self.state), warmup_bars=warmup,
                 last_signalled=last)
        warn_informational(loaded, log)  # what the actions follow when the artifact's policy is flat
        self.notifier.status(f"warming up: fetching {warmup} bars")
        if len(nodes) == 1:
            loop_ = consume(node, feed, functools.partial(self._after_bar, node=node), ready_ns=lambda: self.ready_ns)
        else:
            loop_ = consume_many(nodes, feed, lambda n, b, s, r: self._after_bar(b, s, r, n),
                                 ready_ns=lambda: self.ready_ns, hold_s=self.hold_s,
                                 step_ms=getattr(feed, "step_ms", 60_000))
        consume_task = loop.create_task(loop_, name="consume")
        watchdog = loop.create_task(self._watchdog(), name="watchdog")
        stop = loop.create_task(self.stop_event.wait(), name="stop")
        background = [watchdog]
        if cfg.engine.keep_warm_ms > 0:
            self.keep_warm = KeepWarm(self._warm_hot_path, cfg.engine.keep_warm_ms / 1e3,
                                      on_error=self._keep_warm_failed,
                                      busy=getattr(self.feed, "frame_pending", None))
            self.metrics.bind(keep_warm=lambda: self.keep_warm)
            background.append(loop.create_task(self.keep_warm.run(), name="keep_warm"))
        if self._hup_pending:
            self._hup_pending = False
            log.info("reload_requested_during_start", hint="SIGHUP arrived before the daemon was up")
            self._on_hup()
        code = 0
        try:
            done, _ = await asyncio.wait({consume_task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if consume_task in done and consume_task.exception() is not None:
                exc = consume_task.exception()
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
            for t in (consume_task, stop, *background):
                t.cancel()
            await asyncio.gather(consume_task, stop, *background, return_exceptions=True)
            self._to_export.clear()
            for mon in self.monitors.values():  # the last state, for a last scrape
                self.metrics.export_monitor(mon)
            drained = await node.drain(self.drain_timeout_s)
            left = node.outbox.depth()
            signals = sum(n.pipeline.stats.signals for n in nodes)
            await close_nodes(nodes)
            log.info("daemon_stopped", drained=drained, outbox_depth=left, signals=signals)
            if self.server is not None:
                await self.server.stop()
            self.notifier.close()
            self._state_lock.release()
        return code

    def _make_source(self, warmup: int) -> Any:
        if self._source_factory is not None:
            return self._source_factory(self.cfg.feed, warmup)
        from barsignal.daemon.feed.client import FeedClient

        return FeedClient(self.cfg.feed, warmup_bars=warmup)

    def _set_model(self, loaded: Loaded) -> None:
        m = self.metrics
        m.set_model(loaded.model.artifact_hash, loaded.model.info.get("backend", "?"),
                    getattr(loaded.artifact, "metrics", None))
        for n in self.nodes:  # a symbol with its own artifact ([model.symbols]): that artifact's figures
            if n.loaded is not None and n.loaded.artifact is not loaded.artifact:
                m.set_reference(n.symbol, getattr(n.loaded.artifact, "metrics", None))

    def _new_monitor(self, symbol: str, loaded: Loaded) -> LiveMonitor:
        """``symbol``'s live monitor: the horizon and training bins of the model it is scored by."""
        c = self.cfg.metrics
        return LiveMonitor(loaded.model.horizon, c.monitor_window, psi_warn=c.drift_psi_warn,
                           reference=_psi_reference(loaded.artifact), symbol=symbol,
                           artifact=loaded.model.artifact_hash, move=getattr(loaded.artifact, "move", None),
                           bounds=_psi_bounds(loaded.artifact))

    def _renew_monitors(self) -> None:
        """After a reload: a symbol whose artifact changed starts a fresh monitor (the new model's
        horizon and training bins; the old model's pending predictions are not scored against it)."""
        for n in self.nodes:
            mon = n.monitor
            if n.loaded is not None and (mon is None or mon.artifact != n.loaded.model.artifact_hash):
                n.monitor = self.monitors[n.symbol] = self._new_monitor(n.symbol, n.loaded)
        self.monitor = self.monitors.get(self.symbol)

    def _warm_hot_path(self) -> None:
        """Keep-warm: rehearse the hot path in its order (a frame decoded and run through the feed's
        sequencer, every value put back; the node: features on their own state put back, the
        scorer, the rule on a copy, the outbox's bookkeeping and the sink queues on shadows),
        discarding all of it. Nothing a signal depends on changes, and nothing wakes the writer
        thread (a job for it in each rehearsal, a read of the outbox's newest row until the fifth
        session, kept it contending for the GIL with the loop: score +8 µs). The first node only:
        the code is what a rehearsal warms (every node runs the same), and rehearsing every node
        would hold the loop for tens of milliseconds at 400 symbols."""
        if self._feed_rehearsal is None and hasattr(self.feed, "seq") and getattr(self.feed, "symbols", None):
            self._feed_rehearsal = FeedRehearsal(self.feed, self.cfg.feed.max_frame_bytes)
        if self._feed_rehearsal is not None:
            self._feed_rehearsal()
        if self.nodes:
            self.nodes[0].rehearse()

    def _keep_warm_failed(self, error: str) -> None:
        if not self._keep_warm_error_logged:  # once: keep-warm stops at its first error
            self._keep_warm_error_logged = True
            log.warning("keep_warm_stopped", error=error,
                        hint="signals are unaffected; latency after idle gaps is higher until a restart")

    def _last_bar_age(self) -> float:
        return (self._clock() - self.last_bar_at) if self.last_bar_at is not None else -1.0

    def _last_bar_ages(self) -> dict[str, float]:
        now = self._clock()
        return {s: (now - self.last_bar_by[s]) if s in self.last_bar_by else -1.0 for s in self.symbols}

    def _export_soon(self, mon: LiveMonitor) -> None:
        """Publish ``mon`` once the loop is done with what it is handling (a burst of bars, a minute's
        commits): the live scores (an AUC over the window) are not on any signal's path. Each symbol
        publishes every 10th signal, staggered by its place in the config, so 400 symbols publish 40 a
        minute, not 400 every tenth minute."""
        self._to_export[id(mon)] = mon
        if len(self._to_export) == 1:  # _after_bar runs on the loop
            asyncio.get_running_loop().call_soon(self._export_pending)

    def _export_pending(self) -> None:
        todo, self._to_export = self._to_export, {}
        for mon in todo.values():
            self.metrics.export_monitor(mon)

    def request_stop(self, why: str = "request") -> None:
        """Stop: drain the sinks (bounded) and return 0. SIGTERM and SIGINT call this."""
        log.info("stop_requested", by=why)
        if self.stop_event is not None:
            self.stop_event.set()

    # -- after each bar (the signal is already in the outbox and the sinks' queues) --------------
    def _after_bar(self, bar: Bar, sig: Signal | None, recv_ns: int | None, node: Node) -> None:
        """Every bar, once its signal (if any) is in the outbox and offered to the sinks: the tick's
        latency first, then what is not on the signal's path (metrics, the live monitor, READY)."""
        dt = (time.perf_counter_ns() - recv_ns) / 1e9 if recv_ns is not None and sig is not None else None
        self.last_bar_at = now = self._clock()
        self.last_bar_by[node.symbol] = now
        pipe = node.pipeline
        mon = node.monitor  # drift and live scores: this symbol's own
        if mon is not None:
            mon.observe_bar(bar.open_time, bar.close)  # resolves the prediction made h bars before
        if sig is not None:
            m = self.metrics
            if dt is not None:
                m.tick_to_signal.observe(dt)
                if self.record_latency and len(self.tick_to_signal_s) < self.record_latency:
                    self.tick_to_signal_s.append(dt)
            m.scoring.observe(sig.latency_us["score"] / 1e6)
            m.signals.labels(action=sig.action).inc()
            m.count_signal(node.symbol)
            if mon is not None:
                mon.observe_signal(sig.open_time, sig.bar_close, sig.p_up, pipe.last_window, sig.p_move)
                if (pipe.stats.signals + self._rank.get(node.symbol, 0)) % 10 == 0:
                    self._export_soon(mon)
        if recv_ns is not None and self.keep_warm is not None and node is self.node:
            self.keep_warm.arrived(recv_ns / 1e9)  # the first symbol's bars: one arrival a minute
        if not self.ready and (pipe.warm or sig is not None) and self._caught_up(node):
            before = len(self._warm_symbols)
            self._warm_symbols.add(node.symbol)
            warm = len(self._warm_symbols)
            if warm == len(self.nodes):
                self._became_ready(bar.open_time)
            elif warm != before and warm % max(1, len(self.nodes) // 8) == 0:
                gc.freeze()  # the warm symbols' state stays: later full collections need not scan it
        elif self.ready and bar.source == "ws" and pipe.stats.bars % 10 == 0:
            self.notifier.status(f"ok: last bar {bar.open_time}, {pipe.stats.signals} signals")

    def _caught_up(self, node: Node) -> bool:
        """The node has processed every bar the feed has emitted for its symbol so far (READY means
        "can signal the next bar promptly", not "still working through the warm-up's bars")."""
        seq = getattr(self.feed, "seq", None)
        last = getattr(seq, "last", None)
        if last is None:
            return True
        try:
            emitted = last(node.symbol)
        except KeyError:
            return True
        done = node.pipeline.last_open_time
        return emitted is None or (done is not None and done >= emitted)

    def _became_ready(self, open_time: int) -> None:
        self.ready = True
        self.ready_ns = time.perf_counter_ns()
        self.ready_at = self._clock()
        # What start-up built (models, every symbol's features, rings and monitors) lives as long as
        # the daemon: move it out of the cyclic collector's reach, so that a full collection, which
        # scanned it all (290 ms at 400 symbols, measured during the warm-up), never holds the loop.
        gc.freeze()
        self.notifier.ready(f"ready: warm at bar {open_time}")
        log.info("daemon_ready", warm_at=open_time, after_s=round(self.ready_at - self.started_at, 3),
                 gc_frozen=gc.get_freeze_count())

    async def _watchdog(self) -> None:
        period = self.notifier.watchdog_s
        if not period:
            return
        while True:
            await asyncio.sleep(period / 3)
            long_stale = self.long_stale_symbols()
            if self.data_fresh() and not long_stale:
                self.notifier.watchdog()
            elif long_stale:
                log.warning("watchdog_withheld", reason="symbols stale past [health] stale_symbol_watchdog_s",
                            symbols=long_stale[:10], count=len(long_stale),
                            stale_symbol_watchdog_s=self.cfg.health.stale_symbol_watchdog_s)
            else:
                log.warning("watchdog_withheld", reason="no fresh bar", stale_after_s=self.stale_after_s())

    # -- SIGHUP --------------------------------------------------------------------------------
    def _on_hup(self) -> None:
        if self.node is None:
            self._hup_pending = True  # reloaded once the node is up
            return
        if self._reloading:
            log.info("reload_skipped", reason="a reload is in progress")
            return
        self._reloading = True  # set now: a second SIGHUP before the task runs is skipped too
        asyncio.get_running_loop().create_task(self.reload(), name="reload")

    async def reload(self) -> bool:
        """Re-read config and artifact; swap between two bars; keep the old model on any error."""
        node = self.node
        assert node is not None
        self._reloading = True
        self.notifier.reloading()
        try:
            new_cfg = cfgmod.load(self.config_path) if self.config_path else self.cfg
            for sec in RESTART_SECTIONS:
                if getattr(new_cfg, sec) != getattr(self.cfg, sec):
                    log.warning("reload_needs_restart", section=sec, hint="applied at the next start")
            if self.artifact_dir and new_cfg.model.artifact and \
                    Path(new_cfg.model.artifact).resolve() != Path(self.artifact_dir).resolve():
                log.warning("reload_artifact_from_flag", artifact=self.artifact_dir,
                            config_artifact=new_cfg.model.artifact,
                            hint="--artifact given at start wins over [model] artifact; restart without "
                            "--artifact to follow the config")
            if len(self.nodes) == 1 and not new_cfg.model.symbols:
                loaded, swapped = await node.reload(new_cfg)
            else:  # every symbol: its [model.symbols] artifact, else the default (per-symbol features, rule)
                own = await asyncio.to_thread(load_symbol_models, new_cfg, self.cache_dir)
                loaded = await asyncio.to_thread(load_model, new_cfg, self.artifact_dir, self.cache_dir)
                fresh = True
                for n in self.nodes:
                    mine = own.get(n.symbol)
                    if mine is None:
                        mine, fresh = (loaded if fresh else for_symbol(new_cfg, loaded)), False
                    _, sw = await n.reload(new_cfg, loaded=mine)
                    if n is node:
                        swapped = sw
            self.cfg = msgspec.structs.replace(self.cfg, signal=new_cfg.signal, model=new_cfg.model,
                                               engine=new_cfg.engine, features=new_cfg.features)
            self._renew_monitors()
            self._set_model(loaded)
            self.metrics.reloads.labels(result="ok").inc()
            log.info("reloaded", old_artifact=swapped.old_artifact[:12], new_artifact=swapped.new_artifact[:12],
                     changed=swapped.old_artifact != swapped.new_artifact, artifact_from=loaded.source,
                     path=loaded.model.info.get("path"), backend=loaded.model.info.get("backend"),
                     warm_bars=swapped.warm_bars)
            warn_informational(loaded, log)
            return True
        except (BarsignalError, OSError, ValueError) as exc:
            self.metrics.reloads.labels(result="refused").inc()
            log.error("reload_refused", error=str(exc), config=self.config_path,
                      kept_artifact=node.pipeline.model.artifact_hash[:12])
            return False
        finally:
            self._reloading = False
            self.notifier.notify("READY=1", "STATUS=reload finished")


METRICS_BUSY_RETRY_S = 5.0  # a port still held by the previous process (a quick restart) frees up


async def _listen(server: MetricsServer, where: str) -> None:
    """Start the metrics server. A busy port is retried for ``METRICS_BUSY_RETRY_S``, then exit 1
    (a runtime failure: systemd's Restart= tries again later); any other error (a bad host, a
    privileged port) is a config error, exit 2."""
    deadline = time.monotonic() + METRICS_BUSY_RETRY_S
    while True:
        try:
            await server.start()
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"[metrics] cannot listen on {where} ({exc}); "
                                  "change the port or set enabled = false") from None
            if time.monotonic() >= deadline:
                raise BarsignalError(f"[metrics] port {where} is in use (EADDRINUSE) after "
                                     f"{METRICS_BUSY_RETRY_S:g} s of retries; another process holds it: stop "
                                     "it or change the port (exit 1: systemd restarts this unit)") from None
            await asyncio.sleep(0.25)


def _psi_reference(artifact: Any) -> dict[str, Any] | None:
    """Per-feature reference bins for drift, when the artifact ships them."""
    if artifact is None:
        return None
    return (artifact.manifest.get("features") or {}).get("psi_reference")


def _psi_bounds(artifact: Any) -> dict[str, Any] | None:
    """The drift PSI's calibrated bounds (``features.psi_bounds``), when the artifact ships them."""
    if artifact is None:
        return None
    return (artifact.manifest.get("features") or {}).get("psi_bounds")


def _align_warmup(nodes: list[Node]) -> int:
    """The bars the feed fetches at start for every symbol: the most any symbol needs (its warm-up plus
    the bars it missed while stopped). A symbol that needs fewer signals no earlier than alone: its
    first signal waits until as many bars are fed as it would need past its own warm-up."""
    need = {n.symbol: live_warmup_bars(n) for n in nodes}
    most = max(need.values())
    for n in nodes:
        assert n.loaded is not None
        if n.pipeline.last_signalled is None:  # a fresh symbol: first signal at the newest warm-up bar
            n.pipeline.min_bars = max(n.pipeline.min_bars, most - (need[n.symbol] - n.loaded.warmup_bars))
    return most


def run_daemon(cfg: Config, **kw: Any) -> int:
    """Run the daemon on uvloop (asyncio's default loop where uvloop is absent)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(Daemon(cfg, **kw).run())
