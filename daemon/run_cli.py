"""``barsignal run``: the live daemon."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the live daemon (websocket -> features -> score -> sinks)")
    p.add_argument("--config", default=None, help="TOML config (default: embedded defaults)")
    p.add_argument("--artifact", default=None, help="model artifact directory (default: bundled)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from barsignal.daemon import config as cfgmod
    from barsignal.errors import ConfigError

    cfgmod.load(args.config)
    raise ConfigError("the config is valid, but the live daemon is not built yet (issue: live daemon)")
