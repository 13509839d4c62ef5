"""``redis``: ``XADD`` each signal to a Redis stream capped at ``maxlen`` entries (approximate trim).

Entry fields: ``id`` (the signal id, for de-duplication downstream) and ``signal`` (its JSON).
The password comes from the secret named by ``password_env`` (never from the config file).
"""

from __future__ import annotations

from typing import Any

import orjson

from barsignal.daemon.secrets import read_secret
from barsignal.daemon.sinks.base import SinkContext
from barsignal.engine.signal import Signal
from barsignal.errors import ConfigError


class RedisSink:
    name = "redis"

    def __init__(self, ctx: SinkContext) -> None:
        cfg = ctx.section
        if not cfg.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"[sinks.redis] url {cfg.url!r}: expected redis://host:port/db")
        self.url = cfg.url
        self.stream = cfg.stream
        self.maxlen = cfg.maxlen
        self.password = read_secret(cfg.password_env)
        self._client: Any = None

    async def start(self) -> None:
        if self._client is None:
            try:
                import redis.asyncio as aioredis
            except ImportError:
                raise ConfigError("the redis sink needs redis-py: pip install 'redis>=5'") from None
            kw: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
            if self.password:
                kw["password"] = self.password.reveal()
            self._client = aioredis.Redis.from_url(self.url, **kw)

    async def send(self, signal: Signal) -> None:
        await self.start()
        await self._client.xadd(self.stream, {"id": signal.id, "signal": orjson.dumps(signal.to_dict())},
                                maxlen=self.maxlen, approximate=True)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
