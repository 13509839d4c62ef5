"""``barsignal compress move`` on a copy of the bundled artifact and 20 days of real futures bars:
a verified, idempotent ``move`` section that the daemon's forecaster reads and reproduces."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np

from barsignal.cli import main
from barsignal.engine import move_registry
from barsignal.engine.artifact import default_artifact_dir, load_artifact
from barsignal.engine.move import MoveSpec
from tests.conftest import FUTURES_1M


def test_compress_move_writes_a_verified_idempotent_section(tmp_path, capsys) -> None:
    from barsignal.model import move as mv
    from barsignal.model.dataset import load_segments

    art = tmp_path / "art"
    shutil.copytree(default_artifact_dir(), art)
    before = json.loads((art / "manifest.json").read_text())
    before.pop("move", None)
    files = [str(f) for f in FUTURES_1M[:20]]
    argv = ["compress", "move", "--artifact", str(art), "--bars", *files]
    assert main(argv) == 0
    assert "move: har_seasonal P(|r_15| > 20 bp)" in capsys.readouterr().out
    first = (art / "manifest.json").read_bytes()
    a = load_artifact(art)  # every file's sha256 verified, and the schema hash
    m = a.manifest
    assert {k: v for k, v in m.items() if k not in ("move", "revisions")} == \
        {k: v for k, v in before.items() if k != "revisions"}  # nothing else changed
    assert m["revisions"][:-1] == [r for r in before.get("revisions", []) if not r["what"].startswith("move:")]
    assert m["revisions"][-1]["what"].startswith("move:") and m["revisions"][-1]["command"].startswith("barsignal")
    move = m["move"]
    assert move["fitted_on"]["split"] == "train" and move["fitted_on"]["windows"] > 10_000
    assert move["fitted_on"]["calibration"]["on"] == "validation log-loss"
    rates = move["fitted_on"]["online_rate"]  # the online recalibration rate, chosen on validation too
    assert rates["on"] == "validation log-loss" and set(rates) - {"on"} == {f"{e:g}" for e in mv.ETA_GRID}
    eta = move["params"]["calib"]["eta"]
    assert rates[f"{eta:g}"] == min(v for k, v in rates.items() if k != "on")
    assert set(move["baselines"]) == {"persistence", "ewma", "har", "logistic33"}
    spec = MoveSpec.from_manifest(move)
    assert (spec.horizon, spec.threshold_bp, spec.kind) == (15, 20.0, "har_seasonal")

    # the daemon's forecaster, fed bar by bar, gives what the section was scored with (bit for bit)
    f = move_registry.build(spec)
    segs = load_segments(files)
    mb = mv.MoveBars.of(segs)
    a0, b0 = mb.bounds[0]
    live = np.array([f.update(bar) for bar in segs[0].frame.bars()])  # (N, 2)
    p, sig = mv.har_predict(move["params"], 15, 20.0, mb, np.arange(a0, b0))
    assert np.array_equal(live, np.stack([p, sig], axis=1), equal_nan=True)
    ok = np.isfinite(p)
    assert ok.sum() == b0 - a0 - 30 and all(0 < v < 1 for v in p[ok][:1000]) and not math.isnan(sig[-1])

    # idempotent: the same command again gives the same manifest, one move revision
    assert main(argv) == 0
    assert (art / "manifest.json").read_bytes() == first
    assert sum(r["what"].startswith("move:") for r in load_artifact(art).manifest["revisions"]) == 1

    # eval scores the shipped section beside the direction metrics
    capsys.readouterr()
    assert main(["eval", "--model", str(art), "--bars", *files[-6:], "--json", "--bootstrap", "20"]) == 0
    rep = json.loads(capsys.readouterr().out)["move"]
    assert rep["fitted_on"].startswith("shipped in the artifact") and rep["days"] == 6
    assert set(rep["scores"]) == {"har_seasonal", "har", "persistence", "ewma", "logistic33"} | (
        {"har_seasonal_static"} if eta else set())  # the same forecaster without its online correction
    hs = rep["scores"]["har_seasonal"]
    assert 0.5 < hs["roc_auc"]["value"] < 1 and hs["ece"]["ci95"] is not None and hs["qlike"]["value"] > 0
    assert rep["scores"]["har"]["log_loss_diff"]["verdict"] in ("beats", "loses to", "no difference")
