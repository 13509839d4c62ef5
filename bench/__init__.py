"""``barsignal bench TARGET``: speed and memory figures (never timed asserts; see docs/BENCHMARKS.md).

Each target module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import os
from pathlib import Path

# ../shared beside the checkout (the real data); BARSIGNAL_SHARED overrides it.
SHARED = Path(os.environ.get("BARSIGNAL_SHARED", Path(__file__).resolve().parents[2] / "shared"))

# target -> module. Add a line when a benchmark becomes real.
BENCHES: dict[str, str] = {
    "features": "barsignal.bench.features",
    "scoring": "barsignal.bench.scoring",
    "replay": "barsignal.bench.replay",
    "data": "barsignal.bench.data",
    "feed": "barsignal.bench.feed",
    "live": "barsignal.bench.live",
    "soak": "barsignal.bench.soak",
    "train": "barsignal.bench.train",
}
