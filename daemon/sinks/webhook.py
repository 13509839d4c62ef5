"""``webhook``: HTTP POST of each signal as JSON, with a timeout, retries and an idempotency key.

Headers: ``Idempotency-Key: <signal id>`` (the receiver de-duplicates by it) and, when the secret
named by ``token_env`` exists, ``Authorization: Bearer <token>``. A plain ``http://`` URL is refused
unless its host is loopback or ``allow_insecure_http`` is set.

- 2xx: delivered.
- 408, 429, 5xx, timeouts and connection errors: retried with backoff; once ``retries`` are spent
  ``send`` raises, the outbox keeps the signal pending and the worker tries again later.
- Any other status (400, 401, 403, 404, 410, 3xx...): the receiver refuses this signal; ``send``
  raises ``PermanentSinkError`` and the outbox keeps it as a dead letter (status and reason), counted
  in ``barsignal_sink_dead_letters_total{sink="webhook"}``, never counted delivered. After fixing the
  receiver (a rotated token, a moved URL), ``barsignal outbox redrive --sink webhook`` sends them again.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from barsignal.daemon.secrets import read_secret
from barsignal.daemon.sinks.base import PermanentSinkError, SinkContext
from barsignal.engine.signal import Signal
from barsignal.errors import ConfigError, TransientError
from barsignal.log import get_logger

log = get_logger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retryable(status: int) -> bool:
    """A non-2xx status worth retrying: 408 (timeout), 429 (rate limited) and 5xx."""
    return status in (408, 429) or status >= 500


def check_url(url: str, allow_insecure_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"[sinks.webhook] url {url!r}: expected http(s)://host/path")
    if parts.scheme == "http" and not _is_loopback(parts.hostname) and not allow_insecure_http:
        raise ConfigError(f"[sinks.webhook] url {url!r}: plain http:// to a non-loopback host would send "
                          "the bearer token in clear; use https:// or set allow_insecure_http = true")


class WebhookSink:
    name = "webhook"

    def __init__(self, ctx: SinkContext, sleep: Callable[[float], Any] = asyncio.sleep,
                 backoff_s: float = 0.25) -> None:
        cfg = ctx.section
        if not cfg.url:
            raise ConfigError("[sinks.webhook] url is empty; set it or remove 'webhook' from [sinks] enabled")
        check_url(cfg.url, cfg.allow_insecure_http)
        self.url = cfg.url
        self.timeout_s = cfg.timeout_s
        self.retries = cfg.retries
        self.token = read_secret(cfg.token_env)
        self._sleep = sleep
        self.backoff_s = backoff_s
        self._session: Any = None
        self.rejected = 0

    async def start(self) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def send(self, signal: Signal) -> None:
        import aiohttp

        await self.start()
        headers = {"Content-Type": "application/json", "Idempotency-Key": signal.id}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token.reveal()}"
        body = orjson.dumps(signal.to_dict())
        delay = self.backoff_s
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await self._sleep(delay)
                delay *= 2
            try:
                async with self._session.post(self.url, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        return
                    last = f"HTTP {resp.status}"
                    if not retryable(resp.status):
                        self.rejected += 1
                        raise PermanentSinkError(f"{self.url} answered HTTP {resp.status} {resp.reason or ''}"
                                                 .strip(), resp.status)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise TransientError(f"webhook {self.url}: {last} after {self.retries + 1} attempts")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
