"""The engine's core driven by hand: no broker, store, host, logger or file.

:class:`bastion._core.EngineCore` is meant to be a pure state machine: an event
goes in through ``handle`` (or ``start``/``stop``/``results``), commands come
out, and each command's result is sent back by whoever drives it.  These tests
are that driver, in a few lines (:class:`Driver`): every command is recorded
and answered from a script written in the test (the strategies' replies, the
broker's verdicts and fills, the operator's halt), and the tests assert on the
commands and their order.  Nothing here touches a broker, a store, a strategy
host, a logger or a file, so what passes here is the core's own decision.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import bastion._core
from bastion._core import (
    Ask,
    CancelAll,
    CancelOrder,
    CancelStrategy,
    CheckRisk,
    Commands,
    Dismiss,
    EngineConfig,
    EngineCore,
    Gather,
    Log,
    Match,
    PostFill,
    PostReject,
    PostStop,
    ReadHalt,
    RecordBenchmark,
    RecordEquity,
    RecordFill,
    RecordOrder,
    RecordPeriodReturns,
    RecordPositions,
    RecordResult,
    StrategyResult,
    Submit,
    Tick,
    UpdateOrder,
    Working,
)
from bastion._host import EXCEPTION, Failure, Reply
from bastion._loader import StrategyInfo
from bastion._settings import Limits
from bastion.interfaces import OrderUpdate
from bastion.models import (
    AccountSnapshot,
    Bar,
    Fill,
    MarginPolicy,
    Order,
    OrderIntent,
    OrderStatus,
    OrderType,
    Side,
)

RUN = "core-run"
T0 = datetime(2024, 1, 2, 21, tzinfo=UTC)
DAY = timedelta(days=1)
CASH = Decimal(10000)
ZERO = Decimal(0)
SYMBOLS = frozenset({"AAA", "BBB"})

# ----------------------------------------------------------------------------- the driver

Answer = Callable[[Any], Any]

#: What a command gets when the test's script does not say: the cancels cancelled
#: nothing, the broker's bar filled nothing; every other command gets ``None``
#: (no reply, order accepted, no veto, no halt).
DEFAULTS: dict[type, Answer] = {
    Match: lambda command: (),
    CancelStrategy: lambda command: (),
    CancelAll: lambda command: (),
    CancelOrder: lambda command: None,
}


def in_turn(*results: Any, then: Any = None) -> Answer:
    """An answer that gives ``results`` one per command, then ``then`` for ever."""
    pending = list(results)
    return lambda command: pending.pop(0) if pending else then


class Driver:
    """Runs the core's command generators: each command is recorded, then answered
    by the script's callable for its type (``DEFAULTS`` otherwise) and the answer
    sent back.  ``log`` holds every command of the run, in order; each call returns
    that call's commands.  This is all a driver is; the real one
    (:class:`bastion._engine.Engine`) only answers from a broker, a store and hosts."""

    def __init__(self, core: EngineCore, script: Mapping[type, Answer] | None = None) -> None:
        self.core = core
        self.script: dict[type, Answer] = dict(script or {})
        self.log: list[Any] = []
        self.value: Any = None

    def run(self, commands: Commands) -> list[Any]:
        emitted: list[Any] = []
        try:
            command = commands.send(None)
            while True:
                emitted.append(command)
                answer = self.script.get(type(command)) or DEFAULTS.get(type(command))
                command = commands.send(None if answer is None else answer(command))
        except StopIteration as done:
            self.value = done.value
        self.log.extend(emitted)
        return emitted

    def start(self) -> list[Any]:
        return self.run(self.core.start())

    def handle(self, event: Any) -> list[Any]:
        return self.run(self.core.handle(event))

    def stop(self) -> list[Any]:
        return self.run(self.core.stop())

    def results(self) -> list[Any]:
        return self.run(self.core.results())


# ----------------------------------------------------------------------------- helpers


def info(name: str) -> StrategyInfo:
    """A strategy's facts; the path is never opened (nothing here loads it)."""
    return StrategyInfo(
        name=name,
        path=Path(f"/nonexistent/{name}.py"),
        sha256=name[0] * 64,
        signer=None,
        signer_name=None,
        signed_at=None,
        whitelist_version=None,
        unsigned=True,
    )


def config(**changes: Any) -> EngineConfig:
    return EngineConfig(run_id=RUN, environment="test", cash=CASH, symbols=SYMBOLS, **changes)


def new_core(*names: str, cfg: EngineConfig | None = None, **options: Any) -> EngineCore:
    return EngineCore(
        cfg or config(), [(info(name), {"n": 1}, "in-process") for name in names], **options
    )


def bar(symbol: str, day: int, close: float, open_: float | None = None) -> Bar:
    """``symbol``'s bar on day ``day`` of the run."""
    start = close if open_ is None else open_
    return Bar(
        symbol=symbol,
        ts=T0 + day * DAY,
        open=start,
        high=max(start, close),
        low=min(start, close),
        close=close,
    )


def buy(quantity: int, symbol: str = "AAA", **fields: Any) -> OrderIntent:
    return OrderIntent(symbol=symbol, side=Side.BUY, quantity=Decimal(quantity), **fields)


def fill_of(
    order: Order, quantity: int, price: float, day: int, exec_id: str | None = None
) -> Fill:
    return Fill(
        order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side,
        quantity=Decimal(quantity),
        price=Decimal(repr(price)),
        commission=ZERO,
        ts=T0 + day * DAY,
        exec_id=exec_id,
    )


def kinds(commands: Iterable[Any]) -> list[str]:
    return [type(command).__name__ for command in commands]


def of(commands: Iterable[Any], kind: type) -> list[Any]:
    return [command for command in commands if type(command) is kind]


def cid(n: int) -> str:
    return f"{RUN}-{n:06d}"


def placed(driver: Driver) -> list[Order]:
    """Every order the core submitted so far."""
    return [command.order for command in of(driver.log, Submit)]


# ----------------------------------------------------------------------------- the session


def test_start_starts_then_gathers_each_strategy_and_refuses_orders_from_on_start() -> None:
    """start(): one Start per strategy (its params, an account of all cash), then one
    Gather per strategy in the same order; an intent answered to on_start is refused
    with a PostReject saying no order is placed before the first bar (and that
    answer is gathered), and no order is ever recorded."""
    intent = buy(1)
    # a answers on_start with an order (and its on_reject with nothing); b with nothing.
    driver = Driver(new_core("a", "b"), {Gather: in_turn(Reply(intents=(intent,)))})
    commands = driver.start()

    assert kinds(commands) == [
        "Start",
        "Start",
        "Gather",
        "Log",
        "PostReject",
        "Gather",
        "Gather",
    ]
    start_a, start_b = commands[:2]
    assert (start_a.strategy, start_b.strategy) == ("a", "b")
    assert start_a.params == {"n": 1}
    assert start_a.account.cash == CASH and start_a.account.positions == {}
    assert commands[2] == Gather("a")
    assert commands[3].event == "order_rejected"
    reject = commands[4]
    assert (reject.strategy, reject.intent) == ("a", intent)
    assert "before the first bar" in reject.reason
    assert commands[5:] == [Gather("a"), Gather("b")]
    assert not of(commands, RecordOrder) and not of(commands, Submit)


def test_a_bar_without_orders_is_one_ask_and_nothing_else() -> None:
    """A bar with no order working anywhere is exactly one Ask (every running
    strategy, in order, with that bar); an Ask answered ``None`` (nobody asked for
    anything) calls for nothing more: no Match, no store, no log."""
    driver = Driver(new_core("a", "b"))
    driver.start()
    first = bar("AAA", 0, 100.0)
    assert driver.handle(first) == [Ask(("a", "b"), first)]
    second = bar("AAA", 1, 101.0)
    assert driver.handle(second) == [Ask(("a", "b"), second)]
    assert driver.handle(Tick(T0 + DAY)) == []  # no halt file: a tick calls for nothing


def test_an_intent_is_recorded_before_it_is_submitted_and_accepted() -> None:
    """An intent answered to a bar: the order is recorded PENDING *before* Submit;
    Submit carries the account with the bar's close as the symbol's price; the
    broker's ``None`` (accepted) gives UpdateOrder ACCEPTED and Working(+qty) to the
    strategy.  The client order id is ``{run_id}-000001``."""
    intent = buy(10)
    driver = Driver(new_core("a"), {Ask: in_turn((Reply(intents=(intent,)),))})
    driver.start()
    the_bar = bar("AAA", 0, 100.0)
    commands = driver.handle(the_bar)

    assert kinds(commands) == ["Ask", "RecordOrder", "Submit", "UpdateOrder", "Working"]
    record, submit = commands[1], commands[2]
    order = record.order
    assert order.client_order_id == f"{RUN}-000001"
    assert (order.strategy, order.intent, order.created) == ("a", intent, the_bar.ts)
    assert order.strategy_sha256 == "a" * 64 and not order.liquidation
    assert (record.status, record.reason) == (OrderStatus.PENDING, None)
    assert submit.order == order
    assert isinstance(submit.account, AccountSnapshot)
    assert submit.account.prices == {"AAA": Decimal("100")}
    assert (submit.account.cash, submit.account.positions) == (CASH, {})
    assert commands[3] == UpdateOrder(order.client_order_id, OrderStatus.ACCEPTED, None, ZERO)
    assert commands[4] == Working("a", "AAA", Decimal(10))


def test_a_broker_refusal_is_told_to_the_strategy_before_its_next_intent() -> None:
    """Two intents in one reply, the broker refuses the first: UpdateOrder REJECTED
    with the broker's reason, then PostReject and a Gather of that strategy, all
    *before* the second intent is recorded; the second gets the next id."""
    first, second = buy(10), buy(5, "BBB")
    verdicts = in_turn("insufficient buying power", None)
    driver = Driver(
        new_core("a"),
        {Ask: in_turn((Reply(intents=(first, second)),)), Submit: verdicts},
    )
    driver.start()
    commands = driver.handle(bar("AAA", 0, 100.0))

    assert kinds(commands) == [
        "Ask",
        "RecordOrder",  # first
        "Submit",
        "UpdateOrder",  # first REJECTED
        "Log",  # order_rejected
        "PostReject",
        "Gather",
        "RecordOrder",  # second
        "Submit",
        "UpdateOrder",  # second ACCEPTED
        "Working",
    ]
    assert commands[1].order.intent == first
    assert commands[3] == UpdateOrder(
        cid(1), OrderStatus.REJECTED, "insufficient buying power", ZERO
    )
    assert commands[5] == PostReject("a", first, "insufficient buying power")
    assert commands[6] == Gather("a")
    assert commands[7].order.intent == second
    assert commands[7].order.client_order_id == cid(2)
    assert commands[9] == UpdateOrder(cid(2), OrderStatus.ACCEPTED, None, ZERO)
    assert commands[10] == Working("a", "BBB", Decimal(5))
    # The refused order works nowhere: the next AAA bar asks the broker for nothing.
    assert kinds(driver.handle(bar("AAA", 1, 100.0))) == ["Ask"]


def test_a_bar_of_a_symbol_with_a_working_order_is_matched_and_its_fill_booked() -> None:
    """Only a bar of a symbol where an order works emits Match(bar) (first, before the
    strategies see it); the fill it returns is booked: Working(-qty), RecordFill,
    UpdateOrder FILLED, PostFill with an account holding the fill, a Gather of the
    strategy, then the Ask.  A bar of a symbol without working orders, and the next
    bar of the symbol once the order is done, emit no Match."""
    driver = Driver(new_core("a"), {Ask: in_turn((Reply(intents=(buy(10),)),))})
    driver.start()
    driver.handle(bar("AAA", 0, 100.0))
    (order,) = placed(driver)

    other = bar("BBB", 1, 50.0)
    assert driver.handle(other) == [Ask(("a",), other)]  # no order works in BBB

    fill = fill_of(order, 10, 101.0, 1)
    driver.script[Match] = in_turn([fill], then=())
    the_bar = bar("AAA", 1, 102.0, open_=101.0)
    commands = driver.handle(the_bar)
    assert kinds(commands) == [
        "Match",
        "Working",
        "RecordFill",
        "UpdateOrder",
        "PostFill",
        "Gather",
        "Ask",
    ]
    assert commands[0] == Match(the_bar)
    assert commands[1] == Working("a", "AAA", Decimal(-10))
    assert commands[2] == RecordFill(fill, order)
    assert commands[3] == UpdateOrder(cid(1), OrderStatus.FILLED, None, Decimal(10))
    post = commands[4]
    assert (post.strategy, post.fill) == ("a", fill)
    assert post.account.positions == {"AAA": Decimal(10)}
    assert post.account.cash == CASH - Decimal(1010)
    assert post.account.prices["AAA"] == Decimal("101")  # marked at the open it filled at
    assert commands[5] == Gather("a")
    assert commands[6] == Ask(("a",), the_bar)

    after = bar("AAA", 2, 103.0)
    assert driver.handle(after) == [Ask(("a",), after)]  # filled: nothing works there


# ----------------------------------------------------------------------------- checks


def test_limits_refuse_an_oversized_order_or_an_unknown_symbol_without_submitting() -> None:
    """The environment's limits are the core's own decision: an intent above
    max_order_quantity, and one for a symbol not in the run's data, are recorded as
    REJECTED with the reason (the limit named) and told to the strategy; neither is
    ever submitted, and they still take an order id."""
    big, unknown = buy(11), buy(1, "ZZZ")
    cfg = config(limits=Limits(max_order_quantity=Decimal(10)))
    driver = Driver(new_core("a", cfg=cfg), {Ask: in_turn((Reply(intents=(big, unknown)),))})
    driver.start()
    commands = driver.handle(bar("AAA", 0, 100.0))

    assert not of(commands, Submit)
    assert kinds(commands) == [
        "Ask",
        "RecordOrder",
        "Log",
        "PostReject",
        "Gather",
        "RecordOrder",
        "Log",
        "PostReject",
        "Gather",
    ]
    too_big, no_symbol = of(commands, RecordOrder)
    assert (too_big.order.intent, too_big.status) == (big, OrderStatus.REJECTED)
    assert too_big.reason == "quantity 11 exceeds the test limit of 10"
    assert too_big.order.client_order_id == cid(1)
    assert (no_symbol.order.intent, no_symbol.status) == (unknown, OrderStatus.REJECTED)
    assert no_symbol.reason is not None and "unknown symbol 'ZZZ'" in no_symbol.reason
    assert of(commands, PostReject) == [
        PostReject("a", big, too_big.reason),
        PostReject("a", unknown, no_symbol.reason),
    ]
    # Refused before any broker: nothing works in AAA.
    assert kinds(driver.handle(bar("AAA", 1, 100.0))) == ["Ask"]


def test_with_risk_plugins_check_risk_comes_before_submit_and_a_veto_rejects() -> None:
    """risk=True: each intent that passed the limits is first a CheckRisk (with the
    strategy's facts, the bar's time and the last price); a veto (a reason) records
    the order REJECTED with it and never submits; ``None`` lets it through to
    RecordOrder PENDING and Submit."""
    vetoed, allowed = buy(3), buy(4)
    driver = Driver(
        new_core("a", risk=True),
        {
            Ask: in_turn((Reply(intents=(vetoed, allowed)),)),
            CheckRisk: in_turn("too risky", None),
        },
    )
    driver.start()
    the_bar = bar("AAA", 0, 100.5)
    commands = driver.handle(the_bar)

    assert kinds(commands) == [
        "Ask",
        "CheckRisk",
        "RecordOrder",  # vetoed: REJECTED
        "Log",
        "PostReject",
        "Gather",
        "CheckRisk",
        "RecordOrder",  # allowed: PENDING
        "Submit",
        "UpdateOrder",
        "Working",
    ]
    assert commands[1] == CheckRisk(vetoed, info("a"), the_bar.ts, Decimal("100.5"))
    assert commands[2].order.intent == vetoed
    assert (commands[2].status, commands[2].reason) == (OrderStatus.REJECTED, "too risky")
    assert commands[4] == PostReject("a", vetoed, "too risky")
    assert commands[6].intent == allowed
    assert (commands[7].status, commands[8].order.intent) == (OrderStatus.PENDING, allowed)
    assert [s.order.intent for s in of(commands, Submit)] == [allowed]


# ----------------------------------------------------------------------------- margin


def _margin_called(driver: Driver) -> list[Any]:
    """Buy 300 AAA at 100 on 10,000 of cash (3x), filled at 100, then a close at 80:
    equity 4,000 is below 25% of 24,000.  Returns the commands of that last bar.
    Strategy ``a`` also has a limit order working in BBB, which the call cancels."""
    driver.script[Ask] = in_turn(
        (Reply(intents=(buy(300), buy(1, "BBB", type=OrderType.LIMIT, limit_price=1))),)
    )
    driver.start()
    driver.handle(bar("BBB", 0, 50.0))
    driver.handle(bar("AAA", 0, 100.0))
    lever, limit = placed(driver)
    driver.script[Match] = in_turn([fill_of(lever, 300, 100.0, 1)], then=())
    booked = driver.handle(bar("AAA", 1, 100.0))
    assert not of(booked, Log)  # 10,000 of 30,000 held: not called at the fill
    driver.script[CancelStrategy] = in_turn([limit], then=())
    return driver.handle(bar("AAA", 2, 80.0))


def test_a_margin_call_cancels_then_records_and_submits_a_liquidation() -> None:
    """margin=MarginPolicy(0.25): a close that leaves equity below maintenance calls
    the margin: Log margin_call, Audit margin_call, CancelStrategy (what it returns
    is cancelled: UpdateOrder CANCELLED 'margin call', Working), then the
    liquidation order is recorded (liquidation=True, reason 'margin call') and
    submitted with the account at the collapsed price; the strategies are asked
    only afterwards."""
    driver = Driver(new_core("a", margin=MarginPolicy(0.25)))
    commands = _margin_called(driver)
    limit = placed(driver)[1]

    assert kinds(commands) == [
        "Log",
        "Audit",
        "CancelStrategy",
        "UpdateOrder",  # the BBB limit order, cancelled
        "Working",
        "RecordOrder",
        "Submit",
        "Working",
        "UpdateOrder",
        "Ask",
    ]
    log, audit = commands[0], commands[1]
    assert (log.stream, log.level, log.event) == ("trades", "warning", "margin_call")
    assert Decimal(log.fields["equity"]) == 4000 and log.fields["strategy"] == "a"
    assert audit.event == "margin_call"
    assert audit.payload["run_id"] == RUN and audit.payload["gross_exposure"] == "24000.00"
    assert commands[2] == CancelStrategy("a")
    assert commands[3] == UpdateOrder(
        limit.client_order_id, OrderStatus.CANCELLED, "margin call", ZERO
    )
    assert commands[4] == Working("a", "BBB", Decimal(-1))
    record, submit = commands[5], commands[6]
    liquidation = record.order
    assert liquidation.liquidation is True
    assert (record.status, record.reason) == (OrderStatus.PENDING, "margin call")
    assert liquidation.intent == OrderIntent(
        symbol="AAA", side=Side.SELL, quantity=Decimal(300), tag="margin-call"
    )
    assert liquidation.client_order_id == cid(3)
    assert submit.order == liquidation
    assert submit.account.positions == {"AAA": Decimal(300)}
    assert submit.account.prices == {"AAA": Decimal("80")}
    assert submit.account.equity == Decimal(4000)
    assert commands[7] == Working("a", "AAA", Decimal(-300))
    assert commands[8] == UpdateOrder(cid(3), OrderStatus.ACCEPTED, "margin call", ZERO)


def test_a_liquidation_the_broker_refuses_is_not_counted_as_working() -> None:
    """A liquidation the broker refuses at submission is stored REJECTED and forgotten:
    the symbol's next bar is not matched for it, and news about it later is an
    unknown order's (logged), not a second change of the working quantity."""
    driver = Driver(new_core("a", margin=MarginPolicy(0.25)))
    driver.script[Submit] = lambda c: "refused" if c.order.liquidation else None
    commands = _margin_called(driver)
    assert of(commands, UpdateOrder)[-1] == UpdateOrder(
        cid(3), OrderStatus.REJECTED, "refused", ZERO
    )
    assert Working("a", "AAA", Decimal(-300)) not in commands
    assert "Match" not in kinds(driver.handle(bar("AAA", 3, 79.0)))
    (news,) = driver.handle(OrderUpdate(cid(3), "rejected", "refused again"))
    assert (type(news), news.event) == (Log, "unknown_order_update")


@pytest.mark.parametrize(
    "status",
    [
        "cancelled",
        "rejected",
    ],
)
def test_a_liquidation_the_broker_drops_leaves_the_account_watched(status: str) -> None:
    """A liquidation order the broker cancels or rejects by itself (an OrderUpdate)
    ends that margin call: the account, still under water, is margin-called again
    at the next close that moves (a new liquidation is recorded and submitted)."""
    driver = Driver(new_core("a", margin=MarginPolicy(0.25)))
    _margin_called(driver)
    liquidation = placed(driver)[-1]
    assert liquidation.liquidation
    driver.handle(OrderUpdate(liquidation.client_order_id, status, "the broker dropped it"))

    commands = driver.handle(bar("AAA", 3, 60.0))  # equity -2,000: deeper under water
    assert [c.event for c in of(commands, Log)] == ["margin_call"]
    (again,) = of(commands, RecordOrder)
    assert again.order.liquidation and again.order.client_order_id == cid(4)
    assert [s.order for s in of(commands, Submit)] == [again.order]


# ----------------------------------------------------------------------------- quarantine


def test_a_failure_quarantines_the_strategy_and_it_is_no_longer_asked() -> None:
    """A Reply carrying a Failure quarantines that strategy: Dismiss (its host is
    released), Log strategy_quarantined, Audit strategy_quarantined, CancelStrategy;
    the other strategy's reply is still handled, later bars Ask only the others, it
    gets no PostStop and its result carries the quarantine reason."""
    failure = Failure(EXCEPTION, "on_bar", "boom")
    driver = Driver(
        new_core("a", "b"),
        {Ask: in_turn((Reply(failure=failure), Reply(intents=(buy(1),))))},
    )
    driver.start()
    commands = driver.handle(bar("AAA", 0, 100.0))

    assert kinds(commands) == [
        "Ask",
        "Dismiss",
        "Log",
        "Audit",
        "CancelStrategy",
        "RecordOrder",  # b's order
        "Submit",
        "UpdateOrder",
        "Working",
    ]
    assert commands[1] == Dismiss("a")
    log, audit = commands[2], commands[3]
    assert (log.stream, log.level, log.event) == ("system", "error", "strategy_quarantined")
    assert log.fields == {"strategy": "a", "kind": "exception", "hook": "on_bar", "reason": "boom"}
    assert audit.event == "strategy_quarantined"
    assert audit.payload["strategy"] == "a" and audit.payload["sha256"] == "a" * 64
    assert commands[4] == CancelStrategy("a")
    assert commands[5].order.strategy == "b"

    later = bar("BBB", 1, 50.0)
    assert driver.handle(later) == [Ask(("b",), later)]
    assert of(driver.stop(), PostStop) == [PostStop(("b",))]
    driver.results()
    result_a, result_b = driver.value
    assert result_a.quarantined == "exception: on_bar: boom"
    assert result_a.quarantine_kind == "exception"
    assert result_b.quarantined is None


# ----------------------------------------------------------------------------- pushed news


def test_a_pushed_fill_of_an_unknown_order_is_reported_not_booked() -> None:
    """A Fill the broker pushes for an order id this run never placed (a manual trade)
    is a Log unknown_fill and an Audit unknown_fill, booked to no strategy: no
    RecordFill, no Working, no PostFill."""
    driver = Driver(new_core("a"))
    driver.start()
    driver.handle(bar("AAA", 0, 100.0))
    stray = Fill(
        order_id="elsewhere-1",
        symbol="AAA",
        side=Side.BUY,
        quantity=Decimal(2),
        price=Decimal(100),
        commission=ZERO,
        ts=T0,
        exec_id="X1",
    )
    commands = driver.handle(stray)
    assert kinds(commands) == ["Log", "Audit"]
    log, audit = commands
    assert (log.stream, log.level, log.event) == ("trades", "warning", "unknown_fill")
    assert log.fields["order_id"] == "elsewhere-1" and "run_id" not in log.fields
    assert audit.event == "unknown_fill"
    assert audit.payload["run_id"] == RUN and audit.payload["exec_id"] == "X1"
    assert driver.core.unknown_fills == [stray]


def test_a_duplicate_execution_is_booked_once() -> None:
    """A pushed fill seen twice (the same exec_id) is booked once: the repeat calls
    for nothing, and the order's filled quantity counts it once (4, then 4 + 6 = 10
    FILLED with the next execution)."""
    driver = Driver(new_core("a"), {Ask: in_turn((Reply(intents=(buy(10),)),))})
    driver.start()
    driver.handle(bar("AAA", 0, 100.0))
    (order,) = placed(driver)

    first = fill_of(order, 4, 100.0, 0, exec_id="E1")
    booked = driver.handle(first)
    assert kinds(booked) == ["Working", "RecordFill", "UpdateOrder", "PostFill", "Gather"]
    assert booked[2] == UpdateOrder(cid(1), OrderStatus.PARTIAL, None, Decimal(4))
    assert driver.handle(first) == []
    rest = driver.handle(fill_of(order, 6, 100.0, 0, exec_id="E2"))
    assert of(rest, UpdateOrder) == [UpdateOrder(cid(1), OrderStatus.FILLED, None, Decimal(10))]
    assert len(of(driver.log, RecordFill)) == 2
    assert of(rest, PostFill)[0].account.positions == {"AAA": Decimal(10)}


def test_a_broker_rejecting_a_working_order_tells_the_strategy() -> None:
    """An OrderUpdate 'rejected' for an order the broker had accepted: UpdateOrder
    REJECTED with its reason, Working(-qty), then PostReject and Gather to the
    strategy; the order no longer works, so its symbol's next bar is not matched."""
    intent = buy(10)
    driver = Driver(new_core("a"), {Ask: in_turn((Reply(intents=(intent,)),))})
    driver.start()
    driver.handle(bar("AAA", 0, 100.0))

    commands = driver.handle(OrderUpdate(cid(1), "rejected", "IBKR 201: margin"))
    assert kinds(commands) == ["UpdateOrder", "Working", "Log", "PostReject", "Gather"]
    assert commands[0] == UpdateOrder(cid(1), OrderStatus.REJECTED, "IBKR 201: margin", ZERO)
    assert commands[1] == Working("a", "AAA", Decimal(-10))
    assert commands[3] == PostReject("a", intent, "IBKR 201: margin")
    assert commands[4] == Gather("a")
    assert kinds(driver.handle(bar("AAA", 1, 100.0))) == ["Ask"]
    # News about an order the run does not know is logged, nothing else.
    (unknown,) = driver.handle(OrderUpdate("nope-1", "cancelled", "gone"))
    assert (type(unknown), unknown.event) == (Log, "unknown_order_update")


def test_a_repeated_order_update_is_stored_and_counted_once() -> None:
    """A second update for an order that already ended (the broker repeats itself, or
    its own cancel crosses ours) is logged and ignored: the order is not stored again
    and its quantity is not taken off the strategy's working quantity twice."""
    driver = Driver(new_core("a"), {Ask: in_turn((Reply(intents=(buy(10),)),))})
    driver.start()
    driver.handle(bar("AAA", 0, 100.0))
    first = driver.handle(OrderUpdate(cid(1), "rejected", "IBKR 201: margin"))
    assert kinds(first)[:2] == ["UpdateOrder", "Working"]
    (again,) = driver.handle(OrderUpdate(cid(1), "cancelled", "IBKR: Cancelled"))
    assert (type(again), again.event) == (Log, "order_update_ignored")


# ----------------------------------------------------------------------------- the halt


def test_the_operators_halt_comes_from_the_driver_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a halt_file configured, a Tick (and each new timestamp) is a ReadHalt,
    and only its answer counts: the file does not exist and no file is ever looked
    at, yet answering a reason halts (Log and Audit trading_halted, CancelStrategy
    for every strategy), later intents are refused 'halted by the operator' without
    a Submit, and answering ``None`` resumes trading."""
    halt_file = tmp_path / "halt"

    def no_file_access(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the core touched a file")

    for name in ("exists", "is_file", "open", "read_text", "read_bytes", "stat"):
        monkeypatch.setattr(Path, name, no_file_access)

    halt: list[str | None] = ["maintenance"]
    driver = Driver(
        new_core("a", "b", cfg=config(halt_file=halt_file)),
        {ReadHalt: lambda c: halt[0], Ask: lambda c: (Reply(intents=(buy(1),)), None)},
    )
    driver.start()

    commands = driver.handle(Tick(T0))
    assert kinds(commands) == ["ReadHalt", "Log", "Audit", "CancelStrategy", "CancelStrategy"]
    assert commands[1].event == "trading_halted" and commands[1].fields["reason"] == "maintenance"
    assert commands[2].event == "trading_halted" and commands[2].payload["reason"] == "maintenance"
    assert commands[3:] == [CancelStrategy("a"), CancelStrategy("b")]

    commands = driver.handle(bar("AAA", 0, 100.0))
    assert kinds(commands) == ["ReadHalt", "Ask", "RecordOrder", "Log", "PostReject", "Gather"]
    record = commands[2]
    assert record.status is OrderStatus.REJECTED
    assert record.reason is not None and "halted by the operator" in record.reason
    assert "maintenance" in record.reason
    assert driver.handle(bar("BBB", 0, 50.0))[0] == Ask(("a", "b"), bar("BBB", 0, 50.0))

    halt[0] = None
    resumed = driver.handle(Tick(T0 + DAY / 2))
    assert kinds(resumed) == ["ReadHalt", "Log", "Audit"]
    assert resumed[1].event == "trading_resumed" and resumed[2].event == "trading_resumed"
    commands = driver.handle(bar("AAA", 1, 100.0))
    assert kinds(commands) == ["ReadHalt", "Ask", "RecordOrder", "Submit", "UpdateOrder", "Working"]
    assert commands[2].status is OrderStatus.PENDING
    monkeypatch.undo()
    assert not halt_file.exists()


# ----------------------------------------------------------------------------- the end


def test_stop_cancels_stops_and_results_store_each_strategy() -> None:
    """stop(): CancelAll('end of run') (what it returns is stored CANCELLED and taken
    off the working quantity), PostStop to the running strategies, a Gather of each
    (orders asked for in on_stop are logged as ignored, never recorded).  results():
    RecordBenchmark, then per strategy RecordPeriodReturns, RecordEquity,
    RecordPositions, RecordResult; it returns each StrategyResult with its order and
    fill counts and its equity."""
    driver = Driver(new_core("a", "b"), {Ask: in_turn((Reply(intents=(buy(10),)), None))})
    driver.start()
    driver.handle(bar("AAA", 0, 100.0))
    (first,) = placed(driver)
    driver.script[Match] = in_turn([fill_of(first, 10, 100.0, 1)], then=())
    driver.script[Ask] = in_turn((Reply(intents=(buy(5),)), None))
    driver.handle(bar("AAA", 1, 110.0, open_=100.0))
    second = placed(driver)[-1]

    driver.script[CancelAll] = in_turn([second], then=())
    driver.script[Gather] = in_turn(Reply(intents=(buy(1),)))
    commands = driver.stop()
    assert kinds(commands) == [
        "CancelAll",
        "UpdateOrder",
        "Working",
        "PostStop",
        "Gather",
        "Log",  # a's order asked for in on_stop: ignored
        "Gather",
    ]
    assert commands[0] == CancelAll("end of run")
    assert commands[1] == UpdateOrder(cid(2), OrderStatus.CANCELLED, "end of run", ZERO)
    assert commands[2] == Working("a", "AAA", Decimal(-5))
    assert commands[3] == PostStop(("a", "b"))
    assert commands[4] == Gather("a") and commands[6] == Gather("b")
    assert commands[5].event == "order_ignored"
    assert not of(commands, RecordOrder) and not of(commands, Submit)

    commands = driver.results()
    assert kinds(commands) == [
        "RecordBenchmark",
        *["RecordPeriodReturns", "RecordEquity", "RecordPositions", "RecordResult"] * 2,
    ]
    assert [c.strategy for c in commands[1:]] == ["a"] * 4 + ["b"] * 4
    assert isinstance(commands[0], RecordBenchmark)
    assert all(isinstance(c, RecordEquity) for c in (commands[2], commands[6]))
    assert all(isinstance(c, RecordPeriodReturns) for c in (commands[1], commands[5]))
    (position,) = commands[3].positions
    assert isinstance(commands[3], RecordPositions)
    assert (position.symbol, position.quantity, position.mark) == (
        "AAA",
        Decimal(10),
        Decimal("110.0"),
    )
    assert isinstance(commands[4], RecordResult) and commands[4].quarantined is None
    result_a, result_b = driver.value
    assert all(isinstance(r, StrategyResult) for r in driver.value)
    assert (result_a.name, result_a.orders, result_a.fills) == ("a", 2, 1)
    assert result_a.equity == CASH + Decimal(100)
    assert (result_b.name, result_b.orders, result_b.fills) == ("b", 0, 0)
    assert result_b.equity == CASH and result_a.sandbox == "in-process"


# ----------------------------------------------------------------------------- purity


def _session() -> list[str]:
    """A run exercising most paths (orders, a refusal, fills, a margin call, pushed
    news, a quarantine, the end), driven by a fresh core and the same script; every
    command's repr, and the results'."""
    core = new_core("a", "b", margin=MarginPolicy(0.25), risk=True)
    driver = Driver(core)
    driver.script[CheckRisk] = lambda c: "no" if c.intent.quantity == 7 else None
    driver.script[Submit] = lambda c: "refused" if c.order.symbol == "BBB" else None
    driver.script[Ask] = in_turn(
        (Reply(intents=(buy(300), buy(7), buy(2, "BBB"))), Reply(intents=(buy(5),))),
        None,
        None,
        (None, Reply(failure=Failure(EXCEPTION, "on_bar", "boom"))),
    )
    driver.start()
    driver.handle(bar("BBB", 0, 50.0))
    driver.handle(bar("AAA", 0, 100.0))
    lever, small = (o for o in placed(driver) if o.symbol == "AAA")
    driver.script[Match] = in_turn(
        [fill_of(lever, 300, 100.0, 1), fill_of(small, 5, 100.0, 1)], then=()
    )
    driver.handle(bar("AAA", 1, 100.0))
    driver.handle(bar("AAA", 2, 80.0))  # a is margin-called, b fails and is quarantined
    liquidation = placed(driver)[-1]
    driver.handle(fill_of(liquidation, 100, 80.0, 2, exec_id="L1"))
    driver.handle(bar("BBB", 3, 51.0))  # a alone is asked
    driver.handle(Tick(T0 + 3 * DAY))
    driver.stop()
    driver.results()
    return [repr(command) for command in driver.log] + [repr(driver.value)]


def test_the_same_events_and_answers_give_the_same_commands() -> None:
    """Determinism: two fresh cores fed the same events and the same answers emit
    identical command sequences (compared by repr) and identical results."""
    first, second = _session(), _session()
    assert len(first) > 40
    assert first == second
    emitted = {line.split("(", 1)[0] for line in first}
    assert {"Ask", "CheckRisk", "Submit", "RecordFill", "Audit", "Dismiss"} <= emitted
    assert any("'margin_call'" in line for line in first)


def test_handle_refuses_what_is_not_an_event() -> None:
    """The core handles Bar, Fill, OrderUpdate and Tick, and nothing else; refusing
    something else leaves it able to take the next event."""
    driver = Driver(new_core("a"))
    driver.start()
    with pytest.raises(TypeError, match="handles Bar, Fill, OrderUpdate and Tick"):
        driver.handle("a bar")
    assert kinds(driver.handle(bar("AAA", 0, 100.0))) == ["Ask"]


def test_an_event_that_cannot_be_finished_stops_the_core_for_good() -> None:
    """When carrying out a command fails, the driver abandons the core: its coroutine
    is closed (not left waiting for an answer the next event would be taken for),
    pending commands are dropped, and any later event is refused naming the error."""
    core = new_core("a")
    driver = Driver(core, {Ask: in_turn((Reply(intents=(buy(10),)),))})
    driver.start()
    commands = core.handle(bar("AAA", 0, 100.0))
    assert type(next(commands)) is Ask
    assert type(commands.send((Reply(intents=(buy(10),)),))) is RecordOrder
    assert type(next(commands)) is Submit  # ... and the broker's answer never comes
    core.abandon(ConnectionError("broker gone"))
    assert core.outbox == []
    with pytest.raises(
        RuntimeError, match=r"an earlier one failed \(ConnectionError: broker gone\)"
    ):
        driver.handle(bar("AAA", 1, 100.0))


#: What bastion._core may import: pure stdlib modules, attrs, and the bastion
#: modules that hold its values and arithmetic.
ALLOWED_IMPORTS = frozenset(
    {
        "__future__",
        "collections",
        "collections.abc",
        "datetime",
        "decimal",
        "functools",
        "typing",
        "attrs",
        "bastion._host",
        "bastion._loader",
        "bastion._metrics",
        "bastion._portfolio",
        "bastion._settings",
        "bastion.interfaces",
        "bastion.models",
    }
)
IO_MODULES = frozenset(
    {
        "os",
        "time",
        "socket",
        "pathlib",
        "logging",
        "structlog",
        "sqlite3",
        "subprocess",
        "threading",
        "io",
        "shutil",
        "tempfile",
        "asyncio",
        "signal",
    }
)


def test_the_core_imports_nothing_that_does_io() -> None:
    """bastion._core's own import statements (wherever they sit in the module) are
    only pure stdlib modules, attrs and the bastion modules of values and arithmetic
    (of which ``_metrics`` spills equity columns to a temporary file): no os,
    time, socket, pathlib, logging, structlog, sqlite3, subprocess or threading;
    and it calls no builtin that does I/O (open, print, input)."""
    source = Path(bastion._core.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.level == 1, ast.dump(node)
                imported.add(f"bastion.{node.module}")
            else:
                assert node.module is not None
                imported.add(node.module)
    assert imported <= ALLOWED_IMPORTS, sorted(imported - ALLOWED_IMPORTS)
    assert not {name.split(".")[0] for name in imported} & IO_MODULES
    assert {"bastion.models", "attrs", "decimal"} <= imported  # the parse saw the imports
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not called & {"open", "print", "input", "exec", "eval", "__import__"}
