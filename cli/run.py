"""``barsignal run``: the live daemon.

Everything that can be refused is checked before anything is touched: the config (unknown keys,
bad values), the artifact (hashes, schema) and its scorer, and the sinks' settings. Any of those
exits 2 with a message naming the problem; the state directory is created only after that.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the live daemon (websocket -> features -> score -> sinks)")
    p.add_argument("--config", default=None, help="TOML config (default: embedded defaults)")
    p.add_argument("--artifact", default=None, help="model artifact directory (default: [model] artifact, "
                   "else the bundled one)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from barsignal import log as logmod
    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.app import load_model, run_daemon, state_dir
    from barsignal.daemon.sinks import build_sink
    from barsignal.daemon.sinks.registry import section_for
    from barsignal.errors import ConfigError

    cfg = cfgmod.load(args.config)
    if args.log_level is None and args.log_format is None:
        logmod.configure(level=cfg.logging.level, fmt=cfg.logging.format)
    if len(cfg.feed.symbols) != 1:
        raise ConfigError("[feed] symbols: the live daemon runs one symbol per process; "
                          "start one instance per symbol")
    # Validate the sinks' settings without opening anything (a throwaway directory is never made).
    for name in dict.fromkeys(cfg.sinks.enabled):
        build_sink(name, section_for(name, cfg.sinks, cfg), state_dir(cfg))
    cache = cfg.engine.engine_cache_dir
    from pathlib import Path

    loaded = load_model(cfg, args.artifact, Path(cache) if cache else state_dir(cfg) / "engines")
    return run_daemon(cfg, config_path=args.config, artifact_dir=args.artifact, loaded=loaded)
