"""Training: seeded determinism, resume == uninterrupted, checkpoint contents, the CLI, and DDP on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from barsignal.model import checkpoint
from barsignal.model.dataset import load_splits
from barsignal.model.informer import student_config, teacher_config
from barsignal.model.train import TrainConfig, train, val_logloss
from tests.conftest import FUTURES_1M, REPO

SLICE = [str(p) for p in FUTURES_1M[:2]]  # two real, contiguous days of 1m bars (2,880 bars)
TIMING = ("train_seconds", "windows_per_s", "epoch_seconds")


@pytest.fixture(scope="module")
def splits():
    return load_splits(SLICE)


def _tc(**kw) -> TrainConfig:
    base = {"kind": "student", "epochs": 2, "batch_size": 64, "max_train_windows": 128,
            "max_val_windows": 128, "progress": False}
    return TrainConfig(**{**base, **kw})


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.mark.parametrize("make", [student_config, teacher_config])
def test_training_is_seeded_and_deterministic_on_cpu(tmp_path, splits, make) -> None:
    tc = _tc(epochs=1)
    a = train(splits, make(), tc, tmp_path / "a")
    b = train(splits, make(), tc, tmp_path / "b")
    assert a["rank_weight_digests"] == b["rank_weight_digests"]
    assert _untimed(a["history"]) == _untimed(b["history"])
    c = train(splits, make(), _tc(epochs=1, seed=1), tmp_path / "c")
    assert c["rank_weight_digests"] != a["rank_weight_digests"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, splits):
    out = tmp_path_factory.mktemp("full")
    return out, train(splits, student_config(), _tc(), out)


def test_resume_continues_exactly_where_it_stopped(tmp_path, splits, full_run) -> None:
    _, full = full_run
    part = train(splits, student_config(), _tc(max_minutes=1e-9), tmp_path / "part")
    assert part["epochs_run"] == 1 and part["stop"] == "time budget"
    rest = train(splits, student_config(), _tc(), tmp_path / "part", resume=True)
    assert rest["epochs_run"] == 2
    assert rest["rank_weight_digests"] == full["rank_weight_digests"]
    assert _untimed(rest["history"]) == _untimed(full["history"])


def test_checkpoint_holds_the_best_model_and_what_rebuilds_its_inputs(splits, full_run) -> None:
    out, s = full_run
    model = checkpoint.load(out)
    cfg, meta = checkpoint.read_config(out)
    assert cfg == student_config()
    assert meta["normalizer"] == splits.normalizer.to_dict()
    assert meta["horizon"] == 1 and meta["window"] == 30 and meta["kind"] == "student"
    assert len(meta["schema_hash"]) == 64
    best = min(h["val_logloss"] for h in s["history"])
    from barsignal.model.train import Dist

    got = val_logloss(model, splits.val.every(128), torch.device("cpu"), Dist())
    assert got == pytest.approx(best, rel=1e-6)
    state = torch.load(out / "train_state.pt", weights_only=False)
    assert state["epoch"] == 2 and "optimizer" in state


@pytest.fixture
def restore_logging():
    yield
    from barsignal import log

    log.configure()  # back to the lazy sys.stderr writer


def test_train_and_eval_cli(tmp_path, capsys, restore_logging) -> None:
    from barsignal.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "student", "--bars", *SLICE, "--out", str(out), "--epochs", "1",
               "--max-train-windows", "128", "--batch-size", "64", "--max-val-windows", "128",
               "--horizon", "1", "--no-progress", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["epochs_run"] == 1 and checkpoint.is_checkpoint(out)
    rc = main(["eval", "--artifact", str(out), "--bars", str(FUTURES_1M[5]), "--json", "--out", str(tmp_path / "ev"),
               "--bootstrap", "50"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["kind"] == "student" and rep["horizon"] == 1
    assert rep["windows"] + rep["tied_dropped"] == 1440 - 99 + 1 - 30 + 1 - 1  # warm-up 99, window 30, h 1
    assert rep["tied_dropped"] > 0  # one-minute futures closes do tie
    assert "IN-SAMPLE" in rep["baselines_fitted_on"]  # a checkpoint ships no baselines; --split all
    names = {"model", "majority", "last_sign", "opposite_sign", "neg_rsi6", "logistic"}
    assert set(rep["scores"]) == names
    for name in names - {"model"}:
        assert {"roc_auc", "log_loss", "brier", "roc_auc_diff"} <= set(rep["scores"][name])
        assert rep["scores"][name]["roc_auc_diff"]["verdict"] == "undetermined"  # one day: no CI
    assert 0.3 < rep["scores"]["model"]["roc_auc"]["value"] < 0.7
    assert (tmp_path / "ev" / "calibration.png").stat().st_size > 1000
    assert "| log_loss |" in (tmp_path / "ev" / "eval.md").read_text()
    rc = main(["eval", "--artifact", str(tmp_path), "--bars", str(FUTURES_1M[5])])
    assert rc == 2 and "neither a checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(("distil", "rel"), [(False, 1e-6), (True, 5e-3)])
def test_ddp_two_cpu_processes_match_one_process(tmp_path, splits, distil, rel) -> None:
    """Same global batches on 1 or 2 ranks. Without BatchNorm (distil=false) the runs differ only by
    float summation order; with it, each rank normalizes with its half-batch statistics."""
    args = ["student", "--bars", *SLICE, "--epochs", "1", "--max-train-windows", "256", "--batch-size", "64",
            "--max-val-windows", "128", "--dropout", "0", "--set", f"distil={str(distil).lower()}",
            "--threads", "1", "--horizon", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    ddp = subprocess.run([*torchrun, "-m", "barsignal", "train", *args, "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = train(splits, student_config(dropout=0.0, distil=distil),  # the same run in this one process
                _tc(epochs=1, max_train_windows=256, max_val_windows=128), tmp_path / "one")
    two = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert two["world"] == 2 and len(two["rank_weight_digests"]) == 2
    assert two["rank_weight_digests"][0] == two["rank_weight_digests"][1]  # both ranks end identical
    assert two["history"][0]["train_logloss"] == pytest.approx(one["history"][0]["train_logloss"], rel=rel)
    assert two["history"][0]["val_logloss"] == pytest.approx(one["history"][0]["val_logloss"], rel=rel)
    a, b = checkpoint.load(tmp_path / "ddp"), checkpoint.load(tmp_path / "one")
    diff = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))
    print(f"DDP vs single (distil={distil}): train loss {two['history'][0]['train_logloss']:.8f} vs "
          f"{one['history'][0]['train_logloss']:.8f}, max |dw| {diff:.2e}")
    assert diff < (1e-4 if not distil else 5e-3)


def test_eval_scores_the_bundled_artifact_without_torch(tmp_path) -> None:
    code = ("import json, sys; from barsignal.cli import main; "
            "rc = main(['eval', '--bars', sys.argv[1], '--json']); assert rc == 0; "
            "assert 'torch' not in sys.modules, 'eval of an artifact imported torch'")
    proc = subprocess.run([sys.executable, "-c", code, str(FUTURES_1M[5])], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    h = rep["horizon"]
    assert rep["kind"].startswith("artifact:") and rep["windows"] + rep["tied_dropped"] == 1440 - 99 + 1 - 30 + 1 - h
    assert {"model", "majority", "last_sign", "opposite_sign", "neg_rsi6", "logistic"} <= set(rep["scores"])
    from barsignal.engine.artifact import load_artifact

    shipped = load_artifact().baselines is not None
    assert rep["baselines_fitted_on"].startswith("shipped" if shipped else "fitted IN-SAMPLE")
    assert rep["trading"]["bars"] == rep["windows"] + rep["tied_dropped"]


def test_bench_train_reports_both_models(capsys) -> None:
    import argparse

    from barsignal.bench import train as bench_train

    p = argparse.ArgumentParser()
    bench_train.add_arguments(p)
    args = p.parse_args(["--bars", *SLICE, "--steps", "2", "--batch", "16", "--latency-calls", "3", "--json"])
    assert bench_train.run(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["model"] for r in out["models"]] == ["teacher", "student"]
    assert all(r["train_windows_per_s"] > 0 and r["eval_windows_per_s"] > 0 for r in out["models"])
    flops = {a["teacher attention"]: a["mflops_per_window"] for a in out["attention"]}
    assert flops["prob (sampled)"] == flops["full"] < flops["prob (export mode)"]  # ProbSparse saves nothing
