"""Signal sinks: a small protocol plus a registry keyed by the name used in config.toml.

Built-ins: ``stdout``, ``jsonl``, ``webhook``, ``redis``. Others register with
:func:`register_sink` (the paper broker: ``register_sink("paper", factory)``) or through the
``barsignal.sinks`` package entry point, whose object is a factory ``(SinkContext) -> SignalSink``.
"""

from barsignal.daemon.sinks.base import PermanentSinkError, SignalSink, SinkContext, SinkFactory
from barsignal.daemon.sinks.registry import build_sink, register_sink, sink_names

__all__ = ["PermanentSinkError", "SignalSink", "SinkContext", "SinkFactory", "build_sink", "register_sink",
           "sink_names"]
