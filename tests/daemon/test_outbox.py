"""The SQLite outbox: written before delivery, per-sink queues, restart delivery, slow sinks."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from barsignal.daemon.outbox import Outbox, PermanentSinkError, SinkWorker
from barsignal.engine.signal import RuleState, Signal


def sig(i: int) -> Signal:
    return Signal(id=f"BTCUSDT-{i}-abc", symbol="BTCUSDT", open_time=i * 60_000, bar_open=1.0, bar_close=2.0,
                  p_up=0.5, action="flat", artifact="abc", p_move=None if i % 4 == 0 else 0.3 + i / 1e6,
                  sigma_bp=None if i % 4 == 0 else 12.25, regime=None if i % 4 == 0 else "calm")


class ListSink:
    def __init__(self, name: str, fail_first: int = 0, gate: asyncio.Event | None = None) -> None:
        self.name = name
        self.got: list[str] = []
        self.fail_first = fail_first
        self.gate = gate

    async def start(self) -> None:
        pass

    async def send(self, s: Signal) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_first > 0:
            self.fail_first -= 1
            raise ConnectionError("down")
        self.got.append(s.id)

    async def close(self) -> None:
        pass


async def _nosleep(_: float) -> None:
    await asyncio.sleep(0)


def test_add_is_idempotent_and_remembers_rule_state(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", ["a", "b"])
    assert ob.add(sig(1), RuleState("flat", 3)) == 1
    assert ob.add(sig(1), RuleState("flat", 3)) is None
    ob.add(sig(2), RuleState("long", 0, "active", 5))
    assert ob.last("BTCUSDT") == (120_000, RuleState("long", 0, "active", 5))
    assert ob.depth("a") == 2 and ob.depth() == 2
    assert [s for _, s in ob.pending("b")] == [sig(1), sig(2)]  # the rows decode to the signals, both heads
    ob.ack("a", 1)
    assert [s.id for _, s in ob.pending("a")] == ["BTCUSDT-2-abc"]
    assert [s.id for _, s in ob.pending("b")] == ["BTCUSDT-1-abc", "BTCUSDT-2-abc"]
    ob.close()
    db = sqlite3.connect(tmp_path / "o.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 3
    db.close()
    again = Outbox(tmp_path / "o.sqlite", ["a", "b"])
    assert again.last("BTCUSDT") == (120_000, RuleState("long", 0, "active", 5)) and again.depth() == 2
    assert again.add(sig(2), RuleState("long", 0)) is None, "an id stored before the restart is a duplicate"
    again.close()


def test_undelivered_signals_are_delivered_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, ["good", "down"])
    for i in range(5):
        ob.add(sig(i), RuleState())

    async def first_run() -> tuple[list[str], list[str]]:
        good, down = ListSink("good"), ListSink("down", fail_first=10**9)
        ws = [SinkWorker(s, ob, sleep=_nosleep) for s in (good, down)]
        for w in ws:
            w.start()
        assert await ws[0].drain(5)
        assert not await ws[1].drain(0.05)
        for w in ws:
            await w.stop()
        return good.got, down.got

    good, down = asyncio.run(first_run())
    assert len(good) == 5 and down == []
    ob.close()

    ob2 = Outbox(path, ["good", "down"])  # the restart
    assert ob2.depth("down") == 5 and ob2.depth("good") == 0

    async def second_run() -> tuple[list[str], list[str]]:
        good, down = ListSink("good"), ListSink("down", fail_first=2)
        ws = [SinkWorker(s, ob2, sleep=_nosleep) for s in (good, down)]
        for w in ws:
            w.start()
        seq = ob2.add(sig(5), RuleState())
        for w in ws:
            w.offer(seq, sig(5))
        for w in ws:
            assert await w.drain(5)
            await w.stop()
        return good.got, down.got

    good2, down2 = asyncio.run(second_run())
    assert good2 == ["BTCUSDT-5-abc"]
    assert down2 == [f"BTCUSDT-{i}-abc" for i in range(6)]
    assert ob2.depth() == 0


def test_a_stuck_sink_delays_neither_others_nor_the_producer(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", ["fast", "stuck"])

    async def main() -> tuple[list[str], list[str], int]:
        gate = asyncio.Event()
        fast, stuck = ListSink("fast"), ListSink("stuck", gate=gate)
        ws = {s.name: SinkWorker(s, ob, queue_size=4, sleep=_nosleep) for s in (fast, stuck)}
        for w in ws.values():
            w.start()
        await asyncio.sleep(0.01)
        for i in range(50):  # the producer never awaits a sink
            seq = ob.add(sig(i), RuleState())
            for w in ws.values():
                w.offer(seq, sig(i))
            await asyncio.sleep(0)
        assert await ws["fast"].drain(5)
        got_fast_before = list(fast.got)
        assert stuck.got == []
        gate.set()  # the stuck sink recovers: it catches up from the outbox, in order
        assert await ws["stuck"].drain(5)
        for w in ws.values():
            await w.stop()
        return got_fast_before, stuck.got, ws["stuck"].overflows

    fast, stuck, overflows = asyncio.run(main())
    want = [f"BTCUSDT-{i}-abc" for i in range(50)]
    assert fast == want and stuck == want
    assert overflows >= 1


class RefusingSink(ListSink):
    """Refuses (for good) the signals whose number is in ``refuse``; checks each signal it is sent
    is already committed (visible to another connection)."""

    def __init__(self, name: str, db_path: Path, refuse: set[int]) -> None:
        super().__init__(name)
        self.db_path, self.refuse = db_path, refuse
        self.uncommitted: list[str] = []

    async def send(self, s: Signal) -> None:
        con = sqlite3.connect(self.db_path)
        if con.execute("SELECT COUNT(*) FROM signals WHERE id = ?", (s.id,)).fetchone()[0] != 1:
            self.uncommitted.append(s.id)
        con.close()
        if s.open_time // 60_000 in self.refuse:
            raise PermanentSinkError("HTTP 404 Not Found", 404)
        self.got.append(s.id)


def test_refused_signals_become_dead_letters_and_redrive_sends_them(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, ["hook", "file"])

    async def run(outbox: Outbox, refuse: set[int], n: range) -> tuple[RefusingSink, ListSink, SinkWorker]:
        hook, file = RefusingSink("hook", path, refuse), ListSink("file")
        ws = [SinkWorker(hook, outbox, sleep=_nosleep), SinkWorker(file, outbox, sleep=_nosleep)]
        for w in ws:
            w.start()
        for i in n:
            seq = outbox.add(sig(i), RuleState())
            for w in ws:
                w.offer(seq, sig(i))
            await asyncio.sleep(0)
        for w in ws:
            assert await w.drain(5)
            await w.stop()
        return hook, file, ws[0]

    hook, file, w = asyncio.run(run(ob, {2, 3, 5}, range(8)))
    assert hook.got == [f"BTCUSDT-{i}-abc" for i in (0, 1, 4, 6, 7)] and len(file.got) == 8
    assert hook.uncommitted == [], "a sink was sent a signal before the outbox committed it"
    assert w.delivered == 5 and w.dead_letters == 3
    assert ob.depth("hook") == 0 and ob.dead_counts() == {"hook": 3}
    assert ob.dead_letter_stats() == ({"hook": 3}, {"hook": 3})
    dead = ob.dead_letters()
    assert [(d["id"], d["status"], d["reason"]) for d in dead] == [
        (f"BTCUSDT-{i}-abc", 404, "HTTP 404 Not Found") for i in (2, 3, 5)]
    ob.prune()  # dead letters are kept by prune (keep=100_000 here: nothing to prune anyway)
    ob.close()

    again = Outbox(path, ["hook", "file"])  # the restart: dead letters are not pending
    assert again.dead_counts() == {"hook": 3} and again.depth("hook") == 0
    assert again.redrive("hook") == 3
    assert again.dead_counts() == {"hook": 0} and again.depth("hook") == 3
    hook2, _, w2 = asyncio.run(run(again, set(), range(8, 9)))
    assert hook2.got == [f"BTCUSDT-{i}-abc" for i in (2, 3, 5, 8)] and w2.dead_letters == 0
    again.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT COUNT(*) FROM dead").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
    con.close()


def test_prune_keeps_pending_and_dead_rows_and_runs_on_the_writer_thread(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", ["a"], keep=3, prune_every=10**9)
    for i in range(10):
        ob.add(sig(i), RuleState())
    for seq in range(1, 9):
        if seq == 2:
            ob.dead_letter("a", seq, "refused", 410)
        elif seq != 4:
            ob.ack("a", seq)
    assert ob.prune() == 5  # 1..7 are older than the newest 3; 2 (dead) and 4 (pending) are kept
    ob.close()
    con = sqlite3.connect(tmp_path / "o.sqlite")
    assert [r[0] for r in con.execute("SELECT seq FROM signals ORDER BY seq")] == [2, 4, 8, 9, 10]
    con.close()


def test_a_full_database_is_retried_sinks_keep_delivering_and_nothing_is_lost(tmp_path: Path) -> None:
    """SQLite's own "database or disk is full" (PRAGMA max_page_count caps the file): the writer
    thread reports ENOSPC once, keeps the queued inserts and retries; a sink in step keeps getting
    the signals meanwhile; once there is room again every signal is committed, each once. (A sink
    catching up from the outbox waits for the disk instead: its reads queue behind the writes.)"""
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, ["a"])
    pages = ob.writer.call(lambda: ob.db.execute("PRAGMA page_count").fetchone()[0], sql=False)

    async def main() -> ListSink:
        sink = ListSink("a")
        w = SinkWorker(sink, ob, sleep=_nosleep)
        w.start()
        assert await w.drain(5)  # caught up (nothing pending): in step from here on
        ob.writer.call(lambda: ob.db.execute(f"PRAGMA max_page_count = {pages + 2}"), sql=False)
        for i in range(300):
            seq = ob.add(sig(i), RuleState())
            w.offer(seq, sig(i))
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while ob.writer.failing is None:
            assert loop.time() < end, "the capped database never filled up"
            await asyncio.sleep(0.01)
        assert ob.writer.failing == "ENOSPC"
        while len(sink.got) < 300:  # delivered although not all committed
            assert loop.time() < end, f"delivery stalled on the full database ({len(sink.got)})"
            await asyncio.sleep(0.01)
        # room again: raised from here, not through the writer's queue (stuck behind the full batch);
        # the connection is shared (check_same_thread=False) and the writer is between retries
        ob.db.execute("PRAGMA max_page_count = 1073741823")
        while ob.writer.failing is not None:
            assert loop.time() < end + 10, "never recovered"
            await asyncio.sleep(0.05)
        assert await w.drain(5)
        await w.stop()
        return sink

    sink = asyncio.run(main())
    assert sink.got == [f"BTCUSDT-{i}-abc" for i in range(300)]
    assert ob.writer.errors >= 1
    ob.close()
    con = sqlite3.connect(path)
    assert [r[0] for r in con.execute("SELECT id FROM signals ORDER BY seq")] == sink.got
    assert con.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
    con.close()


# -- sink queues sized for the symbol count ---------------------------------------------------------


def test_a_backfill_of_five_minutes_for_400_symbols_fits_the_queue_sized_for_them(tmp_path: Path) -> None:
    """After a 5-minute reconnect, 400 symbols' backfilled bars give 2,000 signals in one loop turn: the
    queue sized for 400 symbols (16 minutes of signals) takes them all, with no ``sink_queue_full``;
    the configured 1,024 alone overflows into the slower catch-up from the outbox."""
    from barsignal.daemon.outbox import QUEUE_MINUTES, sink_queue_size

    symbols, minutes = 400, 5
    assert sink_queue_size(1024, symbols) == QUEUE_MINUTES * symbols > 1024
    assert sink_queue_size(10_000, symbols) == 10_000 and sink_queue_size(1024, 3) == 1024

    def burst(size: int, name: str) -> tuple[int, list[str], list[str]]:
        ob = Outbox(tmp_path / f"{name}.sqlite", [name])
        sigs = [Signal(id=f"S{k}USDT-{m}-abc", symbol=f"S{k}USDT", open_time=m * 60_000, bar_open=1.0, bar_close=1.0,
                       p_up=0.5, action="flat", artifact="abc") for m in range(minutes) for k in range(symbols)]

        async def main() -> tuple[int, list[str]]:
            sink = ListSink(name)
            w = SinkWorker(sink, ob, queue_size=size, sleep=_nosleep)
            w.start()
            assert await w.drain(5)  # past the start's catch-up: on the queue
            for s in sigs:  # one loop turn: no await between the offers
                w.offer(ob.add(s, RuleState()), s)
            assert await w.drain(60)
            await w.stop()
            return w.overflows, sink.got

        overflows, got = asyncio.run(main())
        ob.close()
        return overflows, got, [s.id for s in sigs]

    overflows, got, want = burst(sink_queue_size(1024, symbols), "sized")
    assert overflows == 0 and got == want  # every signal once, in order
    overflows, got, want = burst(1024, "fixed")
    assert overflows >= 1 and got == want  # nothing lost either way, but it overflowed
