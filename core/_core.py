"""The engine's core: a synchronous state machine that does no I/O.

:class:`EngineCore` holds everything a run decides with — each strategy's
ledger and float mirrors, the orders it placed and what filled of them, the
marks, the limits, the margin policy, the benchmark and the equity curves — and
nothing it decides *with* is fetched behind its back.  Every event goes in
through :meth:`EngineCore.handle` (a bar, a fill or order update from the
broker, a timer tick; :meth:`~EngineCore.start` and :meth:`~EngineCore.stop`
open and close the session), and what the event calls for comes out as
**commands**: plain values saying "ask these strategies about this bar", "record
this order", "submit it with this account", "log this", "cancel that
strategy's orders".

``handle(event)`` returns the commands as a generator.  Whoever runs the core
(the *driver*: :class:`bastion._engine.Engine`) carries out each command in
turn and sends its result back — a strategy's reply, the broker's verdict on an
order, the fills a bar allows — because the next decision depends on it (an
order the broker refused is told to the strategy before its next order is
checked).  Commands that need no answer get ``None``.  The core never calls a
broker, a store, a logger, a plugin, a strategy or the clock; that is what
makes the backtest loop and the live asyncio driver run the same decisions,
and what lets tests drive it with hand-written events and read the commands.
(One thing it does behind no command: its equity curves, 8 bytes a timestamp,
spill to a temporary file every 65,536 points so memory stays flat however long
the run — the core's own state moved to disk, not an effect anyone observes.)

Inside, one coroutine (:attr:`EngineCore.machine`) handles every event, so the
bar path keeps its state in locals; it suspends only at commands that need an
answer, and the others wait in :attr:`EngineCore.outbox` until then (a driver
that talks to the coroutine directly, as the backtest loop does, empties the
outbox in order before carrying out each command that needs an answer, and
when the event is done; :meth:`~EngineCore.handle` does that for its caller).
The order is the order of issue either way: an order is stored before it is
submitted, a fill is stored before the strategy hears of it.

The bar path is kept straight and cheap: marking to market uses float mirrors
of the Decimal ledger (re-synchronised exactly at every fill).  Everything that
touches money (orders, fills, the ledger) is Decimal.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Generator, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import attrs

from ._host import EXCEPTION, Failure, Reply, log_fields
from ._loader import StrategyInfo
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
from .interfaces import EquityPoint, OrderUpdate
from .models import (
    AccountSnapshot,
    Bar,
    Fill,
    MarginPolicy,
    Order,
    OrderIntent,
    OrderStatus,
    Position,
    Side,
    _trusted_order,
)

ZERO = Decimal(0)
ONE_MINUTE = timedelta(minutes=1)

__all__ = [
    "EngineConfig",
    "EngineCore",
    "ExceptionPolicy",
    "OrderLimits",
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
    halt_file: Any = None  # a Path: while it exists, trading is halted ('bastion halt')
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


# --------------------------------------------------------------------------- commands
#
# What the core asks its driver to do.  The comment after each says what the driver
# sends back (``None`` where nothing).  Strategies are named; the driver holds their
# hosts.  Store commands are for this run (the driver knows its id).


class Start(NamedTuple):
    """Start a strategy's host with its parameters and account (-> None)."""

    strategy: str
    params: Mapping[str, Any]
    account: AccountSnapshot


class Ask(NamedTuple):
    """Hand ``bar`` to every one of ``strategies`` first, then gather their answers
    in that order (-> one ``Reply | None`` per strategy, or ``None`` when no host
    returned a reply at all)."""

    strategies: tuple[str, ...]
    bar: Bar


_ask = functools.partial(tuple.__new__, Ask)  # Ask((names, bar)): built once per bar


class Gather(NamedTuple):
    """The strategy's answer to the event last posted to it (-> ``Reply | None``)."""

    strategy: str


class PostFill(NamedTuple):
    """Tell a strategy one of its orders filled (-> None; a :class:`Gather` follows)."""

    strategy: str
    fill: Fill
    account: AccountSnapshot


class PostReject(NamedTuple):
    """Tell a strategy its intent was refused, and why (-> None; a Gather follows)."""

    strategy: str
    intent: OrderIntent
    reason: str


class PostStop(NamedTuple):
    """The run ends: ``on_stop`` to each of ``strategies`` (-> None; Gathers follow)."""

    strategies: tuple[str, ...]


class Working(NamedTuple):
    """A strategy's working quantity in ``symbol`` changed by ``change`` (-> None)."""

    strategy: str
    symbol: str
    change: Decimal


class Dismiss(NamedTuple):
    """A quarantined strategy gets no more events: release its host (-> None)."""

    strategy: str


class Match(NamedTuple):
    """The broker's fills for working orders that ``bar`` allows (-> ``Sequence[Fill]``)."""

    bar: Bar


class Submit(NamedTuple):
    """Submit an order that passed every check (-> ``None`` accepted, or the refusal)."""

    order: Order
    account: AccountSnapshot


class CancelOrder(NamedTuple):
    """Cancel one working order (-> the ``Order`` cancelled, or ``None``)."""

    client_order_id: str


class CancelStrategy(NamedTuple):
    """Cancel a strategy's working orders but its liquidations (-> ``Sequence[Order]``)."""

    strategy: str


class CancelAll(NamedTuple):
    """Cancel every working order (-> ``Sequence[Order]`` cancelled)."""

    reason: str


class RecordOrder(NamedTuple):
    """Store a new order, before it is sent (-> None)."""

    order: Order
    status: OrderStatus
    reason: str | None


class UpdateOrder(NamedTuple):
    """Store an order's new status (-> None)."""

    client_order_id: str
    status: OrderStatus
    reason: str | None
    filled: Decimal


class RecordFill(NamedTuple):
    """Store a fill of ``order`` (-> None)."""

    fill: Fill
    order: Order


class Audit(NamedTuple):
    """Append to the hash-chained audit log (-> None)."""

    event: str
    payload: Mapping[str, Any]


class CheckRisk(NamedTuple):
    """Ask the risk plugins about an intent (-> ``None`` or a veto's reason)."""

    intent: OrderIntent
    strategy: StrategyInfo
    ts: datetime
    last_price: Decimal | None


class Notify(NamedTuple):
    """Tell the plugins implementing ``hook`` (``order_event``, ``fill_event``) (-> None)."""

    hook: str
    fields: Mapping[str, Any]


class Log(NamedTuple):
    """One record in a log stream (``system``, ``strategy``, ``trades``) (-> None)."""

    stream: str
    level: str
    event: str
    fields: Mapping[str, Any]


class ReadHalt(NamedTuple):
    """Is the operator's halt in force? (-> its reason, or ``None``)."""


class RecordBenchmark(NamedTuple):
    """Store the run's buy-and-hold benchmark curve (-> None)."""

    points: Sequence[EquityPoint]


class RecordEquity(NamedTuple):
    """Store a strategy's (downsampled) equity curve (-> None)."""

    strategy: str
    points: Sequence[EquityPoint]


class RecordPeriodReturns(NamedTuple):
    """Store a strategy's returns by period (-> None)."""

    strategy: str
    returns: Any


class RecordPositions(NamedTuple):
    """Store a strategy's positions at the end (-> None)."""

    strategy: str
    positions: Sequence[Position]


class RecordResult(NamedTuple):
    """Store a strategy's metrics and quarantine reason (-> None)."""

    strategy: str
    metrics: Mapping[str, float | int | None]
    quarantined: str | None


Command = (
    Start
    | Ask
    | Gather
    | PostFill
    | PostReject
    | PostStop
    | Working
    | Dismiss
    | Match
    | Submit
    | CancelOrder
    | CancelStrategy
    | CancelAll
    | RecordOrder
    | UpdateOrder
    | RecordFill
    | Audit
    | CheckRisk
    | Notify
    | Log
    | ReadHalt
    | RecordBenchmark
    | RecordEquity
    | RecordPeriodReturns
    | RecordPositions
    | RecordResult
)

#: What :meth:`EngineCore.handle` returns: commands out, their results sent back in.
Commands = Generator[Command, Any, Any]

Event = Bar | Fill | OrderUpdate | Tick


class _Slot:
    """Everything the core keeps for one strategy."""

    __slots__ = (
        "equity_f",
        "exposure",
        "fills",
        "gross_f",
        "info",
        "liquidations",
        "margin_call",
        "mode",
        "name",
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

    def __init__(
        self, info: StrategyInfo, params: Mapping[str, Any], mode: str, cash: Decimal
    ) -> None:
        self.info = info
        self.name = info.name
        self.params = params
        self.mode = mode
        self.skips = 0
        self.rejections = 0  # rejections from the event being handled
        self.signals = 0  # intents recorded as signals (signal-only)
        self.portfolio = Portfolio(info.name, cash, keep_trades=False)
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


class EngineCore:
    """The run's state and decisions; see the module docstring.

    :param config: the run's settings.
    :param strategies: ``(info, params, mode)`` per strategy, in the order they are
        asked (``mode`` is its host's, reported in the result).
    :param margin: the broker's margin policy (``None``: the broker liquidates by itself).
    :param risk: whether any risk plugin is registered (else no :class:`CheckRisk`).
    :param order_events: whether plugins listen to ``order_event`` (else no such Notify).
    :param fill_events: whether plugins listen to ``fill_event``.
    """

    def __init__(
        self,
        config: EngineConfig,
        strategies: Sequence[tuple[StrategyInfo, Mapping[str, Any], str]],
        *,
        margin: MarginPolicy | None = None,
        risk: bool = False,
        order_events: bool = False,
        fill_events: bool = False,
    ) -> None:
        self.config = config
        self.margin = margin
        self._maintenance = None if margin is None else margin.maintenance
        self._risk = risk
        self._order_events = order_events
        self._fill_events = fill_events
        self._slots = [_Slot(info, params, mode, config.cash) for info, params, mode in strategies]
        self._by_name = {slot.name: slot for slot in self._slots}
        self._orders: dict[
            str, Order
        ] = {}  # placed, not filled (cancelled ones stay: a fill may follow)
        self._filled: dict[str, Decimal] = {}
        self._cancelled: dict[str, str] = {}  # client order id -> why it was cancelled
        self._live: dict[str, str] = {}  # orders the broker accepted and works: id -> symbol
        self._working: dict[str, int] = {}  # symbol -> how many of those
        self._resize: list[_Slot] = []  # margin calls whose liquidation a fill outdated
        self._executions: set[str] = set()  # broker execution ids already booked
        self.unknown_fills: list[Fill] = []  # fills of orders this run did not place
        self._recent: deque[datetime] = deque()  # when the orders of the last minute were placed
        self._per_minute = config.limits.max_orders_per_minute is not None
        self._daily_loss = config.limits.max_daily_loss is not None
        self._day: tuple[date, float, float] | None = None  # day, its start equity, latest
        self._halted: tuple[date, str] | None = None  # the day trading is halted, and why
        self._halt_watch = config.halt_file is not None
        self._operator_halt: str | None = None  # 'bastion halt' is in force
        self._last: dict[str, float] = {}
        # The timestamps of the equity curves, as epoch microseconds (see _close_timestamp).
        self._times = Column("q")
        self._seq = 0
        self._lifecycle = config.log_trades  # every order's life in the trades stream
        for slot in self._slots:
            self._carry(slot, config.opening.get(slot.name, ()))
        # The buy-and-hold benchmark: the run's cash split equally over its symbols,
        # each slice bought at that symbol's first close and held; one value per
        # timestamp, like the equity curves.  The value is kept up to date as prices
        # move (like the strategies' float mirrors), so a timestamp only appends it.
        self._bench_slice = float(config.cash) / max(len(config.symbols), 1)
        self._bench_value = float(config.cash)
        self._bench_units: dict[str, float] = {}
        self._bench_seen = 0  # how many priced symbols the benchmark has looked at
        self._bench = Column("d")
        self._current: datetime | None = None  # the timestamp whose bars are being handled
        self.bars = 0  # bars handled
        self._running: list[_Slot] = list(self._slots)
        self._asking: tuple[str, ...] = tuple(slot.name for slot in self._slots)
        #: Commands that need no answer (store, log, audit, tell a strategy), in the order
        #: they were issued, waiting to be carried out before the next command that needs
        #: one (or when the event is done): see :meth:`handle`.
        self.outbox: list[Command] = []
        self._emit = self.outbox.append
        self.broken: str | None = None  # why the core stopped taking events (see abandon)
        #: The core's coroutine (see :meth:`_events`): ``machine.send(event)`` returns the
        #: event's first command that needs an answer, ``machine.send(answer)`` the next,
        #: ``None`` when the event is done; :attr:`outbox` holds the rest meanwhile.
        self.machine = self._events()
        next(self.machine)

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

    # -- the session ---------------------------------------------------------------------

    def start(self) -> Commands:
        """Start every strategy (``on_start``: no orders yet, nothing has a price)."""
        return self._commands(self._start())

    def _start(self) -> Commands:
        for slot in self._slots:
            self._emit(Start(slot.name, slot.params, slot.portfolio.snapshot(self._last)))
        for slot in self._slots:
            yield from self._gather(slot, None)

    def handle(self, event: Event) -> Commands:
        """One event: a bar, a fill or order update the broker pushed, or a timer tick.

        The commands come from the core's one coroutine (:attr:`machine`), passed
        through; a driver must carry all of them out before handing over the next
        event, and call :meth:`abandon` when it cannot (a command failed)."""
        if not isinstance(event, (Bar, Fill, OrderUpdate, Tick)):
            raise TypeError(
                f"the engine core handles Bar, Fill, OrderUpdate and Tick, not {event!r}"
            )
        if self.broken is not None:
            raise RuntimeError(
                f"the engine core takes no more events: an earlier one failed ({self.broken})"
            )
        send = self.machine.send
        outbox = self.outbox
        command = send(event)
        while True:
            if outbox:
                pending = outbox[:]
                outbox.clear()
                # Not ``yield from``: the driver may send back a value for these.
                for done in pending:  # noqa: UP028
                    yield done
            if command is None:
                return
            command = send((yield command))

    def abandon(self, error: BaseException) -> None:
        """The event being handled could not be finished (carrying out a command failed,
        or the core itself did): the core's coroutine is closed, and :meth:`handle`
        refuses further events, naming ``error``."""
        if self.broken is None:
            self.broken = f"{type(error).__name__}: {error}"
            self.outbox.clear()
            self.machine.close()

    def _commands(self, work: Commands) -> Commands:
        """The commands ``work`` yields (those that need an answer) with the outbox's in
        between, in the order they were issued; returns ``work``'s value."""
        outbox = self.outbox
        send = work.send
        value = None
        try:
            command = send(None)
            while True:
                if outbox:
                    pending = outbox[:]
                    outbox.clear()
                    for issued in pending:
                        yield issued
                command = send((yield command))
        except StopIteration as done:
            value = done.value
        if outbox:
            pending = outbox[:]
            outbox.clear()
            for issued in pending:
                yield issued
        return value

    def _log(self, stream: str, level: str, event: str, /, **fields: Any) -> None:
        """Issue a :class:`Log` command (a record in the ``stream`` log)."""
        self._emit(Log(stream, level, event, fields))

    def _audit(self, event: str, /, **payload: Any) -> None:
        """Issue an :class:`Audit` command: ``event`` with this run's id and ``payload``."""
        self._emit(Audit(event, {"run_id": self.config.run_id, **payload}))

    def stop(self) -> Commands:
        """The run ends: the last timestamp is closed, working orders are cancelled and
        each running strategy's ``on_stop`` is called (orders it asks for are ignored)."""
        return self._commands(self._stop())

    def _stop(self) -> Commands:
        if self._current is not None:
            self._close_timestamp(self._current)
            if self._daily_loss:
                yield from self._check_daily_loss(self._current)
        self._cancel((yield CancelAll("end of run")), "end of run")
        stopping = [slot for slot in self._slots if slot.quarantined is None]
        if stopping:
            self._emit(PostStop(tuple(slot.name for slot in stopping)))
        for slot in stopping:
            reply = yield Gather(slot.name)
            if reply is None:
                continue
            if reply.intents and reply.failure is None:
                for intent in reply.intents:
                    self._log(
                        "trades",
                        "warning",
                        "order_ignored",
                        strategy=slot.name,
                        symbol=intent.symbol,
                        reason="orders asked for in on_stop are not executed",
                    )
                reply = attrs.evolve(reply, intents=())
            yield from self._answer(slot, reply, None, 0)

    def results(self) -> Commands:
        """Store the benchmark and each strategy's metrics, equity and positions; returns
        the :class:`StrategyResult` of each (the temporary columns are released).  Each
        strategy's records come out as soon as they are computed."""
        outbox = self.outbox
        try:
            self._emit(
                RecordBenchmark(
                    column_downsample(self._times, self._bench, self.config.stored_equity_points)
                )
            )
            results = []
            for slot in self._slots:
                results.append(self._result(slot))
                pending = outbox[:]
                outbox.clear()
                for issued in pending:  # noqa: UP028 (the driver may send back a value)
                    yield issued
            return tuple(results)
        finally:
            for column in (self._times, self._bench, *(slot.values for slot in self._slots)):
                column.close()

    # -- events --------------------------------------------------------------------------

    def _events(self) -> Generator[Command | None, Any, None]:
        """The core's coroutine: it is sent an event, yields that event's commands one at
        a time (each is sent its result back), then yields ``None``: ready for the next
        event.  One coroutine for the whole run, so the bar path keeps its state in
        locals and costs no generator per bar."""
        slots = self._slots
        last = self._last
        working = self._working
        bench_units = self._bench_units
        maintenance = self._maintenance
        halt_watch = self._halt_watch
        daily_loss = self._daily_loss
        ask = _ask
        event = yield None
        while True:
            if type(event) is Bar:
                # A bar: the fills it allows (the broker matches its working orders from
                # the open on), the close marked for every holder, margin, then every
                # strategy.
                bar: Bar = event
                ts = bar.ts
                current = self._current
                if ts != current:
                    if current is not None:
                        self._close_timestamp(current)
                        if daily_loss:
                            yield from self._check_daily_loss(current)
                    self._current = ts
                    if halt_watch:
                        yield from self._check_halt(ts)
                symbol = bar.symbol
                gapped = False
                if symbol in working:
                    # Fills happen from the open on: mark the symbol there first, so the
                    # ledger, the margin check and on_fill see the gap, not the last close.
                    gapped = self._mark(symbol, bar.open)
                    for fill in (yield Match(bar)):
                        yield from self._book(fill)
                    if self._resize:
                        yield from self._resize_liquidations(ts)
                # The close, marked inline (this runs for every bar; _mark is the same
                # move).  Margin is checked at the close of every bar whose price moved (a
                # gap marked at the open counts), whether or not orders were working.
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
                                maintenance is not None
                                and slot.equity_f < maintenance * slot.gross_f
                                and not slot.margin_call
                            ):
                                yield from self._margin_call(slot, ts)
                running = self._running
                if running:
                    # Every strategy gets the bar first (workers compute in parallel),
                    # then the answers are handled in a fixed order.  ``None``: nobody
                    # asked for anything.
                    replies = yield ask((self._asking, bar))
                    if replies is not None:
                        for slot, reply in zip(running, replies, strict=True):
                            if reply is not None:
                                yield from self._answer(slot, reply, ts, 0)
                self.bars += 1
            elif isinstance(event, Tick):
                # Time passes without a bar (live): the operator's halt is looked at.
                if halt_watch:
                    yield from self._check_halt(event.ts)
            elif isinstance(event, Fill):
                # A fill the broker pushed (live), booked when it arrives.
                now = self._current
                if now is None or event.ts > now:
                    now = event.ts
                last.setdefault(event.symbol, float(event.price))
                yield from self._book(event)
                if self._resize:
                    yield from self._resize_liquidations(now)
            elif isinstance(event, OrderUpdate):
                yield from self._order_update(event)
            else:  # handle() checks; a driver talking to the machine directly must too
                raise TypeError(
                    f"the engine core handles Bar, Fill, OrderUpdate and Tick, not {event!r}"
                )
            event = yield None

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

    def _check_halt(self, ts: datetime) -> Commands:
        """``bastion halt`` is in force: cancel working orders, refuse new ones;
        ``bastion resume`` lifted it: trade again."""
        why = yield ReadHalt()
        if why is not None and self._operator_halt is None:
            self._operator_halt = (
                f"trading is halted by the operator: {why} ('bastion resume' lifts it)"
            )
            yield from self._halt_trading(ts, why, by="operator", reason=why)
        elif why is None and self._operator_halt is not None:
            self._operator_halt = None
            self._log("trades", "info", "trading_resumed", ts=ts.isoformat())
            self._audit("trading_resumed", ts=ts.isoformat())

    def _check_daily_loss(self, ts: datetime) -> Commands:
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
        yield from self._halt_trading(ts, why, loss=round(loss, 2), limit=str(limit))

    def _halt_trading(self, ts: datetime, why: str, /, **logged: Any) -> Commands:
        """Trading halts (the operator, the daily loss limit): logged with ``logged``,
        audited with ``why``, and every strategy's working orders cancelled."""
        self._log("trades", "error", "trading_halted", ts=ts.isoformat(), **logged)
        self._audit("trading_halted", ts=ts.isoformat(), reason=why)
        for slot in self._slots:
            self._cancel((yield CancelStrategy(slot.name)), "trading halted")

    # -- strategies' answers -------------------------------------------------------------

    def _gather(self, slot: _Slot, ts: datetime | None, depth: int = 0) -> Commands:
        if slot.quarantined is not None:
            return
        reply = yield Gather(slot.name)
        if reply is not None:
            yield from self._answer(slot, reply, ts, depth)

    def _answer(self, slot: _Slot, reply: Reply, ts: datetime | None, depth: int) -> Commands:
        """A host's answer: its log records, then its failure or its order intents."""
        if depth == 0:
            slot.rejections = 0  # a new event: a new budget of rejections
        for level, event, fields in reply.logs:
            self._log("strategy", level, event, strategy=slot.name, **log_fields(fields))
        failure = reply.failure
        if failure is not None:
            policy = self.config.exceptions.get(slot.name)
            if (
                failure.kind == EXCEPTION
                and policy is not None
                and policy.skip
                and slot.skips < policy.max_skips
            ):
                slot.skips += 1
                self._log(
                    "strategy",
                    "error",
                    "strategy_event_skipped",
                    strategy=slot.name,
                    hook=failure.hook,
                    reason=failure.reason,
                    traceback=failure.traceback,
                    skipped=slot.skips,
                    max_skips=policy.max_skips,
                )
                return
            yield from self._quarantine(slot, failure)
            return
        if reply.intents:
            yield from self._intents(slot, reply.intents, ts, depth)

    def _intents(
        self, slot: _Slot, intents: Sequence[OrderIntent], ts: datetime | None, depth: int
    ) -> Commands:
        """A strategy's order intents, one at a time: each is checked (ledger, limits,
        risk plugins), recorded *before* it is sent, then submitted; a refusal is told
        to the strategy (whose answer is handled) before the next intent is checked."""
        if ts is None:
            # on_start: nothing has a price yet, so nothing can be executed.
            for intent in intents:
                yield from self._reject_intent(
                    slot, intent, "orders cannot be placed before the first bar", ts, depth
                )
            return
        for index, intent in enumerate(intents):
            if slot.quarantined is not None:
                for dropped in intents[index:]:
                    self._log(
                        "trades",
                        "warning",
                        "order_ignored",
                        strategy=slot.name,
                        symbol=dropped.symbol,
                        reason="the strategy was quarantined while this event was handled",
                    )
                return
            if self.config.trade_from is not None and ts < self.config.trade_from:
                self._log(
                    "trades",
                    "info",
                    "order_ignored",
                    strategy=slot.name,
                    symbol=intent.symbol,
                    reason="a warm-up bar: orders start with the first live bar",
                )
                continue
            unheld = unholdable(intent)
            if unheld is not None:
                # Never stored: the store and the ledger could not hold these numbers.
                yield from self._reject_intent(slot, intent, unheld, ts, depth)
                continue
            reason = self._limits(slot, intent, ts)
            if reason is None and self._risk:
                last = self._last.get(intent.symbol)
                reason = yield CheckRisk(
                    intent, slot.info, ts, None if last is None else Decimal(repr(last))
                )
            if reason is None and self.config.signal_only:
                self._signal(slot, intent, ts)
                continue
            order = self._new_order(slot, intent, ts)
            if reason is not None:
                self._emit(RecordOrder(order, OrderStatus.REJECTED, reason))
                self._forget(order)
                yield from self._rejected(slot, order, reason, depth)
                continue
            self._emit(RecordOrder(order, OrderStatus.PENDING, None))
            if self._per_minute:  # only read by that limit: kept only for it
                self._recent.append(ts)
            if self._lifecycle:
                self._emit(self._submitted(order))
            if self._order_events:
                self._emit(
                    Notify("order_event", {"order": order, "status": "submitted", "reason": None})
                )
            # Marks for every symbol the broker may value: held, ordered, or with
            # orders working (the strategy's net working quantity may be 0).
            account = slot.portfolio.snapshot(self._last, also=(intent.symbol, *self._working))
            reason = yield Submit(order, account)
            if reason is not None:
                self._forget(order)
                self._emit(UpdateOrder(order.client_order_id, OrderStatus.REJECTED, reason, ZERO))
                yield from self._rejected(slot, order, reason, depth)
            else:
                self._accepted(order)
                self._emit(UpdateOrder(order.client_order_id, OrderStatus.ACCEPTED, None, ZERO))
                self._emit(Working(slot.name, order.symbol, order.signed_quantity))
                if self._lifecycle:
                    self._log(
                        "trades",
                        "info",
                        "order_accepted",
                        order_id=order.client_order_id,
                        strategy=order.strategy,
                    )
                if self._order_events:
                    self._emit(
                        Notify(
                            "order_event", {"order": order, "status": "accepted", "reason": None}
                        )
                    )

    def _signal(self, slot: _Slot, intent: OrderIntent, ts: datetime) -> None:
        """Signal-only: an intent that passed every check is recorded, never sent."""
        payload = {
            "strategy": slot.name,
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
        self._audit("signal", **payload)
        self._log("trades", "info", "signal", **payload)
        slot.signals += 1

    def _order_update(self, update: OrderUpdate) -> Commands:
        """A live broker rejected or cancelled one of the orders by itself."""
        order = self._orders.get(update.client_order_id)
        if order is None:
            self._log(
                "trades",
                "warning",
                "unknown_order_update",
                order_id=update.client_order_id,
                status=update.status,
                reason=update.reason,
            )
            return
        cid = order.client_order_id
        if cid in self._cancelled:
            # Already ended (a cancel crossed the broker's own, or it repeated itself):
            # stored and taken off the working quantity once.
            self._log(
                "trades",
                "info",
                "order_update_ignored",
                order_id=cid,
                status=update.status,
                reason=update.reason,
            )
            return
        if update.status == "rejected":
            filled = self._filled.get(cid, ZERO)
            self._cancelled[cid] = update.reason
            self._done(cid)
            self._emit(UpdateOrder(cid, OrderStatus.REJECTED, update.reason, filled))
            slot = self._by_name[order.strategy]
            remaining = order.quantity - filled
            self._emit(
                Working(
                    slot.name, order.symbol, -remaining if order.signed_quantity > 0 else remaining
                )
            )
            if order.liquidation:
                self._liquidated(slot, cid)  # the margin call ends; the account is watched
            else:
                yield from self._rejected(slot, order, update.reason, 0)
        else:
            self._cancel([order], update.reason)

    def _submitted(self, order: Order) -> Log:
        """The trades stream's first record of an order: what was asked, under its id."""
        intent = order.intent
        return Log(
            "trades",
            "info",
            "order_submitted",
            {
                "order_id": order.client_order_id,
                "strategy": order.strategy,
                "sha256": order.strategy_sha256,
                "symbol": intent.symbol,
                "side": intent.side.value,
                "quantity": str(intent.quantity),
                "type": intent.type.value,
                "limit_price": None if intent.limit_price is None else str(intent.limit_price),
                "stop_price": None if intent.stop_price is None else str(intent.stop_price),
                "tag": intent.tag,
                "liquidation": order.liquidation,
            },
        )

    def _new_order(
        self, slot: _Slot, intent: OrderIntent, ts: datetime, *, liquidation: bool = False
    ) -> Order:
        self._seq += 1
        slot.orders += 1
        # Stamped on an intent the core validated, at an aware time it holds (a bar's,
        # a fill's or an order's): nothing for Order's validators to find.
        order = _trusted_order(
            f"{self.config.run_id}-{self._seq:06d}",
            slot.name,
            slot.info.sha256,
            slot.info.signer,
            intent,
            ts,
            liquidation,
        )
        self._orders[order.client_order_id] = order
        self._filled[order.client_order_id] = ZERO
        return order

    def _forget(self, order: Order) -> None:
        """An order no broker holds (refused before or at submission): not kept."""
        del self._orders[order.client_order_id], self._filled[order.client_order_id]

    def _accepted(self, order: Order) -> None:
        """The broker works ``order`` now."""
        symbol = order.symbol
        self._live[order.client_order_id] = symbol
        self._working[symbol] = self._working.get(symbol, 0) + 1

    def _done(self, cid: str) -> None:
        """The broker no longer works order ``cid`` (filled, cancelled, rejected)."""
        symbol = self._live.pop(cid, None)
        if symbol is not None:
            left = self._working[symbol] - 1
            if left:
                self._working[symbol] = left
            else:
                del self._working[symbol]

    def _limits(self, slot: _Slot, intent: OrderIntent, ts: datetime) -> str | None:
        """The run's and the environment's own limits (before any risk plugin)."""
        if intent.symbol not in self.config.symbols:
            return f"unknown symbol {intent.symbol!r}: not in this run's data"
        if self._halted is not None and self._halted[0] == ts.date():
            return self._halted[1]
        if self._operator_halt is not None:
            return self._operator_halt
        blocked = self.config.blocked.get(slot.name)
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
            held.update(self._working)
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
        return None

    def _rejected(self, slot: _Slot, order: Order, reason: str, depth: int) -> Commands:
        if self._order_events:
            self._emit(
                Notify("order_event", {"order": order, "status": "rejected", "reason": reason})
            )
        yield from self._reject_intent(
            slot, order.intent, reason, order.created, depth, order.client_order_id
        )

    def _reject_intent(
        self,
        slot: _Slot,
        intent: OrderIntent,
        reason: str,
        ts: datetime | None,
        depth: int,
        order_id: str | None = None,
    ) -> Commands:
        self._log(
            "trades",
            "info",
            "order_rejected",
            strategy=slot.name,
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
            yield from self._quarantine(
                slot,
                Failure(EXCEPTION, "on_reject", f"kept answering rejections with orders ({why})"),
            )
            return
        if slot.quarantined is not None:
            return
        self._emit(PostReject(slot.name, intent, reason))
        yield from self._gather(slot, ts, depth + 1)

    # -- fills and the ledger ----------------------------------------------------------------

    def _book(self, fill: Fill) -> Commands:
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
            self._emit(Working(slot.name, fill.symbol, -fill.signed_quantity))
        slot.fills += 1
        self._resync(slot)
        filled = self._filled[cid] + fill.quantity
        self._filled[cid] = filled
        if filled >= order.quantity:
            status, reason = OrderStatus.FILLED, None
            # Filled: forgotten (memory flat in the run's length; the few cancelled
            # orders stay, a fill the broker had already made may still arrive).
            del self._orders[cid], self._filled[cid]
            self._done(cid)
        elif cancelled is not None:
            status, reason = OrderStatus.CANCELLED, cancelled
        else:
            status, reason = OrderStatus.PARTIAL, None
        self._emit(RecordFill(fill, order))
        self._emit(UpdateOrder(cid, status, reason, filled))
        if self._lifecycle:
            self._log(
                "trades",
                "info",
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
        if self._fill_events:
            self._emit(Notify("fill_event", {"fill": fill, "strategy": slot.info}))
        if status is OrderStatus.FILLED and self._order_events:
            self._emit(Notify("order_event", {"order": order, "status": "filled", "reason": None}))
        if order.liquidation and status is OrderStatus.FILLED:
            self._liquidated(slot, cid)
        if slot.margin_call and not order.liquidation:
            # Filled while being liquidated: once the bar's fills are booked, the
            # liquidation is resized to close what is held then.
            self._resize.append(slot)
        margin = self.margin
        if (
            margin is not None
            and not slot.margin_call
            and margin.breached(slot.equity_f, slot.gross_f)
        ):
            yield from self._margin_call(slot, fill.ts)  # a fill can leave it under water too
        if slot.quarantined is None:
            self._emit(PostFill(slot.name, fill, slot.portfolio.snapshot(self._last)))
            yield from self._gather(slot, fill.ts)

    def _unknown_fill(self, fill: Fill) -> None:
        """A fill for an order this run did not place (a manual trade, an order from
        before a restart): recorded and reported, booked to no strategy."""
        payload = {
            "order_id": fill.order_id,
            "broker_order_id": fill.broker_order_id,
            "exec_id": fill.exec_id,
            "symbol": fill.symbol,
            "side": fill.side.value,
            "quantity": str(fill.quantity),
            "price": str(fill.price),
            "ts": fill.ts.isoformat(),
        }
        self._log("trades", "warning", "unknown_fill", **payload)
        self._audit("unknown_fill", **payload)
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

    # -- margin calls ----------------------------------------------------------------------

    def _margin_call(self, slot: _Slot, ts: datetime) -> Commands:
        assert self.margin is not None
        slot.margin_call = True
        snapshot = slot.portfolio.snapshot(self._last)
        ratio = float(snapshot.equity) / slot.gross_f if slot.gross_f else 0.0
        self._log(
            "trades",
            "warning",
            "margin_call",
            strategy=slot.name,
            ts=ts.isoformat(),
            equity=str(snapshot.equity),
            gross=round(slot.gross_f, 2),
            ratio=round(ratio, 4),
        )
        self._audit(
            "margin_call",
            strategy=slot.name,
            ts=ts.isoformat(),
            equity=str(snapshot.equity),
            gross_exposure=f"{slot.gross_f:.2f}",
        )
        self._cancel((yield CancelStrategy(slot.name)), "margin call")
        for intent in self.margin.liquidation(snapshot):
            yield from self._submit_liquidation(slot, intent, snapshot, ts)
        if not slot.liquidations:
            slot.margin_call = False  # nothing to liquidate after all

    def _resize_liquidations(self, ts: datetime) -> Commands:
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
                    replaced = yield CancelOrder(cid)
                    if replaced is not None:
                        self._cancel([replaced], "margin call: replaced after another fill")
                    else:
                        # The broker no longer works it (a fill of it may still come, and
                        # is booked): it is not counted as working any more.
                        self._done(cid)
                        slot.liquidations.discard(cid)
                        self._log("trades", "warning", "liquidation_not_working", order_id=cid)
                slot.margin_call = True
                if held:
                    snapshot = slot.portfolio.snapshot(self._last)
                    assert self.margin is not None
                    for intent in self.margin.liquidation(snapshot):
                        if intent.symbol == symbol:
                            yield from self._submit_liquidation(slot, intent, snapshot, ts)
            if not slot.liquidations:
                slot.margin_call = False
        self._resize.clear()

    def _submit_liquidation(
        self, slot: _Slot, intent: OrderIntent, snapshot: AccountSnapshot, ts: datetime
    ) -> Commands:
        order = self._new_order(slot, intent, ts, liquidation=True)
        self._emit(RecordOrder(order, OrderStatus.PENDING, "margin call"))
        if self._lifecycle:
            self._emit(self._submitted(order))
        reason = yield Submit(order, snapshot)
        status = OrderStatus.REJECTED if reason else OrderStatus.ACCEPTED
        if status is OrderStatus.ACCEPTED:
            self._accepted(order)
            self._emit(Working(slot.name, order.symbol, order.signed_quantity))
            slot.liquidations.add(order.client_order_id)
        else:
            self._forget(order)  # no broker holds it
        self._emit(UpdateOrder(order.client_order_id, status, reason or "margin call", ZERO))

    def _liquidated(self, slot: _Slot, cid: str) -> None:
        """A liquidation order is done: the margin call ends with the last of them, and
        the account is watched for the next one from then on."""
        slot.liquidations.discard(cid)
        if not slot.liquidations:
            slot.margin_call = False

    def _cancel(self, orders: Iterable[Order], reason: str) -> None:
        for order in orders:
            cid = order.client_order_id
            self._cancelled[cid] = reason
            self._done(cid)
            if self._lifecycle:
                self._log(
                    "trades",
                    "info",
                    "order_cancelled",
                    order_id=cid,
                    strategy=order.strategy,
                    reason=reason,
                )
            filled = self._filled.get(cid, ZERO)
            self._emit(UpdateOrder(cid, OrderStatus.CANCELLED, reason, filled))
            slot = self._by_name.get(order.strategy)
            if slot is not None and order.liquidation:
                self._liquidated(slot, cid)
            if slot is not None:
                remaining = order.quantity - filled
                self._emit(
                    Working(
                        slot.name,
                        order.symbol,
                        -remaining if order.signed_quantity > 0 else remaining,
                    )
                )
            if self._order_events:
                self._emit(
                    Notify("order_event", {"order": order, "status": "cancelled", "reason": reason})
                )

    # -- quarantine and the end ---------------------------------------------------------------

    def _quarantine(self, slot: _Slot, failure: Failure) -> Commands:
        if slot.quarantined is not None:
            return
        slot.quarantined = failure.text()
        self._running = [s for s in self._slots if s.quarantined is None]
        self._asking = tuple(s.name for s in self._running)
        self._emit(Dismiss(slot.name))  # a worker is killed: it gets no more events
        self._log(
            "system",
            "error",
            "strategy_quarantined",
            strategy=slot.name,
            kind=failure.kind,
            hook=failure.hook,
            reason=failure.reason,
        )
        if failure.traceback:
            self._log(
                "strategy",
                "error",
                "strategy_traceback",
                strategy=slot.name,
                traceback=failure.traceback,
            )
        self._audit(
            "strategy_quarantined",
            strategy=slot.name,
            sha256=slot.info.sha256,
            kind=failure.kind,
            hook=failure.hook,
            reason=failure.reason,
        )
        self._cancel((yield CancelStrategy(slot.name)), "strategy quarantined")

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
        name = slot.name
        self._emit(
            RecordPeriodReturns(
                name, column_period_returns(self._times, slot.values, slot.start_equity)
            )
        )
        self._emit(
            RecordEquity(
                name, column_downsample(self._times, slot.values, self.config.stored_equity_points)
            )
        )
        marks = self._last
        self._emit(
            RecordPositions(
                name,
                [
                    attrs.evolve(p, mark=Decimal(repr(marks[p.symbol])))
                    if p.quantity and p.symbol in marks
                    else p
                    for p in slot.portfolio.positions()
                ],
            )
        )
        self._emit(RecordResult(name, metrics, slot.quarantined))
        equity = slot.portfolio.equity(self._last) if self._last else slot.portfolio.cash
        return StrategyResult(
            name=name,
            metrics=metrics,
            quarantined=slot.quarantined,
            orders=slot.orders,
            fills=slot.fills,
            equity=equity,
            sandbox=slot.mode,
        )
