"""The built-in ``sqlite`` store: exact round trips, durability, and the hash-chained audit log."""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pluggy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion import BastionError, ConfigError, FormatError, audit, hookspecs
from bastion.audit import GENESIS_HASH, run_digest
from bastion.audit import record_hash as audit_hash
from bastion.interfaces import PluginContext, RunInfo, Store, StrategyRecord
from bastion.models import Fill, Order, OrderIntent, OrderStatus, OrderType, Position, Side
from bastion.plugins import sqlite_store
from bastion.plugins.sqlite_store import SQLiteStore

T0 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
SHA_A = "a" * 64
SHA_B = "b" * 64


def run_info(run_id: str = "20240301-143000-abcd", kind: str = "paper", **kw: Any) -> RunInfo:
    defaults: dict[str, Any] = {
        "run_id": run_id,
        "kind": kind,
        "environment": "development",
        "started": T0,
        "bastion_version": "0.1.0",
        "config": {"source": "csv:data", "broker": "sim", "cash": "100000.00", "symbols": ["X"]},
    }
    defaults.update(kw)
    return RunInfo(**defaults)


SIGNED = StrategyRecord(
    name="momentum.py",
    sha256=SHA_A,
    signer="RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3",
    signer_name="alice",
    whitelist_version=4,
    unsigned=False,
    params={"fast": 10, "slow": 30, "threshold": 0.25},
)
UNSIGNED = StrategyRecord(
    name="scratch.py",
    sha256=SHA_B,
    signer=None,
    signer_name=None,
    whitelist_version=None,
    unsigned=True,
    params={},
)


def make_order(
    coid: str,
    strategy: StrategyRecord = SIGNED,
    *,
    side: str = "buy",
    quantity: str = "10",
    order_type: OrderType = OrderType.MARKET,
    limit: str | None = None,
    stop: str | None = None,
    minutes: int = 0,
) -> Order:
    intent = OrderIntent(
        symbol="X",
        side=Side(side),
        quantity=Decimal(quantity),
        type=order_type,
        limit_price=None if limit is None else Decimal(limit),
        stop_price=None if stop is None else Decimal(stop),
        tag="entry",
    )
    return Order(
        client_order_id=coid,
        strategy=strategy.name,
        strategy_sha256=strategy.sha256,
        signer=strategy.signer,
        intent=intent,
        created=T0 + timedelta(minutes=minutes),
    )


def make_fill(order: Order, quantity: str, price: str, commission: str = "0.35") -> Fill:
    return Fill(
        order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side,
        quantity=Decimal(quantity),
        price=Decimal(price),
        commission=Decimal(commission),
        ts=order.created + timedelta(minutes=1),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore.open(tmp_path / "data")
    yield s
    s.close()


def raw(store: SQLiteStore) -> sqlite3.Connection:
    """A second, independent connection to the same file (what another process would see)."""
    return sqlite3.connect(store.location)


def audit_rows(store: SQLiteStore) -> list[tuple[Any, ...]]:
    with raw(store) as conn:
        rows = conn.execute(
            "SELECT id, ts, event, payload, prev_hash, hash FROM audit ORDER BY id"
        ).fetchall()
    conn.close()
    return rows


def tamper(store: SQLiteStore, *statements: str) -> None:
    """Run SQL through a raw connection with the append-only triggers dropped."""
    conn = raw(store)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    conn.close()


def small_run(store: SQLiteStore) -> None:
    """One run: 2 orders (one filled, one cancelled), 1 fill: 6 audit records."""
    store.begin_run(run_info(), [SIGNED])  # 1 run_started
    filled = make_order("o-1")
    store.record_order("20240301-143000-abcd", filled, "pending", None)  # 2 order
    store.record_fill("20240301-143000-abcd", make_fill(filled, "10", "101.5"), filled)  # 3
    store.update_order("20240301-143000-abcd", "o-1", "filled", None, Decimal("10"))  # 4
    cancelled = make_order("o-2", minutes=5)
    store.record_order("20240301-143000-abcd", cancelled, "pending", None)  # 5
    store.update_order("20240301-143000-abcd", "o-2", "cancelled", "end of run", Decimal(0))  # 6
    store.finish_run("20240301-143000-abcd", "completed", None)  # 7


# --------------------------------------------------------------------------- plugin


def test_plugin_offers_sqlite_storage_through_the_hook(tmp_path: Path) -> None:
    """``register_storages`` validates against the hookspec and offers ``sqlite``, whose
    factory opens bastion.db in the context's data directory and takes no options."""
    pm = pluggy.PluginManager("bastion")
    pm.add_hookspecs(hookspecs)
    pm.register(sqlite_store)
    [[offer]] = pm.hook.register_storages()
    assert offer.name == "sqlite"
    context = PluginContext("development", tmp_path / "env" / "data")
    with pytest.raises(ConfigError, match="sqlite takes no options"):
        offer.create("x.db", context)
    assert not (tmp_path / "env").exists()
    s = offer.create("", context)
    try:
        assert isinstance(s, Store)
        assert s.location == str(tmp_path / "env" / "data" / "bastion.db")
        assert (tmp_path / "env" / "data").stat().st_mode & 0o777 == 0o700
        assert Path(s.location).stat().st_mode & 0o077 == 0
    finally:
        s.close()


def test_database_is_in_wal_mode_with_foreign_keys_enforced(store: SQLiteStore) -> None:
    """The file is in WAL mode; rows referring to unknown runs or orders are refused."""
    conn = raw(store)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_store.SCHEMA_VERSION
    conn.close()
    with pytest.raises(ValueError, match="no run 'ghost'"):
        store.record_order("ghost", make_order("o-1"), "pending", None)
    store.begin_run(run_info(), [SIGNED])
    order = make_order("o-unknown")
    with pytest.raises(ValueError, match="has no order 'o-unknown'"):
        store.record_fill("20240301-143000-abcd", make_fill(order, "1", "2"), order)


# --------------------------------------------------------------------------- round trip


def test_a_run_reads_back_exactly_as_it_was_written(store: SQLiteStore) -> None:
    """begin → orders → fills → equity → positions → result → finish; load_run returns it all,
    decimals exact (trailing zeros and tiny quantities kept), times as UTC datetimes."""
    info = run_info(started=datetime(2024, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5))))
    run_id = info.run_id
    store.begin_run(info, [SIGNED, UNSIGNED])

    limit = make_order("o-1", order_type=OrderType.LIMIT, limit="101.2500", quantity="0.00000001")
    stop = make_order("o-2", side="sell", order_type=OrderType.STOP, stop="99.10", minutes=3)
    scratch = make_order("o-3", UNSIGNED, quantity="3", minutes=4)
    for order in (limit, stop, scratch):
        store.record_order(run_id, order, "pending", None)
    store.update_order(run_id, "o-1", "accepted", None, Decimal(0))
    store.record_fill(run_id, make_fill(limit, "0.00000001", "101.2500", "0.000"), limit)
    store.update_order(run_id, "o-1", "filled", None, Decimal("0.00000001"))
    store.record_fill(run_id, make_fill(scratch, "1", "100.10"), scratch)
    store.record_fill(run_id, make_fill(scratch, "2", "100.20"), scratch)
    store.update_order(run_id, "o-3", "filled", None, Decimal("3"))
    store.update_order(run_id, "o-2", "rejected", "risk: max position", Decimal(0))

    equity = [(T0 + timedelta(days=i), 100000.0 + i * 12.5) for i in range(50)]
    store.record_equity(run_id, SIGNED.name, equity[:20])
    store.record_equity(run_id, SIGNED.name, equity[20:])
    store.record_equity(run_id, UNSIGNED.name, [(T0, 5000.0)])
    first = [Position("X", Decimal("1"), Decimal("1"), Decimal("0"))]
    store.record_positions(run_id, SIGNED.name, first)
    positions = [
        Position("X", Decimal("0.00000001"), Decimal("101.2500"), Decimal("0.00")),
        Position("Y", Decimal("-25"), Decimal("7.125"), Decimal("-13.370")),
    ]
    store.record_positions(run_id, SIGNED.name, positions)  # replaces the first snapshot
    metrics: dict[str, float | int | None] = {"sharpe": 1.375, "trades": 2, "sortino": None}
    store.record_result(run_id, SIGNED.name, metrics, None)
    store.record_result(run_id, UNSIGNED.name, {"trades": 1}, "loss limit: -5% in one day")
    store.finish_run(run_id, "completed", None)

    data = store.load_run(run_id)
    assert data.info == info
    assert data.info.started.tzinfo == UTC
    assert data.info.config == info.config
    assert data.row.status == "completed"
    assert data.row.finished is not None and data.row.finished >= data.row.started
    assert data.row.strategies == ("momentum.py", "scratch.py")
    assert data.row.error is None

    signed, unsigned = data.strategies
    assert signed.record == SIGNED
    assert unsigned.record == UNSIGNED
    assert signed.metrics == metrics
    assert signed.equity == equity
    assert all(ts.tzinfo == UTC for ts, _ in signed.equity)
    assert list(signed.positions) == positions
    assert [str(p.avg_price) for p in signed.positions] == ["101.2500", "7.125"]
    assert str(signed.positions[1].realized) == "-13.370"
    assert (signed.orders, signed.fills, signed.quarantined) == (2, 1, None)
    assert unsigned.metrics == {"trades": 1}
    assert list(unsigned.equity) == [(T0, 5000.0)]
    assert list(unsigned.positions) == []
    assert (unsigned.orders, unsigned.fills) == (1, 2)
    assert unsigned.quarantined == "loss limit: -5% in one day"

    conn = raw(store)
    order_row = conn.execute(
        "SELECT quantity, limit_price, stop_price, status, filled, type, created "
        "FROM orders WHERE client_order_id = 'o-1'"
    ).fetchone()
    assert order_row == (
        "0.00000001",
        "101.2500",
        None,
        "filled",
        "0.00000001",
        "limit",
        "2024-03-01T14:30:00.000000Z",
    )
    assert conn.execute(
        "SELECT status, reason, stop_price FROM orders WHERE client_order_id = 'o-2'"
    ).fetchone() == ("rejected", "risk: max position", "99.10")
    assert conn.execute("SELECT price, commission FROM fills ORDER BY id").fetchall() == [
        ("101.2500", "0.000"),
        ("100.10", "0.35"),
        ("100.20", "0.35"),
    ]
    conn.close()


def test_finished_run_is_visible_and_failed_runs_keep_their_error(store: SQLiteStore) -> None:
    """finish_run is committed on return: another connection sees the status and the error."""
    store.begin_run(run_info(), [SIGNED])
    store.finish_run("20240301-143000-abcd", "failed", "source: bad bar at data/X.csv:17")
    conn = raw(store)
    row = conn.execute("SELECT status, error, finished FROM runs").fetchone()
    conn.close()
    assert row[:2] == ("failed", "source: bad bar at data/X.csv:17")
    assert row[2].endswith("Z")
    assert store.list_runs()[0].error == "source: bad bar at data/X.csv:17"
    with pytest.raises(ValueError, match="finishes as one of"):
        store.finish_run("20240301-143000-abcd", "done", None)


@pytest.mark.parametrize("kind", ["paper", "live"])
def test_order_row_is_committed_before_record_order_returns(store: SQLiteStore, kind: str) -> None:
    """Right after record_order, an independent connection already reads the order row —
    so the client order id is durable before the caller submits the order."""
    store.begin_run(run_info(kind=kind), [SIGNED])
    store.record_order("20240301-143000-abcd", make_order("coid-42"), "pending", None)
    conn = raw(store)
    row = conn.execute(
        "SELECT run_id, status, quantity FROM orders WHERE client_order_id = 'coid-42'"
    ).fetchone()
    conn.close()
    assert row == ("20240301-143000-abcd", "pending", "10")


def test_a_client_order_id_is_never_stored_twice(store: SQLiteStore) -> None:
    """Recording the same client order id again is refused and leaves the first row intact."""
    store.begin_run(run_info(), [SIGNED])
    store.record_order("20240301-143000-abcd", make_order("dup"), "pending", None)
    with pytest.raises(ValueError, match="'dup' is already stored"):
        store.record_order(
            "20240301-143000-abcd", make_order("dup", quantity="99"), "pending", None
        )
    conn = raw(store)
    assert conn.execute("SELECT quantity FROM orders").fetchall() == [("10",)]
    conn.close()
    assert store.verify_audit().ok


def test_every_order_and_fill_row_names_the_strategy_hash_and_signer(store: SQLiteStore) -> None:
    """Each stored order and fill carries the SHA-256 of the code and the signer key id."""
    run_id = "20240301-143000-abcd"
    store.begin_run(run_info(), [SIGNED, UNSIGNED])
    for i, strategy in enumerate((SIGNED, UNSIGNED, SIGNED)):
        order = make_order(f"o-{i}", strategy, minutes=i)
        store.record_order(run_id, order, "pending", None)
        store.record_fill(run_id, make_fill(order, "10", "100"), order)
    conn = raw(store)
    for table in ("orders", "fills"):
        rows = conn.execute(f"SELECT strategy, strategy_sha256, signer FROM {table}").fetchall()
        assert sorted(rows) == sorted(
            [
                (SIGNED.name, SIGNED.sha256, SIGNED.signer),
                (UNSIGNED.name, UNSIGNED.sha256, None),
                (SIGNED.name, SIGNED.sha256, SIGNED.signer),
            ]
        )
    conn.close()
    payloads = [json.loads(r[3]) for r in audit_rows(store) if r[2] in ("order", "fill")]
    assert len(payloads) == 6
    assert all(p["strategy_sha256"] in (SHA_A, SHA_B) and "signer" in p for p in payloads)


# --------------------------------------------------------------------------- audit log


def test_a_clean_audit_log_verifies_and_records_each_step(store: SQLiteStore) -> None:
    """run start, each order, each fill, each final order status and the run end are audited,
    and an untouched log verifies."""
    small_run(store)
    events = [r[2] for r in audit_rows(store)]
    assert events == [
        "run_started",
        "order",
        "fill",
        "order_status",
        "order",
        "order_status",
        "run_finished",
    ]
    check = store.verify_audit()
    assert (check.ok, check.records, check.first_broken, check.reason) == (True, 7, None, None)


def test_non_final_order_updates_are_not_audited(store: SQLiteStore) -> None:
    """accepted/partial changes (OrderStatus or plain text) update the order row only;
    the audit log is for final states; unknown statuses are refused."""
    store.begin_run(run_info(), [SIGNED])
    store.record_order("20240301-143000-abcd", make_order("o-1"), "pending", None)
    store.update_order("20240301-143000-abcd", "o-1", OrderStatus.ACCEPTED, None, Decimal(0))
    store.update_order("20240301-143000-abcd", "o-1", OrderStatus.PARTIAL, None, Decimal("4"))
    assert [r[2] for r in audit_rows(store)] == ["run_started", "order"]
    conn = raw(store)
    assert conn.execute("SELECT status, filled FROM orders").fetchone() == ("partial", "4")
    conn.close()
    with pytest.raises(ValueError, match="order status must be one of"):
        store.update_order("20240301-143000-abcd", "o-1", "submitted", None, Decimal(0))


def test_audit_chain_format_is_sha256_over_canonical_fields(store: SQLiteStore) -> None:
    """The first record links to 64 zeros; each hash is audit_hash(id, ts, event, payload,
    prev_hash) and each prev_hash is the previous record's hash; payloads are canonical JSON."""
    store.audit("kill_switch", {"z": 1, "a": [Decimal("1.10"), T0], "why": "operator"})
    store.audit("note", {})
    rows = audit_rows(store)
    assert rows[0][4] == GENESIS_HASH
    assert rows[0][3] == '{"a":["1.10","2024-03-01T14:30:00.000000Z"],"why":"operator","z":1}'
    for previous, (rid, ts, event, payload, prev_hash, digest) in zip(
        [None, *rows], rows, strict=False
    ):
        assert digest == audit_hash(rid, ts, event, payload, prev_hash)
        assert prev_hash == (previous[5] if previous else GENESIS_HASH)
    assert [r[0] for r in rows] == [1, 2]


def test_a_changed_payload_is_reported_at_that_record(store: SQLiteStore) -> None:
    """Editing one record's payload (triggers dropped) makes verify name exactly that record."""
    small_run(store)
    tamper(store, """UPDATE audit SET payload = replace(payload, '101.5', '99.5') WHERE id = 3""")
    check = store.verify_audit()
    assert not check.ok
    assert check.first_broken == 3
    assert check.reason == "record 3: hash does not match its contents"
    assert check.records == 7


def test_a_rehashed_record_breaks_the_link_from_the_next(store: SQLiteStore) -> None:
    """Editing a payload and recomputing its hash is caught where the next record links to it."""
    small_run(store)
    rid, ts, event, payload, prev_hash, _ = audit_rows(store)[3]
    assert (rid, event) == (4, "order_status")
    forged = payload.replace('"filled"', '"cancelled"')
    assert forged != payload
    conn = raw(store)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute(
        "UPDATE audit SET payload = ?, hash = ? WHERE id = ?",
        (forged, audit_hash(rid, ts, event, forged, prev_hash), rid),
    )
    conn.commit()
    conn.close()
    check = store.verify_audit()
    assert (check.ok, check.first_broken) == (False, 5)
    assert check.reason == "record 5: prev_hash does not link to record 4"


def test_a_deleted_middle_record_is_reported_as_a_gap(store: SQLiteStore) -> None:
    """Removing a record from the middle makes verify name the gap and the record after it."""
    small_run(store)
    tamper(store, "DELETE FROM audit WHERE id = 4")
    check = store.verify_audit()
    assert (check.ok, check.records, check.first_broken) == (False, 6, 5)
    assert check.reason == "records missing between 3 and 5"


def test_records_cut_from_the_end_are_noticed(store: SQLiteStore) -> None:
    """Truncating the tail is caught (the highest id ever written is remembered), and so is
    appending after a truncation (the next id leaves a gap)."""
    small_run(store)
    tamper(store, "DELETE FROM audit WHERE id > 5")
    check = store.verify_audit()
    assert (check.ok, check.first_broken) == (False, 6)
    assert check.reason == "records missing after 5 (the log reached record 7)"
    store.audit("note", {"after": "truncation"})
    assert audit_rows(store)[-1][0] == 8
    assert store.verify_audit().reason == "records missing between 5 and 8"


def test_sql_cannot_update_delete_or_reorder_audit_records(store: SQLiteStore) -> None:
    """Triggers abort UPDATE, DELETE and out-of-order INSERT on the audit table via plain SQL."""
    small_run(store)
    before = audit_rows(store)
    conn = raw(store)
    for sql in (
        "UPDATE audit SET payload = '{}' WHERE id = 2",
        "DELETE FROM audit WHERE id = 7",
        "DELETE FROM audit",
        "INSERT OR REPLACE INTO audit VALUES (3, 't', 'e', '{}', 'p', 'h')",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
        conn.rollback()
    conn.close()
    assert audit_rows(store) == before
    assert store.verify_audit().ok


def test_the_chain_continues_across_reopening(tmp_path: Path) -> None:
    """Closing and reopening the store appends to the same chain, which still verifies."""
    first = SQLiteStore.open(tmp_path)
    first.audit("one", {"n": 1})
    first.close()
    second = SQLiteStore.open(tmp_path)
    try:
        second.audit("two", {"n": 2})
        check = second.verify_audit()
        assert (check.ok, check.records) == (True, 2)
        rows = audit_rows(second)
        assert rows[1][4] == rows[0][5]
    finally:
        second.close()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
_events = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=12),
        st.dictionaries(st.text(max_size=6), _json_values, max_size=4),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=_events, data=st.data())
def test_any_audit_sequence_verifies_and_any_single_edit_is_pinpointed(
    events: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    """Property: for any sequence of audit events the log verifies; replacing any one record's
    payload with different text makes verify fail at exactly that record."""
    with tempfile.TemporaryDirectory() as tmp:
        s = SQLiteStore.open(Path(tmp))
        try:
            for event, payload in events:
                s.audit(event, payload)
            check = s.verify_audit()
            assert (check.ok, check.records) == (True, len(events))

            victim = data.draw(st.integers(1, len(events)), label="record")
            old = audit_rows(s)[victim - 1][3]
            new = data.draw(
                st.dictionaries(st.text(max_size=6), _json_values, max_size=4)
                .map(lambda d: json.dumps(d, sort_keys=True, separators=(",", ":")))
                .filter(lambda text: text != old),
                label="new payload",
            )
            conn = raw(s)
            conn.execute("DROP TRIGGER audit_no_update")
            conn.execute("UPDATE audit SET payload = ? WHERE id = ?", (new, victim))
            conn.commit()
            conn.close()
            check = s.verify_audit()
            assert not check.ok
            assert check.first_broken == victim
            assert check.reason == f"record {victim}: hash does not match its contents"
        finally:
            s.close()


# --------------------------------------------------------------------------- listing and loading


def test_list_runs_is_newest_first_with_strategy_names(store: SQLiteStore) -> None:
    """list_runs orders by start time, newest first, and names each run's strategies in order."""
    store.begin_run(run_info("old", started=T0), [SIGNED])
    store.begin_run(run_info("new", started=T0 + timedelta(hours=1)), [UNSIGNED, SIGNED])
    store.begin_run(run_info("mid", started=T0 + timedelta(minutes=5)), [])
    store.finish_run("old", "completed", None)
    rows = store.list_runs()
    assert [r.run_id for r in rows] == ["new", "mid", "old"]
    assert rows[0].strategies == ("scratch.py", "momentum.py")
    assert rows[1].strategies == ()
    # still running in this very process: not interrupted
    assert [r.status for r in rows] == ["running", "running", "completed"]


def test_a_running_row_of_a_dead_process_is_reported_interrupted(tmp_path: Path) -> None:
    """A process that dies mid-run leaves a consistent database: its committed orders are
    there, the audit log verifies, and list_runs/load_run report the run as interrupted."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from datetime import UTC, datetime
        from decimal import Decimal
        from pathlib import Path
        from bastion.interfaces import RunInfo, StrategyRecord
        from bastion.models import Order, OrderIntent
        from bastion.plugins.sqlite_store import SQLiteStore

        store = SQLiteStore.open(Path({str(tmp_path)!r}))
        now = datetime(2024, 1, 1, tzinfo=UTC)
        store.begin_run(
            RunInfo("crashed", "paper", "paper", now, "0.1.0", {{}}),
            [StrategyRecord("s.py", "{SHA_A}", None, None, None, True, {{}})],
        )
        intent = OrderIntent("X", "buy", Decimal("5"))
        order = Order("crashed-1", "s.py", "{SHA_A}", None, intent, now)
        store.record_order("crashed", order, "pending", None)
        os._exit(3)  # no finish_run, no close: the process just dies
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True)
    assert done.returncode == 3, done.stderr.decode()
    s = SQLiteStore.open(tmp_path)
    try:
        s.begin_run(run_info("alive"), [SIGNED])
        statuses = {r.run_id: r.status for r in s.list_runs()}
        assert statuses == {"crashed": "interrupted", "alive": "running"}
        data = s.load_run("crashed")
        assert data.row.status == "interrupted"
        assert data.strategies[0].orders == 1
        assert s.verify_audit().ok
    finally:
        s.close()


def test_unknown_and_ambiguous_run_ids_are_one_line_config_errors(store: SQLiteStore) -> None:
    """An unknown id or an ambiguous prefix is a ConfigError naming the database;
    a unique prefix selects the run."""
    store.begin_run(run_info("20240301-aaaa"), [SIGNED])
    store.begin_run(run_info("20240301-abcd"), [SIGNED])
    with pytest.raises(ConfigError) as unknown:
        store.load_run("nope")
    assert str(unknown.value) == f"no run 'nope' in {store.location}; 'bastion runs' lists them"
    with pytest.raises(ConfigError, match="no run ''"):
        store.load_run("")
    with pytest.raises(ConfigError) as ambiguous:
        store.load_run("20240301-a")
    message = str(ambiguous.value)
    assert "ambiguous" in message and store.location in message and "\n" not in message
    assert "20240301-aaaa" in message and "20240301-abcd" in message
    assert store.load_run("20240301-ab").info.run_id == "20240301-abcd"
    assert store.load_run("20240301-aaaa").info.run_id == "20240301-aaaa"
    with pytest.raises(ConfigError, match="no run '20240301-%'"):
        store.load_run("20240301-%")


# --------------------------------------------------------------------------- bad files


def test_a_file_that_is_not_a_database_is_a_format_error(tmp_path: Path) -> None:
    """A bastion.db that is not SQLite is refused with a one-line FormatError naming it."""
    path = tmp_path / "bastion.db"
    path.write_bytes(b"this is a text file, not a database\n" * 50)
    with pytest.raises(FormatError) as caught:
        SQLiteStore.open(tmp_path)
    message = str(caught.value)
    assert str(path) in message and "not a usable SQLite database" in message
    assert "\n" not in message


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A store written by a newer Bastion (higher user_version) is a FormatError, not data loss."""
    SQLiteStore.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "bastion.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(FormatError) as caught:
        SQLiteStore.open(tmp_path)
    assert str(tmp_path / "bastion.db") in str(caught.value)
    assert "schema 99" in str(caught.value)


def test_some_other_sqlite_database_is_refused(tmp_path: Path) -> None:
    """A SQLite file with foreign tables and no Bastion schema version is not taken over."""
    conn = sqlite3.connect(tmp_path / "bastion.db")
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(FormatError, match="not a Bastion store"):
        SQLiteStore.open(tmp_path)
    conn = sqlite3.connect(tmp_path / "bastion.db")
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    conn.close()
    assert names == ["recipes"]


def test_naive_timestamps_are_refused(store: SQLiteStore) -> None:
    """Equity timestamps without a time zone are refused instead of stored ambiguously."""
    store.begin_run(run_info(), [SIGNED])
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record_equity("20240301-143000-abcd", SIGNED.name, [(datetime(2024, 1, 1), 1.0)])
    assert store.load_run("20240301-143000-abcd").strategies[0].equity == []


RUN_ID = run_info().run_id


def test_backtest_writes_are_group_committed_and_durable_at_finish(store: SQLiteStore) -> None:
    """A backtest's order rows are committed in batches, and all of them by finish_run."""
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    order = make_order("o-1")
    store.record_order(RUN_ID, order, "pending", None)
    other = raw(store)
    assert other.execute("SELECT count(*) FROM orders").fetchone()[0] == 0  # not yet committed
    store.update_order(RUN_ID, order.client_order_id, "accepted", None, Decimal(0))
    store.record_fill(RUN_ID, make_fill(order, "10", "101.5"), order)
    store.finish_run(RUN_ID, "completed", None)
    assert other.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
    assert other.execute("SELECT count(*) FROM fills").fetchone()[0] == 1
    assert store.load_run(RUN_ID).row.status == "completed"


def test_backtest_trades_are_audited_by_digest(store: SQLiteStore) -> None:
    """A backtest adds no audit record per order; run_finished carries a digest of them all."""
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    order = make_order("o-1")
    store.record_order(RUN_ID, order, "pending", None)
    store.record_fill(RUN_ID, make_fill(order, "10", "101.5"), order)
    store.update_order(RUN_ID, order.client_order_id, "filled", None, Decimal(10))
    store.finish_run(RUN_ID, "completed", None)
    events = [row[2] for row in audit_rows(store)]
    assert events == ["run_started", "run_finished"]
    assert store.verify_audit().ok


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE fills SET price = '99.5'",
        "UPDATE orders SET quantity = '1000'",
        "DELETE FROM fills",
    ],
)
def test_changed_trades_after_finish_are_detected(store: SQLiteStore, statement: str) -> None:
    """Editing a finished run's orders or fills is named at its run_finished record."""
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    order = make_order("o-1")
    store.record_order(RUN_ID, order, "pending", None)
    store.record_fill(RUN_ID, make_fill(order, "10", "101.5"), order)
    store.finish_run(RUN_ID, "completed", None)
    finished_id = audit_rows(store)[-1][0]
    tamper(store, statement)
    check = store.verify_audit()
    assert not check.ok
    assert check.first_broken == finished_id
    assert check.reason == (
        f"record {finished_id}: the orders, fills, equity, positions or results of run "
        f"{RUN_ID} were changed after the run finished"
    )


# ------------------------------------------------------------------ runs the log vouches for

FINISHED_FORM3 = "the orders, fills, equity, positions or results of run"


def finished_backtest(
    store: SQLiteStore, status: str = "completed", error: str | None = None
) -> int:
    """A backtest of two strategies stored as the engine stores one: trades, then equity,
    positions and results, then run_finished.  Returns the run_finished record's id."""
    store.begin_run(run_info(kind="backtest"), [SIGNED, UNSIGNED])
    order = make_order("o-1")
    store.record_order(RUN_ID, order, "pending", None)
    store.record_fill(RUN_ID, make_fill(order, "10", "101.5"), order)
    store.update_order(RUN_ID, "o-1", "filled", None, Decimal(10))
    for strategy, drift in ((SIGNED, 1.5), (UNSIGNED, -0.25)):
        points = [(T0 + timedelta(days=i), 100_000.0 + drift * i) for i in range(5)]
        store.record_equity(RUN_ID, strategy.name, points)
        store.record_result(
            RUN_ID, strategy.name, {"total_return": drift / 1000, "trades": 1}, None
        )
    store.record_positions(
        RUN_ID, SIGNED.name, [Position("X", Decimal("10"), Decimal("101.5"), Decimal("0"))]
    )
    store.finish_run(RUN_ID, status, error)
    rows = audit_rows(store)
    assert rows[-1][2] == "run_finished"
    assert json.loads(rows[-1][3])["trades_digest_form"] == 5
    assert store.verify_audit().ok
    return int(rows[-1][0])


@pytest.mark.parametrize(
    ("statement", "field"),
    [
        ("UPDATE runs SET status = 'completed', error = NULL", "status"),
        ("UPDATE runs SET error = 'a gentler reason'", "error"),
        ("UPDATE runs SET finished = '2030-01-01T00:00:00.000000Z'", "finished"),
    ],
    ids=["failed-to-completed", "error", "finished-time"],
)
def test_a_finished_runs_status_error_or_end_time_changed_is_detected(
    store: SQLiteStore, statement: str, field: str
) -> None:
    """Turning a failed run into a completed one (or rewording its error, or moving its end)
    fails verify at the run_finished record, naming the run and the field."""
    finished_id = finished_backtest(store, "failed", "source: bad bar at data/X.csv:17")
    tamper(store, statement)
    check = store.verify_audit()
    assert (check.ok, check.first_broken) == (False, finished_id)
    assert check.reason == (
        f"record {finished_id}: run {RUN_ID}'s {field} was changed after it finished"
    )


def test_a_run_that_never_finished_cannot_be_marked_completed(store: SQLiteStore) -> None:
    """A run with no run_finished record (still running, or interrupted) must still say
    running: marking it completed fails verify at its run_started record."""
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    store.close()
    reopened = SQLiteStore.open(Path(store.location).parent)
    try:
        assert reopened.verify_audit().ok
        tamper(reopened, "UPDATE runs SET status = 'completed'")
        check = reopened.verify_audit()
        assert (check.ok, check.first_broken) == (False, 1)
        assert check.reason == (
            f"record 1: run {RUN_ID}'s status was changed to 'completed', but the run never "
            "finished (it has no run_finished record)"
        )
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        (
            f"UPDATE run_strategies SET sha256 = '{'c' * 64}' WHERE name = 'momentum.py'",
            "the sha256 of strategy momentum.py in run {run} was changed after the run started",
        ),
        (
            "UPDATE run_strategies SET signer = 'someone else' WHERE name = 'momentum.py'",
            "the signer of strategy momentum.py in run {run} was changed after the run started",
        ),
        (
            "UPDATE run_strategies SET unsigned = 0 WHERE name = 'scratch.py'",
            "the unsigned of strategy scratch.py in run {run} was changed after the run started",
        ),
        (
            "UPDATE run_strategies SET whitelist_version = 9 WHERE name = 'momentum.py'",
            "the whitelist_version of strategy momentum.py in run {run} "
            "was changed after the run started",
        ),
        (
            "DELETE FROM run_strategies WHERE name = 'scratch.py'",
            "strategy scratch.py of run {run} was removed after the run started",
        ),
        (
            "INSERT INTO run_strategies (run_id, name, sha256, unsigned, params) "
            f"SELECT run_id, 'extra.py', '{'d' * 64}', 0, '{{}}' FROM runs",
            "strategy extra.py was added to run {run} after the run started",
        ),
        ("UPDATE runs SET kind = 'live'", "run {run}'s kind was changed after it started"),
        (
            """UPDATE runs SET config = '{"cash":"1"}'""",
            "run {run}'s config was changed after it started",
        ),
    ],
    ids=["sha256", "signer", "unsigned", "whitelist-version", "removed", "added", "kind", "config"],
)
def test_a_runs_recorded_strategies_or_settings_changed_is_detected(
    store: SQLiteStore, statement: str, reason: str
) -> None:
    """Editing what run_started recorded (a strategy's SHA-256, signer, whitelist version or
    unsigned flag, the strategy list, the run's kind or config) fails verify at record 1,
    naming the run and the strategy."""
    finished_backtest(store)
    tamper(store, statement)
    check = store.verify_audit()
    assert (check.ok, check.first_broken) == (False, 1)
    assert check.reason == "record 1: " + reason.format(run=RUN_ID)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO equity SELECT * FROM equity",
        "UPDATE equity SET equity = equity * 2 "
        "WHERE rowid = (SELECT max(rowid) FROM equity WHERE strategy = 'scratch.py')",
        "DELETE FROM equity WHERE ts = (SELECT max(ts) FROM equity)",
        "UPDATE positions SET quantity = '1000'",
        "DELETE FROM positions",
        """UPDATE run_strategies SET metrics = '{"total_return":0.5,"trades":1}' """
        "WHERE name = 'scratch.py'",
        "UPDATE run_strategies SET quarantined = 'deadline' WHERE name = 'momentum.py'",
        """UPDATE run_strategies SET params = '{"fast":1}' WHERE name = 'momentum.py'""",
    ],
    ids=[
        "equity-doubled",
        "equity-edited",
        "equity-deleted",
        "positions-edited",
        "positions-deleted",
        "metrics",
        "quarantined",
        "params",
    ],
)
def test_changed_results_after_finish_are_detected(store: SQLiteStore, statement: str) -> None:
    """With digest form 3 a finished run's equity rows, positions and strategy results
    (metrics, quarantine, parameters) are covered too: any edit fails verify at its
    run_finished record."""
    finished_id = finished_backtest(store)
    tamper(store, statement)
    check = store.verify_audit()
    assert (check.ok, check.first_broken) == (False, finished_id)
    assert check.reason == (
        f"record {finished_id}: {FINISHED_FORM3} {RUN_ID} were changed after the run finished"
    )


def test_runs_finished_with_the_second_digest_form_still_verify(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run_finished record of digest form 2 (stored before form 3) is checked with that
    form: it verifies, its orders and fills are still covered, its equity (which form 2
    never covered) is not."""
    with monkeypatch.context() as patch:
        patch.setattr(audit, "DIGEST_FORM", 2)
        store.begin_run(run_info(kind="backtest"), [SIGNED])
        order = make_order("o-1")
        store.record_order(RUN_ID, order, "pending", None)
        store.record_fill(RUN_ID, make_fill(order, "10", "101.5"), order)
        store.record_equity(RUN_ID, SIGNED.name, [(T0, 100_000.0)])
        store.finish_run(RUN_ID, "completed", None)
    finished_id, _, _, payload, _, _ = audit_rows(store)[-1]
    assert json.loads(payload)["trades_digest_form"] == 2
    assert audit.DIGEST_FORM == 5
    assert store.verify_audit().ok
    tamper(store, "INSERT INTO equity SELECT * FROM equity")
    assert store.verify_audit().ok
    with store._write() as conn:
        conn.execute("UPDATE fills SET price = '99'")
    check = store.verify_audit()
    assert (check.ok, check.first_broken) == (False, finished_id)
    assert check.reason == (
        f"record {finished_id}: the orders or fills of run {RUN_ID} "
        "were changed after the run finished"
    )


def test_a_digest_form_from_a_newer_version_is_reported_not_misread(store: SQLiteStore) -> None:
    """A run_finished record naming a digest form this version does not know fails verify
    with a reason that says so, rather than calling the run's rows changed."""
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    with store._write():
        store._append_audit(
            "run_finished",
            {"run_id": RUN_ID, "trades_sha256": "0" * 64, "trades_digest_form": 99},
        )
    check = store.verify_audit()
    assert (check.ok, check.first_broken) == (False, 2)
    assert check.reason == (
        f"record 2: run {RUN_ID} has a digest of form 99, which this version of Bastion "
        "cannot check; upgrade Bastion"
    )


def test_a_deleted_run_is_detected(store: SQLiteStore) -> None:
    """Deleting a run's rows altogether (foreign keys off, as the sqlite3 shell has them)
    fails verify at its run_started record."""
    finished_backtest(store)
    tamper(
        store,
        *(
            f"DELETE FROM {table} WHERE run_id = '{RUN_ID}'"
            for table in ("fills", "orders", "equity", "positions", "run_strategies", "runs")
        ),
    )
    check = store.verify_audit()
    assert (check.ok, check.first_broken) == (False, 1)
    assert check.reason == f"record 1: run {RUN_ID} was deleted from the runs table"


# --------------------------------------------------------------------------- backtest write-behind

PAPER_ID = "20240301-143000-paper"
TS_TEXT = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


def select(store: SQLiteStore, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows from a fresh independent connection: only what has been committed."""
    conn = raw(store)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def committed_counts(store: SQLiteStore) -> tuple[int, int]:
    """(orders, fills) another connection sees."""
    return (
        select(store, "SELECT count(*) FROM orders")[0][0],
        select(store, "SELECT count(*) FROM fills")[0][0],
    )


@pytest.fixture
def commit_every(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Set BATCH_WRITES for one test (the batch commits after that many writes)."""

    def set_batch(writes: int) -> None:
        monkeypatch.setattr(sqlite_store, "BATCH_WRITES", writes)

    return set_batch


@pytest.mark.parametrize("flushed", [False, True], ids=["buffered", "flushed"])
def test_backtest_order_updates_reach_the_stored_row(
    store: SQLiteStore, commit_every: Callable[[int], None], flushed: bool
) -> None:
    """update_order on a backtest order, still buffered or already committed, leaves exactly
    the last status, reason and filled in the row; other runs' or unknown ids are refused."""
    if flushed:
        commit_every(1)  # every write commits the batch: updates take the SQL UPDATE path
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    store.record_order(RUN_ID, make_order("o-1"), "pending", None)
    store.record_order(RUN_ID, make_order("o-2", minutes=1), "pending", None)
    assert committed_counts(store) == ((2, 0) if flushed else (0, 0))

    store.update_order(RUN_ID, "o-1", OrderStatus.ACCEPTED, None, Decimal(0))
    store.update_order(RUN_ID, "o-1", OrderStatus.PARTIAL, "thin book", Decimal("4.50"))
    store.update_order(RUN_ID, "o-1", OrderStatus.CANCELLED, "end of run", Decimal("4.50"))
    store.update_order(RUN_ID, "o-2", "rejected", "risk: max position", Decimal(0))
    with pytest.raises(ValueError, match=r"run 'other' has no order 'o-1'"):
        store.update_order("other", "o-1", "filled", None, Decimal(10))
    with pytest.raises(ValueError, match=rf"run '{RUN_ID}' has no order 'ghost'"):
        store.update_order(RUN_ID, "ghost", "filled", None, Decimal(10))
    # A write for another run (even a refused one) commits the open batch before its own.
    assert committed_counts(store) == (2, 0)
    store.finish_run(RUN_ID, "completed", None)

    assert select(
        store, "SELECT client_order_id, status, reason, filled FROM orders ORDER BY 1"
    ) == [
        ("o-1", "cancelled", "end of run", "4.50"),
        ("o-2", "rejected", "risk: max position", "0"),
    ]
    assert [r[2] for r in audit_rows(store)] == ["run_started", "run_finished"]
    assert store.verify_audit().ok


@pytest.mark.parametrize("flushed", [False, True], ids=["buffered", "flushed"])
def test_backtest_refuses_a_reused_client_order_id(
    store: SQLiteStore, commit_every: Callable[[int], None], flushed: bool
) -> None:
    """Within a backtest a client order id is refused the second time, whether the first is
    still buffered (at once) or already written (by the primary key, when the batch is
    written: no set of every id of the run is kept), and only the first row is stored."""
    if flushed:
        commit_every(1)
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    first = make_order("dup")
    store.record_order(RUN_ID, first, "pending", None)
    assert committed_counts(store) == ((1, 0) if flushed else (0, 0))
    with pytest.raises(ValueError, match="already stored"):
        store.record_order(RUN_ID, make_order("dup", quantity="99"), "accepted", None)
    store.record_fill(RUN_ID, make_fill(first, "10", "101.5"), first)
    with pytest.raises(ValueError, match="already stored"):
        store.record_order(RUN_ID, make_order("dup", side="sell", minutes=9), "pending", None)
    store.finish_run(RUN_ID, "completed", None)

    assert select(store, "SELECT client_order_id, quantity, side, status FROM orders") == [
        ("dup", "10", "buy", "pending")
    ]
    assert committed_counts(store) == (1, 1)
    finished = json.loads(audit_rows(store)[-1][3])
    assert (finished["orders"], finished["fills"]) == (1, 1)
    assert store.verify_audit().ok


def test_backtest_fill_for_an_order_the_run_never_recorded_is_refused(
    store: SQLiteStore,
) -> None:
    """A backtest fill must name an order of that run: an unknown id, or one stored by
    another run, is a ValueError naming the run and the order, and nothing is stored."""
    store.begin_run(run_info(PAPER_ID), [SIGNED])
    elsewhere = make_order("p-1")
    store.record_order(PAPER_ID, elsewhere, "filled", None)
    store.finish_run(PAPER_ID, "completed", None)

    store.begin_run(run_info(kind="backtest"), [SIGNED])
    store.record_order(RUN_ID, make_order("o-1"), "pending", None)
    ghost = make_order("o-ghost")
    with pytest.raises(ValueError) as unknown:
        store.record_fill(RUN_ID, make_fill(ghost, "10", "101.5"), ghost)
    assert str(unknown.value) == f"run {RUN_ID!r} has no order 'o-ghost'"
    with pytest.raises(ValueError) as foreign:
        store.record_fill(RUN_ID, make_fill(elsewhere, "10", "101.5"), elsewhere)
    assert str(foreign.value) == f"run {RUN_ID!r} has no order 'p-1'"
    store.finish_run(RUN_ID, "completed", None)

    assert committed_counts(store) == (2, 0)
    assert store.load_run(RUN_ID).strategies[0].fills == 0


def test_reads_through_the_store_see_buffered_backtest_rows(store: SQLiteStore) -> None:
    """load_run, list_runs, verify_audit and _read() see rows still buffered in the batch,
    without committing them; writing goes on normally after such a read."""
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    order = make_order("o-1")
    store.record_order(RUN_ID, order, "pending", None)
    store.record_fill(RUN_ID, make_fill(order, "10", "101.5"), order)
    assert committed_counts(store) == (0, 0)

    data = store.load_run(RUN_ID)
    assert (data.strategies[0].orders, data.strategies[0].fills) == (1, 1)
    with store._read() as conn:
        assert conn.execute("SELECT client_order_id, status FROM orders").fetchall() == [
            ("o-1", "pending")
        ]
        assert conn.execute("SELECT client_order_id, price FROM fills").fetchall() == [
            ("o-1", "101.5")
        ]
    assert [r.run_id for r in store.list_runs()] == [RUN_ID]
    assert store.verify_audit().ok
    assert committed_counts(store) == (0, 0)  # reading did not commit the batch

    store.update_order(RUN_ID, "o-1", "filled", None, Decimal(10))  # now an SQL UPDATE
    later = make_order("o-2", minutes=2)
    store.record_order(RUN_ID, later, "pending", None)
    store.record_fill(RUN_ID, make_fill(later, "3", "102"), later)
    with store._read() as conn:
        assert conn.execute("SELECT count(*) FROM fills").fetchone()[0] == 2
    data = store.load_run(RUN_ID)
    assert (data.strategies[0].orders, data.strategies[0].fills) == (2, 2)
    store.finish_run(RUN_ID, "completed", None)
    assert select(store, "SELECT client_order_id, status, filled FROM orders ORDER BY 1") == [
        ("o-1", "filled", "10"),
        ("o-2", "pending", "0"),
    ]
    assert committed_counts(store) == (2, 2)


def test_buffered_rows_are_committed_when_the_batch_is_full(
    store: SQLiteStore, commit_every: Callable[[int], None]
) -> None:
    """With BATCH_WRITES=3 another connection sees the buffered rows as soon as the third
    write commits the batch, before finish_run; later rows wait for the next commit."""
    commit_every(3)
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    order = make_order("o-1")
    store.record_order(RUN_ID, order, "pending", None)  # 1
    store.record_fill(RUN_ID, make_fill(order, "10", "101.5"), order)  # 2
    assert committed_counts(store) == (0, 0)
    store.update_order(RUN_ID, "o-1", "filled", None, Decimal(10))  # 3: the batch commits
    assert select(store, "SELECT client_order_id, status, filled FROM orders") == [
        ("o-1", "filled", "10")
    ]
    assert select(store, "SELECT client_order_id, quantity, price FROM fills") == [
        ("o-1", "10", "101.5")
    ]
    store.record_order(RUN_ID, make_order("o-2", minutes=1), "pending", None)  # 1
    assert committed_counts(store) == (1, 1)
    assert select(store, "SELECT status FROM runs") == [("running",)]
    store.finish_run(RUN_ID, "completed", None)
    assert committed_counts(store) == (2, 1)


def test_close_commits_the_buffered_rows_of_an_unfinished_backtest(tmp_path: Path) -> None:
    """Closing the store without finish_run still writes and commits the buffered rows."""
    first = SQLiteStore.open(tmp_path)
    first.begin_run(run_info(kind="backtest"), [SIGNED])
    order = make_order("o-1")
    first.record_order(RUN_ID, order, "pending", None)
    first.record_fill(RUN_ID, make_fill(order, "10", "101.5"), order)
    first.update_order(RUN_ID, "o-1", "filled", None, Decimal(10))
    assert committed_counts(first) == (0, 0)
    first.close()
    assert committed_counts(first) == (1, 1)
    second = SQLiteStore.open(tmp_path)
    try:
        strategy = second.load_run(RUN_ID).strategies[0]
        assert (strategy.orders, strategy.fills) == (1, 1)
        assert second.verify_audit().ok
    finally:
        second.close()


def test_buffered_rows_store_the_same_values_as_direct_writes(store: SQLiteStore) -> None:
    """The same orders and fills recorded in a paper run (direct inserts) and in a backtest
    (write-behind executemany) give identical rows, column by column and type by type;
    times are UTC text with microseconds even when given in another time zone."""
    plus_two = timezone(timedelta(hours=2))
    created = datetime(2024, 3, 1, 16, 30, 0, 7, tzinfo=plus_two)  # 14:30:00.000007 UTC

    def trade(run_id: str, prefix: str) -> None:
        limit = attrs.evolve(
            make_order(
                f"{prefix}-1", order_type=OrderType.LIMIT, limit="101.2500", quantity="0.00000001"
            ),
            created=created,
            liquidation=True,
        )
        stop = make_order(
            f"{prefix}-2", UNSIGNED, side="sell", order_type=OrderType.STOP, stop="99.10"
        )
        store.record_order(run_id, limit, OrderStatus.PENDING, "margin call")
        store.record_order(run_id, stop, "pending", None)
        store.record_fill(run_id, make_fill(limit, "0.00000001", "101.2500", "0.000"), limit)
        store.update_order(run_id, limit.client_order_id, OrderStatus.FILLED, None, limit.quantity)
        store.update_order(run_id, stop.client_order_id, "cancelled", "end of run", Decimal("0"))

    store.begin_run(run_info(PAPER_ID), [SIGNED, UNSIGNED])
    trade(PAPER_ID, "p")
    store.finish_run(PAPER_ID, "completed", None)
    store.begin_run(run_info(kind="backtest"), [SIGNED, UNSIGNED])
    trade(RUN_ID, "b")
    store.finish_run(RUN_ID, "completed", None)

    for table, key, skip in (
        ("orders", "client_order_id", {"run_id", "client_order_id", "updated"}),
        ("fills", "id", {"run_id", "client_order_id", "id"}),
    ):
        conn = raw(store)
        conn.row_factory = sqlite3.Row
        names = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        compared = [n for n in names if n not in skip]
        assert len(compared) == len(names) - len(skip)
        columns = ", ".join(f"{n}, typeof({n}) AS {n}_type" for n in compared)
        by_run = {
            run_id: [
                dict(r)
                for r in conn.execute(
                    f"SELECT {columns} FROM {table} WHERE run_id = ? ORDER BY {key}", (run_id,)
                )
            ]
            for run_id in (PAPER_ID, RUN_ID)
        }
        conn.close()
        assert len(by_run[RUN_ID]) == (2 if table == "orders" else 1)
        assert by_run[RUN_ID] == by_run[PAPER_ID], table

    orders = select(
        store,
        "SELECT created, liquidation, status, reason, filled FROM orders "
        "WHERE run_id = ? ORDER BY client_order_id",
        RUN_ID,
    )
    assert orders == [
        ("2024-03-01T14:30:00.000007Z", 1, "filled", None, "0.00000001"),
        ("2024-03-01T14:30:00.000000Z", 0, "cancelled", "end of run", "0"),
    ]
    assert select(store, "SELECT ts FROM fills WHERE run_id = ?", RUN_ID) == [
        ("2024-03-01T14:31:00.000007Z",)
    ]
    for (text,) in select(store, "SELECT created FROM orders UNION ALL SELECT ts FROM fills"):
        assert re.fullmatch(TS_TEXT, text), text


def test_audit_verifies_a_batched_backtest_and_names_it_when_a_fill_changes(
    store: SQLiteStore, commit_every: Callable[[int], None]
) -> None:
    """A backtest written across several batch commits and mid-run reads verifies; changing
    one of its fill prices afterwards fails verify at its run_finished, naming that run."""
    commit_every(4)
    store.begin_run(run_info(PAPER_ID), [SIGNED])
    paper = make_order("p-1")
    store.record_order(PAPER_ID, paper, "pending", None)
    store.record_fill(PAPER_ID, make_fill(paper, "10", "101.5"), paper)
    store.finish_run(PAPER_ID, "completed", None)

    store.begin_run(run_info(kind="backtest"), [SIGNED])
    for i in range(5):
        order = make_order(f"b-{i}", minutes=i)
        store.record_order(RUN_ID, order, "pending", None)
        store.record_fill(RUN_ID, make_fill(order, "10", f"10{i}.25"), order)
        store.update_order(RUN_ID, order.client_order_id, "filled", None, Decimal(10))
        if i == 2:
            assert store.verify_audit().ok  # mid-run: buffered rows written, nothing broken
    store.finish_run(RUN_ID, "completed", None)

    rows = audit_rows(store)
    finished_id, _, event, payload, _, _ = rows[-1]
    assert event == "run_finished"
    assert (json.loads(payload)["orders"], json.loads(payload)["fills"]) == (5, 5)
    check = store.verify_audit()
    assert (check.ok, check.records) == (True, len(rows))

    tamper(store, "UPDATE fills SET price = '103.26' WHERE client_order_id = 'b-3'")
    check = store.verify_audit()
    assert (check.ok, check.first_broken) == (False, finished_id)
    assert check.reason == (
        f"record {finished_id}: the orders, fills, equity, positions or results of run "
        f"{RUN_ID} were changed after the run finished"
    )


def test_rows_of_a_run_outside_the_batch_are_stored_directly(store: SQLiteStore) -> None:
    """With a paper run and a backtest open in one store, only the backtest is batched: the
    paper run's orders, fills and updates take the direct path and both runs' rows are right."""
    store.begin_run(run_info(PAPER_ID), [SIGNED])
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    for run_id, prefix, price in ((PAPER_ID, "p", "101.5"), (RUN_ID, "b", "99.25")):
        order = make_order(f"{prefix}-1")
        store.record_order(run_id, order, "pending", None)
        store.record_fill(run_id, make_fill(order, "4", price), order)
        store.update_order(run_id, order.client_order_id, "partial", None, Decimal(4))
    store.update_order(PAPER_ID, "p-1", "cancelled", "end of day", Decimal(4))
    with pytest.raises(ValueError, match=f"run '{PAPER_ID}' has no order 'b-1'"):
        store.update_order(PAPER_ID, "b-1", "filled", None, Decimal(10))
    with pytest.raises(ValueError, match=f"run '{RUN_ID}' has no order 'p-1'"):
        store.update_order(RUN_ID, "p-1", "filled", None, Decimal(10))
    paper = make_order("p-1")
    with pytest.raises(ValueError, match=f"run '{RUN_ID}' has no order 'p-1'"):
        store.record_fill(RUN_ID, make_fill(paper, "1", "1"), paper)
    store.finish_run(RUN_ID, "completed", None)
    store.finish_run(PAPER_ID, "completed", None)

    assert select(
        store,
        "SELECT client_order_id, run_id, status, reason, filled FROM orders ORDER BY 1",
    ) == [
        ("b-1", RUN_ID, "partial", None, "4"),
        ("p-1", PAPER_ID, "cancelled", "end of day", "4"),
    ]
    assert select(store, "SELECT client_order_id, run_id, price FROM fills ORDER BY 1") == [
        ("b-1", RUN_ID, "99.25"),
        ("p-1", PAPER_ID, "101.5"),
    ]
    assert store.verify_audit().ok


def test_a_paper_order_is_committed_and_audited_while_a_backtest_batch_is_open(
    store: SQLiteStore,
) -> None:
    """A paper run's order is durable and audited on return even with a backtest batch open."""
    store.begin_run(run_info(PAPER_ID), [SIGNED])
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    store.record_order(PAPER_ID, make_order("p-1"), "pending", None)
    assert select(store, "SELECT client_order_id FROM orders") == [("p-1",)]
    assert [r[2] for r in audit_rows(store)][-1] == "order"


def test_a_run_begun_while_a_backtest_batch_is_open_can_record_orders(
    store: SQLiteStore,
) -> None:
    """Beginning a paper run after a backtest commits its run row, and it can record orders."""
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    store.record_order(RUN_ID, make_order("b-1"), "pending", None)
    store.begin_run(run_info(PAPER_ID), [SIGNED])
    store.record_order(PAPER_ID, make_order("p-1"), "pending", None)
    assert select(store, "SELECT run_id FROM runs ORDER BY 1") == [(RUN_ID,), (PAPER_ID,)]
    assert ("p-1",) in select(store, "SELECT client_order_id FROM orders")


def test_a_backtest_reusing_another_runs_order_id_can_still_be_marked_failed(
    tmp_path: Path,
) -> None:
    """Reusing another run's client order id fails the backtest, which can then still be
    finished as failed (keeping the other run's row) and the store closed."""
    s = SQLiteStore.open(tmp_path)
    try:
        s.begin_run(run_info(PAPER_ID), [SIGNED])
        s.record_order(PAPER_ID, make_order("x"), "pending", None)
        s.finish_run(PAPER_ID, "completed", None)
        s.begin_run(run_info(kind="backtest"), [SIGNED])
        s.record_order(RUN_ID, make_order("x", quantity="99"), "pending", None)
        with pytest.raises(ValueError, match=r"an order id was already stored \(ids are never"):
            s.finish_run(RUN_ID, "completed", None)
        s.finish_run(RUN_ID, "failed", "duplicate client order id")
        assert select(s, "SELECT status FROM runs WHERE run_id = ?", RUN_ID) == [("failed",)]
        assert select(s, "SELECT run_id, quantity FROM orders") == [(PAPER_ID, "10")]
        s.close()
    finally:
        s.close()


def test_synchronous_is_full_while_a_paper_run_is_open(store: SQLiteStore) -> None:
    """Commits are fsynced (synchronous FULL) while any paper or live run is open here, and
    relaxed to NORMAL only when every open run is a backtest."""

    def level() -> int:
        return int(store._conn.execute("PRAGMA synchronous").fetchone()[0])

    store.begin_run(run_info(kind="backtest"), [SIGNED])
    assert level() == 1  # NORMAL
    store.begin_run(run_info(PAPER_ID), [SIGNED])
    assert level() == 2  # FULL
    store.finish_run(PAPER_ID, "completed", None)
    assert level() == 1
    store.finish_run(RUN_ID, "completed", None)


def test_runs_finished_with_the_first_digest_form_still_verify(store: SQLiteStore) -> None:
    """A run_finished record without trades_digest_form (stored by an earlier build, which
    hashed each row as a JSON line) is checked with that form, not reported as changed."""
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    order = make_order("o-1")
    store.record_order(RUN_ID, order, "pending", None)
    store.record_fill(RUN_ID, make_fill(order, "10", "101.5"), order)
    store.update_order(RUN_ID, "o-1", "filled", None, Decimal(10))
    with store.audit_view() as view:
        legacy = run_digest(functools.partial(view.rows, RUN_ID), 1)
    with store._write():
        store._append_audit("run_finished", {"run_id": RUN_ID, "trades_sha256": legacy})
    assert store.verify_audit().ok
    with store._write() as conn:
        conn.execute("UPDATE fills SET price = '99'")
    check = store.verify_audit()
    assert not check.ok and RUN_ID in str(check.reason)


def test_a_read_only_store_is_a_one_line_error_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store SQLite can only read (file permissions, or a stale read-only -shm file left
    by an earlier run; simulated with a read-only connection since CI runs as root) refuses
    the first write with a BastionError naming the file and what to make writable."""
    SQLiteStore.open(tmp_path / "data").close()
    real_connect = sqlite3.connect

    def read_only(path: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(f"file:{path}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    store = SQLiteStore.open(tmp_path / "data")
    try:
        assert store.list_runs() == []  # reading still works
        with pytest.raises(BastionError) as caught:
            store.begin_run(RunInfo("r1", "backtest", "development", T0, "t", {}), [])
    finally:
        store.close()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write to {tmp_path / 'data' / 'bastion.db'}: ")
    assert "bastion.db-shm" in message


def test_runs_finished_with_the_third_digest_form_still_verify(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run_finished record of form 3 (schema 1, before fills had execution ids) is
    checked over the fill columns it covered: it verifies, and a changed price fails it."""
    with monkeypatch.context() as patch:
        patch.setattr(audit, "DIGEST_FORM", 3)
        store.begin_run(run_info(kind="backtest"), [SIGNED])
        order = make_order("o-1")
        store.record_order(RUN_ID, order, "pending", None)
        store.record_fill(RUN_ID, make_fill(order, "10", "101.5"), order)
        store.finish_run(RUN_ID, "completed", None)
    finished_id, _, _, payload, _, _ = audit_rows(store)[-1]
    assert json.loads(payload)["trades_digest_form"] == 3
    assert store.verify_audit().ok
    tamper(store, "UPDATE fills SET price = '99'")
    check = store.verify_audit()
    assert (check.ok, check.first_broken) == (False, finished_id)


def test_the_form_4_digest_covers_execution_ids(store: SQLiteStore) -> None:
    """A fill's execution id (what a restart matches the broker's executions by) cannot be
    changed after the run finished without verify noticing."""
    store.begin_run(run_info(kind="paper"), [SIGNED])
    order = make_order("o-1")
    store.record_order(RUN_ID, order, "pending", None)
    fill = attrs.evolve(make_fill(order, "10", "101.5"), exec_id="0001.01", broker_order_id="7")
    store.record_fill(RUN_ID, fill, order)
    store.finish_run(RUN_ID, "completed", None)
    assert store.verify_audit().ok
    tamper(store, "UPDATE fills SET exec_id = '0001.02'")
    assert not store.verify_audit().ok


def test_the_form_5_digest_covers_position_marks(store: SQLiteStore) -> None:
    """The price an open position was last valued at (the report's unrealised P&L) is
    stored exactly, read back, and covered by the run's digest."""
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    held = Position("X", Decimal(10), Decimal("100.5"), Decimal(0), mark=Decimal("103.25"))
    store.record_positions(RUN_ID, SIGNED.name, [held])
    store.finish_run(RUN_ID, "completed", None)
    [position] = store.load_run(RUN_ID).strategies[0].positions
    assert position == held and position.unrealized == Decimal("27.50")
    assert store.verify_audit().ok
    tamper(store, "UPDATE positions SET mark = '104'")
    assert not store.verify_audit().ok


def test_the_benchmark_and_period_returns_round_trip_and_are_covered(
    store: SQLiteStore,
) -> None:
    """The buy-and-hold curve and the calendar-period returns read back as stored and
    are part of the finished run's digest."""
    store.begin_run(run_info(kind="backtest"), [SIGNED])
    store.record_benchmark(RUN_ID, [(T0, 100000.0), (T0 + timedelta(days=1), 101500.25)])
    store.record_period_returns(RUN_ID, SIGNED.name, {"2024-03": 0.0125, "2024": None})
    store.finish_run(RUN_ID, "completed", None)
    run = store.load_run(RUN_ID)
    assert run.benchmark == [(T0, 100000.0), (T0 + timedelta(days=1), 101500.25)]
    assert run.strategies[0].period_returns == {"2024": None, "2024-03": 0.0125}
    assert store.verify_audit().ok
    tamper(store, "UPDATE period_returns SET value = 0.5 WHERE period = '2024-03'")
    assert not store.verify_audit().ok


def test_an_execution_is_stored_once_across_runs(store: SQLiteStore) -> None:
    """Two fills with the same broker execution id: the second is refused with a
    ValueError naming it, whichever run records it."""
    store.begin_run(run_info(kind="paper"), [SIGNED])
    first, second = make_order("o-1"), make_order("o-2")
    for order in (first, second):
        store.record_order(RUN_ID, order, "pending", None)
    store.record_fill(RUN_ID, attrs.evolve(make_fill(first, "10", "100"), exec_id="e1"), first)
    with pytest.raises(ValueError, match="execution 'e1' is already stored"):
        store.record_fill(
            RUN_ID, attrs.evolve(make_fill(second, "10", "100"), exec_id="e1"), second
        )
    assert raw(store).execute("SELECT count(*) FROM fills").fetchone() == (1,)


def test_a_schema_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    """A store written before fills had execution ids (schema 1) opens: the columns and
    their unique index are added, stored rows and the audit chain are untouched."""
    data = tmp_path / "data"
    SQLiteStore.open(data).close()
    conn = sqlite3.connect(data / sqlite_store.DB_NAME)
    conn.execute("DROP INDEX fills_exec_id")
    conn.execute("ALTER TABLE fills DROP COLUMN exec_id")
    conn.execute("ALTER TABLE fills DROP COLUMN broker_order_id")
    conn.execute("ALTER TABLE positions DROP COLUMN mark")
    conn.execute("DROP TABLE benchmark")
    conn.execute("DROP TABLE period_returns")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SQLiteStore.open(data)
    try:
        columns = [r[1] for r in raw(store).execute("PRAGMA table_info(fills)")]
        assert columns[-2:] == ["exec_id", "broker_order_id"]
        positions = [r[1] for r in raw(store).execute("PRAGMA table_info(positions)")]
        assert positions[-1] == "mark"
        tables = {r[0] for r in raw(store).execute("SELECT name FROM sqlite_master")}
        assert {"benchmark", "period_returns"} <= tables
        assert raw(store).execute("PRAGMA user_version").fetchone() == (
            sqlite_store.SCHEMA_VERSION,
        )
        test_an_execution_is_stored_once_across_runs(store)
        assert store.verify_audit().ok
    finally:
        store.close()
