"""A Hypothesis state machine over the engine with the simulator, one bar at a time.

The engine is driven by events, so Hypothesis can feed it bars itself: each rule is a
bar (a move, a gap or a crash in one of two symbols) and the invariants are checked
after every one of them, not only at the end of a run.  The strategy places random
market, limit and stop orders sized to use the leverage allowed (seeded by the
machine), with commissions, slippage and margin calls on.

After every bar:

* the ledger's float mirrors (equity, gross exposure) are within 1e-9 (relative) of
  the exact Decimal ledger;
* nothing has filled on the bar its order was asked on;
* every margin call ends: a liquidation order is filled by the next bar of its symbol;
* the buy-and-hold benchmark equals its direct computation.

At the end, the fills the simulator reported, replayed through the independent
reference ledger, give the positions and cash the engine holds.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import structlog.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from bastion import Kernel, Strategy
from bastion._engine import Engine, EngineConfig
from bastion.interfaces import RunInfo, StrategyRecord
from bastion.models import AccountSnapshot, Bar, Fill, Order
from bastion.plugins.sim import SimBroker
from bastion.plugins.sqlite_store import SQLiteStore

from .conftest import WS
from .test_engine_properties import RANDOM_TRADER
from .test_ledger_oracle import Reference

T0 = datetime(2024, 1, 1, 21, tzinfo=UTC)
CASH = Decimal(100000)
SYMBOLS = ("AAA", "BBB")


class WatchedSim(SimBroker):
    """The real simulator; every fill it reports is kept with the bar that made it, and
    every order it accepted with the time it was asked for (the engine keeps only
    working orders)."""

    reported: list[tuple[Fill, datetime]]
    created: dict[str, datetime]

    def submit(self, order: Order, account: AccountSnapshot) -> str | None:
        reason = super().submit(order, account)
        if reason is None:
            self.created[order.client_order_id] = order.created
        return reason

    def on_bar(self, bar: Bar) -> Sequence[Fill]:
        fills = super().on_bar(bar)
        self.reported.extend((fill, bar.ts) for fill in fills)
        return fills


class EngineMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(min_value=0, max_value=2**32))
    def start(self, seed: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bastion-machine-"))
        ws = WS(home=self.tmp / "ws", keys_dir=self.tmp / "keys")
        (ws.home / "strategies").mkdir(parents=True)
        (ws.home / "signatures").mkdir()
        ws.write("random_trader.py", RANDOM_TRADER)
        ws.sign("random_trader.py")
        strategy = ws.admit("random_trader.py")
        assert isinstance(strategy, Strategy)
        self.store = SQLiteStore.open(ws.workspace.ensure_data_dir())
        self.store.begin_run(
            RunInfo("machine", "backtest", "development", T0, "test", {}),
            [StrategyRecord(strategy.name, strategy.info.sha256, None, None, None, True, {})],
        )
        self.broker = WatchedSim.open("commission=per-share:0.005:1,slippage=5,maintenance=0.25")
        self.broker.reported = []
        self.broker.created = {}
        self.engine = Engine(
            Kernel(entry_points=False),
            self.broker,
            self.store,
            [(strategy, {"seed": seed})],
            EngineConfig(
                run_id="machine",
                environment="development",
                cash=CASH,
                symbols=frozenset(SYMBOLS),
            ),
        )
        self.logs = structlog.testing.capture_logs()
        self.logs.__enter__()
        self.session = self.engine.session()
        self.session.__enter__()
        self.closes = {"AAA": 100.0, "BBB": 40.0}
        self.day = 0
        self.bars_seen: dict[str, int] = {s: 0 for s in SYMBOLS}
        self.liquidations: dict[str, int] = {}  # client order id -> bars of its symbol since

    @rule(
        symbol=st.sampled_from(SYMBOLS),
        move=st.one_of(
            st.floats(min_value=-0.04, max_value=0.04),
            st.floats(min_value=-0.6, max_value=0.6),
        ),
        gap=st.floats(min_value=-0.1, max_value=0.1),
        next_day=st.booleans(),
    )
    def bar(self, symbol: str, move: float, gap: float, next_day: bool) -> None:
        """One bar of ``symbol`` (the same timestamp as the last bar, or the next day)."""
        self.day += next_day or self.day == 0
        previous = self.closes[symbol]
        open_ = max(round(previous * (1 + gap), 2), 0.5)
        close = max(round(open_ * (1 + move), 2), 0.5)
        self.closes[symbol] = close
        ts = T0 + timedelta(days=self.day)
        # Bars of one timestamp come in symbol order: a second bar of the same symbol,
        # or one out of order, waits for the next day.
        if ts == self.engine.core._current and symbol <= getattr(self, "_last_symbol", ""):
            self.day += 1
            ts = T0 + timedelta(days=self.day)
        self._last_symbol = symbol
        high, low = max(open_, close) * 1.01, min(open_, close) * 0.99
        self.engine.on_bars((Bar(symbol, ts, open_, round(high, 2), round(low, 2), close, 1e9),))
        self.bars_seen[symbol] += 1
        for slot in self.engine.core._slots:
            for cid in slot.liquidations:
                self.liquidations.setdefault(
                    cid, self.bars_seen[self.engine.core._orders[cid].symbol]
                )

    @rule(
        symbol=st.sampled_from(SYMBOLS),
        size=st.floats(min_value=0.25, max_value=0.6),
        up=st.booleans(),
    )
    def crash(self, symbol: str, size: float, up: bool) -> None:
        """A violent bar (what makes margin calls): the next day, gapping and moving."""
        self.bar(symbol, size if up else -size, (size if up else -size) / 3, True)

    @invariant()
    def float_mirrors_follow_the_ledger(self) -> None:
        if not hasattr(self, "engine"):
            return
        marks = self.engine.core._last
        for slot in self.engine.core._slots:
            if any(s not in marks for s in slot.portfolio.quantities_f):
                continue
            exact = float(slot.portfolio.equity(marks))
            assert abs(slot.equity_f - exact) <= 1e-9 * max(1.0, abs(exact))

    @invariant()
    def the_benchmark_is_buy_and_hold_of_what_was_seen(self) -> None:
        """The benchmark, kept up to date as prices move, is the cash not yet invested
        plus every bought slice at its last price."""
        if not hasattr(self, "engine"):
            return
        engine = self.engine
        units = engine.core._bench_units
        direct = float(CASH) - engine.core._bench_slice * len(units)
        direct += sum(held * engine.core._last[s] for s, held in units.items())
        assert abs(engine.core._bench_value - direct) <= 1e-9 * abs(direct)

    @invariant()
    def nothing_fills_on_its_own_bar(self) -> None:
        if not hasattr(self, "engine"):
            return
        for fill, when in self.broker.reported:
            assert self.broker.created[fill.order_id] < when

    @invariant()
    def margin_calls_end(self) -> None:
        if not hasattr(self, "engine"):
            return
        working = {cid for slot in self.engine.core._slots for cid in slot.liquidations}
        for cid in working:
            symbol = self.engine.core._orders[cid].symbol
            since = self.bars_seen[symbol] - self.liquidations.get(cid, self.bars_seen[symbol])
            assert since <= 1, f"liquidation {cid} still working after {since} bars"

    def teardown(self) -> None:
        if not hasattr(self, "engine"):
            return
        try:
            self.session.__exit__(None, None, None)
            ref = Reference(Fraction(CASH))
            for fill, _ in self.broker.reported:
                ref.fill(
                    fill.symbol,
                    fill.signed_quantity > 0,
                    Fraction(fill.quantity),
                    Fraction(fill.price),
                    Fraction(fill.commission),
                )
            [slot] = self.engine.core._slots
            assert slot.quarantined is None, slot.quarantined
            assert Fraction(slot.portfolio.cash) == ref.cash
            held = {s: Fraction(slot.portfolio.quantity(s)) for s in SYMBOLS}
            assert held == {s: ref.quantity.get(s, Fraction(0)) for s in SYMBOLS}
        finally:
            self.logs.__exit__(None, None, None)
            self.store.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


EngineMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)
test_the_engine_keeps_its_promises_bar_by_bar = EngineMachine.TestCase
