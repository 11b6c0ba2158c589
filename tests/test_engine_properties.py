"""The engine with the simulator under random markets and random orders (Hypothesis).

Each example is a whole run: one or two symbols on a random walk with gaps and
crashes, a strategy that asks for random market, limit and stop orders (sized to use
the leverage the simulator allows), commissions and slippage on, margin calls on.
Whatever happens, these must hold:

* the stored fills, replayed through an independent average-cost reference (the one
  in test_ledger_oracle.py), give the stored final positions and the run's final
  equity at the last closes, to the cent;
* the last stored equity point (the engine's float mirror) is within 1e-9 (relative)
  of the Decimal ledger's final equity;
* no order fills on the bar it was asked on: a fill's time is after its order's;
* every margin call ends: each liquidation order asked for before the last bar is
  filled (volumes are ample, so the next bar can take it).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
import structlog.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion import Kernel, Strategy
from bastion._engine import Engine, EngineConfig
from bastion.interfaces import RunInfo, StrategyRecord
from bastion.models import Bar
from bastion.plugins.sim import SimBroker
from bastion.plugins.sqlite_store import SQLiteStore

from .conftest import WS
from .test_ledger_oracle import Reference

T0 = datetime(2024, 1, 1, 21, tzinfo=UTC)
CASH = Decimal(100000)

RANDOM_TRADER = """
import random
from bastion import strategy

PARAMS = {"seed": 0}


@strategy.hook
def on_start(ctx):
    ctx.state["rng"] = random.Random(ctx.params["seed"])


@strategy.hook
def on_bar(ctx, bar):
    rng = ctx.state["rng"]
    if rng.random() < 0.45:
        return
    held = ctx.position(bar.symbol)
    if held and rng.random() < 0.3:
        # close, halve or flip
        ctx.order(bar.symbol, rng.choice([-held, -(held // 2) or -held, -2 * held]))
        return
    budget = float(ctx.equity) * rng.uniform(0.05, 1.4)
    quantity = max(1, int(budget / bar.close))
    if rng.random() < 0.45:
        quantity = -quantity
    kind = rng.random()
    if kind < 0.6:
        ctx.order(bar.symbol, quantity)
    elif kind < 0.8:
        ctx.order(bar.symbol, quantity, limit=round(bar.close * rng.uniform(0.95, 1.05), 2))
    else:
        ctx.order(bar.symbol, quantity, stop=round(bar.close * rng.uniform(0.95, 1.05), 2))
"""


@st.composite
def markets(draw: Any) -> list[Bar]:
    symbols = draw(st.sampled_from([("AAA",), ("AAA", "BBB")]))
    days = draw(st.integers(min_value=5, max_value=40))
    bars = []
    for symbol in symbols:
        close = draw(st.floats(min_value=5, max_value=500))
        for day in range(days):
            move = draw(
                st.one_of(
                    st.floats(min_value=-0.04, max_value=0.04),
                    st.floats(min_value=-0.6, max_value=0.6),  # gaps and crashes
                )
            )
            gap = draw(st.floats(min_value=-0.1, max_value=0.1))
            open_ = max(round(close * (1 + gap), 2), 0.5)
            close = max(round(open_ * (1 + move), 2), 0.5)
            high = max(open_, close) * 1.01
            low = min(open_, close) * 0.99
            ts = T0 + timedelta(days=day)
            bars.append(Bar(symbol, ts, open_, round(high, 2), round(low, 2), close, 1e9))
    return sorted(bars, key=lambda b: (b.ts, b.symbol))


def _rows(path: Any, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _run(ws: WS, strategy: Strategy, bars: list[Bar], seed: int, n: int) -> tuple[Any, Any]:
    data = ws.home / ".bastion" / f"prop{n}"
    data.mkdir(parents=True)
    store = SQLiteStore.open(data)
    run_id = f"run-{n}"
    try:
        store.begin_run(
            RunInfo(run_id, "backtest", "development", T0, "test", {}),
            [StrategyRecord(strategy.name, strategy.info.sha256, None, None, None, True, {})],
        )
        engine = Engine(
            Kernel(entry_points=False),
            SimBroker.open("commission=per-share:0.005:1,slippage=5,maintenance=0.25"),
            store,
            [(strategy, {"seed": seed})],
            EngineConfig(
                run_id=run_id,
                environment="development",
                cash=CASH,
                symbols=frozenset(b.symbol for b in bars),
            ),
        )
        with structlog.testing.capture_logs():
            result = engine.run(iter(bars))
        store.finish_run(run_id, "completed", None)
        return result, store.load_run(run_id)
    finally:
        store.close()


_SIGNED: dict[int, dict[str, Any]] = {}  # the strategy is signed once per test


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # long bar lists
@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(bars=markets(), seed=st.integers(min_value=0, max_value=2**32))
def test_a_random_run_replays_exactly_and_keeps_its_promises(
    ws: WS, bars: list[Bar], seed: int
) -> None:
    """See the module docstring: replay, float mirrors, no same-bar fills, margin
    calls that end."""
    cache = _SIGNED.setdefault(id(ws), {"runs": 0})
    if cache["runs"] == 0:
        ws.write("random_trader.py", RANDOM_TRADER)
        ws.sign("random_trader.py")
    cache["runs"] += 1
    runs = cache["runs"]
    trader = ws.admit("random_trader.py")  # a host runs one run: admitted afresh
    assert isinstance(trader, Strategy)
    result, run = _run(ws, trader, bars, seed, runs)
    [summary] = result.strategies
    assert summary.quarantined is None, summary.quarantined
    db = ws.home / ".bastion" / f"prop{runs}" / "bastion.db"

    # Replay the stored fills through the independent reference.
    ref = Reference(Fraction(CASH))
    fills = _rows(
        db,
        "SELECT f.symbol, f.side, f.quantity, f.price, f.commission, f.ts, o.created, "
        "o.liquidation FROM fills f JOIN orders o USING (client_order_id) ORDER BY f.id",
    )
    for symbol, side, quantity, price, commission, ts, created, _ in fills:
        ref.fill(symbol, side == "buy", Fraction(quantity), Fraction(price), Fraction(commission))
        assert ts > created, "an order filled on the bar it was asked on"
    stored = {p.symbol: p.quantity for p in run.strategies[0].positions if p.quantity}
    assert stored == {s: Decimal(q.numerator) / q.denominator for s, q in ref.quantity.items() if q}
    last = {b.symbol: Fraction(Decimal(repr(b.close))) for b in bars}
    equity = ref.equity(last)
    assert abs(Fraction(summary.equity) - equity) < Fraction(1, 100)

    # The float mirror the equity curve is made of agrees with the exact ledger.
    final_point = run.strategies[0].equity[-1][1]
    assert abs(final_point - float(equity)) <= 1e-9 * max(1.0, abs(float(equity)))

    # Every margin call ends: its liquidations fill at the next bar of their symbol. A
    # liquidation the engine replaced (another fill changed what the strategy holds
    # before it filled) is cancelled on purpose; its replacement is then held to this.
    last_ts = bars[-1].ts.isoformat()
    waiting = _rows(
        db,
        "SELECT client_order_id, created, status, reason FROM orders WHERE liquidation = 1 "
        "AND status != 'filled'",
    )
    stuck = [
        row
        for row in waiting
        if row[1] < last_ts[:19]
        and row[2] != "rejected"
        and not (row[2] == "cancelled" and row[3] == "margin call: replaced after another fill")
    ]
    assert stuck == [], stuck
