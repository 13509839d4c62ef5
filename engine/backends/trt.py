"""TensorRT backend (NVIDIA GPUs), TensorRT 10.x / 11.x API with cuda-python.

Load: deserialize the cached engine for (GPU, compute capability, TensorRT version, ONNX sha256),
or build it from the variant's ONNX through ``compression.tensorrt_build`` and write it
atomically. Buffers: pinned host input/output (cudaHostAlloc) and device input/output
(cudaMalloc), bound once with ``set_tensor_address``. One warm-up enqueue
(``execute_async_v3`` on a non-blocking stream), then a CUDA graph of H2D copy + enqueue + D2H
copy is captured; each call writes the window into pinned memory, launches the graph and
synchronizes the stream.

``tensorrt`` and ``cuda-python`` are the ``gpu`` extra, imported inside functions only. They
cannot be installed on the development machines; this backend is exercised only where they and a
GPU exist (tests marked ``gpu``).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from barsignal.engine.artifact import WINDOW_SHAPE, Variant
from barsignal.errors import ArtifactError
from barsignal.log import get_logger

log = get_logger(__name__)

INPUT, OUTPUT = "input", "up_probability"


def available() -> tuple[bool, str]:
    """TensorRT importable and a CUDA device present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "tensorrt not importable"
    try:
        from barsignal.engine.tensorrt_build import cuda_check, cudart

        n = cuda_check(cudart().cudaGetDeviceCount())
    except Exception as exc:  # no driver, no cuda-python, no device
        return False, f"tensorrt importable but no usable CUDA device ({exc})"
    if int(n) < 1:
        return False, "tensorrt importable but no CUDA device"
    return True, f"tensorrt importable and {int(n)} CUDA device(s) present"


def _host_array(ptr: int, n: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_float * n).from_address(int(ptr)))


class TensorRTScorer:
    name = "tensorrt"

    def __init__(self, engine_file: Path, *, warmup: int = 50, cuda_graph: bool = True) -> None:
        import tensorrt as trt

        from barsignal.engine.tensorrt_build import cuda_check, cudart

        rt = cudart()
        self._rt, self._check, self._ok = rt, cuda_check, rt.cudaError_t.cudaSuccess
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._runtime.engine_host_code_allowed = True  # version-compatible engines need it
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_file).read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{engine_file}: TensorRT could not deserialize it; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        n_in, n_out = int(np.prod(WINDOW_SHAPE)), 1
        fbytes = np.dtype(np.float32).itemsize
        self._h_in = cuda_check(rt.cudaHostAlloc(n_in * fbytes, rt.cudaHostAllocDefault))
        self._h_out = cuda_check(rt.cudaHostAlloc(n_out * fbytes, rt.cudaHostAllocDefault))
        self._d_in = cuda_check(rt.cudaMalloc(n_in * fbytes))
        self._d_out = cuda_check(rt.cudaMalloc(n_out * fbytes))
        self._nbytes_in, self._nbytes_out = n_in * fbytes, n_out * fbytes
        self._in = _host_array(self._h_in, n_in).reshape(WINDOW_SHAPE)
        self._out = _host_array(self._h_out, n_out)
        self.stream = cuda_check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
        self.context.set_input_shape(INPUT, (1, *WINDOW_SHAPE))
        self.context.set_tensor_address(INPUT, int(self._d_in))
        self.context.set_tensor_address(OUTPUT, int(self._d_out))
        self._graph_exec = None
        for _ in range(max(1, warmup)):
            self._enqueue()
            cuda_check(rt.cudaStreamSynchronize(self.stream))
        if cuda_graph:
            cuda_check(rt.cudaStreamBeginCapture(self.stream,
                                                  rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            self._enqueue()
            graph = cuda_check(rt.cudaStreamEndCapture(self.stream))
            self._graph_exec = cuda_check(rt.cudaGraphInstantiate(graph, 0))
            self._graph = graph
            cuda_check(rt.cudaGraphLaunch(self._graph_exec, self.stream))
            cuda_check(rt.cudaStreamSynchronize(self.stream))

    def _enqueue(self) -> None:
        rt, check = self._rt, self._check
        check(rt.cudaMemcpyAsync(self._d_in, self._h_in, self._nbytes_in,
                                 rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        check(rt.cudaMemcpyAsync(self._h_out, self._d_out, self._nbytes_out,
                                 rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def score(self, window: np.ndarray) -> float:
        if window.shape != WINDOW_SHAPE:
            raise ValueError(f"window shape {window.shape}, expected {WINDOW_SHAPE}")
        np.copyto(self._in, window, casting="same_kind")
        if self._graph_exec is not None:
            self._rt.cudaGraphLaunch(self._graph_exec, self.stream)
        else:
            self._enqueue()
        err = self._rt.cudaStreamSynchronize(self.stream)[0]
        if err != self._ok:
            raise RuntimeError(f"CUDA error {err} while scoring")
        return float(self._out[0])

    def score_batch(self, windows: np.ndarray) -> np.ndarray:
        """The engine has a batch-1 profile: replay scores window by window through the graph."""
        return np.fromiter((self.score(w) for w in windows), np.float32, len(windows))

    def close(self) -> None:
        rt = self._rt
        for ptr in (self._d_in, self._d_out):
            rt.cudaFree(ptr)
        for ptr in (self._h_in, self._h_out):
            rt.cudaFreeHost(ptr)
        rt.cudaStreamDestroy(self.stream)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "barsignal" / "engines"


def load(variant: Variant, *, intra_op_threads: int = 1, spinning: bool = False,
         cache_dir: Path | None = None, version_compatible: bool = False) -> TensorRTScorer:
    """Deserialize the cached engine for this GPU and ONNX, building it first when absent."""
    del intra_op_threads, spinning
    from barsignal.engine.tensorrt_build import build_engine

    engine = build_engine(variant.onnx, cache_dir or default_cache_dir(),
                          version_compatible=version_compatible, log=log)
    return TensorRTScorer(engine)
