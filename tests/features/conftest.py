"""Lets the feature tests import their helper module ``_data``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
