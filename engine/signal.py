"""The ``Signal`` record every sink receives. Pure: no clock, no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
