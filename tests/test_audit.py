"""bastion.audit: the kernel seals and verifies the chain; checkpoints anchor it outside."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion import audit
from bastion.audit import AuditRecord, Checkpoints, seal, verify
from bastion.interfaces import RunInfo, StrategyRecord
from bastion.models import Fill, Order, OrderIntent, Side
from bastion.plugins.sqlite_store import SQLiteStore

T0 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
RUN = "20240301-143000-abcd"
STRATEGY = StrategyRecord("s.py", "a" * 64, "ABCDEF0123456789", "alice", 3, False, {"n": 1})


class MemoryView:
    """An audit view over plain lists: verification needs nothing of any database."""

    def __init__(self) -> None:
        self.log: list[AuditRecord] = []
        self.highest = 0
        self.run_rows: dict[str, dict[str, Any]] = {}
        self.strategy_rows: dict[str, dict[str, dict[str, Any]]] = {}
        self.tables: dict[tuple[str, str], list[tuple[object, ...]]] = {}

    def append(self, event: str, payload: dict[str, Any]) -> AuditRecord:
        last = self.log[-1].hash if self.log else None
        record = seal(self.highest, last, event, payload)
        self.log.append(record)
        self.highest = record.id
        return record

    def records(self) -> Iterator[AuditRecord]:
        return iter(list(self.log))

    def highest_id(self) -> int:
        return self.highest

    def last(self) -> AuditRecord | None:
        return self.log[-1] if self.log else None

    def runs(self) -> dict[str, dict[str, Any]]:
        return self.run_rows

    def strategies(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self.strategy_rows

    def rows(self, run_id: str, table: str, columns: str, order: str) -> Sequence[Sequence[object]]:
        return self.tables.get((run_id, table), [])

    @contextmanager
    def audit_view(self) -> Iterator[MemoryView]:
        yield self


def test_seal_chains_records_with_the_documented_hash() -> None:
    """Each record's hash is SHA-256 of compact JSON [id, ts, event, payload, prev_hash];
    the first links to 64 zeros, each later one to the hash before it."""
    view = MemoryView()
    first = view.append("hello", {"b": 2, "a": Decimal("1.50")})
    second = view.append("world", {})
    assert first.prev_hash == audit.GENESIS_HASH and second.prev_hash == first.hash
    assert first.payload == '{"a":"1.50","b":2}'
    text = json.dumps(
        [1, first.ts, "hello", first.payload, "0" * 64], separators=(",", ":"), ensure_ascii=False
    )
    assert first.hash == hashlib.sha256(text.encode()).hexdigest()
    assert (first.id, second.id) == (1, 2)
    assert verify(view).ok


def test_seal_continues_after_the_highest_id_ever_written() -> None:
    """Ids follow the highest ever written, so a cut-off tail leaves a visible gap."""
    view = MemoryView()
    for n in range(3):
        view.append("e", {"n": n})
    del view.log[-1]
    check = verify(view)
    assert not check.ok and check.reason == "records missing after 2 (the log reached record 3)"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: {"payload": r.payload.replace("1", "9")}, "hash does not match its contents"),
        (lambda r: {"prev_hash": "f" * 64}, "prev_hash does not link to record 1"),
    ],
)
def test_a_changed_record_is_found_by_the_kernel(change: Any, reason: str) -> None:
    """verify() recomputes every hash and link itself: a store cannot vouch for its rows."""
    view = MemoryView()
    for n in range(4):
        view.append("e", {"n": n})
    import attrs

    view.log[1] = attrs.evolve(view.log[1], **change(view.log[1]))
    check = verify(view)
    assert (check.ok, check.first_broken, check.records) == (False, 2, 4)
    assert reason in str(check.reason)


def test_run_records_vouch_for_the_runs() -> None:
    """A run's row and digest must match its run_started and run_finished records."""
    view = MemoryView()
    info = RunInfo(RUN, "backtest", "development", T0, "1.0", {"cash": "100"})
    view.append("run_started", audit.run_started_payload(info, [STRATEGY], pid=1))
    view.run_rows[RUN] = {
        "kind": "backtest",
        "environment": "development",
        "status": "completed",
        "started": audit.format_ts(T0),
        "finished": "2024-03-01T15:00:00.000000Z",
        "bastion_version": "1.0",
        "config": '{"cash":"100"}',
        "error": None,
    }
    view.strategy_rows[RUN] = {
        "s.py": {
            "sha256": "a" * 64,
            "signer": "ABCDEF0123456789",
            "signer_name": "alice",
            "whitelist_version": 3,
            "unsigned": 0,
        }
    }
    view.tables[(RUN, "fills")] = [(1, RUN, "o-1", "s.py", "a" * 64, None, "X", "buy", "10")]

    def rows(table: str, columns: str, order: str) -> Sequence[Sequence[object]]:
        return view.rows(RUN, table, columns, order)

    view.append(
        "run_finished",
        audit.run_finished_payload(
            RUN, "completed", None, "2024-03-01T15:00:00.000000Z", (1, 1), rows
        ),
    )
    assert verify(view).ok
    view.tables[(RUN, "fills")] = [(1, RUN, "o-1", "s.py", "a" * 64, None, "X", "buy", "11")]
    check = verify(view)
    assert not check.ok and check.first_broken == 2
    assert f"of run {RUN} were changed after the run finished" in str(check.reason)
    view.tables[(RUN, "fills")] = [(1, RUN, "o-1", "s.py", "a" * 64, None, "X", "buy", "10")]
    view.strategy_rows[RUN]["s.py"]["sha256"] = "b" * 64
    check = verify(view)
    assert not check.ok and "the sha256 of strategy s.py" in str(check.reason)


# --------------------------------------------------------------------------- checkpoints


def _small_run(store: SQLiteStore, price: str = "101.5") -> None:
    store.begin_run(RunInfo(RUN, "backtest", "development", T0, "1.0", {}), [STRATEGY])
    order = Order("o-1", "s.py", "a" * 64, None, OrderIntent("X", Side.BUY, Decimal(10)), T0)
    store.record_order(RUN, order, "pending", None)
    fill = Fill("o-1", "X", Side.BUY, Decimal(10), Decimal(price), Decimal("0.35"), T0)
    store.record_fill(RUN, fill, order)
    store.update_order(RUN, "o-1", "filled", None, Decimal(10))
    store.finish_run(RUN, "completed", None)


def _anchor(store: SQLiteStore, data_dir: Path) -> None:
    with store.audit_view() as view:
        head = view.last()
    assert head is not None
    Checkpoints(data_dir).append(head.id, head.hash, RUN, store.location)


def test_a_database_rewritten_whole_fails_against_its_signed_checkpoint(tmp_path: Path) -> None:
    """Someone who rewrites the whole database — a consistent new chain, digests and all —
    passes the chain check, but not the signed head kept outside the database."""
    store = SQLiteStore.open(tmp_path)
    _small_run(store)
    _anchor(store, tmp_path)
    checkpoints = Checkpoints(tmp_path)
    assert verify(store, checkpoints).ok
    store.close()

    for name in os.listdir(tmp_path):
        if name.startswith("bastion.db"):
            (tmp_path / name).unlink()
    forged = SQLiteStore.open(tmp_path)
    _small_run(forged, price="99.0")  # the same run, a different fill price
    assert verify(forged).ok  # internally consistent
    check = verify(forged, checkpoints)
    assert not check.ok
    assert "no longer has the hash signed after run" in str(check.reason)
    assert "the log was rewritten" in str(check.reason)
    forged.close()


def test_a_truncated_log_misses_its_signed_head(tmp_path: Path) -> None:
    """A database replaced by an older copy (fewer records) no longer holds the signed head."""
    store = SQLiteStore.open(tmp_path)
    store.audit("before", {"n": 1})
    _small_run(store)
    _anchor(store, tmp_path)
    store.close()
    for name in os.listdir(tmp_path):
        if name.startswith("bastion.db"):
            (tmp_path / name).unlink()
    fresh = SQLiteStore.open(tmp_path)
    fresh.audit("before", {"n": 1})
    check = verify(fresh, Checkpoints(tmp_path))
    assert not check.ok and "is no longer in the log" in str(check.reason)
    fresh.close()


def test_checkpoint_lines_are_signed_and_the_key_is_private(tmp_path: Path) -> None:
    """Each line carries an Ed25519 signature by the installation's key (mode 0600); a
    line edited afterwards fails its signature."""
    store = SQLiteStore.open(tmp_path)
    _small_run(store)
    _anchor(store, tmp_path)
    checkpoints = Checkpoints(tmp_path)
    assert checkpoints.key_path.stat().st_mode & 0o777 == 0o600
    assert checkpoints.path.stat().st_mode & 0o777 == 0o600
    [(_, point, problem)] = checkpoints.read()
    assert problem is None and point is not None and point.run_id == RUN
    text = checkpoints.path.read_text()
    entry = json.loads(text)
    entry["checkpoint"]["record"] = 1
    checkpoints.path.write_text(json.dumps(entry) + "\n")
    check = verify(store, checkpoints)
    assert not check.ok and check.reason == f"{audit.CHECKPOINT_FILE} line 1: bad signature"
    store.close()


def test_a_lost_checkpoint_key_is_reported_not_replaced(tmp_path: Path) -> None:
    """Without its key the checkpoints cannot be checked: said so, and no new key is made
    that would vouch for a rewritten history."""
    store = SQLiteStore.open(tmp_path)
    _small_run(store)
    _anchor(store, tmp_path)
    checkpoints = Checkpoints(tmp_path)
    checkpoints.key_path.unlink()
    check = verify(store, checkpoints)
    assert not check.ok and "checkpoints cannot be checked" in str(check.reason)
    assert not checkpoints.key_path.exists()
    store.close()


def test_a_removed_checkpoint_file_is_reported(tmp_path: Path) -> None:
    """Deleting the signed heads along with rewriting the database does not pass: the key
    exists only because a head was signed, so a missing file is itself a finding."""
    store = SQLiteStore.open(tmp_path)
    _small_run(store)
    _anchor(store, tmp_path)
    checkpoints = Checkpoints(tmp_path)
    assert checkpoints.count() == 1 and checkpoints.count(store.location) == 1
    assert checkpoints.count("elsewhere") == 0
    checkpoints.path.unlink()
    check = verify(store, checkpoints)
    assert not check.ok and "signed heads were removed" in str(check.reason)
    store.close()


_JSONABLE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
)


@given(
    tables=st.lists(st.lists(st.lists(_JSONABLE, max_size=4), max_size=6), min_size=5, max_size=5)
)
def test_the_streamed_digest_is_the_documented_one(tables: list[list[list[Any]]]) -> None:
    """run_digest hashes rows as they stream, yet gives exactly the digest documented in
    docs/reference/files.md (each table's name, then all its rows as one compact JSON
    array; form 1 one JSON line per row), computed here the plain way."""
    for form in (1, 2, 5):
        spec = audit.DIGEST_TABLES[form]
        by_table = {table: tables[i % len(tables)] for i, (table, _, _) in enumerate(spec)}
        expected = hashlib.sha256()
        for table, _, _ in spec:
            expected.update(table.encode())
            if form == 1:
                for row in by_table[table]:
                    expected.update(json.dumps(row, separators=(",", ":")).encode() + b"\n")
            else:
                expected.update(json.dumps(by_table[table], separators=(",", ":")).encode())
        streamed = audit.run_digest(lambda table, _c, _o, rows=by_table: iter(rows[table]), form)
        assert streamed == expected.hexdigest()
