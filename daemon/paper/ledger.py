"""The paper ledger: fills, positions and equity per bar in SQLite (WAL), restart-safe.

Each signal is applied in ONE transaction that records the bar's equity row (UNIQUE by signal
id), the fill it triggered (UNIQUE by the ordering signal's id) and the account's new state. A
process killed at any moment (kill -9) leaves either all of it or none of it, so a restart replays
the same signals without losing or duplicating a fill. The account state is re-read on open.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from barsignal.engine.broker import Account, EquityRow, Fill, Rules, new_account, step
from barsignal.engine.signal import Signal
from barsignal.errors import ConfigError, DataError
from barsignal.log import get_logger

log = get_logger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS positions (
    symbol TEXT PRIMARY KEY, cash REAL NOT NULL, qty REAL NOT NULL, avg_price REAL NOT NULL,
    realized REAL NOT NULL, fees REAL NOT NULL, traded_notional REAL NOT NULL, trip_pnl REAL NOT NULL,
    pending_dir INTEGER, pending_id TEXT, last_open_time INTEGER, last_close REAL, bars INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fills (
    seq INTEGER PRIMARY KEY, signal_id TEXT NOT NULL UNIQUE, symbol TEXT NOT NULL,
    open_time INTEGER NOT NULL, side TEXT NOT NULL, qty REAL NOT NULL, price REAL NOT NULL,
    fee REAL NOT NULL, realized REAL NOT NULL, trip_pnl REAL, position REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS equity (
    seq INTEGER PRIMARY KEY, signal_id TEXT NOT NULL UNIQUE, symbol TEXT NOT NULL,
    open_time INTEGER NOT NULL, bar_open REAL NOT NULL, bar_close REAL NOT NULL, p_up REAL NOT NULL,
    action TEXT NOT NULL, qty REAL NOT NULL, cash REAL NOT NULL, equity REAL NOT NULL,
    p_move REAL, sigma_bp REAL, regime TEXT,
    UNIQUE (symbol, open_time)
);
"""

_POS_COLS = ("symbol", "cash", "qty", "avg_price", "realized", "fees", "traded_notional", "trip_pnl",
             "pending_dir", "pending_id", "last_open_time", "last_close", "bars")
_UPSERT_POSITION = (f"INSERT OR REPLACE INTO positions ({', '.join(_POS_COLS)}) "
                    f"VALUES ({', '.join('?' * len(_POS_COLS))})")
_INSERT_EQUITY = ("INSERT OR IGNORE INTO equity (signal_id, symbol, open_time, bar_open, bar_close, p_up, action, "
                  "qty, cash, equity, p_move, sigma_bp, regime) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")
# Columns added to ``equity`` after its first release: nullable, added in place to an older ledger.
_EQUITY_ADDED = (("p_move", "REAL"), ("sigma_bp", "REAL"), ("regime", "TEXT"))
_INSERT_FILL = ("INSERT INTO fills (signal_id, symbol, open_time, side, qty, price, fee, realized, trip_pnl, "
                "position) VALUES (?,?,?,?,?,?,?,?,?,?)")


def check_rules(path: str | os.PathLike[str], rules: Rules) -> None:
    """Refuse (ConfigError) an existing ledger made with other settings, opening it read-only; a
    missing file is fine. Lets the daemon refuse a changed [paper] section before it starts."""
    p = Path(path)
    if not p.is_file():
        return
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            have = dict(db.execute("SELECT key, value FROM meta").fetchall())
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{p}: cannot read the paper ledger ({exc}); move it aside or point [paper] "
                        "ledger at a new file") from None
    want = json.dumps(asdict(rules), sort_keys=True)
    if have.get("rules") not in (None, want):
        raise ConfigError(f"{p}: this paper ledger was created with other [paper] settings "
                          f"({have.get('rules')}); restore them or point [paper] ledger at a new file")


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one signal did: ``duplicate`` means it was already in the ledger (or stale)."""

    duplicate: bool
    fill: Fill | None = None
    equity: EquityRow | None = None


class PaperLedger:
    """A SQLite-backed paper account per symbol. ``apply(signal)`` is idempotent by signal id.

    ``durability`` is SQLite's ``synchronous``: ``full`` (live: a power cut loses nothing committed),
    ``normal`` (a process crash loses nothing; the default) or ``off`` (replay into a scratch file).
    """

    def __init__(self, path: str | os.PathLike[str], rules: Rules,
                 durability: Literal["full", "normal", "off"] = "normal", *, not_after_ms: int | None = None) -> None:
        self.path = Path(path)
        self.rules = rules
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={durability.upper()}")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(equity)")}
            for col, kind in _EQUITY_ADDED:
                if col not in have:  # a ledger written before the move forecast: its rows read as null
                    self._db.execute(f"ALTER TABLE equity ADD COLUMN {col} {kind}")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: cannot open the paper ledger ({exc}); move it aside "
                            "or point [paper] ledger at a new file") from None
        self._check_meta()
        self._accounts: dict[str, Account] = {
            row[0]: Account(*row) for row in self._db.execute(f"SELECT {', '.join(_POS_COLS)} FROM positions")
        }
        if not_after_ms is not None:
            self.drop_after(not_after_ms)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): committed at the end unless the body rolled it back
        itself, rolled back on any exception."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            if db.in_transaction:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _check_meta(self) -> None:
        want = json.dumps(asdict(self.rules), sort_keys=True)
        have = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not have:
            with self._tx() as db:
                db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)",
                               [("schema", str(SCHEMA_VERSION)), ("rules", want)])
            return
        if have.get("schema") != str(SCHEMA_VERSION):
            raise DataError(f"{self.path}: paper ledger schema {have.get('schema')} is not "
                            f"{SCHEMA_VERSION}; start a new ledger file")
        if have.get("rules") != want:
            raise ConfigError(
                f"{self.path}: this paper ledger was created with other [paper] settings "
                f"({have.get('rules')}); restore them or point [paper] ledger at a new file")

    # -- writing ------------------------------------------------------------------------------
    def drop_after(self, not_after_ms: int) -> dict[str, int]:
        """Bars after ``not_after_ms`` (the daemon: one bar past the wall clock) cannot have closed yet:
        a ledger that applied one (before the feed dropped future-dated bars, or under a wrong clock)
        would treat every real bar as already applied. For each such symbol, one warning naming it, then
        in one transaction its equity rows and fills after ``not_after_ms`` are deleted and the account
        is rebuilt by replaying its remaining equity rows through the broker (pure, so the account is
        the one it had after the last plausible bar). Returns the equity rows deleted, by symbol."""
        out: dict[str, int] = {}
        for sym, acct in list(self._accounts.items()):
            if acct.last_open_time is None or acct.last_open_time <= not_after_ms:
                continue
            db = self._db
            rebuilt: Account | None = None
            for r in db.execute("SELECT signal_id, symbol, open_time, bar_open, bar_close, p_up, action, cash "
                                "FROM equity WHERE symbol=? AND open_time<=? ORDER BY open_time", (sym, not_after_ms)):
                sig = Signal(r[0], r[1], r[2], r[3], r[4], r[5], r[6], artifact="")
                rebuilt, _, row = step(rebuilt or new_account(sym, self.rules), sig, self.rules)
                if row.cash != r[7]:
                    raise DataError(f"{self.path}: paper ledger for {sym} does not replay to its own equity "
                                    f"rows at {r[2]}; move it aside or point [paper] ledger at a new file")
            with self._tx() as tx:
                eq = tx.execute("DELETE FROM equity WHERE symbol=? AND open_time>?", (sym, not_after_ms)).rowcount
                fl = tx.execute("DELETE FROM fills WHERE symbol=? AND open_time>?", (sym, not_after_ms)).rowcount
                if rebuilt is None:
                    tx.execute("DELETE FROM positions WHERE symbol=?", (sym,))
                else:
                    tx.execute(_UPSERT_POSITION, tuple(getattr(rebuilt, c) for c in _POS_COLS))
            if rebuilt is None:
                del self._accounts[sym]
            else:
                self._accounts[sym] = rebuilt
            out[sym] = eq
            log.warning("paper_future_bars_dropped", symbol=sym, ledger=str(self.path),
                        last_open_time=acct.last_open_time, not_after_ms=not_after_ms, equity_rows=eq, fills=fl,
                        resumed_from=rebuilt.last_open_time if rebuilt else None,
                        hint="bars after the wall clock cannot have closed; the account resumes from the last "
                             "plausible bar")
        return out

    def apply(self, sig: Signal) -> Applied:
        """Apply one signal in one transaction. Already-applied or older bars are a no-op."""
        acct = self._accounts.get(sig.symbol) or new_account(sig.symbol, self.rules)
        if acct.last_open_time is not None and sig.open_time <= acct.last_open_time:
            return Applied(duplicate=True)
        new, fill, row = step(acct, sig, self.rules)
        with self._tx() as db:
            cur = db.execute(_INSERT_EQUITY, (row.signal_id, row.symbol, row.open_time, row.bar_open, row.bar_close,
                                              row.p_up, row.action, row.qty, row.cash, row.equity, row.p_move,
                                              row.sigma_bp, row.regime))
            if cur.rowcount == 0:  # another process applied it: re-read, never double-count
                db.execute("ROLLBACK")
                self._reload(sig.symbol)
                return Applied(duplicate=True)
            if fill is not None:
                db.execute(_INSERT_FILL, (fill.signal_id, fill.symbol, fill.open_time, fill.side, fill.qty,
                                          fill.price, fill.fee, fill.realized, fill.trip_pnl, fill.position))
            db.execute(_UPSERT_POSITION, tuple(getattr(new, c) for c in _POS_COLS))
        self._accounts[sig.symbol] = new
        return Applied(duplicate=False, fill=fill, equity=row)

    def apply_many(self, signals: Iterable[Signal]) -> tuple[int, int]:
        """Apply signals in order, one transaction each; returns (applied, duplicates)."""
        n = d = 0
        for s in signals:
            if self.apply(s).duplicate:
                d += 1
            else:
                n += 1
        return n, d

    def apply_batch(self, signals: list[Signal]) -> list[Applied]:
        """Apply signals in order in ONE transaction (replay: per-signal commits dominate its time).
        The same rows as ``apply`` one by one; a crash keeps all of the batch or none of it."""
        staged: dict[str, Account] = {}
        out: list[Applied] = []
        eq_rows: list[tuple] = []
        fill_rows: list[tuple] = []
        for sig in signals:
            acct = (staged.get(sig.symbol) or self._accounts.get(sig.symbol)
                    or new_account(sig.symbol, self.rules))
            if acct.last_open_time is not None and sig.open_time <= acct.last_open_time:
                out.append(Applied(duplicate=True))
                continue
            new, fill, row = step(acct, sig, self.rules)
            staged[sig.symbol] = new
            eq_rows.append((row.signal_id, row.symbol, row.open_time, row.bar_open, row.bar_close, row.p_up,
                            row.action, row.qty, row.cash, row.equity, row.p_move, row.sigma_bp, row.regime))
            if fill is not None:
                fill_rows.append((fill.signal_id, fill.symbol, fill.open_time, fill.side, fill.qty,
                                  fill.price, fill.fee, fill.realized, fill.trip_pnl, fill.position))
            out.append(Applied(duplicate=False, fill=fill, equity=row))
        if not staged:
            return out
        with self._tx() as db:
            cur = db.executemany(_INSERT_EQUITY, eq_rows)
            if cur.rowcount != len(eq_rows):  # another writer got there first: go one by one
                db.execute("ROLLBACK")
                for sym in staged:
                    self._reload(sym)
                return [self.apply(s) for s in signals]
            db.executemany(_INSERT_FILL, fill_rows)
            db.executemany(_UPSERT_POSITION, [tuple(getattr(a, c) for c in _POS_COLS) for a in staged.values()])
        self._accounts.update(staged)
        return out

    def _reload(self, symbol: str) -> None:
        row = self._db.execute(f"SELECT {', '.join(_POS_COLS)} FROM positions WHERE symbol=?",
                               (symbol,)).fetchone()
        if row:
            self._accounts[symbol] = Account(*row)

    # -- reading ------------------------------------------------------------------------------
    def account(self, symbol: str) -> Account | None:
        return self._accounts.get(symbol)

    def symbols(self) -> list[str]:
        return sorted(self._accounts)

    def last_open_time(self, symbol: str) -> int | None:
        """The last bar applied for ``symbol`` (a restarted daemon signals only newer bars)."""
        a = self._accounts.get(symbol)
        return a.last_open_time if a else None

    def fills(self, symbol: str | None = None) -> list[Fill]:
        q = ("SELECT signal_id, symbol, open_time, side, qty, price, fee, realized, trip_pnl, position "
             "FROM fills")
        rows = (self._db.execute(q + " WHERE symbol=? ORDER BY seq", (symbol,)) if symbol
                else self._db.execute(q + " ORDER BY seq"))
        return [Fill(*r) for r in rows]

    def equity_rows(self, symbol: str) -> Iterator[EquityRow]:
        yield from (EquityRow(*r) for r in self._db.execute(
            "SELECT signal_id, symbol, open_time, bar_open, bar_close, p_up, action, qty, cash, equity, p_move, "
            "sigma_bp, regime FROM equity WHERE symbol=? ORDER BY open_time", (symbol,)))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PaperLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
