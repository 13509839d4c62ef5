"""Pure bar features: no I/O, no clock, no asyncio, no torch. Live, replay and training share it."""

from barsignal.features.bar import INTERVAL_MS, Bar, BarFrame
from barsignal.features.batch import compute, compute_with_ready, window_ends
from barsignal.features.engine import FeatureEngine
from barsignal.features.normalize import Normalizer
from barsignal.features.online import OnlineFeatures
from barsignal.features.spec import N_FEATURES, NAMES, RESTART_WARMUP_BARS, WARMUP_BARS, schema_hash
from barsignal.features.window import RollingWindow

__all__ = [
    "INTERVAL_MS",
    "NAMES",
    "N_FEATURES",
    "RESTART_WARMUP_BARS",
    "WARMUP_BARS",
    "Bar",
    "BarFrame",
    "FeatureEngine",
    "Normalizer",
    "OnlineFeatures",
    "RollingWindow",
    "compute",
    "compute_with_ready",
    "schema_hash",
    "window_ends",
]
