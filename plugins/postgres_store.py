"""Built-in storage on PostgreSQL (psycopg 3): one database shared by several kernels.

``--storage postgresql://USER@HOST:PORT/DB`` (or ``postgres://…``, or ``storage =
"postgresql://…"`` in an environment of ``bastion.toml``) stores runs, orders,
fills, results and the audit log in PostgreSQL, so kernels on different
machines — one per account or strategy group — write to one database.  The
password comes from libpq's own places (``PGPASSWORD``, ``~/.pgpass``, a
``PGSERVICE``) or from the secret ``postgres_password`` (environment variable
``BASTION_SECRET_POSTGRES_PASSWORD``, the secrets file, or a secrets plugin),
never from the URL in a log line: :attr:`PostgresStore.location` is the URL
without a password.

Schema
    The tables and columns of the ``sqlite`` store (see docs/reference/files.md):
    money and quantities as exact decimal text, timestamps as ISO-8601 UTC text,
    except the time series (``bars``, ``equity``, ``benchmark``) whose ``ts`` is
    ``timestamptz`` so that, where the TimescaleDB extension is available, they
    become hypertables; bar prices are ``double precision`` (they are floats,
    and read back as the same floats).  Rows are handed to the kernel's audit code
    (:mod:`bastion.audit`) in the same encoding as SQLite's, so a run's digest is
    computed the same way whichever store holds it.

Concurrency
    Every append to the audit log first locks the one row of ``audit_seq``
    (``SELECT … FOR UPDATE``), so the appends of all kernels are serialised and
    each one links to the record committed before it; ``audit_seq`` remembers the
    highest id ever written, so records cut from the end are noticed.  Triggers
    refuse any ``UPDATE``, ``DELETE`` or ``TRUNCATE`` of the log.  ``bastion audit
    verify`` reads one ``REPEATABLE READ`` snapshot.

Durability
    Paper and live writes commit before they return (an order is stored before
    it is sent).  A backtest's orders and fills are written behind, in batches of
    :data:`BATCH_WRITES` rows in one transaction, and all of them before anything
    is read and before the run finishes.
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from bastion import BastionError, ConfigError, FormatError, __version__, audit, hookimpl
from bastion.audit import AuditView
from bastion.interfaces import (
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
from bastion.models import Bar, Fill, Order, OrderStatus, Position
from bastion.storage import (
    check_order_status,
    decimal_text,
    duplicate_order,
    fill_from_row,
    optional_decimal_text,
    parse_ts,
    pid_alive,
    stored_order_from_row,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["BAR_BATCH", "BATCH_WRITES", "SCHEMA_VERSION", "PostgresStore", "connection_url"]

SCHEMA_VERSION: Final = 4  # as SQLite's: 4 added the bar store
BAR_BATCH: Final = 2000
BATCH_WRITES: Final = 2000
PASSWORD_SECRET: Final = "postgres_password"  # noqa: S105 - the secret's name

_FINAL: Final = frozenset({OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED})
_FINISHED: Final = frozenset({"completed", "failed", "interrupted"})
# One advisory lock key for creating or upgrading the schema (any constant will do).
_SCHEMA_LOCK: Final = 0x62617374696F6E


@hookimpl
def register_storages() -> list[Offer[PostgresStore]]:
    options = (
        "//USER@HOST:PORT/DATABASE (a libpq URL; the password from PGPASSWORD, ~/.pgpass "
        "or the secret postgres_password)"
    )
    return [
        Offer(
            scheme,
            functools.partial(_open, scheme),
            description="a PostgreSQL database shared by several kernels (psycopg 3)",
            options=options,
        )
        for scheme in ("postgresql", "postgres")
    ]


def connection_url(scheme: str, spec: str) -> str:
    """The libpq URL of ``--storage SCHEME:SPEC``; a one-line error when it is not one."""
    url = f"{scheme}:{spec}"
    parts = urlsplit(url)
    if not spec.startswith("//") or not parts.path.strip("/"):
        raise ConfigError(
            f"--storage {_without_password(url)}: not a PostgreSQL URL; write "
            f"{scheme}://USER@HOST:PORT/DATABASE"
        )
    return url


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _open(scheme: str, spec: str, context: PluginContext) -> PostgresStore:
    url = connection_url(scheme, spec)
    password = None
    if urlsplit(url).password is None and context.secrets is not None:
        password = context.secrets.get(PASSWORD_SECRET)
    return PostgresStore.open(url, password=password)


# --------------------------------------------------------------------------- encoding

_ts = audit.format_ts
_dumps = audit.canonical_json


def _now() -> str:
    return _ts(datetime.now(UTC))


def _aware(ts: datetime) -> datetime:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"timestamps must be timezone-aware, got {ts!r}")
    return ts


def _float(value: float | None) -> float:
    return float("nan") if value is None else float(value)


_ORDER_COLUMNS: Final = (
    "client_order_id, run_id, strategy, strategy_sha256, signer, symbol, side, quantity, type, "
    "limit_price, stop_price, tag, created, liquidation, status, reason, filled"
)
_FILL_COLUMNS: Final = (
    "run_id, client_order_id, strategy, strategy_sha256, signer, symbol, side, quantity, "
    "price, commission, ts, exec_id, broker_order_id"
)
_FILL_READ: Final = (
    "client_order_id, symbol, side, quantity, price, commission, ts, exec_id, broker_order_id"
)
_ORDER_INSERT: Final = (
    f"INSERT INTO orders ({_ORDER_COLUMNS}, updated) "  # noqa: S608 - constant names
    f"VALUES ({', '.join(['%s'] * 18)})"
)
_FILL_INSERT: Final = (
    f"INSERT INTO fills ({_FILL_COLUMNS}) VALUES ({', '.join(['%s'] * 13)}) RETURNING id"  # noqa: S608
)
_BAR_UPSERT: Final = (
    "INSERT INTO bars (symbol, interval, ts, open, high, low, close, volume) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (symbol, interval, ts) DO UPDATE "
    "SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, "
    "close = EXCLUDED.close, volume = EXCLUDED.volume"
)
_STATUS_AT: Final = 14  # index of status (then reason, filled) in an order row


# --------------------------------------------------------------------------- schema

_BARS_TABLE: Final = """CREATE TABLE bars (
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    open DOUBLE PRECISION NOT NULL,
    high DOUBLE PRECISION NOT NULL,
    low DOUBLE PRECISION NOT NULL,
    close DOUBLE PRECISION NOT NULL,
    volume DOUBLE PRECISION,
    PRIMARY KEY (symbol, interval, ts)
)"""

_SCHEMA: Final = (
    """CREATE TABLE bastion_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    environment TEXT NOT NULL,
    status TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    bastion_version TEXT NOT NULL,
    config TEXT NOT NULL,
    error TEXT,
    pid INTEGER,
    host TEXT,
    seq BIGINT GENERATED ALWAYS AS IDENTITY
)""",
    """CREATE TABLE run_strategies (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    signer TEXT,
    signer_name TEXT,
    whitelist_version INTEGER,
    unsigned INTEGER NOT NULL,
    params TEXT NOT NULL,
    metrics TEXT,
    quarantined TEXT,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (run_id, name)
)""",
    """CREATE TABLE orders (
    client_order_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    strategy TEXT NOT NULL,
    strategy_sha256 TEXT NOT NULL,
    signer TEXT,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity TEXT NOT NULL,
    type TEXT NOT NULL,
    limit_price TEXT,
    stop_price TEXT,
    tag TEXT,
    created TEXT NOT NULL,
    liquidation INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    filled TEXT NOT NULL,
    updated TEXT NOT NULL
)""",
    "CREATE INDEX orders_run ON orders (run_id, strategy)",
    """CREATE TABLE fills (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    client_order_id TEXT NOT NULL REFERENCES orders (client_order_id),
    strategy TEXT NOT NULL,
    strategy_sha256 TEXT NOT NULL,
    signer TEXT,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity TEXT NOT NULL,
    price TEXT NOT NULL,
    commission TEXT NOT NULL,
    ts TEXT NOT NULL,
    exec_id TEXT UNIQUE,
    broker_order_id TEXT
)""",
    "CREATE INDEX fills_run ON fills (run_id, strategy)",
    "CREATE INDEX fills_order ON fills (client_order_id)",
    """CREATE TABLE positions (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    strategy TEXT NOT NULL,
    symbol TEXT NOT NULL,
    quantity TEXT NOT NULL,
    avg_price TEXT NOT NULL,
    realized TEXT NOT NULL,
    mark TEXT,
    PRIMARY KEY (run_id, strategy, symbol)
)""",
    """CREATE TABLE equity (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    strategy TEXT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    equity DOUBLE PRECISION,
    id BIGINT GENERATED ALWAYS AS IDENTITY
)""",
    "CREATE INDEX equity_run ON equity (run_id, strategy, ts)",
    """CREATE TABLE benchmark (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    ts TIMESTAMPTZ NOT NULL,
    equity DOUBLE PRECISION,
    id BIGINT GENERATED ALWAYS AS IDENTITY
)""",
    "CREATE INDEX benchmark_run ON benchmark (run_id, ts)",
    """CREATE TABLE period_returns (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    strategy TEXT NOT NULL,
    period TEXT NOT NULL,
    value DOUBLE PRECISION,
    PRIMARY KEY (run_id, strategy, period)
)""",
    _BARS_TABLE,
    """CREATE TABLE audit (
    id BIGINT PRIMARY KEY,
    ts TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
)""",
    """CREATE TABLE audit_seq (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq BIGINT NOT NULL
)""",
    "INSERT INTO audit_seq VALUES (1, 0)",
    """CREATE FUNCTION bastion_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.id <= (SELECT coalesce(max(id), 0) FROM audit) THEN
            RAISE EXCEPTION 'the audit log is append-only: new records must come last';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only: records cannot be changed or removed (%)',
        TG_OP;
END $$""",
    """CREATE TRIGGER audit_guard BEFORE INSERT OR UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION bastion_audit_guard()""",
    """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION bastion_audit_guard()""",
    """CREATE FUNCTION bastion_audit_seq_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.seq >= OLD.seq AND NEW.one = OLD.one THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit sequence only grows (%)', TG_OP;
END $$""",
    """CREATE TRIGGER audit_seq_guard BEFORE UPDATE OR DELETE ON audit_seq
    FOR EACH ROW EXECUTE FUNCTION bastion_audit_seq_guard()""",
    """CREATE TRIGGER audit_seq_no_truncate BEFORE TRUNCATE ON audit_seq
    FOR EACH STATEMENT EXECUTE FUNCTION bastion_audit_seq_guard()""",
)

#: Tables that become TimescaleDB hypertables (on ``ts``) where the extension exists.
HYPERTABLES: Final = ("bars", "equity", "benchmark")


class _AuditView:
    """What :func:`bastion.audit.verify` reads, inside one REPEATABLE READ snapshot."""

    _RUN_FIELDS: Final = (
        "kind, environment, status, started, finished, bastion_version, config, error"
    )
    _STRATEGY_FIELDS: Final = "sha256, signer, signer_name, whitelist_version, unsigned"
    #: Columns stored as timestamptz here, handed to the digest as the text SQLite stores.
    _TIMESTAMPS: Final = {("equity", "ts"), ("benchmark", "ts")}

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def records(self) -> Iterator[audit.AuditRecord]:
        with self._conn.cursor(name="bastion_audit_records") as cursor:
            cursor.itersize = 5000
            cursor.execute("SELECT id, ts, event, payload, prev_hash, hash FROM audit ORDER BY id")
            for row in cursor:
                yield audit.AuditRecord(*row)

    def highest_id(self) -> int:
        row = self._conn.execute("SELECT seq FROM audit_seq WHERE one = 1").fetchone()
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
        """The run's rows, streamed through a server-side cursor (the caller holds a
        transaction), timestamps as the text SQLite stores."""
        names = columns.split(", ")
        stamps = [i for i, name in enumerate(names) if (table, name) in self._TIMESTAMPS]
        with self._conn.cursor(name=f"bastion_rows_{table}") as cursor:
            cursor.itersize = 5000
            cursor.execute(
                f"SELECT {columns} FROM {table} WHERE run_id = %s ORDER BY {order}",  # noqa: S608
                (run_id,),
            )
            for row in cursor:
                if stamps:
                    values = list(row)
                    for i in stamps:
                        values[i] = _ts(values[i])
                    row = tuple(values)
                yield tuple(row)


# --------------------------------------------------------------------------- the store


class PostgresStore:
    """The ``postgresql`` store (see the module docstring).  Create with :meth:`open`."""

    def __init__(self, url: str, conn: psycopg.Connection[Any]) -> None:
        self.location = _without_password(url)
        self.timescale = False
        self._conn = conn
        self._lock = threading.RLock()
        self._closed = False
        self._host = socket.gethostname()
        self._batch_run: str | None = None
        self._pending_orders: dict[str, list[Any]] = {}
        self._pending_fills: list[tuple[Any, ...]] = []

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, url: str, *, password: str | None = None) -> PostgresStore:
        """Connect to ``url`` and create (or upgrade) the schema if it is not there."""
        import psycopg

        shown = _without_password(url)
        extra: dict[str, Any] = {"password": password} if password else {}
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10, **extra)
        except psycopg.Error as exc:
            raise BastionError(
                f"cannot connect to {shown}: {_first_line(exc)}; check the URL, that the "
                "server runs and accepts you (password: PGPASSWORD, ~/.pgpass or the secret "
                f"{PASSWORD_SECRET})"
            ) from None
        store = cls(url, conn)
        try:
            conn.execute("SET TIME ZONE 'UTC'")
            store._prepare()
        except BastionError:
            conn.close()
            raise
        except psycopg.Error as exc:
            conn.close()
            raise BastionError(f"cannot use {shown}: {_first_line(exc)}") from None
        return store

    def _prepare(self) -> None:
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            tables = {
                str(row[0])
                for row in self._conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
            }
            if "bastion_meta" not in tables:
                if tables & {"runs", "orders", "audit"}:
                    raise FormatError(
                        f"{self.location} has tables named like Bastion's but no Bastion "
                        "schema version; use an empty database"
                    )
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                self._conn.execute(
                    "INSERT INTO bastion_meta VALUES ('schema_version', %s)",
                    (str(SCHEMA_VERSION),),
                )
                self._make_hypertables()
            row = self._conn.execute(
                "SELECT value FROM bastion_meta WHERE key = 'schema_version'"
            ).fetchone()
            version = int(row[0]) if row else 0
            if version < 4:  # schema 4 added the bar store
                self._conn.execute(_BARS_TABLE)
                self._conn.execute(
                    "UPDATE bastion_meta SET value = %s WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
                version = SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise FormatError(
                    f"{self.location} uses storage schema {version}, but Bastion {__version__} "
                    f"understands schema {SCHEMA_VERSION} at most; upgrade Bastion to read it"
                )
            self.timescale = bool(
                self._conn.execute(
                    "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
                ).fetchone()[0]  # type: ignore[index]
            )

    def _make_hypertables(self) -> None:
        """Where TimescaleDB can be had, the time series become hypertables."""
        available = self._conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
        if not available or not available[0]:
            return
        self._conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        for table in HYPERTABLES:
            self._conn.execute(
                "SELECT create_hypertable(%s, 'ts', if_not_exists => TRUE, migrate_data => TRUE)",
                (table,),
            )

    # ----------------------------------------------------------------- transactions

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        """One committed transaction (the batch's buffered rows go first)."""
        with self._lock:
            self._check_open()
            self._write_pending()
            with self._conn.transaction():
                yield self._conn

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection[Any]]:
        """One REPEATABLE READ snapshot for several SELECTs (buffered rows written first)."""
        import psycopg

        with self._lock:
            self._check_open()
            self._write_pending()
            self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            try:
                with self._conn.transaction():
                    yield self._conn
            finally:
                self._conn.isolation_level = None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def _write_pending(self) -> None:
        """Insert the backtest's buffered order and fill rows in one transaction."""
        if not (self._pending_orders or self._pending_fills):
            return
        import psycopg

        updated = _now()
        orders = [(*row, updated) for row in self._pending_orders.values()]
        fills = [row for row in self._pending_fills]
        self._pending_orders = {}
        self._pending_fills = []
        try:
            with self._conn.transaction(), self._conn.cursor() as cursor:
                cursor.executemany(_ORDER_INSERT, orders)
                cursor.executemany(_FILL_INSERT.removesuffix(" RETURNING id"), fills)
        except psycopg.errors.IntegrityError as exc:
            raise ValueError(
                f"{self.location}: {_first_line(exc)} while writing {len(orders)} order(s) and "
                f"{len(fills)} fill(s) of run {orders[0][1] if orders else '?'}; an order id "
                "was already stored (ids are never reused). Those rows were dropped: "
                "mark the run failed"
            ) from None

    def _buffered(self) -> None:
        if len(self._pending_orders) + len(self._pending_fills) >= BATCH_WRITES:
            self._write_pending()

    # ----------------------------------------------------------------- audit

    def _append_audit(self, conn: psycopg.Connection[Any], event: str, payload: Any) -> None:
        """Add one record to the chain inside the caller's transaction.  The row lock on
        ``audit_seq`` serialises appends across every connection and process."""
        row = conn.execute("SELECT seq FROM audit_seq WHERE one = 1 FOR UPDATE").fetchone()
        seq = int(row[0]) if row else 0
        last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        last_id, last_hash = (int(last[0]), str(last[1])) if last else (0, None)
        record = audit.seal(max(seq, last_id), last_hash, event, payload)
        conn.execute(
            "INSERT INTO audit (id, ts, event, payload, prev_hash, hash) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (record.id, record.ts, record.event, record.payload, record.prev_hash, record.hash),
        )
        conn.execute("UPDATE audit_seq SET seq = %s WHERE one = 1", (record.id,))

    def audit(self, event: str, payload: Mapping[str, Any]) -> None:
        """Append a record now, committed."""
        with self._write() as conn:
            self._append_audit(conn, event, payload)

    @contextmanager
    def audit_view(self) -> Iterator[AuditView]:
        """One REPEATABLE READ snapshot, for :func:`bastion.audit.verify`."""
        with self._read() as conn:
            yield _AuditView(conn)

    # ----------------------------------------------------------------- runs

    def begin_run(self, run: RunInfo, strategies: Sequence[StrategyRecord]) -> None:
        """Store the run (``running``, this host and pid) and its strategies."""
        import psycopg

        names = [s.name for s in strategies]
        if len(set(names)) != len(names):
            raise ValueError(f"run {run.run_id}: strategy names are not unique: {names}")
        pid = os.getpid()
        try:
            with self._write() as conn, conn.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO runs (run_id, kind, environment, status, started, finished, "
                    "bastion_version, config, error, pid, host) "
                    "VALUES (%s, %s, %s, 'running', %s, NULL, %s, %s, NULL, %s, %s)",
                    (
                        run.run_id,
                        run.kind,
                        run.environment,
                        _ts(run.started),
                        run.bastion_version,
                        _dumps(dict(run.config)),
                        pid,
                        self._host,
                    ),
                )
                cursor.executemany(
                    "INSERT INTO run_strategies (run_id, name, sha256, signer, signer_name, "
                    "whitelist_version, unsigned, params) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            run.run_id,
                            s.name,
                            s.sha256,
                            s.signer,
                            s.signer_name,
                            s.whitelist_version,
                            int(s.unsigned),
                            _dumps(dict(s.params)),
                        )
                        for s in strategies
                    ],
                )
                self._append_audit(
                    conn, "run_started", audit.run_started_payload(run, strategies, pid)
                )
        except psycopg.errors.UniqueViolation:
            raise ValueError(f"run {run.run_id!r} is already stored in {self.location}") from None
        with self._lock:
            if run.kind == "backtest" and self._batch_run is None:
                self._batch_run = run.run_id

    def _end_batch(self, run_id: str | None = None) -> None:
        with self._lock:
            if run_id is not None and run_id != self._batch_run:
                return
            self._batch_run = None
            self._write_pending()

    def finish_run(self, run_id: str, status: str, error: str | None) -> None:
        """Close the run; everything stored for it is committed when this returns."""
        if status not in _FINISHED:
            raise ValueError(f"a run finishes as one of {sorted(_FINISHED)}, not {status!r}")
        self._end_batch(run_id)
        finished = _now()
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = %s, finished = %s, error = %s "
                "WHERE run_id = %s AND status IN ('running', 'stopped')",
                (status, finished, error, run_id),
            )
            if not cursor.rowcount:
                found = conn.execute(
                    "SELECT status FROM runs WHERE run_id = %s", (run_id,)
                ).fetchone()
                if found is None:
                    raise ValueError(f"no run {run_id!r} in {self.location}")
                raise ValueError(f"run {run_id!r} is already finished ({found[0]})")
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM orders WHERE run_id = %s), "
                "(SELECT count(*) FROM fills WHERE run_id = %s)",
                (run_id, run_id),
            ).fetchone()
            assert counts is not None
            self._append_audit(
                conn,
                "run_finished",
                audit.run_finished_payload(
                    run_id,
                    status,
                    error,
                    finished,
                    (int(counts[0]), int(counts[1])),
                    functools.partial(_AuditView(conn).rows, run_id),
                ),
            )

    def stop_run(self, run_id: str, reason: str) -> None:
        """End a paper or live run whose orders still work at the broker: ``stopped``,
        with no run_finished record (a later run's reconciliation finishes it)."""
        self._end_batch(run_id)
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = 'stopped' WHERE run_id = %s AND status = 'running'",
                (run_id,),
            )
            if not cursor.rowcount:
                raise ValueError(f"no running run {run_id!r} in {self.location}")
            self._append_audit(conn, "run_stopped", {"run_id": run_id, "reason": reason})

    # ----------------------------------------------------------------- orders and fills

    def record_order(self, run_id: str, order: Order, status: str, reason: str | None) -> None:
        """Store a new order before it is submitted (paper and live: committed and
        audited on return; a backtest: written behind, covered by the run's digest)."""
        import psycopg

        check_order_status(status)
        intent = order.intent
        values = [
            order.client_order_id,
            run_id,
            order.strategy,
            order.strategy_sha256,
            order.signer,
            intent.symbol,
            intent.side.value,
            decimal_text(intent.quantity),
            intent.type.value,
            optional_decimal_text(intent.limit_price),
            optional_decimal_text(intent.stop_price),
            intent.tag,
            _ts(order.created),
            int(order.liquidation),
            status,
            reason,
            "0",
        ]
        cid = order.client_order_id
        with self._lock:
            if run_id == self._batch_run:
                # One already written fails the batch's INSERT (its primary key); no
                # set of every id of the run is kept (a long run has millions).
                if cid in self._pending_orders:
                    raise duplicate_order(cid)
                self._pending_orders[cid] = values
                self._buffered()
                return
        try:
            with self._write() as conn:
                conn.execute(_ORDER_INSERT, (*values, _now()))
                payload = dict(zip(_ORDER_COLUMNS.split(", "), values, strict=True))
                del payload["filled"]
                payload["liquidation"] = order.liquidation
                self._append_audit(conn, "order", payload)
        except psycopg.errors.UniqueViolation:
            raise duplicate_order(cid) from None
        except psycopg.errors.ForeignKeyViolation:
            raise ValueError(f"no run {run_id!r} in {self.location}") from None

    def update_order(
        self, run_id: str, client_order_id: str, status: str, reason: str | None, filled: Decimal
    ) -> None:
        """Change an order's status; a final one is audited (outside a backtest)."""
        check_order_status(status)
        with self._lock:
            row = self._pending_orders.get(client_order_id)
            if row is not None and row[1] == run_id:
                row[_STATUS_AT : _STATUS_AT + 3] = [status, reason, decimal_text(filled)]
                return
            batched = run_id == self._batch_run
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE orders SET status = %s, reason = %s, filled = %s, updated = %s "
                "WHERE client_order_id = %s AND run_id = %s",
                (status, reason, decimal_text(filled), _now(), client_order_id, run_id),
            )
            if not cursor.rowcount:
                raise ValueError(f"run {run_id!r} has no order {client_order_id!r}")
            if status in _FINAL and not batched:
                self._append_audit(
                    conn,
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
        """Store one execution, naming the strategy's SHA-256 and signer."""
        import psycopg

        cid = order.client_order_id
        if fill.order_id != cid:
            raise ValueError(f"fill for order {fill.order_id!r} recorded against order {cid!r}")
        values = (
            run_id,
            cid,
            order.strategy,
            order.strategy_sha256,
            order.signer,
            fill.symbol,
            fill.side.value,
            decimal_text(fill.quantity),
            decimal_text(fill.price),
            decimal_text(fill.commission),
            _ts(fill.ts),
            fill.exec_id,
            fill.broker_order_id,
        )
        with self._lock:
            if run_id == self._batch_run:
                if cid not in self._pending_orders and self._order_run(cid) != run_id:
                    raise ValueError(f"run {run_id!r} has no order {cid!r}")
                self._pending_fills.append(values)
                self._buffered()
                return
        try:
            with self._write() as conn:
                owner = conn.execute(
                    "SELECT run_id FROM orders WHERE client_order_id = %s", (cid,)
                ).fetchone()
                if owner is None or owner[0] != run_id:
                    raise ValueError(f"run {run_id!r} has no order {cid!r}")
                inserted = conn.execute(_FILL_INSERT, values).fetchone()
                assert inserted is not None
                row = dict(zip(_FILL_COLUMNS.split(", "), values, strict=True))
                self._append_audit(conn, "fill", {"fill_id": int(inserted[0]), **row})
        except psycopg.errors.UniqueViolation:
            raise ValueError(
                f"execution {fill.exec_id!r} is already stored (order {cid!r}); "
                "a broker's execution is booked once"
            ) from None

    def _order_run(self, client_order_id: str) -> str | None:
        found = self._conn.execute(
            "SELECT run_id FROM orders WHERE client_order_id = %s", (client_order_id,)
        ).fetchone()
        return None if found is None else str(found[0])

    # ----------------------------------------------------------------- results

    def record_equity(self, run_id: str, strategy: str, points: Sequence[EquityPoint]) -> None:
        """Append equity points (already down-sampled by the engine)."""
        with self._write() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO equity (run_id, strategy, ts, equity) VALUES (%s, %s, %s, %s)",
                [(run_id, strategy, _aware(ts), float(value)) for ts, value in points],
            )

    def record_benchmark(self, run_id: str, points: Sequence[EquityPoint]) -> None:
        """Store the run's buy-and-hold benchmark curve (already down-sampled)."""
        with self._write() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO benchmark (run_id, ts, equity) VALUES (%s, %s, %s)",
                [(run_id, _aware(ts), float(value)) for ts, value in points],
            )

    def record_period_returns(
        self, run_id: str, strategy: str, returns: Mapping[str, float | None]
    ) -> None:
        """Store a strategy's calendar-month and calendar-year returns."""
        with self._write() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO period_returns (run_id, strategy, period, value) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (run_id, strategy, period) "
                "DO UPDATE SET value = EXCLUDED.value",
                [(run_id, strategy, p, v) for p, v in sorted(returns.items())],
            )

    def record_positions(self, run_id: str, strategy: str, positions: Sequence[Position]) -> None:
        """Replace the strategy's stored end-of-run positions with ``positions``."""
        with self._write() as conn, conn.cursor() as cursor:
            cursor.execute(
                "DELETE FROM positions WHERE run_id = %s AND strategy = %s", (run_id, strategy)
            )
            cursor.executemany(
                "INSERT INTO positions (run_id, strategy, symbol, quantity, avg_price, "
                "realized, mark) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        run_id,
                        strategy,
                        p.symbol,
                        decimal_text(p.quantity),
                        decimal_text(p.avg_price),
                        decimal_text(p.realized),
                        optional_decimal_text(p.mark),
                    )
                    for p in positions
                ],
            )

    def record_result(
        self,
        run_id: str,
        strategy: str,
        metrics: Mapping[str, float | int | None],
        quarantined: str | None,
    ) -> None:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE run_strategies SET metrics = %s, quarantined = %s "
                "WHERE run_id = %s AND name = %s",
                (_dumps(dict(metrics)), quarantined, run_id, strategy),
            )
            if not cursor.rowcount:
                raise ValueError(f"run {run_id!r} has no strategy {strategy!r}")

    # ----------------------------------------------------------------- reconciliation

    def unsettled_runs(self, kind: str) -> list[tuple[str, str]]:
        """Runs of ``kind`` a restart must reconcile, oldest first: ``stopped`` ones,
        and ``running`` ones of this host whose process is gone (another machine's
        process cannot be looked at from here: its run stays running)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT run_id, status, pid, host FROM runs WHERE kind = %s "
                "AND status IN ('running', 'stopped') ORDER BY started, seq",
                (kind,),
            ).fetchall()
        return [
            (str(run_id), str(status))
            for run_id, status, pid, host in rows
            if status == "stopped" or self._gone(pid, host)
        ]

    def _gone(self, pid: int | None, host: str | None) -> bool:
        return (
            pid is not None
            and host == self._host
            and pid != os.getpid()
            and not pid_alive(int(pid))
        )

    def open_orders(self, run_id: str) -> list[StoredOrder]:
        """The run's orders that are not filled, rejected or cancelled."""
        finals = tuple(s.value for s in _FINAL)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT client_order_id, strategy, strategy_sha256, signer, symbol, side, "
                "quantity, type, limit_price, stop_price, tag, created, liquidation, status, "
                "filled FROM orders WHERE run_id = %s AND status NOT IN (%s, %s, %s) "
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
                "JOIN runs r ON r.run_id = f.run_id WHERE r.kind = %s ORDER BY f.ts, f.id",
                (kind,),
            ).fetchall()
        return [(str(row[0]), fill_from_row(row[1:])) for row in rows]

    # ----------------------------------------------------------------- reading

    def list_runs(self) -> list[RunRow]:
        """Every run, newest first; a ``running`` run of this host whose process is gone
        is ``interrupted``."""
        with self._read() as conn:
            names: dict[str, list[str]] = {}
            stopped: dict[str, dict[str, str]] = {}
            for run_id, name, quarantined in conn.execute(
                "SELECT run_id, name, quarantined FROM run_strategies ORDER BY seq"
            ):
                names.setdefault(run_id, []).append(name)
                if quarantined:
                    stopped.setdefault(run_id, {})[name] = quarantined
            rows = conn.execute(
                "SELECT run_id, kind, environment, status, started, finished, error, pid, host "
                "FROM runs ORDER BY started DESC, seq DESC"
            ).fetchall()
        return [self._row(r, tuple(names.get(r[0], ())), stopped.get(r[0], {})) for r in rows]

    def _row(
        self,
        r: Sequence[Any],
        strategies: tuple[str, ...],
        quarantined: Mapping[str, str] | None = None,
    ) -> RunRow:
        run_id, kind, environment, status, started, finished, error, pid, host = r
        if status == "running" and self._gone(pid, host):
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

    def _resolve(self, conn: psycopg.Connection[Any], run_id: str) -> str:
        if run_id and conn.execute("SELECT 1 FROM runs WHERE run_id = %s", (run_id,)).fetchone():
            return run_id
        matches = (
            [
                str(r[0])
                for r in conn.execute(
                    "SELECT run_id FROM runs WHERE starts_with(run_id, %s) ORDER BY run_id",
                    (run_id,),
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
            run = conn.execute(
                "SELECT kind, environment, status, started, finished, bastion_version, "
                "config, error, pid, host FROM runs WHERE run_id = %s",
                (run_id,),
            ).fetchone()
            assert run is not None
            kind, environment, status, started, finished, version, config, error, pid, host = run
            strategy_rows = conn.execute(
                "SELECT name, sha256, signer, signer_name, whitelist_version, unsigned, params, "
                "metrics, quarantined FROM run_strategies WHERE run_id = %s ORDER BY seq",
                (run_id,),
            ).fetchall()
            strategies = [self._strategy(conn, run_id, r, details) for r in strategy_rows]
            benchmark: list[EquityPoint] = [
                (ts.astimezone(UTC), _float(value))
                for ts, value in conn.execute(
                    "SELECT ts, equity FROM benchmark WHERE run_id = %s ORDER BY ts, id",
                    (run_id,),
                )
            ]
        row = self._row(
            (run_id, kind, environment, status, started, finished, error, pid, host),
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
        conn: psycopg.Connection[Any], run_id: str, r: Sequence[Any], details: bool = True
    ) -> StrategyRunData:
        name, sha256, signer, signer_name, wl_version, unsigned, params, metrics, quarantined = r
        key = (run_id, name)
        equity: list[EquityPoint] = [
            (ts.astimezone(UTC), _float(value))
            for ts, value in conn.execute(
                "SELECT ts, equity FROM equity WHERE run_id = %s AND strategy = %s ORDER BY ts, id",
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
                "WHERE run_id = %s AND strategy = %s ORDER BY symbol",
                key,
            )
        ]
        counted = conn.execute(
            "SELECT count(*) FROM orders WHERE run_id = %s AND strategy = %s", key
        ).fetchone()
        if details:
            executions = [
                fill_from_row(row)
                for row in conn.execute(
                    f"SELECT {_FILL_READ} FROM fills WHERE run_id = %s AND strategy = %s "  # noqa: S608
                    "ORDER BY id",
                    key,
                )
            ]
            rejections = [
                RejectedOrder(parse_ts(created), symbol, side, Decimal(quantity), reason)
                for created, symbol, side, quantity, reason in conn.execute(
                    "SELECT created, symbol, side, quantity, reason FROM orders "
                    "WHERE run_id = %s AND strategy = %s AND status = %s "
                    "ORDER BY created, client_order_id",
                    (*key, OrderStatus.REJECTED.value),
                )
            ]
            fills, rejected = len(executions), len(rejections)
            last_rejection = rejections[-1].reason if rejections else None
        else:  # counted, not read: a run may have millions (the summary needs no more)
            executions, rejections = [], []
            fills = _count(
                conn, "SELECT count(*) FROM fills WHERE run_id = %s AND strategy = %s", key
            )
            rejected = _count(
                conn,
                "SELECT count(*) FROM orders WHERE run_id = %s AND strategy = %s AND status = %s",
                (*key, OrderStatus.REJECTED.value),
            )
            latest = conn.execute(
                "SELECT reason FROM orders WHERE run_id = %s AND strategy = %s AND status = %s "
                "ORDER BY created DESC, client_order_id DESC LIMIT 1",
                (*key, OrderStatus.REJECTED.value),
            ).fetchone()
            last_rejection = latest[0] if latest else None
        period_returns = {
            str(period): None if value is None else float(value)
            for period, value in conn.execute(
                "SELECT period, value FROM period_returns WHERE run_id = %s AND strategy = %s "
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
            orders=int(counted[0]) if counted else 0,
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
        with self._write() as conn, conn.cursor() as cursor:
            batch: list[tuple[Any, ...]] = []
            for bar in bars:
                batch.append(
                    (bar.symbol, interval, bar.ts, bar.open, bar.high, bar.low, bar.close,
                     bar.volume)
                )  # fmt: skip
                if len(batch) >= BAR_BATCH:
                    cursor.executemany(_BAR_UPSERT, batch)
                    written += len(batch)
                    batch.clear()
            if batch:
                cursor.executemany(_BAR_UPSERT, batch)
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
        ``(ts, symbol)``: each symbol read :data:`BAR_BATCH` rows at a time along the
        primary key, merged; no transaction is held between batches."""
        if isinstance(symbols, str):
            symbols = (symbols,)
        low = None if start is None else _aware(start)
        high = None if end is None else _aware(end)
        streams = [self._bar_stream(symbol, interval, low, high) for symbol in sorted(set(symbols))]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=lambda bar: (bar.ts, bar.symbol))

    def _bar_stream(
        self, symbol: str, interval: str, low: datetime | None, high: datetime | None
    ) -> Iterator[Bar]:
        after: datetime | None = None
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    "SELECT ts, open, high, low, close, volume FROM bars "
                    "WHERE symbol = %s AND interval = %s "
                    "AND (%s::timestamptz IS NULL OR ts >= %s) "
                    "AND (%s::timestamptz IS NULL OR ts <= %s) "
                    "AND (%s::timestamptz IS NULL OR ts > %s) ORDER BY ts LIMIT %s",
                    (symbol, interval, low, low, high, high, after, after, BAR_BATCH),
                ).fetchall()
            for ts, open_, high_, low_, close, volume in rows:
                yield Bar(symbol, ts, open_, high_, low_, close, volume)
            if len(rows) < BAR_BATCH:
                return
            after = rows[-1][0]

    def bar_series(self) -> list[BarSeries]:
        """Every stored ``(symbol, interval)`` series with its first and last ts and count."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT symbol, interval, min(ts), max(ts), count(*) FROM bars "
                "GROUP BY symbol, interval ORDER BY symbol, interval"
            ).fetchall()
        return [
            BarSeries(str(symbol), str(interval), first.astimezone(UTC), last.astimezone(UTC),
                      int(count))
            for symbol, interval, first, last, count in rows
        ]  # fmt: skip

    # ----------------------------------------------------------------- closing

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._end_batch()
            finally:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r})"


def _count(conn: psycopg.Connection[Any], query: Any, params: Sequence[Any]) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
