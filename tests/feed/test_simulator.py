"""``feed serve`` in-process: its frames match Binance's real recorded frames field for field, its
stream is intra-bar updates then the closed kline, and its /api/v3/klines answers like Binance's.
Many symbols on one clock, the /ws control protocol and its 5 messages/s limit, the forming kline
over REST (and the daemon's decoder dropping it), exchangeInfo, and Binance's irregular ~2 s cadence."""

from __future__ import annotations

import asyncio
import urllib.request
from email.utils import parsedate_to_datetime

import numpy as np
import orjson
import pytest
import websockets
from websockets.asyncio.client import connect

from barsignal.daemon.binance.rest import decode_kline_rows
from barsignal.daemon.binance.ws import KlineEvent, decode, encode_kline
from barsignal.data import Loaded, load
from barsignal.errors import BadMessage
from barsignal.sim.faults import Faults
from barsignal.sim.protocol import PathError, RateWindow, Session, open_path
from barsignal.sim.series import Series, shifted_copies
from barsignal.sim.simulator import FeedSimulator
from tests.conftest import DATA, WIRE

REAL = orjson.loads((WIRE / "real_kline_ws_samples.jsonl").read_text().splitlines()[0])["raw"]
REAL_REST = orjson.loads((WIRE / "real_rest_klines_btcusdt_1h_sample.json").read_bytes())["response"]


def _shape(x):
    """Keys (in order) and JSON types, recursively: what "field for field" means."""
    if isinstance(x, dict):
        return [(k, _shape(v)) for k, v in x.items()]
    if isinstance(x, list):
        return [_shape(v) for v in x]
    return type(x).__name__


def test_frames_match_the_real_recorded_frame_field_for_field(fut_day) -> None:
    real = orjson.loads(REAL)
    t = real["data"]["k"]["t"]  # 2022-05-29 10:06 UTC: the futures file has that minute
    i = int((fut_day.frame.open_time == t).nonzero()[0][0])
    sim = FeedSimulator(fut_day.frame, extra=fut_day.extra)
    for frac in (0.5, 1.0):
        ours = orjson.loads(encode_kline(sim.event(i, frac)))
        assert _shape(ours) == _shape(real)
        assert list(orjson.dumps(ours)) and ours["stream"] == real["stream"]
        assert ours["data"]["k"]["t"] == t and ours["data"]["k"]["T"] == real["data"]["k"]["T"]
        # prices carry 8 decimals as on spot
        assert all(len(ours["data"]["k"][f].split(".")[1]) == 8 for f in "ochlvqVQ")
    closed = sim.event(i)
    row = fut_day.frame
    assert (closed.open, closed.high, closed.low, closed.close, closed.volume) == (
        row.open[i], row.high[i], row.low[i], row.close[i], row.volume[i])
    assert closed.trades == int(fut_day.extra["count"][i]) and closed.trades > 0
    assert closed.last_trade_id - closed.first_trade_id + 1 == closed.trades
    # the real frame is within 5 bp of the futures bar at that minute (PROVENANCE.md): same market
    assert abs(float(real["data"]["k"]["o"]) / closed.open - 1) < 5e-4


def test_intrabar_path_stays_inside_the_bar(spot) -> None:
    sim = FeedSimulator(spot.frame)
    for i in range(0, 2000, 7):
        evs = [sim.event(i, f) for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
        assert [e.closed for e in evs] == [False] * 4 + [True]
        for e in evs:
            assert isinstance(decode(encode_kline(e)), KlineEvent)  # valid for our own decoder
            assert e.low >= spot.frame.low[i] - 1e-9 and e.high <= spot.frame.high[i] + 1e-9
        assert [e.volume for e in evs] == sorted(e.volume for e in evs)
        assert [e.event_time for e in evs] == sorted(e.event_time for e in evs)
        assert evs[-1].event_time > evs[-1].close_time  # closed frames arrive after T, as observed


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, dict(r.headers), orjson.loads(r.read())


def test_stream_and_rest_over_loopback(spot) -> None:
    async def main():
        sim = FeedSimulator(spot.frame, speed=40, start_index=100, end_index=110, intrabar=3,
                            ping_interval_s=0.05)
        async with sim:
            url = f"{sim.ws_url}/stream?streams=btcusdt@kline_1m"
            frames = []
            async with connect(url, proxy=None) as ws:
                while True:
                    ev = decode(await ws.recv())
                    frames.append(ev)
                    if ev.closed and ev.open_time == int(spot.frame.open_time[109]):
                        break
                pong = await ws.ping()  # the server answers pings; it pings us every 50 ms
                await asyncio.wait_for(pong, 2)
            # raw stream path works too
            async with connect(f"{sim.ws_url}/ws/btcusdt@kline_1m", proxy=None) as ws:
                await asyncio.wait_for(sim.done.wait(), 5)
            # REST: closed bars only, Binance's row shape
            base = f"{sim.rest_url}/api/v3/klines?symbol=BTCUSDT&interval=1m"
            status, headers, rows = await asyncio.to_thread(_get, base + "&limit=1000")
            _, _, window = await asyncio.to_thread(
                _get, base + f"&startTime={int(spot.frame.open_time[50])}&limit=5")
            bad_symbol = await asyncio.to_thread(_fails, base.replace("BTCUSDT", "ETHUSDT"))
            wrong_stream = await _ws_fails(f"{sim.ws_url}/stream?streams=btcusdt@kline_1m/BTCUSDT")
        return frames, status, headers, rows, window, bad_symbol, wrong_stream

    frames, status, headers, rows, window, bad_symbol, wrong_stream = asyncio.run(main())
    # every bar: 3 intra-bar updates (x:false) then the closed frame
    by_bar: dict[int, list[bool]] = {}
    for e in frames:
        by_bar.setdefault(e.open_time, []).append(e.closed)
    assert [t for t in by_bar] == [int(t) for t in spot.frame.open_time[100:110]][-len(by_bar):]
    assert all(v == [False, False, False, True] for v in list(by_bar.values())[1:])
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert len(rows) == 110 and rows[-1][0] == int(spot.frame.open_time[109])  # only closed bars
    assert _shape(rows[0]) == _shape(REAL_REST[0])
    assert [r[0] for r in window] == [int(t) for t in spot.frame.open_time[50:55]]
    assert float(window[0][4]) == spot.frame.close[50]
    assert bad_symbol == 400 and wrong_stream


def _fails(url: str) -> int:
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


async def _ws_fails(url: str) -> bool:
    try:
        async with connect(url, proxy=None):
            return False
    except websockets.InvalidStatus:
        return True


def test_rest_faults_and_exchange_halt(spot) -> None:
    async def main():
        sim = FeedSimulator(spot.frame, speed=1, start_index=200,
                            faults=Faults.parse("gap=100:5,rest429=1,retry_after_s=3"))
        async with sim:
            code = await asyncio.to_thread(_fails, f"{sim.rest_url}/api/v3/klines?symbol=BTCUSDT&interval=1m")
            sim.faults = Faults.parse("gap=100:5")
            _, _, rows = await asyncio.to_thread(
                _get, f"{sim.rest_url}/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1000")
        return code, rows

    code, rows = asyncio.run(main())
    assert code == 429
    times = [r[0] for r in rows]
    t = spot.frame.open_time
    # 195 closed bars (200 less the 5 of the halt), then bar 200 still forming, as Binance answers
    assert len(times) == 196 and int(t[102]) not in times  # the halt is not served
    assert times[-2] == t[199] and times[-1] == t[200]


def test_virtual_clock_matches_the_stream(spot) -> None:
    async def main():
        sim = FeedSimulator(spot.frame, speed=50, start_index=100, end_index=110, intrabar=1)
        async with sim:
            t_mid = sim.now_ms()
            _, _, body = await asyncio.to_thread(_get, f"{sim.rest_url}/api/v3/time")
            await asyncio.wait_for(sim.done.wait(), 5)
            return t_mid, body["serverTime"], sim.now_ms()

    t_mid, server_time, t_end = asyncio.run(main())
    t = spot.frame.open_time
    assert t[100] <= t_mid < t[101]  # inside the first bar, which is being built
    assert t[100] <= server_time <= t[110]
    assert t_end == t[109] + 60_000  # after the last bar: its close


# -- many symbols, the /ws protocol, REST's forming kline, exchangeInfo, Binance's cadence -----------

MULTI = DATA / "multi" / "spot_1m"
BTC_2023 = DATA / "klines" / "spot_1m" / "BTC_USDT-1m_2023-03-16_2023-05-01.json"


@pytest.fixture(scope="module")
def real() -> dict[str, Loaded]:
    """Real simultaneous bars (PROVENANCE.md): BTC, ETH and DOGE from 2023-03-16, XRP from 2023-04-01."""
    out = {"BTCUSDT": load(BTC_2023)}
    for base in ("ETH", "XRP", "DOGE"):
        out[f"{base}USDT"] = load(MULTI / f"{base}_USDT-1m.json")
    return out


def _series(real: dict[str, Loaded], *symbols: str) -> list[Series]:
    return [Series(s, real[s].frame, real[s].extra) for s in symbols]


def _is_reply(msg: dict) -> bool:
    return "id" in msg and ("result" in msg or "error" in msg)


async def _reply(ws, seen: list[dict] | None = None) -> dict:
    """The next control reply; data frames read on the way go to ``seen``."""
    while True:
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        if _is_reply(msg):
            return msg
        if seen is not None:
            seen.append(msg)


def test_many_symbols_on_one_clock(real) -> None:
    xrp_t0 = int(real["XRPUSDT"].frame.open_time[0])  # XRP's file starts 2023-04-01 21:03

    async def main():
        k0 = int(np.searchsorted(FeedSimulator(_series(real, "BTCUSDT", "ETHUSDT", "XRPUSDT")).times, xrp_t0))
        sim = FeedSimulator(_series(real, "BTCUSDT", "ETHUSDT", "XRPUSDT"), speed=20, intrabar=1,
                            start_index=k0 - 10, end_index=k0 + 6)  # 0.5 s to join before XRP's first bar
        frames = []
        async with sim:
            url = f"{sim.ws_url}/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m/xrpusdt@kline_1m"
            async with connect(url, proxy=None) as ws:
                last = int(sim.times[k0 + 5])
                done: set[str] = set()
                while len(done) < 3:
                    msg = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                    frames.append(msg)
                    k = msg["data"]["k"]
                    if k["x"] and k["t"] == last:
                        done.add(k["s"])
            _, _, xrp_rows = await asyncio.to_thread(
                _get, f"{sim.rest_url}/api/v3/klines?symbol=XRPUSDT&interval=1m&limit=1000")
            bad = await asyncio.to_thread(_fails, f"{sim.rest_url}/api/v3/klines?symbol=DOGEUSDT&interval=1m")
        return sim, k0, frames, xrp_rows, bad

    sim, k0, frames, xrp_rows, bad = asyncio.run(main())
    assert all(f["stream"] == f"{f['data']['s'].lower()}@kline_1m" for f in frames)
    times = [f["data"]["k"]["t"] for f in frames]
    assert times == sorted(times)  # one clock: no symbol's frame runs ahead of another's tick
    closed: dict[str, list[int]] = {}
    for f in frames:
        k = f["data"]["k"]
        if k["x"]:
            closed.setdefault(k["s"], []).append(k["t"])
            fr = real[k["s"]].frame
            i = int(np.searchsorted(fr.open_time, k["t"]))
            assert [float(k[c]) for c in "ohlcv"] == [fr.open[i], fr.high[i], fr.low[i], fr.close[i], fr.volume[i]]
    first = min(t for f in frames if (t := f["data"]["k"]["t"]) > int(sim.times[k0 - 10]))  # a tick seen whole
    ticks = [int(t) for t in sim.times[k0 - 10:k0 + 6] if t >= first]
    assert [t for t in closed["BTCUSDT"] if t >= first] == ticks
    assert [t for t in closed["ETHUSDT"] if t >= first] == ticks
    assert closed["XRPUSDT"] == [int(t) for t in sim.times[k0:k0 + 6]]  # nothing before its first bar
    assert xrp_rows[0][0] == xrp_t0 and xrp_rows[-1][0] == int(sim.times[k0 + 5]) and len(xrp_rows) == 6
    assert bad == 400


def test_ws_base_path_speaks_binances_control_protocol(real) -> None:
    k = 20_000

    async def main():
        out: dict[str, object] = {}
        async with FeedSimulator(_series(real, "BTCUSDT", "ETHUSDT"), speed=20, start_index=k, intrabar=1,
                                 max_incoming_per_s=100) as sim:
            async with connect(f"{sim.ws_url}/ws", proxy=None) as ws:
                await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m",
                                                                             "ethusdt@kline_1m"], "id": 1}).decode())
                out["subscribe"] = await _reply(ws)
                seen: list[dict] = []
                while {m["s"] for m in seen if m["k"]["x"]} != {"BTCUSDT", "ETHUSDT"}:
                    seen.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5)))
                out["raw_frames"] = seen
                await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":2}')
                out["list"] = await _reply(ws)
                await ws.send('{"method":"UNSUBSCRIBE","params":["ethusdt@kline_1m"],"id":"a3"}')
                out["unsubscribe"] = await _reply(ws)
                after: list[dict] = []
                while sum(m["k"]["x"] for m in after) < 3:
                    after.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5)))
                out["after_unsubscribe"] = after
                await ws.send('{"method":"SET_PROPERTY","params":["combined",true],"id":4}')
                out["set"] = await _reply(ws)
                out["wrapped"] = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                await ws.send('{"method":"GET_PROPERTY","params":["combined"],"id":5}')
                out["get"] = await _reply(ws)
                errors = []
                for req in ('{"method":"SUBSCRIBE","params":["not a stream"],"id":6}',
                            '{"method":"FOO","id":7}', '{not json', '{"method":"LIST_SUBSCRIPTIONS","id":[1]}',
                            '{"method":"SET_PROPERTY","params":["combined","yes"],"id":8}',
                            '{"method":"GET_PROPERTY","params":["speed"],"id":9}', '{"params":[],"id":10}'):
                    await ws.send(req)
                    errors.append(await _reply(ws))
                out["errors"] = errors
                # a well-formed stream it does not serve: accepted, as on Binance, and silent
                await ws.send('{"method":"SUBSCRIBE","params":["dogeusdt@kline_1m"],"id":11}')
                out["subscribe_unserved"] = await _reply(ws)
                await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":12}')
                out["list_after_errors"] = await _reply(ws)
                later: list[dict] = []
                while sum(m.get("data", m)["k"]["x"] for m in later) < 2:
                    later.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5)))
                out["later"] = later
            # ccxt opens /ws/<n> (a stream index) and subscribes later; a raw stream path sends bare payloads
            async with connect(f"{sim.ws_url}/ws/0", proxy=None) as ws:
                await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":1}')
                out["index_path"] = await _reply(ws)
            async with connect(f"{sim.ws_url}/ws/ethusdt@kline_1m", proxy=None) as ws:
                out["raw_path"] = [orjson.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(4)]
            out["refused"] = await _ws_fails(f"{sim.ws_url}/stream?streams=btcusdt@kline_1m/BAD%20NAME")
            out["control_messages"] = sim.control_messages
        return out

    out = asyncio.run(main())
    assert out["subscribe"] == {"result": None, "id": 1}
    raw = out["raw_frames"]
    assert raw and all("stream" not in m and m["e"] == "kline" for m in raw)  # /ws: bare payloads
    assert all(isinstance(decode(orjson.dumps(m)), KlineEvent) for m in raw)
    assert out["list"] == {"result": ["btcusdt@kline_1m", "ethusdt@kline_1m"], "id": 2}
    assert out["unsubscribe"] == {"result": None, "id": "a3"}
    assert {m["s"] for m in out["after_unsubscribe"]} == {"BTCUSDT"}  # ETH stopped at once
    assert out["set"] == {"result": None, "id": 4}
    assert out["wrapped"]["stream"] == "btcusdt@kline_1m" and out["wrapped"]["data"]["e"] == "kline"
    assert out["get"] == {"result": True, "id": 5}
    codes = [(e["error"]["code"], e["id"]) for e in out["errors"]]
    assert codes == [(2, 6), (2, 7), (3, None), (2, None), (1, 8), (0, 9), (2, 10)]
    assert "invalid stream" in out["errors"][0]["error"]["msg"]
    assert "unknown variant `FOO`" in out["errors"][1]["error"]["msg"]
    assert "missing field `method`" in out["errors"][6]["error"]["msg"]
    assert out["subscribe_unserved"] == {"result": None, "id": 11}  # errors never closed the connection
    assert out["list_after_errors"] == {"result": ["btcusdt@kline_1m", "dogeusdt@kline_1m"], "id": 12}
    assert {m["data"]["s"] for m in out["later"]} == {"BTCUSDT"}
    assert out["index_path"] == {"result": [], "id": 1}
    assert all("stream" not in m and m["s"] == "ETHUSDT" for m in out["raw_path"])
    assert out["refused"] and out["control_messages"] == 15  # 14 on /ws, 1 on /ws/0


def test_more_than_5_messages_a_second_closes_the_connection(spot) -> None:
    async def main():
        async with FeedSimulator(spot.frame, speed=20, start_index=300, intrabar=1, ping_interval_s=None) as sim:
            async with connect(f"{sim.ws_url}/ws", proxy=None, ping_interval=None) as ws:
                for i in range(5):
                    await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
                five = [await _reply(ws) for _ in range(5)]
                await asyncio.sleep(1.1)  # the window slides: 5 more are fine, the 6th is one too many
                for i in range(6):
                    await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 10 + i}).decode())
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), 5)
            async with connect(f"{sim.ws_url}/ws", proxy=None, ping_interval=None) as ws2:
                for _ in range(6):  # pings count too
                    await ws2.ping()
                with pytest.raises(websockets.ConnectionClosed) as pinged:
                    await asyncio.wait_for(ws2.recv(), 5)
            return five, closed.value, pinged.value, sim.rate_limited

    five, closed, pinged, rate_limited = asyncio.run(main())
    assert [r["id"] for r in five] == [0, 1, 2, 3, 4]
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert pinged.rcvd is not None and pinged.rcvd.code == 1008
    assert rate_limited == 2


def test_rest_serves_the_forming_kline_last_and_the_daemon_drops_it(spot) -> None:
    t = spot.frame.open_time
    base = "/api/v3/klines?symbol=BTCUSDT&interval=1m"

    async def main():
        async with FeedSimulator(spot.frame, speed=0.5, start_index=300, intrabar=1) as sim:  # 2 s a bar
            while sim.now_ms() < t[300] + 3000:
                await asyncio.sleep(0.01)
            get = lambda q: asyncio.to_thread(_get, sim.rest_url + base + q)  # noqa: E731
            _, _, rows = await get("&limit=5")
            _, time_headers, body = await asyncio.to_thread(_get, f"{sim.rest_url}/api/v3/time")
            _, _, from_298 = await get(f"&startTime={t[298]}")
            _, _, to_299 = await get(f"&endTime={t[299]}&limit=3")
            _, _, capped = await get(f"&startTime={t[298]}&limit=2")
            assert sim.closed_upto == 300, "the bar closed during the test: the machine is too slow"
        date_ms = int(parsedate_to_datetime(time_headers["Date"]).timestamp() * 1000)
        return rows, body["serverTime"], date_ms, from_298, to_299, capped

    rows, server_time, date_ms, from_298, to_299, capped = asyncio.run(main())
    assert 0 <= server_time - date_ms < 2000  # Date is the exchange's (simulated) clock, to the second
    assert [r[0] for r in rows] == [int(x) for x in t[296:301]]
    forming = rows[-1]
    assert forming[6] == t[300] + 59_999 and forming[6] >= server_time  # still open at serverTime
    assert float(forming[5]) < spot.frame.volume[300] and float(forming[2]) <= spot.frame.high[300]
    bars = decode_kline_rows(rows, now_ms=server_time)  # the daemon's REST decoder
    assert [b.open_time for b in bars] == [int(x) for x in t[296:300]]  # the forming row is dropped
    assert [b.close for b in bars] == list(spot.frame.close[296:300])
    assert [r[0] for r in from_298] == [int(x) for x in t[298:301]]  # a startTime query reaches it too
    assert [r[0] for r in to_299] == [int(x) for x in t[297:300]]  # an endTime before it does not
    assert [r[0] for r in capped] == [int(x) for x in t[298:300]]  # nor a query whose limit ends first


def test_exchange_info_lists_the_served_symbols(real) -> None:
    async def main():
        async with FeedSimulator(_series(real, "BTCUSDT", "ETHUSDT", "DOGEUSDT"), speed=1, start_index=100) as sim:
            url = f"{sim.rest_url}/api/v3/exchangeInfo"
            _, headers, info = await asyncio.to_thread(_get, url)
            _, headers2, one = await asyncio.to_thread(_get, url + "?symbol=ETHUSDT")
            _, _, two = await asyncio.to_thread(_get, url + '?symbols=["DOGEUSDT","BTCUSDT"]')
            bad = await asyncio.to_thread(_fails, url + "?symbol=FOOUSDT")
            _, _, futures = await asyncio.to_thread(_get, f"{sim.rest_url}/fapi/v1/exchangeInfo")
        return info, headers, one, headers2, two, bad, futures

    info, headers, one, headers2, two, bad, futures = asyncio.run(main())
    syms = info["symbols"]
    assert [s["symbol"] for s in syms] == ["BTCUSDT", "ETHUSDT", "DOGEUSDT"]
    assert [(s["baseAsset"], s["quoteAsset"], s["status"]) for s in syms] == [
        ("BTC", "USDT", "TRADING"), ("ETH", "USDT", "TRADING"), ("DOGE", "USDT", "TRADING")]
    for s in syms:
        f = {x["filterType"]: x for x in s["filters"]}
        tick = float(f["PRICE_FILTER"]["tickSize"])
        close = real[s["symbol"]].frame.close[:5000]
        on_grid = np.abs(close / tick - np.round(close / tick)) < 1e-6
        finer_than_needed = np.abs(close / (tick * 10) - np.round(close / (tick * 10))) < 1e-6
        assert on_grid.all() and not finer_than_needed.all()  # the finest tick the prices show
    assert float({x["filterType"]: x for x in syms[2]["filters"]}["PRICE_FILTER"]["tickSize"]) < 0.01  # DOGE
    assert info["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT" and info["serverTime"] > 0
    assert [s["symbol"] for s in one["symbols"]] == ["ETHUSDT"]
    assert [s["symbol"] for s in two["symbols"]] == ["DOGEUSDT", "BTCUSDT"]
    assert bad == 400 and futures["symbols"] == []
    assert int(headers2["X-MBX-USED-WEIGHT-1M"]) == int(headers["X-MBX-USED-WEIGHT-1M"]) + 20


def test_request_weight_per_minute_is_enforced(spot) -> None:
    wall = [28_333_334 * 60 + 40.0]  # 40 s into a wall-clock minute

    async def main():
        async with FeedSimulator(spot.frame, speed=1, start_index=300, weight_limit=10,
                                 wall_clock=lambda: wall[0]) as sim:
            url = f"{sim.rest_url}/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=2"
            used = [int((await asyncio.to_thread(_get, url))[1]["X-MBX-USED-WEIGHT-1M"]) for _ in range(5)]
            try:
                await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
                over = None
            except urllib.error.HTTPError as exc:
                over = (exc.code, exc.headers["Retry-After"], orjson.loads(exc.read())["code"])
            wall[0] += 20  # the next minute
            after = await asyncio.to_thread(_get, url)
        return used, over, after

    used, over, after = asyncio.run(main())
    assert used == [2, 4, 6, 8, 10]
    assert over == (429, "20", -1003)  # Retry-After: until the minute ends
    assert after[0] == 200 and after[1]["X-MBX-USED-WEIGHT-1M"] == "2"


def test_in_progress_updates_come_at_binances_irregular_2s_cadence(spot) -> None:
    t = spot.frame.open_time

    async def main():
        async with FeedSimulator(spot.frame, speed=2, start_index=300, end_index=305, update_ms=2000,
                                 jitter_ms=700, ping_interval_s=None) as sim:
            async with connect(f"{sim.ws_url}/ws/btcusdt@kline_1m", proxy=None) as ws:
                frames = []
                while not frames or not (frames[-1]["k"]["x"] and frames[-1]["k"]["t"] == t[304]):
                    frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5)))
        return frames

    frames = asyncio.run(main())
    by_bar: dict[int, list[dict]] = {}
    for f in frames:
        by_bar.setdefault(f["k"]["t"], []).append(f)
    offsets = []
    for bar_t in [int(x) for x in t[301:305]]:  # whole bars (the first may have started before we joined)
        upd = [f["E"] - bar_t for f in by_bar[bar_t] if not f["k"]["x"]]
        closed = [f for f in by_bar[bar_t] if f["k"]["x"]]
        assert len(upd) == 29 and len(closed) == 1  # one every ~2 s of a 60 s bar
        assert upd == sorted(upd) and 0 < upd[0] and upd[-1] < 60_000
        gaps = np.diff(upd)
        assert 1500 < gaps.mean() < 2500 and gaps.std() > 100  # about 2 s apart, irregularly
        assert 250 <= closed[0]["E"] - closed[0]["k"]["T"] <= 950  # closed: 250 ms + up to 700 ms jitter
        offsets.append(upd)
    assert len({tuple(o) for o in offsets}) == 4  # no fixed pattern from bar to bar


def test_open_path_rate_window_and_session_rules() -> None:
    assert open_path("/ws") == (False, [])
    assert open_path("/ws/0") == (False, [])
    assert open_path("/ws/btcusdt@kline_1m") == (False, ["btcusdt@kline_1m"])
    assert open_path("/stream?streams=ethusdt@kline_1m/btcusdt@kline_1m/ethusdt@kline_1m") == (
        True, ["ethusdt@kline_1m", "btcusdt@kline_1m"])
    assert open_path("/stream") == (True, [])
    assert open_path("/api/v3/klines?symbol=BTCUSDT") is None
    with pytest.raises(PathError):
        open_path("/stream?streams=btcusdt@kline_1m/BTCUSDT")
    with pytest.raises(PathError):
        open_path("/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m", max_streams=1)

    w = RateWindow(5, 1.0)
    assert [w.hit(x / 10) for x in range(6)] == [True] * 5 + [False]
    assert w.hit(1.45)  # the hits at 0.0..0.4 have left the window

    s = Session(combined=False, max_streams=1)
    rep, added, _ = s.handle('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m","btcusdt@kline_1m"],"id":1}')
    assert orjson.loads(rep) == {"result": None, "id": 1} and added == ["btcusdt@kline_1m"]
    rep, added, _ = s.handle('{"method":"SUBSCRIBE","params":["ethusdt@kline_1m"],"id":2}')
    assert orjson.loads(rep)["error"]["code"] == 2 and added == [] and list(s.streams) == ["btcusdt@kline_1m"]
    for bad_id in ('"a-b"', '"' + "x" * 37 + '"', "1.5", str(1 << 63)):
        rep, _, _ = s.handle('{"method":"LIST_SUBSCRIPTIONS","id":' + bad_id + "}")
        assert orjson.loads(rep)["error"]["code"] == 2, bad_id
    for good_id in ("null", '"abc123"', str(-(1 << 63))):
        rep, _, _ = s.handle('{"method":"LIST_SUBSCRIPTIONS","id":' + good_id + "}")
        assert orjson.loads(rep)["result"] == ["btcusdt@kline_1m"], good_id
    rep, _, removed = s.handle('{"method":"UNSUBSCRIBE","params":["btcusdt@kline_1m","ethusdt@kline_1m"],"id":3}')
    assert orjson.loads(rep) == {"result": None, "id": 3} and removed == ["btcusdt@kline_1m"] and not s.streams


def test_shifted_copies_are_real_bars_on_one_clock(real) -> None:
    series = _series(real, "BTCUSDT", "XRPUSDT")
    copies = shifted_copies(series, 5, rows=50, shift=100)
    assert [c.symbol for c in copies] == ["BTCUSDT", "XRPUSDT", "BTC1USDT", "XRP1USDT", "BTC2USDT"]
    t0 = int(real["XRPUSDT"].frame.open_time[0])  # the files' common first bar
    for c in copies:
        assert np.array_equal(c.frame.open_time, copies[0].frame.open_time) and c.frame.open_time[0] == t0
    src = real["BTCUSDT"].frame
    i0 = int(np.searchsorted(src.open_time, t0)) + 200  # copy 2: 200 rows later, restamped
    assert np.array_equal(copies[4].frame.close, src.close[i0:i0 + 50])
    with pytest.raises(ValueError):
        shifted_copies(series, 3, rows=50, shift=10**6)


def test_faults_narrowed_to_one_symbol_leave_the_others_clean(real) -> None:
    faults = Faults.parse("malformed=1,drop=0.5,rest429=1,symbols=ETHUSDT,seed=3")
    assert faults.symbols == ("ETHUSDT",) and "symbols=('ETHUSDT',)" in faults.describe()

    async def main():
        async with FeedSimulator(_series(real, "BTCUSDT", "ETHUSDT"), speed=20, start_index=20_000,
                                 end_index=20_016, intrabar=0, faults=faults) as sim:
            raw = []
            async with connect(f"{sim.ws_url}/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m", proxy=None,
                               max_size=1 << 20) as ws:
                while not sim.done.is_set():
                    try:
                        raw.append(await asyncio.wait_for(ws.recv(), 0.5))
                    except TimeoutError:
                        pass
            btc = await asyncio.to_thread(_fails, f"{sim.rest_url}/api/v3/klines?symbol=BTCUSDT&interval=1m")
            eth = await asyncio.to_thread(_fails, f"{sim.rest_url}/api/v3/klines?symbol=ETHUSDT&interval=1m")
            return raw, btc, eth, [int(t) for t in sim.times[20_000:20_016]]

    raw, btc_status, eth_status, ticks = asyncio.run(main())
    good: dict[str, list[int]] = {"BTCUSDT": [], "ETHUSDT": []}
    bad = 0
    for m in raw:
        try:
            ev = decode(m, symbols={"BTCUSDT", "ETHUSDT"})
        except BadMessage:  # the malformed frames
            bad += 1
            continue
        if isinstance(ev, KlineEvent) and ev.closed:
            good[ev.symbol].append(ev.open_time)
    first = good["BTCUSDT"][0]
    assert good["BTCUSDT"] == [t for t in ticks if t >= first]  # BTC: every closed frame, none bad
    assert bad > 0 and len(good["ETHUSDT"]) < len(good["BTCUSDT"])  # ETH: bad frames and drops
    assert (btc_status, eth_status) == (200, 429)


def test_close_spread_sends_a_minutes_closed_frames_over_the_spread_in_a_random_order(real) -> None:
    """``close_spread_ms``: each minute's closed frames go evenly over that much wall time (the real
    capture has one minute's closes over 1.8 s), their symbol order shuffled from minute to minute;
    without it they go back to back."""
    import time

    syms = ("BTCUSDT", "ETHUSDT", "XRPUSDT", "DOGEUSDT")
    xrp_t0 = int(real["XRPUSDT"].frame.open_time[0])

    async def spans(spread_ms: float) -> tuple[list[float], list[tuple[str, ...]]]:
        k0 = int(np.searchsorted(FeedSimulator(_series(real, *syms)).times, xrp_t0)) + 5
        sim = FeedSimulator(_series(real, *syms), speed=1, intrabar=0, start_index=k0, end_index=k0 + 6,
                            close_spread_ms=spread_ms, close_delay_ms=0)
        arrived: dict[int, list[tuple[float, str]]] = {}
        async with sim:
            url = f"{sim.ws_url}/stream?streams=" + "/".join(f"{s.lower()}@kline_1m" for s in syms)
            async with connect(url, proxy=None) as ws:
                while sum(len(v) == 4 for v in arrived.values()) < 5:
                    k = orjson.loads(await asyncio.wait_for(ws.recv(), 10))["data"]["k"]
                    if k["x"]:
                        arrived.setdefault(k["t"], []).append((time.monotonic(), k["s"]))
        full = [v for v in arrived.values() if len(v) == 4]
        return [(v[-1][0] - v[0][0]) * 1e3 for v in full], [tuple(s for _, s in v) for v in full]

    spread, orders = asyncio.run(spans(450.0))
    assert all(250 < s < 700 for s in spread), spread  # 3/4 of 450 ms between the first and the last
    assert len(set(orders)) > 1, orders  # shuffled, not the config's order every minute
    burst, _ = asyncio.run(spans(0.0))
    assert all(s < 50 for s in burst), burst


def test_wait_for_subscriber_holds_the_clock_until_a_stream_is_subscribed(fut_day) -> None:
    # `feed serve --wait-for-subscriber` (the demo's feed): no bar closes before a client subscribes,
    # however long that takes; then every bar from the start index streams to it, the first one first.
    async def go() -> list[int]:
        sim = FeedSimulator(fut_day.frame, speed=50.0, start_index=100, end_index=110, intrabar=1,
                            ping_interval_s=None, wait_for_subscriber=True)
        await sim.start()
        try:
            await asyncio.sleep(0.5)  # 25 bars' worth of wall time at this speed
            assert sim.closed_upto == 100 and sim.now_ms() == int(sim.times[100])
            closed: list[int] = []
            async with connect(f"{sim.ws_url}/ws/btcusdt@kline_1m") as ws:
                while len(closed) < 10:
                    k = orjson.loads(await asyncio.wait_for(ws.recv(), 10))["k"]
                    if k["x"]:
                        closed.append(int(k["t"]))
            await asyncio.wait_for(sim.done.wait(), 10)
            return closed
        finally:
            await sim.stop()

    closed = asyncio.run(go())
    assert closed == [int(t) for t in fut_day.frame.open_time[100:110]]
