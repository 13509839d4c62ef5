"""Binance kline frames: every real recorded frame decodes; bad frames raise BadMessage with a reason."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barsignal.daemon.binance.ws import KlineEvent, ServerShutdown, decode, encode_kline, encode_shutdown
from barsignal.errors import BadMessage
from tests.conftest import WIRE

CAPTURES = sorted(WIRE.glob("*.ws.1.0"))
SAMPLES = [orjson.loads(line)["raw"]
           for line in (WIRE / "real_kline_ws_samples.jsonl").read_text().splitlines() if line.strip()]
SPOT_COMBINED = SAMPLES[0]  # btcusdt@kline_1m, 2022-05-29 10:06 UTC, x:false


def _capture_frames(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("wss://"), f"{path.name}: first line should be the URL"
    for line in lines[1:]:
        if line.strip():
            _, frame = line.split(": ", 1)
            yield frame


def _tsv_frames():
    for line in (WIRE / "cryptofeed_kline_frames.tsv").read_text().splitlines():
        src, rest = line.split("\t", 1)
        yield src, rest.split(": ", 1)[1]


def test_every_captured_frame_decodes() -> None:
    assert len(CAPTURES) == 3
    kinds: dict[str, int] = {}
    for path in CAPTURES:
        for frame in _capture_frames(path):
            ev = decode(frame)  # raises on anything it cannot read
            kinds[type(ev).__name__] = kinds.get(type(ev).__name__, 0) + 1
            if isinstance(ev, KlineEvent):
                raw = orjson.loads(frame)["data"]
                assert ev.open_time == raw["k"]["t"] and ev.closed is raw["k"]["x"]
                assert ev.close == float(raw["k"]["c"]) and ev.symbol == raw["s"]
    # PROVENANCE.md: 2 + 5 + 67 kline frames; the rest are depth, trades and book tickers.
    assert kinds["KlineEvent"] == 74
    assert kinds["NoneType"] > 2000


def test_tsv_and_sample_frames_decode_and_closed_ones_are_marked() -> None:
    evs = [decode(f) for _, f in _tsv_frames()]
    assert len(evs) == 74 and all(isinstance(e, KlineEvent) for e in evs)
    assert sum(e.closed for e in evs) == 5  # 1 binance.us + 4 futures closed klines
    for e in evs:
        assert e.close_time == e.open_time + 59_999 and e.low <= min(e.open, e.close) <= e.high
    raw = decode(SAMPLES[1])  # raw (unwrapped) frame
    comb = decode(SAMPLES[0])
    assert isinstance(raw, KlineEvent) and raw.symbol == "BTCUSDT" and raw.open == 66477.91
    assert isinstance(comb, KlineEvent) and comb.open_time == 1653818760000 and comb.trades == 31


SPOT_FRAMES = [SAMPLES[0], SAMPLES[1]] + [f for s, f in _tsv_frames() if "FUTURES" not in s]


@pytest.mark.parametrize("frame", SPOT_FRAMES)
def test_spot_frames_reencode_byte_for_byte(frame: str) -> None:
    ev = decode(frame)
    assert isinstance(ev, KlineEvent)
    assert encode_kline(ev, combined=frame.startswith('{"stream"')).decode() == frame


def test_futures_frames_round_trip_by_value() -> None:
    for src, frame in _tsv_frames():
        ev = decode(frame)
        assert decode(encode_kline(ev)) == ev, src


def _mutate(path: tuple[str, ...], value):
    msg = orjson.loads(SPOT_COMBINED)
    d = msg
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value
    return orjson.dumps(msg)


BAD = {
    "garbage": (b"\x00not a frame }{", "not_json"),
    "truncated": (SPOT_COMBINED[:120], "not_json"),
    "json_nan_literal": (SPOT_COMBINED.replace('"c":"29038.47000000"', '"c":NaN'), "not_json"),
    "array": (b"[1,2,3]", "wrong_type"),
    "time_as_string": (_mutate(("data", "k", "t"), "1653818760000"), "wrong_type"),
    "price_as_number": (_mutate(("data", "k", "c"), 29038.47), "wrong_type"),
    "closed_as_int": (_mutate(("data", "k", "x"), 1), "wrong_type"),
    "data_not_object": (_mutate(("data",), "kline"), "wrong_type"),
    "nan_price": (_mutate(("data", "k", "c"), "NaN"), "not_finite"),
    "inf_volume": (_mutate(("data", "k", "v"), "Infinity"), "not_finite"),
    "negative_price": (_mutate(("data", "k", "l"), "-1.00000000"), "negative"),
    "zero_price": (_mutate(("data", "k", "o"), "0.00000000"), "negative"),
    "negative_volume": (_mutate(("data", "k", "v"), "-0.5"), "negative"),
    "high_below_close": (_mutate(("data", "k", "h"), "29000.00000000"), "ohlc"),
    "misaligned_time": (_mutate(("data", "k", "t"), 1653818760001), "bad_time"),
    "close_time_wrong": (_mutate(("data", "k", "T"), 1653818760000), "bad_time"),
    "unknown_interval": (_mutate(("data", "k", "i"), "7m"), "wrong_type"),
    "symbol_disagrees": (_mutate(("data", "k", "s"), "ETHUSDT"), "wrong_type"),
    "stream_disagrees": (_mutate(("stream",), "ethusdt@kline_1m"), "wrong_symbol"),
    "no_event_type": (b'{"foo": 1}', "no_event"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_frames_raise_with_a_reason(name: str) -> None:
    frame, reason = BAD[name]
    with pytest.raises(BadMessage) as info:
        decode(frame, symbols={"BTCUSDT"})
    assert info.value.reason == reason, str(info.value)  # type: ignore[attr-defined]


def test_wrong_symbol_and_oversized() -> None:
    with pytest.raises(BadMessage) as info:
        decode(SPOT_COMBINED, symbols={"ETHUSDT"})
    assert info.value.reason == "wrong_symbol"  # type: ignore[attr-defined]
    big = orjson.loads(SPOT_COMBINED)
    big["pad"] = "x" * 70_000
    with pytest.raises(BadMessage) as info:
        decode(orjson.dumps(big))
    assert info.value.reason == "oversized"  # type: ignore[attr-defined]
    assert isinstance(decode(orjson.dumps(big), max_bytes=1 << 20), KlineEvent)  # size is the only fault


def test_control_frames() -> None:
    assert decode(encode_shutdown(1700000000000)) == ServerShutdown(1700000000000)
    assert decode(b'{"result":null,"id":1}') is None
    assert decode(b'{"e":"aggTrade","E":1,"s":"BTCUSDT"}') is None


prices = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False).map(lambda x: round(x, 8))


@settings(max_examples=200, deadline=None)
@given(o=prices, c=prices, up=prices, down=prices, v=st.floats(0, 1e7).map(lambda x: round(x, 8)),
       minute=st.integers(1, 60_000_000), closed=st.booleans(), combined=st.booleans(),
       n=st.integers(0, 10**6))
def test_decode_encode_round_trip(o, c, up, down, v, minute, closed, combined, n) -> None:
    t = minute * 60_000
    high, low = max(o, c) + up, max(1e-8, min(o, c) - down)
    low = round(low, 8) if round(low, 8) > 0 else 1e-8
    high = round(high, 8)
    ev = KlineEvent(symbol="BTCUSDT", interval="1m", open_time=t, close_time=t + 59_999, open=o,
                    high=max(high, o, c), low=min(low, o, c), close=c, volume=v, closed=closed,
                    event_time=t + 1234, first_trade_id=7, last_trade_id=7 + n, trades=n,
                    quote_volume=round(v * 3, 8), taker_buy_base=round(v / 2, 8), taker_buy_quote=0.0)
    back = decode(encode_kline(ev, combined=combined))
    assert back == ev and not math.isnan(back.close)


FIELDS = ["t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q"]
VALUES = st.one_of(st.integers(-2, 2**53), st.booleans(), st.none(), st.floats(allow_nan=True),
                   st.sampled_from(["NaN", "-1.0", "0", "1e400", "29038.47000000", "abc", "", "1m", "BTCUSDT",
                                    "ETHUSDT"]))


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FIELDS), value=VALUES, where=st.sampled_from(["k", "top"]))
def test_fast_path_agrees_with_the_checked_path(field: str, value, where: str) -> None:
    from barsignal.daemon.binance import ws

    msg = orjson.loads(SPOT_COMBINED)
    target = msg["data"]["k"] if where == "k" else msg["data"]
    target[field] = value
    frame = orjson.dumps(msg)
    fast = ws._fast(frame, {"BTCUSDT"})
    try:
        slow = ws._slow(frame, {"BTCUSDT"})
    except BadMessage:
        slow = None
    assert fast is None or fast == slow  # the fast path never accepts what the checked path refuses
