"""Signal-by-signal comparison of live and replayed signals: same bars, same p_up bits, same actions,
same p_move and sigma_bp bits (float64; both null, or neither), same regimes."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from barsignal.engine.signal import Signal


def f32_bits(x: float) -> int:
    """The float32 bit pattern of ``x`` (p_up is a float32 widened to float)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f64_bits(x: float | None) -> int | None:
    """The float64 bit pattern of ``x`` (p_move and sigma_bp are float64), None for None."""
    return None if x is None else struct.unpack("<Q", struct.pack("<d", x))[0]


def _show_f64(x: float | None) -> str:
    return "null" if x is None else f"{x!r} (0x{f64_bits(x):016x})"


@dataclass(frozen=True)
class Difference:
    index: int  # position among the bars compared, in bar order
    open_time: int
    what: str  # "missing in replay", "extra in replay", "p_up", "p_move", "sigma_bp", "action", "regime", "artifact"
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
    vice versa; p_up must be equal as float32 bits, p_move and sigma_bp as float64 bits (or both
    null), and action, regime, symbol and artifact equal.
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
            elif f64_bits(a.p_move) != f64_bits(b.p_move):
                diffs.append(Difference(i, k[1], "p_move", _show_f64(a.p_move), _show_f64(b.p_move)))
            elif f64_bits(a.sigma_bp) != f64_bits(b.sigma_bp):
                diffs.append(Difference(i, k[1], "sigma_bp", _show_f64(a.sigma_bp), _show_f64(b.sigma_bp)))
            elif a.action != b.action:
                diffs.append(Difference(i, k[1], "action", a.action, b.action))
            elif a.regime != b.regime:
                diffs.append(Difference(i, k[1], "regime", str(a.regime), str(b.regime)))
            elif a.artifact != b.artifact:
                diffs.append(Difference(i, k[1], "artifact", a.artifact, b.artifact))
        if len(diffs) >= limit:
            break
    return ParityResult(compared, diffs)


def _show(s: Signal) -> str:
    return f"{s.action} p_up={s.p_up!r} {s.regime} p_move={s.p_move!r} source={s.source}"
