"""Soak: many symbols through ``barsignal run`` for a long wall time; RSS, open fds and latency trends.

Two processes, as a user runs them: ``barsignal feed serve`` plays the ten real 2023 files
(../shared/data: BTC spot 2023-03-16.. and the nine ``multi/spot_1m`` symbols) and copies of them
shifted in time (``--copies``) at ``--speed`` minutes a second, and ``barsignal run`` reads its
``--symbols`` symbols (jsonl sink, outbox, bar record, metrics). Every ``--sample-s`` seconds after
READY the daemon's RSS (``VmRSS``) and open fds are read from /proc, and its
``barsignal_tick_to_signal_seconds`` histogram and signal count from /metrics; each interval's
latency p50/p99 are interpolated from the histogram's bucket deltas (as Prometheus'
``histogram_quantile``; it includes each minute's hold for the other symbols' frames), and each
interval's p50/p99 of every live signal's own compute time in the daemon from the jsonl sink's
``latency_us`` (received to bar, features, score, emit). After a settling period (``--settle-s``)
each series gets a least-squares slope per hour with a 95 % interval (standard error widened for
lag-1 autocorrelation) and the median of its first and last decile of samples (:func:`trend`). A
series is flat unless the fitted slope raises it over the whole run by more than its tolerance
(:data:`TOLERANCE`, a fraction of its mean), whatever the interval (a step-like series such as RSS
has a lag-1 autocorrelation near 1, few effective samples and a wide interval). Run it for longer than the
monitor's window takes to fill (``[metrics] monitor_window`` minutes at ``--speed``: 12 minutes at
the defaults): the monitor's rings are allocated at start but their pages become resident as they
are first written. The run also counts
``sink_queue_full`` and every warning or error in the daemon's log. ``--out FILE`` keeps the
samples and the figures as JSON.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson

HIST = "barsignal_tick_to_signal_seconds_bucket"
COPY_SHIFT = 100  # bars between copies of a file: 40 copies of the ten files still share ~39,000 bars
# How far the fitted slope may raise a series over the whole run, as a fraction of its mean, and still
# be called flat: memory 5 %, fds 1 % (4 of 400), latency 25 % (the
# histogram's buckets are coarse, and the machine is shared). A series that falls is not a leak.
TOLERANCE = {"rss_mb": 0.05, "fds": 0.01, "tick_to_signal_p50_ms": 0.25, "tick_to_signal_p99_ms": 0.25,
             "compute_p50_us": 0.25, "compute_p99_us": 0.25, "signals_per_s": 0.05, "cpu_cores": 0.25}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbols", type=int, default=400, help="symbols in the one daemon (default 400)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall minutes to run after READY (default 30)")
    p.add_argument("--speed", type=float, default=2.0, help="bar minutes per wall second (default 2: 120x)")
    p.add_argument("--close-spread-ms", type=float, default=200.0, metavar="MS",
                   help="the simulator sends each minute's closed frames over MS ms of wall time, under half a "
                   "minute (default 200)")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--settle-s", type=float, default=None,
                   help="seconds after READY left out of the trends: caches, SQLite pages and the monitor's "
                   "window fill (default 120; with --from-json, the kept run's)")
    p.add_argument("--sinks", default="jsonl", help="comma-separated sinks (default: jsonl)")
    p.add_argument("--artifact", default=None, help="model artifact (default: bundled)")
    p.add_argument("--out", default=None, help="write the samples and figures here as JSON")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON document on stdout")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, state) and print it")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="run nothing: print the figures of the samples an earlier --out FILE kept")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc(pid: int) -> tuple[float, int, float]:
    """(RSS in MB, open fds, CPU seconds user+sys) of ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss = next(int(x.split()[1]) for x in status if x.startswith("VmRSS:")) / 1024
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return rss, len(os.listdir(f"/proc/{pid}/fd")), cpu


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return bool(orjson.loads(r.read()).get("ready"))
    except Exception as exc:  # 503 while warming up carries the same JSON
        body = getattr(exc, "read", None)
        if body is None:
            return False
        try:
            return bool(orjson.loads(body()).get("ready"))
        except Exception:
            return False


def hist_quantile(les: np.ndarray, counts: np.ndarray, q: float) -> float:
    """Quantile ``q`` of a cumulative histogram (bucket upper bounds ``les``, +Inf last), linear within
    the bucket as Prometheus' ``histogram_quantile``; NaN for an empty one."""
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank = q * total
    i = int(np.searchsorted(counts, rank, side="left"))
    if i >= len(les) - 1:  # the +Inf bucket: its lower bound, as Prometheus does
        return float(les[-2])
    lo, c_lo = (0.0, 0.0) if i == 0 else (float(les[i - 1]), float(counts[i - 1]))
    c_hi = float(counts[i])
    return lo + (float(les[i]) - lo) * ((rank - c_lo) / (c_hi - c_lo) if c_hi > c_lo else 1.0)


def trend(t_s: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least-squares slope of ``y`` against time, per hour, with a 95 % interval whose standard error is
    widened for the residuals' lag-1 autocorrelation (effective n = n (1 - r) / (1 + r)), and the
    medians of the first and last decile of samples."""
    ok = np.isfinite(y)
    t, v = t_s[ok] / 3600.0, y[ok].astype(float)
    n = len(v)
    out = {"n": float(n), "mean": float(np.mean(v)) if n else float("nan")}
    if n < 10:
        return {**out, "slope_per_h": float("nan"), "ci95_lo": float("nan"), "ci95_hi": float("nan"),
                "first_decile": float("nan"), "last_decile": float("nan")}
    slope, icept = np.polyfit(t, v, 1)
    res = v - (slope * t + icept)
    r1 = float(np.corrcoef(res[:-1], res[1:])[0, 1]) if np.std(res) > 0 else 0.0
    r1 = min(max(r1 if math.isfinite(r1) else 0.0, 0.0), 0.99)
    n_eff = max(3.0, n * (1 - r1) / (1 + r1))
    sxx = float(np.sum((t - t.mean()) ** 2))
    se = math.sqrt(float(np.sum(res**2)) / (n_eff - 2) / sxx) if sxx > 0 else float("nan")
    k = max(1, n // 10)
    return {**out, "slope_per_h": float(slope), "ci95_lo": float(slope - 1.96 * se),
            "ci95_hi": float(slope + 1.96 * se), "lag1_autocorr": r1, "n_eff": n_eff,
            "first_decile": float(np.median(v[:k])), "last_decile": float(np.median(v[-k:]))}


def _config(work: Path, port: int, mport: int, symbols: list[str], sinks: list[str]) -> Path:
    cfg = work / "config.toml"
    cfg.write_text(f"""
[feed]
symbols = [{", ".join(f'"{s}"' for s in symbols)}]
ws_url = "ws://127.0.0.1:{port}"
rest_url = "http://127.0.0.1:{port}"
reconnect_min_s = 0.05
reconnect_max_s = 0.5
rest_timeout_s = 10.0
stale_grace_s = 600.0

[sinks]
enabled = [{", ".join(f'"{s}"' for s in sinks)}]

[sinks.jsonl]
path = "signals.jsonl"
fsync = "interval"

[metrics]
enabled = true
host = "127.0.0.1"
port = {mport}

[logging]
level = "info"

[state]
dir = "{work / 'state'}"
""")
    return cfg


def _popen(args: list[str], log: Path, stdout: int | None = None) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "barsignal", "--log-format", "json", *args],
                                stdout=stdout if stdout is not None else fh, stderr=fh)


class _JsonlTail:
    """The jsonl sink's new complete lines since the last read: each live signal's own compute time in
    the daemon (``latency_us``: frame received to bar, features, score, emit; without the minute's hold
    for the other symbols that tick-to-signal includes), in microseconds."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos = path, 0

    def read(self) -> np.ndarray:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return np.zeros(0)
        end = data.rfind(b"\n") + 1
        self.pos += end
        out = []
        for line in data[:end].splitlines():
            row = orjson.loads(line)
            lat = row.get("latency_us")
            if row.get("source") == "ws" and lat:
                out.append(sum(lat.values()))
        return np.array(out, float)


def run(args: argparse.Namespace) -> int:
    from barsignal.bench.live import _real_files

    if args.from_json:
        old = orjson.loads(Path(args.from_json).read_bytes())
        settle = old["settle_s"] if args.settle_s is None else args.settle_s
        res = {**old, **analyse(old["samples"], np.array(old["les"]), settle)}
        _print(res, getattr(args, "json", False))
        return 0

    work = Path(tempfile.mkdtemp(prefix="barsignal-bench-soak-"))
    files = _real_files()
    start = 800  # bars before this are history: the daemon's REST warm-up (729 with the bundled artifact)
    bars = int(args.speed * (args.minutes * 60 + 600)) + 10  # the run, plus up to 10 minutes to READY
    feed_cmd = ["feed", "serve", *(a for sym, f in files for a in ("--bars", f"{sym}={f}")),
                "--copies", str(args.symbols), "--copy-shift", str(COPY_SHIFT), "--speed", str(args.speed),
                "--start-index", str(start),
                "--end-index", str(start + bars), "--intrabar", "1", "--port", "0",
                "--close-spread-ms", str(args.close_spread_ms), "--exit-at-end"]
    feed = _popen(feed_cmd, work / "feed.log", stdout=subprocess.PIPE)
    daemon = None
    try:
        assert feed.stdout is not None
        line = feed.stdout.readline()
        if not line:
            feed.wait(10)
            raise RuntimeError(f"feed serve did not start: {(work / 'feed.log').read_text()[-2000:]}")
        info = orjson.loads(line)
        if int(info["bars"]) < bars:
            raise RuntimeError(f"the served series has {info['bars']} bars after the warm-up history; "
                               f"{args.minutes:g} min at {args.speed:g} minutes/s needs {bars}: lower --speed")
        symbols = list(info["symbols"])[: args.symbols]
        mport = _free_port()
        cfg = _config(work, int(info["port"]), mport, symbols, [s for s in args.sinks.split(",") if s])
        run_cmd = ["run", "--config", str(cfg)] + (["--artifact", args.artifact] if args.artifact else [])
        t_launch = time.monotonic()
        daemon = _popen(run_cmd, work / "daemon.log")
        while not _ready(mport):
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({daemon.returncode}): "
                                   f"{(work / 'daemon.log').read_text()[-2000:]}")
            if time.monotonic() - t_launch > 600:
                raise RuntimeError("no READY within 600 s")
            time.sleep(0.5)
        t0 = time.monotonic()
        ready_s = t0 - t_launch
        print(f"[soak] {len(symbols)} symbols READY after {ready_s:.1f} s; sampling every {args.sample_s:g} s "
              f"for {args.minutes:g} min (work dir {work})", flush=True)
        samples: list[dict[str, Any]] = []
        les: list[float] = []
        next_at = t0
        tail = _JsonlTail(work / "state" / "signals.jsonl")
        tail.read()  # what was written before READY is not sampled
        while (now := time.monotonic()) - t0 < args.minutes * 60:
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({daemon.returncode}) during the soak: "
                                   f"{(work / 'daemon.log').read_text()[-2000:]}")
            if now < next_at:
                time.sleep(min(0.2, next_at - now))
                continue
            next_at += args.sample_s
            m = _scrape(mport)
            rss, fds, cpu = _proc(daemon.pid)
            hist = sorted(((float(k.split('le="')[1].split('"')[0]), v) for k, v in m.items()
                           if k.startswith(HIST)), key=lambda x: x[0])
            les = [le for le, _ in hist]
            compute = tail.read()
            samples.append({"t_s": now - t0, "rss_mb": rss, "fds": fds, "cpu_s": cpu,
                            "compute_p50_us": float(np.percentile(compute, 50)) if compute.size else None,
                            "compute_p99_us": float(np.percentile(compute, 99)) if compute.size else None,
                            "compute_n": int(compute.size),
                            "signals": sum(v for k, v in m.items() if k.startswith("barsignal_signals_total")),
                            "buckets": [c for _, c in hist]})
            if len(samples) % max(1, int(60 / args.sample_s)) == 0:
                s = samples[-1]
                print(f"[soak] t={s['t_s']:.0f}s signals={s['signals']:.0f} rss={rss:.1f}MB fds={fds} "
                      f"cpu={cpu:.0f}s", flush=True)
        code = _stop(daemon)
        daemon = None
    finally:
        if daemon is not None:
            _stop(daemon)
        _stop(feed)
    res = analyse(samples, np.array(les), 120.0 if args.settle_s is None else args.settle_s)
    log_text = (work / "daemon.log").read_text(errors="replace")
    res.update(symbols=len(symbols), speed=args.speed, close_spread_ms=args.close_spread_ms, ready_s=ready_s,
               minutes=args.minutes, exit_code=code, sink_queue_full=log_text.count('"sink_queue_full"'),
               warnings=sum('"level": "warning"' in x or '"level":"warning"' in x for x in log_text.splitlines()),
               errors=sum('"level": "error"' in x or '"level":"error"' in x for x in log_text.splitlines()),
               machine=_machine())
    _print(res, args.json)
    if args.out:
        Path(args.out).write_bytes(orjson.dumps({**res, "samples": samples, "les": les},
                                                option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    if args.keep:
        print(f"[soak] work directory kept: {work}", file=sys.stderr)
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if code == 0 else 1


def analyse(samples: list[dict[str, Any]], les: np.ndarray, settle_s: float) -> dict[str, Any]:
    """The per-interval series (RSS, fds, signal rate, CPU share, latency p50/p99) after ``settle_s``,
    and the :func:`trend` of each."""
    t = np.array([s["t_s"] for s in samples])
    cum = np.array([s["buckets"] for s in samples], float) if samples and les.size else np.zeros((len(samples), 0))
    series: dict[str, np.ndarray] = {
        "rss_mb": np.array([s["rss_mb"] for s in samples], float),
        "fds": np.array([s["fds"] for s in samples], float),
    }
    n = len(samples)
    p50, p99, rate, cpu = (np.full(n, np.nan) for _ in range(4))
    for i in range(1, n):
        dt = t[i] - t[i - 1]
        rate[i] = (samples[i]["signals"] - samples[i - 1]["signals"]) / dt
        cpu[i] = (samples[i]["cpu_s"] - samples[i - 1]["cpu_s"]) / dt
        if cum.shape[1]:
            d = cum[i] - cum[i - 1]
            p50[i], p99[i] = (hist_quantile(les, d, q) * 1e3 for q in (0.5, 0.99))
    series.update(tick_to_signal_p50_ms=p50, tick_to_signal_p99_ms=p99, signals_per_s=rate, cpu_cores=cpu)
    for q in ("p50", "p99"):
        series[f"compute_{q}_us"] = np.array([np.nan if s.get(f"compute_{q}_us") is None else s[f"compute_{q}_us"]
                                              for s in samples], float)
    sig = np.array([x["signals"] for x in samples], float)
    rose = np.flatnonzero(np.diff(sig) > 0) if n > 1 else np.zeros(0, int)
    live_until = float(t[rose[-1] + 1]) if rose.size else float("nan")  # the feed's last signals
    keep = (t >= settle_s) & (t <= live_until)  # samples after the feed ended say nothing of load
    trends = {k: trend(t[keep], v[keep]) for k, v in series.items()}
    span_h = float(t[keep][-1] - t[keep][0]) / 3600 if keep.any() else 0.0
    for k, tr in trends.items():
        moved = abs(tr["slope_per_h"]) * span_h
        tr["change_over_run"] = moved
        rise = tr["slope_per_h"] * span_h  # what the fitted line adds over the run (negative: it falls)
        tr["flat"] = bool(not math.isfinite(rise) or rise <= TOLERANCE.get(k, 0.0) * abs(tr["mean"]))
    fds = series["fds"][keep]
    return {"samples_n": n, "settle_s": settle_s, "trends": trends, "live_until_s": live_until,
            "fds_range": [float(fds.min()), float(fds.max())] if fds.size else [],
            "signals": samples[-1]["signals"] if samples else 0}


def _machine() -> str:
    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), "?")
    return f"{os.cpu_count()} cores, {cpu}, load average {os.getloadavg()[0]:.2f} at the end"


def _stop(p: subprocess.Popen, timeout: float = 60) -> int | None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    return p.returncode


def _print(res: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(res, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
        return
    print(f"bench soak: {res['symbols']} symbols at {res['speed']:g} minutes/s (closed frames over "
          f"{res['close_spread_ms']:g} ms), {res['minutes']:g} min after READY ({res['ready_s']:.1f} s), "
          f"{res['signals']:.0f} signals, exit {res['exit_code']}; sink_queue_full {res['sink_queue_full']}, "
          f"warnings {res['warnings']}, errors {res['errors']}")
    print(f"  trends over the samples from {res['settle_s']:g} s to the last signal at {res['live_until_s']:.0f} s "
          "(slope per hour, 95 % interval; first / last decile medians):")
    for k, tr in res["trends"].items():
        print(f"  {k:<22} mean {tr['mean']:10.3f}  slope {tr['slope_per_h']:+9.3f}/h  "
              f"[{tr['ci95_lo']:+9.3f}, {tr['ci95_hi']:+9.3f}]  first {tr['first_decile']:10.3f}  "
              f"last {tr['last_decile']:10.3f}  (n={tr['n']:.0f})  {'flat' if tr.get('flat') else 'TREND'}")
    print(f"  fds range {res['fds_range']}; machine: {res['machine']}")
    steady = [k for k in ("rss_mb", "fds", "tick_to_signal_p99_ms", "compute_p99_us") if k in res["trends"]]
    bad = [k for k in steady if not res["trends"][k].get("flat")]
    print(f"  verdict: {'no trend in ' + ', '.join(steady) if not bad else 'TREND in ' + ', '.join(bad)}")
