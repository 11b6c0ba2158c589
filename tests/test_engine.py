"""The event loop: time order, no look-ahead, fills back to strategies, quarantine, risk.

Every test runs twice, with strategies in this process and in sandboxed workers
(the ``any_host`` fixture), and looks only at public results: the ``RunResult``,
the store, and what strategies log through ``ctx.log``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog.testing

from bastion import Kernel, Strategy, hookimpl
from bastion._engine import Engine, EngineConfig, ExceptionPolicy, OrderLimits, RunResult
from bastion.interfaces import RunInfo, StrategyRecord
from bastion.models import Bar, Fill
from bastion.plugins.sim import SimBroker
from bastion.plugins.sqlite_store import SQLiteStore

from .conftest import WS

pytestmark = pytest.mark.usefixtures("any_host")

T0 = datetime(2024, 1, 1, 21, tzinfo=UTC)
RUN = "run-1"
NO_LIMITS = OrderLimits()


def bar(symbol: str, day: int, price: float, *, volume: float = 1e6, spread: float = 1.0) -> Bar:
    return Bar(
        symbol=symbol,
        ts=T0 + timedelta(days=day),
        open=price,
        high=price + spread,
        low=max(price - spread, 0.01),
        close=price,
        volume=volume,
    )


def admit(ws: WS, name: str, source: str) -> Strategy:
    ws.write(name, source)
    ws.sign(name)
    outcome = ws.admit(name)
    assert isinstance(outcome, Strategy), outcome
    return outcome


class Harness:
    def __init__(self, ws: WS, kernel: Kernel | None = None) -> None:
        self.ws = ws
        self.kernel = kernel or Kernel(entry_points=False)
        self.store = SQLiteStore.open(ws.workspace.ensure_data_dir())

    def run(
        self,
        strategies: list[Strategy],
        bars: list[Bar],
        *,
        cash: str = "100000",
        broker: str = "commission=none,slippage=0",
        symbols: set[str] | None = None,
        limits: OrderLimits = NO_LIMITS,
        params: dict[str, Any] | None = None,
        exceptions: dict[str, ExceptionPolicy] | None = None,
        **config: Any,
    ) -> RunResult:
        self.store.begin_run(
            RunInfo(RUN, "backtest", "development", T0, "test", {}),
            [
                StrategyRecord(s.name, s.info.sha256, s.info.signer, None, None, False, {})
                for s in strategies
            ],
        )
        self.engine = Engine(
            self.kernel,
            SimBroker.open(broker),
            self.store,
            [(s, {**s.params, **(params or {})}) for s in strategies],
            EngineConfig(
                run_id=RUN,
                environment="development",
                cash=Decimal(cash),
                symbols=frozenset(symbols or {b.symbol for b in bars}),
                limits=limits,
                exceptions=exceptions or {},
                **config,
            ),
        )
        with structlog.testing.capture_logs() as captured:
            result = self.engine.run(iter(bars))
        self.captured = captured
        self.store.finish_run(RUN, "completed", None)
        return result

    def logged(self, event: str) -> list[dict[str, Any]]:
        """What strategies logged as ``event`` (through ``ctx.log``), in order."""
        return [r for r in self.captured if r["event"] == event and "strategy" in r]

    def positions(self) -> dict[str, Decimal]:
        """The first strategy's stored positions at the end of the run."""
        run = self.store.load_run(RUN)
        return {p.symbol: p.quantity for p in run.strategies[0].positions}

    def equity(self) -> list[float]:
        """The first strategy's stored equity curve (values)."""
        return [value for _, value in self.store.load_run(RUN).strategies[0].equity]

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.store.path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


@pytest.fixture
def h(ws: WS) -> Iterator[Harness]:
    harness = Harness(ws)
    yield harness
    harness.store.close()


BUY_FIRST = """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, 10)

@strategy.hook
def on_fill(ctx, fill):
    ctx.log.info("filled", ts=fill.ts.isoformat(), price=fill.price, held=ctx.position(fill.symbol))
"""


def test_order_fills_at_next_bar_open_never_the_same_bar(ws: WS, h: Harness) -> None:
    """An order asked for on bar t fills at bar t+1's open, and on_fill sees the new position."""
    s = admit(ws, "buy_first.py", BUY_FIRST)
    bars = [bar("AAA", 0, 100.0), bar("AAA", 1, 105.0), bar("AAA", 2, 110.0)]
    h.run([s], bars)
    [fill] = h.logged("filled")
    assert (fill["ts"], fill["price"], fill["held"]) == (bars[1].ts.isoformat(), "105.0", "10")
    ((price,),) = h.rows("SELECT price FROM fills")
    assert Decimal(price) == Decimal(105)


def test_strategy_cannot_see_the_future(
    ws: WS, h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a strategy is handed bar i, no later bar has been read from the source yet,
    and its history ends with bar i."""
    s = admit(
        ws,
        "watch.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    history = ctx.history(bar.symbol)
    assert history[-1] is bar
    assert all(b.ts <= bar.ts for b in history)
""",
    )
    bars = [bar("AAA", d, 100.0 + d) for d in range(50)]
    yielded: list[int] = []
    seen_at_call: list[int] = []

    def source() -> Iterator[Bar]:
        for item in bars:
            yielded.append(1)
            yield item

    host_type = type(s.host)
    real_post = host_type.post_bar

    def spy(self: Any, item: Bar) -> None:
        seen_at_call.append(len(yielded))
        real_post(self, item)

    monkeypatch.setattr(host_type, "post_bar", spy)
    h.store.begin_run(
        RunInfo(RUN, "backtest", "development", T0, "t", {}),
        [StrategyRecord(s.name, s.info.sha256, s.info.signer, None, None, False, {})],
    )
    engine = Engine(
        h.kernel,
        SimBroker.open(""),
        h.store,
        [(s, {})],
        EngineConfig(
            run_id=RUN, environment="development", cash=Decimal(1000), symbols=frozenset({"AAA"})
        ),
    )
    result = engine.run(source())
    assert seen_at_call == list(range(1, 51))
    assert result.strategies[0].quarantined is None  # its own assertions held


def test_bars_of_several_symbols_arrive_in_time_order(ws: WS, h: Harness) -> None:
    s = admit(
        ws,
        "log.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.log.info("seen", ts=bar.ts.isoformat(), symbol=bar.symbol)
""",
    )
    bars = sorted(
        [bar("AAA", d, 100.0) for d in range(5)] + [bar("BBB", d, 50.0) for d in range(5)],
        key=lambda b: (b.ts, b.symbol),
    )
    h.run([s], bars)
    seen = [(r["ts"], r["symbol"]) for r in h.logged("seen")]
    assert seen == sorted(seen) and len(seen) == 10


def test_cross_symbol_order_waits_for_a_later_bar(ws: WS, h: Harness) -> None:
    """An order for BBB placed on AAA's bar at t does not fill on BBB's bar at the same t."""
    s = admit(
        ws,
        "cross.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if bar.symbol == "AAA" and not ctx.state.get("done") and "BBB" in ctx.state.get("px", {}):
        ctx.state["done"] = True
        ctx.order("BBB", 5)
    ctx.state.setdefault("px", {})[bar.symbol] = bar.close
""",
    )
    bars = [
        bar("AAA", 0, 10.0),
        bar("BBB", 0, 50.0),
        bar("AAA", 1, 10.0),
        bar("BBB", 1, 51.0),
        bar("AAA", 2, 10.0),
        bar("BBB", 2, 52.0),
    ]
    h.run([s], bars)
    ((ts, price),) = h.rows("SELECT ts, price FROM fills")
    assert Decimal(price) == Decimal(52)  # ordered on AAA day 1, fills on BBB day 2, not day 1
    assert ts.startswith("2024-01-03")


def test_crashing_strategy_is_quarantined_others_carry_on(ws: WS, h: Harness) -> None:
    """A strategy that raises is stopped with the reason; the other finishes; its orders cancel."""
    bad = admit(
        ws,
        "bad.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.order(bar.symbol, 1, limit=1)
    if bar.ts.day == 4:
        raise ZeroDivisionError("boom")
""",
    )
    good = admit(ws, "good2.py", BUY_FIRST)
    result = h.run([bad, good], [bar("AAA", d, 100.0) for d in range(6)])
    by_name = {r.name: r for r in result.strategies}
    assert by_name["bad.py"].quarantined == "exception: on_bar: raised ZeroDivisionError: boom"
    assert by_name["bad.py"].quarantine_kind == "exception"
    assert by_name["good2.py"].quarantined is None and by_name["good2.py"].fills == 1
    statuses = {s for (s,) in h.rows("SELECT status FROM orders WHERE strategy = 'bad.py'")}
    assert statuses == {"cancelled"}
    assert h.store.verify_audit().ok
    assert any(r[0] == "strategy_quarantined" for r in h.rows("SELECT event FROM audit"))


def test_rejection_reaches_on_reject_and_is_stored(ws: WS, h: Harness) -> None:
    """Over-leveraged orders are rejected with a reason, stored, and told to the strategy."""
    s = admit(
        ws,
        "greedy.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, 10_000)

@strategy.hook
def on_reject(ctx, intent, reason):
    ctx.log.info("rejected", quantity=intent.quantity, reason=reason)
""",
    )
    h.run([s], [bar("AAA", d, 100.0) for d in range(3)], cash="1000")
    [record] = h.logged("rejected")
    quantity, reason = record["quantity"], record["reason"]
    assert quantity == "10000" and "buying power" in reason
    ((status, stored_reason),) = h.rows("SELECT status, reason FROM orders")
    assert status == "rejected" and stored_reason == reason


def test_risk_plugin_veto_keeps_order_from_broker(ws: WS) -> None:
    """A check_order hook that vetoes stops the order before the broker sees it."""

    class NoBBB:
        @hookimpl
        def check_order(self, intent: Any) -> str | None:
            return "no trading AAA today" if intent.symbol == "AAA" else None

    kernel = Kernel(entry_points=False)
    kernel.pm.register(NoBBB(), name="no-aaa")
    h = Harness(ws, kernel)
    s = admit(ws, "buy.py", BUY_FIRST)
    result = h.run([s], [bar("AAA", d, 100.0) for d in range(3)])
    assert result.strategies[0].fills == 0
    assert h.rows("SELECT status, reason FROM orders") == [("rejected", "no trading AAA today")]
    h.store.close()


def test_risk_plugins_are_given_the_bar_time_and_the_last_price(ws: WS) -> None:
    """check_order receives the time of the bar the strategy answered (the market's
    clock, not the wall clock) and the last close seen for the symbol as a Decimal, so a
    trading-hours or notional check works in a backtest."""
    seen: list[tuple[Any, Any]] = []

    class Recorder:
        @hookimpl
        def check_order(self, intent: Any, ts: Any, last_price: Any) -> str | None:
            seen.append((ts, last_price))
            return None

    kernel = Kernel(entry_points=False)
    kernel.register(Recorder(), "recorder")
    h = Harness(ws, kernel)
    s = admit(ws, "buy.py", BUY_FIRST)
    h.run([s], [bar("AAA", 0, 100.0), bar("AAA", 1, 101.25), bar("AAA", 2, 99.5)])
    assert seen == [(T0, Decimal("100.0"))]
    h.store.close()


def test_environment_limits(ws: WS, h: Harness) -> None:
    s = admit(ws, "buy3.py", BUY_FIRST)
    h.run(
        [s],
        [bar("AAA", d, 100.0) for d in range(3)],
        limits=OrderLimits(max_order_quantity=Decimal(5)),
    )
    ((status, reason),) = h.rows("SELECT status, reason FROM orders")
    assert status == "rejected" and "exceeds the development limit of 5" in reason


def test_unknown_symbol_and_orders_before_first_bar_are_rejected(ws: WS, h: Harness) -> None:
    s = admit(
        ws,
        "odd.py",
        """
from bastion import strategy

@strategy.hook
def on_start(ctx):
    ctx.order("AAA", 1)

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order("ZZZ", 1)

@strategy.hook
def on_reject(ctx, intent, reason):
    ctx.log.info("rejected", reason=reason)
""",
    )
    h.run([s], [bar("AAA", d, 100.0) for d in range(2)])
    reasons = [r["reason"] for r in h.logged("rejected")]
    assert reasons[0] == "orders cannot be placed before the first bar"
    assert "unknown symbol 'ZZZ'" in reasons[1]


def test_margin_call_liquidates(ws: WS, h: Harness) -> None:
    """A short squeezed below maintenance margin is liquidated at market on the next bar."""
    s = admit(
        ws,
        "short.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, -1800)
""",
    )
    prices = [100.0, 100.0, 120.0, 140.0, 150.0, 150.0]
    result = h.run([s], [bar("AAA", d, p) for d, p in enumerate(prices)])
    orders = h.rows("SELECT liquidation, side, quantity, status FROM orders ORDER BY created")
    assert orders[0] == (0, "sell", "1800", "filled")
    assert (1, "buy", "1800", "filled") in orders
    assert h.positions().get("AAA", 0) == 0
    events = [e for (e,) in h.rows("SELECT event FROM audit")]
    assert "margin_call" in events
    assert result.strategies[0].equity > 0


def test_equity_curve_ends_at_the_ledger(ws: WS, h: Harness) -> None:
    """The float equity curve's last point equals the exact ledger marked at the last prices."""
    s = admit(
        ws,
        "flip.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.order(bar.symbol, 3 if ctx.position(bar.symbol) <= 0 else -6)
""",
    )
    bars = [bar("AAA", d, 100.0 + (d % 7) * 1.37) for d in range(40)]
    result = h.run([s], bars, broker="commission=bps:1,slippage=3")
    curve = h.equity()
    exact = result.strategies[0].equity  # the Decimal ledger at the last prices
    assert curve[-1] == pytest.approx(float(exact), abs=1e-6)
    assert len(curve) == len(bars)
    # and the ledger itself: cash plus the stored position at the last close
    run = h.store.load_run(RUN).strategies[0]
    assert run.metrics["end_equity"] == pytest.approx(float(exact), abs=0.01)


def test_client_order_id_is_stored_before_submission(
    ws: WS, h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the broker receives an order, the store already holds its row (id, pending).

    A backtest's rows are written behind in batches, so this reads through the
    store (which includes rows not yet inserted), not around it.
    """
    seen: list[tuple[Any, ...]] = []
    real_submit = SimBroker.submit

    def spy(self: SimBroker, order: Any, account: Any) -> Any:
        with h.store._read() as conn:
            seen.append(
                conn.execute(
                    "SELECT status FROM orders WHERE client_order_id = ?",
                    (order.client_order_id,),
                ).fetchone()
            )
        return real_submit(self, order, account)

    monkeypatch.setattr(SimBroker, "submit", spy)
    h.run([admit(ws, "buy4.py", BUY_FIRST)], [bar("AAA", d, 100.0) for d in range(3)])
    assert seen == [("pending",)]


def test_notional_limit_uses_the_last_price_or_the_orders_own(ws: WS, h: Harness) -> None:
    """The notional limit values a market order at the last price seen, a limit order in a
    symbol with no price yet at its limit, and refuses a market order it cannot value."""
    s = admit(
        ws,
        "notional.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if bar.symbol == "AAA" and not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order("AAA", 11)              # 11 x 100 = 1,100 > 1,000
        ctx.order("AAA", 10)              # 1,000: allowed
        ctx.order("BBB", 5, limit=300)    # no BBB price yet: 5 x 300 = 1,500 > 1,000
        ctx.order("BBB", 1)               # no BBB price yet, market: cannot be valued
""",
    )
    bars = [bar("AAA", 0, 100.0), bar("BBB", 1, 50.0), bar("AAA", 1, 100.0)]
    h.run([s], bars, limits=OrderLimits(max_order_notional=Decimal(1000)))
    rows = h.rows("SELECT symbol, quantity, status, reason FROM orders ORDER BY client_order_id")
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("AAA", "11", "rejected"),
        ("AAA", "10", "filled"),
        ("BBB", "5", "rejected"),
        ("BBB", "1", "rejected"),
    ]
    assert "notional 1,100.00 exceeds the development limit of 1,000.00" in rows[0][3]
    assert "notional 1,500.00 exceeds" in rows[2][3]
    assert "no price seen yet for BBB" in rows[3][3] and "notional limit" in rows[3][3]


def test_ctx_now_is_the_fill_time_in_on_fill(ws: WS, h: Harness) -> None:
    """While on_fill runs, ctx.now is the fill's time (the bar it filled on), not the time of
    the bar that placed the order."""
    s = admit(
        ws,
        "now.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, 1)

@strategy.hook
def on_fill(ctx, fill):
    assert ctx.now == fill.ts, (ctx.now, fill.ts)
    ctx.log.info("filled", at=ctx.now.isoformat())
""",
    )
    result = h.run([s], [bar("AAA", d, 100.0) for d in range(3)])
    assert result.strategies[0].quarantined is None
    assert [r["at"] for r in h.logged("filled")] == [(T0 + timedelta(days=1)).isoformat()]


def test_on_stop_logs_are_kept_and_its_orders_are_reported_not_executed(ws: WS, h: Harness) -> None:
    """What on_stop logs reaches the log; an order it asks for is not executed and a warning
    says so, naming the strategy and the symbol."""
    s = admit(
        ws,
        "stop.py",
        """
from bastion import strategy

@strategy.hook
def on_stop(ctx):
    ctx.log.info("goodbye", bars="all")
    ctx.order("AAA", 1)
""",
    )
    result = h.run([s], [bar("AAA", d, 100.0) for d in range(2)])
    logs = h.captured
    assert result.strategies[0].orders == 0
    assert h.rows("SELECT count(*) FROM orders") == [(0,)]
    goodbye = [e for e in logs if e["event"] == "goodbye"]
    assert goodbye and goodbye[0]["strategy"] == "stop.py" and goodbye[0]["bars"] == "all"
    ignored = [e for e in logs if e["event"] == "order_ignored"]
    assert len(ignored) == 1 and ignored[0]["log_level"] == "warning"
    assert ignored[0]["strategy"] == "stop.py" and ignored[0]["symbol"] == "AAA"


def test_ctx_pending_follows_accepted_partly_filled_and_cancelled_orders(
    ws: WS, h: Harness
) -> None:
    """ctx.pending(symbol) is the signed quantity still working: it rises when the broker
    accepts an order, falls with each partial fill, and a strategy that checks
    position + pending does not double an order that is only partly filled."""
    s = admit(
        ws,
        "pending.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.log.info("seen", held=ctx.position(bar.symbol), pending=ctx.pending(bar.symbol))
    if ctx.position(bar.symbol) + ctx.pending(bar.symbol) < 300:
        ctx.order(bar.symbol, 300 - ctx.position(bar.symbol) - ctx.pending(bar.symbol))

@strategy.hook
def on_stop(ctx):
    ctx.log.info("at_stop", pending=ctx.pending("AAA"))
""",
    )
    # participation 0.1 of volume 1,000: at most 100 shares fill per bar.
    bars = [bar("AAA", d, 100.0, volume=1000) for d in range(5)]
    result = h.run([s], bars, broker="commission=none,slippage=0,participation=0.1")
    assert [(r["held"], r["pending"]) for r in h.logged("seen")] == [
        ("0", "0"),
        ("100", "200"),
        ("200", "100"),
        ("300", "0"),
        ("300", "0"),
    ]
    assert result.strategies[0].orders == 1
    assert [r["pending"] for r in h.logged("at_stop")] == ["0"]


def test_ctx_pending_drops_what_is_cancelled_at_the_end(ws: WS, h: Harness) -> None:
    """Orders still working when the data ends are cancelled, and pending returns to 0."""
    s = admit(
        ws,
        "never.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, -7, limit=1000)   # a sell far above the market: never fills

@strategy.hook
def on_stop(ctx):
    ctx.log.info("at_stop", pending=ctx.pending("AAA"))
""",
    )
    h.run([s], [bar("AAA", d, 100.0) for d in range(3)])
    assert [r["pending"] for r in h.logged("at_stop")] == ["0"]
    assert h.rows("SELECT status, reason FROM orders") == [("cancelled", "end of run")]


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        ('ctx.order(bar.symbol, "nan")', "order quantity 'nan' is not a finite number"),
        ('ctx.order(bar.symbol, "lots")', "order quantity 'lots' is not a finite number"),
        ("ctx.order(bar.symbol, True)", "order quantity True is not a finite number"),
        ('ctx.order(bar.symbol, 1, limit="abc")', "expected a number, got 'abc'"),
    ],
)
def test_an_unusable_order_quarantines_with_a_readable_reason(
    ws: WS, h: Harness, call: str, reason: str
) -> None:
    """ctx.order with a quantity or price that is not a finite number quarantines the
    strategy with a reason a person can act on (not decimal's InvalidOperation repr)."""
    s = admit(
        ws,
        "garbage.py",
        f"""
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    {call}
""",
    )
    result = h.run([s], [bar("AAA", d, 100.0) for d in range(3)])
    quarantined = result.strategies[0].quarantined
    assert quarantined is not None
    assert quarantined.startswith("exception: on_bar: raised ValueError: ")
    assert reason in quarantined
    assert h.rows("SELECT count(*) FROM orders") == [(0,)]


ENTER_BBB_EARLY = """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order("BBB", ctx.params["quantity"], limit=200, tag="entry")

@strategy.hook
def on_fill(ctx, fill):
    if fill.side == "buy" and ctx.params["protect"]:
        ctx.order("BBB", -fill.quantity, stop=40, tag="protective-stop")

PARAMS = {"quantity": 700, "protect": False}
"""


def _early_bbb() -> list[Bar]:
    """AAA from day 0; BBB only from day 1, opening at 100 and closing at 50."""
    bbb_first = Bar(
        symbol="BBB",
        ts=T0 + timedelta(days=1),
        open=100.0,
        high=101.0,
        low=49.0,
        close=50.0,
        volume=1e6,
    )
    return [
        bar("AAA", 0, 100.0),
        bar("AAA", 1, 100.0),
        bbb_first,
        bar("AAA", 2, 100.0),
        bar("BBB", 2, 50.0),
    ]


def test_a_fill_on_a_symbols_first_bar_is_marked_at_that_bars_close(ws: WS, h: Harness) -> None:
    """A position filled on the first bar a symbol has is marked to that bar's close at
    once (its equity used to stay at the fill price until the next price change)."""
    s = admit(ws, "early.py", ENTER_BBB_EARLY)
    result = h.run([s], _early_bbb())
    assert h.equity() == [100_000.0, 65_000.0, 65_000.0]
    assert result.strategies[0].equity == Decimal(65_000)


def test_an_order_from_on_fill_on_a_symbols_first_bar_is_handled(ws: WS, h: Harness) -> None:
    """on_fill may order in a symbol whose first bar brought the fill (a protective stop):
    the order is stored and accepted, and the run does not fail (it used to crash on the
    missing mark)."""
    s = admit(ws, "protect.py", ENTER_BBB_EARLY)
    result = h.run([s], _early_bbb(), params={"protect": True})
    assert result.strategies[0].quarantined is None
    rows = h.rows("SELECT tag, status FROM orders ORDER BY client_order_id")
    assert rows == [("entry", "filled"), ("protective-stop", "cancelled")]  # cancelled: end


def test_a_fill_that_leaves_the_account_under_maintenance_is_margin_called(
    ws: WS, h: Harness
) -> None:
    """The maintenance level is checked after every fill, not only when a price moves: at
    full 2x leverage with maintenance 0.5, the commission alone puts the account under it,
    and the position is liquidated on the next bar although the price never changes."""
    s = admit(
        ws,
        "full.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, 1990)
""",
    )
    h.run(
        [s],
        [bar("AAA", d, 100.0) for d in range(4)],
        broker="commission=per-share:1,slippage=0,maintenance=0.5,long_leverage=2",
    )
    rows = h.rows("SELECT liquidation, side, status FROM orders ORDER BY created, liquidation")
    assert rows == [(0, "buy", "filled"), (1, "sell", "filled")]
    assert "margin_call" in [e for (e,) in h.rows("SELECT event FROM audit")]


def test_an_order_cancelled_after_its_fill_was_computed_keeps_its_cancellation(
    ws: WS, h: Harness
) -> None:
    """Two orders fill partly on one bar; on_fill for the first raises, which cancels the
    second, whose fill the broker had already made. The fill is booked, the order stays
    cancelled with its reason (it used to end as "partial" with none), and nothing of it is
    left working."""
    s = admit(
        ws,
        "fragile.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, 50, tag="A")
        ctx.order(bar.symbol, 200, tag="B")

@strategy.hook
def on_fill(ctx, fill):
    raise RuntimeError("cannot cope")
""",
    )
    result = h.run(
        [s],
        [bar("AAA", d, 100.0, volume=1000) for d in range(4)],
        broker="commission=none,slippage=0,participation=0.1",
    )
    assert (
        result.strategies[0].quarantined == "exception: on_fill: raised RuntimeError: cannot cope"
    )
    rows = h.rows("SELECT tag, status, reason, filled FROM orders ORDER BY client_order_id")
    assert rows == [
        ("A", "filled", None, "50"),
        ("B", "cancelled", "strategy quarantined", "50"),
    ]
    assert h.positions().get("AAA", 0) == 100


def test_orders_in_several_symbols_on_one_bar_share_one_leverage_limit(ws: WS, h: Harness) -> None:
    """Five buys of 1.4x equity each, in five symbols on one bar: the first is accepted,
    the rest are rejected for buying power (each used to be checked as if alone, the
    others' working orders valued at 0, and all five filled: 7x leverage)."""
    s = admit(
        ws,
        "spread.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if bar.symbol == "E" and not ctx.state.get("done"):
        ctx.state["done"] = True
        for symbol in "ABCDE":
            ctx.order(symbol, 1400)
""",
    )
    bars = [bar(symbol, d, 100.0) for d in range(3) for symbol in "ABCDE"]
    result = h.run([s], bars)
    statuses = h.rows("SELECT symbol, status FROM orders ORDER BY client_order_id")
    assert statuses == [("A", "filled")] + [(x, "rejected") for x in "BCDE"]
    assert result.strategies[0].fills == 1


def test_orders_that_net_to_zero_still_count_against_the_limit(ws: WS, h: Harness) -> None:
    """A buy limit far below the market and a market sell of the same size net to nothing
    working, but either may fill: a further short is checked with the sell counted at the
    market (the symbol used to drop out of the snapshot and be valued at 0.01)."""
    s = admit(
        ws,
        "hide.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if bar.symbol == "Y" and not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order("X", 1500, limit=0.01)
        ctx.order("X", -1500)
        ctx.order("Y", -1900)
""",
    )
    bars = [bar(symbol, d, 100.0) for d in range(3) for symbol in "XY"]
    h.run([s], bars, broker="commission=none,slippage=0,maintenance=0")
    rows = h.rows("SELECT symbol, side, status FROM orders ORDER BY client_order_id")
    assert rows[2] == ("Y", "sell", "rejected")  # 150k + 190k short > 200k


def test_a_quarantine_does_not_stop_a_running_liquidation(ws: WS, h: Harness) -> None:
    """A strategy that raises while its margin-call liquidation is working is quarantined,
    but the liquidation still closes the position (it used to be cancelled with the
    strategy's other orders, leaving the position to ride)."""
    s = admit(
        ws,
        "panic.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, 1500)
    elif bar.close < 50:
        raise RuntimeError("panic")
""",
    )
    prices = [100.0, 100.0, 40.0, 40.0, 5.0]
    result = h.run(
        [s], [bar("AAA", d, p) for d, p in enumerate(prices)], broker="commission=none,slippage=0"
    )
    assert result.strategies[0].quarantined == "exception: on_bar: raised RuntimeError: panic"
    rows = h.rows("SELECT liquidation, side, quantity, status FROM orders ORDER BY created")
    assert rows == [(0, "buy", "1500", "filled"), (1, "sell", "1500", "filled")]
    assert h.positions().get("AAA", 0) == 0
    assert result.strategies[0].equity == Decimal(10_000)  # sold at the 40 open, not at 5


def test_a_fill_during_a_margin_call_is_liquidated_too(ws: WS, h: Harness) -> None:
    """Two buys fill on one bar; the first leaves the account under maintenance and starts
    the margin call, the second fills after it: the liquidation is replaced by one that
    closes both (the second used to be left open, and the strategy, never flat again, was
    never margin-called again)."""
    s = admit(
        ws,
        "pair.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, 3900)
        ctx.order(bar.symbol, 90)
""",
    )
    h.run(
        [s],
        [bar("AAA", d, 100.0) for d in range(4)],
        broker="commission=none,slippage=65,long_leverage=4",
    )
    rows = h.rows("SELECT liquidation, side, quantity, status FROM orders ORDER BY client_order_id")
    assert rows == [
        (0, "buy", "3900", "filled"),
        (0, "buy", "90", "filled"),
        (1, "sell", "3900", "cancelled"),
        (1, "sell", "3990", "filled"),
    ]
    assert h.positions().get("AAA", 0) == 0


def test_the_next_margin_call_comes_once_the_liquidation_is_done(ws: WS, h: Harness) -> None:
    """A strategy that shorts one share of another symbol while its margin call runs is
    never left immune: that fill is liquidated with the rest, the call ends when the
    liquidation is done, and re-levering into a second crash brings a second call (the
    margin call used to last until the strategy was flat, which the one-share short
    prevented forever)."""
    s = admit(
        ws,
        "relever.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if bar.symbol != "BBB":
        return
    n = ctx.state["n"] = ctx.state.get("n", 0) + 1
    if n == 1:
        ctx.order("BBB", 1500)
    elif n == 3:
        ctx.order("AAA", -1)
    elif n == 5:
        ctx.order("BBB", 300)
""",
    )
    b_prices = [100.0, 100.0, 40.0, 40.0, 40.0, 40.0, 5.0, 5.0]
    bars = [x for d, p in enumerate(b_prices) for x in (bar("AAA", d, 100.0), bar("BBB", d, p))]
    h.run([s], bars, broker="commission=none,slippage=0")
    calls = [e for (e,) in h.rows("SELECT event FROM audit") if e == "margin_call"]
    assert len(calls) == 2
    liquidations = h.rows(
        "SELECT substr(created, 1, 10), symbol, side, quantity FROM orders "
        "WHERE liquidation = 1 ORDER BY client_order_id"
    )
    assert liquidations == [
        ("2024-01-03", "BBB", "sell", "1500"),
        ("2024-01-04", "AAA", "buy", "1"),  # the short, closed during the first call
        ("2024-01-07", "BBB", "sell", "300"),
    ]


def test_a_reducing_fill_during_a_margin_call_never_makes_the_liquidation_reverse(
    ws: WS, h: Harness
) -> None:
    """A buy fill starts a margin call; a take-profit sell of the same strategy fills right
    after it on the same bar. The liquidation is resized to what is left, so the position
    goes 1980 -> 1380 -> 0 and is never short (the old top-up bought the sale back while
    the full-size liquidation sold, leaving the account short 600 for a bar)."""
    s = admit(
        ws,
        "takeprofit.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    n = ctx.state["n"] = ctx.state.get("n", 0) + 1
    if n == 1:
        ctx.order(bar.symbol, 1000)
    elif n == 2:
        ctx.order(bar.symbol, 980)
        ctx.order(bar.symbol, -600, limit=100, tag="take-profit")
""",
    )
    h.run(
        [s],
        [bar("AAA", d, 100.0) for d in range(5)],
        broker="commission=per-share:1,slippage=0,maintenance=0.5,long_leverage=2",
    )
    held, path = 0, []
    for side, quantity in h.rows("SELECT side, quantity FROM fills ORDER BY id"):
        held += int(quantity) if side == "buy" else -int(quantity)
        path.append(held)
    assert path == [1000, 1980, 1380, 0]
    rows = h.rows("SELECT liquidation, side, quantity, status FROM orders ORDER BY client_order_id")
    assert rows[-2:] == [(1, "sell", "1980", "cancelled"), (1, "sell", "1380", "filled")]


def test_fills_are_judged_at_the_bars_open_not_the_last_close(ws: WS, h: Harness) -> None:
    """A fill on a bar that gaps is booked, margin-checked and shown to on_fill with its
    symbol marked at that bar's open: adding to a winner after a gap from 100 to 300 is no
    margin call (the stale 100 mark made it look like equity 20,000 against 140,000), and
    an order placed in on_fill after a gap down is checked at the gap price."""
    adder = admit(
        ws,
        "adder.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    n = ctx.state["n"] = ctx.state.get("n", 0) + 1
    if n == 1:
        ctx.order(bar.symbol, 1000)
    elif n == 2:
        ctx.order(bar.symbol, 400)
""",
    )
    gap_up = [
        bar("AAA", 0, 100.0),
        bar("AAA", 1, 100.0),
        bar("AAA", 2, 300.0),
        bar("AAA", 3, 300.0),
    ]
    h.run([adder], gap_up, broker="commission=none,slippage=0")
    assert "margin_call" not in [e for (e,) in h.rows("SELECT event FROM audit")]
    assert h.positions().get("AAA", 0) == 1400


def test_an_order_from_on_fill_after_a_gap_is_checked_at_the_gap_price(ws: WS, h: Harness) -> None:
    """A 1.4x buy that fills at a gap down from 100 to 70, then an on_fill buy elsewhere:
    checked with the first position worth 70 a share, the second order would take the
    account to 1.7x and is rejected (at the stale 100 it looked like 142,000 of equity)."""
    s = admit(
        ws,
        "chase.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if bar.symbol == "AAA" and not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order("AAA", 1400)

@strategy.hook
def on_fill(ctx, fill):
    if fill.symbol == "AAA":
        ctx.order("BBB", 720)
""",
    )
    bars = [
        bar("AAA", 0, 100.0),
        bar("BBB", 0, 100.0),
        bar("AAA", 1, 70.0),
        bar("BBB", 1, 100.0),
        bar("AAA", 2, 70.0),
        bar("BBB", 2, 100.0),
    ]
    h.run([s], bars, broker="commission=none,slippage=0")
    rows = h.rows("SELECT symbol, status, reason FROM orders ORDER BY client_order_id")
    assert rows[0][:2] == ("AAA", "filled")
    assert rows[1][:2] == ("BBB", "rejected") and "170,000.00" in rows[1][2]


def test_a_gap_on_a_bar_with_working_orders_is_margin_checked(ws: WS, h: Harness) -> None:
    """A symbol with a working order is marked at the bar's open before fills; a gap there
    is margin-checked even when the bar then closes at its open (a resting take-profit used
    to switch margin calls off for such one-price bars)."""
    s = admit(
        ws,
        "rested.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, 1400)

@strategy.hook
def on_fill(ctx, fill):
    if fill.side == "buy":
        ctx.order(fill.symbol, -1400, limit=1000, tag="take-profit")
""",
    )
    prices = [100.0, 100.0, 100.0, 35.0, 34.0, 34.0]
    h.run(
        [s], [bar("AAA", d, p) for d, p in enumerate(prices)], broker="commission=none,slippage=0"
    )
    assert "margin_call" in [e for (e,) in h.rows("SELECT event FROM audit")]
    assert h.positions().get("AAA", 0) == 0


def test_on_fill_sees_equity_at_the_price_the_account_was_judged_at(ws: WS, h: Harness) -> None:
    """In on_fill after a gap, ctx.equity values the position at the gap's open, as the
    kernel's checks do (it used to use the strategy's last seen close)."""
    s = admit(
        ws,
        "watcher.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, 1000)

@strategy.hook
def on_fill(ctx, fill):
    ctx.log.info("equity", equity=ctx.equity)
""",
    )
    h.run(
        [s],
        [bar("AAA", 0, 100.0), bar("AAA", 1, 35.0), bar("AAA", 2, 35.0)],
        broker="commission=none,slippage=0",
    )
    [record] = h.logged("equity")
    assert Decimal(record["equity"]) == Decimal(100_000)


def test_another_strategys_resting_order_does_not_change_a_holders_margin_call(
    ws: WS, h: Harness
) -> None:
    """A bar that gaps down at the open and closes back up is checked at its close for
    every holder alike: a bystander's never-filling order in the symbol (which makes the
    engine mark the open) does not margin-call a holder that would not be called alone."""
    holder = admit(ws, "holder.py", BUY_FIRST.replace("10)", "1400)"))
    bystander = admit(
        ws,
        "bystander.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, 1, limit=1)
""",
    )
    gap = Bar(
        symbol="AAA",
        ts=T0 + timedelta(days=3),
        open=35.0,
        high=100.0,
        low=35.0,
        close=100.0,
        volume=1e6,
    )
    bars = [bar("AAA", 0, 100.0), bar("AAA", 1, 100.0), bar("AAA", 2, 100.0), gap]
    result = h.run([holder, bystander], bars, broker="commission=none,slippage=0")
    assert "margin_call" not in [e for (e,) in h.rows("SELECT event FROM audit")]
    by_name = {r.name: r for r in result.strategies}
    assert by_name["holder.py"].equity == Decimal(100_000)


def test_a_flat_account_is_never_margin_called(ws: WS, h: Harness) -> None:
    """A liquidation that closes the last position at a loss leaves equity below zero and
    nothing held: that is not a second margin call (it used to log and audit one with a
    gross exposure of 0 and cancel the strategy's other working orders)."""
    s = admit(
        ws,
        "squeezed.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    n = ctx.state["n"] = ctx.state.get("n", 0) + 1
    if n == 1:
        ctx.order(bar.symbol, -1800)
    if n == 3:
        ctx.order(bar.symbol, 1, limit=1, tag="bargain")
""",
    )
    prices = [100.0, 100.0, 150.0, 200.0, 200.0]
    result = h.run([s], [bar("AAA", d, p) for d, p in enumerate(prices)])
    calls = [e for (e,) in h.rows("SELECT event FROM audit") if e == "margin_call"]
    assert len(calls) == 1
    assert result.strategies[0].equity < 0
    assert h.rows("SELECT status, reason FROM orders WHERE tag = 'bargain'") == [
        ("cancelled", "end of run")
    ]


def test_many_fills_on_one_bar_across_many_symbols(ws: WS, h: Harness) -> None:
    """A strategy without on_fill that fills 300 orders in 300 symbols on one bar runs to
    the end on both hosts with the same results (a sandboxed worker gets the fills' effect
    on ctx as one note, however many there were)."""
    symbols = [f"S{i:03d}" for i in range(300)]
    s = admit(
        ws,
        "wide.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if ctx.position(bar.symbol) == 0 and ctx.pending(bar.symbol) == 0:
        ctx.order(bar.symbol, 1)
    if bar.symbol == "S299":
        ctx.log.info("seen", cash=ctx.cash, held=sum(ctx.positions.values()))
""",
    )
    bars = [bar(sym, day, 10.0) for day in range(3) for sym in symbols]
    result = h.run([s], bars, cash="1000000")
    assert result.strategies[0].quarantined is None
    assert result.strategies[0].fills == 300
    assert [r["held"] for r in h.logged("seen")] == ["0", "300", "300"]
    assert len(h.positions()) == 300


def test_answering_rejections_with_ever_more_orders_is_bounded(ws: WS, h: Harness) -> None:
    """A strategy that answers each rejection with a hundred more (never stored: their
    quantity is one the ledger cannot hold) and stops short of the depth limit would keep
    the kernel busy for ever; more than 1,000 rejections in one event quarantine it."""
    s = admit(
        ws,
        "fan.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.order(bar.symbol, 10**40, tag="0")

@strategy.hook
def on_reject(ctx, intent, reason):
    depth = int(intent.tag)
    if depth < 6:
        for _ in range(100):
            ctx.order(intent.symbol, 10**40, tag=str(depth + 1))
""",
    )
    result = h.run([s], [bar("AAA", d, 100.0) for d in range(3)])
    assert result.strategies[0].quarantined == (
        "exception: on_reject: kept answering rejections with orders (more than 1000 in one event)"
    )
    assert h.rows("SELECT count(*) FROM orders") == [(0,)]


def test_a_reason_a_strategy_writes_cannot_drive_the_terminal(ws: WS, h: Harness) -> None:
    """An exception message with terminal escapes and newlines is stored and shown with
    them written out (\\x1b, \\x0a), on both hosts: what a strategy says is one safe line."""
    s = admit(
        ws,
        "tty.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    raise ValueError("\\x1b[2K\\x1b[1Aforged line\\nsecond")
""",
    )
    result = h.run([s], [bar("AAA", 0, 100.0)])
    text = result.strategies[0].quarantined
    assert text == ("exception: on_bar: raised ValueError: \\x1b[2K\\x1b[1Aforged line\\x0asecond")
    assert text.isprintable()


def test_bars_in_another_time_zone_reach_strategies_in_utc(ws: WS, h: Harness) -> None:
    """A source's bar stamped in New York time is the same instant in UTC; both hosts
    hand the strategy the UTC time, so results do not depend on the host."""
    from zoneinfo import ZoneInfo

    s = admit(
        ws,
        "clock.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.log.info("seen", ts=bar.ts.isoformat(), hour=bar.ts.hour)
""",
    )
    new_york = ZoneInfo("America/New_York")
    local = [
        datetime(2021, 11, 7, 0, 30, tzinfo=new_york),
        datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=new_york),
    ]
    bars = [Bar("AAA", ts, 100.0, 101.0, 99.0, 100.0, 1e6) for ts in local]
    h.run([s], bars)
    assert [r["ts"] for r in h.logged("seen")] == [
        "2021-11-07T04:30:00+00:00",
        "2021-11-07T06:30:00+00:00",
    ]


def test_orders_per_minute_are_limited_across_strategies(ws: WS, h: Harness) -> None:
    """max_orders_per_minute counts every strategy's orders in any 60 seconds of the bars'
    time; beyond it an order is rejected with the reason (and on_reject hears it)."""
    eager = """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.order(bar.symbol, 1, limit=1)

@strategy.hook
def on_reject(ctx, intent, reason):
    ctx.log.info("rejected", reason=reason)
"""
    a, b = admit(ws, "a.py", eager), admit(ws, "b.py", eager)
    minute = [
        Bar("AAA", T0 + timedelta(seconds=20 * i), 100.0, 101.0, 99.0, 100.0, 1e6) for i in range(6)
    ]
    h.run([a, b], minute, limits=OrderLimits(max_orders_per_minute=5))
    statuses = [s for (s,) in h.rows("SELECT status FROM orders ORDER BY client_order_id")]
    # bars at 0, 20, 40 s: 2 orders each, the 6th in that minute is refused; at 60 s the
    # first two have left the window, and so on
    assert statuses.count("rejected") >= 1
    reasons = {r["reason"] for r in h.logged("rejected")}
    assert reasons == {"5 orders in the last minute reach the development limit of 5 per minute"}


def test_open_positions_are_limited_across_the_account(ws: WS, h: Harness) -> None:
    """max_open_positions caps how many symbols the account holds: an order that would open
    one more is rejected; orders in symbols already held still pass."""
    s = admit(
        ws,
        "spread.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if ctx.position(bar.symbol) == 0 and ctx.pending(bar.symbol) == 0:
        ctx.order(bar.symbol, 1)
""",
    )
    bars = sorted(
        [bar(sym, d, 10.0) for d in range(3) for sym in ("A1", "A2", "A3")],
        key=lambda b: (b.ts, b.symbol),
    )
    h.run([s], bars, limits=OrderLimits(max_open_positions=2))
    assert sorted(h.positions()) == ["A1", "A2"]
    reasons = [r for (r,) in h.rows("SELECT reason FROM orders WHERE status = 'rejected'")]
    assert reasons and all("A3 would be a new position; 2 are open" in r for r in reasons)


def test_a_daily_loss_beyond_the_limit_halts_trading_for_that_day(ws: WS, h: Harness) -> None:
    """When the account's equity falls more than max_daily_loss below the day's start,
    working orders are cancelled and new ones refused for the rest of that (UTC) day, with
    the reason; the halt is in the audit log; the next day trading resumes."""
    s = admit(
        ws,
        "loser.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    if ctx.position(bar.symbol) == 0 and ctx.pending(bar.symbol) == 0:
        ctx.order(bar.symbol, 10)
    else:
        ctx.order(bar.symbol, 1, limit=1)   # rests, far below the market

@strategy.hook
def on_reject(ctx, intent, reason):
    ctx.log.info("rejected", at=ctx.now.isoformat(), reason=reason)
""",
    )
    hours = [(0, 10, 100.0), (0, 11, 100.0), (0, 12, 80.0), (0, 13, 80.0), (1, 10, 80.0)]
    bars = [
        Bar("AAA", T0 + timedelta(days=d, hours=hr - 21), p, p + 1, p - 1, p, 1e6)
        for d, hr, p in hours
    ]
    result = h.run([s], bars, limits=OrderLimits(max_daily_loss=Decimal(100)))
    assert result.strategies[0].quarantined is None
    assert "trading_halted" in [e for (e,) in h.rows("SELECT event FROM audit")]
    rejected = h.logged("rejected")
    assert [r["at"] for r in rejected] == [bars[3].ts.isoformat()]  # 13:00 on the bad day
    assert rejected[0]["reason"].startswith(
        f"trading is halted until the end of {bars[2].ts.date()}: the account lost 200.00 today"
    )
    assert ("trading halted",) in h.rows("SELECT reason FROM orders WHERE status = 'cancelled'")
    last = h.rows("SELECT created, status FROM orders ORDER BY client_order_id")[-1]
    assert last[0].startswith(str(bars[4].ts.date()))  # the next day an order is placed again


def test_a_fill_bastion_did_not_order_is_recorded_and_a_duplicate_is_booked_once(
    ws: WS, h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker reporting a fill for an order this run never placed (a manual trade, an
    order from before a restart) gets it recorded in the audit log and the trades stream,
    booked to no strategy, and the run goes on; the same execution reported twice is
    booked once."""
    s = admit(ws, "buy9.py", BUY_FIRST)
    real_on_bar = SimBroker.on_bar
    extra: dict[str, Any] = {"sent": False}

    def on_bar(self: SimBroker, bar_: Bar) -> Any:
        fills = list(real_on_bar(self, bar_))
        if fills and not extra["sent"]:
            extra["sent"] = True
            own = attrs.evolve(fills[0], exec_id="E1")
            manual = Fill("manual-7", bar_.symbol, "sell", 3, 101, 0, bar_.ts, exec_id="E2")
            return [own, own, manual]
        return fills

    monkeypatch.setattr(SimBroker, "on_bar", on_bar)
    result = h.run([s], [bar("AAA", d, 100.0) for d in range(4)])
    assert result.strategies[0].fills == 1 and h.positions() == {"AAA": Decimal(10)}
    assert [f.order_id for f in h.engine.unknown_fills] == ["manual-7"]
    audit = [e for (e,) in h.rows("SELECT event FROM audit")]
    assert audit.count("unknown_fill") == 1
    assert h.rows("SELECT count(*) FROM fills") == [(1,)]


def test_signal_only_records_intents_that_pass_every_check_and_sends_nothing(
    ws: WS, h: Harness
) -> None:
    """In signal-only mode an intent that passes the limits and risk checks is written to
    the audit log as a signal with the strategy's SHA-256; no order row exists and the
    broker sees nothing; an intent over a limit is still rejected with its reason."""
    s = admit(
        ws,
        "signals.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.order(bar.symbol, 10)
    ctx.order(bar.symbol, 1000)
""",
    )
    result = h.run(
        [s],
        [bar("AAA", d, 100.0) for d in range(3)],
        limits=OrderLimits(max_order_quantity=Decimal(100)),
        signal_only=True,
    )
    assert result.strategies[0].fills == 0
    audit = h.rows("SELECT event, payload FROM audit WHERE event = 'signal'")
    assert len(audit) == 3
    payload = json.loads(audit[0][1])
    assert (payload["sha256"], payload["quantity"], payload["side"]) == (s.info.sha256, "10", "buy")
    assert [st for (st,) in h.rows("SELECT DISTINCT status FROM orders")] == ["rejected"]
    assert h.store.verify_audit().ok


def test_warm_up_bars_reach_strategies_but_their_orders_are_ignored(ws: WS, h: Harness) -> None:
    """Bars before trade_from warm the strategy up (it sees them, its history fills) but
    what it asks for then is ignored with a reason; from the first live bar on, orders go
    through as usual."""
    s = admit(
        ws,
        "warm.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.log.info("seen", n=len(ctx.history(bar.symbol)))
    if ctx.position(bar.symbol) == 0 and ctx.pending(bar.symbol) == 0:
        ctx.order(bar.symbol, 5)
""",
    )
    bars = [bar("AAA", d, 100.0) for d in range(5)]
    h.run([s], bars, trade_from=bars[3].ts)
    assert [r["n"] for r in h.logged("seen")] == ["1", "2", "3", "4", "5"]
    created = [c for (c,) in h.rows("SELECT created FROM orders")]
    assert len(created) == 1 and created[0].startswith(str(bars[3].ts.date()))
    ignored = [r for r in h.captured if r["event"] == "order_ignored"]
    assert len(ignored) == 3 and "warm-up" in ignored[0]["reason"]


CARRIER = """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    held = ctx.position(bar.symbol)
    ctx.log.info("held", quantity=held, cash=ctx.cash)
    if held > 0 and ctx.pending(bar.symbol) == 0:
        ctx.order(bar.symbol, -held)
"""


def test_a_carried_book_opens_the_run_holding_it(ws: WS, h: Harness) -> None:
    """A paper or live run that carries a strategy's earlier fills starts holding them
    (position and the cash they cost), marked at the last traded price; its earlier
    round trips are not this run's trades, and a broker re-reporting a carried execution
    books nothing."""
    s = admit(ws, "carry.py", CARRIER)
    earlier = [
        Fill("old-1", "AAA", "buy", 15, 90, 1, T0 - timedelta(days=3), exec_id="E1"),
        Fill("old-2", "AAA", "sell", 5, 95, 1, T0 - timedelta(days=2), exec_id="E2"),
    ]
    real_on_bar = SimBroker.on_bar
    replayed = {"done": False}

    def on_bar(self: SimBroker, bar_: Bar) -> Any:
        fills = list(real_on_bar(self, bar_))
        if not replayed["done"]:
            replayed["done"] = True
            return [*fills, earlier[0]]  # a broker re-reporting a booked execution
        return fills

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SimBroker, "on_bar", on_bar)
        result = h.run([s], [bar("AAA", d, 100.0) for d in range(3)], opening={s.name: earlier})
    assert result.strategies[0].quarantined is None, result
    first = h.logged("held")[0]
    # 100000 - 15*90 - 1 + 5*95 - 1 = 99123
    assert (first["quantity"], first["cash"]) == ("10", "99123")
    assert h.positions() == {"AAA": Decimal(0)}  # sold at the second bar's open
    [stored] = h.rows("SELECT quantity, price FROM fills")
    assert stored == ("10", "100.0")
    assert result.strategies[0].fills == 1 and h.engine.unknown_fills == []
    [strategy] = h.store.load_run(RUN).strategies
    assert strategy.metrics["trades"] == 1  # this run's one round trip, not the earlier one
    # the book's realised P&L: 5 sold at 95 (+25), then 10 sold at 100 (+100)
    assert [p.realized for p in strategy.positions] == [Decimal(125)]


def test_a_blocked_strategy_is_refused_every_order_with_the_reason(ws: WS, h: Harness) -> None:
    """A strategy a reconciliation blocked runs and sees bars, but each order it asks for
    is rejected with the block's reason (stored, told to on_reject); others trade."""
    blocked = admit(ws, "blocked.py", BUY_FIRST)
    free = admit(ws, "free.py", BUY_FIRST)
    h.run(
        [blocked, free],
        [bar("AAA", d, 100.0) for d in range(3)],
        blocked={"blocked.py": "positions differ from the broker's"},
    )
    rows = h.rows("SELECT strategy, status, reason FROM orders ORDER BY strategy")
    assert rows == [
        ("blocked.py", "rejected", "positions differ from the broker's"),
        ("free.py", "filled", None),
    ]


def test_the_operators_halt_file_cancels_and_refuses_until_removed(
    ws: WS, h: Harness, tmp_path: Path
) -> None:
    """'bastion halt' writes the halt file: from the next bar the run cancels working
    orders and rejects new ones with the operator's reason (audited); once 'bastion
    resume' removes it, orders go through again."""
    s = admit(
        ws,
        "every.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.order(bar.symbol, 1, limit=1.0)
""",
    )
    halt = tmp_path / "HALT"
    bars = [bar("AAA", d, 100.0) for d in range(6)]

    def source() -> Iterator[Bar]:
        for i, item in enumerate(bars):
            if i == 2:
                halt.write_text('{"reason": "news pending"}\n')
            if i == 4:
                halt.unlink()
            yield item

    result = h.run([s], source(), symbols={"AAA"}, halt_file=halt)  # type: ignore[arg-type]
    assert result.strategies[0].quarantined is None, result
    rows = h.rows("SELECT status, reason FROM orders ORDER BY created, client_order_id")
    assert [r[0] for r in rows] == ["cancelled", "cancelled", "rejected", "rejected",
                                    "cancelled", "cancelled"]  # fmt: skip
    assert rows[0][1] == "trading halted"
    assert rows[2][1] == (
        "trading is halted by the operator: news pending ('bastion resume' lifts it)"
    )
    audit = [e for (e,) in h.rows("SELECT event FROM audit")]
    assert audit.count("trading_halted") == 1 and audit.count("trading_resumed") == 1


def test_the_benchmark_is_buy_and_hold_of_the_runs_symbols(ws: WS, h: Harness) -> None:
    """Cash split equally over the symbols, each slice bought at its first close (a
    symbol that starts later waits in cash) and held: AAA 100 -> 150, BBB from day 1 at
    50 -> 25, so 100000 -> 50000*1.5 + 50000*0.5 = 100000; the strategy's metrics are
    compared with it and its monthly returns stored."""
    s = admit(
        ws,
        "idle.py",
        "from bastion import strategy\n\n@strategy.hook\ndef on_bar(ctx, bar):\n    pass\n",
    )
    bars = [bar("AAA", 0, 100.0), bar("AAA", 1, 120.0), bar("BBB", 1, 50.0),
            bar("AAA", 2, 150.0), bar("BBB", 2, 25.0)]  # fmt: skip
    result = h.run([s], bars)
    run = h.store.load_run(RUN)
    assert [value for _, value in run.benchmark] == [100000.0, 110000.0, 100000.0]
    metrics = result.strategies[0].metrics
    assert metrics["benchmark_return"] == 0.0 and metrics["excess_return"] == 0.0
    assert run.strategies[0].period_returns == {"2024": 0.0, "2024-01": 0.0}
