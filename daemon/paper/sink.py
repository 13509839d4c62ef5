"""``paper``: the paper broker as a signal sink (registered by name in ``daemon.sinks.registry``).

Each signal is applied to the SQLite ledger in one transaction on the sink's own thread, so that a
commit's fsync never blocks the event loop; the ledger is opened and closed on that thread too.
Apply and close run in order on it: ``close`` waits for an ``apply`` still running (a cancelled
``send`` leaves its apply to finish) and never closes the ledger under it. Re-delivered signals
(outbox retries after a restart) are no-ops: the ledger is idempotent by signal id.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from barsignal.daemon.paper.ledger import Applied, PaperLedger, check_rules
from barsignal.daemon.sinks.base import SinkContext
from barsignal.daemon.writer import WriterThread
from barsignal.engine.broker import Rules
from barsignal.engine.signal import Signal
from barsignal.log import get_logger

log = get_logger(__name__)


def ledger_path(section: object, state_dir: Path) -> Path:
    """``[paper] ledger``, relative paths under the state directory."""
    p = Path(getattr(section, "ledger", "paper.sqlite"))
    return p if p.is_absolute() else Path(state_dir) / p


class PaperSink:
    name = "paper"

    def __init__(self, ctx: SinkContext, durability: Literal["full", "normal", "off"] = "full",
                 log_fills: bool = True) -> None:
        if ctx.section is None:
            from barsignal.daemon.config import PaperConfig

            section: object = PaperConfig()
        else:
            section = ctx.section
        self.rules = Rules.from_config(section)
        self.path = ledger_path(section, ctx.state_dir)
        self.durability = durability
        self.log_fills = log_fills  # one paper_fill line per fill (a replay counts them instead)
        self.ledger: PaperLedger | None = None
        self._writer: WriterThread | None = None
        check_rules(self.path, self.rules)  # a changed [paper] section is refused before the start

    def _thread(self) -> WriterThread:
        if self._writer is None:
            self._writer = WriterThread("paper", retry=False)
        return self._writer

    async def start(self) -> None:
        await self._thread().call_async(self._open, sql=False)

    def _open(self) -> None:
        if self.ledger is None:
            # a bar more than one bar past the wall clock cannot have closed: not trusted (issue 13 #1)
            self.ledger = PaperLedger(self.path, self.rules, self.durability,
                                      not_after_ms=int(time.time() * 1000) + 60_000)
            for sym in self.ledger.symbols():
                a = self.ledger.account(sym)
                if a is not None:
                    log.info("paper_resumed", symbol=sym, ledger=str(self.path), bars=a.bars,
                             position=a.qty, cash=round(a.cash, 2), last_open_time=a.last_open_time)

    async def send(self, signal: Signal) -> None:
        res: Applied = await self._thread().call_async(self._apply, signal, sql=False)
        self._log([res])

    def _log(self, applied: list[Applied]) -> None:
        """One ``paper_fill`` line per fill, whether the signals came one by one or in a batch
        (several symbols' signals of one minute arrive together)."""
        if not self.log_fills:
            return
        for a in applied:
            if a.fill is not None:
                f = a.fill
                log.info("paper_fill", symbol=f.symbol, side=f.side, qty=f.qty, price=f.price,
                         fee=round(f.fee, 4), position=f.position, open_time=f.open_time)

    def _apply(self, signal: Signal) -> Applied:
        self._open()
        assert self.ledger is not None
        return self.ledger.apply(signal)

    async def send_many(self, signals: list[Signal]) -> None:
        """Several signals in one ledger transaction (the sink worker batches when it lags behind, and
        when several symbols' signals of a minute wait together); each fill logged as ``send`` does."""
        res = await self._thread().call_async(self._apply_batch, signals, sql=False)
        self._log(res)

    def _apply_batch(self, signals: list[Signal]) -> list[Applied]:
        self._open()
        assert self.ledger is not None
        return self.ledger.apply_batch(signals)

    async def close(self) -> None:
        if self._writer is not None:
            w = self._writer
            try:
                await w.call_async(self._close, sql=False)  # after any apply still running
            finally:
                w.close(timeout=5.0)
                self._writer = None

    def _close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
