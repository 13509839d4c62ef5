"""Validation of a bar series: sort, drop exact duplicates, refuse conflicting ones, report the rest.

Gaps are reported and kept, never filled. A gap is ``(start_ms, end_ms, missing)``: ``start`` is
the open time of the last bar before the hole, ``end`` the open time of the next bar present, and
``missing`` the number of whole bars between them (PROVENANCE.md's "04:00→08:45 (284 missing)").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from barsignal.data.intervals import common_step, interval_name
from barsignal.errors import DataError

OHLCV = ("open", "high", "low", "close", "volume")


def iso(ms: int) -> str:
    """``2021-04-25T04:00:00Z`` for an open time in ms."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Report:
    """What validation found in one file (or one merged series)."""

    source: str
    rows: int = 0  # bars kept (after dropping duplicates)
    first_open_ms: int | None = None
    last_open_ms: int | None = None
    interval_ms: int | None = None  # the most common step between consecutive bars
    duplicates: int = 0  # exact duplicate rows dropped
    conflicts: int = 0  # open times with rows that disagree (refused unless allowed)
    gaps: list[tuple[int, int, int]] = field(default_factory=list)
    out_of_order: int = 0  # rows whose open time is below the previous row's, in input order
    ohlc_errors: int = 0  # rows breaking low <= min(open, close) <= max(open, close) <= high, volume >= 0
    misaligned: int = 0  # steps that are not a whole number of intervals
    conflict_times: list[int] = field(default_factory=list)  # first few conflicting open times
    duplicate_times: list[int] = field(default_factory=list)  # first few open times of dropped duplicates

    @property
    def missing(self) -> int:
        return sum(g[2] for g in self.gaps)

    def to_json(self) -> dict[str, Any]:
        """The ``barsignal data inspect --json`` object."""
        return {
            "rows": self.rows, "first_open_ms": self.first_open_ms, "last_open_ms": self.last_open_ms,
            "interval_ms": self.interval_ms, "duplicates": self.duplicates, "conflicts": self.conflicts,
            "gaps": [list(g) for g in self.gaps],
        }

    def describe(self) -> str:
        """A few readable lines for a terminal."""
        if not self.rows:
            return f"{self.source}: 0 rows"
        lines = [
            f"{self.source}",
            f"  rows {self.rows}  {iso(self.first_open_ms or 0)} -> {iso(self.last_open_ms or 0)}"
            f"  interval {self.interval_ms} ms ({interval_name(self.interval_ms or 0) or '?'})",
            f"  duplicates dropped {self.duplicates}  conflicts {self.conflicts}"
            f"  out of order {self.out_of_order}"
            f"  OHLC errors {self.ohlc_errors}  misaligned {self.misaligned}",
            f"  gaps {len(self.gaps)} ({self.missing} bars missing)",
        ]
        lines += [f"    {iso(s)} -> {iso(e)}  ({m} missing)" for s, e, m in self.gaps[:50]]
        if len(self.gaps) > 50:
            lines.append(f"    ... {len(self.gaps) - 50} more")
        return "\n".join(lines)


def validate(cols: dict[str, np.ndarray], sources: list[str], src_idx: np.ndarray | None = None, *,
             allow_conflicts: bool = False, interval_hint: int | None = None,
             ) -> tuple[dict[str, np.ndarray], Report]:
    """Sort ``cols`` by open time, drop exact duplicates, and report what was found.

    ``cols`` holds ``open_time`` (int64 ms), OHLCV (float64) and optional extra columns;
    ``src_idx`` says which of ``sources`` each row came from (for error messages).
    Conflicting duplicates raise DataError naming the file and open time, unless
    ``allow_conflicts``, which keeps the first row of each open time and counts the rest.
    """
    t = np.asarray(cols["open_time"], dtype=np.int64)
    n = len(t)
    rep = Report(source=sources[0] if len(sources) == 1 else f"{len(sources)} files")
    if src_idx is None:
        src_idx = np.zeros(n, dtype=np.int32)
    if n and (t.min() < 0 or t.max() >= 10**14):
        i = int(np.argmax((t < 0) | (t >= 10**14)))
        raise DataError(f"{sources[int(src_idx[i])]}: open time {int(t[i])} is not ms since the epoch")
    finite = np.ones(n, dtype=bool)
    for k in OHLCV:
        finite &= np.isfinite(np.asarray(cols[k], dtype=np.float64))
    if not finite.all():
        i = int(np.argmin(finite))
        raise DataError(f"{sources[int(src_idx[i])]}: the bar at {iso(int(t[i]))} has a missing or "
                        f"non-finite OHLCV value; {int(n - finite.sum())} such rows")
    rep.out_of_order = int(np.count_nonzero(np.diff(t) < 0))
    order = np.argsort(t, kind="stable")
    s = {k: np.asarray(v)[order] for k, v in cols.items()}
    src = src_idx[order]
    ts = s["open_time"]

    same = np.zeros(n, dtype=bool)
    if n > 1:
        same[1:] = ts[1:] == ts[:-1]
    if same.any():
        first = np.maximum.accumulate(np.where(~same, np.arange(n), 0))
        later = np.nonzero(same)[0]
        equal = np.ones(len(later), dtype=bool)
        for v in s.values():
            equal &= v[later] == v[first[later]]
        rep.duplicates = int(equal.sum())
        rep.duplicate_times = [int(x) for x in np.unique(ts[later[equal]])[:10]]
        bad = later[~equal]
        if len(bad):
            bad_times = np.unique(ts[bad])
            rep.conflicts = len(bad_times)
            rep.conflict_times = [int(x) for x in bad_times[:10]]
            if not allow_conflicts:
                i = int(bad[0])
                files = sorted({sources[src[i]], sources[src[first[i]]]})
                row_a = [float(s[k][first[i]]) for k in OHLCV]
                row_b = [float(s[k][i]) for k in OHLCV]
                raise DataError(
                    f"{' and '.join(files)}: conflicting rows for open time "
                    f"{iso(int(ts[i]))} ({int(ts[i])} ms): "
                    f"OHLCV {row_a} vs {row_b} ({rep.conflicts} open times conflict in all); "
                    "fix or remove the bad source, the loader will not pick one")
        keep = ~same
        s = {k: v[keep] for k, v in s.items()}
        ts = s["open_time"]

    rep.rows = len(ts)
    if rep.rows:
        rep.first_open_ms, rep.last_open_ms = int(ts[0]), int(ts[-1])
    o, h, lo, c, vol = (s[k] for k in OHLCV)
    ok = (lo <= np.minimum(o, c)) & (np.maximum(o, c) <= h) & (vol >= 0)
    rep.ohlc_errors = int(rep.rows - np.count_nonzero(ok))

    d = np.diff(ts)
    rep.interval_ms = common_step(ts) if len(d) else interval_hint
    iv = rep.interval_ms
    if iv and len(d):
        off = np.nonzero(d != iv)[0]
        for i in off:
            step = int(d[i])
            whole, rem = divmod(step, iv)
            if rem:
                rep.misaligned += 1
            if step > iv:
                rep.gaps.append((int(ts[i]), int(ts[i + 1]), whole - 1 if rem == 0 else whole))
    return s, rep
