"""Model artifacts: a directory of ONNX files (and optional weights) plus ``manifest.json``.

The manifest carries everything needed to run the model and to refuse it when it does not fit:
format version, model config, the feature-schema hash, normalization statistics, window shape,
signal thresholds and rule (chosen on validation), horizon, metrics, the variants with their files,
the sha256 of every file, and the command and versions that created it; optionally the move-size
forecast (``move``: horizon, threshold_bp, kind, params; see ``engine/move.py``).

``load_artifact`` verifies every file's sha256 and the schema hash against the code BEFORE any
backend loads a byte of model, and raises :class:`ArtifactError` naming the file and the mismatch.
``Artifact.hash`` (sha256 of the manifest bytes) identifies the artifact, e.g. in signal ids.
No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barsignal.engine.move import MoveSpec
from barsignal.errors import ArtifactError
from barsignal.fsutil import file_sha256

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WINDOW_SHAPE = (30, 33)
_REQUIRED = ("format_version", "model", "features", "window_shape", "signal", "variants",
             "default_variant", "files")


@dataclass(frozen=True, slots=True)
class Variant:
    """One deployable form of the model inside an artifact (paths are absolute)."""

    name: str
    onnx: Path  # static (1, 30, 33) input
    onnx_dynamic: Path | None  # dynamic batch axis, for replay
    weights: Path | None  # safetensors state dict for the torch reference backend, if shipped
    model_config: dict[str, Any]  # the config that rebuilds this variant (pruned ones differ)


@dataclass(frozen=True, slots=True)
class Artifact:
    """A verified artifact. Build it with :func:`load_artifact`, never by hand."""

    path: Path
    manifest: dict[str, Any]
    hash: str  # sha256 hex of manifest.json

    @property
    def schema_hash(self) -> str:
        return str(self.manifest["features"]["schema_hash"])

    @property
    def normalization(self) -> dict[str, Any]:
        return dict(self.manifest["features"].get("normalization") or {})

    @property
    def window_shape(self) -> tuple[int, int]:
        t, f = self.manifest["window_shape"]
        return int(t), int(f)

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(self.manifest["model"])

    @property
    def signal(self) -> dict[str, Any]:
        """Thresholds and rule chosen on validation: ``long_threshold``, ``short_threshold``, ``rule``."""
        return dict(self.manifest["signal"])

    @property
    def horizon(self) -> int:
        return int(self.manifest.get("horizon", 1))

    @property
    def informational(self) -> bool:
        """True when the artifact's policy stays flat (nothing was net-positive after costs on
        validation): its p_up is shipped for information, not as a trading signal."""
        sig = self.manifest.get("signal") or {}
        return bool(sig.get("informational")) or sig.get("policy") == "flat"

    @property
    def move(self) -> MoveSpec | None:
        """The move-size forecast's spec (manifest ``move``: horizon, threshold_bp, kind, params),
        verified at load; None when the artifact has no ``move`` section (its signals then carry
        ``p_move``, ``sigma_bp`` and ``regime`` as null)."""
        m = self.manifest.get("move")
        return MoveSpec.from_manifest(m) if m is not None else None

    @property
    def baselines(self) -> dict[str, Any] | None:
        """Train-fitted baseline parameters (``barsignal.model.baselines``), if the artifact ships them."""
        b = self.manifest.get("baselines")
        return dict(b) if b else None

    @property
    def psi_reference(self) -> dict[str, Any] | None:
        """Per-feature training bins (``edges``, ``fractions``) for the drift PSI, if shipped."""
        ref = (self.manifest.get("features") or {}).get("psi_reference")
        return dict(ref) if ref else None

    @property
    def psi_bounds(self) -> dict[str, Any] | None:
        """Per window size and feature, the drift PSI's calibrated bound (``engine.drift.null_bounds``), if shipped."""
        b = (self.manifest.get("features") or {}).get("psi_bounds")
        return dict(b) if b else None

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics") or {})

    @property
    def variant_names(self) -> list[str]:
        return list(self.manifest["variants"])

    @property
    def default_variant(self) -> str:
        return str(self.manifest["default_variant"])

    def variant(self, name: str = "") -> Variant:
        """The named variant, or the manifest's default when ``name`` is empty."""
        name = name or self.default_variant
        v = self.manifest["variants"].get(name)
        if v is None:
            raise ArtifactError(
                f"artifact {self.path}: no variant {name!r}; it has {', '.join(self.variant_names)}"
            )
        return Variant(
            name=name,
            onnx=self.path / v["onnx"],
            onnx_dynamic=self.path / v["onnx_dynamic"] if v.get("onnx_dynamic") else None,
            weights=self.path / v["weights"] if v.get("weights") else None,
            model_config=dict(v.get("model") or self.manifest["model"]),
        )


def default_artifact_dir() -> Path:
    """The bundled default artifact (package data)."""
    return Path(__file__).resolve().parent / "default_artifact"


def _code_schema_hash() -> str:
    from barsignal.features.spec import schema_hash

    return str(schema_hash())


def load_artifact(path: str | os.PathLike[str] | None = None, *, expected_schema_hash: str | None = None
                  ) -> Artifact:
    """Verify and describe the artifact at ``path`` (default: the bundled one).

    Checks, in order: the manifest parses and has every required key; its format version is known;
    every listed file exists with the listed sha256; every variant names listed files; the feature
    schema hash equals the code's (``expected_schema_hash`` overrides the code's, for tools only).
    Any failure raises :class:`ArtifactError` naming the file and the mismatch.
    """
    root = Path(path) if path else default_artifact_dir()
    mpath = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"artifact directory {root} does not exist; give the directory that holds "
                            "the artifact's manifest.json")
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: missing; an artifact is a directory with a manifest.json")
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{mpath}: not valid JSON ({exc}); the manifest is corrupted") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: expected a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ArtifactError(f"{mpath}: missing keys {missing}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{mpath}: format_version {manifest['format_version']!r}, this engine reads {FORMAT_VERSION}"
        )
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{mpath}: 'files' must map each file name to its sha256")
    for rel, want in files.items():
        fpath = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ArtifactError(f"{mpath}: file entry {rel!r} must be a plain relative path")
        if not fpath.is_file():
            raise ArtifactError(f"{fpath}: listed in the manifest but missing")
        got = file_sha256(fpath)
        if got != want:
            raise ArtifactError(
                f"{fpath}: sha256 mismatch (manifest {str(want)[:16]}..., file {got[:16]}...,"
                f" {fpath.stat().st_size} bytes); the file is corrupted or from another artifact"
            )
    for name, v in manifest["variants"].items():
        for key in ("onnx", "onnx_dynamic", "weights"):
            rel = v.get(key)
            if rel and rel not in files:
                raise ArtifactError(f"{mpath}: variant {name!r} {key} {rel!r} is not in 'files' (unverified)")
        if not v.get("onnx"):
            raise ArtifactError(f"{mpath}: variant {name!r} has no 'onnx' file")
    if manifest["default_variant"] not in manifest["variants"]:
        raise ArtifactError(f"{mpath}: default_variant {manifest['default_variant']!r} is not a variant")
    if tuple(manifest["window_shape"]) != WINDOW_SHAPE:
        raise ArtifactError(
            f"{mpath}: window_shape {manifest['window_shape']}, the engine feeds {WINDOW_SHAPE}")
    want_schema = expected_schema_hash if expected_schema_hash is not None else _code_schema_hash()
    got_schema = manifest["features"].get("schema_hash")
    if got_schema != want_schema:
        raise ArtifactError(
            f"{mpath}: feature schema hash {str(got_schema)[:16]}... does not match the code's"
            f" {want_schema[:16]}...; the model was trained on other features: retrain or use a matching"
            " barsignal version"
        )
    if manifest.get("move") is not None:
        _check_move(mpath, manifest["move"])
    return Artifact(path=root.resolve(), manifest=manifest, hash=hashlib.sha256(raw).hexdigest())


def _check_move(mpath: Path, move: Any) -> None:
    """The ``move`` section parses and names a known kind whose forecaster accepts its params."""
    from barsignal.engine.move_registry import build

    if not isinstance(move, Mapping):
        raise ArtifactError(f"{mpath}: 'move' must be an object (horizon, threshold_bp, kind, params), got {move!r}")
    try:
        build(MoveSpec.from_manifest(move))
    except ValueError as exc:
        raise ArtifactError(f"{mpath}: {exc}") from None


def versions() -> dict[str, str]:
    """Versions of the things that shape an artifact, for the manifest."""
    out = {"python": platform.python_version()}
    for mod in ("barsignal", "numpy", "onnx", "onnxruntime", "torch"):
        m = sys.modules.get(mod)
        if m is not None and getattr(m, "__version__", None):
            out[mod] = str(m.__version__)
    return out


def write_artifact(
    path: str | os.PathLike[str],
    *,
    files: Mapping[str, str | os.PathLike[str] | bytes],
    model_config: Mapping[str, Any],
    schema_hash: str,
    normalization: Mapping[str, Any],
    signal: Mapping[str, Any],
    variants: Mapping[str, Mapping[str, Any]],
    default_variant: str,
    horizon: int,
    metrics: Mapping[str, Any],
    command: str,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    psi_reference: Mapping[str, Any] | None = None,
    psi_bounds: Mapping[str, Any] | None = None,
) -> Artifact:
    """Write an artifact atomically (temp dir beside ``path``, then rename) and return it verified.

    ``files`` maps a relative name to a source path or bytes. ``variants`` maps a variant name to
    ``{"onnx": name, "onnx_dynamic": name, "weights": name?, "model": config?}`` naming entries of
    ``files``. ``signal`` holds ``long_threshold``, ``short_threshold`` and ``rule`` (and, from
    ``engine.policy``, ``policy``, ``hysteresis``, ``cooldown_bars``, ``min_hold_bars``, ``informational``).
    ``psi_reference`` (per-feature training decile ``edges`` and ``fractions``) and ``psi_bounds`` (the
    drift PSI's calibrated bounds, ``engine.drift.null_bounds``) go into ``features``.
    """
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise ArtifactError(f"{dest}: already exists; pass overwrite=True to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an artifact is package data
        hashes: dict[str, str] = {}
        for rel, src in files.items():
            if rel == MANIFEST:
                raise ArtifactError(f"{MANIFEST} is written by write_artifact, not passed as a file")
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                out.write_bytes(src)
            else:
                shutil.copyfile(src, out)
            hashes[rel] = file_sha256(out)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model": dict(model_config),
            "features": {"schema_hash": schema_hash, "normalization": dict(normalization),
                         **({"psi_reference": dict(psi_reference)} if psi_reference else {}),
                         **({"psi_bounds": dict(psi_bounds)} if psi_bounds else {})},
            "window_shape": list(WINDOW_SHAPE),
            "signal": dict(signal),
            "horizon": int(horizon),
            "metrics": dict(metrics),
            "variants": {k: dict(v) for k, v in variants.items()},
            "default_variant": default_variant,
            "files": hashes,
            "created_by": {"command": command, "versions": versions()},
            **dict(extra or {}),
        }
        data = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False).encode() + b"\n"
        with open(tmp / MANIFEST, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        load_artifact(tmp, expected_schema_hash=schema_hash)  # refuse to publish a broken one
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_artifact(dest, expected_schema_hash=schema_hash)


_STANDARD = ("format_version", "model", "features", "window_shape", "signal", "horizon", "metrics", "variants",
             "default_variant", "files")


def rewrite_artifact(src: Artifact | str | os.PathLike[str], dest: str | os.PathLike[str], *,
                     files: Mapping[str, str | os.PathLike[str] | bytes] | None = None,
                     variants: Mapping[str, Mapping[str, Any]] | None = None,
                     features: Mapping[str, Any] | None = None,
                     sections: Mapping[str, Any] | None = None, revision: Mapping[str, Any] | None = None,
                     replaces: str = "") -> Artifact:
    """Write a verified artifact ``src`` again to ``dest`` (may be its own directory) through
    :func:`write_artifact`: every manifest key kept (``created_by`` too), ``files`` replaced or added,
    ``variants`` and ``features`` keys replacing theirs, the top-level manifest ``sections`` set (e.g.
    ``move``). ``revision`` (``command``, ``what``) is appended to ``revisions``; an earlier revision
    whose ``what`` starts with ``replaces`` is dropped first, so a stage that rewrites its own section
    is idempotent. Every file is re-hashed and the result re-verified before it is published."""
    art = src if isinstance(src, Artifact) else load_artifact(src)
    m = dict(art.manifest)
    all_files: dict[str, str | os.PathLike[str] | bytes] = {
        rel: art.path / rel for rel in m["files"] if rel != MANIFEST}
    all_files.update(files or {})
    feats = {**m["features"], **dict(features or {})}
    known = {"schema_hash", "normalization", "psi_reference", "psi_bounds"}
    if set(feats) - known:
        raise ArtifactError(f"{art.path}: features keys {sorted(set(feats) - known)} are not known to this "
                            "version; rewrite it with the version that made it")
    extra = {k: v for k, v in m.items() if k not in _STANDARD}
    extra.update(sections or {})
    if revision is not None:
        kept = [r for r in m.get("revisions", []) if not (replaces and str(r.get("what", "")).startswith(replaces))]
        extra["revisions"] = [*kept, dict(revision)]
    return write_artifact(dest, files=all_files, model_config=m["model"], schema_hash=feats["schema_hash"],
                          normalization=feats["normalization"], psi_reference=feats.get("psi_reference"),
                          psi_bounds=feats.get("psi_bounds"), signal=m["signal"],
                          variants={**m["variants"], **dict(variants or {})}, default_variant=m["default_variant"],
                          horizon=m["horizon"], metrics=m["metrics"], command=m["created_by"]["command"],
                          extra=extra, overwrite=True)
