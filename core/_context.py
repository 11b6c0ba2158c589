"""What a strategy sees (``ctx``) and the runner that feeds it events.

The contract is deliberately one that can be served across a process
boundary (the sandbox runs each strategy in its own worker): a strategy
receives only plain data — its parameters, bars, its own fills, snapshots of
its own portfolio — and answers with order intents and log records.  It never
holds a reference to the kernel, a broker, the store or another strategy.

:class:`StrategyRunner` calls the strategy's hook functions directly (they
were validated by pluggy when the module was loaded; calling the single
implementation directly avoids pluggy's per-call overhead on the bar path).
The same runner serves the in-process host and the sandboxed worker, so a
strategy behaves identically in both.  This module imports neither the
kernel nor pluggy.
"""

from __future__ import annotations

import traceback
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from .models import (
    AccountSnapshot,
    Bar,
    Fill,
    OrderIntent,
    OrderType,
    Side,
    _decimal,
    _trusted_intent,
)

__all__ = [
    "HISTORY_BARS",
    "MAX_INTENTS_PER_EVENT",
    "MAX_LOGS_PER_EVENT",
    "StrategyContext",
    "StrategyError",
    "StrategyRunner",
    "operator_interrupt",
]

ZERO = Decimal(0)
HISTORY_BARS = 256  # recent bars kept per symbol for ctx.history()
MAX_INTENTS_PER_EVENT = 100
MAX_LOGS_PER_EVENT = 20
MAX_TRACEBACK = 4000  # characters of a strategy's traceback kept with its failure

# Why a strategy stopped, as stored (the first word of its quarantine reason).
EXCEPTION = "exception"
MEMORY_LIMIT = "memory-limit"


class _OperatorInterrupt:
    """Set by the kernel's SIGINT handler: a ``KeyboardInterrupt`` that strategy code
    raised itself quarantines the strategy; only the operator's own Ctrl-C ends the run."""

    pressed = False


operator_interrupt = _OperatorInterrupt()


def _name_of(exc: BaseException) -> str:
    """The exception's class name; a hostile class may make even that raise."""
    try:
        name = type(exc).__name__
        return name if isinstance(name, str) else "exception"
    except BaseException:
        return "exception"


class StrategyError(Exception):
    """Strategy code raised or misbehaved; the strategy is quarantined (or the event skipped).

    ``kind`` is the stored quarantine kind (``exception``, ``memory-limit``, ...),
    ``traceback`` the strategy's own frames, when there are any.
    """

    def __init__(
        self,
        strategy: str,
        hook: str,
        reason: str,
        kind: str = EXCEPTION,
        traceback: str | None = None,
    ) -> None:
        super().__init__(f"{strategy}: {hook}: {reason}")
        self.strategy, self.hook, self.reason = strategy, hook, reason
        self.kind, self.traceback = kind, traceback


class _Log:
    """``ctx.log``: structured log records, handed to the kernel with the intents.

    At most :data:`MAX_LOGS_PER_EVENT` records per event; what goes beyond is
    counted and reported in one ``log_truncated`` record.
    """

    __slots__ = ("_dropped", "_records")

    def __init__(self, records: list[tuple[str, str, dict[str, str]]]) -> None:
        self._records = records
        self._dropped = 0

    def _add(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if len(self._records) < MAX_LOGS_PER_EVENT:
            clean = {str(k)[:64]: str(v)[:256] for k, v in list(fields.items())[:20]}
            self._records.append((level, str(event)[:200], clean))
        else:
            self._dropped += 1

    def _output(self, text: str) -> None:
        """What the strategy printed: one ``print`` record per call."""
        text = text.rstrip("\n")
        if len(self._records) < MAX_LOGS_PER_EVENT:
            self._records.append(("info", "print", {"text": text[:1000]}))
        else:
            self._dropped += 1

    def _close_event(self) -> None:
        if self._dropped:
            self._records.append(("warning", "log_truncated", {"dropped": str(self._dropped)}))
            self._dropped = 0

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, fields)


class StrategyContext:
    """A strategy's whole world.

    * ``ctx.params`` — read-only parameters (defaults from ``PARAMS``, overridden
      by configuration);
    * ``ctx.state`` — a dict the strategy may keep anything in;
    * ``ctx.now`` — the time of the event being handled;
    * ``ctx.position(symbol)``, ``ctx.positions``, ``ctx.cash``, ``ctx.equity`` —
      the strategy's own portfolio (as of its last fill, marked at the last
      prices it has seen);
    * ``ctx.pending(symbol)`` — the signed quantity still working in its
      orders the broker accepted (so ``position + pending`` is where it is
      heading; an order asked for in this event is not in it yet);
    * ``ctx.history(symbol, n)`` — up to the last ``n`` bars of ``symbol`` it has
      seen (never anything later than the current bar);
    * ``ctx.order(symbol, quantity, limit=..., stop=..., tag=...)`` — ask for an
      order; positive quantity buys, negative sells.  The kernel decides;
    * ``ctx.log.info(event, **fields)`` — structured logging.
    """

    __slots__ = (
        "_cash",
        "_history",
        "_intents",
        "_last",
        "_logs",
        "_pending",
        "_positions",
        "log",
        "name",
        "now",
        "params",
        "state",
    )

    def __init__(self, name: str, params: Mapping[str, Any]) -> None:
        self.name = name
        self.params: Mapping[str, Any] = MappingProxyType(dict(params))
        self.state: dict[str, Any] = {}
        self.now: datetime | None = None
        self._cash = ZERO
        self._positions: dict[str, Decimal] = {}
        self._pending: dict[str, Decimal] = {}
        self._last: dict[str, float] = {}
        self._history: dict[str, deque[Bar]] = {}
        self._intents: list[OrderIntent] = []
        self._logs: list[tuple[str, str, dict[str, str]]] = []
        self.log = _Log(self._logs)

    # -- the portfolio, as plain data ------------------------------------------------

    def position(self, symbol: str) -> Decimal:
        """Signed quantity held in ``symbol`` (0 if none)."""
        return self._positions.get(symbol, ZERO)

    def pending(self, symbol: str) -> Decimal:
        """Signed quantity of ``symbol`` in working orders (buys > 0, sells < 0; 0 if none)."""
        return self._pending.get(symbol, ZERO)

    @property
    def positions(self) -> Mapping[str, Decimal]:
        return MappingProxyType(self._positions)

    @property
    def cash(self) -> Decimal:
        return self._cash

    @property
    def equity(self) -> Decimal:
        """Cash plus positions marked at the last prices this strategy has seen."""
        total = self._cash
        for symbol, quantity in self._positions.items():
            total += quantity * Decimal(repr(self._last.get(symbol, 0.0)))
        return total

    def history(self, symbol: str, n: int = HISTORY_BARS) -> list[Bar]:
        """The last ``n`` (at most :data:`HISTORY_BARS`) bars of ``symbol``, oldest first."""
        bars = self._history.get(symbol)
        if not bars:
            return []
        return list(bars)[-n:] if n < len(bars) else list(bars)

    # -- asking for orders ---------------------------------------------------------------

    def order(
        self,
        symbol: str,
        quantity: int | float | Decimal | str,
        *,
        limit: int | float | Decimal | str | None = None,
        stop: int | float | Decimal | str | None = None,
        tag: str = "",
    ) -> None:
        """Ask for an order: ``quantity > 0`` buys, ``< 0`` sells; 0 is ignored."""
        if type(symbol) is not str or not 0 < len(symbol) <= 64 or not symbol.isprintable():
            raise ValueError(
                f"order symbol {str(symbol)[:70]!r} must be printable text of 1 to 64 characters"
            )
        try:
            qty = (
                quantity
                if isinstance(quantity, Decimal)
                else Decimal(quantity)  # an int is exact as it is
                if type(quantity) is int
                else Decimal(str(quantity))
            )
        except InvalidOperation:
            qty = Decimal("NaN")
        if isinstance(quantity, bool) or not qty.is_finite():
            raise ValueError(f"order quantity {quantity!r} is not a finite number")
        if qty == 0:
            return
        if len(self._intents) >= MAX_INTENTS_PER_EVENT:
            raise RuntimeError(f"more than {MAX_INTENTS_PER_EVENT} orders in one event")
        if limit is not None and stop is not None:
            raise ValueError("an order takes limit= or stop=, not both")
        # Validated here, field by field, as OrderIntent's converters and checks
        # would (the same errors), then built without running them a second time:
        # a Side, an exact positive Decimal quantity, a finite Decimal price > 0
        # for a limit or stop order, a str tag.  models._trusted_intent says why.
        if limit is not None:
            kind = OrderType.LIMIT
            limit_price = _decimal(limit)
            if limit_price <= 0:
                raise ValueError("a limit order needs a positive limit_price")
            stop_price = None
        elif stop is not None:
            kind = OrderType.STOP
            stop_price = _decimal(stop)
            if stop_price <= 0:
                raise ValueError("a stop order needs a positive stop_price")
            limit_price = None
        else:
            kind = OrderType.MARKET
            limit_price = stop_price = None
        self._intents.append(
            _trusted_intent(
                symbol,
                Side.BUY if qty > 0 else Side.SELL,
                qty.copy_abs(),  # exact: abs() would round to 28 digits
                kind,
                limit_price,
                stop_price,
                str(tag)[:64],
            )
        )

    # -- kernel side -----------------------------------------------------------------------

    def _apply_snapshot(self, snapshot: AccountSnapshot) -> None:
        self._cash = snapshot.cash
        self._positions = {s: q for s, q in snapshot.positions.items() if q}
        # The kernel's marks (a fill's bar at its open): ctx.equity values the
        # positions at the prices the account was just judged at.
        for symbol, price in snapshot.prices.items():
            self._last[symbol] = float(price)

    def _drain(self) -> tuple[list[OrderIntent], list[tuple[str, str, dict[str, str]]]]:
        self.log._close_event()
        intents, logs = list(self._intents), list(self._logs)
        self._intents.clear()
        self._logs.clear()
        return intents, logs


Hook = tuple[Callable[..., Any], tuple[str, ...]]


def _direct(
    functions: Mapping[str, Hook], hook: str, args: tuple[str, ...]
) -> Callable[..., Any] | None:
    """The strategy's implementation of ``hook`` as a plain positional call, or None."""
    found = functions.get(hook)
    if found is None:
        return None
    function, wanted = found
    if wanted == args:
        return function
    positions = [args.index(name) for name in wanted]
    return lambda *values: function(*(values[i] for i in positions))


class StrategyRunner:
    """Feeds events to one loaded strategy, in this process, and collects its answers.

    Each method returns the order intents the strategy asked for while
    handling the event; its log records are in :attr:`logs` until the caller
    takes them.  Anything strategy code raises — any ``BaseException``, but
    the operator's own Ctrl-C — becomes a :class:`StrategyError`, and the
    orders asked for in that event are dropped.
    """

    def __init__(
        self,
        name: str,
        filename: str,
        functions: Mapping[str, Hook],
        params: Mapping[str, Any],
    ) -> None:
        self.name = name
        self.filename = filename
        self.ctx = StrategyContext(name, params)
        self._on_start = _direct(functions, "on_start", ("ctx",))
        self._on_bar = _direct(functions, "on_bar", ("ctx", "bar"))
        self._on_fill = _direct(functions, "on_fill", ("ctx", "fill"))
        self._on_reject = _direct(functions, "on_reject", ("ctx", "intent", "reason"))
        self._on_stop = _direct(functions, "on_stop", ("ctx",))
        self.logs: list[tuple[str, str, dict[str, str]]] = []
        #: Hot path: hand the strategy one bar; returns ``None`` when it asked for nothing.
        self.bar = self._bar_handler()

    def output(self, text: str) -> None:
        """Where the strategy's ``print`` goes: its log records."""
        self.ctx.log._output(text)

    def _fail(self, hook: str, exc: BaseException) -> StrategyError:
        if isinstance(exc, KeyboardInterrupt) and operator_interrupt.pressed:
            raise exc  # the operator's Ctrl-C ends the run; it is not the strategy's
        self.ctx._intents.clear()  # orders asked for before the failure are dropped
        kind = MEMORY_LIMIT if isinstance(exc, MemoryError) else EXCEPTION
        name = _name_of(exc)
        try:
            text = f"raised {name}: {exc}"
        except BaseException:  # a hostile __str__
            text = f"raised {name}"
        return StrategyError(self.name, hook, text[:500], kind, self._traceback(exc))

    def _traceback(self, exc: BaseException) -> str | None:
        """The strategy's own frames of ``exc``'s traceback (never the kernel's)."""
        try:
            frames = [
                f for f in traceback.extract_tb(exc.__traceback__) if f.filename == self.filename
            ]
            if not frames:
                return None
            lines = ["Traceback (strategy frames only):\n", *traceback.format_list(frames)]
            lines.append(f"{_name_of(exc)}: {exc}\n")
            return "".join(lines)[-MAX_TRACEBACK:]
        except BaseException:
            return None

    def _collect(self) -> list[OrderIntent]:
        ctx = self.ctx
        if not (ctx._intents or ctx._logs or ctx.log._dropped):
            return []  # the usual answer to a fill: nothing asked, nothing logged
        intents, logs = ctx._drain()
        if logs:
            self.logs.extend(logs)
        return intents

    def take_logs(self) -> list[tuple[str, str, dict[str, str]]]:
        logs, self.logs = self.logs, []
        return logs

    def working(self, symbol: str, change: Decimal) -> None:
        """The kernel's note that ``symbol``'s working quantity changed by ``change``."""
        pending = self.ctx._pending
        value = pending.get(symbol, ZERO) + change
        if value:
            pending[symbol] = value
        else:
            pending.pop(symbol, None)

    def start(self, snapshot: AccountSnapshot) -> list[OrderIntent]:
        self.ctx._apply_snapshot(snapshot)
        if self._on_start is not None:
            try:
                self._on_start(self.ctx)
            except BaseException as exc:
                error = self._fail("on_start", exc)
                self._collect()
                raise error from None
        return self._collect()

    def _bar_handler(self) -> Callable[[Bar], list[OrderIntent] | None]:
        """:meth:`bar`, with everything it touches bound once (it runs for every bar)."""
        ctx = self.ctx
        on_bar = self._on_bar
        last = ctx._last
        histories = ctx._history
        intents = ctx._intents
        logs = ctx._logs
        collect = self._collect
        fail = self._fail

        def bar(bar: Bar) -> list[OrderIntent] | None:
            ctx.now = bar.ts
            symbol = bar.symbol
            last[symbol] = bar.close
            history = histories.get(symbol)
            if history is None:
                history = histories[symbol] = deque(maxlen=HISTORY_BARS)
            history.append(bar)
            if on_bar is not None:
                try:
                    on_bar(ctx, bar)
                except BaseException as exc:
                    error = fail("on_bar", exc)
                    collect()
                    raise error from None
            if intents or logs:
                return collect()
            return None

        return bar

    def fill(self, fill: Fill, snapshot: AccountSnapshot) -> list[OrderIntent]:
        self.ctx.now = fill.ts
        self.ctx._apply_snapshot(snapshot)
        if self._on_fill is not None:
            try:
                self._on_fill(self.ctx, fill)
            except BaseException as exc:
                error = self._fail("on_fill", exc)
                self._collect()
                raise error from None
        return self._collect()

    def reject(self, intent: OrderIntent, reason: str) -> list[OrderIntent]:
        if self._on_reject is not None:
            try:
                self._on_reject(self.ctx, intent, reason)
            except BaseException as exc:
                error = self._fail("on_reject", exc)
                self._collect()
                raise error from None
        return self._collect()

    def stop(self) -> list[OrderIntent]:
        """Call ``on_stop``; returns the orders it asked for, which are not executed."""
        if self._on_stop is not None:
            try:
                self._on_stop(self.ctx)
            except BaseException as exc:
                error = self._fail("on_stop", exc)
                self._collect()
                raise error from None
        return self._collect()
