"""Sinks by name: built-ins, ``register_sink`` and the ``barsignal.sinks`` entry point group."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from barsignal.daemon.sinks.base import SignalSink, SinkContext, SinkFactory
from barsignal.errors import ConfigError

_BUILTIN = {
    "stdout": "barsignal.daemon.sinks.stdout:StdoutSink",
    "jsonl": "barsignal.daemon.sinks.jsonl:JsonlSink",
    "webhook": "barsignal.daemon.sinks.webhook:WebhookSink",
    "redis": "barsignal.daemon.sinks.redis:RedisSink",
    # Importing the paper package registers it: register_sink("paper", factory).
    "paper": "barsignal.daemon.paper",
}
_REGISTRY: dict[str, SinkFactory] = {}
ENTRY_POINT_GROUP = "barsignal.sinks"


def register_sink(name: str, factory: SinkFactory) -> None:
    """Make ``factory`` the sink called ``name`` (a later registration replaces an earlier one)."""
    _REGISTRY[name] = factory


def _load(name: str, ref: str) -> SinkFactory:
    mod, _, attr = ref.partition(":")
    module = importlib.import_module(mod)
    if not attr:  # a module that registers itself on import
        if name not in _REGISTRY:
            raise AttributeError(f"{mod} did not register_sink({name!r}, ...)")
        return _REGISTRY[name]
    return getattr(module, attr)


def _lookup(name: str) -> SinkFactory:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN:
        try:
            factory = _load(name, _BUILTIN[name])
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"[sinks] enabled: sink {name!r} is not available here ({exc})") from None
        _REGISTRY[name] = factory
        return factory
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            factory = ep.load()
            _REGISTRY[name] = factory
            return factory
    raise ConfigError(f"[sinks] enabled: unknown sink {name!r}; known sinks: {', '.join(sink_names())}")


def sink_names() -> list[str]:
    names = set(_REGISTRY) | set(_BUILTIN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def section_for(name: str, sinks_cfg: Any, root_cfg: Any = None) -> Any:
    """A sink's own config section: ``[sinks.NAME]``, else the top-level ``[NAME]`` (paper)."""
    sec = getattr(sinks_cfg, name, None)
    if sec is None and root_cfg is not None:
        sec = getattr(root_cfg, name, None)
    return sec


def build_sink(name: str, section: Any, state_dir: Path) -> SignalSink:
    """Build the sink called ``name`` from its config section. Bad settings raise ConfigError."""
    sink = _lookup(name)(SinkContext(name=name, section=section, state_dir=Path(state_dir)))
    if not isinstance(sink, SignalSink):
        raise ConfigError(f"sink {name!r}: its factory returned {type(sink).__name__}, not a SignalSink")
    return sink
