"""Typed, frozen configuration loaded from TOML.

Every section is a frozen ``msgspec.Struct`` that rejects unknown keys. Errors name the file,
the section, the key and what is allowed. Secrets never live here: a section names the
environment variable (or systemd credential) that holds one; see ``barsignal.daemon.secrets``.
Each component receives its own section, never the whole config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from barsignal import tomlconfig

Pos = Annotated[float, Meta(gt=0)]
NonNeg = Annotated[float, Meta(ge=0)]
Prob = Annotated[float, Meta(ge=0, le=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


# Binance symbol ids: BTCUSDT, ETHBTC, 1000SATSUSDT (upper case; lower case is accepted and upper-cased).
SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")
# A rollover opens a new connection; at most one per 5 s uses a fifth of Binance's 300 connection
# attempts per 5 minutes per IP even if every rollover happened back to back.
MIN_ROLLOVER_S = 5.0


class FeedConfig(_Section):
    symbols: tuple[str, ...] = ("BTCUSDT",)
    interval: Literal["1m"] = "1m"
    # Combined-stream base; the client appends /stream?streams=btcusdt@kline_1m/...
    # The market-data-only host wss://data-stream.binance.vision works too.
    ws_url: str = "wss://stream.binance.com:9443"
    rest_url: str = "https://api.binance.com"  # REST backfill (GET /api/v3/klines)
    stale_grace_s: Pos = 15.0  # no closed bar within interval + grace -> reconnect
    reconnect_min_s: Pos = 1.0
    reconnect_max_s: Pos = 60.0
    healthy_reset_s: Pos = 60.0  # a connection up this long resets the backoff
    rollover_s: Annotated[float, Meta(ge=MIN_ROLLOVER_S)] = 23 * 3600.0  # reconnect before Binance's 24 h limit
    rest_timeout_s: Pos = 10.0
    max_frame_bytes: Annotated[int, Meta(ge=1024)] = 65536
    # Streams per websocket connection: Binance allows at most 1024; more symbols open more connections.
    max_streams_per_connection: Annotated[int, Meta(ge=1, le=1024)] = 1024
    # REST request weight a minute for warm-ups and backfills (klines cost 2 a call); Binance allows
    # 6000 an IP, so this leaves room for other clients on the same IP.
    rest_weight_per_minute: Annotated[int, Meta(ge=2, le=6000)] = 2400
    # A frame's event time more than this past the local clock plus the measured offset to the
    # exchange is not believed, and its bar is dropped and counted (daemon/feed/clock.py).
    clock_tolerance_s: Pos = 5.0
    # Each symbol's status is read from exchangeInfo at start (unknown or not TRADING: exit 2) and
    # again this often; a symbol that stops trading stops only its own node. 0: only at start.
    exchange_info_every_s: NonNeg = 300.0
    # Check the symbols against exchangeInfo at all (false: a klines-only server that lists none).
    check_symbols: bool = True

    def __post_init__(self) -> None:
        for s in self.symbols:
            if not SYMBOL_RE.match(s.upper()):
                raise ValueError(f"[feed] symbols: {s!r} is not a Binance symbol id (2 to 20 letters and digits, "
                                 "no separator, e.g. \"BTCUSDT\"); fix [feed] symbols")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"[feed] reconnect_max_s = {self.reconnect_max_s:g} is below reconnect_min_s = "
                             f"{self.reconnect_min_s:g}; make reconnect_max_s >= reconnect_min_s")


class FeaturesConfig(_Section):
    # What a gap the REST backfill cannot fill does: "continue" keeps the indicators running
    # across it (flagged), "reset" restarts warm-up.
    gap_policy: Literal["continue", "reset"] = "continue"


class ModelConfig(_Section):
    artifact: str = ""  # artifact directory; empty = the bundled default
    variant: str = ""  # ONNX variant inside the artifact; empty = the manifest's default
    # [model.symbols] ETHUSDT = "path": that symbol's own artifact (verified at start like the default);
    # a symbol not named here uses the default. Keys must be in [feed] symbols (checked by `barsignal run`).
    symbols: dict[str, str] = msgspec.field(default_factory=dict)


class EngineConfig(_Section):
    backend: Literal["auto", "onnxruntime", "tensorrt", "torch"] = "auto"
    intra_op_threads: Annotated[int, Meta(ge=1, le=256)] = 1
    spinning: bool = False  # ONNX Runtime intra-op spinning: lower latency, burns a core
    # Busy-poll and keep the scorer hot for this long either side of the next closed bar's
    # expected arrival (daemon/keepwarm.py): about 2x this much of one core per bar. 0: off.
    keep_warm_ms: Annotated[float, Meta(ge=0, le=10_000)] = 100.0
    engine_cache_dir: str = ""  # TensorRT engines; empty = <state dir>/engines


class SignalConfig(_Section):
    # Thresholds default to the artifact's (chosen on validation); set them here to override.
    long_threshold: Annotated[float, Meta(ge=0, le=1)] | None = None
    short_threshold: Annotated[float, Meta(ge=0, le=1)] | None = None
    hysteresis: Annotated[float, Meta(ge=0, le=0.5)] = 0.0
    cooldown_bars: Annotated[int, Meta(ge=0)] = 0
    allow_short: bool = False
    # The regime rule (engine/regime.py): p_move >= regime_threshold enters "active", which holds down
    # to regime_threshold - regime_hysteresis; a new regime is held regime_cooldown_bars more bars.
    regime_threshold: Prob = 0.5
    regime_hysteresis: Annotated[float, Meta(ge=0, le=0.5)] = 0.05
    regime_cooldown_bars: Annotated[int, Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        if self.regime_hysteresis > self.regime_threshold:
            raise ValueError(f"[signal] regime_hysteresis = {self.regime_hysteresis:g} is above regime_threshold = "
                             f"{self.regime_threshold:g}; make it at most the threshold")


class StdoutSinkConfig(_Section):
    pass


class JsonlSinkConfig(_Section):
    path: str = "signals.jsonl"  # relative paths are under the state directory
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval_s: Pos = 1.0


class WebhookSinkConfig(_Section):
    url: str = ""
    timeout_s: Pos = 2.0
    retries: Annotated[int, Meta(ge=0, le=20)] = 3
    token_env: str = "BARSIGNAL_WEBHOOK_TOKEN"  # bearer token: env var or credential of this name
    allow_insecure_http: bool = False  # plain http:// to a non-loopback host


class RedisSinkConfig(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    stream: str = "barsignal:signals"
    maxlen: Annotated[int, Meta(ge=1)] = 100_000
    password_env: str = "BARSIGNAL_REDIS_PASSWORD"


class SinksConfig(_Section):
    enabled: tuple[str, ...] = ("stdout", "paper")
    queue_size: Annotated[int, Meta(ge=1)] = 1024  # per sink; at least 16 x symbols (outbox.sink_queue_size)
    stdout: StdoutSinkConfig = msgspec.field(default_factory=StdoutSinkConfig)
    jsonl: JsonlSinkConfig = msgspec.field(default_factory=JsonlSinkConfig)
    webhook: WebhookSinkConfig = msgspec.field(default_factory=WebhookSinkConfig)
    redis: RedisSinkConfig = msgspec.field(default_factory=RedisSinkConfig)


class PaperConfig(_Section):
    fill: Literal["next_open", "close"] = "next_open"
    fee_bps: NonNeg = 10.0  # Binance spot taker fee, 0.1 %
    slippage_bps: NonNeg = 1.0
    sizing: Literal["fixed_notional", "equity_fraction"] = "equity_fraction"
    notional: Pos = 1000.0
    equity_fraction: Annotated[float, Meta(gt=0, le=1)] = 1.0
    initial_cash: Pos = 10_000.0
    allow_short: bool = False
    ledger: str = "paper.sqlite"  # relative paths are under the state directory


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9464
    drift_psi_warn: Pos = 0.25  # the PSI bound for an artifact without calibrated ones (features.psi_bounds)
    monitor_window: Annotated[int, Meta(ge=10)] = 1440


class HealthConfig(_Section):
    # A symbol with no new bar for this long (it resubscribes and backfills by itself meanwhile)
    # withholds the systemd watchdog, so systemd restarts the daemon; 0: never (only the whole feed
    # going stale withholds it).
    stale_symbol_watchdog_s: NonNeg = 0.0


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class StateConfig(_Section):
    # Ledger, outbox, bar record, engines. Empty: $STATE_DIRECTORY (systemd's StateDirectory=), else
    # $XDG_STATE_HOME/barsignal (~/.local/state/barsignal). Absolute or ~/...: a relative one would depend
    # on the working directory. Relative paths elsewhere in the config ([sinks.jsonl] path, [paper] ledger)
    # are under this directory.
    dir: str = ""

    def __post_init__(self) -> None:
        if self.dir and not Path(self.dir).expanduser().is_absolute():
            raise ValueError(f"[state] dir = {self.dir!r} is relative, so it would depend on the working directory; "
                             "give an absolute path (or ~/...), or leave it empty for the default "
                             "($STATE_DIRECTORY under systemd, else ~/.local/state/barsignal)")


class Config(_Section):
    feed: FeedConfig = msgspec.field(default_factory=FeedConfig)
    features: FeaturesConfig = msgspec.field(default_factory=FeaturesConfig)
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    signal: SignalConfig = msgspec.field(default_factory=SignalConfig)
    sinks: SinksConfig = msgspec.field(default_factory=SinksConfig)
    paper: PaperConfig = msgspec.field(default_factory=PaperConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)


def state_dir(state: StateConfig) -> Path:
    """The state directory: ``$STATE_DIRECTORY`` (systemd's StateDirectory=) when set, else ``[state] dir``
    (``~`` expanded), else ``$XDG_STATE_HOME/barsignal`` (default ``~/.local/state/barsignal``)."""
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if env:
        return Path(env)
    if state.dir:
        return Path(state.dir).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "barsignal"


def loads(text: str, source: str = "<config>") -> Config:
    """Parse TOML text into a frozen Config; errors name source, section, key and what is allowed."""
    return tomlconfig.decode(text, source, Config)


def load(path: str | os.PathLike[str] | None) -> Config:
    """Load a config file; ``None`` gives the embedded defaults."""
    return Config() if path is None else tomlconfig.load_file(path, Config)
