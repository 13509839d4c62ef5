"""``barsignal replay --ray ADDRESS`` (issue 14, the ``cluster`` extra) on a local Ray runtime: three
symbols' real bars as Ray tasks give the same signals, ledgers and reports as ``--jobs 1``; a missing
Ray, a bad address and an unsupported option exit 2 with one line before any output is written.
Only ``--ray local`` runs here: no multi-node cluster is started."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import ray  # noqa: F401  installed by `make test` (the cluster extra): a missing ray fails here, it is not skipped

from tests import e2e as h
from tests.conftest import DATA, REPO, free_port

FILES = {"BTCUSDT": DATA / "klines" / "spot_1m" / "BTC_USDT-1m_2023-03-16_2023-05-01.json",
         "ETHUSDT": DATA / "multi" / "spot_1m" / "ETH_USDT-1m.json",
         "XRPUSDT": DATA / "multi" / "spot_1m" / "XRP_USDT-1m.json"}
CONFIG = '[paper]\nallow_short = true\n[signal]\nlong_threshold = 0.5\nshort_threshold = 0.5\n'


def _barsignal(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    return subprocess.run([sys.executable, "-m", "barsignal", "replay", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=e)


def _slices(tmp: Path) -> list[str]:
    out = []
    for i, (sym, f) in enumerate(FILES.items()):
        path = h.write_slice(h.rows(f), 2000 + 300 * i, 3200 + 300 * i, tmp / f"{sym}.json")
        out += ["--bars", f"{sym}={path}"]
    return out


def _tables(path: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(path)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("meta", "positions", "fills",
                                                                                       "equity")}
    finally:
        db.close()


def _signals(path: Path) -> list[dict]:
    rows = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    for r in rows:
        r.pop("latency_us")  # a timing, not a result
    return rows


def test_ray_local_gives_the_same_signals_ledgers_and_reports_as_one_process(tmp_path: Path) -> None:
    cfg = tmp_path / "replay.toml"
    cfg.write_text(CONFIG)
    bars = _slices(tmp_path)
    out = {}
    for name, how in (("jobs1", ["--jobs", "1"]), ("ray", ["--ray", "local", "--jobs", "2"])):
        d = tmp_path / name
        r = _barsignal("--config", str(cfg), *bars, *how, "--signals", str(d / "signals.jsonl"),
                       "--out", str(d / "report"))
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = d
    assert "as 3 Ray task(s) on 1 node(s) (local)" in r.stderr, r.stderr[-2000:]
    one, on_ray = _signals(out["jobs1"] / "signals.jsonl"), _signals(out["ray"] / "signals.jsonl")
    assert one == on_ray
    syms = [s["symbol"] for s in one]
    assert syms == sorted(syms, key=list(FILES).index)  # merged in the order given, each symbol whole
    assert all(syms.count(s) > 400 for s in FILES)
    rep1, rep2 = out["jobs1"] / "report", out["ray"] / "report"
    names = sorted(p.name for p in rep1.iterdir())
    assert names == sorted(p.name for p in rep2.iterdir())
    assert {f"report_{s}.md" for s in FILES} | {"report.md"} <= set(names)
    for n in names:
        if n.endswith(".sqlite"):
            assert _tables(rep1 / n) == _tables(rep2 / n), n
        assert (rep1 / n).read_bytes() == (rep2 / n).read_bytes(), n
    fills = sum(len(_tables(rep2 / f"paper_{s}.sqlite")["fills"]) for s in FILES)
    assert fills > 0  # the accounts traded: the ledgers compared above are not empty


def test_ray_refuses_a_bad_or_missing_address_and_a_missing_ray_before_writing_anything(tmp_path: Path) -> None:
    eth = h.write_slice(h.rows(FILES["ETHUSDT"]), 0, 1000, tmp_path / "ETHUSDT.json")
    bars = ["--bars", f"ETHUSDT={eth}"]
    sig = tmp_path / "signals.jsonl"
    rep = tmp_path / "report"
    outs = ["--signals", str(sig), "--out", str(rep)]

    r = _barsignal(*bars, "--ray")
    assert r.returncode == 2 and "--ray: expected one argument" in r.stderr, r.stderr

    cases = {"nonsense": "not a Ray address", "ray://127.0.0.1:99999": "not a Ray address",
             f"ray://127.0.0.1:{free_port()}": "cannot reach 127.0.0.1:",
             f"127.0.0.1:{free_port()}": "cannot reach 127.0.0.1:",
             "auto": "cannot connect to Ray"}
    for address, says in cases.items():
        r = _barsignal(*bars, *outs, "--ray", address, timeout=60)
        assert r.returncode == 2, (address, r.stderr[-2000:])
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"barsignal replay: replay --ray {address}") and says in last, (address, last)
    assert not sig.exists() and not rep.exists()

    r = _barsignal(*bars, *outs, "--ray", "local", "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 2 and "--state-dir" in r.stderr and "not supported on Ray" in r.stderr, r.stderr
    assert not (tmp_path / "state").exists()

    bad = tmp_path / "bad.toml"
    bad.write_text("[bogus]\nx = 1\n")
    r = _barsignal(*bars, *outs, "--ray", "local", "--config", str(bad))
    assert r.returncode == 2 and "unknown key 'bogus'" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    assert "Ray" not in r.stderr  # refused before a Ray runtime was started

    # no ray installed: a package `ray` that fails to import stands first on the path
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    r = _barsignal(*bars, *outs, "--ray", "local", env={"PYTHONPATH": str(shim.parent)})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "pip install 'barsignal[cluster]'" in r.stderr.strip().splitlines()[-1], r.stderr
    assert not sig.exists() and not rep.exists()

    # an error inside a task (a bar file missing on the node) comes back as the task's own one line
    missing = tmp_path / "missing.json"
    r = _barsignal(*bars, "--bars", f"XRPUSDT={missing}", "--ray", "local", "--out", str(tmp_path / "out"))
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == f"barsignal replay: {missing}: no such file", r.stderr[-2000:]
