"""The storage conformance suite (``bastion.testing.StoreConformance``) run against the
built-in ``sqlite`` store: a plugin's store passes the same tests."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from bastion.audit import AuditRecord
from bastion.interfaces import Store
from bastion.plugins.sqlite_store import SQLiteStore
from bastion.testing import StoreConformance


class TestSQLiteStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = SQLiteStore.open(tmp_path / "data")
        yield store
        store.close()

    def reopen(self, store: Store) -> Store:
        store.close()
        return SQLiteStore.open(Path(store.location).parent)


# --------------------------------------------------------------------------- the suite bites


class Flawed:
    """The SQLite store with one flaw, everything else passed through."""

    def __init__(self, store: SQLiteStore, flaw: str) -> None:
        self._store = store
        self._flaw = flaw
        if flaw == "offers delete":
            self.delete_run = lambda run_id: None

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def load_run(self, run_id: str, *, details: bool = True) -> object:
        data = self._store.load_run(run_id, details=details)
        if self._flaw == "naive times":
            started = data.info.started.replace(tzinfo=None)
            return attrs.evolve(data, info=attrs.evolve(data.info, started=started))
        return data

    def record_order(self, run_id: str, *args: object) -> None:
        try:
            self._store.record_order(run_id, *args)  # type: ignore[arg-type]
        except ValueError:
            if self._flaw != "ignores unknown runs":
                raise

    @contextlib.contextmanager
    def audit_view(self) -> Iterator[object]:
        with self._store.audit_view() as view:
            if self._flaw != "own hashes":
                yield view
                return

            class Rehashed:
                def __getattr__(self, name: str) -> object:
                    return getattr(view, name)

                def records(self) -> Iterator[AuditRecord]:
                    for record in view.records():
                        yield attrs.evolve(
                            record, hash=hashlib.sha256(record.payload.encode()).hexdigest()
                        )

            yield Rehashed()


@pytest.mark.parametrize(
    ("flaw", "failing", "args"),
    [
        ("naive times", "test_a_run_reads_back_exactly", ("paper",)),
        ("ignores unknown runs", "test_unknown_runs_orders_and_strategies_are_refused", ("paper",)),
        ("own hashes", "test_the_audit_chain_is_the_kernels", ("backtest",)),
        ("offers delete", "test_nothing_offers_to_delete_or_rewrite", ()),
        ("forgets on reopening", "test_everything_survives_reopening", ("paper",)),
    ],
)
def test_the_suite_fails_a_store_that_breaks_the_contract(
    tmp_path: Path, flaw: str, failing: str, args: tuple[str, ...]
) -> None:
    """Each flaw makes its test fail with an AssertionError; without it the test passes."""

    class Suite(TestSQLiteStore):
        def reopen(self, store: Store) -> Store:
            store.close()
            if flaw == "forgets on reopening":
                return SQLiteStore.open(tmp_path / "elsewhere")
            return Flawed(SQLiteStore.open(Path(store.location).parent), flaw)  # type: ignore[return-value]

    for broken, folder in ((True, "broken"), (False, "sound")):
        store = SQLiteStore.open(tmp_path / folder)
        subject = Flawed(store, flaw if broken else "")
        suite = Suite()
        suite._reopened = []
        try:
            if broken:
                with pytest.raises(AssertionError):
                    getattr(suite, failing)(subject, *args)
            else:
                if flaw == "forgets on reopening":
                    continue
                getattr(suite, failing)(subject, *args)
        finally:
            store.close()
            for other in suite._reopened:
                other.close()
