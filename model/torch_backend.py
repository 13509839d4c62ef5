"""PyTorch reference backend: rebuilds the Informer from the variant's config and safetensors
weights. Used for parity checks and, on a GPU without TensorRT, for latency with
``torch.cuda.CUDAGraph`` (labelled as such). torch is imported lazily, inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from barsignal.engine.artifact import WINDOW_SHAPE, Variant
from barsignal.errors import ArtifactError, ConfigError
from barsignal.log import get_logger

log = get_logger(__name__)


def available() -> tuple[bool, str]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False, "torch not installed (pip install 'barsignal[train]')"
    return True, "torch importable"


def build_model(variant: Variant) -> Any:
    """The Informer of ``variant`` in eval + export mode, weights loaded."""
    from barsignal.model.informer import Informer, InformerConfig

    if variant.weights is None:
        raise ArtifactError(f"variant {variant.name!r} ships no weights: the torch backend needs them")
    from safetensors.torch import load_file

    cfg = InformerConfig.from_dict(dict(variant.model_config))
    model = Informer(cfg)
    state = load_file(str(variant.weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{variant.weights}: weights do not fit the config"
                            f" (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model.eval().export_mode(True)


class TorchScorer:
    """Eager PyTorch (CPU), or a CUDA graph replay (``device="cuda"``)."""

    def __init__(self, model: Any, *, device: str = "cpu", threads: int = 1, cuda_graph: bool = True,
                 warmup: int = 20) -> None:
        import torch

        if device == "cpu":
            torch.set_num_threads(int(threads))
        elif not torch.cuda.is_available():
            raise ConfigError("torch backend: device 'cuda' requested but torch sees no CUDA device")
        self.name = "torch" if device == "cpu" else ("torch-cuda-graph" if cuda_graph else "torch-cuda")
        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._graph = None
        self._x = torch.zeros((1, *WINDOW_SHAPE), dtype=torch.float32, device=self.device)
        self._host_in = torch.zeros((1, *WINDOW_SHAPE), dtype=torch.float32,
                                    pin_memory=self.device.type == "cuda")
        self._host_in_np = self._host_in.numpy()
        with torch.inference_mode():
            for _ in range(max(1, warmup)):
                self._y = torch.sigmoid(self.model(self._x))  # (1,)
        if self.device.type == "cuda" and cuda_graph:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):
                    self._y = torch.sigmoid(self.model(self._x))
            torch.cuda.current_stream().wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph), torch.inference_mode():
                self._y = torch.sigmoid(self.model(self._x))  # (1,) static output buffer
        self._host_out = torch.zeros((1,), dtype=torch.float32, pin_memory=self.device.type == "cuda")

    def score(self, window: np.ndarray) -> float:
        if window.shape != WINDOW_SHAPE:
            raise ValueError(f"window shape {window.shape}, expected {WINDOW_SHAPE}")
        torch = self._torch
        np.copyto(self._host_in_np[0], window, casting="same_kind")
        if self.device.type == "cpu":
            with torch.inference_mode():
                return float(torch.sigmoid(self.model(self._host_in))[0])
        self._x.copy_(self._host_in, non_blocking=True)
        if self._graph is not None:
            self._graph.replay()
        else:
            with torch.inference_mode():
                self._y = torch.sigmoid(self.model(self._x))
        self._host_out.copy_(self._y, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return float(self._host_out[0])

    def score_batch(self, windows: np.ndarray, chunk: int = 4096) -> np.ndarray:
        torch = self._torch
        out = np.empty((len(windows),), np.float32)
        with torch.inference_mode():
            for s in range(0, len(windows), chunk):
                x = torch.from_numpy(np.ascontiguousarray(windows[s:s + chunk], np.float32)).to(self.device)
                out[s:s + chunk] = torch.sigmoid(self.model(x)).float().cpu().numpy()
        return out


def load(variant: Variant, *, intra_op_threads: int = 1, spinning: bool = False,
         cache_dir: Path | None = None, device: str = "cpu") -> TorchScorer:
    del spinning, cache_dir
    return TorchScorer(build_model(variant), device=device, threads=intra_op_threads)
