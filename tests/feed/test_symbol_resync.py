"""One symbol's stream goes silent while its connection lives on (the simulator drops every closed frame
of ETHUSDT, with no forming updates to tell): the connection is fresh (BTCUSDT's bars), so nothing
reconnects, but ETHUSDT is resubscribed on it and backfilled over REST, by itself, and every one of
its bars comes once; BTCUSDT's stream is untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from barsignal.daemon.feed.client import FeedClient
from barsignal.sim.faults import Faults
from barsignal.sim.series import Series
from barsignal.sim.simulator import FeedSimulator
from tests.feed.conftest import feed_cfg


def test_a_silent_symbol_on_a_live_connection_is_resubscribed_and_backfilled(spot) -> None:
    async def main() -> tuple[dict[str, list[Any]], FeedClient, FeedSimulator]:
        series = [Series("BTCUSDT", spot.frame), Series("ETHUSDT", spot.frame)]
        async with FeedSimulator(series, speed=5, start_index=300, end_index=400, intrabar=0,
                                 faults=Faults.parse("drop=1,symbols=ETHUSDT")) as sim:
            c = FeedClient(feed_cfg(sim.ws_url, sim.rest_url, symbols=("BTCUSDT", "ETHUSDT")), warmup_bars=5,
                           stale_after_s=1.0)
            got: dict[str, list[Any]] = {"BTCUSDT": [], "ETHUSDT": []}
            async for sym, bar in c.stream():
                got[sym].append(bar)
                if len(got["BTCUSDT"]) >= 5 + 60 and len(got["ETHUSDT"]) >= 5 + 40:
                    break
            return got, c, sim

    got, c, sim = asyncio.run(asyncio.wait_for(main(), 90))
    t = spot.frame.open_time
    for sym, bars in got.items():
        ots = [b.open_time for b in bars]
        first = int(np.searchsorted(t, ots[0]))
        assert ots == [int(x) for x in t[first:first + len(ots)]], f"{sym}: a bar missed or twice"
    assert all(b.source == "rest" for b in got["ETHUSDT"])  # its stream never brought one
    assert sum(b.source == "ws" for b in got["BTCUSDT"]) >= 55
    st = c.stats
    assert st.symbol_resyncs >= 2 and st.reconnects == 0 and st.gaps == 0
    assert sim.control_messages >= 2 * 2  # UNSUBSCRIBE + SUBSCRIBE per resync reached the server
    print(f"\n[resync] ETHUSDT silent: {st.symbol_resyncs} resyncs, {len(got['ETHUSDT'])} bars over REST, "
          f"0 reconnects; BTCUSDT {len(got['BTCUSDT'])} bars")
