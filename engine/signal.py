"""The ``Signal`` record every sink receives. Pure: no clock, no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from barsignal.engine.regime import NEVER, REGIMES, RegimeRule

ACTIONS = ("long", "short", "flat")


def signal_id(symbol: str, open_time: int, artifact_hash: str) -> str:
    """Deterministic id: the same bar scored by the same artifact always gets the same id,
    so a restart re-emits nothing new and downstream can de-duplicate by id."""
    return f"{symbol}-{open_time}-{artifact_hash[:12]}"


@dataclass(frozen=True, slots=True)
class Signal:
    id: str
    symbol: str
    open_time: int  # the scored bar's open time, ms UTC
    bar_open: float  # the scored bar's open and close (the paper broker's prices)
    bar_close: float
    p_up: float  # float32 probability widened to float (bit-exact round trip)
    action: str  # "long" | "short" | "flat"
    artifact: str  # the model artifact's hash
    source: str = "ws"  # where the scored bar came from: ws | rest | file
    latency_us: dict[str, float] = field(default_factory=dict)  # recv_to_bar, features, score, emit
    # The move-size forecast (engine/move.py), None (JSON null, never NaN) while its forecaster warms up
    # or when the artifact has none: P(|close[t+h] / close[t] - 1| > threshold_bp), its scale in bp,
    # and the regime rule's "calm" / "active" for it.
    p_move: float | None = None
    sigma_bp: float | None = None
    regime: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RuleState:
    """What the rule remembers between bars: the action held and bars since it last changed, and the
    same two for the regime (a state stored without them starts "calm", with no cooldown).

    ``move``: the move forecaster's persisted state, tagged with its artifact (``engine/move.py``
    ``tag_state``), carried beside the rule's state so it is stored and restored with it; the rule
    never reads it (and it takes no part in equality). None: nothing stored (an older row, or a
    forecaster that learns nothing)."""

    action: str = "flat"
    held_bars: int = 1 << 30  # bars since the last change (large: no cooldown at start)
    regime: str = "calm"
    regime_bars: int = NEVER  # bars since the regime last changed
    move: dict[str, Any] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {"action": self.action, "held_bars": self.held_bars, "regime": self.regime,
             "regime_bars": self.regime_bars}
        if self.move is not None:
            d["move"] = self.move
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RuleState:
        action = str(d.get("action", "flat"))
        if action not in ACTIONS:
            raise ValueError(f"rule state: unknown action {action!r}; expected one of {ACTIONS}")
        regime = str(d.get("regime", "calm"))
        if regime not in REGIMES:
            raise ValueError(f"rule state: unknown regime {regime!r}; expected one of {REGIMES}")
        move = d.get("move")
        return cls(action, int(d.get("held_bars", 1 << 30)), regime, int(d.get("regime_bars", NEVER)),
                   dict(move) if isinstance(move, dict) else None)


class SignalRule:
    """Turns p_up into an action: long / short / flat thresholds, hysteresis and a cooldown.

    - Enter long when ``p_up >= long_threshold``; stay long while ``p_up >= long_threshold - hysteresis``.
    - Enter short when ``p_up <= short_threshold`` (only with ``allow_short``; otherwise that zone is
      flat); stay short while ``p_up <= short_threshold + hysteresis``.
    - Anything else is flat. After the action changes it is held for ``cooldown_bars`` more bars.
    - A long or short is held for at least ``min_hold_bars`` bars (the label horizon: a position
      entered on a prediction for h bars ahead is not closed before those h bars are over).
    - ``stay_flat``: every action is flat (the artifact's policy when no setting was net-positive
      after costs on validation; its p_up is then informational).

    - ``regime`` (:class:`~barsignal.engine.regime.RegimeRule`) turns the bar's p_move into "calm" /
      "active" beside the action; both live in one :class:`RuleState`.

    Pure and deterministic: the same p_up (and p_move) sequence from the same state gives the same
    actions (and regimes).
    """

    __slots__ = ("allow_short", "cooldown_bars", "hysteresis", "long_threshold", "min_hold_bars",
                 "regime", "short_threshold", "state", "stay_flat")

    def __init__(self, long_threshold: float, short_threshold: float, hysteresis: float = 0.0,
                 cooldown_bars: int = 0, allow_short: bool = False, state: RuleState | None = None,
                 min_hold_bars: int = 0, stay_flat: bool = False, regime: RegimeRule | None = None) -> None:
        if not 0.0 <= short_threshold <= long_threshold <= 1.0:
            raise ValueError(f"signal thresholds: need 0 <= short ({short_threshold}) <= long "
                             f"({long_threshold}) <= 1; fix [signal] or the artifact's thresholds")
        if hysteresis < 0 or cooldown_bars < 0 or min_hold_bars < 0:
            raise ValueError("signal rule: hysteresis, cooldown_bars and min_hold_bars must be >= 0")
        self.long_threshold = float(long_threshold)
        self.short_threshold = float(short_threshold)
        self.hysteresis = float(hysteresis)
        self.cooldown_bars = int(cooldown_bars)
        self.allow_short = bool(allow_short)
        self.min_hold_bars = int(min_hold_bars)
        self.stay_flat = bool(stay_flat)
        self.regime = regime or RegimeRule()
        self.state = state or RuleState()

    @classmethod
    def from_config(cls, cfg: Any, artifact_thresholds: dict[str, float],
                    state: RuleState | None = None) -> SignalRule:
        """Thresholds from the artifact's ``signal`` section (``long_threshold``/``short_threshold``)
        unless ``cfg`` (a SignalConfig) overrides them. Hysteresis and cooldown: the config's when
        non-zero, else the artifact's; the minimum hold is the artifact's ``min_hold_bars`` (0 if absent).
        An artifact whose ``policy`` is ``"flat"`` gives a rule that stays flat, unless the config
        sets a threshold (the operator's explicit choice)."""
        art = artifact_thresholds
        stay_flat = (art.get("policy") == "flat" and cfg.long_threshold is None
                     and cfg.short_threshold is None)
        hysteresis = cfg.hysteresis or float(art.get("hysteresis") or 0.0)
        cooldown = cfg.cooldown_bars or int(art.get("cooldown_bars") or 0)
        min_hold = getattr(cfg, "min_hold_bars", None)
        min_hold = int(art.get("min_hold_bars") or 0) if min_hold is None else int(min_hold)
        long_t = (cfg.long_threshold if cfg.long_threshold is not None
                  else artifact_thresholds["long_threshold"])
        short_t = (cfg.short_threshold if cfg.short_threshold is not None
                   else artifact_thresholds["short_threshold"])
        if long_t is None:
            raise ValueError("the artifact has no long_threshold; set [signal] long_threshold")
        if short_t is None:  # an artifact chosen without shorts has none
            if cfg.allow_short:
                raise ValueError("[signal] allow_short = true, but the artifact has no short_threshold; "
                                 "set [signal] short_threshold")
            short_t = 0.0  # unused: without shorts that zone is flat
        regime = RegimeRule.from_config(cfg) if hasattr(cfg, "regime_threshold") else None
        return cls(long_t, short_t, hysteresis, cooldown, cfg.allow_short, state, min_hold, stay_flat, regime)

    def params(self) -> dict[str, Any]:
        """The settings (not the state): what the bar record keeps so parity rebuilds this rule."""
        return {"long_threshold": self.long_threshold, "short_threshold": self.short_threshold,
                "hysteresis": self.hysteresis, "cooldown_bars": self.cooldown_bars, "allow_short": self.allow_short,
                "min_hold_bars": self.min_hold_bars, "stay_flat": self.stay_flat, "regime": self.regime.params()}

    @classmethod
    def from_params(cls, d: dict[str, Any], state: RuleState | None = None) -> SignalRule:
        """The rule :meth:`params` described (a bar record's ``rule``; one without ``regime``: the
        regime rule's defaults)."""
        return cls(float(d["long_threshold"]), float(d["short_threshold"]), float(d["hysteresis"]),
                   int(d["cooldown_bars"]), bool(d["allow_short"]), state, int(d["min_hold_bars"]),
                   bool(d["stay_flat"]), RegimeRule.from_params(d.get("regime")))

    def target(self, p_up: float, held: str) -> str:
        """The action ``p_up`` asks for, given the action held (hysteresis, no cooldown)."""
        if p_up >= self.long_threshold or (held == "long" and p_up >= self.long_threshold - self.hysteresis):
            return "long"
        if self.allow_short and (
            p_up <= self.short_threshold
            or (held == "short" and p_up <= self.short_threshold + self.hysteresis)
        ):
            return "short"
        return "flat"

    def update(self, p_up: float, p_move: float = float("nan"), move: dict[str, Any] | None = None) -> str:
        """Advance one bar and return its action; the regime for ``p_move`` is then ``state.regime``.
        ``move``: the move forecaster's state after this bar, carried in the new state unread."""
        st = self.state
        held_bars = st.held_bars + 1
        want = "flat" if self.stay_flat else self.target(p_up, st.action)
        regime, regime_bars = self.regime.step(st.regime, st.regime_bars, p_move)
        if (want != st.action and held_bars > self.cooldown_bars
                and (st.action == "flat" or held_bars >= self.min_hold_bars)):
            self.state = RuleState(want, 0, regime, regime_bars, move)
        else:
            self.state = RuleState(st.action, min(held_bars, 1 << 30), regime, regime_bars, move)
        return self.state.action
