"""Bar data layer: load and validate bar files, the Parquet cache, public-data download.

``load(path) -> Loaded`` reads Binance public-data CSV (plain or zipped), freqtrade JSON or
Parquet into a sorted ``BarFrame`` with a validation ``Report``; ``load_many(paths)`` merges files.
"""

from __future__ import annotations

from barsignal.data.load import Loaded, load, load_many
from barsignal.data.validate import Report, iso, validate

__all__ = ["Loaded", "Report", "iso", "load", "load_many", "validate"]
