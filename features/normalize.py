"""``Normalizer``: per-feature robust statistics fitted on the training split, clipped, float32 out.

Choice: robust statistics. center = median, scale = IQR / 1.349 (equals the standard deviation for
a normal distribution), because 1-minute returns and volumes are heavy-tailed and a crash would
dominate a mean and standard deviation. A feature whose IQR is zero falls back to its standard
deviation, and to 1.0 if that is zero too. After scaling, values are clipped to [-clip, clip]
(default 5.0). The statistics, the clip bound and the feature-schema hash go into the model
artifact's manifest (``to_dict``) and are checked when loaded (``from_dict``).
"""

from __future__ import annotations

import math

import numpy as np

from barsignal.errors import ArtifactError
from barsignal.features.spec import N_FEATURES, NAMES, schema_hash

DEFAULT_CLIP = 5.0
IQR_TO_SIGMA = 1.349


class Normalizer:
    """``(x - center) / scale`` clipped to ``[-clip, clip]``, computed in float64, returned as float32.

    ``transform`` (a batch) and ``transform_row`` (one live row) apply the same IEEE operations in
    the same order, so a row gives the same float32 bits either way.
    """

    def __init__(self, center: np.ndarray, scale: np.ndarray, clip: float = DEFAULT_CLIP,
                 method: str = "robust", n_fit: int = 0) -> None:
        self.center = np.ascontiguousarray(center, dtype=np.float64)
        self.scale = np.ascontiguousarray(scale, dtype=np.float64)
        if self.center.shape != (N_FEATURES,) or self.scale.shape != (N_FEATURES,):
            raise ValueError(f"normalizer statistics must have shape ({N_FEATURES},)")
        if not (np.isfinite(self.center).all() and np.isfinite(self.scale).all() and (self.scale > 0).all()):
            raise ValueError("normalizer statistics must be finite with positive scales")
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"normalizer clip must be a positive number, got {clip}")
        self.clip = float(clip)
        self.method = method
        self.n_fit = int(n_fit)
        self._tmp = np.empty(N_FEATURES, dtype=np.float64)

    @classmethod
    def fit(cls, X_train: np.ndarray, clip: float = DEFAULT_CLIP) -> Normalizer:
        """Fit on the training rows only (ready rows: pass ``X[ready]`` from ``batch.compute_with_ready``)."""
        X = np.asarray(X_train, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != N_FEATURES or len(X) < 2:
            raise ValueError(f"fit needs an (N >= 2, {N_FEATURES}) array, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("fit got non-finite feature values")
        q25, center, q75 = np.percentile(X, [25.0, 50.0, 75.0], axis=0)
        scale = (q75 - q25) / IQR_TO_SIGMA
        std = X.std(axis=0)
        scale = np.where(scale > 0, scale, np.where(std > 0, std, 1.0))
        return cls(center, scale, clip, "robust", len(X))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """(N, 33) float64 -> (N, 33) float32."""
        Z = np.subtract(X, self.center, dtype=np.float64)
        np.divide(Z, self.scale, out=Z)
        np.clip(Z, -self.clip, self.clip, out=Z)
        return Z.astype(np.float32)

    def transform_row(self, row: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(33,) float64 -> (33,) float32, written into ``out`` when given (no allocation)."""
        z = self._tmp
        np.subtract(row, self.center, out=z)
        np.divide(z, self.scale, out=z)
        np.maximum(z, -self.clip, out=z)  # np.clip's values bit for bit (NaN and -0.0 included), without
        np.minimum(z, self.clip, out=z)  # its Python-level dispatch: half the time on a (33,) row
        if out is None:
            return z.astype(np.float32)
        out[...] = z
        return out

    def to_dict(self) -> dict[str, object]:
        """JSON-able form for the artifact manifest (floats round-trip exactly through JSON)."""
        return {
            "method": self.method, "clip": self.clip, "n_fit": self.n_fit,
            "names": list(NAMES), "schema_hash": schema_hash(),
            "center": [float(x) for x in self.center], "scale": [float(x) for x in self.scale],
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Normalizer:
        """Load from a manifest; refuse statistics built for another feature schema (``ArtifactError``)."""
        try:
            want = schema_hash()
            if d["schema_hash"] != want:
                raise ArtifactError(
                    f"artifact features schema {str(d['schema_hash'])[:12]}... does not match this "
                    f"barsignal's {want[:12]}... (names {len(d.get('names') or [])}): rebuild the artifact "
                    f"for these features or run the barsignal version it was built with")
            return cls(np.array(d["center"], dtype=np.float64), np.array(d["scale"], dtype=np.float64),
                       float(d["clip"]), str(d.get("method", "robust")), int(d.get("n_fit", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact normalizer section is malformed ({exc}): "
                                "rebuild the artifact") from exc
