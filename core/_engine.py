"""The event loop: source -> strategies -> limits and risk -> broker -> fills ->
portfolio -> storage -> ``on_fill`` back to the strategy.

The engine is driven by events (bars, the broker's fills and order updates,
timer ticks) and does no waiting of its own: :meth:`Engine.run` is the backtest
driver, ``bastion._live.drive`` the paper and live one, and both hand the events
to the same methods.  The bar path is kept straight and cheap: marking to
market uses float mirrors of the Decimal ledger (re-synchronised exactly at
every fill).  Everything that touches money (orders, fills, the ledger) is
Decimal.

Strategy code is never called from here: each strategy sits behind a
:class:`~bastion._host.StrategyHost` (a sandboxed worker, or the in-process
runner for trusted backtests).  Per step the engine posts the event to every
host first and then gathers the answers in a fixed order, so workers compute
in parallel and the results do not depend on which host ran them.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from ._context import operator_interrupt
from ._host import EXCEPTION, Failure, Reply, StrategyHost, log_fields
from ._kernel import Kernel
from ._loader import Strategy, StrategyInfo
from ._logging import get_logger
from ._metrics import (
    CHUNK,
    Column,
    column_benchmark_comparison,
    column_downsample,
    column_metrics,
    column_period_returns,
    to_micros,
)
from ._portfolio import Portfolio
from ._settings import Limits
from .interfaces import Broker, OrderUpdate, Store
from .models import AccountSnapshot, Bar, Fill, Order, OrderIntent, OrderStatus, Side

ZERO = Decimal(0)
ONE_MINUTE = timedelta(minutes=1)

__all__ = [
    "Engine",
    "EngineConfig",
    "ExceptionPolicy",
    "OrderLimits",
    "RunResult",
    "StrategyResult",
    "Tick",
    "unholdable",
]

MAX_REENTRY = 8  # a strategy answering a rejection with orders, at most this deep
MAX_REJECTIONS_PER_EVENT = 1000  # and at most this many rejections from one event

# What the ledger holds: quantities and prices below 10**12 in magnitude, above
# 10**-12, with at most 28 significant digits (the Decimal context's precision).
MAX_ADJUSTED_EXPONENT = 11
MIN_ADJUSTED_EXPONENT = -12
MAX_DIGITS = 28


def unholdable(intent: OrderIntent) -> str | None:
    """Why the ledger cannot hold ``intent``'s quantity or price, or ``None``."""
    for what, value in (
        ("quantity", intent.quantity),
        ("limit price", intent.limit_price),
        ("stop price", intent.stop_price),
    ):
        if value is None:
            continue
        digits = len(value.as_tuple().digits)
        adjusted = value.adjusted()
        if (
            digits > MAX_DIGITS
            or adjusted > MAX_ADJUSTED_EXPONENT
            or adjusted < MIN_ADJUSTED_EXPONENT
        ):
            shown = f"{value:.6E}" if digits > 12 else str(value)
            return (
                f"{what} {shown} is outside what the ledger holds (more than 10^-12 and less "
                f"than 10^12, at most {MAX_DIGITS} significant digits)"
            )
    return None


#: The environment's own limits (``[limits.ENV]``), applied before risk plugins and the broker.
OrderLimits = Limits


@attrs.frozen
class ExceptionPolicy:
    """What an exception in a strategy's code does: quarantine it (the default), or
    skip the event (its orders are dropped) at most ``max_skips`` times, then quarantine."""

    skip: bool = False
    max_skips: int = 10


@attrs.frozen
class EngineConfig:
    run_id: str
    environment: str
    cash: Decimal
    symbols: frozenset[str]  # every symbol the source has for this run
    limits: OrderLimits = attrs.Factory(OrderLimits)
    stored_equity_points: int = 5000
    log_trades: bool = False  # every order's life in the trades log stream (paper, live)
    signal_only: bool = False  # intents pass every check and are audited; no broker sees them
    trade_from: datetime | None = None  # earlier bars are warm-up: orders asked then are ignored
    stop: Any = None  # a threading.Event: Ctrl-C sets it (a graceful stop) instead of raising
    halt_file: Path | None = None  # while it exists, trading is halted ('bastion halt')
    # Paper and live: each strategy's fills from earlier runs in this environment,
    # replayed into its ledger before the first bar (what it holds in the account) ...
    opening: Mapping[str, Sequence[Fill]] = attrs.Factory(dict)
    # ... and strategies a reconciliation stopped from trading, with why (by name).
    blocked: Mapping[str, str] = attrs.Factory(dict)
    exceptions: Mapping[str, ExceptionPolicy] = attrs.Factory(dict)  # by strategy name


@attrs.frozen(slots=True)
class Tick:
    """A timer event: time has passed (live runs tick between bars)."""

    ts: datetime


@attrs.frozen
class StrategyResult:
    name: str
    metrics: Mapping[str, float | int | None]
    quarantined: str | None  # "KIND: HOOK: REASON", as stored
    orders: int
    fills: int
    equity: Decimal
    sandbox: str = "in-process"  # the host's mode: "sandboxed" or "in-process"

    @property
    def quarantine_kind(self) -> str | None:
        """``timeout``, ``crashed``, ``memory-limit``, ... (see ``bastion._host``)."""
        return self.quarantined.split(":", 1)[0] if self.quarantined else None


@attrs.frozen
class RunResult:
    run_id: str
    bars: int
    seconds: float
    strategies: tuple[StrategyResult, ...]


class _Slot:
    """Everything the engine keeps for one strategy."""

    __slots__ = (
        "equity_f",
        "exposure",
        "fills",
        "gross_f",
        "host",
        "info",
        "liquidations",
        "margin_call",
        "orders",
        "params",
        "portfolio",
        "quarantined",
        "rejections",
        "signals",
        "skips",
        "start_equity",
        "values",
    )

    def __init__(self, strategy: Strategy, params: Mapping[str, Any], cash: Decimal) -> None:
        self.info: StrategyInfo = strategy.info
        self.host: StrategyHost = strategy.host
        self.params = params
        self.skips = 0
        self.rejections = 0  # rejections from the event being handled
        self.signals = 0  # intents recorded as signals (signal-only)
        self.portfolio = Portfolio(strategy.name, cash, keep_trades=False)
        self.equity_f = float(cash)
        self.start_equity = self.equity_f  # with what it carried in (paper, live)
        self.gross_f = 0.0
        # Its equity at each timestamp: 8 bytes a point, spilled to a temporary file.
        self.values = Column("d")
        self.exposure = 0
        self.quarantined: str | None = None
        self.margin_call = False  # liquidating after a margin call
        self.liquidations: set[str] = set()  # its liquidation orders still working
        self.orders = 0
        self.fills = 0


class Engine:
    """Runs admitted strategies over a stream of bars against a broker, recording to a store."""

    def __init__(
        self,
        kernel: Kernel,
        broker: Broker,
        store: Store,
        strategies: Sequence[tuple[Strategy, Mapping[str, Any]]],
        config: EngineConfig,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.kernel = kernel
        self.broker = broker
        self.store = store
        self.config = config
        self.progress = progress
        self._slots = [_Slot(s, params, config.cash) for s, params in strategies]
        self._by_name = {slot.info.name: slot for slot in self._slots}
        self._orders: dict[str, Order] = {}
        self._filled: dict[str, Decimal] = {}
        self._cancelled: dict[str, str] = {}  # client order id -> why it was cancelled
        self._resize: list[_Slot] = []  # margin calls whose liquidation a fill outdated
        self._executions: set[str] = set()  # broker execution ids already booked
        self.unknown_fills: list[Fill] = []  # fills of orders this run did not place
        self._recent: deque[datetime] = deque()  # when the orders of the last minute were placed
        self._per_minute = config.limits.max_orders_per_minute is not None
        self._day: tuple[date, float, float] | None = None  # day, its start equity, latest
        self._halted: tuple[date, str] | None = None  # the day trading is halted, and why
        self._operator_halt: str | None = None  # 'bastion halt' is in force
        self._last: dict[str, float] = {}
        # The timestamps of the equity curves, as epoch microseconds (see _close_timestamp).
        self._times = Column("q")
        self._seq = 0
        self._log = get_logger("system", run_id=config.run_id)
        self._strategy_log = get_logger("strategy", run_id=config.run_id)
        self._trades = get_logger("trades", run_id=config.run_id)
        self._lifecycle = self._trades if config.log_trades else None
        for slot in self._slots:
            self._carry(slot, config.opening.get(slot.info.name, ()))
        self._margin = broker.maintenance_margin
        # The buy-and-hold benchmark: the run's cash split equally over its symbols,
        # each slice bought at that symbol's first close and held; one value per
        # timestamp, like the equity curves.
        # The value is kept up to date as prices move (like the strategies' float
        # mirrors), so a timestamp only appends it.
        self._bench_slice = float(config.cash) / max(len(config.symbols), 1)
        self._bench_value = float(config.cash)
        self._bench_units: dict[str, float] = {}
        self._bench_seen = 0  # how many priced symbols the benchmark has looked at
        self._bench = Column("d")
        self._current: datetime | None = None  # the timestamp whose bars are being handled
        self._count = 0  # bars handled
        self._started = time.perf_counter()
        self._running: list[tuple[_Slot, Callable[[Bar], None], Callable[[], Reply | None]]] = []
        self._waiting: frozenset[str] = frozenset()
        self._roster_changed = True  # a quarantine: _running is rebuilt by _refresh
        self._order_event = kernel.notifier("order_event")
        self._fill_event = kernel.notifier("fill_event")
        self._risk = kernel.has_risk_checks()

    def _carry(self, slot: _Slot, fills: Sequence[Fill]) -> None:
        """Replay a strategy's earlier fills (paper, live) into its ledger: it starts
        with what it holds, marked at the last price it traded; its earlier round
        trips are not this run's trades."""
        if not fills:
            return
        portfolio = slot.portfolio
        for fill in fills:
            portfolio.apply(fill)
            self._last[fill.symbol] = float(fill.price)
            if fill.exec_id is not None:
                self._executions.add(fill.exec_id)
        portfolio.forget_trades()
        self._resync(slot)
        slot.start_equity = slot.equity_f

    # -- events ------------------------------------------------------------------------
    #
    # The engine is driven by events: bars, the broker's fills and order updates, and
    # timer ticks, each handed to :meth:`handle` by a driver.  The backtest driver is
    # :meth:`run`: it hands the whole iterator of bars to :meth:`on_bars` (the
    # simulator's fills come out of each bar); paper and live runs use
    # ``bastion._live.drive``, which hands each event to :meth:`handle` as it arrives.
    # Both go through the same code.

    def run(self, bars: Iterable[Bar]) -> RunResult:
        """The backtest driver: every bar of ``bars``, in order."""
        with self.session():
            self.on_bars(bars)
        return self.result()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Start the strategies; on leaving, end the run (working orders cancelled,
        ``on_stop``) and release the strategies' hosts.  Between, a driver feeds events
        with :meth:`handle` (or :meth:`on_bars`, :meth:`on_broker`, :meth:`on_tick`)."""
        self._started = time.perf_counter()
        try:
            with _operator_sigint(self.config.stop):
                for slot in self._slots:
                    slot.host.start(slot.params, slot.portfolio.snapshot(self._last))
                for slot in self._slots:
                    self._gather(slot, None)
                self._refresh()
                yield
                if self._current is not None:
                    self._close_timestamp(self._current)
                if self.progress is not None:
                    self.progress(self._count)
                self._finish()
        finally:
            for slot in self._slots:
                slot.host.close()

    def result(self) -> RunResult:
        """Store each strategy's metrics, equity and positions; the run's result."""
        try:
            self.store.record_benchmark(
                self.config.run_id,
                column_downsample(self._times, self._bench, self.config.stored_equity_points),
            )
            return RunResult(
                run_id=self.config.run_id,
                bars=self._count,
                seconds=time.perf_counter() - self._started,
                strategies=tuple(self._result(slot) for slot in self._slots),
            )
        finally:
            for column in (self._times, self._bench, *(slot.values for slot in self._slots)):
                column.close()

    def handle(self, event: Bar | Fill | OrderUpdate | Tick) -> None:
        """One event: a bar, a fill or order update the broker pushed, or a timer tick."""
        if type(event) is Bar:
            self.on_bars((event,))
        elif type(event) is Tick:
            self.on_tick(event.ts)
        else:
            self.on_broker(event)  # type: ignore[arg-type]

    def _refresh(self) -> None:
        # The strategies still running, and the symbols with working orders: these
        # change only through calls made here (submit, fills, cancels, margin calls,
        # quarantines), so they are asked again after each.  The roster is rebuilt
        # only after a quarantine changed it (an order's round trip does not).
        if self._roster_changed:
            self._running = self._active()
            self._roster_changed = False
        self._waiting = self.broker.working_symbols()

    def _active(
        self,
    ) -> list[tuple[_Slot, Callable[[Bar], None], Callable[[], Reply | None]]]:
        """Each strategy still running, with its host's bar and gather calls."""
        return [(s, s.host.post_bar, s.host.gather) for s in self._slots if s.quarantined is None]

    def on_tick(self, now: datetime) -> None:
        """Time passes without a bar (live): the operator's halt file is looked at."""
        if self.config.halt_file is not None:
            self._check_halt_file(now)
            self._refresh()

    def on_broker(self, update: Fill | OrderUpdate) -> None:
        """A fill or an order update the broker pushed (live), booked when it arrives."""
        ts = self._current
        if ts is None or (type(update) is Fill and update.ts > ts):
            ts = update.ts if type(update) is Fill else datetime.now(UTC)
        self._broker_update(update, ts)
        self._refresh()

    def on_bars(self, bars: Iterable[Bar]) -> None:
        """Bars in time order, each: the fills it allows (simulator), marks, margin, then
        every strategy.  The backtest driver hands over its whole iterator (the loop keeps
        its state in locals); :meth:`handle` hands over one bar."""
        slots = self._slots
        active = self._running
        broker = self.broker
        waiting = self._waiting
        last = self._last
        margin = self._margin
        bench_units = self._bench_units
        progress = self.progress
        halt_file = self.config.halt_file
        current = self._current
        count = self._count
        try:
            for bar in bars:
                ts = bar.ts
                if ts != current:
                    if current is not None:
                        self._close_timestamp(current)
                    current = self._current = ts
                    if halt_file is not None:
                        self._check_halt_file(ts)
                        self._refresh()
                        active, waiting = self._running, self._waiting
                symbol = bar.symbol
                gapped = False
                if symbol in waiting:
                    # Fills happen from the open on: mark the symbol there first, so the
                    # ledger, the margin check and on_fill see the gap, not the last close.
                    gapped = self._mark(symbol, bar.open)
                    for fill in broker.on_bar(bar):
                        self._book(fill)
                    if self._resize:
                        self._resize_liquidations(ts)
                    self._refresh()
                    active, waiting = self._running, self._waiting
                # The close, marked inline (this runs for every bar; _mark is the same
                # move). Margin is checked at the close of every bar whose price moved
                # (a gap marked at the open counts), whether or not orders were working.
                close = bar.close
                previous = last.get(symbol)
                last[symbol] = close
                if previous is not None and (previous != close or gapped):
                    move = close - previous
                    bench = bench_units.get(symbol)
                    if bench:
                        self._bench_value += bench * move
                    for slot in slots:
                        quantity = slot.portfolio.quantities_f.get(symbol)
                        if quantity:
                            slot.equity_f += quantity * move
                            slot.gross_f += abs(quantity) * move
                            if (
                                margin is not None
                                and slot.equity_f < margin * slot.gross_f
                                and not slot.margin_call
                            ):
                                self._margin_call(slot, ts)
                                self._refresh()
                                active, waiting = self._running, self._waiting
                if active:
                    for _, post, _ in active:  # hand the bar to every strategy first ...
                        post(bar)
                    answered = False
                    for slot, _, gather in active:  # ... then gather, always in the same order
                        reply = gather()
                        if reply is not None:
                            self._answer(slot, reply, ts, 0)
                            answered = True
                    if answered:
                        self._refresh()
                        active, waiting = self._running, self._waiting
                count += 1
                if progress is not None and not count & 0x3FFF:
                    progress(count)
        finally:
            self._count = count

    def _close_timestamp(self, ts: datetime) -> None:
        """Every bar of ``ts`` is processed: one equity point (and exposure) per strategy,
        and the benchmark's value (spilled to their temporary files every CHUNK points)."""
        times = self._times.buffer
        times.append(to_micros(ts))
        if len(self._last) != self._bench_seen:
            # A symbol's first close: its slice of the cash buys it there (the value
            # does not change), and its moves count from now on.
            units = self._bench_units
            for symbol, price in self._last.items():
                if symbol not in units and symbol in self.config.symbols and price > 0:
                    units[symbol] = self._bench_slice / price
            self._bench_seen = len(self._last)
        self._bench.buffer.append(self._bench_value)
        for slot in self._slots:
            slot.values.buffer.append(slot.equity_f)
            if slot.portfolio.quantities_f:
                slot.exposure += 1
        if len(times) >= CHUNK:
            self._times.spill()
            self._bench.spill()
            for slot in self._slots:
                slot.values.spill()
        if self.config.limits.max_daily_loss is not None:
            self._check_daily_loss(ts)

    def _check_halt_file(self, ts: datetime) -> None:
        """``bastion halt`` wrote the halt file: cancel working orders, refuse new ones;
        ``bastion resume`` removed it: trade again."""
        assert self.config.halt_file is not None
        halted = self.config.halt_file.exists()
        if halted and self._operator_halt is None:
            why = _halt_reason(self.config.halt_file)
            self._operator_halt = (
                f"trading is halted by the operator: {why} ('bastion resume' lifts it)"
            )
            self._trades.error("trading_halted", ts=ts.isoformat(), by="operator", reason=why)
            self.store.audit(
                "trading_halted",
                {"run_id": self.config.run_id, "ts": ts.isoformat(), "reason": why},
            )
            for slot in self._slots:
                self._cancel(self.broker.cancel_strategy(slot.info.name), "trading halted")
        elif not halted and self._operator_halt is not None:
            self._operator_halt = None
            self._trades.info("trading_resumed", ts=ts.isoformat())
            self.store.audit(
                "trading_resumed", {"run_id": self.config.run_id, "ts": ts.isoformat()}
            )

    def _check_daily_loss(self, ts: datetime) -> None:
        """The account (every strategy) lost more than the day's limit: halt for the day."""
        limit = self.config.limits.max_daily_loss
        assert limit is not None
        equity = sum(slot.equity_f for slot in self._slots)
        day = ts.date()
        if self._day is None or self._day[0] != day:
            previous = (
                self._day[2]
                if self._day is not None
                else float(self.config.cash) * len(self._slots)
            )
            self._day = (day, previous, equity)
        else:
            self._day = (day, self._day[1], equity)
        loss = self._day[1] - equity
        if loss <= float(limit) or (self._halted is not None and self._halted[0] == day):
            return
        why = (
            f"trading is halted until the end of {day}: the account lost {loss:,.2f} today, "
            f"more than the {self.config.environment} limit of {limit:,.2f}"
        )
        self._halted = (day, why)
        self._trades.error(
            "trading_halted", ts=ts.isoformat(), loss=round(loss, 2), limit=str(limit)
        )
        self.store.audit(
            "trading_halted",
            {"run_id": self.config.run_id, "ts": ts.isoformat(), "reason": why},
        )
        for slot in self._slots:
            self._cancel(self.broker.cancel_strategy(slot.info.name), "trading halted")

    # -- orders --------------------------------------------------------------------------

    def _gather(self, slot: _Slot, ts: datetime | None, depth: int = 0) -> None:
        if slot.quarantined is not None:
            return
        reply = slot.host.gather()
        if reply is not None:
            self._answer(slot, reply, ts, depth)

    def _answer(self, slot: _Slot, reply: Reply, ts: datetime | None, depth: int) -> None:
        """A host's answer: its log records, then its failure or its order intents."""
        if depth == 0:
            slot.rejections = 0  # a new event: a new budget of rejections
        if reply.logs:
            log = self._strategy_log
            for level, event, fields in reply.logs:
                getattr(log, level)(event, strategy=slot.info.name, **log_fields(fields))
        failure = reply.failure
        if failure is not None:
            policy = self.config.exceptions.get(slot.info.name)
            if (
                failure.kind == EXCEPTION
                and policy is not None
                and policy.skip
                and slot.skips < policy.max_skips
            ):
                slot.skips += 1
                self._strategy_log.error(
                    "strategy_event_skipped",
                    strategy=slot.info.name,
                    hook=failure.hook,
                    reason=failure.reason,
                    traceback=failure.traceback,
                    skipped=slot.skips,
                    max_skips=policy.max_skips,
                )
                return
            self._quarantine(slot, failure)
            return
        if reply.intents:
            self._handle(slot, reply.intents, ts, depth)

    def _handle(
        self, slot: _Slot, intents: Sequence[OrderIntent], ts: datetime | None, depth: int
    ) -> None:
        if ts is None:
            # on_start: nothing has a price yet, so nothing can be executed.
            for intent in intents:
                self._reject_intent(
                    slot, intent, "orders cannot be placed before the first bar", ts, depth
                )
            return
        for index, intent in enumerate(intents):
            if slot.quarantined is not None:
                for dropped in intents[index:]:
                    self._trades.warning(
                        "order_ignored",
                        strategy=slot.info.name,
                        symbol=dropped.symbol,
                        reason="the strategy was quarantined while this event was handled",
                    )
                return
            if self.config.trade_from is not None and ts < self.config.trade_from:
                self._trades.info(
                    "order_ignored",
                    strategy=slot.info.name,
                    symbol=intent.symbol,
                    reason="a warm-up bar: orders start with the first live bar",
                )
                continue
            unheld = unholdable(intent)
            if unheld is not None:
                # Never stored: the store and the ledger could not hold these numbers.
                self._reject_intent(slot, intent, unheld, ts, depth)
                continue
            reason = self._pre_check(slot, intent, ts)
            if reason is None and self.config.signal_only:
                self._signal(slot, intent, ts)
                continue
            order = self._new_order(slot, intent, ts)
            if reason is not None:
                self.store.record_order(self.config.run_id, order, OrderStatus.REJECTED, reason)
                self._forget(order)
                self._rejected(slot, order, reason, depth)
                continue
            self.store.record_order(self.config.run_id, order, OrderStatus.PENDING, None)
            if self._per_minute:  # only read by that limit: kept only for it
                self._recent.append(ts)
            if self._lifecycle is not None:
                self._submitted(order)
            if self._order_event is not None:
                self._order_event(order=order, status="submitted", reason=None)
            # Marks for every symbol the broker may value: held, ordered, or with
            # orders working (the strategy's net working quantity may be 0).
            account = slot.portfolio.snapshot(
                self._last, also=(intent.symbol, *self.broker.working_symbols())
            )
            reason = self.broker.submit(order, account)
            if reason is not None:
                self._forget(order)
                self.store.update_order(
                    self.config.run_id,
                    order.client_order_id,
                    OrderStatus.REJECTED,
                    reason,
                    ZERO,
                )
                self._rejected(slot, order, reason, depth)
            else:
                self.store.update_order(
                    self.config.run_id,
                    order.client_order_id,
                    OrderStatus.ACCEPTED,
                    None,
                    ZERO,
                )
                slot.host.working(order.symbol, order.signed_quantity)
                if self._lifecycle is not None:
                    self._lifecycle.info(
                        "order_accepted", order_id=order.client_order_id, strategy=order.strategy
                    )
                if self._order_event is not None:
                    self._order_event(order=order, status="accepted", reason=None)

    def _signal(self, slot: _Slot, intent: OrderIntent, ts: datetime) -> None:
        """Signal-only: an intent that passed every check is recorded, never sent."""
        payload = {
            "run_id": self.config.run_id,
            "strategy": slot.info.name,
            "sha256": slot.info.sha256,
            "signer": slot.info.signer,
            "ts": ts.isoformat(),
            "symbol": intent.symbol,
            "side": intent.side.value,
            "quantity": str(intent.quantity),
            "type": intent.type.value,
            "limit_price": None if intent.limit_price is None else str(intent.limit_price),
            "stop_price": None if intent.stop_price is None else str(intent.stop_price),
            "tag": intent.tag,
        }
        self.store.audit("signal", payload)
        self._trades.info("signal", **{k: v for k, v in payload.items() if k != "run_id"})
        slot.signals += 1

    def _broker_update(self, update: Fill | OrderUpdate, ts: datetime) -> None:
        """A live broker's news since the last timestamp: a fill, or an order it
        rejected or cancelled by itself."""
        if isinstance(update, Fill):
            self._last.setdefault(update.symbol, float(update.price))
            self._book(update)
            if self._resize:
                self._resize_liquidations(ts)
            return
        order = self._orders.get(update.client_order_id)
        if order is None:
            self._trades.warning(
                "unknown_order_update",
                order_id=update.client_order_id,
                status=update.status,
                reason=update.reason,
            )
            return
        if update.status == "rejected":
            filled = self._filled.get(order.client_order_id, ZERO)
            self._cancelled[order.client_order_id] = update.reason
            self.store.update_order(
                self.config.run_id,
                order.client_order_id,
                OrderStatus.REJECTED,
                update.reason,
                filled,
            )
            slot = self._by_name[order.strategy]
            remaining = order.quantity - filled
            slot.host.working(order.symbol, -remaining if order.signed_quantity > 0 else remaining)
            if not order.liquidation:
                self._rejected(slot, order, update.reason, 0)
        else:
            self._cancel([order], update.reason)

    def _submitted(self, order: Order) -> None:
        """The trades stream's first record of an order: what was asked, under its id."""
        assert self._lifecycle is not None
        intent = order.intent
        self._lifecycle.info(
            "order_submitted",
            order_id=order.client_order_id,
            strategy=order.strategy,
            sha256=order.strategy_sha256,
            symbol=intent.symbol,
            side=intent.side.value,
            quantity=str(intent.quantity),
            type=intent.type.value,
            limit_price=None if intent.limit_price is None else str(intent.limit_price),
            stop_price=None if intent.stop_price is None else str(intent.stop_price),
            tag=intent.tag,
            liquidation=order.liquidation,
        )

    def _new_order(
        self, slot: _Slot, intent: OrderIntent, ts: datetime, *, liquidation: bool = False
    ) -> Order:
        self._seq += 1
        slot.orders += 1
        order = Order(
            client_order_id=f"{self.config.run_id}-{self._seq:06d}",
            strategy=slot.info.name,
            strategy_sha256=slot.info.sha256,
            signer=slot.info.signer,
            intent=intent,
            created=ts,
            liquidation=liquidation,
        )
        self._orders[order.client_order_id] = order
        self._filled[order.client_order_id] = ZERO
        return order

    def _forget(self, order: Order) -> None:
        """An order no broker holds (refused before or at submission): not kept."""
        del self._orders[order.client_order_id], self._filled[order.client_order_id]

    def _pre_check(self, slot: _Slot, intent: OrderIntent, ts: datetime) -> str | None:
        if intent.symbol not in self.config.symbols:
            return f"unknown symbol {intent.symbol!r}: not in this run's data"
        if self._halted is not None and self._halted[0] == ts.date():
            return self._halted[1]
        if self._operator_halt is not None:
            return self._operator_halt
        blocked = self.config.blocked.get(slot.info.name)
        if blocked is not None:
            return blocked
        limits = self.config.limits
        if limits.max_orders_per_minute is not None:
            recent = self._recent
            while recent and recent[0] <= ts - ONE_MINUTE:
                recent.popleft()
            if len(recent) >= limits.max_orders_per_minute:
                return (
                    f"{len(recent)} orders in the last minute reach the {self.config.environment} "
                    f"limit of {limits.max_orders_per_minute} per minute"
                )
        if limits.max_open_positions is not None:
            # Held, or with orders working (which may open a position): what the account
            # holds or is about to.
            held = {s for sl in self._slots for s, q in sl.portfolio.quantities_f.items() if q}
            held.update(self.broker.working_symbols())
            if intent.symbol not in held and len(held) >= limits.max_open_positions:
                return (
                    f"{intent.symbol} would be a new position; {len(held)} are open or being "
                    f"opened, the {self.config.environment} limit is "
                    f"{limits.max_open_positions}"
                )
        if limits.max_order_quantity is not None and intent.quantity > limits.max_order_quantity:
            return (
                f"quantity {intent.quantity} exceeds the {self.config.environment} limit "
                f"of {limits.max_order_quantity}"
            )
        if limits.max_order_notional is not None:
            last = self._last.get(intent.symbol)
            price = (
                Decimal(repr(last)) if last is not None else intent.limit_price or intent.stop_price
            )
            if price is None:
                return (
                    f"no price seen yet for {intent.symbol}; cannot check the "
                    f"{self.config.environment} notional limit"
                )
            notional = intent.quantity * price
            if notional > limits.max_order_notional:
                return (
                    f"notional {notional:,.2f} exceeds the {self.config.environment} limit "
                    f"of {limits.max_order_notional:,.2f}"
                )
        if not self._risk:
            return None
        last = self._last.get(intent.symbol)
        return self.kernel.check_order(
            intent,
            slot.info,
            self.config.environment,
            ts,
            None if last is None else Decimal(repr(last)),
        )

    def _rejected(self, slot: _Slot, order: Order, reason: str, depth: int) -> None:
        if self._order_event is not None:
            self._order_event(order=order, status="rejected", reason=reason)
        self._reject_intent(slot, order.intent, reason, order.created, depth, order.client_order_id)

    def _reject_intent(
        self,
        slot: _Slot,
        intent: OrderIntent,
        reason: str,
        ts: datetime | None,
        depth: int,
        order_id: str | None = None,
    ) -> None:
        self._trades.info(
            "order_rejected",
            strategy=slot.info.name,
            symbol=intent.symbol,
            reason=reason,
            order_id=order_id,
        )
        slot.rejections += 1
        if depth >= MAX_REENTRY or slot.rejections > MAX_REJECTIONS_PER_EVENT:
            why = (
                f"{MAX_REENTRY} deep"
                if depth >= MAX_REENTRY
                else f"more than {MAX_REJECTIONS_PER_EVENT} in one event"
            )
            self._quarantine(
                slot,
                Failure(EXCEPTION, "on_reject", f"kept answering rejections with orders ({why})"),
            )
            return
        if slot.quarantined is not None:
            return
        slot.host.post_reject(intent, reason)
        self._gather(slot, ts, depth + 1)

    # -- fills and the ledger ------------------------------------------------------------------

    def _book(self, fill: Fill) -> None:
        if fill.exec_id is not None:
            if fill.exec_id in self._executions:
                return  # a broker's duplicate report of an execution already booked
            self._executions.add(fill.exec_id)
        order = self._orders.get(fill.order_id)
        if order is None:
            self._unknown_fill(fill)
            return
        slot = self._by_name[order.strategy]
        portfolio = slot.portfolio
        portfolio.apply(fill)
        cid = order.client_order_id
        # An order cancelled (quarantine, margin call) after the broker executed
        # part of it on this bar: the execution stands, its remainder was
        # already taken off the strategy's working quantity.
        cancelled = self._cancelled.get(cid)
        if cancelled is None:
            slot.host.working(fill.symbol, -fill.signed_quantity)
        slot.fills += 1
        self._resync(slot)
        filled = self._filled[cid] + fill.quantity
        self._filled[cid] = filled
        if filled >= order.quantity:
            status, reason = OrderStatus.FILLED, None
            # Done: only working orders are kept (memory flat in the run's length).
            del self._orders[cid], self._filled[cid]
        elif cancelled is not None:
            status, reason = OrderStatus.CANCELLED, cancelled
        else:
            status, reason = OrderStatus.PARTIAL, None
        run_id = self.config.run_id
        self.store.record_fill(run_id, fill, order)
        self.store.update_order(run_id, cid, status, reason, filled)
        if self._lifecycle is not None:
            self._lifecycle.info(
                "order_filled",
                order_id=cid,
                strategy=order.strategy,
                symbol=fill.symbol,
                side=fill.side.value,
                quantity=str(fill.quantity),
                price=str(fill.price),
                commission=str(fill.commission),
                ts=fill.ts.isoformat(),
                status=status.value,
                filled=str(filled),
            )
        if self._fill_event is not None:
            self._fill_event(fill=fill, strategy=slot.info)
        if status is OrderStatus.FILLED and self._order_event is not None:
            self._order_event(order=order, status="filled", reason=None)
        if order.liquidation and status is OrderStatus.FILLED:
            self._liquidated(slot, cid)
        if slot.margin_call and not order.liquidation:
            # Filled while being liquidated: once the bar's fills are booked, the
            # liquidation is resized to close what is held then.
            self._resize.append(slot)
        margin = self.broker.maintenance_margin
        if (
            margin is not None
            and not slot.margin_call
            and slot.gross_f > 0  # flat (however poor): nothing to liquidate, nothing to cancel
            and slot.equity_f < margin * slot.gross_f
        ):
            self._margin_call(slot, fill.ts)  # a fill can leave the account under water too
        if slot.quarantined is None:
            slot.host.post_fill(fill, slot.portfolio.snapshot(self._last))
            self._gather(slot, fill.ts)

    def _unknown_fill(self, fill: Fill) -> None:
        """A fill for an order this run did not place (a manual trade, an order from
        before a restart): recorded and reported, booked to no strategy."""
        payload = {
            "run_id": self.config.run_id,
            "order_id": fill.order_id,
            "broker_order_id": fill.broker_order_id,
            "exec_id": fill.exec_id,
            "symbol": fill.symbol,
            "side": fill.side.value,
            "quantity": str(fill.quantity),
            "price": str(fill.price),
            "ts": fill.ts.isoformat(),
        }
        self._trades.warning("unknown_fill", **{k: v for k, v in payload.items() if k != "run_id"})
        self.store.audit("unknown_fill", payload)
        self.unknown_fills.append(fill)

    def _resync(self, slot: _Slot) -> None:
        """Exact float mirrors of equity and gross exposure after a fill."""
        marks = self._last
        portfolio = slot.portfolio
        equity = portfolio.cash_f
        gross = 0.0
        for symbol, quantity in portfolio.quantities_f.items():
            equity += quantity * marks[symbol]
            gross += abs(quantity) * marks[symbol]
        slot.equity_f, slot.gross_f = equity, gross

    def _margin_call(self, slot: _Slot, ts: datetime) -> None:
        slot.margin_call = True
        snapshot = slot.portfolio.snapshot(self._last)
        ratio = float(snapshot.equity) / slot.gross_f if slot.gross_f else 0.0
        self._trades.warning(
            "margin_call",
            strategy=slot.info.name,
            ts=ts.isoformat(),
            equity=str(snapshot.equity),
            gross=round(slot.gross_f, 2),
            ratio=round(ratio, 4),
        )
        self.store.audit(
            "margin_call",
            {
                "run_id": self.config.run_id,
                "strategy": slot.info.name,
                "ts": ts.isoformat(),
                "equity": str(snapshot.equity),
                "gross_exposure": f"{slot.gross_f:.2f}",
            },
        )
        self._cancel(self.broker.cancel_strategy(slot.info.name), "margin call")
        for broker_order in self.broker.margin_call(slot.info.name, snapshot, ts):
            self._submit_liquidation(slot, broker_order.intent, snapshot, ts)
        if not slot.liquidations:
            slot.margin_call = False  # nothing to liquidate after all

    def _mark(self, symbol: str, price: float) -> bool:
        """Mark ``symbol`` at ``price`` (from the last mark, if any) for every holder;
        whether that moved it.  No margin check here: the bar's close is checked
        for every holder alike (the open is marked only where orders work)."""
        previous = self._last.get(symbol)
        self._last[symbol] = price
        if previous is None or previous == price:
            return False
        move = price - previous
        bench = self._bench_units.get(symbol)
        if bench:
            self._bench_value += bench * move
        for slot in self._slots:
            quantity = slot.portfolio.quantities_f.get(symbol)
            if quantity:
                slot.equity_f += quantity * move
                slot.gross_f += abs(quantity) * move
        return True

    def _resize_liquidations(self, ts: datetime) -> None:
        """Make each running liquidation close exactly what its strategy now holds."""
        for slot in dict.fromkeys(self._resize):
            if not slot.margin_call:
                continue
            working: dict[str, Decimal] = {}
            for cid in slot.liquidations:
                order = self._orders[cid]
                remaining = order.quantity - self._filled[cid]
                signed = remaining if order.side is Side.BUY else -remaining
                working[order.symbol] = working.get(order.symbol, ZERO) + signed
            for symbol in sorted({*slot.portfolio.quantities_f, *working}):
                held = slot.portfolio.quantity(symbol)
                if working.get(symbol, ZERO) == -held:
                    continue
                for cid in sorted(c for c in slot.liquidations if self._orders[c].symbol == symbol):
                    replaced = self.broker.cancel(cid)
                    if replaced is not None:
                        self._cancel([replaced], "margin call: replaced after another fill")
                slot.margin_call = True
                if held:
                    self._liquidate(slot, symbol, -held, ts)
            if not slot.liquidations:
                slot.margin_call = False
        self._resize.clear()

    def _liquidate(self, slot: _Slot, symbol: str, signed: Decimal, ts: datetime) -> None:
        """One more liquidation order of the running margin call: ``signed`` of ``symbol``."""
        intent = OrderIntent(
            symbol=symbol,
            side=Side.BUY if signed > 0 else Side.SELL,
            quantity=abs(signed),
            tag="margin-call",
        )
        self._submit_liquidation(slot, intent, slot.portfolio.snapshot(self._last), ts)

    def _submit_liquidation(
        self, slot: _Slot, intent: OrderIntent, snapshot: AccountSnapshot, ts: datetime
    ) -> None:
        order = self._new_order(slot, intent, ts, liquidation=True)
        self.store.record_order(self.config.run_id, order, OrderStatus.PENDING, "margin call")
        if self._lifecycle is not None:
            self._submitted(order)
        reason = self.broker.submit(order, snapshot)
        status = OrderStatus.REJECTED if reason else OrderStatus.ACCEPTED
        if status is OrderStatus.ACCEPTED:
            slot.host.working(order.symbol, order.signed_quantity)
            slot.liquidations.add(order.client_order_id)
        self.store.update_order(
            self.config.run_id,
            order.client_order_id,
            status,
            reason or "margin call",
            ZERO,
        )

    def _liquidated(self, slot: _Slot, cid: str) -> None:
        """A liquidation order is done: the margin call ends with the last of them, and
        the account is watched for the next one from then on."""
        slot.liquidations.discard(cid)
        if not slot.liquidations:
            slot.margin_call = False

    def _cancel(self, orders: Sequence[Order], reason: str) -> None:
        for order in orders:
            self._cancelled[order.client_order_id] = reason
            if self._lifecycle is not None:
                self._lifecycle.info(
                    "order_cancelled",
                    order_id=order.client_order_id,
                    strategy=order.strategy,
                    reason=reason,
                )
            filled = self._filled.get(order.client_order_id, ZERO)
            self.store.update_order(
                self.config.run_id,
                order.client_order_id,
                OrderStatus.CANCELLED,
                reason,
                filled,
            )
            slot = self._by_name.get(order.strategy)
            if slot is not None and order.liquidation:
                self._liquidated(slot, order.client_order_id)
            if slot is not None:
                remaining = order.quantity - filled
                slot.host.working(
                    order.symbol, -remaining if order.signed_quantity > 0 else remaining
                )
            if self._order_event is not None:
                self._order_event(order=order, status="cancelled", reason=reason)

    # -- quarantine and the end ---------------------------------------------------------------

    def _quarantine(self, slot: _Slot, failure: Failure) -> None:
        if slot.quarantined is not None:
            return
        slot.quarantined = failure.text()
        self._roster_changed = True
        slot.host.close()  # a worker is killed: it gets no more events
        self._log.error(
            "strategy_quarantined",
            strategy=slot.info.name,
            kind=failure.kind,
            hook=failure.hook,
            reason=failure.reason,
        )
        if failure.traceback:
            self._strategy_log.error(
                "strategy_traceback", strategy=slot.info.name, traceback=failure.traceback
            )
        self.store.audit(
            "strategy_quarantined",
            {
                "run_id": self.config.run_id,
                "strategy": slot.info.name,
                "sha256": slot.info.sha256,
                "kind": failure.kind,
                "hook": failure.hook,
                "reason": failure.reason,
            },
        )
        self._cancel(self.broker.cancel_strategy(slot.info.name), "strategy quarantined")

    def _finish(self) -> None:
        self._cancel(self.broker.cancel_all("end of run"), "end of run")
        stopping = [slot for slot in self._slots if slot.quarantined is None]
        for slot in stopping:
            slot.host.post_stop()
        for slot in stopping:
            reply = slot.host.gather()
            if reply is None:
                continue
            if reply.intents and reply.failure is None:
                for intent in reply.intents:
                    self._trades.warning(
                        "order_ignored",
                        strategy=slot.info.name,
                        symbol=intent.symbol,
                        reason="orders asked for in on_stop are not executed",
                    )
                reply = attrs.evolve(reply, intents=())
            self._answer(slot, reply, None, 0)

    def _result(self, slot: _Slot) -> StrategyResult:
        portfolio = slot.portfolio
        metrics = column_metrics(
            self._times,
            slot.values,
            portfolio.round_trips,
            portfolio.winning_trips,
            exposure_bars=slot.exposure,
            total_bars=len(slot.values),
            starting_equity=slot.start_equity,
        )
        metrics.update(column_benchmark_comparison(slot.values, self._bench, slot.start_equity))
        run_id, name = self.config.run_id, slot.info.name
        self.store.record_period_returns(
            run_id, name, column_period_returns(self._times, slot.values, slot.start_equity)
        )
        points = column_downsample(self._times, slot.values, self.config.stored_equity_points)
        self.store.record_equity(run_id, name, points)
        marks = self._last
        self.store.record_positions(
            run_id,
            name,
            [
                attrs.evolve(p, mark=Decimal(repr(marks[p.symbol])))
                if p.quantity and p.symbol in marks
                else p
                for p in slot.portfolio.positions()
            ],
        )
        self.store.record_result(run_id, name, metrics, slot.quarantined)
        equity = slot.portfolio.equity(self._last) if self._last else slot.portfolio.cash
        return StrategyResult(
            name=name,
            metrics=metrics,
            quarantined=slot.quarantined,
            orders=slot.orders,
            fills=slot.fills,
            equity=equity,
            sandbox=slot.host.mode,
        )


@contextlib.contextmanager
def _operator_sigint(stop: Any = None) -> Iterator[None]:
    """While a run is on, the operator's Ctrl-C is told apart from a ``KeyboardInterrupt``
    that strategy code raises (which only quarantines that strategy).  With ``stop`` (a
    live run), Ctrl-C sets it instead: the source ends and the run finishes cleanly; a
    second Ctrl-C interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop is not None and not stop.is_set():
            stop.set()
            return
        operator_interrupt.pressed = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    operator_interrupt.pressed = False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        operator_interrupt.pressed = False


def _halt_reason(path: Path) -> str:
    """The reason ``bastion halt --reason`` wrote into the halt file (any file there
    halts; one that cannot be read halts for an unnamed reason)."""
    try:
        reason = json.loads(path.read_text(encoding="utf-8")).get("reason")
    except (OSError, ValueError, AttributeError):
        reason = None
    text = str(reason) if reason else "halted by the operator"
    return "".join(c if c.isprintable() else " " for c in text)[:200]
