"""The whole ``barsignal compress`` pipeline on a tiny teacher and a slice of real bars, run once.

Checks the machinery, not the fidelity (the figures go to the report): every stage writes its
outputs, the pruned model is smaller, the variants are what they claim (FP16 with FP32 I/O, Q/DQ
nodes, integer ops), every static ONNX passes TensorRT's parser rules, the report has its one
table and the artifact verifies and is refused once tampered with.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from barsignal.cli.compress import load_config
from barsignal.compression import quantize as q
from barsignal.errors import ArtifactError, ConfigError
from tests.conftest import run_cli

ROWS = ["teacher (PyTorch)", "teacher (ONNX FP32)", "student (PyTorch)", "student (ONNX FP32)",
        "student, no KD (PyTorch)", "pruned (ONNX FP32)", "pruned FP16", "pruned INT8 dynamic",
        "pruned INT8 static QDQ", "pruned QAT INT8 QDQ"]


@pytest.fixture(scope="module")
def done(tmp_path_factory, tiny_teacher, slice_data):
    import argparse

    from barsignal.compression import pipeline

    work = tmp_path_factory.mktemp("compress")
    args = argparse.Namespace(
        config=None, teacher=str(tiny_teacher), workdir=str(work / "run"), artifact=str(work / "artifact"),
        overrides=["distill.epochs=1", "distill.batch_size=128", "prune.finetune_epochs=1",
                   "quantize.qat_epochs=1", "quantize.calibration_windows=32", "eval.latency_iters=10",
                   "eval.windows=300"])
    cfg = load_config(args)
    out = pipeline.run(cfg, data=slice_data, command="pytest")
    return cfg, out, work


def test_every_stage_wrote_its_outputs(done):
    _, _, work = done
    run = work / "run"
    for f in ("distill.json", "prune.json", "export.json", "quantize.json", "report/report.md",
              "report/report.json", "report/latency.png", "report/distillation.png", "student/config.json",
              "student_plain/config.json", "pruned/model.safetensors", "qat/model.safetensors"):
        assert (run / f).is_file(), f
    d = json.loads((run / "distill.json").read_text())
    for k in ("student", "student_plain"):
        assert set(d[k]["vs_teacher"]) >= {"top1_agreement", "mean_abs_dp", "kl"}
    assert d["student"]["distilled"] and not d["student_plain"]["distilled"]


def test_pruned_model_is_smaller_and_onnx_matches_pytorch(done):
    _, out, work = done
    p = out["prune"]
    assert p["after"]["params"] < p["before"]["params"] and p["after"]["flops"] < p["before"]["flops"]
    assert p["after"]["config"]["layer_heads"] == [1] and p["after"]["config"]["e_layers"] == 1
    assert p["magnitude"]["zero_params"] > 0 and 0 < p["magnitude"]["global_sparsity"] < 1
    for name, r in out["export"].items():
        assert r["max_abs_dp"] <= 1e-5, name  # FP32 ONNX Runtime vs PyTorch on real windows
        assert (work / "run/onnx" / f"{name}.onnx").stat().st_size > 0


def test_variants_are_what_they_claim(done):
    _, out, work = done
    d = work / "run/onnx"
    f = onnx.TensorProto.FLOAT
    for name in ("fp16", "int8_dynamic", "int8_static", "qat"):
        for suffix in (".onnx", ".dynamic.onnx"):
            assert set(q.io_types(d / f"{name}{suffix}").values()) == {f}, name  # FP32 in and out
    fp16 = onnx.load(str(d / "fp16.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    assert not any(i.data_type == f and len(i.dims) >= 2 for i in fp16.graph.initializer)
    for name in ("int8_static", "qat"):
        ops = q.count_ops(d / f"{name}.onnx")
        assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0, name
    assert q.count_ops(d / "int8_dynamic.onnx").get("MatMulInteger", 0) > 0
    static = onnx.load(str(d / "int8_static.onnx")).graph.input[0].type.tensor_type.shape
    assert [x.dim_value for x in static.dim] == [1, 30, 33]
    qv = out["quantize"]["variants"]
    for name, r in qv.items():
        errs = list(r["weight_error"].values())
        assert errs and all(0 < e < 0.1 for e in errs), name
        assert 0 <= r["activation_clipping"]["rate"] < 1
        assert 0 <= r["vs_fp32"]["signal_agreement"] <= 1 and 0 <= r["vs_fp32"]["rule_agreement"] <= 1
        assert r["test_trading"]["bars"] == out["quantize"]["fp32_test_trading"]["bars"] > 0
    assert max(qv["fp16"]["weight_error"].values()) < max(qv["int8_static"]["weight_error"].values())
    assert out["quantize"]["qat"]["fake_quantized_linears"] == 7  # q, k, v, out, ff1, ff2, head
    sens = out["quantize"]["sensitivity"]
    assert {"embedding", "attention", "ffn", "norms", "head"} <= set(sens["groups"])
    rec = sens["recommendation"]
    assert set(rec["int8_groups"]) | set(rec["fp32_groups"]) == set(sens["groups"])


def test_static_onnx_pass_tensorrt_parser_rules(done):
    from barsignal.engine.trt_ops import check_graph, prepare_for_tensorrt

    _, _, work = done
    for name in ("teacher", "student", "pruned", "fp16", "int8_static", "qat"):
        model = prepare_for_tensorrt(onnx.load(str(work / "run/onnx" / f"{name}.onnx")))
        assert check_graph(model, static=True) == [], name


def test_report_has_one_table_with_every_row(done):
    _, out, work = done
    rep = out["report"]
    assert [r["name"] for r in rep["rows"]] == ROWS
    for r in rep["rows"]:
        assert r["latency_p50_us"] > 0 and r["latency_p99_us"] >= r["latency_p50_us"]
        assert r["params"] > 0 and r["file_bytes"] > 0 and r["flops"] > 0
    md = (work / "run/report/report.md").read_text()
    assert md.count("| model | runtime | params |") == 1
    for name in ROWS:
        assert f"| {name} |" in md
    assert rep["selected_variant"] in ("fp32", "fp16", "int8_dynamic", "int8_static", "qat")
    assert rep["batch_drift"]["pruned (ONNX FP32)"] <= 1e-5  # FP32: replay scores as live does
    assert "every validation bar" in rep["selection_rule"] and "test bar" not in rep["selection_rule"]
    for r in rep["rows"]:  # chosen on validation bars; the test bars' agreement is reported beside it
        assert 0.0 <= r["signal_agreement_vs_fp32"] <= 1.0 and 0.0 <= r["signal_agreement_vs_fp32_test"] <= 1.0
    for r in rep["rows"]:
        assert r["policy_name"] in ("trade", "flat") and r["trading"]["bars"] > 0
        if r["policy_name"] == "flat":
            assert r["trading"]["trades"] == 0 and r["trading"]["net_pnl"] == 0.0


def test_artifact_verifies_and_is_refused_when_tampered(done, tmp_path):
    from barsignal.engine.artifact import load_artifact

    _, _, work = done
    art = load_artifact(work / "artifact")
    assert art.default_variant in art.variant_names and "fp32" in art.variant_names
    sig = art.signal
    assert sig["chosen_on"] == "validation" and sig["policy"] in ("trade", "flat")
    assert sig["min_hold_bars"] >= art.horizon  # the label horizon flows into the rule
    if sig["policy"] == "flat":  # nothing net-positive after costs: stay flat, say so
        assert art.informational and "stay flat" in sig["reason"]
    else:
        assert 0 < sig["long_threshold"] < 1 and sig["val"]["net_pnl"] > 0 and not art.informational
    assert art.normalization and art.window_shape == (30, 33)
    b = art.baselines
    assert b is not None and b["fitted_on"] == "train" and len(b["logistic"]["w"]) == 33
    assert art.manifest["label"]["horizon"] == art.horizon and art.manifest["label"]["kind"] == "direction"
    v = art.variant()
    x = np.zeros((1, 30, 33), np.float32)
    assert q.session(v.onnx).run(["up_probability"], {"input": x})[0].shape == (1,)
    # FP32 ships the batch-1 serving graph, measured against the exported static graph
    fp32 = art.variant("fp32")
    assert onnx.load(str(fp32.onnx)).producer_name == "barsignal.compression.batch1"
    sg = art.manifest["variants"]["fp32"]["serving_graph"]
    assert sg["nodes"] < sg["exported_nodes"] and sg["max_abs_dp_vs_exported"] <= 1e-6 and sg["windows"] > 0
    assert art.manifest["variants"]["fp32"]["batch_drift"] <= 1e-5
    bad = tmp_path / "bad"
    shutil.copytree(work / "artifact", bad)
    with open(bad / v.onnx.name, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(bad)


def test_artifact_psi_bins_are_the_training_distribution(done, slice_data):
    from barsignal.daemon.metrics import LiveMonitor
    from barsignal.engine.artifact import load_artifact

    _, _, work = done
    ref = load_artifact(work / "artifact").psi_reference
    assert ref is not None and len(ref["edges"]) == 33 and all(len(e) == 9 for e in ref["edges"])
    assert all(abs(sum(f) - 1.0) < 1e-9 for f in ref["fractions"])
    train = slice_data.sets["train"]
    rows = train.last_rows()
    mon = LiveMonitor(1, window=len(rows), reference=ref)
    assert mon.psi_source == "artifact training bins"
    for r in rows:
        mon.observe_signal(0, 1.0, 0.5, r[None])
    assert mon.update_psi().max() < 1e-9  # the training rows themselves: PSI 0
    mon2 = LiveMonitor(1, window=len(rows), reference=ref)
    for r in rows:
        mon2.observe_signal(0, 1.0, 0.5, (r + 1.0)[None])  # every feature shifted by one std
    assert mon2.update_psi().max() > 0.25
    assert LiveMonitor(1).psi_source == "standard-normal deciles"  # older manifests: fall back


def test_artifact_ships_the_drift_bounds_of_its_training_split(done, slice_data):
    """The pipeline writes ``features.psi_bounds`` (engine/drift.py) from the same train windows as the
    bins: the bounds ``barsignal compress drift-bounds`` would compute for this artifact."""
    from barsignal.compression.drift_bounds import from_splits
    from barsignal.engine.artifact import load_artifact

    _, _, work = done
    art = load_artifact(work / "artifact")
    b = art.psi_bounds
    sets = slice_data.sets
    assert b is not None and b["rows"] == art.psi_reference["rows"] == len(sets["train"])
    assert b["sizes"] and all(len(row) == 33 for row in b["bounds"])
    again = from_splits(art.psi_reference, sets["train"], sets["val_all"], sets["test_all"])
    assert again["bounds"] == b["bounds"] and again["held_out"] == b["held_out"]


def test_eval_of_the_artifact_uses_its_shipped_baselines_and_policy(done, capsys):
    from barsignal.cli import main
    from barsignal.engine.artifact import load_artifact
    from tests.conftest import FUTURES_1M

    _, _, work = done
    art = load_artifact(work / "artifact")
    days = [str(f) for f in FUTURES_1M[:6]]
    rc = main(["eval", "--artifact", str(work / "artifact"), "--bars", *days, "--json", "--walk-forward", "2",
               "--bootstrap", "50"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["baselines_fitted_on"].startswith("shipped in the artifact")
    assert rep["days"] == 6 and rep["scores"]["logistic"]["roc_auc"]["ci95"] is not None
    verdicts = {v["verdict"] for v in rep["verdicts"]}
    assert verdicts <= {"beats", "loses to", "no difference"}
    assert rep["trading"]["policy"]["policy"] == art.signal["policy"]
    assert rep["trading"]["bars"] == rep["windows"] + rep["tied_dropped"]  # every bar, ties included
    assert [f["fold"] for f in rep["walk_forward"]] == [1, 2]
    assert sum(f["windows"] for f in rep["walk_forward"]) == rep["windows"]
    assert all("trading" in f for f in rep["walk_forward"])
    assert rep["move"] is None  # no move section, and --split all has no train split to fit one on
    rc = main(["eval", "--artifact", str(work / "artifact"), "--bars", *days, "--split", "test", "--bootstrap", "20"])
    text = capsys.readouterr().out
    assert rc == 0 and "(test, label: direction" in text and "Trading (" in text
    assert "Move: P(|r_" in text and "fitted on the train split of these bars" in text


def test_engine_stage_says_tensorrt_is_absent(done):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: the gpu tests build real engines")
    _, _, work = done
    proc = run_cli("compress", "engine", "--workdir", str(work / "run"), timeout=120)
    assert proc.returncode == 2
    assert "TensorRT is not installed" in proc.stderr and "pass TensorRT's parser rules" in proc.stderr


def test_config_errors_name_the_key(tmp_path):
    import argparse

    bad = tmp_path / "c.toml"
    bad.write_text("[distill]\ntemprature = 3\n")
    ns = argparse.Namespace(config=str(bad), teacher=None, workdir=None, artifact=None, overrides=[])
    with pytest.raises(ConfigError, match="temprature"):
        load_config(ns)
    ns = argparse.Namespace(config=None, teacher=None, workdir=None, artifact=None,
                            overrides=["distill.nope=1"])
    with pytest.raises(ConfigError, match=r"distill\.nope"):
        load_config(ns)
    ns.overrides = ["distill.epochs=3", "prune.importance=\"taylor\""]
    cfg = load_config(ns)
    assert cfg.distill.epochs == 3 and cfg.prune.importance == "taylor"
