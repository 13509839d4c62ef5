"""The composition root: ``build_node`` assembles one symbol's pipeline, for run, replay and parity;
``build_nodes`` one per symbol over a shared outbox, and ``consume_many`` drives them from one feed.

A :class:`Node` is bar source -> bar record -> :class:`~barsignal.daemon.pipeline.Pipeline` ->
outbox -> sink workers -> sinks. Live (``barsignal run``), replay (``barsignal replay``) and parity
(``barsignal parity``) all build it here and differ only in the source plugged in (the feed, or bars
from files or a bar record), in the state directory (the daemon's, or a given or temporary one) and
in which sinks are attached. Everything else is the same code: the engine cache directory is worked
out once (:func:`engine_cache_dir`), the model once (:func:`load_model`), the rule state restored in
one place (:meth:`Node.restore`, from the outbox or from a bar record's ``run_start``), and every
signal reaches its sinks through :meth:`Node.handle` -> ``Outbox.add`` -> ``SinkWorker``.

A model swap (SIGHUP) is :meth:`Node.reload` (load off the event loop, warm the new features on
the recent bars) then :meth:`Node.swap`; the swap is written to the bar record just before the
first bar it applies to, so ``barsignal parity`` replays across it.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barsignal.daemon.barlog import BarLog
from barsignal.daemon.config import Config
from barsignal.daemon.config import state_dir as config_state_dir
from barsignal.daemon.outbox import Outbox, SinkWorker, sink_queue_size
from barsignal.daemon.pipeline import Model, Pipeline, Prepared, warm
from barsignal.engine.move import untag_state
from barsignal.engine.signal import RuleState, Signal, SignalRule
from barsignal.errors import ArtifactError, ConfigError, DataError
from barsignal.features.bar import Bar
from barsignal.log import get_logger

log = get_logger(__name__)

MAX_CATCHUP_BARS = 1440  # after a long stop, signal at most the last day of missed bars
SCORE_CHUNK = 256  # replay: bars whose scorer calls run back to back (compute_many)
KEEP_EXTRA_BARS = 8  # recent bars kept beyond the warm-up, for a hot swap


def state_dir(cfg: Config) -> Path:
    """``$STATE_DIRECTORY`` (systemd's StateDirectory=) when set, else ``[state] dir``, else the user's
    state directory (:func:`barsignal.daemon.config.state_dir`)."""
    return config_state_dir(cfg.state)


def engine_cache_dir(cfg: Config, state: Path | None = None) -> Path:
    """``[engine] engine_cache_dir``, else ``<state dir>/engines`` (TensorRT engines)."""
    cache = cfg.engine.engine_cache_dir
    return Path(cache) if cache else (state if state is not None else state_dir(cfg)) / "engines"


@dataclass(slots=True)
class Loaded:
    """A model ready to plug into the pipeline (built off the event loop), and what it came from."""

    model: Model
    artifact: Any
    window_len: int
    warmup_bars: int  # bars a start must feed before its first signal is exact
    source: str = ""  # where the artifact path came from: "--artifact", "[model] artifact" or "bundled"

    @property
    def keep_bars(self) -> int:
        return self.warmup_bars + KEEP_EXTRA_BARS


def artifact_choice(cfg: Config, artifact_dir: str | None) -> tuple[str | None, str]:
    """The artifact directory to load and why: an explicit ``--artifact`` wins over ``[model] artifact``
    (also at a SIGHUP reload, which says so), which wins over the bundled default."""
    if artifact_dir:
        return artifact_dir, "--artifact"
    if cfg.model.artifact:
        return cfg.model.artifact, "[model] artifact"
    return None, "bundled"


def load_model(cfg: Config, artifact_dir: str | None, cache_dir: Path | None) -> Loaded:
    """Verify the artifact, open its scorer, build features and a rule in its initial state (a start
    restores the rule in :meth:`Node.restore`). Raises ArtifactError/ConfigError; touches no state."""
    from barsignal.engine.artifact import load_artifact
    from barsignal.engine.select import load_scorer
    from barsignal.features.normalize import Normalizer
    from barsignal.features.online import OnlineFeatures

    path, source = artifact_choice(cfg, artifact_dir)
    try:
        art = load_artifact(path)
    except ArtifactError as exc:
        if source == "bundled":
            raise
        fix = "" if source == "--artifact" else " (or leave [model] artifact empty for the bundled artifact)"
        raise ArtifactError(f"{source}{' ' if source == '--artifact' else ' = '}{path!r}: {exc}{fix}") from None
    normalizer = Normalizer.from_dict(art.normalization)
    window_len = art.window_shape[0]
    try:
        rule = SignalRule.from_config(cfg.signal, art.signal)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"signal rule: {exc}") from None
    scorer = load_scorer(art, cfg.engine.backend, cfg.model.variant, cfg.engine.intra_op_threads,
                         cfg.engine.spinning, cache_dir)
    features = OnlineFeatures(normalizer, window_len, cfg.features.gap_policy)
    return Loaded(Model(features, scorer, rule, art.hash, art.horizon,
                        {"backend": getattr(scorer, "name", "?"), "path": str(art.path)}, move_forecaster(art)),
                  art, window_len, features.bars_to_fetch, source)


def move_forecaster(art: Any) -> Any:
    """A fresh move forecaster for the artifact's ``move`` section (verified at load), or None."""
    from barsignal.engine.move_registry import build

    spec = art.move
    return build(spec) if spec is not None else None


def warn_informational(loaded: Loaded, logger: Any = log) -> bool:
    """Say what the actions follow when the artifact's policy is to stay flat (the daemon at start and
    after a reload, a replay before its first bar). The rule as built decides, not the artifact's label:
    ``signals_informational`` when every action is flat (True), ``signal_policy_overridden`` when
    ``[signal]`` thresholds override the flat policy."""
    art = loaded.artifact
    if not getattr(art, "informational", False):
        return False
    sig = getattr(art, "signal", {}) or {}
    reason = sig.get("reason") or "no setting was net-positive after costs"
    rule = loaded.model.rule
    if rule.stay_flat:
        logger.warning("signals_informational", artifact=loaded.model.artifact_hash[:12], reason=reason,
                       hint="every action is flat; p_up is for information, not a trading signal")
        return True
    logger.warning("signal_policy_overridden", artifact=loaded.model.artifact_hash[:12],
                   long_threshold=rule.long_threshold,
                   short_threshold=rule.short_threshold if rule.allow_short else None,
                   hysteresis=rule.hysteresis, cooldown_bars=rule.cooldown_bars, min_hold_bars=rule.min_hold_bars,
                   reason=reason,
                   hint="[signal] thresholds override the artifact's flat policy: actions follow them; "
                        "this setting was not net-positive on validation")
    return False


def load_symbol_models(cfg: Config, cache_dir: Path | None) -> dict[str, Loaded]:
    """The artifacts of ``[model.symbols]`` (``SYMBOL = "path"``), each verified and its scorer opened
    like the default; a key not in ``[feed] symbols`` is a ConfigError naming it. Touches no state."""
    syms = {s.upper() for s in cfg.feed.symbols}
    out: dict[str, Loaded] = {}
    for sym, path in cfg.model.symbols.items():
        if sym.upper() not in syms:
            raise ConfigError(f"[model.symbols] {sym}: not in [feed] symbols {sorted(syms)}; add it there or "
                              "remove its line")
        try:
            loaded = load_model(cfg, path, cache_dir)
        except ArtifactError as exc:
            raise ArtifactError(f"[model.symbols] {sym} = {path!r}: {exc}") from None
        loaded.source = "[model.symbols]"
        out[sym.upper()] = loaded
    return out


def for_symbol(cfg: Config, loaded: Loaded) -> Loaded:
    """``loaded`` for one more symbol: fresh features, move forecaster and rule (per-symbol state), the same
    verified artifact and scorer (a batch-1 scorer keeps no state between windows)."""
    from barsignal.features.normalize import Normalizer
    from barsignal.features.online import OnlineFeatures

    art, m = loaded.artifact, loaded.model
    rule = SignalRule.from_config(cfg.signal, art.signal)
    features = OnlineFeatures(Normalizer.from_dict(art.normalization), loaded.window_len, cfg.features.gap_policy)
    return Loaded(Model(features, m.scorer, rule, m.artifact_hash, m.horizon, dict(m.info), move_forecaster(art)),
                  art, loaded.window_len, loaded.warmup_bars, loaded.source)


@dataclass(frozen=True, slots=True)
class Start:
    """The state a run starts from: the last signalled bar and the rule state after it."""

    last_signalled: int | None = None
    rule_state: RuleState | None = None


def resume_start(outbox: Outbox, symbol: str, *, now_ms: int | None = None, step_ms: int = 60_000) -> Start:
    """The outbox's last signal for ``symbol`` and the rule state after it. With ``now_ms`` (the wall
    clock, live), a last signalled bar more than one bar ahead of it is not trusted (stored before the
    feed dropped future-dated bars, or under a wrong clock: it would make every real bar look already
    signalled): one warning naming it, the start resumes from the last signal no later than that, so
    the real bars after it are fetched and signalled, and such signals still pending for a sink become
    its dead letters (counted, kept for ``barsignal outbox redrive``) instead of being delivered."""
    last = outbox.last(symbol)
    if last is None:
        return Start()
    limit = None if now_ms is None else now_ms + step_ms
    if limit is None or last[0] <= limit:
        return Start(last[0], last[1])
    prev = outbox.last_at_or_before(symbol, limit)
    buried = outbox.dead_letter_after(symbol, limit, f"bar {last[0]} is after the wall clock ({now_ms})")
    log.warning("last_signalled_in_future", symbol=symbol, last_signalled=last[0], now_ms=now_ms,
                bars_ahead=(last[0] - limit) // step_ms + 1, resumed_from=prev[0] if prev else None,
                dead_lettered=buried,
                hint="not trusted: resuming from the last signal before the wall clock; check the host clock "
                     "(timedatectl) if this repeats")
    return Start(prev[0], prev[1]) if prev else Start()


@dataclass(slots=True)
class Swapped:
    """What a swap replaced (for the log), and the bars its features were warmed on."""

    old_artifact: str
    new_artifact: str
    warm_from: int | None
    warm_bars: int


@dataclass
class NodeStats:
    signals: int = 0
    duplicates: int = 0  # signals the outbox already had (a resumed replay, a restart): not re-sent


class Node:
    """One symbol: bar -> record -> pipeline -> outbox -> sinks. ``handle`` is the hot path."""

    def __init__(self, pipeline: Pipeline, outbox: Outbox, sinks: Sequence[Any] = (), *,
                 loaded: Loaded | None = None, state: Path | None = None, barlog: BarLog | None = None,
                 artifact_dir: str | None = None, cache_dir: Path | None = None, queue_size: int = 1024,
                 on_signal: Callable[[Signal], None] | None = None, monitor: Any = None,
                 owns_state: tempfile.TemporaryDirectory | None = None, owns_outbox: bool = True) -> None:
        self.pipeline = pipeline
        self.outbox = outbox
        self.sinks = list(sinks)
        self.loaded = loaded
        self.state = state
        self.barlog = barlog
        self.artifact_dir = artifact_dir
        self.cache_dir = cache_dir
        self.queue_size = queue_size
        self.on_signal = on_signal
        self.monitor = monitor  # LiveMonitor (live: drift and live scores; the daemon feeds it) or None
        self.workers: list[SinkWorker] = []
        self.stats = NodeStats()
        self.symbol = pipeline.symbol
        self._pending_swap: dict[str, Any] | None = None  # written before the next bar's record
        self._tmp = owns_state
        self.owns_outbox = owns_outbox  # False: another symbol's node owns the outbox and the sink workers
        self._batch: list[tuple[Signal, RuleState]] | None = None  # replay's chunk, not yet in the outbox

    # -- the rule state: restored here and only here ----------------------------------------------
    def restore(self, start: Start) -> None:
        """Resume from ``start``: bars at or before its last signalled bar only feed the features,
        and the rule continues from its state (a daemon restart, or one run of a bar record). The move
        forecaster resumes the state stored with it (``RuleState.move``) when it belongs to this
        artifact, before any warm-up bar, and holds it through the warm-up (see ``daemon/pipeline.py``);
        a state of another artifact, or a bad one, is ignored (one log line): the forecaster starts
        fresh."""
        pipe = self.pipeline
        pipe.last_signalled = start.last_signalled
        if start.rule_state is not None:
            pipe.model.rule.state = start.rule_state
        mv, stored = pipe.model.move, start.rule_state.move if start.rule_state is not None else None
        pipe.move_hold = None
        if mv is None or stored is None:
            return
        mine = untag_state(stored, pipe.model.artifact_hash)
        if mine is None:
            log.info("move_state_ignored", symbol=self.symbol, stored_artifact=str(stored.get("artifact"))[:12],
                     artifact=pipe.model.artifact_hash[:12], hint="another artifact's: the forecaster starts fresh")
            return
        try:
            mv.resume(mine)
        except (TypeError, ValueError) as e:
            log.warning("move_state_ignored", symbol=self.symbol, error=str(e), hint="the forecaster starts fresh")
            mv.reset()
            return
        pipe.move_hold = mine

    # -- start and stop ----------------------------------------------------------------------------
    async def start(self, *, on_delivered: Callable[[str, Signal], None] | None = None,
                    on_failed: Callable[[str, BaseException], None] | None = None) -> None:
        """Start every sink (one that is down at start retries on send) and its worker."""
        for s in self.sinks:
            try:
                await s.start()
            except Exception as exc:
                log.warning("sink_start_failed", sink=s.name, error=f"{type(exc).__name__}: {exc}")
            w = SinkWorker(s, self.outbox, queue_size=self.queue_size, on_delivered=on_delivered,
                           on_failed=on_failed)
            w.start()
            self.workers.append(w)

    async def drain(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every sink has what was offered; True if it has."""
        deadline = time.monotonic() + timeout_s
        ok = True
        for w in self.workers:
            ok &= await w.drain(max(0.0, deadline - time.monotonic()))
        return ok

    async def close(self) -> None:
        """Stop the workers, close the sinks, the bar record and the outbox (in that order). A node
        that shares another's outbox (:func:`build_nodes`) closes only its bar record."""
        if not self.owns_outbox:
            if self.barlog is not None:
                self.barlog.close()
            return
        for w in self.workers:
            try:
                await asyncio.wait_for(w.stop(), 5.0)
            except Exception as exc:
                log.warning("sink_close_failed", sink=w.name, error=str(exc))
        self.workers.clear()
        if self.barlog is not None:
            self.barlog.close()
        self.outbox.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- the hot path --------------------------------------------------------------------------------
    def handle(self, bar: Bar, recv_ns: int | None = None) -> Signal | None:
        """One closed bar: record it, run the pipeline, store the signal in the outbox and offer it to
        every sink worker. Returns the signal (None in warm-up, for a bar already signalled, or for a
        bar dropped as invalid)."""
        return self.commit(self.compute(bar, recv_ns))

    def compute(self, bar: Bar, recv_ns: int | None = None) -> tuple[Signal, RuleState] | None:
        """The first half of :meth:`handle`: record the bar and run the pipeline (features, score,
        rule). Returns the signal with the rule state right after it, not yet stored or offered
        (:meth:`commit` does that), or None."""
        sig = self._step(self.pipeline.process, bar, recv_ns)
        return None if sig is None else (sig, self.pipeline.rule_state)

    def commit(self, done: tuple[Signal, RuleState] | None) -> Signal | None:
        """The second half of :meth:`handle`: store ``compute``'s signal in the outbox and offer it
        to every sink worker. A node's computes and commits alternate or run ahead in order: the
        rule state goes with its own signal, so the outbox records what each signal left behind."""
        return None if done is None else self._after(*done)

    def prepare(self, bar: Bar, recv_ns: int | None = None) -> Prepared | None:
        """:meth:`compute` in steps (:func:`compute_many`): record the bar and run its features."""
        return self._step(self.pipeline.prepare, bar, recv_ns)

    def _step(self, step: Callable[[Bar, int | None], Any], bar: Bar, recv_ns: int | None) -> Any:
        """Record ``bar``, then ``step(bar, recv_ns)`` on the pipeline; a bar it drops as invalid is logged."""
        self._before(bar)
        invalid = self.pipeline.stats.invalid
        out = step(bar, recv_ns)
        if self.pipeline.stats.invalid != invalid:
            self._dropped(bar)
        return out

    def finish(self, p: Prepared | None) -> tuple[Signal, RuleState] | None:
        """The last step of :meth:`compute` for a prepared (and scored) bar: the rule and its signal."""
        if p is None:
            return None
        return self.pipeline.finish(p), self.pipeline.rule_state

    def rehearse(self) -> None:
        """Keep-warm: the pipeline's rehearsal (:meth:`Pipeline.rehearse`), then the commit's code with
        its signal: the outbox's bookkeeping and writer hand-off on a shadow (``Outbox.rehearse_add``)
        and each sink worker's queue code on a queue of its own. Nothing a signal depends on, and
        nothing the outbox, its writer or a sink holds, changes."""
        done = self.pipeline.rehearse()
        if done is None:
            return
        sig, rule_state = done
        self.outbox.rehearse_add(sig, rule_state)
        for w in self.workers:
            w.rehearse_offer(sig)

    def handle_many(self, bars: list[Bar]) -> None:
        """Replay's :meth:`handle` for a chunk of bars (:func:`compute_many`): the same steps and
        signals, the scorer's calls back to back."""
        for got in compute_many([(self, bar, None) for bar in bars]):
            if got is not None:
                self._after(*got)

    def _before(self, bar: Bar) -> None:
        if self.barlog is not None:
            if self._pending_swap is not None:
                self._write_swap(bar)
            self.barlog.record(bar)

    def _dropped(self, bar: Bar) -> None:
        log.warning("bar_dropped", open_time=bar.open_time, source=bar.source,
                    reason="not finite, consistent, in range and on the interval grid",
                    dropped=self.pipeline.stats.invalid)

    def _after(self, sig: Signal, rule_state: RuleState) -> Signal:
        self.stats.signals += 1
        if self._batch is not None:  # replay: added (and offered) a chunk at a time
            self._batch.append((sig, rule_state))
        else:
            seq = self.outbox.add(sig, rule_state)
            if seq is None:
                self.stats.duplicates += 1
            else:
                for w in self.workers:
                    w.offer(seq, sig)
        if self.on_signal is not None:
            self.on_signal(sig)
        return sig

    async def replay(self, bars: Iterable[Bar], *, chunk: int = 2048) -> int:
        """Every bar of ``bars`` through :meth:`handle`; the signals of each ``chunk`` of bars go into
        the outbox in one ``add_many`` (one writer job) and are then offered to the sink workers, as
        live does one at a time. Waits while a worker's queue is more than half full (it never
        overflows into the slower catch-up from the outbox). Returns the number of bars."""
        # First let every worker deliver what an earlier run left in the outbox and switch to its
        # queue: offers made while it catches up would each be read back from the outbox instead.
        await self.settle()
        n = 0
        high = max(1, self.queue_size // 2)
        pending = 0
        self._batch = []
        todo: list[Bar] = []
        try:
            for bar in bars:
                todo.append(bar)
                n += 1
                pending += 1
                if len(todo) >= SCORE_CHUNK:
                    self.handle_many(todo)
                    todo = []
                if pending >= chunk:
                    pending = 0
                    self._flush_batch()
                    await asyncio.sleep(0)
                    while any(w.queue.qsize() > high for w in self.workers):
                        self._check_sinks()
                        await asyncio.sleep(0.0005)
            self.handle_many(todo)
        finally:
            self._flush_batch()
            self._batch = None
        return n

    def _flush_batch(self) -> None:
        batch = self._batch
        if not batch:
            return
        self._batch = []
        for (sig, _), seq in zip(batch, self.outbox.add_many(batch), strict=True):
            if seq is None:
                self.stats.duplicates += 1
            else:
                for w in self.workers:
                    w.offer(seq, sig)

    async def settle(self) -> None:
        """Wait until every sink worker has delivered what it was offered (replay's end). A sink that
        fails (it would retry for ever) raises ``DataError`` naming it."""
        while not all(w.idle() for w in self.workers):
            self._check_sinks()
            await asyncio.sleep(0.001)

    def _check_sinks(self) -> None:
        bad = [w.name for w in self.workers if w.failures]
        if bad:
            raise DataError(f"sink {', '.join(bad)} failed during the replay (its error is logged above as "
                            "sink_delivery_failed): fix its settings and replay again")

    # -- SIGHUP: a new model --------------------------------------------------------------------------
    async def reload(self, cfg: Config, loaded: Loaded | None = None) -> tuple[Loaded, Swapped]:
        """Load the model ``cfg`` names (``--artifact`` still wins) off the event loop (or take
        ``loaded``, this symbol's own, already loaded), warm its features on the recent bars (those that
        arrived while loading too), then swap it in between two bars. Raises
        ArtifactError/ConfigError/OSError/ValueError and keeps the old model."""
        pipe = self.pipeline
        snapshot = list(pipe.recent)
        if loaded is None:
            loaded = await asyncio.to_thread(load_model, cfg, self.artifact_dir, self.cache_dir)
        ready = await asyncio.to_thread(warm, loaded.model.features, snapshot, loaded.model.move)
        # back on the loop: the bars that arrived while loading (none are lost)
        last = snapshot[-1].open_time if snapshot else None
        later = [b for b in pipe.recent if last is None or b.open_time > last]
        if later:
            ready = warm(loaded.model.features, later, loaded.model.move)
        if not ready and pipe.warm:
            raise ArtifactError("the new model's features did not warm up on the recent bars "
                                f"({len(snapshot) + len(later)} kept; it needs {loaded.warmup_bars})")
        fed = snapshot + later
        return loaded, self.swap(loaded, fed[0].open_time if fed else None, len(fed))

    def swap(self, loaded: Loaded, warm_from: int | None, warm_bars: int) -> Swapped:
        """Swap ``loaded`` in (its features already warmed on ``warm_bars`` bars from ``warm_from``);
        the rule carries its state over, and so does the move forecaster's learned state when the
        artifact is the same (another artifact's forecaster keeps what it learned on the warm-up bars,
        from a fresh start). The bar record gets a ``swap`` line before the next bar."""
        pipe = self.pipeline
        old = pipe.model.artifact_hash
        was, mv = pipe.model.move, loaded.model.move
        if was is not None and mv is not None and loaded.model.artifact_hash == old:
            kept = was.persisted()  # the same artifact again: its learned state carries over (another: fresh)
            if kept is not None:
                mv.resume(kept)
        pipe.swap(loaded.model)  # one assignment: the next bar uses the new model
        self.loaded = loaded
        self._pending_swap = {"artifact": loaded.model.artifact_hash, "path": loaded.model.info.get("path"),
                              "rule_state": pipe.rule_state.to_dict(), "rule": loaded.model.rule.params(),
                              "warm_from": warm_from, "warm_bars": warm_bars}
        return Swapped(old, loaded.model.artifact_hash, warm_from, warm_bars)

    def _write_swap(self, bar: Bar) -> None:
        rec = self._pending_swap
        assert rec is not None and self.barlog is not None
        self._pending_swap = None
        self.barlog.record_event("swap", {**rec, "first_bar": bar.open_time}, bar.open_time)


def _sinks_from_config(cfg: Config, state: Path) -> list[Any]:
    from barsignal.daemon.sinks import build_sink
    from barsignal.daemon.sinks.registry import section_for

    return [build_sink(n, section_for(n, cfg.sinks, cfg), state) for n in dict.fromkeys(cfg.sinks.enabled)]


def check_sinks(cfg: Config) -> None:
    """Build every enabled sink from its section without opening anything: bad settings raise
    ConfigError before the state directory is touched."""
    _sinks_from_config(cfg, state_dir(cfg))


def build_node(cfg: Config, source: str = "live", *, symbol: str | None = None, state: Path | None = None,
               artifact_dir: str | None = None, loaded: Loaded | None = None, start: Start | None = None,
               sinks: Sequence[Any] | None = None, record_bars: bool | None = None, keep_bars: int | None = None,
               queue_size: int | None = None, on_signal: Callable[[Signal], None] | None = None,
               monitor: Any = None, outbox_sync: str = "NORMAL", share: Node | None = None) -> Node:
    """Assemble a :class:`Node` for ``symbol`` (default: the first of ``[feed] symbols``).

    ``source``: ``"live"`` (the daemon: the state directory from the config, the outbox's last signal
    restored, the sinks from ``[sinks] enabled``, the bar record on) or ``"replay"`` (a given ``state``
    directory or a temporary one; sinks as given, default none; no bar record). ``loaded``: a model
    already built (``barsignal run`` loads it before touching state); else it is loaded here. ``start``:
    the state to resume from; default the outbox's last signal for this symbol (nothing for a fresh
    state directory)."""
    live = source == "live"
    if source not in ("live", "replay"):
        raise ValueError(f"source {source!r}: expected 'live' or 'replay'")
    sym = (symbol or cfg.feed.symbols[0]).upper()
    tmp = None
    if share is not None:
        state = share.state
    if state is None and live:
        state = state_dir(cfg)
    if state is None:
        tmp = tempfile.TemporaryDirectory(prefix="barsignal-node-")
        state = Path(tmp.name)
    cache = engine_cache_dir(cfg, state_dir(cfg) if not live else state)
    if loaded is None:
        loaded = load_model(cfg, artifact_dir, cache)
    state.mkdir(parents=True, exist_ok=True)
    if share is not None:
        sink_list, ob = [], share.outbox
    else:
        sink_list = list(sinks) if sinks is not None else (_sinks_from_config(cfg, state) if live else [])
        ob = Outbox(state / "outbox.sqlite", tuple(s.name for s in sink_list), synchronous=outbox_sync)
    names = tuple(s.name for s in sink_list)
    if live and share is None:
        for stale in set(ob.sinks_pending()) - set(names):
            log.warning("outbox_sink_dropped", sink=stale, pending=ob.depth(stale),
                        hint="no longer in [sinks] enabled; its undelivered signals are forgotten")
            ob.drop_sink(stale)
    if start is None:  # live: a last signalled bar ahead of the wall clock is not trusted (before the bar record)
        start = resume_start(ob, sym, now_ms=int(time.time() * 1000) if live else None)
    keep = keep_bars if keep_bars is not None else loaded.keep_bars
    pipe = Pipeline(sym, loaded.model, min_bars=loaded.warmup_bars, keep_bars=keep)
    barlog = None
    if live if record_bars is None else record_bars:
        barlog = BarLog(state / "bars", sym, last_signalled=start.last_signalled, rule_state=start.rule_state,
                        writer=ob.writer,  # the outbox's writer thread: a bar is written before its signal
                        artifact={"hash": loaded.model.artifact_hash, "path": loaded.model.info.get("path")},
                        rule=loaded.model.rule.params())
    node = Node(pipe, ob, sink_list, loaded=loaded, state=state, barlog=barlog, artifact_dir=artifact_dir,
                cache_dir=cache, queue_size=queue_size or (cfg.sinks.queue_size if live else 8192),
                on_signal=on_signal, monitor=monitor, owns_state=tmp, owns_outbox=share is None)
    if share is not None:
        node.workers = share.workers  # the same list: the owner's workers, started by the owner
    node.restore(start)
    return node


def build_nodes(cfg: Config, source: str = "live", *, symbols: Sequence[str] | None = None,
                loaded: Loaded | dict[str, Loaded] | None = None, monitor: Any = None,
                **kw: Any) -> list[Node]:
    """One :class:`Node` per symbol (default ``[feed] symbols``, in that order) over ONE state directory,
    outbox and set of sink workers: the first node owns them, the others share them (``share``). Each
    node has its own features, window, rule state and bar record (``<state>/bars/<SYMBOL>-...``), so
    one symbol's bad bar, gap or halt never reaches another's. ``loaded``: one model for all, or a
    dict of per-symbol models (``[model.symbols]``) with the default under ``""``. ``monitor``: a dict
    of per-symbol monitors (the daemon's: drift and live scores by symbol), or one for the first
    symbol's node only. Close with :func:`close_nodes`."""
    syms = [s.upper() for s in (symbols or cfg.feed.symbols)]
    if len(set(syms)) != len(syms):
        raise ConfigError(f"symbols {syms}: a symbol is named twice")
    if source == "live" and kw.get("queue_size") is None:  # one worker per sink carries every symbol
        kw["queue_size"] = sink_queue_size(cfg.sinks.queue_size, len(syms))
    nodes: list[Node] = []
    try:
        seen: set[int] = set()
        default = loaded if isinstance(loaded, Loaded) else (loaded or {}).get("")  # "": the default model
        for i, sym in enumerate(syms):
            model = loaded.get(sym) if isinstance(loaded, dict) else None
            if model is None:
                if default is None:
                    default = load_model(cfg, kw.get("artifact_dir"),
                                         engine_cache_dir(cfg, kw.get("state") if source == "live" else None))
                model = default
            if id(model) in seen:  # one artifact for several symbols: per-symbol features and rule
                model = for_symbol(cfg, model)
            seen.add(id(model))
            mon = monitor.get(sym) if isinstance(monitor, dict) else (monitor if i == 0 else None)
            nodes.append(build_node(cfg, source, symbol=sym, loaded=model, monitor=mon,
                                    share=nodes[0] if nodes else None, **kw))
    except BaseException:  # nothing started yet: close the bar records, then the shared outbox
        for n in reversed(nodes):
            if n.barlog is not None:
                n.barlog.close()
        if nodes:
            nodes[0].outbox.close()
            if nodes[0]._tmp is not None:
                nodes[0]._tmp.cleanup()
        raise
    return nodes


async def close_nodes(nodes: Sequence[Node]) -> None:
    """Close the sharing nodes (their bar records) first, then the owner (workers, sinks, outbox)."""
    for n in reversed(nodes):
        await n.close()


def run(coro: Any) -> Any:
    """Run ``coro`` on uvloop (asyncio's default loop where uvloop is absent), as the daemon does:
    replay and parity drive the node on the same kind of loop as live."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def live_warmup_bars(node: Node, now_ms: int | None = None) -> int:
    """Bars the feed must fetch at start: the model's warm-up, plus the bars missed while stopped
    (at most a day of them) so they are signalled too."""
    assert node.loaded is not None
    warmup = node.loaded.warmup_bars
    last = node.pipeline.last_signalled
    if last is not None:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        warmup += max(0, min((now - last) // 60_000, MAX_CATCHUP_BARS))
    return warmup


async def consume(node: Node, source: AsyncIterable[Bar], after: Callable[[Bar, Signal | None, int | None], None]
                  | None = None, *, ready_ns: Callable[[], int] = lambda: 0) -> None:
    """The live loop: every bar of ``source`` through :meth:`Node.handle`. ``recv_ns`` is the closing
    frame's arrival (the feed's ``stats.last_recv_ns``) for websocket bars after READY (``ready_ns``);
    ``after(bar, signal, recv_ns)`` runs once the signal is handed to the sinks."""
    stats = getattr(source, "stats", None)
    handle = node.handle
    for_ws = stats is not None
    async for bar in source:
        recv_ns = stats.last_recv_ns if (for_ws and bar.source == "ws") else None
        if recv_ns is not None and recv_ns < ready_ns():
            recv_ns = None  # received during warm-up: queued behind the REST fetch, not a live tick
        sig = handle(bar, recv_ns)
        if after is not None:
            after(bar, sig, recv_ns)


class MinuteOrder:
    """Hands on the closed bars of many symbols so that the bars of one minute go in the config's
    symbol order, not in arrival order (sans-I/O; :func:`consume_many` drives it).

    The bars of the minute being collected are held until every symbol expected in it has its bar
    there, then handed on at once in config order. Expected: every symbol with a bar in the last
    ``expect_within`` steps (a halted or delisted symbol stops being waited for). A bar of a later
    minute hands the held minute on first; a bar of an earlier minute (a backfill, a late frame, a
    symbol's REST warm-up) goes on at once. The driver hands the held minute on after a hold time
    (:meth:`flush`) when an expected symbol's bar does not come. Each symbol's own bars keep their
    order (the feed emits them in order), so what each node computes never depends on this."""

    def __init__(self, symbols: Sequence[str], step_ms: int = 60_000, expect_within: int = 2) -> None:
        self.rank = {s: i for i, s in enumerate(symbols)}
        self.step_ms = step_ms
        self.expect_ms = expect_within * step_ms
        self.minute: int | None = None  # open time of the minute held
        self.held: dict[str, tuple[Bar, Any]] = {}
        self.done_through: int | None = None  # the last minute handed on
        self.last_seen: dict[str, int] = {}
        self._missing: set[str] = set()  # symbols expected in the held minute whose bar is not here yet

    def add(self, symbol: str, bar: Bar, item: Any = None) -> list[tuple[str, Bar, Any]]:
        """Take one bar (with ``item``, anything that goes with it: the driver's computed signal);
        return the ``(symbol, bar, item)`` now ready, in order."""
        t = bar.open_time
        prev = self.last_seen.get(symbol)
        if prev is None or t > prev:
            self.last_seen[symbol] = t
            if self.minute is not None and symbol not in self.held and t >= self.minute - self.expect_ms:
                self._missing.add(symbol)  # a late bar made it expected in the held minute
        out: list[tuple[str, Bar, Any]] = []
        if self.minute is not None and t > self.minute:
            out = self.flush()
        if (self.done_through is not None and t <= self.done_through) or \
                (self.minute is not None and t < self.minute) or symbol in self.held:
            out.append((symbol, bar, item))
            return out
        if self.minute is None:  # a new minute: who is expected in it (once a minute, not once a bar)
            self.minute = t
            self._missing = {s for s, seen in self.last_seen.items() if seen >= t - self.expect_ms}
        self.held[symbol] = (bar, item)
        self._missing.discard(symbol)
        if self.complete():
            out += self.flush()
        return out

    def complete(self) -> bool:
        """Every symbol expected in the held minute (a bar in the last ``expect_within`` steps) has its
        bar here. Kept up to date bar by bar: O(1) a bar, where re-checking every symbol was O(N)."""
        return self.minute is None or not self._missing

    def flush(self) -> list[tuple[str, Bar, Any]]:
        """Hand the held minute on, in config order (a symbol not in the config goes last)."""
        if self.minute is None:
            return []
        n = len(self.rank)
        out = [(s, b, r) for s, (b, r) in sorted(self.held.items(), key=lambda kv: self.rank.get(kv[0], n))]
        self.done_through = self.minute if self.done_through is None else max(self.done_through, self.minute)
        self.minute = None
        self.held = {}
        self._missing = set()
        return out

    @property
    def holding(self) -> bool:
        return self.minute is not None


_END = object()


def compute_many(jobs: Sequence[tuple[Node, Bar, int | None]]) -> list[tuple[Signal, RuleState] | None]:
    """:meth:`Node.compute` for each ``(node, bar, recv_ns)``, in three passes: every bar's features,
    then every window's batch-1 ``score`` back to back, then every rule in order. The same calls on
    the same windows as one by one, and no score depends on a rule, so the signals are bit-identical
    to computing them one at a time (tests/daemon/test_multi_symbol.py, test_pipeline.py); the passes
    keep each step's code and data in cache through a burst (400 symbols' closed frames at once) or a
    replay chunk (one symbol's bars)."""
    if len(jobs) == 1:
        node, bar, recv_ns = jobs[0]
        return [node.compute(bar, recv_ns)]
    prepared = [node.prepare(bar, recv_ns) for node, bar, recv_ns in jobs]
    for (node, _, _), p in zip(jobs, prepared, strict=True):
        if p is not None:
            node.pipeline.score_prepared(p)
    return [node.finish(p) for (node, _, _), p in zip(jobs, prepared, strict=True)]


async def consume_many(nodes: Sequence[Node], source: Any,
                       after: Callable[[Node, Bar, Signal | None, int | None], None] | None = None, *,
                       ready_ns: Callable[[], int] = lambda: 0, hold_s: float = 0.5,
                       step_ms: int = 60_000) -> None:
    """The live loop for many symbols over one feed (``source.stream()`` yields ``(symbol, bar)``).

    Each bar is computed (:meth:`Node.compute`: features, score, rule) as soon as it arrives (the bars
    the feed hands out at once, a burst of closed frames, through :func:`compute_many`'s passes), and
    its signal is committed (:meth:`Node.commit`: outbox, sinks) with the rest of its minute in the
    config's symbol order (:class:`MinuteOrder`; a missing symbol holds the others at most
    ``hold_s``). A node's state is its own, so what each symbol computes does not depend on when its
    neighbours' bars come; computing on arrival spends the 0.2-2 s over which Binance's closed
    frames of one minute arrive, so the minute is handed on right after its last frame. A bar of a
    symbol with no node is logged and dropped. ``after(node, bar, signal, recv_ns)`` as in
    :func:`consume`, at commit."""
    by_symbol = {n.symbol: n for n in nodes}
    order = MinuteOrder([n.symbol for n in nodes], step_ms)
    rank = order.rank
    stats = getattr(source, "stats", None)
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:  # the feed, read beside the ordering (which may wait out a hold)
        try:
            async for sym, bar in source.stream():
                recv = stats.last_recv_ns if (stats is not None and bar.source == "ws") else None
                queue.put_nowait((sym, bar, recv))
        except BaseException as exc:
            queue.put_nowait((_END, exc, None))
            raise
        queue.put_nowait((_END, None, None))

    def compute(todo: list[tuple[str, Bar, int | None]]) -> list[tuple[Node, int | None, Any] | None]:
        jobs: list[tuple[Node, Bar, int | None]] = []
        slots: list[tuple[Node, int | None] | None] = []
        for sym, bar, recv_ns in todo:
            node = by_symbol.get(sym)
            if node is None:
                log.warning("bar_unknown_symbol", symbol=sym, open_time=bar.open_time)
                slots.append(None)
                continue
            recv = None if recv_ns is not None and recv_ns < ready_ns() else recv_ns
            slots.append((node, recv))
            jobs.append((node, bar, recv))
        done = iter(compute_many(jobs))
        return [None if s is None else (s[0], s[1], next(done)) for s in slots]

    def run(items: list[tuple[str, Bar, Any]]) -> None:
        for _sym, bar, held in items:
            if held is None:
                continue
            node, recv_ns, done = held
            sig = node.commit(done)
            if after is not None:
                after(node, bar, sig, recv_ns)

    reader = asyncio.get_running_loop().create_task(pump(), name="feed")
    since = 0.0  # when the held minute's first bar came
    try:
        while True:
            if order.holding:
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, since + hold_s - time.monotonic()))
                except TimeoutError:
                    run(order.flush())
                    continue
            else:
                item = await queue.get()
            batch = [item]  # everything the feed has given meanwhile (a backfill releases many at once),
            while not queue.empty():  # in (minute, config order): each symbol's own order is kept
                batch.append(queue.get_nowait())
            end = next((i for i, it in enumerate(batch) if it[0] is _END), None)
            todo = batch if end is None else batch[:end]
            if len(todo) > 1:
                todo.sort(key=lambda it: (it[1].open_time, rank.get(it[0], len(rank))))
            for (sym, bar, _), held in zip(todo, compute(todo), strict=True):
                was = order.minute
                run(order.add(sym, bar, held))
                if order.holding and order.minute != was:
                    since = time.monotonic()
            if end is not None:
                run(order.flush())
                exc = batch[end][1]
                if exc is not None and not isinstance(exc, asyncio.CancelledError):
                    raise exc
                return
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
