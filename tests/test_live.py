"""The live driver (bastion._live): a paper run's events reach the engine as they
arrive.  The broker is the IBKR plugin on the real ib_async client against the fake TWS
on 127.0.0.1; the strategy runs in a sandboxed worker; the store is SQLite."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bastion import Kernel, Strategy
from bastion._engine import Engine, EngineConfig
from bastion._live import drive
from bastion._sandbox import SandboxConfig, sandboxed
from bastion.interfaces import RunInfo, StrategyRecord
from bastion.models import Bar
from bastion.plugins import ibkr
from bastion.plugins.sqlite_store import SQLiteStore

from .conftest import WS
from .fake_tws import FakeTWS
from .test_ibkr import context

RUN = "live-run"
BUY_ONCE = """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if ctx.position(bar.symbol) == 0 and ctx.pending(bar.symbol) == 0:
        ctx.order(bar.symbol, 10)

@strategy.hook
def on_fill(ctx, fill):
    ctx.log.info("filled", quantity=fill.quantity)
"""


def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def _paper_engine(
    strategy: Strategy, broker: Any, store: SQLiteStore, stop: threading.Event, **config: Any
) -> Engine:
    """A paper run of ``strategy`` in ``store``, begun and ready for the live driver."""
    store.begin_run(
        RunInfo(RUN, "paper", "paper", datetime.now(UTC), "test", {}),
        [StrategyRecord(strategy.name, strategy.info.sha256, None, None, None, False, {})],
    )
    return Engine(
        Kernel(entry_points=False),
        broker,
        store,
        [(strategy, {})],
        EngineConfig(
            run_id=RUN,
            environment="paper",
            cash=Decimal(100000),
            symbols=frozenset({"AAPL"}),
            stop=stop,
            **config,
        ),
    )


@pytest.fixture
def fake() -> Iterator[FakeTWS]:
    with FakeTWS() as gateway:
        gateway.add_stock("AAPL")
        gateway.set_price("AAPL", 100.0)
        yield gateway


def test_fills_and_the_halt_file_are_handled_between_bars(ws: WS, fake: FakeTWS) -> None:
    """The source gives one bar and then waits: the order it prompts is filled at IBKR
    and the fill is booked (stored, told to on_fill) while no bar comes.  Then the
    operator halts: the halt is acted on at the next tick, still without a bar.  The
    source only goes on once each has happened, so a driver that waited for bars
    would never get there."""
    ws.launcher = sandboxed(SandboxConfig(deadline=30.0))
    ws.write("buy_once.py", BUY_ONCE)
    ws.sign("buy_once.py")
    strategy = ws.admit("buy_once.py")
    assert isinstance(strategy, Strategy), strategy
    data = ws.workspace.ensure_data_dir()
    db = data / "bastion.db"
    halt = data / "HALT"
    store = SQLiteStore.open(data)
    broker = ibkr.broker_factory("", context=context(fake.port))
    stop = threading.Event()
    seen: dict[str, bool] = {}
    start = datetime.now(UTC).replace(microsecond=0)

    def bars() -> Iterator[Bar]:
        yield Bar("AAPL", start, 100, 101, 99, 100, 1000)
        seen["fill"] = _until(lambda: _count(db, "SELECT count(*) FROM fills") == 1)
        halt.write_text('{"reason": "test"}')
        seen["halt"] = _until(
            lambda: _count(db, "SELECT count(*) FROM audit WHERE event = 'trading_halted'") == 1
        )
        yield Bar("AAPL", start + timedelta(seconds=5), 100, 101, 99, 100.5, 1000)
        stop.set()

    try:
        engine = _paper_engine(strategy, broker, store, stop, log_trades=True, halt_file=halt)
        result = drive(engine, bars(), stop, tick=0.2)
        store.finish_run(RUN, "completed", None)
    finally:
        broker.close()
        store.close()
    assert seen == {"fill": True, "halt": True}
    assert result.bars == 2
    [summary] = result.strategies
    assert (summary.fills, summary.orders, summary.quarantined) == (1, 1, None)
    assert _count(db, "SELECT count(*) FROM orders WHERE status = 'filled'") == 1
    assert [o.order_ref for o in fake.orders] == [f"{RUN}-000001"]


def test_a_failing_source_fails_the_run_with_its_error(ws: WS, fake: FakeTWS) -> None:
    """The source raises (IBKR refused history, say): the run ends with that error
    instead of waiting for bars that will not come."""
    ws.write("buy_once.py", BUY_ONCE)
    ws.sign("buy_once.py")
    strategy = ws.admit("buy_once.py")
    assert isinstance(strategy, Strategy), strategy
    data = ws.workspace.ensure_data_dir()
    store = SQLiteStore.open(data)
    broker = ibkr.broker_factory("", context=context(fake.port))
    stop = threading.Event()

    def bars() -> Iterator[Bar]:
        yield Bar("AAPL", datetime.now(UTC), 100, 101, 99, 100, 1000)
        raise RuntimeError("the feed broke")

    try:
        engine = _paper_engine(strategy, broker, store, stop)
        with pytest.raises(RuntimeError, match="the feed broke"):
            drive(engine, bars(), stop, tick=0.2)
    finally:
        broker.close()
        store.close()
    assert not stop.is_set()  # the source ended by itself: nothing had to tell it to
