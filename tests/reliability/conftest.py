"""Fixtures for the reliability suite: a real verified artifact (the daemon tests' tiny ONNX model,
reused), and a redis-server of our own
(``tests.e2e.RedisServer``) that a test may stop and restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import e2e as h
from tests.daemon.conftest import write_tiny_artifact
from tests.tiny_model import har_move_spec


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


@pytest.fixture(scope="session")
def har_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artifact with a ``har_seasonal`` move head that learns online: its correction is stored
    with each outbox row and resumed by every restart."""
    return write_tiny_artifact(tmp_path_factory.mktemp("artifact") / "har", move_spec=har_move_spec())


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[h.RedisServer]:
    srv = h.RedisServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()
