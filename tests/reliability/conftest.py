"""Fixtures for the reliability suite: a real verified artifact (the daemon tests' tiny ONNX model,
reused), and a redis-server of our own that a test may stop and restart."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import e2e as h
from tests.conftest import free_port
from tests.daemon.conftest import write_tiny_artifact


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[None]:
    """After the whole folder: every log line of every daemon/feed/CLI run the suite started is
    greped for the fake token those daemons held (env var + credentials directory)."""
    yield
    n = h.assert_no_secret(h.LOGS)
    print(f"\n[security] {n} log lines from {len(h.LOGS)} daemon/feed/CLI runs of this suite: none contains the "
          "fake secret")


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_artifact(tmp_path_factory.mktemp("artifact") / "tiny")


class RedisServer:
    """A loopback ``redis-server`` (append-only, so its stream survives a restart) that a test stops
    and restarts on the same port."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(exe).exists():
            pytest.fail("redis-server is not installed (apt-get install redis-server): the sink-fault "
                        "test stops and restarts a real one")
        self.exe, self.dir, self.port = exe, workdir, free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        end = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    pytest.fail(f"redis-server on port {self.port} did not start")
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()
