"""Signal-by-signal comparison of live and replayed signals: same bars, same p_up bits, same actions."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from barsignal.engine.signal import Signal


def f32_bits(x: float) -> int:
    """The float32 bit pattern of ``x`` (p_up is a float32 widened to float)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


@dataclass(frozen=True)
class Difference:
    index: int  # position among the bars compared, in bar order
    open_time: int
    what: str  # "missing in replay", "extra in replay", "p_up", "action", "artifact", "symbol"
    live: str
    replay: str

    def __str__(self) -> str:
        return (f"signal #{self.index} (bar open_time {self.open_time}): {self.what} differs: "
                f"live {self.live} | replay {self.replay}")


@dataclass
class ParityResult:
    compared: int
    differences: list[Difference]

    @property
    def ok(self) -> bool:
        return not self.differences


def compare(live: Iterable[Signal], replay: Iterable[Signal], limit: int = 100) -> ParityResult:
    """Compare by bar (open_time). Every bar signalled live must be signalled by the replay and
    vice versa; p_up must be equal as float32 bits, and action, symbol and artifact equal.
    Live signals repeated after a restart (same id) count once. Stops after ``limit`` differences."""
    live_by: dict[tuple[str, int], Signal] = {}
    for s in live:
        live_by.setdefault((s.symbol, s.open_time), s)
    rep_by: dict[tuple[str, int], Signal] = {}
    for s in replay:
        rep_by.setdefault((s.symbol, s.open_time), s)
    diffs: list[Difference] = []
    keys = sorted(live_by.keys() | rep_by.keys(), key=lambda k: (k[1], k[0]))
    compared = 0
    for i, k in enumerate(keys):
        a, b = live_by.get(k), rep_by.get(k)
        if a is None:
            assert b is not None
            diffs.append(Difference(i, k[1], "extra in replay", "(no signal)", _show(b)))
        elif b is None:
            diffs.append(Difference(i, k[1], "missing in replay", _show(a), "(no signal)"))
        else:
            compared += 1
            if f32_bits(a.p_up) != f32_bits(b.p_up):
                diffs.append(Difference(i, k[1], "p_up", f"{a.p_up!r} (0x{f32_bits(a.p_up):08x})",
                                        f"{b.p_up!r} (0x{f32_bits(b.p_up):08x})"))
            elif a.action != b.action:
                diffs.append(Difference(i, k[1], "action", a.action, b.action))
            elif a.artifact != b.artifact:
                diffs.append(Difference(i, k[1], "artifact", a.artifact, b.artifact))
        if len(diffs) >= limit:
            break
    return ParityResult(compared, diffs)


def _show(s: Signal) -> str:
    return f"{s.action} p_up={s.p_up!r} source={s.source}"
