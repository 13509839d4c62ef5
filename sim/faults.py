"""Fault injection for ``feed serve``: what can go wrong on Binance's stream and REST API.

A spec is a comma-separated list of ``key=value``; keys may repeat for scheduled events::

    drop=0.05,dup=0.02,ooo=0.02,late=0.02,malformed=0.05,delay=0.1,delay_s=0.3,
    gap=120:5,disconnect=200,shutdown=300,stall=400,rest429=0.1,rest418=0.01,rest5xx=0.1,
    rest_timeout=0.05,rest_timeout_s=15,refuse=2,retry_after_s=1,seed=7

Probabilities apply to each closed-kline frame of each symbol (or REST request); scheduled events
name a tick of the served clock (the bar index when one symbol is served; with many, the index
into the union of their open times). ``gap=I:N`` removes ticks I..I+N-1 of every symbol from both
the stream and REST
(an exchange halt: nothing can fill it); ``drop`` loses a closed frame on the stream only
(REST still has it). ``stall`` silences the connections open at that bar (pings go on, data
stops) until they close. ``disconnect`` drops every connection; ``shutdown`` sends
``serverShutdown`` first. ``forge=I:N`` sends, right after each symbol's closed frame of tick I,
N more closed frames (default 2: the forged pair) dated five years ahead, their event times forged
to match. ``symbols=ETHUSDT+SOLUSDT`` narrows the per-frame and REST faults to those
symbols (the others stay clean: one symbol's trouble must not touch another's bars).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from barsignal.errors import ConfigError

_PROBS = ("drop", "dup", "ooo", "late", "malformed", "delay", "rest429", "rest418", "rest5xx", "rest_timeout")
_EVENTS = ("disconnect", "shutdown", "stall")


@dataclass(frozen=True)
class Faults:
    drop: float = 0.0  # closed frame never sent (REST has the bar)
    dup: float = 0.0  # closed frame sent twice
    ooo: float = 0.0  # closed frame held back and sent after the next bar's
    late: float = 0.0  # closed frame sent again three bars later
    malformed: float = 0.0  # a bad frame (garbage, truncated, wrong type, NaN, negative, symbol, oversized)
    delay: float = 0.0  # closed frame delayed by delay_s
    delay_s: float = 0.2
    rest429: float = 0.0  # 429 with Retry-After
    rest418: float = 0.0  # 418 (IP ban) with Retry-After
    rest5xx: float = 0.0  # 503
    rest_timeout: float = 0.0  # no answer for rest_timeout_s
    rest_timeout_s: float = 30.0
    retry_after_s: int = 1
    refuse: int = 0  # the first N websocket handshakes get HTTP 429 with Retry-After
    gaps: tuple[tuple[int, int], ...] = ()  # (first bar index, count): an exchange halt
    disconnect: tuple[int, ...] = ()
    shutdown: tuple[int, ...] = ()
    stall: tuple[int, ...] = ()
    forge: tuple[tuple[int, int], ...] = ()  # (tick, frames): closed frames five years ahead, E forged too
    symbols: tuple[str, ...] = ()  # frame and REST faults hit only these symbols (empty: every symbol)
    seed: int = 0

    def hits(self, symbol: str) -> bool:
        """Whether the per-frame and per-request faults apply to ``symbol``."""
        return not self.symbols or symbol.upper() in self.symbols

    @classmethod
    def parse(cls, spec: str | None) -> Faults:
        """Parse a ``--faults`` spec; ConfigError names the bad item and the allowed keys."""
        if not spec:
            return cls()
        kw: dict[str, object] = {}
        lists: dict[str, list] = {"gaps": [], "disconnect": [], "shutdown": [], "stall": [], "forge": []}
        allowed = [*_PROBS, *_EVENTS, "gap", "forge", "delay_s", "rest_timeout_s", "retry_after_s", "refuse", "symbols",
                   "seed"]
        for item in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            try:
                if not sep:
                    raise ValueError("expected key=value")
                if key in _PROBS:
                    p = float(value)
                    if not 0 <= p <= 1:
                        raise ValueError("a probability must be in [0, 1]")
                    kw[key] = p
                elif key in ("delay_s", "rest_timeout_s"):
                    kw[key] = float(value)
                elif key in ("retry_after_s", "seed", "refuse"):
                    kw[key] = int(value)
                elif key == "gap":
                    start, _, n = value.partition(":")
                    lists["gaps"].append((int(start), int(n or 1)))
                elif key == "forge":
                    tick, _, n = value.partition(":")
                    lists["forge"].append((int(tick), int(n or 2)))
                elif key in _EVENTS:
                    lists[key].append(int(value))
                elif key == "symbols":
                    syms = tuple(x.strip().upper() for x in value.split("+") if x.strip())
                    if not syms:
                        raise ValueError("expected SYMBOL[+SYMBOL...]")
                    kw["symbols"] = syms
                else:
                    raise ValueError(f"unknown key; allowed: {', '.join(allowed)}")
            except ValueError as exc:
                raise ConfigError(f"--faults item {item!r}: {exc}") from None
        return cls(**kw, **{k: tuple(v) for k, v in lists.items()})  # type: ignore[arg-type]

    def describe(self) -> str:
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                parts.append(f"{f.name}={v}")
        return ",".join(parts) or "none"
