"""ONNX Runtime backend, the CPU default.

Sequential execution, ``intra_op_threads`` threads (1 by default), spinning configurable, warm-up
at load. Graph optimization level ``basic`` by default: measured on the student (interleaved A/B,
docs/BENCHMARKS.md), ``extended``/``all`` were ~20 % slower at batch 1, because their
SkipLayerNormalization fusion and layout transforms cost more than they save at this size.
Batch-1 scoring goes through an IOBinding bound once to preallocated input and output arrays:
the hot path copies the window into the bound input, runs,
and reads one float; it allocates no arrays. The dynamic-batch graph (``score_batch``, offline
evaluation only: the daemon, replay and parity score one window at a time) is opened on the first
``score_batch`` call, never at load: a daemon start neither loads nor warms it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from barsignal.engine.artifact import WINDOW_SHAPE, Variant
from barsignal.errors import ArtifactError
from barsignal.log import get_logger

log = get_logger(__name__)

INPUT = "input"
OUTPUT = "up_probability"
OPT_LEVELS = ("disable", "basic", "extended", "layout", "all")


def available() -> tuple[bool, str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:  # a core dependency; absent only in a broken install
        return False, f"onnxruntime not importable ({exc})"
    return True, "onnxruntime importable"


DEFAULT_OPT_LEVEL = "basic"


def session_options(intra_op_threads: int = 1, spinning: bool = False, opt_level: str = DEFAULT_OPT_LEVEL
                    ) -> Any:
    """SessionOptions for low-latency scoring: sequential, few threads, full graph optimization."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(intra_op_threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "layout": getattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT",
                          ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    flag = "1" if spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", flag)
    so.add_session_config_entry("session.inter_op.allow_spinning", flag)
    so.log_severity_level = 3
    return so


def open_session(path: Path, so: Any) -> Any:
    """A CPU InferenceSession; a file ONNX Runtime cannot load is an ArtifactError naming it."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({exc})") from None


class OnnxRuntimeScorer:
    """A :class:`~barsignal.engine.scorer.Scorer` on ONNX Runtime's CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, onnx: Path, onnx_dynamic: Path | None = None, *, intra_op_threads: int = 1,
                 spinning: bool = False, opt_level: str = DEFAULT_OPT_LEVEL, warmup: int = 200) -> None:
        so = session_options(intra_op_threads, spinning, opt_level)
        self.path = Path(onnx)
        self.session = open_session(self.path, so)
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in ins] != [INPUT] or OUTPUT not in [o.name for o in outs]:
            raise ArtifactError(
                f"{onnx}: expected input {INPUT!r} and output {OUTPUT!r}, found inputs"
                f" {[i.name for i in ins]} outputs {[o.name for o in outs]}"
            )
        if list(ins[0].shape) != [1, *WINDOW_SHAPE]:
            raise ArtifactError(f"{onnx}: input shape {ins[0].shape}, expected static [1, 30, 33]")
        self._window_shape = WINDOW_SHAPE
        self._in = np.zeros((1, *WINDOW_SHAPE), np.float32)
        self._in0 = self._in[0]
        self._out = np.zeros((1,), np.float32)
        io = self.session.io_binding()
        io.bind_input(INPUT, "cpu", 0, np.float32, list(self._in.shape), self._in.ctypes.data)
        io.bind_output(OUTPUT, "cpu", 0, np.float32, list(self._out.shape), self._out.ctypes.data)
        self._io = io
        # The C-level call without the Python wrapper's per-call bookkeeping, when available.
        inner, inner_io = getattr(self.session, "_sess", None), getattr(io, "_iobinding", None)
        if inner is not None and inner_io is not None and hasattr(inner, "run_with_iobinding"):
            self._run_inner, self._run_arg = inner.run_with_iobinding, inner_io
        else:
            self._run_inner, self._run_arg = self.session.run_with_iobinding, io
        self.dynamic_path = Path(onnx_dynamic) if onnx_dynamic else None
        self._dynamic_opts = (intra_op_threads, spinning, opt_level)
        self.dynamic: Any = None  # opened by the first score_batch
        rng = np.random.default_rng(0)
        sample = rng.standard_normal(WINDOW_SHAPE).astype(np.float32)
        for _ in range(max(1, warmup)):
            self.score(sample)

    def score(self, window: np.ndarray) -> float:
        if window.shape != self._window_shape:
            raise ValueError(f"window shape {window.shape}, expected {self._window_shape}")
        np.copyto(self._in0, window, casting="same_kind")
        self._run_inner(self._run_arg, None)
        return float(self._out[0])

    def score_batch(self, windows: np.ndarray, chunk: int = 64) -> np.ndarray:
        """Batches of ``chunk`` windows through the dynamic-batch graph (small chunks keep the
        activations in L2: measured faster per window than 4096-window batches). Offline evaluation
        only: it can differ from ``score`` by an ulp, so no signal path uses it."""
        if windows.ndim != 3 or windows.shape[1:] != self._window_shape:
            raise ValueError(f"windows shape {windows.shape}, expected (N, 30, 33)")
        n = windows.shape[0]
        out = np.empty((n,), np.float32)
        if self.dynamic is None and self.dynamic_path is not None:
            self.dynamic = open_session(self.dynamic_path, session_options(*self._dynamic_opts))
        if self.dynamic is None:
            for i in range(n):
                out[i] = self.score(windows[i])
            return out
        x = np.ascontiguousarray(windows, dtype=np.float32)
        for s in range(0, n, chunk):
            out[s:s + chunk] = self.dynamic.run([OUTPUT], {INPUT: x[s:s + chunk]})[0].reshape(-1)
        return out


def load(variant: Variant, *, intra_op_threads: int = 1, spinning: bool = False,
         cache_dir: Path | None = None, opt_level: str = DEFAULT_OPT_LEVEL) -> OnnxRuntimeScorer:
    """Open the variant's static ONNX (the dynamic one waits for a ``score_batch`` call)."""
    del cache_dir  # ORT compiles at load; nothing to cache
    return OnnxRuntimeScorer(variant.onnx, variant.onnx_dynamic, intra_op_threads=intra_op_threads,
                             spinning=spinning, opt_level=opt_level)
