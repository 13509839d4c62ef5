"""The layer rules of docs/ARCHITECTURE.md, read from the source with ``ast``.

``features`` ← ``data`` ← ``engine`` ← ``model`` / ``compression``; ``daemon`` uses ``features``,
``data`` and ``engine`` only and never torch. Every import counts, also those inside functions:
a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> barsignal subpackages it may import (itself always allowed). Root modules that are
# cross-cutting and import nothing of barsignal's (errors, log, tomlconfig, fsutil) are open to all.
ROOT_MODULES = {"errors", "log", "tomlconfig", "fsutil", "__init__"}
ALLOWED: dict[str, set[str]] = {
    "features": set(),
    "data": {"features"},
    "engine": {"features", "data"},
    "model": {"features", "data", "engine"},
    "compression": {"features", "data", "engine", "model"},
    "daemon": {"features", "data", "engine", "node"},
    # node.py, the composition root of run/replay/parity, is the daemon's top: the supervisor in
    # daemon/app.py builds through it, and it composes daemon parts.
    "node": {"features", "data", "engine", "daemon"},
}
# third-party modules a package must never import (the light core install has none of them)
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "features": {"torch", "onnx", "onnxruntime", "asyncio", "socket", "websockets", "aiohttp", "time"},
    "data": {"torch", "onnx"},
    "engine": {"torch", "onnx"},
    # ccxt: a test-only reference client (90 MB of RSS to import); the daemon talks HTTP itself
    "daemon": {"torch", "onnx", "onnxscript", "torchao", "safetensors", "ray", "ccxt"},
    "node": {"torch", "onnx", "onnxscript", "torchao", "safetensors", "ray", "ccxt"},
}
# engine modules that only the offline/GPU toolchain loads, lazily: TensorRT's builder needs onnx
ENGINE_ONNX_OK = {"engine/trt_ops.py", "engine/tensorrt_build.py"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "barsignal":  # from barsignal import log
                out += [(node.lineno, f"barsignal.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def violations(root: Path = REPO) -> list[str]:
    """Every import in the layered packages that breaks the rules, as ``file:line: what``."""
    bad: list[str] = []
    for pkg, allowed in ALLOWED.items():
        files = [root / f"{pkg}.py"] if (root / f"{pkg}.py").is_file() else sorted((root / pkg).rglob("*.py"))
        for path in files:
            rel = path.relative_to(root).as_posix()
            for line, mod in _imports(path):
                parts = mod.split(".")
                if parts[0] == "barsignal" and len(parts) > 1:
                    target = parts[1]
                    if target == pkg or target in ROOT_MODULES or target in allowed:
                        continue
                    bad.append(f"{rel}:{line}: {pkg} imports barsignal.{target} ({mod})")
                elif parts[0] in FORBIDDEN_THIRD_PARTY.get(pkg, set()):
                    if pkg == "engine" and parts[0] == "onnx" and rel in ENGINE_ONNX_OK:
                        continue
                    bad.append(f"{rel}:{line}: {pkg} imports {mod}")
    return bad


def test_layers_point_one_way() -> None:
    bad = violations()
    assert not bad, "imports against the layer rules (docs/ARCHITECTURE.md):\n" + "\n".join(bad)


def test_root_modules_import_no_subpackage() -> None:
    for name in ROOT_MODULES - {"__init__"}:
        path = REPO / f"{name}.py"
        if not path.exists():
            continue
        subs = [m for _, m in _imports(path) if m.startswith("barsignal.") and m.split(".")[1] not in ROOT_MODULES]
        assert not subs, f"{name}.py is imported by every layer and must not import {subs}"


@pytest.mark.parametrize(("pkg", "source", "expect"), [
    ("daemon", "from barsignal.model import informer\n", "daemon imports barsignal.model"),
    ("engine", "def f():\n    from barsignal.compression import pipeline\n", "engine imports barsignal.compression"),
    ("features", "import asyncio\n", "features imports asyncio"),
    ("data", "from barsignal import daemon\n", "data imports barsignal.daemon"),
    ("daemon", "import torch\n", "daemon imports torch"),
    ("daemon", "from barsignal.sim.simulator import FeedSimulator\n", "daemon imports barsignal.sim"),
    ("daemon", "from barsignal.cli import replay\n", "daemon imports barsignal.cli"),
])
def test_the_check_catches_a_bad_import(tmp_path: Path, pkg: str, source: str, expect: str) -> None:
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "bad.py").write_text(source)
    bad = violations(tmp_path)
    assert len(bad) == 1 and expect in bad[0], bad
