"""Sinks against real things: a JSONL file, a loopback HTTP server, a real redis-server."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from barsignal.daemon.config import JsonlSinkConfig, RedisSinkConfig, SinksConfig, WebhookSinkConfig
from barsignal.daemon.sinks import PermanentSinkError, SinkContext, build_sink, register_sink, sink_names, webhook
from barsignal.daemon.sinks.jsonl import JsonlSink
from barsignal.daemon.sinks.webhook import WebhookSink
from barsignal.engine.signal import Signal
from barsignal.errors import ConfigError, TransientError
from tests.conftest import free_port


def sig(i: int = 1) -> Signal:
    """Both heads: every third signal without a move forecast (null p_move, sigma_bp and regime)."""
    move = {} if i % 3 == 0 else {"p_move": 0.1 + (i % 7) / 10 + 1e-13, "sigma_bp": 17.0 + i / 3,
                                  "regime": ("calm", "active")[i % 2]}
    return Signal(id=f"BTCUSDT-{i}-abc", symbol="BTCUSDT", open_time=i * 60_000, bar_open=1.5, bar_close=2.5,
                  p_up=0.625, action="long", artifact="abc", source="ws", latency_us={"score": 12.5}, **move)


async def _nosleep(_: float) -> None:
    await asyncio.sleep(0)


# -- registry -------------------------------------------------------------------------------------
def test_registry_builds_builtins_and_registered_sinks(tmp_path: Path) -> None:
    assert {"stdout", "jsonl", "webhook", "redis"} <= set(sink_names())
    assert build_sink("jsonl", SinksConfig().jsonl, tmp_path).name == "jsonl"

    class Mine:
        name = "mine"

        def __init__(self, ctx: SinkContext) -> None:
            self.ctx = ctx

        async def start(self) -> None: ...
        async def send(self, signal: Signal) -> None: ...
        async def close(self) -> None: ...

    register_sink("mine", Mine)
    s = build_sink("mine", None, tmp_path)
    assert isinstance(s, Mine) and s.ctx.state_dir == tmp_path
    with pytest.raises(ConfigError, match="unknown sink 'nope'"):
        build_sink("nope", None, tmp_path)


def test_sinks_load_from_the_barsignal_sinks_entry_point_group(tmp_path: Path, monkeypatch) -> None:
    from importlib.metadata import EntryPoint

    from barsignal.daemon.sinks import registry

    ep = EntryPoint(name="third_party", value="barsignal.daemon.sinks.stdout:StdoutSink", group="barsignal.sinks")
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == "barsignal.sinks" else [])
    assert "third_party" in sink_names()
    assert build_sink("third_party", None, tmp_path).name == "stdout"
    registry._REGISTRY.pop("third_party", None)


# -- jsonl ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_jsonl_appends_lines_with_its_fsync_policy(tmp_path: Path, policy: str) -> None:
    now = [0.0]
    cfg = JsonlSinkConfig(path="out/s.jsonl", fsync=policy, fsync_interval_s=10)
    sink = JsonlSink(SinkContext("jsonl", cfg, tmp_path), clock=lambda: now[0])

    async def main() -> None:
        await sink.start()
        for i in range(5):
            now[0] += 3
            await sink.send(sig(i))
        await sink.close()

    asyncio.run(main())
    lines = (tmp_path / "out" / "s.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x)["id"] for x in lines] == [f"BTCUSDT-{i}-abc" for i in range(5)]
    assert Signal(**orjson.loads(lines[0])) == sig(0)
    # always: 5 + close; interval (10 s, 3 s apart): at 12 s, then close; never: none
    assert sink.syncs == {"always": 6, "interval": 2, "never": 0}[policy]


# -- webhook --------------------------------------------------------------------------------------
class Receiver:
    """A real HTTP server on loopback whose behaviour a test scripts: status codes or hangs."""

    def __init__(self, script: list[int | str]) -> None:
        self.script = script
        self.seen: list[tuple[str | None, str | None, dict]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((request.headers.get("Idempotency-Key"), request.headers.get("Authorization"), body))
        step = self.script.pop(0) if self.script else 200
        if step == "hang":  # longer than the client's timeout; released when the test ends
            await self.release.wait()
        return web.Response(status=int(step) if step != "hang" else 200)

    async def __aenter__(self) -> str:
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}/hook"

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.runner.cleanup()


def _webhook(url: str, tmp_path: Path, **kw) -> WebhookSink:
    cfg = WebhookSinkConfig(url=url, timeout_s=kw.pop("timeout_s", 0.3), retries=kw.pop("retries", 3),
                            token_env="BARSIGNAL_TEST_TOKEN", **kw)
    return WebhookSink(SinkContext("webhook", cfg, tmp_path), sleep=_nosleep)


def test_webhook_posts_with_idempotency_key_and_bearer_token(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BARSIGNAL_TEST_TOKEN", "s3cret")

    async def main() -> Receiver:
        rx = Receiver([500, 503, "hang", 200])
        async with rx as url:
            sink = _webhook(url, tmp_path)
            await sink.send(sig(7))
            await sink.close()
        return rx

    rx = asyncio.run(main())
    assert len(rx.seen) == 4  # two 500s and a hang are retried, the 4th attempt lands
    assert all(k == "BTCUSDT-7-abc" and a == "Bearer s3cret" for k, a, _ in rx.seen)
    assert Signal(**rx.seen[-1][2]) == sig(7)


def test_webhook_retries_429_408_5xx_and_refuses_other_statuses_for_good(tmp_path: Path) -> None:
    async def main() -> tuple[Receiver, WebhookSink, list[int | None]]:
        rx = Receiver([500, 500, 500, 429, 408, 503, 200, 422, 401, 404])
        refused: list[int | None] = []
        async with rx as url:
            sink = _webhook(url, tmp_path, retries=2)
            with pytest.raises(TransientError, match="HTTP 500 after 3 attempts"):
                await sink.send(sig(1))
            with pytest.raises(TransientError, match="HTTP 503 after 3 attempts"):
                await sink.send(sig(2))  # 429, 408, 503: all retried
            await sink.send(sig(3))
            for i in (4, 5, 6):  # 422, 401, 404: refused for good, not retried, not delivered
                with pytest.raises(PermanentSinkError) as exc:
                    await sink.send(sig(i))
                refused.append(exc.value.status)
            await sink.close()
        return rx, sink, refused

    rx, sink, refused = asyncio.run(main())
    assert refused == [422, 401, 404]
    assert len(rx.seen) == 10 and sink.rejected == 3
    assert [webhook.retryable(s) for s in (408, 429, 500, 502, 503, 400, 401, 403, 404, 410, 422, 301)] == [
        True] * 5 + [False] * 7


def test_webhook_connection_refused_is_transient(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> None:
        sink = _webhook(f"http://127.0.0.1:{port}/hook", tmp_path, retries=1)
        with pytest.raises(TransientError, match=r"ClientConnectorError|Connect"):
            await sink.send(sig(1))
        await sink.close()

    asyncio.run(main())


def test_webhook_refuses_plain_http_to_a_remote_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allow_insecure_http"):
        _webhook("http://example.com/hook", tmp_path)
    _webhook("http://example.com/hook", tmp_path, allow_insecure_http=True)
    _webhook("https://example.com/hook", tmp_path)
    with pytest.raises(ConfigError, match="url is empty"):
        _webhook("", tmp_path)


# -- redis ----------------------------------------------------------------------------------------
@pytest.mark.redis
def test_redis_xadd_capped_stream(redis_url: str, tmp_path: Path) -> None:
    import redis

    stream = f"barsignal:test:{free_port()}"
    cfg = RedisSinkConfig(url=redis_url, stream=stream, maxlen=10, password_env="BARSIGNAL_TEST_NO_PW")
    sink = build_sink("redis", cfg, tmp_path)

    async def main() -> None:
        await sink.start()
        for i in range(500):
            await sink.send(sig(i))
        await sink.close()

    asyncio.run(main())
    r = redis.Redis.from_url(redis_url)
    try:
        n = r.xlen(stream)
        assert 10 <= n < 500, f"approximate MAXLEN should cap the stream, got {n}"
        last = r.xrevrange(stream, count=1)[0][1]
        assert last[b"id"] == b"BTCUSDT-499-abc"
        assert Signal(**orjson.loads(last[b"signal"])) == sig(499)
    finally:
        r.delete(stream)
        r.close()


# -- paper ----------------------------------------------------------------------------------------
def test_paper_close_waits_for_an_apply_still_running_in_its_thread(tmp_path: Path, monkeypatch) -> None:
    """A send cancelled mid-apply (the worker stopped at shutdown) leaves the apply running in the
    sink's thread; close must not close the ledger under it: the apply completes, then the ledger
    closes, and the signal is in the ledger."""
    import sqlite3
    import threading

    from barsignal.daemon.config import PaperConfig
    from barsignal.daemon.paper.ledger import PaperLedger
    from barsignal.daemon.paper.sink import PaperSink

    entered, release = threading.Event(), threading.Event()
    real_apply = PaperLedger.apply
    errors: list[BaseException] = []

    def slow_apply(self, s):
        entered.set()
        release.wait(5)
        try:
            return real_apply(self, s)
        except BaseException as exc:  # what closing the ledger under it would raise
            errors.append(exc)
            raise

    monkeypatch.setattr(PaperLedger, "apply", slow_apply)
    sink = PaperSink(SinkContext("paper", PaperConfig(ledger="paper.sqlite"), tmp_path))

    async def main() -> None:
        await sink.start()
        send = asyncio.create_task(sink.send(sig(3)))
        while not entered.is_set():
            await asyncio.sleep(0.001)
        send.cancel()  # what SinkWorker.stop does
        with pytest.raises(asyncio.CancelledError):
            await send
        close = asyncio.create_task(sink.close())
        await asyncio.sleep(0.2)
        assert not close.done(), "close returned while the apply was still running"
        release.set()
        await asyncio.wait_for(close, 5)

    asyncio.run(main())
    assert errors == []
    db = sqlite3.connect(tmp_path / "paper.sqlite")
    assert db.execute("SELECT signal_id FROM equity").fetchall() == [("BTCUSDT-3-abc",)]
    db.close()


def test_jsonl_path_that_cannot_be_written_is_refused_when_built(tmp_path: Path) -> None:
    """Checked when the sink is built (``barsignal run`` builds every sink before touching state),
    without creating anything."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for bad, why in ((blocker / "sub" / "s.jsonl", "is a file, not a directory"), (tmp_path, "is a directory")):
        with pytest.raises(ConfigError, match=why):
            JsonlSink(SinkContext("jsonl", JsonlSinkConfig(path=str(bad)), tmp_path / "state"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    ok = JsonlSink(SinkContext("jsonl", JsonlSinkConfig(path=str(tmp_path / "new" / "s.jsonl")), tmp_path))
    assert not ok.path.parent.exists()
