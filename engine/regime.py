"""The regime rule: ``p_move`` -> ``"calm"`` / ``"active"``, beside the direction action. Pure.

- Enter ``active`` when ``p_move >= threshold``; stay active while ``p_move >= threshold - hysteresis``.
- Anything else is ``calm``. After the regime changes it is held for ``cooldown_bars`` more bars.
- A NaN ``p_move`` (the forecaster warming up, or an artifact without a move forecast) changes nothing:
  the regime held stays, and the bar counts towards the cooldown.

The state is two values, the regime held and the bars since it last changed, carried in
``engine.signal.RuleState`` with the action's (so the outbox, the bar record and a swap restore both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REGIMES = ("calm", "active")
NEVER = 1 << 30  # bars since a change, at start: no cooldown


@dataclass(frozen=True, slots=True)
class RegimeRule:
    threshold: float = 0.5  # p_move at or above this enters "active"
    hysteresis: float = 0.05  # ... and it stays active down to threshold - hysteresis
    cooldown_bars: int = 0  # bars a new regime is held before it may change again

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.hysteresis <= self.threshold:
            raise ValueError(f"regime rule: need 0 <= regime_hysteresis ({self.hysteresis}) <= regime_threshold "
                             f"({self.threshold}) <= 1; fix [signal]")
        if self.cooldown_bars < 0:
            raise ValueError("regime rule: regime_cooldown_bars must be >= 0; fix [signal]")

    @classmethod
    def from_config(cls, cfg: Any) -> RegimeRule:
        """From a SignalConfig's ``regime_threshold``, ``regime_hysteresis``, ``regime_cooldown_bars``."""
        return cls(float(cfg.regime_threshold), float(cfg.regime_hysteresis), int(cfg.regime_cooldown_bars))

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "hysteresis": self.hysteresis, "cooldown_bars": self.cooldown_bars}

    @classmethod
    def from_params(cls, d: dict[str, Any] | None) -> RegimeRule:
        """The rule :meth:`params` described; the defaults where ``d`` is None (a record without one)."""
        if d is None:
            return cls()
        return cls(float(d["threshold"]), float(d["hysteresis"]), int(d["cooldown_bars"]))

    def step(self, regime: str, held: int, p_move: float) -> tuple[str, int]:
        """The regime and bars-since-change after one bar with ``p_move``, from ``(regime, held)``."""
        held += 1
        if p_move >= self.threshold or (regime == "active" and p_move >= self.threshold - self.hysteresis):
            want = "active"
        elif p_move == p_move:  # not NaN
            want = "calm"
        else:
            want = regime
        if want != regime and held > self.cooldown_bars:
            return want, 0
        return regime, held if held < NEVER else NEVER
