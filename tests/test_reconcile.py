"""Start-up reconciliation (bastion._reconcile): the store's unsettled orders against what
a real broker reports, here the IBKR plugin on the real ib_async client talking to the
fake TWS on 127.0.0.1.  Earlier runs are written through the real SQLite store; a
"killed" run is one whose recorded process is gone, as after SIGKILL (the kill -9
scenario with the kernel as a real subprocess is in test_ibkr.py)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bastion import ConfigError
from bastion._backtest import _run_lock
from bastion._reconcile import BLOCKS_FILE, Blocks, reconcile, snapshot
from bastion.interfaces import BrokerOrder, RunInfo, StrategyRecord
from bastion.models import AccountSnapshot, Fill, Order, OrderIntent
from bastion.plugins import ibkr
from bastion.plugins.sim import SimBroker
from bastion.plugins.sqlite_store import SQLiteStore

from .conftest import WS
from .fake_tws import FakeTWS, never_fill
from .test_ibkr import context

ZERO = Decimal(0)
EMPTY = AccountSnapshot(ZERO, ZERO, {}, {}, ZERO, ZERO)
SHA = "a" * 64


@pytest.fixture
def fake() -> Iterator[FakeTWS]:
    with FakeTWS() as gateway:
        gateway.add_stock("AAPL")
        gateway.add_stock("MSFT")
        gateway.set_price("AAPL", 100.0)
        gateway.set_fill_policy(never_fill)
        yield gateway


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    data = tmp_path / "data"
    data.mkdir()
    opened = SQLiteStore.open(data)
    yield opened
    opened.close()


def record(name: str = "s.py") -> StrategyRecord:
    return StrategyRecord(name, SHA, None, None, None, True, {})


def begin(store: SQLiteStore, run_id: str, *names: str) -> None:
    info = RunInfo(run_id, "paper", "paper", datetime.now(UTC), "test", {})
    store.begin_run(info, [record(n) for n in names or ("s.py",)])


def killed(store: SQLiteStore, run_id: str) -> None:
    """Make ``run_id`` look like a run whose kernel was killed: still 'running', its
    recorded process gone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    conn = sqlite3.connect(store.path)
    try:
        with conn:
            conn.execute("UPDATE runs SET pid = ? WHERE run_id = ?", (gone.pid, run_id))
    finally:
        conn.close()


def order(cid: str, quantity: int = 10, strategy: str = "s.py", **kw: Any) -> Order:
    intent = OrderIntent("AAPL", "buy", quantity, **kw)
    return Order(cid, strategy, SHA, None, intent, datetime.now(UTC))


def rows(store: SQLiteStore, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def sent(fake: FakeTWS, store: SQLiteStore, run_id: str, *orders: Order) -> None:
    """What a run does: store each order, then send it, through a broker that then goes
    away (the kernel's connection closes when it dies)."""
    broker = ibkr.broker_factory("", context=context(fake.port))
    try:
        for o in orders:
            store.record_order(run_id, o, "pending", None)
            assert broker.submit(o, EMPTY) is None
            store.update_order(run_id, o.client_order_id, "accepted", None, ZERO)
        assert fake.wait_for(lambda: len(fake.orders) >= len(orders))
    finally:
        broker.close()


def test_an_order_filled_while_the_kernel_was_down_is_stored_once_and_carried(
    store: SQLiteStore, fake: FakeTWS
) -> None:
    """The kernel stored and sent an order, then died; the order filled meanwhile.  The
    restart stores the execution against it (once, with IBKR's ids), marks it filled,
    finishes the killed run as interrupted, and hands the strategy its position; the
    book agrees with the broker, so nothing is blocked.  A second restart has nothing
    to do and sends nothing."""
    begin(store, "run-a")
    sent(fake, store, "run-a", order("run-a-000001"))
    killed(store, "run-a")
    [held] = fake.orders_by_ref("run-a-000001")
    fake.fill(held.order_id, 10, 100.5)

    broker = ibkr.broker_factory("", context=context(fake.port))
    try:
        found = reconcile(store, broker, "paper", "run-b", store.path.parent)
        assert found.settled_runs == ("run-a",)
        assert found.orders == (("run-a-000001", "filled", None),)
        [fill] = found.recovered
        assert (fill.order_id, fill.quantity, fill.price) == ("run-a-000001", 10, Decimal("100.5"))
        assert fill.exec_id and fill.broker_order_id == str(held.perm_id)
        assert [f.quantity for f in found.opening["s.py"]] == [10]
        assert found.mismatches == () and found.blocked == {}
        assert any("1 missed fill(s) recovered" in line for line in found.lines())

        again = reconcile(store, broker, "paper", "run-c", store.path.parent)
        assert again.settled_runs == () and again.recovered == ()
        assert [f.exec_id for f in again.opening["s.py"]] == [fill.exec_id]
        assert again.mismatches == () and again.blocked == {}
    finally:
        broker.close()
    assert rows(store, "SELECT status FROM runs") == [("interrupted",)]
    assert rows(store, "SELECT status, filled FROM orders") == [("filled", "10")]
    assert rows(store, "SELECT exec_id, quantity FROM fills") == [(fill.exec_id, "10")]
    assert [o.order_ref for o in fake.orders] == ["run-a-000001"]  # nothing sent again
    assert "placeOrder" not in fake.requests[fake.requests.index("placeOrder") + 1 :]
    assert store.verify_audit().ok
    assert "reconciled" in [e for (e,) in rows(store, "SELECT event FROM audit")]


def test_a_working_order_is_cancelled_and_one_never_sent_is_not_sent_again(
    store: SQLiteStore, fake: FakeTWS
) -> None:
    """Of a killed run's two open orders, the one still working at IBKR is cancelled (no
    run follows it any more) and the one stored but never sent (killed between storing
    and sending) is closed as cancelled without ever reaching the broker."""
    begin(store, "run-a")
    sent(fake, store, "run-a", order("run-a-000001", limit_price=90, type="limit"))
    store.record_order("run-a", order("run-a-000002"), "pending", None)
    killed(store, "run-a")

    broker = ibkr.broker_factory("", context=context(fake.port))
    try:
        found = reconcile(store, broker, "paper", "run-b", store.path.parent)
    finally:
        broker.close()
    statuses = {cid: (status, reason) for cid, status, reason in found.orders}
    assert statuses["run-a-000001"] == (
        "cancelled",
        "cancelled at restart: no run was following it",
    )
    status, reason = statuses["run-a-000002"]
    assert status == "cancelled" and reason is not None and "never reached the broker" in reason
    [working] = fake.orders_by_ref("run-a-000001")
    assert working.status == "Cancelled"
    assert fake.orders_by_ref("run-a-000002") == []
    assert found.opening == {} and found.blocked == {}
    assert rows(store, "SELECT status FROM orders ORDER BY client_order_id") == [
        ("cancelled",),
        ("cancelled",),
    ]
    assert rows(store, "SELECT status FROM runs") == [("interrupted",)]


def test_a_partly_filled_order_keeps_its_fill_and_is_cancelled_for_the_rest(
    store: SQLiteStore, fake: FakeTWS
) -> None:
    """4 of 10 filled while the kernel was down, the rest still working: the 4 are
    stored, the rest cancelled, and the order ends cancelled with 4 filled."""
    begin(store, "run-a")
    sent(fake, store, "run-a", order("run-a-000001", limit_price=101, type="limit"))
    killed(store, "run-a")
    [held] = fake.orders_by_ref("run-a-000001")
    fake.fill(held.order_id, 4, 100.0)

    broker = ibkr.broker_factory("", context=context(fake.port))
    try:
        found = reconcile(store, broker, "paper", "run-b", store.path.parent)
    finally:
        broker.close()
    assert [f.quantity for f in found.recovered] == [4]
    assert found.orders[0][:2] == ("run-a-000001", "cancelled")
    assert rows(store, "SELECT status, filled FROM orders") == [("cancelled", "4")]
    assert found.mismatches == ()


def test_a_position_bastion_cannot_explain_blocks_its_strategies_until_resumed(
    ws: WS, fake: FakeTWS, cli: Any
) -> None:
    """The account holds 15 AAPL where Bastion's book says 10 (someone bought 5 by
    hand): the mismatch is reported, every strategy that trades AAPL is blocked (saved
    in reconcile.json, audited), a position in a symbol Bastion never traded is only
    reported.  'bastion resume --strategy' lifts the block; without
    --accept-positions the next check blocks again, with it the 5 are accepted."""
    data = ws.home / ".bastion" / "paper"
    data.mkdir(parents=True)
    store = SQLiteStore.open(data)
    try:
        begin(store, "run-a", "s.py", "t.py")
        bought = order("run-a-000001")
        store.record_order("run-a", bought, "pending", None)
        fill = Fill("run-a-000001", "AAPL", "buy", 10, 100, 1, datetime.now(UTC), exec_id="E1")
        store.record_fill("run-a", fill, bought)
        store.update_order("run-a", "run-a-000001", "filled", None, Decimal(10))
        store.finish_run("run-a", "completed", None)
    finally:
        store.close()
    fake.set_position("AAPL", 15, 100.0)
    fake.set_position("MSFT", 3, 50.0)

    def check() -> Any:
        with SQLiteStore.open(data) as opened:
            broker = ibkr.broker_factory("", context=context(fake.port))
            try:
                return reconcile(opened, broker, "paper", "run-x", data)
            finally:
                broker.close()

    found = check()
    [mismatch] = found.mismatches
    assert (mismatch.symbol, mismatch.bastion, mismatch.broker) == ("AAPL", 10, 15)
    assert mismatch.strategies == ("s.py",)
    assert (
        list(found.blocked) == ["s.py"] and "AAPL broker 15 vs Bastion 10" in found.blocked["s.py"]
    )
    assert found.foreign == {"MSFT": Decimal(3)}
    assert any(line.startswith("BLOCKED s.py") for line in found.lines())
    saved = json.loads((data / BLOCKS_FILE).read_text())
    assert saved["blocked"]["s.py"]["symbols"] == {"AAPL": {"bastion": "10", "broker": "15"}}

    r = cli("resume", "--strategy", "t", "--env", "paper", "--home", ws.home)
    assert r.exit_code != 0 and "t.py is not blocked" in r.stderr and "s.py" in r.stderr
    r = cli("resume", "--strategy", "s", "--env", "paper", "--home", ws.home)
    assert r.exit_code == 0, r.stderr
    assert check().blocked.keys() == {"s.py"}  # the difference is still there

    r = cli("resume", "--strategy", "s", "--accept-positions", "--env", "paper", "--home", ws.home)
    assert r.exit_code == 0 and "AAPL +5" in r.stdout, r.stderr
    assert Blocks(data / BLOCKS_FILE).accepted == {"AAPL": Decimal(5)}
    again = check()
    assert again.mismatches == () and again.blocked == {}
    with SQLiteStore.open(data) as opened:
        assert opened.verify_audit().ok
    events = [e for (e,) in rows_at(data, "SELECT event FROM audit")]
    assert events.count("strategy_unblocked") == 2 and "reconciled" in events


def rows_at(data: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data / "bastion.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_a_broker_that_keeps_nothing_across_runs_closes_the_open_orders(
    store: SQLiteStore,
) -> None:
    """With the simulator (it keeps no orders between runs) an earlier run's open order
    is closed as cancelled, saying why, and its run finished."""
    begin(store, "run-a")
    store.record_order("run-a", order("run-a-000001"), "accepted", None)
    killed(store, "run-a")
    found = reconcile(store, SimBroker.open(""), "paper", "run-b", store.path.parent)
    [(cid, status, reason)] = found.orders
    assert (cid, status) == ("run-a-000001", "cancelled")
    assert reason == "the sim broker keeps no orders across runs"


class Landing:
    """The four reconciliation calls of a broker on which one execution of ``c-1`` (a buy
    of 10) lands ``at`` the n-th call (counting every call), or a new one at every call
    with ``endless``.  Only what :func:`snapshot` asks for."""

    name = "landing"

    def __init__(self, at: int, endless: bool = False) -> None:
        self.at, self.endless = at, endless
        self.calls: list[str] = []
        self.fills: list[Fill] = []

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if len(self.calls) == self.at or (self.endless and what == "executions"):
            n = len(self.fills) + 1
            self.fills.append(
                Fill("c-1", "AAPL", "buy", 10, 100, 0, datetime.now(UTC), exec_id=f"e-{n}")
            )

    def executions(self) -> list[Fill]:
        self._call("executions")
        return list(self.fills)

    def open_orders(self) -> dict[str, BrokerOrder]:
        self._call("open_orders")
        return {} if self.fills else {"c-1": BrokerOrder("c-1", "working", ZERO)}

    def completed_orders(self) -> dict[str, BrokerOrder]:
        self._call("completed_orders")
        return {"c-1": BrokerOrder("c-1", "filled", Decimal(10))} if self.fills else {}

    def positions(self) -> dict[str, Decimal]:
        self._call("positions")
        return {"AAPL": Decimal(10 * len(self.fills))}


def test_a_snapshot_reads_executions_around_the_rest() -> None:
    """A snapshot asks for the executions first, then the open and completed orders and
    the positions, then the executions again; when they agree that is the snapshot."""
    broker = Landing(at=0)
    state = snapshot(broker)  # type: ignore[arg-type]
    assert broker.calls == [
        "executions", "open_orders", "completed_orders", "positions", "executions"
    ]  # fmt: skip
    assert dict(state.orders) == {"c-1": BrokerOrder("c-1", "working", ZERO)}
    assert (list(state.executions), dict(state.positions)) == ([], {"AAPL": ZERO})


@pytest.mark.parametrize("at", [2, 3, 4, 5])
def test_a_fill_landing_mid_snapshot_makes_it_taken_again(at: int) -> None:
    """An execution that lands while the orders and positions are read (some already
    show it, some not) makes the snapshot be taken again: the one returned holds the
    execution, the order filled and the position, never half of them."""
    broker = Landing(at=at)
    state = snapshot(broker)  # type: ignore[arg-type]
    assert broker.calls.count("executions") == 4
    assert [f.exec_id for f in state.executions] == ["e-1"]
    assert dict(state.orders) == {"c-1": BrokerOrder("c-1", "filled", Decimal(10))}
    assert dict(state.positions) == {"AAPL": Decimal(10)}


def test_executions_that_never_settle_are_one_line_after_five_tries() -> None:
    """When an execution lands during every one of five snapshots, reconciliation
    refuses with one line naming the broker rather than settle on a torn view."""
    broker = Landing(at=0, endless=True)
    with pytest.raises(ConfigError, match=r"^the landing broker's executions changed") as err:
        snapshot(broker)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    assert broker.calls.count("executions") == 10


def test_an_unreadable_blocks_file_is_one_line_naming_it(tmp_path: Path) -> None:
    """A damaged reconcile.json is refused with its path and what to do, never guessed
    around (it may hold a block)."""
    path = tmp_path / BLOCKS_FILE
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"reconcile\.json cannot be read .* delete it"):
        Blocks(path)


def test_one_paper_run_at_a_time_per_environment(tmp_path: Path) -> None:
    """A second paper run on the same data directory is refused while the first holds
    the run lock (it would take the first one's working orders for abandoned and
    cancel them); once released, the next run may start."""
    first = _run_lock(tmp_path, "paper")
    try:
        with pytest.raises(ConfigError, match=r"another paper run \(process \d+\) is running"):
            _run_lock(tmp_path, "paper")
    finally:
        first.release()
    _run_lock(tmp_path, "paper").release()
