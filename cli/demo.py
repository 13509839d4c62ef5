"""``barsignal demo``: the whole live path offline, in one command, through the real command line.

``feed serve`` plays recorded bars of several symbols (the real Binance bars in ``../shared/data``
beside the checkout, else deterministic synthetic bars, labelled so) at an accelerated speed; the
daemon (``barsignal run``) runs against it in paper mode with the stdout and jsonl sinks, on a
generated config and a state directory of its own; after ``--minutes`` bars per symbol it is stopped
with SIGTERM, and ``paper status``, ``paper report`` and ``parity`` run on what it left. Every step is
a subprocess of this interpreter running the ``barsignal`` CLI. Everything goes to ``--out`` (default:
a new temporary directory), which is kept.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

DEFAULT_SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT"
WARMUP_BARS = 1000  # served over REST before the stream starts; the bundled artifact warms up on 729


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="offline demo: feed serve -> the daemon in paper mode -> paper report -> parity",
        description="Run the live path offline: `feed serve` on recorded bars of several symbols at an "
                    "accelerated speed, `barsignal run` against it (paper mode; stdout, jsonl and paper sinks; "
                    "a generated config and state directory), then SIGTERM, `paper status`, `paper report` "
                    "and `parity`. Needs no network.")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="directory for the config, state, logs and report (default: a new temporary directory); "
                        "kept afterwards; must be empty or absent")
    p.add_argument("--minutes", type=int, default=120, metavar="N",
                   help="1-minute bars streamed per symbol after the warm-up (default 120)")
    p.add_argument("--speed", type=float, default=4.0, help="bars per second of wall time (default 4)")
    p.add_argument("--symbols", default=DEFAULT_SYMBOLS,
                   help=f"comma-separated symbols (default {DEFAULT_SYMBOLS}); real bars exist for BTC, ETH, SOL, "
                        "ADA, DOGE, XRP, DOT, LINK, LTC and AVAX against USDT")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="the real bars' root, holding klines/ and multi/ (default: $BARSIGNAL_DATA, else "
                        "../shared/data beside the checkout); where they are absent the demo uses synthetic bars")
    p.add_argument("--synthetic", action="store_true", help="use deterministic synthetic bars even where real ones are")
    p.add_argument("--long-threshold", type=float, default=None, metavar="P",
                   help="write [signal] long_threshold = P into the demo's config, so the paper broker goes long "
                        "when p_up > P: an override of the bundled artifact's flat policy, for showing trades "
                        "(no threshold setting made money on validation)")
    p.add_argument("--artifact", default=None, metavar="DIR", help="model artifact (default: the bundled one)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with the outcome on stdout (the progress lines go to stderr)")
    p.set_defaults(func=_run)


_progress = sys.stdout  # stderr with --json


def _say(msg: str = "") -> None:
    print(msg, file=_progress, flush=True)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("BARSIGNAL_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the checkout


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "barsignal", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("STATE_DIRECTORY", None)  # the demo's state directory is its own, whatever systemd set
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Failed(Exception):
    pass


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _write_config(out: Path, port: int, symbols: list[str], args: argparse.Namespace) -> Path:
    sym = ", ".join(f'"{s}"' for s in symbols)
    signal_ = ("# The override: the artifact's policy is flat; this threshold makes the rule go long on p_up > it.\n"
               f"long_threshold = {args.long_threshold}\n" if args.long_threshold is not None else
               "# No threshold set: the bundled artifact's own policy (flat) applies.\n")
    model = f'[model]\nartifact = "{Path(args.artifact).resolve()}"\n\n' if args.artifact else ""
    cfg = out / "config.toml"
    cfg.write_text(f"""# Written by `barsignal demo`: the daemon on a local `feed serve`, paper mode. See config.toml
# in the project for every key and its default.
[feed]
symbols = [{sym}]
ws_url = "ws://127.0.0.1:{port}"
rest_url = "http://127.0.0.1:{port}"
reconnect_min_s = 0.2
reconnect_max_s = 2.0

{model}[engine]
keep_warm_ms = 0.0        # bars come every 1/speed s, not on the minute: nothing to keep warm for

[signal]
{signal_}
[sinks]
enabled = ["stdout", "jsonl", "paper"]

[sinks.jsonl]
path = "signals.jsonl"    # relative: under [state] dir

[paper]
ledger = "paper.sqlite"   # relative: under [state] dir

[metrics]
enabled = true
host = "127.0.0.1"
port = 0                  # any free port; the daemon logs which (metrics_listening)

[state]
dir = "{out / 'state'}"
""", encoding="utf-8")
    return cfg


def _read_lines(stream: Any, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def _log_event(log: Path, event: str) -> dict[str, Any] | None:
    for line in log.read_bytes().splitlines() if log.exists() else []:
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("event") == event:
            return rec
    return None


def _start_feed(out: Path, files: dict[str, Path], start: int, end: int, speed: float) -> tuple[subprocess.Popen, int]:
    log = out / "feed.log"
    args = ["--log-format", "json", "feed", "serve", "--port", "0", "--speed", f"{speed:g}", "--start-index",
            str(start), "--end-index", str(end), "--intrabar", "1", "--wait-for-subscriber"]
    for sym, path in files.items():
        args += ["--bars", f"{sym}={path}"]
    with open(log, "ab") as fh:
        p = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=fh, env=_env(), cwd=out)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        p.wait(10)
        raise _Failed(f"feed serve did not start (exit {p.returncode}):\n{_tail(log)}")
    return p, int(orjson.loads(line)["port"])


def _stop(p: subprocess.Popen, timeout: float = 30.0) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise _Failed(f"pid {p.pid} did not exit within {timeout:g} s of SIGTERM; killed") from None


def _healthz(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode().strip()
    except OSError as exc:  # a 503 (stale, starting) is an HTTPError with a body
        body = getattr(exc, "read", lambda: b"")()
        return (body.decode().strip() if body else "") or f"unreachable ({exc})"


def _show(cmd: list[str], out: Path, must: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = ["--log-level", "warning", *cmd]  # the commands' info logs (the scorer loading) are not the point
    _say("$ barsignal " + " ".join(cmd))
    r = subprocess.run(_cli(*cmd), capture_output=True, text=True, env=_env(), cwd=out, timeout=600)
    for line in (r.stdout + r.stderr).splitlines():
        _say("  " + line)
    if must and r.returncode != 0:
        raise _Failed(f"barsignal {' '.join(cmd)} exited {r.returncode}")
    return r


def _run(args: argparse.Namespace) -> int:
    from barsignal.errors import ConfigError

    global _progress
    _progress = sys.stderr if args.json else sys.stdout
    t_start = time.monotonic()
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    if not symbols or len(set(symbols)) != len(symbols):
        raise ConfigError(f"--symbols {args.symbols!r}: name one or more symbols, each once")
    if args.minutes < 2 or args.speed <= 0:
        raise ConfigError("--minutes must be at least 2 and --speed above 0")
    if args.long_threshold is not None and not 0 <= args.long_threshold <= 1:
        raise ConfigError(f"--long-threshold {args.long_threshold}: a probability, between 0 and 1")
    out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="barsignal-demo-"))
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty; name a new or empty directory")
    try:
        return _demo(args, symbols, out, t_start)
    except _Failed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


def _demo(args: argparse.Namespace, symbols: list[str], out: Path, t_start: float) -> int:
    from barsignal.errors import ConfigError
    from barsignal.sim import demo_bars as db

    data = _data_dir(args.data_dir)
    real = not args.synthetic and db.real_available(data, symbols)
    if not real and not args.synthetic and args.data_dir:
        raise ConfigError(f"--data-dir {data}: no real bars there for {', '.join(symbols)}; known symbols: "
                          f"{', '.join(db.REAL_FILES)}")
    if real:
        try:
            files, start, end = db.real_window(data, symbols, WARMUP_BARS, args.minutes)
        except ValueError as exc:
            raise ConfigError(f"{exc}") from None
        first = db.REAL_START_MS
        _say(f"demo: real Binance spot 1m bars from {data}: {', '.join(symbols)}")
    else:
        bars = db.synthetic_bars(symbols, WARMUP_BARS, args.minutes)
        out.mkdir(parents=True, exist_ok=True)
        files = db.write_bars(bars, out / "bars", "SYNTHETIC")
        start, end, first = WARMUP_BARS, WARMUP_BARS + args.minutes, db.SYNTHETIC_START_MS
        lacking = [s for s in symbols if s not in db.REAL_FILES or not (data / db.REAL_FILES[s]).is_file()]
        why = "--synthetic" if args.synthetic else f"no real bars of {', '.join(lacking)} at {data}"
        _say(f"demo: SYNTHETIC bars (a seeded random walk, not market data; {why}): {', '.join(symbols)}")
    out.mkdir(parents=True, exist_ok=True)
    last = first + (args.minutes - 1) * db.STEP_MS
    _say(f"demo: {WARMUP_BARS} warm-up bars a symbol over REST, then {args.minutes} bars streamed "
         f"({_utc(first)} to {_utc(last)} UTC) at {args.speed:g} bars/s")

    feed, port = _start_feed(out, files, start, end, args.speed)
    daemon: subprocess.Popen | None = None
    try:
        cfg = _write_config(out, port, symbols, args)
        state = out / "state"
        log = out / "daemon.log"
        _say(f"demo: feed serve  ws://127.0.0.1:{port} (REST on the same port), log {out / 'feed.log'}")
        _say(f"demo: config      {cfg}")
        with open(log, "ab") as fh:
            daemon = subprocess.Popen(_cli("--log-format", "json", "run", "--config", str(cfg)),
                                      stdout=subprocess.PIPE, stderr=fh, env=_env(), cwd=out, text=True)
        assert daemon.stdout is not None
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_lines, args=(daemon.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + 90 + 3 * args.minutes / args.speed
        metrics = None
        while metrics is None:
            if daemon.poll() is not None:
                raise _Failed(f"the daemon exited {daemon.returncode} at start:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise _Failed(f"the daemon did not start listening in time:\n{_tail(log)}")
            rec = _log_event(log, "metrics_listening")
            metrics = rec and str(rec["url"])
            time.sleep(0.1)
        base = metrics.rsplit("/", 1)[0]
        _say(f"demo: state       {state} (outbox, bar record in bars/, daemon.lock)")
        _say(f"demo: signals     {state / 'signals.jsonl'} (jsonl sink); the stdout sink's lines are below")
        _say(f"demo: ledger      {state / 'paper.sqlite'} (paper sink)")
        _say(f"demo: metrics     {base}/metrics   health {base}/healthz")
        _say(f"demo: daemon log  {log}")
        _policy_note(log, args.long_threshold, deadline, daemon)
        seen = _follow(lines, symbols, last, deadline, daemon, log, max(1, args.minutes // 8),
                       f"{base}/healthz")
        _say(f"demo: every symbol signalled its last bar ({_utc(last)} UTC); stopping the daemon with SIGTERM")
        rc = _stop(daemon)
        stopped = _log_event(log, "daemon_stopped") or {}
        _say(f"demo: the daemon exited {rc} (drained: {stopped.get('drained')}, signals this run: "
             f"{stopped.get('signals')}, printed on stdout: {seen})")
        if rc != 0:
            raise _Failed(f"the daemon exited {rc}:\n{_tail(log)}")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        _stop(feed)

    _say()
    _show(["paper", "status", "--config", str(cfg)], out, must=True)
    reports: dict[str, list[str]] = {}
    for sym in symbols:
        _show(["paper", "report", "--config", str(cfg), "--symbol", sym, "--out", str(out / "report" / sym)], out,
              must=True)
        mds = sorted((out / "report" / sym).glob("*.md"))
        reports[sym] = [str(m) for m in mds]
        for md in mds:
            for line in _report_summary(md.read_text(encoding="utf-8")):
                _say("    " + line)
    par = ["parity", "--live-signals", str(state / "signals.jsonl"), "--bars", str(state / "bars"),
           "--config", str(cfg)]
    r = _show(par + (["--artifact", str(Path(args.artifact).resolve())] if args.artifact else []), out)
    took = time.monotonic() - t_start
    if args.json:
        counts = {s: 0 for s in symbols}
        for line in (state / "signals.jsonl").read_bytes().splitlines():
            counts[orjson.loads(line)["symbol"]] += 1
        print(orjson.dumps({"parity_ok": r.returncode == 0, "bars": "real" if real else "synthetic",
                            "symbols": symbols, "signals": counts, "out": str(out), "config": str(cfg),
                            "state_dir": str(state), "reports": reports, "wall_s": round(took, 1)}).decode())
    if r.returncode != 0:
        print(f"demo: parity FAILED after {took:.0f} s; everything is in {out}", file=sys.stderr)
        return 1
    _say(f"demo: finished in {took:.0f} s; everything is in {out}")
    _say("parity OK")
    return 0


def _policy_note(log: Path, threshold: float | None, deadline: float, daemon: subprocess.Popen) -> None:
    """Say which policy the signals follow, from what the daemon logged at start."""
    while _log_event(log, "daemon_started") is None:
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise _Failed(f"the daemon did not start:\n{_tail(log)}")
        time.sleep(0.1)
    over = _log_event(log, "signal_policy_overridden")
    if over is not None:
        _say(f"demo: [signal] long_threshold = {over['long_threshold']:g} overrides the artifact's flat policy: "
             f"the rule goes long when p_up reaches it, and keeps the artifact's hysteresis "
             f"{over['hysteresis']:g}, cooldown {over['cooldown_bars']} bars and minimum hold "
             f"{over['min_hold_bars']} bars. No such setting was net-positive on validation: expect losses")
        return
    if threshold is None:
        _say("demo: the bundled artifact's policy is to stay flat (no setting made money on validation after "
             "costs), so every action below is flat and p_up is for information; `--long-threshold P` overrides "
             "it to show the paper broker trading")
    else:
        _say(f"demo: [signal] long_threshold = {threshold:g}: the rule goes long when p_up reaches it")


def _follow(lines: queue.Queue, symbols: list[str], last: int, deadline: float, daemon: subprocess.Popen,
            log: Path, every: int, healthz: str) -> int:
    """Print the stdout sink's signals (the first as it came, then one row a minute every ``every``
    minutes, and every change of action) until each symbol has signalled ``last``; returns lines seen."""
    by_time: dict[int, dict[str, dict[str, Any]]] = {}
    action = dict.fromkeys(symbols, "flat")
    done: set[str] = set()
    seen = printed_rows = 0
    health_shown = False
    while len(done) < len(symbols):
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            line = ""
        if line is None:
            raise _Failed(f"the daemon closed its stdout (exit {daemon.poll()}):\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise _Failed(f"timed out waiting for the last bar ({_utc(last)} UTC) of {sorted(set(symbols) - done)}:"
                          f"\n{_tail(log)}")
        if not line:
            continue
        sig = orjson.loads(line)
        seen += 1
        if seen == 1:
            _say(f"demo: first signal, as the stdout sink prints it:\n  {line.strip()}")
        t = int(sig["open_time"])
        row = by_time.setdefault(t, {})
        row[sig["symbol"]] = sig
        if t >= last:
            done.add(sig["symbol"])
        if len(row) == len(symbols):
            changed = any(row[s]["action"] != action[s] for s in symbols)
            for s in symbols:
                action[s] = row[s]["action"]
            if changed or printed_rows % every == 0 or t >= last:
                cells = "  ".join(f"{s} {row[s]['action']:<5} p_up {row[s]['p_up']:.4f}" for s in symbols)
                _say(f"  {_utc(t)}  {cells}")
            printed_rows += 1
            del by_time[t]
            if not health_shown and row[symbols[0]].get("source") == "ws":
                _say(f"demo: GET {healthz} -> {_healthz(healthz)}")
                health_shown = True
    return seen


def _report_summary(md: str) -> list[str]:
    """The report's headline table rows (strategy vs buy-and-hold), for the terminal."""
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    return rows[:8]

