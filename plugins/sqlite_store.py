"""Built-in storage: runs, orders, fills and a hash-chained audit log in one SQLite file.

The database lives at ``<data dir>/bastion.db`` in WAL mode.  Money and
quantities are stored as decimal *text* (never binary floats) and timestamps
as ISO-8601 UTC text, so everything reads back exactly as it went in.

Durability
    For paper and live runs every write method commits, fsynced
    (``synchronous=FULL``), before it returns; in particular
    :meth:`SQLiteStore.record_order` makes the client order id durable before
    the caller submits the order, so a restart can reconcile with the broker.
    A backtest sends nothing to a real broker, so there is nothing to
    reconcile: its writes are group-committed (a commit every
    :data:`BATCH_WRITES` writes) and everything is
    committed and fsynced by :meth:`SQLiteStore.finish_run` (or ``close``).  A
    backtest killed mid-run keeps what was committed and shows as
    ``interrupted``.  Writes outside a run (``audit``) always commit at once.

Audit log
    ``audit`` is append-only (triggers abort any ``UPDATE`` or ``DELETE`` and any
    insert that does not extend the log) and hash-chained: each record's
    ``hash`` is the SHA-256 of ``[id, ts, event, payload, prev_hash]`` as compact
    JSON, where ``payload`` is the record's canonical JSON text (sorted keys) and
    ``prev_hash`` the previous record's hash (64 zeros for the first).
    ``sqlite_sequence`` remembers the highest id ever written, so records cut
    from the end of the log are noticed too.  :meth:`SQLiteStore.verify_audit`
    recomputes the chain, then checks that every run still matches what its
    ``run_started`` and ``run_finished`` records say (status, strategies and
    their SHA-256s, and a digest of its orders, fills, equity, positions and
    results).

Bars
    Schema 4 adds the ``bars`` table behind :class:`bastion.interfaces.BarStore`
    (``bastion data import``, the ``store`` source): one row per ``(symbol,
    interval, ts)`` (the primary key; ``WITHOUT ROWID``, so the rows sit in key
    order), ``ts`` as the ISO-8601 UTC text above, prices and volume as the
    shortest decimal text that reads back as the same float.  An import is one
    transaction, written in batches of :data:`BAR_BATCH` rows.
"""

from __future__ import annotations

import enum
import functools
import heapq
import importlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import attrs

from bastion import BastionError, ConfigError, FormatError, __version__, audit, hookimpl
from bastion.audit import AuditView
from bastion.interfaces import (
    AuditCheck,
    BarSeries,
    EquityPoint,
    Offer,
    PluginContext,
    RejectedOrder,
    RunData,
    RunInfo,
    RunRow,
    StoredOrder,
    StrategyRecord,
    StrategyRunData,
)
from bastion.models import Bar, Fill, Order, OrderStatus, OrderType, Position, Side
from bastion.storage import (
    ORDER_STATUSES,
    check_order_status,
    decimal_text,
    duplicate_order,
    fill_from_row,
    optional_decimal_text,
    parse_ts,
    pid_alive,
    stored_order_from_row,
)


def _import_sqlite_utils() -> Any:
    """sqlite-utils, imported without pandas: it imports pandas (~100 ms) whenever it is
    installed, only to map DataFrame types this store never writes.  Where pandas is
    already imported, sqlite-utils gets it as usual."""
    if "sqlite_utils" in sys.modules or "pandas" in sys.modules:
        return importlib.import_module("sqlite_utils")
    sys.modules["pandas"] = None  # type: ignore[assignment]  # import pandas: ImportError
    try:
        return importlib.import_module("sqlite_utils")
    finally:
        del sys.modules["pandas"]


if TYPE_CHECKING:
    import sqlite_utils
else:
    sqlite_utils = _import_sqlite_utils()

__all__ = ["BAR_BATCH", "DB_NAME", "SCHEMA_VERSION", "SQLiteStore"]

DB_NAME: Final = "bastion.db"
OPEN_WAIT: Final = 10.0  # seconds a process waits for a database another one holds locked
SCHEMA_VERSION: Final = 4

FINAL_ORDER_STATUSES: Final = frozenset(
    {OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED}
)
FINISHED_RUN_STATUSES: Final = frozenset({"completed", "failed", "interrupted"})
# A run without a run_finished record: running, or (paper/live) stopped with orders
# still working at the broker until a later run's reconciliation settles them.
_OPEN_RUN_STATUSES: Final = audit.OPEN_RUN_STATUSES


@hookimpl
def register_storages() -> list[Offer[SQLiteStore]]:
    return [
        Offer(
            "sqlite",
            _open,
            description="one SQLite file per environment (the default)",
            options="none: the database is bastion.db in the environment's data directory",
        )
    ]


def _open(spec: str, context: PluginContext) -> SQLiteStore:
    if spec:
        raise ConfigError(
            f"--storage sqlite:{spec}: sqlite takes no options (its database is bastion.db in "
            "the environment's data directory, chosen with --home and --env); use --storage sqlite"
        )
    return SQLiteStore.open(context.data_dir)


# --------------------------------------------------------------------------- encoding


_ts = audit.format_ts


class _LastTs:
    """:func:`_ts` remembering its last answer: a backtest's orders and fills come in
    runs stamped with the same bar time."""

    __slots__ = ("text", "value")

    def __init__(self) -> None:
        self.value: datetime | None = None
        self.text = ""

    def __call__(self, value: datetime) -> str:
        if value is not self.value:
            self.text = _ts(value)
            self.value = value
        return self.text


_dumps = audit.canonical_json


def _aware(value: datetime) -> datetime:
    """A bound given without a time zone is taken as UTC (as the sources do)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _bar_key(bar: Bar) -> tuple[datetime, str]:
    return bar.ts, bar.symbol


def _now() -> str:
    return _ts(datetime.now(UTC))


def _bar_num(value: float) -> str:
    """A bar's float as the shortest plain decimal text that reads back as that float
    (``101.23``, ``0.00001``; never ``1e-05``)."""
    return format(Decimal(repr(float(value))), "f")


_BAR_UPSERT_SQL: Final = (
    "INSERT INTO bars (symbol, interval, ts, open, high, low, close, volume) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (symbol, interval, ts) DO UPDATE SET "
    "open = excluded.open, high = excluded.high, low = excluded.low, "
    "close = excluded.close, volume = excluded.volume"
)
_BAR_READ_SQL: Final = (
    "SELECT ts, open, high, low, close, volume FROM bars "
    "WHERE symbol = ? AND interval = ? AND ts > ? AND ts <= ? ORDER BY ts LIMIT ?"
)
_TS_MIN: Final = ""  # sorts before every stored ts
_TS_MAX: Final = "~"  # sorts after every stored ts ("~" > any digit)
BAR_BATCH: Final = 2000
"""Bars per ``executemany`` when importing, and per query when reading, in the bar store."""


# Enum members as their stored text (``Side.BUY.value`` goes through enum's
# descriptor machinery; this is a dict lookup on the order path).
_TEXT: Final[dict[enum.Enum, str]] = {
    member: member.value for kind in (Side, OrderType) for member in kind
}


_ORDER_COLUMNS = (
    "client_order_id, run_id, strategy, strategy_sha256, signer, symbol, side, quantity, type, "
    "limit_price, stop_price, tag, created, liquidation, status, reason, filled"
)
_FILL_COLUMNS_V1 = (
    "id, run_id, client_order_id, strategy, strategy_sha256, signer, symbol, side, quantity, "
    "price, commission, ts"
)
# Schema 2: the broker's execution id (unique: one execution is stored once, across runs)
# and its order id, so a restart can tell which of the broker's executions are stored.
_FILL_COLUMNS = f"{_FILL_COLUMNS_V1}, exec_id, broker_order_id"
# What reading a fill back needs, in the order fill_from_row takes it.
_FILL_READ = (
    "client_order_id, symbol, side, quantity, price, commission, ts, exec_id, broker_order_id"
)
_ORDER_INSERT_SQL = f"INSERT INTO orders ({_ORDER_COLUMNS}, updated) VALUES ({', '.join('?' * 18)})"  # noqa: S608
_FILL_INSERT_SQL = f"INSERT INTO fills ({_FILL_COLUMNS}) VALUES (NULL, {', '.join('?' * 13)})"  # noqa: S608
_ORDER_STATUS_AT = 14  # index of status (then reason, filled) in a buffered order row


class _AuditView:
    """What :func:`bastion.audit.verify` reads, from one connection (one transaction)."""

    _RUN_FIELDS: Final = (
        "kind, environment, status, started, finished, bastion_version, config, error"
    )
    _STRATEGY_FIELDS: Final = "sha256, signer, signer_name, whitelist_version, unsigned"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def records(self) -> Iterator[audit.AuditRecord]:
        for row in self._conn.execute(
            "SELECT id, ts, event, payload, prev_hash, hash FROM audit ORDER BY id"
        ):
            yield audit.AuditRecord(*row)

    def highest_id(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        return int(row[0]) if row else 0

    def last(self) -> audit.AuditRecord | None:
        row = self._conn.execute(
            "SELECT id, ts, event, payload, prev_hash, hash FROM audit ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return audit.AuditRecord(*row) if row else None

    def runs(self) -> dict[str, dict[str, Any]]:
        names = self._RUN_FIELDS.split(", ")
        return {
            str(run_id): dict(zip(names, values, strict=True))
            for run_id, *values in self._conn.execute(
                f"SELECT run_id, {self._RUN_FIELDS} FROM runs"  # noqa: S608
            )
        }

    def strategies(self) -> dict[str, dict[str, dict[str, Any]]]:
        names = self._STRATEGY_FIELDS.split(", ")
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for run_id, name, *values in self._conn.execute(
            f"SELECT run_id, name, {self._STRATEGY_FIELDS} FROM run_strategies"  # noqa: S608
        ):
            out.setdefault(str(run_id), {})[str(name)] = dict(zip(names, values, strict=True))
        return out

    def rows(self, run_id: str, table: str, columns: str, order: str) -> Iterator[tuple[Any, ...]]:
        """The run's rows, streamed from the cursor (a run may have millions)."""
        # "id" orders by insertion: SQLite's rowid (the fills' id is that rowid).
        order = ", ".join("rowid" if part == "id" else part for part in order.split(", "))
        return self._conn.execute(
            f"SELECT {columns} FROM {table} WHERE run_id = ? ORDER BY {order}",  # noqa: S608
            (run_id,),
        )


# --------------------------------------------------------------------------- schema

_AUDIT_SQL: Final = (
    """CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
)""",
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: records cannot be changed');
END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: records cannot be deleted');
END""",
    """CREATE TRIGGER audit_append_only BEFORE INSERT ON audit
WHEN NEW.id <= (SELECT coalesce(max(id), 0) FROM audit)
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: new records must come last');
END""",
)


def _create_schema(db: sqlite_utils.Database) -> None:
    runs_fk = [("run_id", "runs", "run_id")]
    db.table("runs").create(
        {
            "run_id": str,
            "kind": str,
            "environment": str,
            "status": str,
            "started": str,
            "finished": str,
            "bastion_version": str,
            "config": str,
            "error": str,
            "pid": int,
        },
        pk="run_id",
        not_null=["kind", "environment", "status", "started", "bastion_version", "config"],
    )
    db.table("run_strategies").create(
        {
            "run_id": str,
            "name": str,
            "sha256": str,
            "signer": str,
            "signer_name": str,
            "whitelist_version": int,
            "unsigned": int,
            "params": str,
            "metrics": str,
            "quarantined": str,
        },
        pk=("run_id", "name"),
        foreign_keys=runs_fk,
        not_null=["run_id", "name", "sha256", "unsigned", "params"],
    )
    db.table("orders").create(
        {
            "client_order_id": str,
            "run_id": str,
            "strategy": str,
            "strategy_sha256": str,
            "signer": str,
            "symbol": str,
            "side": str,
            "quantity": str,
            "type": str,
            "limit_price": str,
            "stop_price": str,
            "tag": str,
            "created": str,
            "liquidation": int,
            "status": str,
            "reason": str,
            "filled": str,
            "updated": str,
        },
        pk="client_order_id",
        foreign_keys=runs_fk,
        not_null=[
            "run_id",
            "strategy",
            "strategy_sha256",
            "symbol",
            "side",
            "quantity",
            "type",
            "created",
            "liquidation",
            "status",
            "filled",
            "updated",
        ],
    )
    db.table("orders").create_index(["run_id", "strategy"])
    db.table("fills").create(
        {
            "id": int,
            "run_id": str,
            "client_order_id": str,
            "strategy": str,
            "strategy_sha256": str,
            "signer": str,
            "symbol": str,
            "side": str,
            "quantity": str,
            "price": str,
            "commission": str,
            "ts": str,
            "exec_id": str,
            "broker_order_id": str,
        },
        pk="id",
        foreign_keys=[*runs_fk, ("client_order_id", "orders", "client_order_id")],
        not_null=[
            "run_id",
            "client_order_id",
            "strategy",
            "strategy_sha256",
            "symbol",
            "side",
            "quantity",
            "price",
            "commission",
            "ts",
        ],
    )
    db.table("fills").create_index(["run_id", "strategy"])
    db.table("fills").create_index(["client_order_id"])
    db.conn.execute(_EXEC_ID_INDEX_SQL)
    db.table("positions").create(
        {
            "run_id": str,
            "strategy": str,
            "symbol": str,
            "quantity": str,
            "avg_price": str,
            "realized": str,
            "mark": str,
        },
        pk=("run_id", "strategy", "symbol"),
        foreign_keys=runs_fk,
        not_null=["quantity", "avg_price", "realized"],
    )
    db.table("equity").create(
        {"run_id": str, "strategy": str, "ts": str, "equity": float},
        foreign_keys=runs_fk,
        not_null=["run_id", "strategy", "ts"],
    )
    db.table("equity").create_index(["run_id", "strategy", "ts"])
    for statement in _SCHEMA_3_TABLES:
        db.conn.execute(statement)
    db.conn.execute(_BARS_SQL)
    # AUTOINCREMENT (sqlite_sequence) and triggers are beyond sqlite-utils' create().
    for statement in _AUDIT_SQL:
        db.conn.execute(statement)
    db.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


_SCHEMA_3_TABLES: Final = (
    "CREATE TABLE benchmark (run_id TEXT NOT NULL REFERENCES runs(run_id), "
    "ts TEXT NOT NULL, equity FLOAT)",
    "CREATE INDEX benchmark_run ON benchmark (run_id, ts)",
    "CREATE TABLE period_returns (run_id TEXT NOT NULL REFERENCES runs(run_id), "
    "strategy TEXT NOT NULL, period TEXT NOT NULL, value FLOAT, "
    "PRIMARY KEY (run_id, strategy, period))",
)

# Schema 4: the bar store.  Prices and volume are decimal text (see _bar_num).
_BARS_SQL: Final = (
    "CREATE TABLE bars (symbol TEXT NOT NULL, interval TEXT NOT NULL, ts TEXT NOT NULL, "
    "open TEXT NOT NULL, high TEXT NOT NULL, low TEXT NOT NULL, close TEXT NOT NULL, "
    "volume TEXT, PRIMARY KEY (symbol, interval, ts)) WITHOUT ROWID"
)

_EXEC_ID_INDEX_SQL: Final = (
    "CREATE UNIQUE INDEX fills_exec_id ON fills (exec_id) WHERE exec_id IS NOT NULL"
)


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a store of an older schema to :data:`SCHEMA_VERSION` (inside the caller's
    transaction); stored rows and the audit chain are left as they are."""
    if version < 2:
        conn.execute("ALTER TABLE fills ADD COLUMN exec_id TEXT")
        conn.execute("ALTER TABLE fills ADD COLUMN broker_order_id TEXT")
        conn.execute(_EXEC_ID_INDEX_SQL)
    if version < 3:
        conn.execute("ALTER TABLE positions ADD COLUMN mark TEXT")
        for statement in _SCHEMA_3_TABLES:
            conn.execute(statement)
    if version < 4:
        # IF NOT EXISTS: a store downgraded by hand (tests do) may have kept the table.
        conn.execute(_BARS_SQL.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


_AUDIT_HEAD_SQL: Final = (
    "SELECT (SELECT max(id) FROM audit), "
    "(SELECT hash FROM audit ORDER BY id DESC LIMIT 1), "
    "(SELECT seq FROM sqlite_sequence WHERE name = 'audit')"
)

_INSERT_SQL: dict[tuple[str, tuple[str, ...]], str] = {}


def _insert(conn: sqlite3.Connection, table: str, row: Mapping[str, Any]) -> int:
    """One row through a cached, prepared ``INSERT``; returns its rowid.

    The per-order hot path (orders, fills, audit records) uses this rather than
    ``sqlite_utils.Table.insert``, which costs about three times as much per row
    (schema look-ups, a savepoint, value conversion) for values that are already
    exactly what is to be stored.  Bulk writes still go through sqlite-utils.
    """
    columns = tuple(row)
    sql = _INSERT_SQL.get((table, columns))
    if sql is None:
        # Table and column names are this module's own constants, never user input.
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608
        _INSERT_SQL[(table, columns)] = sql
    rowid = conn.execute(sql, tuple(row.values())).lastrowid
    assert rowid is not None
    return rowid


# --------------------------------------------------------------------------- the store


BATCH_WRITES = 2000


class SQLiteStore:
    """The ``sqlite`` store (see the module docstring).  Create with :meth:`open`."""

    def __init__(self, path: Path, db: sqlite_utils.Database) -> None:
        self.path = path
        self.location = str(path)
        self._db = db
        self._conn = db.conn
        self._lock = threading.RLock()
        self._in_write = False
        self._synchronous = "NORMAL"
        self._closed = False
        self._open_runs: dict[str, str] = {}  # run id -> kind, for runs begun here
        self._batched = 0
        # Write-behind during a backtest: the batch's order and fill rows, kept
        # here and inserted with executemany when the batch commits (or before
        # anything reads).  Until then they are as (un)durable as the open
        # batch transaction they would otherwise sit in.
        self._batch_run: str | None = None
        self._pending_orders: dict[str, list[Any]] = {}
        self._pending_fills: list[tuple[Any, ...]] = []
        self._order_ts = _LastTs()
        self._fill_ts = _LastTs()

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, data_dir: Path) -> SQLiteStore:
        """Open (creating if needed) ``data_dir / "bastion.db"``."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / DB_NAME
        if not path.exists():
            # Owner-only from the start; SQLite gives -wal and -shm the same mode.
            with suppress(FileExistsError):
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        try:
            conn = sqlite3.connect(path, timeout=OPEN_WAIT, check_same_thread=False)
        except sqlite3.Error as exc:
            raise BastionError(f"cannot open {path}: {exc}") from None
        try:
            db = sqlite_utils.Database(conn, execute_plugins=False)
            store = cls(path, db)
            # SQLite answers "database is locked" without waiting out the busy timeout
            # in a few cases (another process switching the file to WAL or recovering
            # its WAL index): several processes opening one database at once (a sweep's
            # workers) try again for as long as the timeout, not fail at once.
            deadline = time.monotonic() + OPEN_WAIT
            delay = 0.02
            while True:
                try:
                    store._prepare()
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
        except BastionError:
            conn.close()
            raise
        except sqlite3.OperationalError as exc:
            conn.close()
            raise BastionError(f"cannot open {path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise FormatError(
                f"{path} is not a usable SQLite database ({exc}); "
                "move it aside or choose another data directory"
            ) from None
        return store

    def _prepare(self) -> None:
        version = self._user_version()
        if version > SCHEMA_VERSION:
            raise FormatError(
                f"{self.path} uses storage schema {version}, but Bastion {__version__} "
                f"understands schema {SCHEMA_VERSION} at most; upgrade Bastion to read it"
            )
        self._db.enable_wal()
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        if version == SCHEMA_VERSION:
            return
        with self._write():
            version = self._user_version()  # another process may have just created it
            if version == SCHEMA_VERSION:
                return
            tables = self._conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            ).fetchone()[0]
            if version > 0:
                _migrate(self._conn, version)
                return
            if tables:
                raise FormatError(
                    f"{self.path} is a SQLite database but not a Bastion store "
                    "(it has tables but no Bastion schema version); move it aside"
                )
            _create_schema(self._db)

    def _user_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # ----------------------------------------------------------------- transactions

    @contextmanager
    def _write(self, run_id: str | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from the start.

        ``BEGIN IMMEDIATE`` matters for the audit chain: the last record read
        inside the transaction is still the last one when the new one is added,
        even with other processes writing to the same file.

        A write for the run being batched (``run_id``) joins the open batch.
        Any other write first commits that batch, then commits on its own, so
        a paper run's rows are durable on return even while a backtest runs.
        """
        with self._lock:
            if self._in_write:
                raise RuntimeError("nested write transaction")
            if run_id is not None and run_id == self._batch_run:
                with self._batched_write() as conn:
                    yield conn
                return
            if self._conn.in_transaction or self._pending_orders or self._pending_fills:
                self._flush()  # the open batch, with its buffered rows, goes first
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._read_only(exc) from None
            self._in_write = True
            try:
                yield self._conn
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise self._read_only(exc) from None
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._in_write = False

    def _read_only(self, exc: sqlite3.OperationalError) -> Exception:
        """What to raise for ``exc``: a one-line error when SQLite may not write the file."""
        if "readonly" not in str(exc) and "read-only" not in str(exc):
            return exc
        return BastionError(
            f"cannot write to {self.path}: {exc}; make it, its folder and its "
            f"{DB_NAME}-wal and {DB_NAME}-shm files writable (or delete a stale "
            f"read-only {DB_NAME}-shm)"
        )

    @contextmanager
    def _batched_write(self) -> Iterator[sqlite3.Connection]:
        """A write inside the open batch transaction; the batch commits every
        BATCH_WRITES writes.  Order and fill writes check first and then run one
        statement, so a failing one changes nothing.  A multi-row write that
        fails half-way (equity, positions) is a programming error that fails
        the run, which is then marked ``failed``: no savepoint per write."""
        conn = self._conn
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        self._in_write = True
        try:
            yield conn
        finally:
            self._in_write = False
        self._batched += 1
        if self._batched >= BATCH_WRITES:
            self._flush()

    def _flush(self) -> None:
        """Commit the open batch, if any, with the order and fill rows it holds."""
        self._write_pending()
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        self._batched = 0

    def _write_pending(self) -> None:
        """Insert the buffered order and fill rows into the batch transaction.

        Rows were checked as they were recorded; the one thing left to the
        INSERT is an order id that *another* run already stored.  Then the
        batch is rolled back and dropped, and the error says so: the run
        cannot be trusted and is to be marked failed (which then works).
        """
        if not (self._pending_orders or self._pending_fills):
            return
        conn = self._conn
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        updated = _now()
        orders = list(self._pending_orders.values())
        for row in orders:  # the rows are this batch's own lists: no copies
            row.append(updated)
        fills = self._pending_fills
        self._pending_orders = {}
        self._pending_fills = []
        try:
            conn.executemany(_ORDER_INSERT_SQL, orders)
            conn.executemany(_FILL_INSERT_SQL, fills)
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            self._batched = 0
            raise ValueError(
                f"{self.location}: {exc} while writing {len(orders)} order(s) and "
                f"{len(fills)} fill(s) of run {orders[0][1] if orders else '?'}; an order id "
                "was already stored (ids are never reused). Those rows were dropped: "
                "mark the run failed"
            ) from None

    def _end_batch(self) -> None:
        with self._lock:
            self._batch_run = None
            self._flush()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot for several SELECTs."""
        with self._lock:
            self._write_pending()
            if self._conn.in_transaction:  # inside a batch: reads see its writes
                yield self._conn
                return
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    def _set_synchronous(self, level: str) -> None:
        self._conn.execute(f"PRAGMA synchronous = {level}")

    # ----------------------------------------------------------------- audit

    def _append_audit(self, event: str, payload: Mapping[str, Any]) -> None:
        """Add one record to the chain (sealed by the kernel: :func:`bastion.audit.seal`);
        the caller holds a write transaction."""
        last_id, last_hash, seq = self._conn.execute(_AUDIT_HEAD_SQL).fetchone()
        record = audit.seal(max(int(seq or 0), int(last_id or 0)), last_hash, event, payload)
        _insert(self._conn, "audit", attrs.asdict(record))

    def audit(self, event: str, payload: Mapping[str, Any]) -> None:
        """Append a record now (margin calls, quarantines are never delayed by a batch)."""
        with self._write():
            self._append_audit(event, payload)

    def verify_audit(self) -> AuditCheck:
        """:func:`bastion.audit.verify` of this store (the chain and every run)."""
        return audit.verify(self)

    @contextmanager
    def audit_view(self) -> Iterator[AuditView]:
        """One read transaction over the store, for :func:`bastion.audit.verify`."""
        with self._read() as conn:
            yield _AuditView(conn)

    # ----------------------------------------------------------------- runs

    def begin_run(self, run: RunInfo, strategies: Sequence[StrategyRecord]) -> None:
        """Store the run (``running``, this pid) and its strategies in one transaction."""
        config = _dumps(dict(run.config))
        started = _ts(run.started)
        pid = os.getpid()
        names = [s.name for s in strategies]
        if len(set(names)) != len(names):
            raise ValueError(f"run {run.run_id}: strategy names are not unique: {names}")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
                raise ValueError(f"run {run.run_id!r} is already stored in {self.location}")
            self._db.table("runs").insert(
                {
                    "run_id": run.run_id,
                    "kind": run.kind,
                    "environment": run.environment,
                    "status": "running",
                    "started": started,
                    "finished": None,
                    "bastion_version": run.bastion_version,
                    "config": config,
                    "error": None,
                    "pid": pid,
                }
            )
            self._db.table("run_strategies").insert_all(
                {
                    "run_id": run.run_id,
                    "name": s.name,
                    "sha256": s.sha256,
                    "signer": s.signer,
                    "signer_name": s.signer_name,
                    "whitelist_version": s.whitelist_version,
                    "unsigned": int(s.unsigned),
                    "params": _dumps(dict(s.params)),
                    "metrics": None,
                    "quarantined": None,
                }
                for s in strategies
            )
            self._append_audit("run_started", audit.run_started_payload(run, strategies, pid))
        # The run row is committed; a backtest's own writes are group-committed
        # (one backtest at a time per store; another one runs unbatched).
        with self._lock:
            self._open_runs[run.run_id] = run.kind
            self._update_synchronous()
            if run.kind == "backtest" and self._batch_run is None:
                self._batch_run = run.run_id

    def _update_synchronous(self) -> None:
        """fsync every commit unless every run open here is a backtest: orders of a
        paper or live run reach a real broker."""
        backtests_only = all(kind == "backtest" for kind in self._open_runs.values())
        self._synchronous = "NORMAL" if backtests_only else "FULL"
        self._set_synchronous(self._synchronous)

    def finish_run(self, run_id: str, status: str, error: str | None) -> None:
        """Close the run; everything stored for it is on disk when this returns."""
        if status not in FINISHED_RUN_STATUSES:
            raise ValueError(
                f"a run finishes as one of {sorted(FINISHED_RUN_STATUSES)}, not {status!r}"
            )
        if run_id == self._batch_run:
            self._end_batch()
        finished = _now()
        with self._lock:
            self._set_synchronous("FULL")  # this commit fsyncs the WAL: all earlier ones too
            try:
                with self._write() as conn:
                    updated = conn.execute(
                        "UPDATE runs SET status = ?, finished = ?, error = ? "
                        "WHERE run_id = ? AND status IN ('running', 'stopped')",
                        (status, finished, error, run_id),
                    ).rowcount
                    if not updated:
                        found = conn.execute(
                            "SELECT status FROM runs WHERE run_id = ?", (run_id,)
                        ).fetchone()
                        if found is None:
                            raise ValueError(f"no run {run_id!r} in {self.location}")
                        raise ValueError(f"run {run_id!r} is already finished ({found[0]})")
                    orders = conn.execute(
                        "SELECT count(*) FROM orders WHERE run_id = ?", (run_id,)
                    ).fetchone()[0]
                    fills = conn.execute(
                        "SELECT count(*) FROM fills WHERE run_id = ?", (run_id,)
                    ).fetchone()[0]
                    self._append_audit(
                        "run_finished",
                        audit.run_finished_payload(
                            run_id,
                            status,
                            error,
                            finished,
                            (orders, fills),
                            functools.partial(_AuditView(conn).rows, run_id),
                        ),
                    )
            finally:
                self._open_runs.pop(run_id, None)
                self._update_synchronous()

    # ----------------------------------------------------------------- orders and fills

    def record_order(self, run_id: str, order: Order, status: str, reason: str | None) -> None:
        """Store a new order before it is submitted.

        Paper and live: committed (the client order id is durable) and audited
        on return.  A backtest: part of the open batch, audited by the run's
        trades digest.
        """
        if status not in ORDER_STATUSES:
            check_order_status(status)
        intent = order.intent
        limit = intent.limit_price
        stop = intent.stop_price
        cid = order.client_order_id
        values = [
            cid,
            run_id,
            order.strategy,
            order.strategy_sha256,
            order.signer,
            intent.symbol,
            _TEXT[intent.side],
            format(intent.quantity, "f"),  # an Order's numbers are Decimals: as _num
            _TEXT[intent.type],
            None if limit is None else format(limit, "f"),
            None if stop is None else format(stop, "f"),
            intent.tag,
            self._order_ts(order.created),
            1 if order.liquidation else 0,
            status,
            reason,
            "0",
        ]
        with self._lock:
            if run_id == self._batch_run:
                # An id still in the batch is refused here; one already written
                # (by this run or another) fails the batch's INSERT (the primary
                # key), which fails this run: ids embed their run's unique id, so
                # only a broken caller gets there.  No set of every id the run
                # used is kept: a long run has millions.
                if cid in self._pending_orders:
                    raise duplicate_order(cid)
                self._pending_orders[cid] = values
                self._batched += 1
                if self._batched >= BATCH_WRITES:
                    self._flush()
                return
        row = dict(zip(_ORDER_COLUMNS.split(", "), values, strict=True))
        row["updated"] = _now()
        with self._write(run_id) as conn:
            try:
                _insert(conn, "orders", row)
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" in str(exc):
                    raise duplicate_order(order.client_order_id) from None
                raise ValueError(f"no run {run_id!r} in {self.location}") from None
            payload = {k: v for k, v in row.items() if k not in ("filled", "updated")}
            payload["liquidation"] = order.liquidation
            if run_id != self._batch_run:  # a batched backtest's orders: by digest
                self._append_audit("order", payload)

    def update_order(
        self,
        run_id: str,
        client_order_id: str,
        status: str,
        reason: str | None,
        filled: Decimal,
    ) -> None:
        """Change an order's status; a final status (filled, rejected, cancelled) is audited."""
        if status not in ORDER_STATUSES:
            check_order_status(status)
        with self._lock:
            row = self._pending_orders.get(client_order_id)
            if row is not None and row[1] == run_id:
                # Still buffered (not yet inserted): its row takes the new status.
                row[_ORDER_STATUS_AT] = status
                row[_ORDER_STATUS_AT + 1] = reason
                row[_ORDER_STATUS_AT + 2] = decimal_text(filled)
                self._batched += 1
                if self._batched >= BATCH_WRITES:
                    self._flush()
                return
        with self._write(run_id) as conn:
            updated = conn.execute(
                "UPDATE orders SET status = ?, reason = ?, filled = ?, updated = ? "
                "WHERE client_order_id = ? AND run_id = ?",
                (status, reason, decimal_text(filled), _now(), client_order_id, run_id),
            ).rowcount
            if not updated:
                raise ValueError(f"run {run_id!r} has no order {client_order_id!r}")
            if status in FINAL_ORDER_STATUSES and run_id != self._batch_run:
                self._append_audit(
                    "order_status",
                    {
                        "run_id": run_id,
                        "client_order_id": client_order_id,
                        "status": status,
                        "reason": reason,
                        "filled": decimal_text(filled),
                    },
                )

    def record_fill(self, run_id: str, fill: Fill, order: Order) -> None:
        """Store one execution, naming the strategy's SHA-256 and signer, and audit it."""
        if fill.order_id != order.client_order_id:
            raise ValueError(
                f"fill for order {fill.order_id!r} recorded against order {order.client_order_id!r}"
            )
        values = (
            run_id,
            order.client_order_id,
            order.strategy,
            order.strategy_sha256,
            order.signer,
            fill.symbol,
            _TEXT[fill.side],
            format(fill.quantity, "f"),  # a Fill's numbers are Decimals: as _num
            format(fill.price, "f"),
            format(fill.commission, "f"),
            self._fill_ts(fill.ts),
            fill.exec_id,
            fill.broker_order_id,
        )
        cid = order.client_order_id
        with self._lock:
            if run_id == self._batch_run:
                # The order is in the batch, or already written (looked up by key).
                if cid not in self._pending_orders and self._order_run(cid) != run_id:
                    raise ValueError(f"run {run_id!r} has no order {cid!r}")
                self._pending_fills.append(values)
                self._batched += 1
                if self._batched >= BATCH_WRITES:
                    self._flush()
                return
        row = dict(zip(_FILL_COLUMNS.split(", ")[1:], values, strict=True))
        with self._write(run_id):
            if self._order_run(cid) != run_id:
                raise ValueError(f"run {run_id!r} has no order {cid!r}")
            try:
                fill_id = _insert(self._conn, "fills", row)
            except sqlite3.IntegrityError as exc:
                if "exec_id" not in str(exc):
                    raise
                raise ValueError(
                    f"execution {fill.exec_id!r} is already stored (order {cid!r}); "
                    "a broker's execution is booked once"
                ) from None
            if run_id != self._batch_run:
                self._append_audit("fill", {"fill_id": fill_id, **row})

    def _order_run(self, client_order_id: str) -> str | None:
        found = self._conn.execute(
            "SELECT run_id FROM orders WHERE client_order_id = ?", (client_order_id,)
        ).fetchone()
        return None if found is None else str(found[0])

    # ----------------------------------------------------------------- reconciliation

    def stop_run(self, run_id: str, reason: str) -> None:
        """End a paper or live run whose orders still work at the broker (``on_stop=
        leave``): ``stopped``, with no run_finished record, so the next run's
        reconciliation can still settle its orders and then finish it."""
        with self._lock:
            try:
                with self._write() as conn:
                    updated = conn.execute(
                        "UPDATE runs SET status = 'stopped' "
                        "WHERE run_id = ? AND status = 'running'",
                        (run_id,),
                    ).rowcount
                    if not updated:
                        raise ValueError(f"no running run {run_id!r} in {self.location}")
                    self._append_audit("run_stopped", {"run_id": run_id, "reason": reason})
            finally:
                self._open_runs.pop(run_id, None)
                self._update_synchronous()

    def unsettled_runs(self, kind: str) -> list[tuple[str, str]]:
        """Runs of ``kind`` a restart must reconcile, oldest first: ``running`` with their
        process gone (killed), or ``stopped`` with orders left working."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT run_id, status, pid FROM runs WHERE kind = ? "
                "AND status IN ('running', 'stopped') ORDER BY started, rowid",
                (kind,),
            ).fetchall()
        return [
            (str(run_id), str(status))
            for run_id, status, pid in rows
            if status == "stopped"
            or (pid is not None and pid != os.getpid() and not pid_alive(int(pid)))
        ]

    def open_orders(self, run_id: str) -> list[StoredOrder]:
        """The run's orders that are not filled, rejected or cancelled."""
        finals = tuple(s.value for s in FINAL_ORDER_STATUSES)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT client_order_id, strategy, strategy_sha256, signer, symbol, side, "
                "quantity, type, limit_price, stop_price, tag, created, liquidation, status, "
                "filled FROM orders WHERE run_id = ? AND status NOT IN (?, ?, ?) "
                "ORDER BY created, client_order_id",
                (run_id, *finals),
            ).fetchall()
        return [stored_order_from_row(run_id, row) for row in rows]

    def execution_ids(self) -> set[str]:
        with self._read() as conn:
            return {
                str(r[0])
                for r in conn.execute("SELECT exec_id FROM fills WHERE exec_id IS NOT NULL")
            }

    def book(self, kind: str) -> list[tuple[str, Fill]]:
        """Every fill of the runs of ``kind``, oldest first, with its strategy."""
        columns = ", ".join(f"f.{c}" for c in _FILL_READ.split(", "))
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT f.strategy, {columns} FROM fills f "  # noqa: S608
                "JOIN runs r ON r.run_id = f.run_id WHERE r.kind = ? ORDER BY f.ts, f.id",
                (kind,),
            ).fetchall()
        return [(str(row[0]), fill_from_row(row[1:])) for row in rows]

    # ----------------------------------------------------------------- results

    def record_equity(self, run_id: str, strategy: str, points: Sequence[EquityPoint]) -> None:
        """Append equity points (already down-sampled by the engine)."""
        rows = [(run_id, strategy, _ts(ts), float(value)) for ts, value in points]
        with self._write(run_id) as conn:
            conn.executemany(
                "INSERT INTO equity (run_id, strategy, ts, equity) VALUES (?, ?, ?, ?)", rows
            )

    def record_benchmark(self, run_id: str, points: Sequence[EquityPoint]) -> None:
        """Store the run's buy-and-hold benchmark curve (already down-sampled)."""
        rows = [(run_id, _ts(ts), float(value)) for ts, value in points]
        with self._write(run_id) as conn:
            conn.executemany("INSERT INTO benchmark (run_id, ts, equity) VALUES (?, ?, ?)", rows)

    def record_period_returns(
        self, run_id: str, strategy: str, returns: Mapping[str, float | None]
    ) -> None:
        """Store a strategy's calendar-month and calendar-year returns."""
        rows = [(run_id, strategy, period, value) for period, value in sorted(returns.items())]
        with self._write(run_id) as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO period_returns (run_id, strategy, period, value) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )

    def record_positions(self, run_id: str, strategy: str, positions: Sequence[Position]) -> None:
        """Replace the strategy's stored end-of-run positions with ``positions``."""
        with self._write(run_id) as conn:
            conn.execute(
                "DELETE FROM positions WHERE run_id = ? AND strategy = ?", (run_id, strategy)
            )
            self._db.table("positions").insert_all(
                {
                    "run_id": run_id,
                    "strategy": strategy,
                    "symbol": p.symbol,
                    "quantity": decimal_text(p.quantity),
                    "avg_price": decimal_text(p.avg_price),
                    "realized": decimal_text(p.realized),
                    "mark": optional_decimal_text(p.mark),
                }
                for p in positions
            )

    def record_result(
        self,
        run_id: str,
        strategy: str,
        metrics: Mapping[str, float | int | None],
        quarantined: str | None,
    ) -> None:
        with self._write(run_id) as conn:
            updated = conn.execute(
                "UPDATE run_strategies SET metrics = ?, quarantined = ? "
                "WHERE run_id = ? AND name = ?",
                (_dumps(dict(metrics)), quarantined, run_id, strategy),
            ).rowcount
            if not updated:
                raise ValueError(f"run {run_id!r} has no strategy {strategy!r}")

    # ----------------------------------------------------------------- reading

    def list_runs(self) -> list[RunRow]:
        """Every run, newest first; a ``running`` run whose process is gone is ``interrupted``."""
        with self._read() as conn:
            names: dict[str, list[str]] = {}
            stopped: dict[str, dict[str, str]] = {}
            for run_id, name, quarantined in conn.execute(
                "SELECT run_id, name, quarantined FROM run_strategies ORDER BY rowid"
            ):
                names.setdefault(run_id, []).append(name)
                if quarantined:
                    stopped.setdefault(run_id, {})[name] = quarantined
            rows = conn.execute(
                "SELECT run_id, kind, environment, status, started, finished, error, pid "
                "FROM runs ORDER BY started DESC, rowid DESC"
            ).fetchall()
        return [
            self._row(tuple(r), tuple(names.get(r[0], ())), stopped.get(r[0], {})) for r in rows
        ]

    @staticmethod
    def _row(
        r: tuple[Any, ...],
        strategies: tuple[str, ...],
        quarantined: Mapping[str, str] | None = None,
    ) -> RunRow:
        run_id, kind, environment, status, started, finished, error, pid = r
        if (
            status == "running"
            and pid is not None
            and pid != os.getpid()
            and not pid_alive(int(pid))
        ):
            status = "interrupted"
        return RunRow(
            run_id=run_id,
            kind=kind,
            environment=environment,
            status=status,
            started=parse_ts(started),
            finished=parse_ts(finished) if finished else None,
            strategies=strategies,
            error=error,
            quarantined=dict(quarantined or {}),
        )

    def _resolve(self, conn: sqlite3.Connection, run_id: str) -> str:
        if run_id and conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
            return run_id
        matches: list[str] = (
            [
                str(r[0])
                for r in conn.execute(
                    "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id",
                    (len(run_id), run_id),
                )
            ]
            if run_id
            else []
        )
        if not matches:
            raise ConfigError(f"no run '{run_id}' in {self.location}; 'bastion runs' lists them")
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise ConfigError(
                f"run id '{run_id}' is ambiguous in {self.location}: it starts "
                f"{len(matches)} runs ({shown}); give more of it"
            )
        return matches[0]

    def load_run(self, run_id: str, *, details: bool = True) -> RunData:
        """Everything stored for one run (``run_id`` may be a unique prefix); without
        ``details`` its fills and rejected orders are counted, not read."""
        with self._read() as conn:
            run_id = self._resolve(conn, run_id)
            (kind, environment, status, started, finished, version, config, error, pid) = (
                conn.execute(
                    "SELECT kind, environment, status, started, finished, bastion_version, "
                    "config, error, pid FROM runs WHERE run_id = ?",
                    (run_id,),
                ).fetchone()
            )
            strategy_rows = conn.execute(
                "SELECT name, sha256, signer, signer_name, whitelist_version, unsigned, params, "
                "metrics, quarantined FROM run_strategies WHERE run_id = ? ORDER BY rowid",
                (run_id,),
            ).fetchall()
            strategies = [self._strategy(conn, run_id, tuple(r), details) for r in strategy_rows]
            benchmark: list[EquityPoint] = [
                (parse_ts(ts), float("nan") if value is None else float(value))
                for ts, value in conn.execute(
                    "SELECT ts, equity FROM benchmark WHERE run_id = ? ORDER BY ts, rowid",
                    (run_id,),
                )
            ]
        row = self._row(
            (run_id, kind, environment, status, started, finished, error, pid),
            tuple(s.record.name for s in strategies),
            {s.record.name: s.quarantined for s in strategies if s.quarantined},
        )
        info = RunInfo(
            run_id=run_id,
            kind=kind,
            environment=environment,
            started=parse_ts(started),
            bastion_version=version,
            config=json.loads(config),
        )
        return RunData(row=row, info=info, strategies=strategies, benchmark=benchmark)

    @staticmethod
    def _strategy(
        conn: sqlite3.Connection, run_id: str, r: tuple[Any, ...], details: bool = True
    ) -> StrategyRunData:
        name, sha256, signer, signer_name, wl_version, unsigned, params, metrics, quarantined = r
        key = (run_id, name)
        equity: list[EquityPoint] = [
            (parse_ts(ts), float("nan") if value is None else float(value))
            for ts, value in conn.execute(
                "SELECT ts, equity FROM equity WHERE run_id = ? AND strategy = ? "
                "ORDER BY ts, rowid",
                key,
            )
        ]
        positions = [
            Position(
                symbol=symbol,
                quantity=Decimal(quantity),
                avg_price=Decimal(avg_price),
                realized=Decimal(realized),
                mark=None if mark is None else Decimal(mark),
            )
            for symbol, quantity, avg_price, realized, mark in conn.execute(
                "SELECT symbol, quantity, avg_price, realized, mark FROM positions "
                "WHERE run_id = ? AND strategy = ? ORDER BY symbol",
                key,
            )
        ]
        orders = conn.execute(
            "SELECT count(*) FROM orders WHERE run_id = ? AND strategy = ?", key
        ).fetchone()[0]
        if details:
            executions = [
                fill_from_row(row)
                for row in conn.execute(
                    f"SELECT {_FILL_READ} FROM fills WHERE run_id = ? AND strategy = ? "  # noqa: S608
                    "ORDER BY id",
                    key,
                )
            ]
            rejections = [
                RejectedOrder(parse_ts(created), symbol, side, Decimal(quantity), reason)
                for created, symbol, side, quantity, reason in conn.execute(
                    "SELECT created, symbol, side, quantity, reason FROM orders "
                    "WHERE run_id = ? AND strategy = ? AND status = ? "
                    "ORDER BY created, client_order_id",
                    (*key, OrderStatus.REJECTED.value),
                )
            ]
            fills, rejected = len(executions), len(rejections)
            last_rejection = rejections[-1].reason if rejections else None
        else:  # counted, not read: a run may have millions (the summary needs no more)
            executions, rejections = [], []
            fills = conn.execute(
                "SELECT count(*) FROM fills WHERE run_id = ? AND strategy = ?", key
            ).fetchone()[0]
            rejected = conn.execute(
                "SELECT count(*) FROM orders WHERE run_id = ? AND strategy = ? AND status = ?",
                (*key, OrderStatus.REJECTED.value),
            ).fetchone()[0]
            latest = conn.execute(
                "SELECT reason FROM orders WHERE run_id = ? AND strategy = ? AND status = ? "
                "ORDER BY created DESC, client_order_id DESC LIMIT 1",
                (*key, OrderStatus.REJECTED.value),
            ).fetchone()
            last_rejection = latest[0] if latest else None
        period_returns = {
            str(period): None if value is None else float(value)
            for period, value in conn.execute(
                "SELECT period, value FROM period_returns WHERE run_id = ? AND strategy = ? "
                "ORDER BY period",
                key,
            )
        }
        record = StrategyRecord(
            name=name,
            sha256=sha256,
            signer=signer,
            signer_name=signer_name,
            whitelist_version=wl_version,
            unsigned=bool(unsigned),
            params=json.loads(params),
        )
        return StrategyRunData(
            record=record,
            metrics=json.loads(metrics) if metrics else {},
            equity=equity,
            positions=positions,
            orders=int(orders),
            fills=int(fills),
            quarantined=quarantined,
            rejected=int(rejected),
            last_rejection=last_rejection,
            executions=executions,
            rejections=rejections,
            period_returns=period_returns,
        )

    # ----------------------------------------------------------------- bars

    def write_bars(self, interval: str, bars: Iterable[Bar]) -> int:
        """Upsert ``bars`` as bars of ``interval`` by ``(symbol, interval, ts)``, in
        batches of :data:`BAR_BATCH` inside one transaction: all of them or, if
        iterating ``bars`` or writing fails, none.  Returns how many were given."""
        written = 0
        with self._write() as conn:
            batch: list[tuple[str | None, ...]] = []
            for bar in bars:
                batch.append(
                    (
                        bar.symbol,
                        interval,
                        _ts(bar.ts),
                        _bar_num(bar.open),
                        _bar_num(bar.high),
                        _bar_num(bar.low),
                        _bar_num(bar.close),
                        None if bar.volume is None else _bar_num(bar.volume),
                    )
                )
                if len(batch) >= BAR_BATCH:
                    conn.executemany(_BAR_UPSERT_SQL, batch)
                    written += len(batch)
                    batch.clear()
            conn.executemany(_BAR_UPSERT_SQL, batch)
            written += len(batch)
        return written

    def read_bars(
        self,
        symbols: Sequence[str],
        interval: str,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Bar]:
        """Stored bars of ``interval`` for ``symbols`` with ``start <= ts <= end``, by
        ``(ts, symbol)``: each symbol read :data:`BAR_BATCH` rows at a time in key order,
        merged; no lock or transaction is held between batches."""
        if isinstance(symbols, str):
            symbols = (symbols,)
        low = _TS_MIN if start is None else _ts(_aware(start))
        high = _TS_MAX if end is None else _ts(_aware(end))
        streams = [self._bar_stream(symbol, interval, low, high) for symbol in sorted(set(symbols))]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=_bar_key)

    def _bar_stream(self, symbol: str, interval: str, low: str, high: str) -> Iterator[Bar]:
        """One symbol's bars in ``[low, high]`` (ts text), a batch per query."""
        inclusive = _BAR_READ_SQL.replace("ts > ?", "ts >= ?", 1)
        sql = inclusive
        while True:
            with self._read() as conn:
                rows = conn.execute(sql, (symbol, interval, low, high, BAR_BATCH)).fetchall()
            for ts, open_, high_, low_, close, volume in rows:
                yield Bar(
                    symbol,
                    parse_ts(ts),
                    float(open_),
                    float(high_),
                    float(low_),
                    float(close),
                    None if volume is None else float(volume),
                )
            if len(rows) < BAR_BATCH:
                return
            low, sql = rows[-1][0], _BAR_READ_SQL

    def bar_series(self) -> list[BarSeries]:
        """Every stored ``(symbol, interval)`` series with its first and last ts and count."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT symbol, interval, min(ts), max(ts), count(*) FROM bars "
                "GROUP BY symbol, interval ORDER BY symbol, interval"
            ).fetchall()
        return [
            BarSeries(str(symbol), str(interval), parse_ts(first), parse_ts(last), int(count))
            for symbol, interval, first, last, count in rows
        ]

    # ----------------------------------------------------------------- closing

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                try:
                    self._end_batch()
                finally:
                    self._closed = True
                    self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.location!r})"
