"""Value types that cross the kernel: frozen, slotted, validated at construction.

Money and quantities in order intents, orders and fills are ``Decimal`` — never
binary floats.  Market data (``Bar``) carries observed prices as floats: they
are inputs, not ledger entries, and the engine converts a price to ``Decimal``
at the moment it becomes a fill.
"""

from __future__ import annotations

import enum
import math
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

__all__ = ["Bar", "Fill", "OrderIntent", "OrderType", "Side"]


def _finite_positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite positive number, got {value!r}")


def _aware(instance: Any, attribute: attrs.Attribute[Any], value: datetime) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{attribute.name} must be a timezone-aware datetime, got {value!r}")


def _decimal(value: object) -> Decimal:
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, (int, str)):
        result = Decimal(value)
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
    BUY = "buy"
    SELL = "sell"


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"


@attrs.frozen(slots=True)
class Bar:
    """One OHLCV bar for one symbol; ``ts`` is the bar's close time (UTC-aware)."""

    symbol: str = attrs.field(validator=attrs.validators.min_len(1))
    ts: datetime = attrs.field(validator=_aware)
    open: float = attrs.field(validator=_finite_positive)
    high: float = attrs.field(validator=_finite_positive)
    low: float = attrs.field(validator=_finite_positive)
    close: float = attrs.field(validator=_finite_positive)
    volume: float = 0.0

    def __attrs_post_init__(self) -> None:
        if not (self.low <= min(self.open, self.close) and max(self.open, self.close) <= self.high):
            raise ValueError(f"bar {self.symbol} {self.ts}: high/low do not bracket open/close")
        if not (math.isfinite(self.volume) and self.volume >= 0):
            raise ValueError(f"bar {self.symbol} {self.ts}: volume must be >= 0")


@attrs.frozen(slots=True)
class OrderIntent:
    """What a strategy asks for.  The kernel, risk checks and broker decide.

    ``quantity`` is signed by ``side``, always positive here; ``limit_price``
    is required for limit orders and ``stop_price`` for stop orders.
    """

    symbol: str = attrs.field(validator=attrs.validators.min_len(1))
    side: Side = attrs.field(converter=Side)
    quantity: Decimal = attrs.field(converter=_decimal)
    type: OrderType = attrs.field(default=OrderType.MARKET, converter=OrderType)
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
class Fill:
    """An execution reported by a broker, in exact decimals."""

    order_id: str
    symbol: str
    side: Side = attrs.field(converter=Side)
    quantity: Decimal = attrs.field(converter=_decimal)
    price: Decimal = attrs.field(converter=_decimal)
    commission: Decimal = attrs.field(converter=_decimal)
    ts: datetime = attrs.field(validator=_aware)

    def __attrs_post_init__(self) -> None:
        if self.quantity <= 0 or self.price <= 0 or self.commission < 0:
            raise ValueError(
                "a fill needs positive quantity and price and a non-negative commission"
            )
