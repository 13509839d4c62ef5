"""Windows and labels from bar files: gap-free segments, causal features, chronological purged splits.

- A *segment* is a run of bars with no gap: the files of one directory (one source) are loaded
  together and cut at every gap, and different directories are different segments, so no window
  ever spans a gap or mixes sources (spot vs futures).
- Features are computed per segment by ``barsignal.features.batch`` (causal: row t sees bars <= t);
  a window ends at bar t and holds rows t-window+1 .. t, all past the feature warm-up.
- The label of the window ending at t is the direction of ``r = close[t + horizon] / close[t] - 1``:
  1.0 ("up") when r > band, 0.0 when r < -band, and *tied* (dropped from training and from every
  metric) when |r| <= band. ``band`` is 0 by default (exact ties only); with ``flat_band = k`` it is
  k x rvol30 x sqrt(horizon) (a volatility-scaled flat band, causal: rvol30 is known at t).
  Windows whose label bar lies beyond the segment are dropped.
- ``Splits.train/val/test`` hold the labelled (non-tied) windows; ``Splits.val_all``/``test_all``
  hold every window of the period, ties included, consecutive bar by bar: the policy search and the
  trading reports replay those through ``SignalRule`` and the paper broker.
- Splits are chronological by the window's last bar: the first 80 % of windows (over all segments,
  ordered by time) are train, then 10 % validation, 10 % test, with a purge of
  ``window + horizon`` bars before each cut, so no split shares an input bar or a label bar
  with the next one.
- The normalizer (``barsignal.features.normalize.Normalizer``) is fitted on the rows of train
  windows only and applied to every row.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from barsignal.errors import DataError
from barsignal.features.bar import INTERVAL_MS, BarFrame
from barsignal.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    window: int = 30  # bars per window
    horizon: int = 1  # label: direction of close `horizon` bars ahead vs close now (ties dropped)
    flat_band: float = 0.0  # k: |r_h| <= k * rvol30 * sqrt(h) counts as tied (0 = exact ties only)
    split: tuple[float, float] = (0.8, 0.9)  # cumulative cut points: train | val | test
    purge: int | None = None  # bars dropped before each cut; None = window + horizon

    @property
    def purge_bars(self) -> int:
        p = self.window + self.horizon if self.purge is None else self.purge
        if p < self.window + self.horizon:
            raise ValueError(f"purge {p} < window + horizon = {self.window + self.horizon}")
        return p


@dataclass(frozen=True)
class Segment:
    """Consecutive bars with no gap, from one source."""

    name: str
    frame: BarFrame


@dataclass
class WindowSet:
    """Windows as indices into shared feature rows (no (N, T, F) copy is held)."""

    rows: np.ndarray  # (R, F) float32 normalized feature rows of every segment, concatenated
    ends: np.ndarray  # (N,) int64 row index of each window's last bar
    labels: np.ndarray  # (N,) float32, 1.0 = up
    times: np.ndarray  # (N,) int64 open time (ms) of each window's last bar
    last_up: np.ndarray  # (N,) float32, 1.0 when the last bar closed above the one before
    window: int
    ret: np.ndarray | None = None  # (N,) float64 forward return close[t+h] / close[t] - 1
    tied: np.ndarray | None = None  # (N,) bool, |ret| <= band: no direction label
    bar_open: np.ndarray | None = None  # (R,) float64 open of every row's bar (shared, like rows)
    bar_close: np.ndarray | None = None  # (R,) float64 close of every row's bar

    @property
    def days(self) -> np.ndarray:
        """(N,) int64 UTC day of each window's last bar: the block of the day bootstrap."""
        return self.times // 86_400_000

    @property
    def last_ret(self) -> np.ndarray:
        """(N,) float64 the last bar's close-to-close return (0 when the bar prices are not held)."""
        if self.bar_close is None:
            return np.where(self.last_up == 1, 1.0, -1.0)
        return self.bar_close[self.ends] / self.bar_close[self.ends - 1] - 1.0

    def __len__(self) -> int:
        return len(self.ends)

    def x(self, idx: np.ndarray | slice | None = None) -> np.ndarray:
        """Windows (B, T, F) float32 for the given window indices (all when None)."""
        ends = self.ends if idx is None else self.ends[idx]
        return self.rows[ends[:, None] + np.arange(-self.window + 1, 1)]  # (B, T, F)

    def last_rows(self) -> np.ndarray:
        """The last row of every window (N, F): the logistic-regression baseline's input."""
        return self.rows[self.ends]

    def subset(self, idx: np.ndarray) -> WindowSet:
        return WindowSet(self.rows, self.ends[idx], self.labels[idx], self.times[idx],
                         self.last_up[idx], self.window,
                         None if self.ret is None else self.ret[idx],
                         None if self.tied is None else self.tied[idx], self.bar_open, self.bar_close)

    def labelled(self) -> WindowSet:
        """The windows with a direction label (ties dropped)."""
        return self if self.tied is None else self.subset(np.flatnonzero(~self.tied))

    def every(self, n: int) -> WindowSet:
        """At most ``n`` windows, evenly spaced (deterministic); all of them when n <= 0."""
        if n <= 0 or n >= len(self):
            return self
        return self.subset(np.linspace(0, len(self) - 1, n).round().astype(np.int64))


@dataclass
class Splits:
    train: WindowSet
    val: WindowSet
    test: WindowSet
    normalizer: Any  # barsignal.features.normalize.Normalizer
    spec: DatasetSpec
    info: dict[str, Any] = field(default_factory=dict)
    val_all: WindowSet | None = None  # every validation window, ties included (consecutive bars)
    test_all: WindowSet | None = None  # every test window, ties included


# --- bars -> segments ------------------------------------------------------------------------------


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; a directory stands for the files in it (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise DataError(f"bar directory {p} is empty")
            out += files
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"bar file {p} does not exist")
    return out


def split_at_gaps(frame: BarFrame, name: str, interval_ms: int = INTERVAL_MS) -> list[Segment]:
    """Cut ``frame`` wherever the step between bars is not exactly one interval."""
    if len(frame) == 0:
        return []
    breaks = np.flatnonzero(np.diff(frame.open_time) != interval_ms) + 1
    bounds = [0, *breaks.tolist(), len(frame)]
    return [Segment(f"{name}[{a}:{b}]", frame.slice(a, b)) for a, b in itertools.pairwise(bounds)]


def load_segments(paths: Iterable[str | os.PathLike[str]]) -> list[Segment]:
    """Load bar files with the data layer: one series per directory (source), cut at gaps."""
    from barsignal.data import load_many
    from barsignal.data.intervals import check_interval

    groups: dict[Path, list[Path]] = {}
    for f in expand_paths(paths):
        groups.setdefault(f.parent, []).append(f)
    segments: list[Segment] = []
    for parent, files in groups.items():
        loaded = load_many(files)
        name = parent.name if len(files) > 1 else files[0].name
        check_interval(loaded.frame.open_time, INTERVAL_MS, str(parent if len(files) > 1 else files[0]))
        segs = split_at_gaps(loaded.frame, name)
        log.info("bars loaded", source=name, files=len(files), bars=len(loaded.frame), segments=len(segs))
        segments += segs
    return segments


# --- features and labels ---------------------------------------------------------------------------


def features_of(frame: BarFrame) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, F) float64, ready (N,) bool) of one gap-free segment, computed causally."""
    from barsignal.features import batch

    if hasattr(batch, "compute_with_ready"):
        x, ready = batch.compute_with_ready(frame)
        return np.asarray(x), np.asarray(ready, dtype=bool)
    from barsignal.features import spec

    x = batch.compute(frame)
    return np.asarray(x), np.arange(len(frame)) >= spec.WARMUP_BARS - 1


@dataclass
class _Raw:
    rows: np.ndarray  # (R, F) float64 unnormalized
    ends: np.ndarray
    labels: np.ndarray
    times: np.ndarray
    last_up: np.ndarray
    ret: np.ndarray
    tied: np.ndarray
    bar_open: np.ndarray
    bar_close: np.ndarray


def _raw_windows(segments: Sequence[Segment], window: int, horizon: int, flat_band: float = 0.0) -> _Raw:
    from barsignal.features.spec import INDEX

    rows, ends, labels, times, last_up, rets, tied, opens, closes = [], [], [], [], [], [], [], [], []
    offset = 0
    for seg in segments:
        f = seg.frame
        n = len(f)
        x, ready = features_of(f)
        t = np.arange(window - 1, n - horizon)  # candidate last bars with a label inside the segment
        if len(t):
            t = t[ready[t - window + 1]]  # every row of the window is past warm-up (ready is monotone)
        close = np.asarray(f.close, dtype=np.float64)
        r = close[t + horizon] / close[t] - 1.0
        band = flat_band * x[t, INDEX["rvol30"]] * np.sqrt(horizon) if flat_band > 0 else 0.0
        rows.append(x)
        ends.append(t + offset)
        labels.append((r > band).astype(np.float32))
        rets.append(r)
        tied.append(np.abs(r) <= band)
        times.append(f.open_time[t])
        last_up.append((close[t] > close[t - 1]).astype(np.float32))  # t >= window - 1 >= 1
        opens.append(np.asarray(f.open, dtype=np.float64))
        closes.append(close)
        offset += n
    if not rows or offset == 0:
        raise DataError("no bars to build windows from")
    return _Raw(np.concatenate(rows), np.concatenate(ends).astype(np.int64), np.concatenate(labels),
                np.concatenate(times).astype(np.int64), np.concatenate(last_up), np.concatenate(rets),
                np.concatenate(tied), np.concatenate(opens), np.concatenate(closes))


def _covered_rows(n_rows: int, ends: np.ndarray, window: int) -> np.ndarray:
    """Mask of rows that belong to at least one of the windows ending at ``ends``."""
    diff = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(diff, ends - window + 1, 1)
    np.add.at(diff, ends + 1, -1)
    return np.cumsum(diff[:-1]) > 0


def build(segments: Sequence[Segment], spec: DatasetSpec = DatasetSpec(), normalizer: Any = None) -> Splits:
    """Windows, labels, chronological purged splits and a train-only normalizer.

    ``normalizer``: use this one (e.g. a checkpoint's) instead of fitting one on train.
    """
    from barsignal.features.normalize import Normalizer

    raw = _raw_windows(segments, spec.window, spec.horizon, spec.flat_band)
    n = len(raw.ends)
    if n < 10:
        raise DataError(f"only {n} windows in the data: need more bars (window {spec.window}, "
                        f"horizon {spec.horizon}, plus the feature warm-up)")
    order = np.argsort(raw.times, kind="stable")
    sorted_times = raw.times[order]
    t1 = sorted_times[int(spec.split[0] * n)]
    t2 = sorted_times[min(int(spec.split[1] * n), n - 1)]
    purge_ms = spec.purge_bars * INTERVAL_MS
    train_idx = order[sorted_times < t1 - purge_ms]
    val_idx = order[(sorted_times >= t1) & (sorted_times < t2 - purge_ms)]
    test_idx = order[sorted_times >= t2]
    if not len(train_idx) or not len(val_idx) or not len(test_idx):
        raise DataError(f"too few windows ({n}) for train/val/test splits with a purge of "
                        f"{spec.purge_bars} bars: give more bars")
    fit_rows = _covered_rows(len(raw.rows), raw.ends[train_idx], spec.window)
    if normalizer is None:
        normalizer = Normalizer.fit(raw.rows[fit_rows])
    rows = np.ascontiguousarray(normalizer.transform(raw.rows), dtype=np.float32)

    def part(idx: np.ndarray) -> WindowSet:
        return WindowSet(rows, raw.ends[idx], raw.labels[idx], raw.times[idx], raw.last_up[idx], spec.window,
                         raw.ret[idx], raw.tied[idx], raw.bar_open, raw.bar_close)

    val_all, test_all = part(val_idx), part(test_idx)
    splits = Splits(part(train_idx).labelled(), val_all.labelled(), test_all.labelled(), normalizer, spec,
                    val_all=val_all, test_all=test_all)
    splits.info = {
        "segments": len(segments), "bars": len(raw.rows), "windows": n,
        "train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
        "tied": {"train": int(raw.tied[train_idx].sum()), "val": int(raw.tied[val_idx].sum()),
                 "test": int(raw.tied[test_idx].sum())},
        "label": {"kind": "direction", "horizon": spec.horizon, "flat_band": spec.flat_band,
                  "ties": "dropped from training and metrics"},
        "val_start_ms": int(t1), "test_start_ms": int(t2), "purge_bars": spec.purge_bars,
        "up_rate": {k: float(s.labels.mean()) for k, s in
                    (("train", splits.train), ("val", splits.val), ("test", splits.test))},
        "normalizer_rows": int(fit_rows.sum()),
    }
    log.info("dataset built", **{k: v for k, v in splits.info.items() if k != "up_rate"})
    return splits


def all_windows(segments: Sequence[Segment], normalizer: Any, window: int = 30,
                horizon: int = 1, flat_band: float = 0.0) -> WindowSet:
    """Every full window with a label bar inside ``segments`` (no split, ties included: see
    ``WindowSet.labelled``), normalized with a given normalizer."""
    raw = _raw_windows(segments, window, horizon, flat_band)
    rows = np.ascontiguousarray(normalizer.transform(raw.rows), dtype=np.float32)
    return WindowSet(rows, raw.ends, raw.labels, raw.times, raw.last_up, window, raw.ret, raw.tied,
                     raw.bar_open, raw.bar_close)


def load_splits(paths: Iterable[str | os.PathLike[str]], spec: DatasetSpec = DatasetSpec()) -> Splits:
    """``build(load_segments(paths), spec)``: what training and distillation use."""
    return build(load_segments(paths), spec)
