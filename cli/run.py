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
                   "else the bundled one); given, it wins over [model] artifact at every SIGHUP reload too")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from barsignal.daemon.app import hold_sighup

    hold_sighup()  # first thing: a SIGHUP during start-up waits for the daemon's handler (a reload)
    from barsignal import log as logmod
    from barsignal.daemon import config as cfgmod
    from barsignal.daemon.app import run_daemon
    from barsignal.errors import ArtifactError, ConfigError
    from barsignal.node import check_sinks, engine_cache_dir, load_model, load_symbol_models

    cfg = cfgmod.load(args.config)
    if args.log_level is None and args.log_format is None:
        logmod.configure(level=cfg.logging.level, fmt=cfg.logging.format)
    source = args.config or "the embedded defaults (no --config)"
    try:
        if len({s.upper() for s in cfg.feed.symbols}) != len(cfg.feed.symbols):
            raise ConfigError(f"[feed] symbols {list(cfg.feed.symbols)}: a symbol is named twice; name each once")
        check_sinks(cfg)  # the sinks' settings, without opening anything (no directory is made)
        loaded = load_model(cfg, args.artifact, engine_cache_dir(cfg))
        own = load_symbol_models(cfg, engine_cache_dir(cfg))  # [model.symbols]: verified like the default
    except (ConfigError, ArtifactError) as exc:  # what the config said: name the file
        text = str(exc)
        if not text.startswith(("[", "sink ", "signal rule")):  # --artifact's or the bundled artifact's: not the file's
            raise
        raise type(exc)(f"{source}: {text}") from None
    return run_daemon(cfg, config_path=args.config, artifact_dir=args.artifact, loaded=loaded, symbol_models=own)
