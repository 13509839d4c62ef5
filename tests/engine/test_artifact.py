"""Artifact integrity with real corruptions: every one is refused with an error naming the file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from barsignal.engine.artifact import MANIFEST, file_sha256, load_artifact, write_artifact
from barsignal.errors import ArtifactError
from barsignal.features.spec import schema_hash


def test_bundled_artifact_verifies(bundled: Path) -> None:
    art = load_artifact()
    assert art.path == bundled.resolve()
    assert art.window_shape == (30, 33)
    assert art.schema_hash == schema_hash()
    assert len(art.hash) == 64
    for rel, sha in art.manifest["files"].items():
        assert file_sha256(bundled / rel) == sha
    var = art.variant()
    assert var.name == art.default_variant and var.onnx.is_file()
    assert {"long_threshold", "short_threshold", "rule"} <= set(art.signal)
    assert art.normalization, "normalization statistics must be in the manifest"
    assert art.manifest["created_by"]["command"]
    total = sum(p.stat().st_size for p in bundled.iterdir())
    assert total < 8 * 1024 * 1024, f"bundled artifact is {total} bytes; keep it a few MB"


def test_flipped_byte_is_refused(artifact_copy: Path) -> None:
    onnx_file = load_artifact(artifact_copy).variant().onnx
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{onnx_file.name}: sha256 mismatch"):
        load_artifact(artifact_copy)


def test_truncated_file_is_refused(artifact_copy: Path) -> None:
    weights = load_artifact(artifact_copy).variant().weights
    assert weights is not None
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 100)
    with pytest.raises(ArtifactError, match=rf"{weights.name}: sha256 mismatch"):
        load_artifact(artifact_copy)


def test_missing_file_is_refused(artifact_copy: Path) -> None:
    dyn = load_artifact(artifact_copy).variant().onnx_dynamic
    assert dyn is not None
    dyn.unlink()
    with pytest.raises(ArtifactError, match=rf"{dyn.name}: listed in the manifest but missing"):
        load_artifact(artifact_copy)


def test_swapped_manifest_is_refused(artifact_copy: Path, tmp_path: Path) -> None:
    """Artifact B (another ONNX under the same name) gets A's manifest: B's file no longer matches."""
    a = load_artifact(artifact_copy)
    var = a.variant()
    other = tmp_path / "other"
    b = write_artifact(
        other, files={**{name: artifact_copy / name for name in a.manifest["files"]},
                      var.onnx.name: var.onnx_dynamic},
        model_config=a.model_config, schema_hash=a.schema_hash, normalization=a.normalization,
        signal=a.signal, variants=a.manifest["variants"], default_variant=a.default_variant,
        horizon=a.horizon, metrics={}, command="test")
    assert b.hash != a.hash
    shutil.copyfile(artifact_copy / MANIFEST, other / MANIFEST)
    with pytest.raises(ArtifactError, match=rf"{var.onnx.name}: sha256 mismatch"):
        load_artifact(other)


def test_schema_hash_mismatch_is_refused(artifact_copy: Path, tmp_path: Path) -> None:
    a = load_artifact(artifact_copy)
    var = a.variant()
    stale = "0" * 64
    out = tmp_path / "stale"
    write_artifact(out, files={var.onnx.name: var.onnx}, model_config=a.model_config, schema_hash=stale,
                   normalization=a.normalization, signal=a.signal,
                   variants={"v": {"onnx": var.onnx.name}}, default_variant="v", horizon=1, metrics={},
                   command="test")
    with pytest.raises(ArtifactError, match=r"manifest.json: feature schema hash 0000000000000000"):
        load_artifact(out)


def test_edited_manifest_is_refused(artifact_copy: Path) -> None:
    """A hand edit that points a variant at a file the manifest does not hash is refused."""
    m = json.loads((artifact_copy / MANIFEST).read_text())
    name = m["default_variant"]
    (artifact_copy / "extra.onnx").write_bytes((artifact_copy / m["variants"][name]["onnx"]).read_bytes())
    m["variants"][name]["onnx"] = "extra.onnx"
    (artifact_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"manifest.json: variant .* 'extra.onnx' is not in 'files'"):
        load_artifact(artifact_copy)


def test_garbage_manifest_and_missing_dir(artifact_copy: Path, tmp_path: Path) -> None:
    (artifact_copy / MANIFEST).write_bytes(b"\x00\xff{not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json: not valid JSON"):
        load_artifact(artifact_copy)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nope")


def test_write_is_atomic_and_refuses_overwrite(tmp_path: Path, artifact_copy: Path) -> None:
    a = load_artifact(artifact_copy)
    var = a.variant()
    kw = dict(files={"m.onnx": var.onnx, "blob.bin": b"\x01\x02"}, model_config=a.model_config,
              schema_hash=a.schema_hash, normalization=a.normalization, signal=a.signal,
              variants={"v": {"onnx": "m.onnx"}}, default_variant="v", horizon=1,
              metrics={"x": 1.5}, command="test")
    out = tmp_path / "new"
    art = write_artifact(out, **kw)
    assert art.manifest["files"]["blob.bin"] == file_sha256(out / "blob.bin")
    assert oct(os.stat(out).st_mode & 0o777) == "0o755"
    with pytest.raises(ArtifactError, match="already exists"):
        write_artifact(out, **kw)
    # A failing write (a variant naming an unlisted file) leaves neither the target nor temp dirs.
    bad = tmp_path / "bad"
    with pytest.raises(ArtifactError):
        write_artifact(bad, **{**kw, "variants": {"v": {"onnx": "missing.onnx"}}})
    assert not bad.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "new"]
    assert np.isclose(load_artifact(out).metrics["x"], 1.5)


def test_rewrite_keeps_every_manifest_key_and_appends_a_revision(artifact_copy: Path, tmp_path: Path) -> None:
    from barsignal.engine.artifact import rewrite_artifact

    a = load_artifact(artifact_copy)
    bounds = {"sizes": [240], "bounds": [[1.0] * 33], "quantile": 0.995}
    out = rewrite_artifact(a, tmp_path / "re", features={"psi_bounds": bounds},
                           revision={"command": "test", "what": "bounds"})
    old, new = a.manifest, out.manifest
    assert new["features"]["psi_bounds"] == bounds and out.psi_bounds == bounds
    assert new["features"]["psi_reference"] == old["features"]["psi_reference"]
    assert {k: v for k, v in new.items() if k not in ("features", "revisions")} == \
        {k: v for k, v in old.items() if k not in ("features", "revisions")}
    assert new["revisions"] == [*old.get("revisions", []), {"command": "test", "what": "bounds"}]
    again = rewrite_artifact(out, out.path, revision={"command": "test", "what": "again"})  # in place
    assert again.psi_bounds == bounds and len(again.manifest["revisions"]) == len(new["revisions"]) + 1
    with pytest.raises(ArtifactError, match="not known"):
        rewrite_artifact(a, tmp_path / "x", features={"mystery": 1}, revision={"command": "t", "what": "t"})
