"""`barsignal bench scoring` runs end to end on the bundled artifact (figures, not timed asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_scoring_json_and_markdown(tmp_path: Path) -> None:
    from barsignal.engine.artifact import load_artifact

    default = load_artifact().default_variant  # one variant: every variant is the same code path (33 s -> 11 s)
    proc = subprocess.run(
        [sys.executable, "-m", "barsignal", "bench", "scoring", "--calls", "300", "--warmup", "50",
         "--batch", "256", "--variants", default, "--json", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    for key in ("floor_ms", "matmul_gflops", "torch_eager_p50_ms", "flops_per_window"):
        assert isinstance(res[key], float | int) and res[key] > 0, key
    entry = res["results"][f"onnxruntime/{default}"]
    assert entry["calls"] == 300
    assert 0 < entry["p50_ms"] <= entry["p99_ms"] <= entry["p999_ms"]
    assert entry["batch"]["windows_per_s"] > 0
    assert res["ort_process_imports_torch"] is False
    md = (tmp_path / "bench_scoring.md").read_text()
    assert f"| onnxruntime/{default} |" in md and "PyTorch eager p50" in md
    assert json.loads((tmp_path / "bench_scoring.json").read_text())["artifact_hash"] == res["artifact_hash"]
