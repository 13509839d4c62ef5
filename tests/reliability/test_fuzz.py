"""Bad input, fuzzed: the frame decoder, the config loader and the bar loaders.

Seeded mutation fuzzing of real inputs (byte flips, truncation, splicing, token swaps) gives the
volume (>= 100,000 inputs in all, bounded in time); hypothesis adds structured inputs. Every input
either decodes or is rejected with the module's own error carrying a message; nothing else may
escape, and nothing non-finite may come out.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barsignal.daemon import config as cfgmod
from barsignal.daemon.binance import ws
from barsignal.data.formats import read_freqtrade_json
from barsignal.data.public_data import read_kline_csv
from barsignal.data.validate import validate
from barsignal.errors import BadMessage, ConfigError, DataError
from tests.conftest import FUTURES_1M, REPO, SPOT_1M, WIRE

COUNTS: dict[str, int] = {}
TOKENS = [b"null", b"true", b"false", b"NaN", b"-1", b"0", b"1e309", b'"x"', b"[]", b"{}", b'"-0.0"',
          b'"nan"', b'"inf"', b"\x00", b"\xff\xfe", b'"', b",", b":", b"}", b"]"]


def _real_frames() -> list[bytes]:
    lines = (WIRE / "cryptofeed_kline_frames.tsv").read_bytes().splitlines()
    # <source file>\t<recv ts>: <frame>
    frames = [ln.split(b"\t", 1)[1].split(b": ", 1)[1] for ln in lines if b"\t" in ln]
    samples = (WIRE / "real_kline_ws_samples.jsonl").read_bytes().splitlines()
    frames += [orjson.loads(ln)["raw"].encode() for ln in samples if ln.strip()]
    return frames


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:  # flip a byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:  # truncate
            del b[rng.randrange(len(b)):]
        elif op == 2:  # insert a token
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.choice(TOKENS)
        elif op == 3 and len(b) > 2:  # delete a span
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 12)]
        elif op == 4:  # splice another input
            other = rng.choice(pool)
            i, j = rng.randrange(len(b) + 1), rng.randrange(len(other) + 1)
            b = b[:i] + other[j:]
        elif op == 5 and b:  # replace a number-ish span with a token
            i = rng.randrange(len(b))
            b[i:i + rng.randint(1, 6)] = rng.choice(TOKENS)
    return bytes(b)


def _check_decoded(out: object) -> None:
    if isinstance(out, ws.KlineEvent):
        for v in (out.open, out.high, out.low, out.close, out.volume):
            assert math.isfinite(v) and v >= 0
        assert out.low <= min(out.open, out.close) <= max(out.open, out.close) <= out.high
    else:
        assert out is None or isinstance(out, ws.ServerShutdown)


def test_frame_decoder_mutation_fuzz() -> None:
    frames = _real_frames()
    rng = random.Random(20261123)
    n, rejected, t0 = 70_000, 0, time.perf_counter()
    for i in range(n):
        data = mutate(rng, frames[i % len(frames)], frames)
        try:
            _check_decoded(ws.decode(data, symbols={"BTCUSDT", "NKNUSDT", "LRCBTC", "ETHUSDT"}))
        except BadMessage as exc:
            assert str(exc) and getattr(exc, "reason", None), f"rejection without a reason for {data[:80]!r}"
            rejected += 1
    COUNTS["frames"] = n
    print(f"frame decoder: {n} mutated frames, {rejected} rejected, 0 crashes, {time.perf_counter() - t0:.1f} s")
    assert n // 2 < rejected < n  # the mutations produce bad frames, and some survive


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
                        ["e", "E", "s", "k", "t", "T", "o", "h", "l", "c", "v", "x", "i", "stream", "data"]),
                        c, max_size=8), max_leaves=30))
def test_frame_decoder_structured_fuzz(obj: object) -> None:
    try:
        data = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        _check_decoded(ws.decode(data))
    except BadMessage as exc:
        assert str(exc)


def test_config_loader_mutation_fuzz() -> None:
    text = (REPO / "config.toml").read_bytes()
    lines = text.splitlines(keepends=True)
    rng = random.Random(7)
    n, rejected, t0 = 12_000, 0, time.perf_counter()
    for _ in range(n):
        if rng.random() < 0.5:
            data = mutate(rng, text, [text])
        else:  # drop, duplicate or retype whole lines, as an operator's edit might
            ls = list(lines)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(ls))
                ls[i] = rng.choice([b"", ls[rng.randrange(len(ls))], ls[i].replace(b"=", b"= 1 #", 1),
                                    ls[i].replace(b"_", b"", 1), ls[i].replace(b'"', b"", 2)])
            data = b"".join(ls)
        try:
            cfg = cfgmod.loads(data.decode("utf-8", errors="replace"), "fuzz.toml")
        except ConfigError as exc:
            assert str(exc).startswith("fuzz.toml"), str(exc)
            rejected += 1
        else:
            assert isinstance(cfg, cfgmod.Config)
    COUNTS["config"] = n
    print(f"config loader: {n} mutated configs, {rejected} rejected with a message, {time.perf_counter() - t0:.1f} s")
    assert rejected > n // 4


def _bar_inputs() -> list[tuple[str, bytes]]:
    spot = orjson.loads(SPOT_1M[0].read_bytes())[:40]
    csv = b"".join(FUTURES_1M[0].read_bytes().splitlines(keepends=True)[:40])
    return [("json", orjson.dumps(spot)), ("csv", csv)]


def _load_bytes(kind: str, data: bytes) -> None:
    cols = read_freqtrade_json(data, "fuzz.json") if kind == "json" else read_kline_csv(data, "fuzz.csv")
    if len(cols["open_time"]) == 0:
        return
    cols2, rep = validate(cols, ["fuzz"])
    for k in ("open", "high", "low", "close", "volume"):
        assert np.all(np.isfinite(cols2[k])), f"non-finite {k} left the loader"
    assert rep.rows == len(cols2["open_time"])


def test_bar_loaders_mutation_fuzz() -> None:
    inputs = _bar_inputs()
    pool = [d for _, d in inputs]
    rng = random.Random(99)
    n, rejected, t0 = 20_000, 0, time.perf_counter()
    for i in range(n):
        kind, data = inputs[i % 2]
        data = mutate(rng, data, pool)
        try:
            _load_bytes(kind, data)
        except DataError as exc:
            assert "fuzz" in str(exc), str(exc)
            rejected += 1
    COUNTS["bars"] = n
    print(f"bar loaders: {n} mutated files, {rejected} rejected with a message, {time.perf_counter() - t0:.1f} s")
    assert rejected > n // 4


@pytest.mark.parametrize("name", ["frames", "config", "bars"])
def test_fuzz_volume(name: str) -> None:
    """Ran after the fuzzers above: together they cover >= 100,000 inputs."""
    if name not in COUNTS:
        pytest.fail("run the whole module: the counts come from the fuzz tests above")
    if name == "bars":
        total = sum(COUNTS.values())
        print(f"fuzzed inputs in all: {total}")
        assert total >= 100_000


def test_inputs_are_real(data_dir: Path) -> None:
    """Unmutated, every real frame decodes: the fuzzers start from valid input."""
    frames = _real_frames()
    assert len(frames) >= 70
    for f in frames:
        _check_decoded(ws.decode(f))
