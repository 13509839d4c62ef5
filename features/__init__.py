"""Pure bar features: no I/O, no clock, no asyncio, no torch. Live, replay and training share it."""

from barsignal.features.bar import INTERVAL_MS, Bar, BarFrame

__all__ = ["INTERVAL_MS", "Bar", "BarFrame"]
