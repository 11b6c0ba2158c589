"""Value types that cross the kernel: frozen, slotted, validated at construction.

Money and quantities in order intents, orders and fills are ``Decimal`` — never
binary floats.  Market data (``Bar``) carries observed prices as floats: they
are inputs, not ledger entries, and the engine converts a price to ``Decimal``
at the moment it becomes a fill.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

__all__ = [
    "AccountSnapshot",
    "Bar",
    "Fill",
    "MarginPolicy",
    "Order",
    "OrderIntent",
    "OrderStatus",
    "OrderType",
    "Position",
    "Side",
]


def _finite_positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite positive number, got {value!r}")


def _aware(instance: Any, attribute: attrs.Attribute[Any], value: datetime) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{attribute.name} must be a timezone-aware datetime, got {value!r}")


def _utc(value: Any) -> Any:
    """An aware time as UTC: a bar's time is one instant whatever zone its source used,
    so a strategy sees the same ``bar.ts`` in the sandbox and in-process."""
    if isinstance(value, datetime) and value.tzinfo is not None and value.tzinfo is not UTC:
        try:
            return value.astimezone(UTC)
        except OverflowError:  # before year 1 or after 9999 in UTC: the validator says so
            raise ValueError(f"ts {value!r} is out of range in UTC") from None
    return value


def _decimal(value: object) -> Decimal:
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, (int, str)):
        try:
            result = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"expected a number, got {value!r}") from None
    elif isinstance(value, float):
        # Through str(): 0.1 becomes Decimal("0.1"), not 0.1000000000000000055...
        result = Decimal(repr(value))
    else:
        raise TypeError(f"expected a number, got {value!r}")
    if not result.is_finite():
        raise ValueError(f"expected a finite number, got {value!r}")
    return result


def _optional_decimal(value: object) -> Decimal | None:
    return None if value is None else _decimal(value)


class Side(enum.StrEnum):
    """``buy`` or ``sell``."""

    BUY = "buy"
    SELL = "sell"


class OrderType(enum.StrEnum):
    """``market``, ``limit`` or ``stop``."""

    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"


class OrderStatus(enum.StrEnum):
    """An order's life: stored as ``pending`` before any broker sees it."""

    PENDING = "pending"  # stored, not yet submitted
    ACCEPTED = "accepted"  # the broker is working it
    PARTIAL = "partial"  # partly filled, still working
    FILLED = "filled"
    REJECTED = "rejected"  # by a limit, a risk check or the broker; never sent or refused
    CANCELLED = "cancelled"


def _side(value: str) -> Side:
    """``Side(value)``, without the enum's lookup when ``value`` already is one."""
    return value if type(value) is Side else Side(value)


def _order_type(value: str) -> OrderType:
    """``OrderType(value)``, without the enum's lookup when ``value`` already is one."""
    return value if type(value) is OrderType else OrderType(value)


@attrs.frozen(slots=True)
class Bar:
    """One OHLCV bar for one symbol; ``ts`` is the bar's close time, in UTC (an aware
    time in another zone is converted).

    ``volume`` is ``None`` when the data does not report it (a CSV file without
    a volume column); the ``sim`` broker then does not limit fills by volume.
    """

    symbol: str = attrs.field(validator=attrs.validators.min_len(1))
    ts: datetime = attrs.field(converter=_utc, validator=_aware)
    open: float = attrs.field(validator=_finite_positive)
    high: float = attrs.field(validator=_finite_positive)
    low: float = attrs.field(validator=_finite_positive)
    close: float = attrs.field(validator=_finite_positive)
    volume: float | None = None

    def __attrs_post_init__(self) -> None:
        if not (self.low <= min(self.open, self.close) and max(self.open, self.close) <= self.high):
            raise ValueError(f"bar {self.symbol} {self.ts}: high/low do not bracket open/close")
        if self.volume is not None and not (math.isfinite(self.volume) and self.volume >= 0):
            raise ValueError(f"bar {self.symbol} {self.ts}: volume must be >= 0")


@attrs.frozen(slots=True)
class OrderIntent:
    """What a strategy asks for.  The kernel, risk checks and broker decide.

    ``quantity`` is signed by ``side``, always positive here; ``limit_price``
    is required for limit orders and ``stop_price`` for stop orders.
    """

    symbol: str = attrs.field(validator=attrs.validators.min_len(1))
    side: Side = attrs.field(converter=_side)
    quantity: Decimal = attrs.field(converter=_decimal)
    type: OrderType = attrs.field(default=OrderType.MARKET, converter=_order_type)
    limit_price: Decimal | None = attrs.field(default=None, converter=_optional_decimal)
    stop_price: Decimal | None = attrs.field(default=None, converter=_optional_decimal)
    tag: str = ""

    def __attrs_post_init__(self) -> None:
        if self.quantity <= 0:
            raise ValueError(f"order quantity must be positive, got {self.quantity}")
        if self.type is OrderType.LIMIT and (self.limit_price is None or self.limit_price <= 0):
            raise ValueError("a limit order needs a positive limit_price")
        if self.type is OrderType.STOP and (self.stop_price is None or self.stop_price <= 0):
            raise ValueError("a stop order needs a positive stop_price")


@attrs.frozen(slots=True)
class Order:
    """An intent the kernel accepted and will submit, with everything needed to trace it.

    ``client_order_id`` is stored before the order is submitted, so a restart
    can reconcile with the broker and never send an order twice.
    ``strategy_sha256`` and ``signer`` name the exact code that asked for it.
    """

    client_order_id: str
    strategy: str
    strategy_sha256: str
    signer: str | None
    intent: OrderIntent
    created: datetime = attrs.field(validator=_aware)
    liquidation: bool = False  # created by a margin call, not by the strategy

    @property
    def symbol(self) -> str:
        return self.intent.symbol

    @property
    def side(self) -> Side:
        return self.intent.side

    @property
    def quantity(self) -> Decimal:
        return self.intent.quantity

    @property
    def signed_quantity(self) -> Decimal:
        return self.intent.quantity if self.intent.side is Side.BUY else -self.intent.quantity


@attrs.frozen(slots=True)
class Fill:
    """An execution reported by a broker, in exact decimals.

    ``order_id`` is Bastion's client order id (a live broker carries it in the
    order's reference); ``exec_id`` is the broker's id of this execution (a
    report seen twice is booked once) and ``broker_order_id`` the broker's id of
    the order, when the broker has them.
    """

    order_id: str
    symbol: str
    side: Side = attrs.field(converter=_side)
    quantity: Decimal = attrs.field(converter=_decimal)
    price: Decimal = attrs.field(converter=_decimal)
    commission: Decimal = attrs.field(converter=_decimal)
    ts: datetime = attrs.field(validator=_aware)
    exec_id: str | None = None
    broker_order_id: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.quantity <= 0 or self.price <= 0 or self.commission < 0:
            raise ValueError(
                "a fill needs positive quantity and price and a non-negative commission"
            )

    @property
    def signed_quantity(self) -> Decimal:
        return self.quantity if self.side is Side.BUY else -self.quantity


# -- kernel-built values --------------------------------------------------------------
#
# Frozen attrs classes validate and convert every field in ``__init__`` (and set each
# one through ``object.__setattr__``): right at the trust boundary, where a strategy's,
# a worker's or a broker's values come in (plugins, the ``sim`` broker included, only
# ever use the validating constructors), about 2-3 µs per object on the order path.
# The kernel's own code also builds values out of parts it validated already (the
# fields of an intent ``ctx.order`` has just checked one by one; an order stamped on
# such an intent); those may be built with the functions below, which set the same
# slots without running the converters and validators a second time.  The caller
# owes exactly what the validators would have checked, stated at each call site; the
# result is an ordinary instance (equal to, and hashing like, the validated one).

_new = object.__new__


def _slot_setters(cls: type) -> tuple[Any, ...]:
    """The slots' own ``__set__`` for each attrs field of ``cls``, in field order."""
    return tuple(cls.__dict__[field.name].__set__ for field in attrs.fields(cls))


_INTENT_SLOTS = _slot_setters(OrderIntent)
_ORDER_SLOTS = _slot_setters(Order)


def _trusted_intent(
    symbol: str,
    side: Side,
    quantity: Decimal,
    type: OrderType,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
    tag: str,
) -> OrderIntent:
    """An :class:`OrderIntent` from fields already in their validated form (a
    non-empty symbol, a ``Side``, a finite positive ``Decimal`` quantity, an
    ``OrderType`` with its positive finite ``Decimal`` price, a ``str`` tag):
    kernel code only, never a strategy's or a worker's raw values."""
    intent = _new(OrderIntent)
    s_symbol, s_side, s_quantity, s_type, s_limit, s_stop, s_tag = _INTENT_SLOTS
    s_symbol(intent, symbol)
    s_side(intent, side)
    s_quantity(intent, quantity)
    s_type(intent, type)
    s_limit(intent, limit_price)
    s_stop(intent, stop_price)
    s_tag(intent, tag)
    return intent


def _trusted_order(
    client_order_id: str,
    strategy: str,
    strategy_sha256: str,
    signer: str | None,
    intent: OrderIntent,
    created: datetime,
    liquidation: bool = False,
) -> Order:
    """An :class:`Order` the kernel stamps on an intent it validated (or built),
    at an aware ``created`` time it holds (a bar's UTC ``ts``): ``Order``'s only
    check is that ``created`` is aware."""
    order = _new(Order)
    s_cid, s_strategy, s_sha, s_signer, s_intent, s_created, s_liquidation = _ORDER_SLOTS
    s_cid(order, client_order_id)
    s_strategy(order, strategy)
    s_sha(order, strategy_sha256)
    s_signer(order, signer)
    s_intent(order, intent)
    s_created(order, created)
    s_liquidation(order, liquidation)
    return order


@attrs.frozen(slots=True)
class Position:
    """A holding in one symbol: signed quantity, average entry price, realised P&L so far,
    and (at the end of a run) ``mark``, the last price it was valued at."""

    symbol: str
    quantity: Decimal
    avg_price: Decimal
    realized: Decimal
    mark: Decimal | None = None

    @property
    def unrealized(self) -> Decimal | None:
        """``quantity * (mark - avg_price)``, when there is a mark."""
        return None if self.mark is None else self.quantity * (self.mark - self.avg_price)


@attrs.frozen(slots=True)
class AccountSnapshot:
    """One strategy's portfolio as plain data (what a broker or a strategy may see).

    ``positions`` maps symbol to signed quantity; ``prices`` to the last price
    the kernel has seen.  ``long_value``/``short_value`` are market values
    (both >= 0) at those prices.
    """

    cash: Decimal
    equity: Decimal
    positions: Mapping[str, Decimal]
    prices: Mapping[str, Decimal]
    long_value: Decimal
    short_value: Decimal


def _maintenance(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (isinstance(value, (int, float)) and 0 < value < 1):
        raise ValueError(f"maintenance must be a fraction in (0, 1), got {value!r}")


@attrs.frozen(slots=True)
class MarginPolicy:
    """When a strategy's account is margin-called, and how it is liquidated.

    A broker that wants the kernel to enforce maintenance margin offers one as
    its ``margin`` attribute (the simulator does); a live broker that liquidates
    by itself offers ``None``.  The engine asks what :meth:`breached` answers
    (inlined on its bar path, with float mirrors of the ledger) at the close of
    every bar whose price moved and after every fill; on a breach it cancels the
    strategy's working orders and records and submits :meth:`liquidation`'s
    orders as liquidations (never refused for buying power), replacing them by
    the liquidation of what is then held if another fill changes it first.
    """

    #: equity below this fraction of gross exposure (long + short market value)
    maintenance: float = attrs.field(validator=_maintenance)

    def breached(self, equity: float, gross: float) -> bool:
        """Whether ``equity`` is below maintenance for ``gross`` exposure (a flat
        account, however poor, is never margin-called: there is nothing to sell)."""
        return gross > 0 and equity < self.maintenance * gross

    def liquidation(self, account: AccountSnapshot) -> tuple[OrderIntent, ...]:
        """Market orders that close every non-zero position of ``account``, by symbol,
        tagged ``margin-call``."""
        return tuple(
            OrderIntent(
                symbol=symbol,
                side=Side.SELL if quantity > 0 else Side.BUY,
                quantity=abs(quantity),
                tag="margin-call",
            )
            for symbol, quantity in sorted(account.positions.items())
            if quantity
        )
