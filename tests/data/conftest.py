"""Loopback servers for the data tests (test modules cannot import each other under importlib mode).

``dump_server``: Binance's public-data URL layout over the real USD-M futures daily CSVs in
../shared/data, zipped on the fly (deterministic bytes) with ``.CHECKSUM`` files. Monthly zips are
the month's daily CSVs concatenated, served only for months in ``server.monthly``.
``klines_server``: ``GET /api/v3/klines`` answered from a real spot 1m file.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from tests.conftest import DATA, SPOT_1M

FUT_DIR = DATA / "klines" / "um_futures_1m_daily"
_URL = re.compile(r"^/data/futures/um/(daily|monthly)/klines/BTCUSDT/1m/"
                  r"(BTCUSDT-1m-(\d{4}-\d{2}(?:-\d{2})?)\.zip)(\.CHECKSUM)?$")


def zip_bytes(name: str, csv: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(name, date_time=(2022, 9, 1, 0, 0, 0)), csv)
    return buf.getvalue()


@dataclass
class DumpServer:
    base_url: str = ""
    monthly: set[str] = field(default_factory=set)  # months served as monthly zips
    corrupt: set[str] = field(default_factory=set)  # zip names served with a flipped byte
    truncate_once: set[str] = field(default_factory=set)  # zip names cut off half-way once
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Range header)
    _cache: dict[str, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def zip_for(self, period: str, stamp: str, name: str) -> bytes | None:
        with self._lock:
            if name in self._cache:
                return self._cache[name]
            if period == "daily":
                src = FUT_DIR / f"BTCUSDT-1m-{stamp}.csv"
                if not src.is_file():
                    return None
                csv = src.read_bytes()
            else:
                if stamp not in self.monthly:
                    return None
                days = sorted(FUT_DIR.glob(f"BTCUSDT-1m-{stamp}-*.csv"))
                if not days:
                    return None
                first = days[0].read_bytes()
                header = first.split(b"\n", 1)[0] + b"\n"
                csv = first + b"".join(d.read_bytes()[len(header):] for d in days[1:])
            data = zip_bytes(name.replace(".zip", ".csv"), csv)
            self._cache[name] = data
            return data


class _DumpHandler(BaseHTTPRequestHandler):
    server_state: DumpServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        st = self.server_state
        st.requests.append((self.path, self.headers.get("Range", "")))
        m = _URL.match(self.path)
        data = st.zip_for(m[1], m[3], m[2]) if m else None
        if data is None:
            self.send_error(404)
            return
        if m[4]:
            body = f"{hashlib.sha256(data).hexdigest()}  {m[2]}\n".encode()
            self._send(200, body)
            return
        if m[2] in st.corrupt:
            data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        start = 0
        rng = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if rng:
            start = int(rng[1])
            if start >= len(data):
                self._send(416, b"")
                return
        if m[2] in st.truncate_once:
            st.truncate_once.discard(m[2])
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if rng:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])
            return
        self._send(200, data)

    def _send(self, code: int, body: bytes, ctype: str = "application/octet-stream") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def dump_server() -> Iterator[DumpServer]:
    if not FUT_DIR.is_dir():
        pytest.fail(f"real data not found at {FUT_DIR}")
    state = DumpServer()
    handler = type("H", (_DumpHandler,), {"server_state": state})
    for url in _serve(handler):
        state.base_url = url
        yield state


@dataclass
class KlinesServer:
    base_url: str = ""
    frame: Any = None
    requests: list[dict[str, str]] = field(default_factory=list)
    fail: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # queued (status, headers)
    visible_until_ms: int | None = None


class _KlinesHandler(BaseHTTPRequestHandler):
    server_state: KlinesServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        from barsignal.daemon.binance.rest import klines_response

        st = self.server_state
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query))
        st.requests.append(params)
        if url.path != "/api/v3/klines":
            self._send(404, {"code": -1, "msg": "not found"})
            return
        if st.fail:
            code, headers = st.fail.pop(0)
            self._send(code, {"code": -1003, "msg": "Too many requests."}, headers)
            return
        code, body = klines_response(st.frame, params, symbol="BTCUSDT", interval="1m",
                                     visible_until_ms=st.visible_until_ms)
        self._send(code, body)

    def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(body)
        self.send_response(code)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="session")
def spot_frame() -> Any:
    """The real spot 1m bars of Nov-Dec 2021 (no gaps)."""
    from barsignal.data import load

    return load(SPOT_1M[2]).frame


@pytest.fixture
def klines_server(spot_frame: Any) -> Iterator[KlinesServer]:
    state = KlinesServer(frame=spot_frame)
    handler = type("H", (_KlinesHandler,), {"server_state": state})
    for url in _serve(handler):
        state.base_url = url
        yield state


def shared_path(*parts: str) -> Path:
    return DATA.joinpath(*parts)
