"""Move forecasters by the ``kind`` an artifact's manifest names (see ``engine/move.py``)."""

from __future__ import annotations

from collections.abc import Callable

from barsignal.engine import move_har, move_persistence
from barsignal.engine.move import MoveForecaster, MoveSpec

# kind -> class; one explicit import per kind, no string imports.
REGISTRY: dict[str, Callable[[MoveSpec], MoveForecaster]] = {
    move_persistence.KIND: move_persistence.RvolLogistic,
    move_har.KIND: move_har.HarSeasonal,  # HAR-RV with an intraday and weekly seasonal factor
}


def build(spec: MoveSpec) -> MoveForecaster:
    """A fresh forecaster for ``spec``; a ValueError names an unknown kind."""
    try:
        cls = REGISTRY[spec.kind]
    except KeyError:
        raise ValueError(f"artifact manifest 'move': unknown kind {spec.kind!r}; known: {sorted(REGISTRY)}; "
                         "rebuild the artifact or upgrade barsignal") from None
    return cls(spec)
