"""``barsignal replay --ray ADDRESS``: the symbols of a multi-symbol replay as Ray tasks (the ``cluster`` extra).

One task per symbol, never per month: the recursive features (EMA, MACD, RSI, ATR) depend on every
earlier bar, and the signal rule (hysteresis, cooldown) and the paper account (position, cash) carry
over a month's end, so a month replayed on its own is not the same as the month inside the whole
file; making it so would mean replaying every month from the file's start. Each task replays its
symbol with :func:`barsignal.cli.replay.replay_symbol` in a temporary directory of its own on the
node that runs it and returns its counts and output files (signals, paper ledger, report) to the
driver, which writes them where ``--jobs`` would have and merges them the same way.

Inputs (bar files, ``--config``, ``--artifact``) are read by the tasks at the driver's absolute
paths: on a multi-node cluster they must be on a shared filesystem, and barsignal must be installed
on every node. ``ray`` is imported only here, only when ``--ray`` is given.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from barsignal.errors import BarsignalError, ConfigError

INSTALL_HINT = "pip install 'barsignal[cluster]'"
LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024  # ray's minimum is 75 MiB; a task returns a few MB
_HOST_PORT = re.compile(r"^(?:ray://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


def parse_address(address: str) -> tuple[str, str | None, int | None]:
    """``(kind, host, port)`` of a ``--ray`` address: ``local``, ``auto``, ``ray://HOST:PORT`` (Ray
    client) or ``HOST:PORT`` (a cluster's GCS). ConfigError on anything else."""
    if address in ("local", "auto"):
        return address, None, None
    m = _HOST_PORT.match(address)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ConfigError(f"replay --ray {address}: not a Ray address; write local (a Ray runtime in this "
                          "process), auto (the cluster this node belongs to), ray://HOST:PORT (Ray client, "
                          "port 10001 by default) or HOST:PORT (the head's GCS, port 6379)")
    kind = "client" if address.startswith("ray://") else "gcs"
    return kind, m["host"].strip("[]"), int(m["port"])


def import_ray() -> Any:
    """``ray``, or ConfigError naming the ``cluster`` extra."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"replay --ray needs Ray, which is not installed ({exc}): {INSTALL_HINT}") from None
    return ray


def _reachable(host: str, port: int, address: str, timeout_s: float = 5.0) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigError(f"replay --ray {address}: cannot reach {host}:{port} ({exc}); start the cluster "
                          "(`ray start --head`) or check the address, or use --ray local") from None


def connect(address: str, cpus: int) -> Any:
    """Start (``local``: ``cpus`` CPUs, no dashboard, a small object store) or join a Ray runtime;
    ConfigError with a one-line reason when that fails. Returns the ``ray`` module."""
    kind, host, port = parse_address(address)
    ray = import_ray()
    if host is not None and port is not None:
        _reachable(host, port, address)  # a dead GCS address makes ray.init retry for 80 s, then exit
    try:
        if kind == "local":
            ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        if "ray[client]" in str(exc):
            raise ConfigError(f"replay --ray {address}: the Ray client is not installed: {INSTALL_HINT}") from None
        raise ConfigError(f"replay --ray {address}: cannot connect to Ray ({str(exc).splitlines()[0]}); "
                          "check the address, or use --ray local") from None
    return ray


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()} if directory.is_dir() else {}


def _settle_ledger(path: Path) -> None:
    """Fold the ledger's WAL into the database file, so that one file carries it all."""
    if path.is_file():
        db = sqlite3.connect(str(path))
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()


def replay_task(job: dict[str, Any]) -> dict[str, Any]:
    """The body of one Ray task: ``job`` (as built for ``--jobs``) replayed in a temporary directory of
    this node; returns the counts and the output files' bytes."""
    from barsignal import log as logmod
    from barsignal.cli.replay import replay_symbol

    if job.get("log"):
        logmod.configure(level=job["log"][0], fmt=job["log"][1])
    with tempfile.TemporaryDirectory(prefix="barsignal-ray-replay-") as tmp:
        t = Path(tmp)
        local = dict(job, state_dir=str(t / "state"), signals=str(t / "signals.jsonl"),
                     ledger=str(t / "paper.sqlite"), report=str(t / "report") if job["report"] else None, fresh=True)
        res = replay_symbol(local)
        ledger = Path(local["ledger"])
        _settle_ledger(ledger)
        sig = Path(local["signals"])
        return {"result": res, "signals": sig.read_bytes() if sig.exists() else None,
                "ledger": {sfx: Path(f"{ledger}{sfx}").read_bytes() for sfx in ("", "-wal")
                           if Path(f"{ledger}{sfx}").is_file()},
                "report": _files(t / "report"), "node": socket.gethostname()}


def run_jobs(jobs: list[dict[str, Any]], address: str, cpus: int | None = None) -> list[dict[str, Any]]:
    """Run ``jobs`` (those of :func:`barsignal.cli.replay.replay_many`) as Ray tasks at ``address`` and write
    each task's files where the job names them (signals, ledger, ``report`` directory), one task's at a
    time in the jobs' order; returns the results in that order, as :func:`replay_symbol` would. A task
    is pure (its own temporary directory), so Ray may re-run one whose node or worker died."""
    ray = connect(address, cpus or os.cpu_count() or 1)
    try:
        task = ray.remote(num_cpus=1)(replay_task)
        refs = []
        for j in jobs:
            rj = dict(j, files=[str(Path(f).resolve()) for f in j["files"]],
                      config=str(Path(j["config"]).resolve()) if j["config"] else None,
                      artifact=str(Path(j["artifact"]).resolve()) if j["artifact"] else None)
            refs.append(task.remote(rj))
        results = []
        for j, ref in zip(jobs, refs, strict=True):
            try:
                out = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BarsignalError):
                    raise cause from None
                raise
            results.append(_write(j, out))
            del out
    finally:
        ray.shutdown()
    return results


def _write(j: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """One task's files written where its job names them; its result with the driver's report path."""
    res = dict(out["result"])
    sig = Path(j["signals"])
    sig.parent.mkdir(parents=True, exist_ok=True)
    sig.unlink(missing_ok=True)
    if out["signals"] is not None:
        sig.write_bytes(out["signals"])
    ledger = Path(j["ledger"])
    ledger.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    for suffix, data in out["ledger"].items():
        Path(f"{ledger}{suffix}").write_bytes(data)
    if j["report"]:
        rep = Path(j["report"])
        rep.mkdir(parents=True, exist_ok=True)
        for name, data in out["report"].items():
            (rep / name).write_bytes(data)
        if res.get("report_md"):
            res["report_md"] = str(rep / Path(res["report_md"]).name)
    res["node"] = out["node"]
    return res
