"""``paper``: the paper broker as a signal sink (registered by name in ``daemon.sinks.registry``).

Each signal is applied to the SQLite ledger in one transaction, in a worker thread so that a
commit's fsync never blocks the event loop. Re-delivered signals (outbox retries after a restart)
are no-ops: the ledger is idempotent by signal id.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from barsignal.daemon.paper.broker import Rules
from barsignal.daemon.paper.ledger import Applied, PaperLedger, check_rules
from barsignal.daemon.sinks.base import SinkContext
from barsignal.engine.signal import Signal
from barsignal.log import get_logger

log = get_logger(__name__)


def ledger_path(section: object, state_dir: Path) -> Path:
    """``[paper] ledger``, relative paths under the state directory."""
    p = Path(getattr(section, "ledger", "paper.sqlite"))
    return p if p.is_absolute() else Path(state_dir) / p


class PaperSink:
    name = "paper"

    def __init__(self, ctx: SinkContext, durability: Literal["full", "normal", "off"] = "full") -> None:
        if ctx.section is None:
            from barsignal.daemon.config import PaperConfig

            section: object = PaperConfig()
        else:
            section = ctx.section
        self.rules = Rules.from_config(section)
        self.path = ledger_path(section, ctx.state_dir)
        self.durability = durability
        self.ledger: PaperLedger | None = None
        check_rules(self.path, self.rules)  # a changed [paper] section is refused before the start

    async def start(self) -> None:
        if self.ledger is None:
            self.ledger = PaperLedger(self.path, self.rules, self.durability)
            for sym in self.ledger.symbols():
                a = self.ledger.account(sym)
                if a is not None:
                    log.info("paper_resumed", symbol=sym, ledger=str(self.path), bars=a.bars,
                             position=a.qty, cash=round(a.cash, 2), last_open_time=a.last_open_time)

    async def send(self, signal: Signal) -> None:
        if self.ledger is None:
            await self.start()
        assert self.ledger is not None
        res: Applied = await asyncio.to_thread(self.ledger.apply, signal)
        if res.fill is not None:
            f = res.fill
            log.info("paper_fill", symbol=f.symbol, side=f.side, qty=f.qty, price=f.price,
                     fee=round(f.fee, 4), position=f.position, open_time=f.open_time)

    async def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
