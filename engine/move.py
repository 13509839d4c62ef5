"""The move-size forecast: P(|close[t+h] / close[t] - 1| > c) for the bar just closed.

A forecaster is incremental and pure (no clock, no I/O): it sees every closed bar once, in order,
through ``update``, and returns ``(p_move, sigma_bp)`` for that bar, NaN while it is warming up.
Its parameters come from the artifact's manifest (``"move": {"horizon": h, "threshold_bp": c,
"kind": ..., "params": {...}}``); ``kind`` names a class in ``engine/move_registry.py``. ``snapshot``/``restore``
let keep-warm rehearse a bar and put every value back.

``persisted``/``resume`` are the small part of the state that outlives the process (the learned
online correction of ``har_seasonal``: ``{"delta": float}``; None for a forecaster that learns
nothing). The pipeline stores it with the rule state (``RuleState.move``, tagged with the artifact
hash, see :func:`tag_state`), and a restart resumes it (``Node.restore``; a state tagged with another
artifact is ignored).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from barsignal.features.bar import Bar

NAN = float("nan")


@dataclass(frozen=True, slots=True)
class MoveSpec:
    """What the artifact says about its move output."""

    horizon: int  # bars ahead: the move is close[t + horizon] / close[t] - 1
    threshold_bp: float  # the cost c, in basis points: p_move = P(|move| > c)
    kind: str  # a key of REGISTRY
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, move: Mapping[str, Any]) -> MoveSpec:
        """Parse the manifest's ``move`` section; a ValueError names what is wrong."""
        try:
            spec = cls(int(move["horizon"]), float(move["threshold_bp"]), str(move["kind"]),
                       dict(move.get("params", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"artifact manifest 'move': {e!r}; expected horizon, threshold_bp, kind, params") from e
        if spec.horizon < 1 or not math.isfinite(spec.threshold_bp) or spec.threshold_bp <= 0:
            raise ValueError(f"artifact manifest 'move': horizon must be >= 1 and threshold_bp > 0, got {move}")
        return spec

    def to_manifest(self) -> dict[str, Any]:
        return {"horizon": self.horizon, "threshold_bp": self.threshold_bp, "kind": self.kind,
                "params": dict(self.params)}


class MoveForecaster(Protocol):
    """Incremental move-size forecaster (one per symbol)."""

    spec: MoveSpec

    def update(self, bar: Bar) -> tuple[float, float]:
        """Take the next closed bar; return (p_move, sigma_bp) for it, NaN while warming up."""
        ...

    def snapshot(self) -> object:
        """Everything ``update`` changes, for ``restore``."""
        ...

    def restore(self, snap: object) -> None:
        """Put back what ``snapshot`` saved."""
        ...

    def reset(self) -> None:
        """Forget every bar seen."""
        ...

    def persisted(self) -> dict[str, Any] | None:
        """What a restart resumes (JSON numbers; float64 round-trips bit for bit), or None."""
        ...

    def resume(self, d: Mapping[str, Any]) -> None:
        """Take back what ``persisted`` returned; a ValueError names a bad value."""
        ...


def tag_state(artifact_hash: str, persisted: Mapping[str, Any]) -> dict[str, Any]:
    """``persisted`` tagged with the artifact it belongs to: the form ``RuleState.move`` stores."""
    return {"artifact": artifact_hash, **persisted}


def untag_state(stored: Mapping[str, Any] | None, artifact_hash: str) -> dict[str, Any] | None:
    """The persisted state in ``stored`` when it belongs to ``artifact_hash``, else None."""
    if stored is None or stored.get("artifact") != artifact_hash:
        return None
    return {k: v for k, v in stored.items() if k != "artifact"}
