"""The size of the coming move: P(|close[t+h] / close[t] - 1| > c), fitted on the training split.

Forecasters (each gives sigma_h, the scale of the h-bar move, and p = P(|r_h| > c)):

- ``persistence``: sigma_h**2 = h x the mean squared one-bar return of the last 30 bars (rvol30);
- ``ewma``: RiskMetrics, sigma_1**2 <- 0.94 sigma_1**2 + 0.06 d**2, sigma_h**2 = h sigma_1**2;
- ``har``: HAR-RV in logs over 30 / 60 / 240 / 1440 bars, no seasonality;
- ``har_seasonal``: the same on deseasonalized returns, times the seasonal factor of the coming
  minutes (minute of day x day of week), ``engine/move_har.py``: the shipped forecaster;
- ``logistic33``: an L2 logistic regression of the exceedance on the 33 normalized features (no sigma).

Each sigma is mapped to p by a calibration fitted on the training split: a logistic on log sigma_bp
(``logistic``) or the normal tail erfc(c / (sigma sqrt 2)) (``normal``); ``barsignal compress move``
picks the one with the lower validation log-loss for the shipped forecaster, and then the learning
rate ``eta`` of its online intercept correction (``engine/move_har.py``; 0 = static) from
``ETA_GRID``, again by validation log-loss. ``har_seasonal_static`` is the shipped forecaster with
``eta = 0``, reported beside it.

Metrics: QLIKE of sigma_h**2 against the realized variance of the coming h bars (sum of squared
one-bar returns), and log-loss, Brier, ROC-AUC and ECE (10 equal-width bins) of p against the
exceedance, each with a day-block bootstrap 95 % CI; the difference of every forecaster to a
reference (the shipped one) is bootstrapped on the same resamples (``engine.metrics``).
numpy only (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from barsignal.engine import metrics as em
from barsignal.engine import move_har
from barsignal.engine.move import MoveSpec
from barsignal.model.baselines import MAX_FIT_WINDOWS, Logistic
from barsignal.model.dataset import Segment, WindowSet

MOVE_METRICS = ("qlike", "log_loss", "brier", "roc_auc", "ece")
HIGHER_IS_BETTER = {"qlike": False, "log_loss": False, "brier": False, "roc_auc": True, "ece": False}
RV_FLOOR = 1e-12  # realized variance floor for QLIKE (a run of h unchanged closes)
ECE_BINS = 10
EWMA_LAMBDA = 0.94
PERSISTENCE_SPAN = 30
ETA_GRID = (0.0, 0.0001, 0.0002, 0.0005, 0.001, 0.002)  # online recalibration rates tried on validation
SEASON_FLOOR = 0.05  # a seasonal scale of |d| is at least this fraction of its mean (no zero factor)


@dataclass(frozen=True)
class MoveBars:
    """Every bar of the segments, concatenated in the order ``model.dataset`` numbers its rows."""

    open_time: np.ndarray  # (R,) int64
    close: np.ndarray  # (R,) float64
    bounds: tuple[tuple[int, int], ...]  # [start, stop) of each gap-free segment

    @classmethod
    def of(cls, segments: Sequence[Segment]) -> MoveBars:
        bounds, a = [], 0
        for s in segments:
            bounds.append((a, a + len(s.frame)))
            a += len(s.frame)
        return cls(np.concatenate([s.frame.open_time for s in segments]).astype(np.int64),
                   np.concatenate([s.frame.close for s in segments]).astype(np.float64), tuple(bounds))

    def returns(self) -> np.ndarray:
        """(R,) one-bar return of each bar; NaN at each segment's first bar."""
        d = np.full(len(self.close), np.nan)
        for a, b in self.bounds:
            d[a + 1:b] = self.close[a + 1:b] / self.close[a:b - 1] - 1.0
        return d

    def forward_rv(self, ends: np.ndarray, h: int) -> np.ndarray:
        """Realized variance of the h bars after each end: the sum of their squared returns."""
        d2 = np.nan_to_num(self.returns() ** 2)
        cs = np.concatenate([[0.0], np.cumsum(d2)])
        return cs[ends + h + 1] - cs[ends + 1]


def exceed(ws: WindowSet, threshold_bp: float) -> np.ndarray:
    assert ws.ret is not None
    return (np.abs(ws.ret) > threshold_bp / 1e4).astype(np.float64)


# --- forecasters ---------------------------------------------------------------------------------


def _per_segment(mb: MoveBars, fn: Any) -> np.ndarray:
    out = np.full(len(mb.close), np.nan)
    for a, b in mb.bounds:
        out[a:b] = fn(a, b)
    return out


def persistence_var(mb: MoveBars, h: int, span: int = PERSISTENCE_SPAN) -> np.ndarray:
    """(R,) h x mean squared return of the last ``span`` bars (NaN before ``span`` returns)."""
    d2 = mb.returns() ** 2

    def seg(a: int, b: int) -> np.ndarray:
        x = d2[a + 1:b]
        cs = np.concatenate([[0.0], np.cumsum(x)])
        v = np.full(b - a, np.nan)
        if len(x) >= span:
            v[span:] = (cs[span:] - cs[:-span]) / span
        return h * v

    return _per_segment(mb, seg)


def ewma_var(mb: MoveBars, h: int, lam: float = EWMA_LAMBDA, warm: int = PERSISTENCE_SPAN) -> np.ndarray:
    """(R,) RiskMetrics: s <- lam s + (1 - lam) d**2 from the first return of a segment (seeded with
    it), h x s, NaN for the first ``warm`` returns."""
    d2 = mb.returns() ** 2

    def seg(a: int, b: int) -> np.ndarray:
        x = d2[a + 1:b].tolist()
        v = np.full(b - a, np.nan)
        s = x[0] if x else 0.0
        out = []
        for u in x:
            s = lam * s + (1 - lam) * u
            out.append(s)
        v[1:] = out
        v[:warm + 1] = np.nan
        return h * v

    return _per_segment(mb, seg)


def fit_season(mb: MoveBars, ends: np.ndarray, smooth: int = 15, weekly: bool = True
               ) -> tuple[list[float], list[float]]:
    """(minute_factor (1440,), dow_factor (7,)) from the one-bar returns of the bars ``ends``
    (training): the scale of d**2 by minute of day, as (mean |d|)**2 smoothed over ``smooth`` minutes
    (circular), then by day of week on what is left; each normalized to mean 1 over the bars. A
    minute or a day of the week with no training bar gets the mean; no factor is below
    ``SEASON_FLOOR**2`` of the mean (a minute that never moved)."""
    d = mb.returns()[ends]
    w = _mow(mb.open_time[ends])
    ok = np.isfinite(d)
    d, w = np.abs(d[ok]), w[ok]
    mod = w % move_har.MINUTES_PER_DAY
    dow = w // move_har.MINUTES_PER_DAY
    cnt = np.bincount(mod, minlength=1440).astype(np.float64)
    overall = float(d.mean()) if len(d) and d.mean() > 0 else 1.0
    mean_abs = np.where(cnt > 0, np.bincount(mod, weights=d, minlength=1440) / np.maximum(cnt, 1), overall)
    if smooth > 1:
        k = np.ones(smooth) / smooth
        pad = smooth // 2
        ext = np.concatenate([mean_abs[-pad:], mean_abs, mean_abs[:pad]]) if pad else mean_abs
        mean_abs = np.convolve(ext, k, mode="valid")[:1440]
    mf = np.maximum(mean_abs, SEASON_FLOOR * overall) ** 2  # a minute never seen or never moving
    mf = mf / mf[mod].mean()
    df = np.ones(7)
    if weekly:
        r = d / np.sqrt(mf[mod])
        c7 = np.bincount(dow, minlength=7).astype(np.float64)
        mr = float(r.mean()) if len(r) and r.mean() > 0 else 1.0
        df = np.maximum(np.where(c7 > 0, np.bincount(dow, weights=r, minlength=7) / np.maximum(c7, 1), mr),
                        SEASON_FLOOR * mr) ** 2  # a day of the week absent from the training bars: 1
        df = df / df[dow].mean()
    return [float(v) for v in mf], [float(v) for v in df]


def _mow(t: np.ndarray) -> np.ndarray:
    minute = np.asarray(t, np.int64) // 60_000
    return ((minute // 1440 + 3) % 7) * 1440 + minute % 1440


def _har_design(mb: MoveBars, season: Sequence[float], spans: Sequence[int], scale: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log x_k (R, K), n (R,), q_fwd per bar (R,)) over every segment, vectorized (for fitting)."""
    logx = np.full((len(mb.close), len(spans)), np.nan)
    n_all = np.full(len(mb.close), -1, np.int64)
    qf = np.full(len(mb.close), np.nan)
    for a, b in mb.bounds:
        q, _ = move_har.deseasonalized_q(mb.open_time[a:b], mb.close[a:b], season, scale)
        sums, n = move_har.span_sums(q, spans)
        m = np.minimum(n[:, None], np.asarray(spans)[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            logx[a:b] = np.log(sums / (np.maximum(m, 1) * scale) + 1.0 / scale)
        n_all[a:b] = n
        qf[a + 1:b] = q / scale
    return logx, n_all, qf


def fit_har(mb: MoveBars, train_ends: np.ndarray, h: int, *, seasonal: bool = True, smooth: int = 15,
            weekly: bool = True, spans: Sequence[int] = move_har.DEFAULT_SPANS, min_bars: int = 30,
            scale: float = 1e12) -> dict[str, Any]:
    """The ``har_seasonal`` params (without ``calib``): season, HAR coefficients by least squares of
    log(mean deseasonalized q over the next h bars) on log x_k, and the variance scale that makes the
    forecast unbiased for QLIKE (mean of realized / forecast) on the training bars."""
    if seasonal:
        mf, df = fit_season(mb, train_ends, smooth, weekly)
    else:
        mf, df = [1.0] * 1440, [1.0] * 7
    season = move_har.season_table(mf, df)
    logx, n, qf = _har_design(mb, season, spans, scale)
    cs = np.concatenate([[0.0], np.cumsum(np.nan_to_num(qf))])
    e = train_ends[n[train_ends] >= min_bars]
    y = np.log((cs[e + h + 1] - cs[e + 1]) / h + 1.0 / scale)
    a = np.hstack([np.ones((len(e), 1)), logx[e]])
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    params: dict[str, Any] = {"spans": list(spans), "coef": [float(c) for c in coef], "scale": scale,
                              "min_bars": min_bars, "var_scale": 1.0, "minute_factor": mf, "dow_factor": df,
                              "calib": {"kind": "normal"}, "seasonal": {"smooth_minutes": smooth,
                                                                         "weekly": weekly, "on": seasonal}}
    _, sig = har_predict(params, h, 20.0, mb, e)  # sigma does not depend on the threshold
    rv = mb.forward_rv(e, h)
    params["var_scale"] = float(np.mean(rv / (sig / 1e4) ** 2))
    return params


def har_predict(params: Mapping[str, Any], h: int, threshold_bp: float, mb: MoveBars, ends: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(p, sigma_bp) at ``ends`` through ``engine.move_har.batch`` (what the daemon computes): one
    forecaster fed every segment in order from the first (its online correction, if any, starts at 0
    and is carried across the gaps between segments)."""
    f = move_har.HarSeasonal(MoveSpec(h, threshold_bp, move_har.KIND, dict(params)))
    p = np.full(len(ends), np.nan)
    sig = np.full(len(ends), np.nan)
    delta = 0.0
    for a, b in mb.bounds:
        m = (ends >= a) & (ends < b)
        if m.any() or f.eta:
            p[m], sig[m], delta = move_har.batch_run(f, mb.open_time[a:b], mb.close[a:b], ends[m] - a, delta)
    return p, sig


def fit_calib(sigma_bp: np.ndarray, y: np.ndarray, kind: str) -> dict[str, Any]:
    if kind == "normal":
        return {"kind": "normal"}
    ok = np.isfinite(sigma_bp) & (sigma_bp > 0)
    lr = Logistic.fit(np.log(sigma_bp[ok])[:, None], y[ok], l2=0.0)
    return {"kind": "logistic", "a": lr.b, "b": float(lr.w[0])}


def apply_calib(cal: Mapping[str, Any], sigma_bp: np.ndarray, threshold_bp: float) -> np.ndarray:
    s = np.asarray(sigma_bp, np.float64)
    if cal["kind"] == "normal":
        from math import erfc

        return np.array([erfc(threshold_bp / (v * math.sqrt(2.0))) if np.isfinite(v) and v > 0 else np.nan
                         for v in s.tolist()])
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 / (1.0 + np.exp(-(cal["a"] + cal["b"] * np.log(s))))


# --- fit everything / predict everything ---------------------------------------------------------


def fit(mb: MoveBars, train: WindowSet, val: WindowSet | None, h: int, threshold_bp: float,
        calib: str | None = None, eta: float | None = None) -> dict[str, Any]:
    """Every forecaster's params fitted on ``train`` (its windows' last bars). The shipped
    ``har_seasonal`` calibration is ``calib`` or, when None, the one with the lower log-loss on
    ``val`` (logistic without ``val``); a logistic one's online rate is ``eta`` or, when None, the
    one of ``ETA_GRID`` with the lowest log-loss on ``val`` (0 without ``val``). Returns
    ``{"forecaster": params, "baselines": {...}, ...}``."""
    e = train.ends
    y = exceed(train, threshold_bp)
    out: dict[str, Any] = {"fitted_on": "train", "windows": len(train), "horizon": h,
                           "threshold_bp": threshold_bp}
    base: dict[str, Any] = {}
    for name, fn in (("persistence", persistence_var), ("ewma", ewma_var)):
        sig = np.sqrt(fn(mb, h)[e]) * 1e4
        base[name] = {"calib": fit_calib(sig, y, "logistic")}
    base["persistence"]["span"] = PERSISTENCE_SPAN
    base["ewma"]["lambda"] = EWMA_LAMBDA
    har = fit_har(mb, e, h, seasonal=False)
    _, sig = har_predict(har, h, threshold_bp, mb, e)
    har["calib"] = fit_calib(sig, y, "logistic")
    base["har"] = har
    seas = fit_har(mb, e, h, seasonal=True)
    _, sig = har_predict(seas, h, threshold_bp, mb, e)
    choices = {k: fit_calib(sig, y, k) for k in ("logistic", "normal")}
    if calib is None and val is not None:
        yv = exceed(val, threshold_bp)
        _, sv = har_predict(seas, h, threshold_bp, mb, val.ends)
        ll = {k: em.log_loss(yv[np.isfinite(sv)], apply_calib(c, sv, threshold_bp)[np.isfinite(sv)])
              for k, c in choices.items()}
        calib = min(ll, key=lambda k: ll[k])
        out["calib_choice"] = {"on": "validation log-loss", **{k: float(v) for k, v in ll.items()}}
    seas["calib"] = dict(choices[calib or "logistic"])
    if seas["calib"]["kind"] == "logistic":
        if eta is None and val is not None:
            yv = exceed(val, threshold_bp)
            ll_eta = {}
            for e_ in ETA_GRID:
                pv, _ = har_predict({**seas, "calib": {**seas["calib"], "eta": e_}}, h, threshold_bp, mb, val.ends)
                ok = np.isfinite(pv)
                ll_eta[e_] = em.log_loss(yv[ok], pv[ok])
            eta = min(ll_eta, key=lambda k: (ll_eta[k], k))
            out["eta_choice"] = {"on": "validation log-loss", **{f"{k:g}": float(v) for k, v in ll_eta.items()}}
        seas["calib"]["eta"] = float(eta or 0.0)
    x = train.last_rows().astype(np.float64)
    idx = np.linspace(0, len(x) - 1, min(len(x), MAX_FIT_WINDOWS)).round().astype(np.int64)
    lr = Logistic.fit(x[idx], y[idx], 1e-3)
    base["logistic33"] = {"w": lr.w.tolist(), "b": lr.b, "l2": 1e-3}
    out["forecaster"] = seas
    out["baselines"] = base
    return out


def from_manifest(move: Mapping[str, Any]) -> dict[str, Any]:
    """The ``fit`` result an artifact's ``move`` section holds (``compression/move.py`` writes it)."""
    if move.get("kind") != move_har.KIND or "baselines" not in move:
        raise ValueError(f"artifact manifest 'move': kind {move.get('kind')!r} with baselines is needed to "
                         f"evaluate it; this barsignal evaluates {move_har.KIND!r}")
    return {"horizon": int(move["horizon"]), "threshold_bp": float(move["threshold_bp"]),
            "forecaster": dict(move["params"]), "baselines": dict(move["baselines"])}


def predict(fitted: Mapping[str, Any], mb: MoveBars, ws: WindowSet, h: int, threshold_bp: float
            ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``{name: (p, sigma_h**2 or None)}`` at the windows of ``ws``; the shipped one is ``har_seasonal``."""
    e = ws.ends
    base = fitted["baselines"]
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    fc = fitted["forecaster"]
    p, sig = har_predict(fc, h, threshold_bp, mb, e)
    out["har_seasonal"] = (p, (sig / 1e4) ** 2)
    if float(fc["calib"].get("eta", 0.0)):
        p, _ = har_predict({**fc, "calib": {**fc["calib"], "eta": 0.0}}, h, threshold_bp, mb, e)
        out["har_seasonal_static"] = (p, (sig / 1e4) ** 2)
    p, sig = har_predict(base["har"], h, threshold_bp, mb, e)
    out["har"] = (p, (sig / 1e4) ** 2)
    for name, fn in (("persistence", persistence_var), ("ewma", ewma_var)):
        var = fn(mb, h)[e]
        out[name] = (apply_calib(base[name]["calib"], np.sqrt(var) * 1e4, threshold_bp), var)
    lg = base["logistic33"]
    out["logistic33"] = (Logistic(np.asarray(lg["w"]), float(lg["b"])).predict(ws.last_rows()), None)
    return out


# --- metrics with day-bootstrap CIs --------------------------------------------------------------


class _MoveScorer:
    def __init__(self, y: np.ndarray, p: np.ndarray, var: np.ndarray | None, rv: np.ndarray) -> None:
        self.base = em.Scorer(y, p)
        self.y = y
        self.p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
        if var is not None:
            ratio = np.maximum(rv, RV_FLOOR) / var
            self.qlike: np.ndarray | None = ratio - np.log(ratio) - 1.0
        else:
            self.qlike = None
        self.bin = np.clip((self.p * ECE_BINS).astype(np.int64), 0, ECE_BINS - 1)
        self.gap = self.p - y

    def values(self, boot: em.DayBootstrap) -> dict[str, tuple[float, np.ndarray]]:
        """Each metric's value and its bootstrap samples (NaN when there are too few days for a CI)."""
        enough = boot.n_days >= em.MIN_DAYS
        none = np.full(1, np.nan)
        ones = boot.sums(np.ones(len(self.y)))
        out: dict[str, tuple[float, np.ndarray]] = {}

        def mean(v: np.ndarray) -> tuple[float, np.ndarray]:
            return float(v.mean()), (boot.sums(v) / ones if enough else none)

        out["log_loss"] = mean(self.base.ll)
        out["brier"] = mean(self.base.sq)
        out["qlike"] = mean(self.qlike) if self.qlike is not None else (float("nan"), none)
        out["roc_auc"] = (self.base.metric("roc_auc"),
                          np.array([self.base.metric("roc_auc", w) for w in boot]) if enough else none)
        gap_db = np.stack([np.bincount(boot.inv, weights=self.gap * (self.bin == b), minlength=boot.n_days)
                           for b in range(ECE_BINS)], axis=1)  # (D, B): sum of p - y per day and bin
        ece = float(np.abs(gap_db.sum(axis=0)).sum() / len(self.y))
        out["ece"] = (ece, np.abs(boot.counts @ gap_db).sum(axis=1) / ones if enough else none)
        return out


def compare(fc: Mapping[str, tuple[np.ndarray, np.ndarray | None]], y: np.ndarray, rv: np.ndarray,
            days: np.ndarray, *, reference: str = "har_seasonal", n_boot: int = 500, seed: int = 0
            ) -> dict[str, Any]:
    """Every forecaster's metrics with 95 % CIs on the windows where all of them are defined, and
    ``reference - other`` per metric with its CI and a verdict (for the reference)."""
    ok = np.ones(len(y), bool)
    for p, var in fc.values():
        ok &= np.isfinite(p)
        if var is not None:
            ok &= np.isfinite(var) & (var > 0)
    boot = em.DayBootstrap(days[ok], n_boot, seed)
    samples: dict[str, dict[str, tuple[float, np.ndarray]]] = {}
    for name, (p, var) in fc.items():
        samples[name] = _MoveScorer(y[ok], p[ok], None if var is None else var[ok], rv[ok]).values(boot)
    scores: dict[str, Any] = {}
    for name, s in samples.items():
        scores[name] = {m: em._ci(v, smp).to_dict() for m, (v, smp) in s.items()}
        if name != reference and reference in samples:
            for m in MOVE_METRICS:
                rv_, rs = samples[reference][m]
                ov, os_ = s[m]
                if not (math.isfinite(rv_) and math.isfinite(ov)):
                    continue
                d = em._ci(rv_ - ov, rs - os_)
                scores[name][f"{m}_diff"] = {**d.to_dict(), "verdict": em.verdict(d, HIGHER_IS_BETTER[m])}
    return {"windows": int(ok.sum()), "dropped_warming": int((~ok).sum()), "days": boot.n_days,
            "rate": float(y[ok].mean()) if ok.any() else float("nan"), "reference": reference,
            "bootstrap": {"resamples": n_boot, "block": "UTC day", "seed": seed}, "scores": scores}


def report(fitted: Mapping[str, Any], mb: MoveBars, ws: WindowSet, *, walk_forward: int = 0,
           n_boot: int = 500) -> dict[str, Any]:
    """Every forecaster of ``fitted`` on the windows of ``ws`` at its horizon and threshold, with CIs
    (``compare``), and on ``walk_forward`` consecutive folds when > 1."""
    h, c = int(fitted["horizon"]), float(fitted["threshold_bp"])
    fc = predict(fitted, mb, ws, h, c)
    y = exceed(ws, c)
    rv = mb.forward_rv(ws.ends, h)
    out: dict[str, Any] = {"horizon": h, "threshold_bp": c, **compare(fc, y, rv, ws.days, n_boot=n_boot)}
    if walk_forward > 1:
        order = np.argsort(ws.times, kind="stable")
        folds = []
        for k, idx in enumerate(np.array_split(order, walk_forward)):
            sub = {n: (p[idx], None if v is None else v[idx]) for n, (p, v) in fc.items()}
            folds.append({"fold": k + 1, "start_ms": int(ws.times[idx].min()), "end_ms": int(ws.times[idx].max()),
                          **compare(sub, y[idx], rv[idx], ws.days[idx], n_boot=n_boot)})
        out["walk_forward"] = folds
    return out


def _cell(s: Mapping[str, Any]) -> str:
    if not math.isfinite(s["value"]):
        return "-"
    if s["ci95"] is None:
        return f"{s['value']:.4f} [no CI]"
    lo, hi = s["ci95"]
    return f"{s['value']:.4f} [{lo:.4f}, {hi:.4f}]"


def to_markdown(rep: Mapping[str, Any]) -> list[str]:
    """The move tables of one report (and its folds)."""
    lines = report_md(rep, f"Move: P(|r_{rep['horizon']}| > {rep['threshold_bp']:g} bp)")
    for f in rep.get("walk_forward", []):
        lines += ["", *report_md(f, f"Move, fold {f['fold']}")]
    return lines


def report_md(rep: Mapping[str, Any], title: str) -> list[str]:
    sc = rep["scores"]
    names = list(sc)
    ref = rep["reference"]
    lines = [f"{title}: {rep['windows']:,} windows over {rep['days']} days, exceedance rate "
             f"{rep['rate']:.4f}; value [95 % CI], {rep['bootstrap']['resamples']} day-block resamples.", "",
             "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m in MOVE_METRICS:
        lines.append(f"| {m} | " + " | ".join(_cell(sc[n][m]) for n in names) + " |")
    lines += ["", f"| {ref} vs | " + " | ".join(MOVE_METRICS) + " |", "|---" * (len(MOVE_METRICS) + 1) + "|"]
    for n in names:
        if n == ref:
            continue
        cells = []
        for m in MOVE_METRICS:
            d = sc[n].get(f"{m}_diff")
            if d is None:
                cells.append("-")
                continue
            ci = d["ci95"] or [float("nan")] * 2
            cells.append(f"{d['verdict']} ({d['value']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}])")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines
