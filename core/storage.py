"""Row encodings for storage plugins: how the built-in stores write and read values.

The ``sqlite`` and ``postgresql`` stores keep money and quantities as exact decimal
text and times as ISO-8601 UTC text (``bastion.audit.format_ts``); these helpers are
that encoding, and the conversions from stored rows back to model objects, so every
store reads back exactly what it wrote and hands the kernel's audit code the same
values.

Public API (see docs/reference/api.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from .interfaces import StoredOrder
from .models import Fill, Order, OrderIntent, OrderStatus, OrderType, Side

__all__ = [
    "FILL_COLUMNS",
    "ORDER_STATUSES",
    "STORED_ORDER_COLUMNS",
    "check_order_status",
    "decimal_text",
    "duplicate_order",
    "fill_from_row",
    "optional_decimal_text",
    "parse_ts",
    "pid_alive",
    "stored_order_from_row",
]

#: The columns :func:`fill_from_row` takes, in order.
FILL_COLUMNS: Final = (
    "client_order_id, symbol, side, quantity, price, commission, ts, exec_id, broker_order_id"
)
#: The columns :func:`stored_order_from_row` takes, in order.
STORED_ORDER_COLUMNS: Final = (
    "client_order_id, strategy, strategy_sha256, signer, symbol, side, quantity, type, "
    "limit_price, stop_price, tag, created, liquidation, status, filled"
)
ORDER_STATUSES: Final = frozenset(s.value for s in OrderStatus)


def parse_ts(text: str) -> datetime:
    """A stored time (ISO-8601 text) as an aware UTC datetime."""
    return datetime.fromisoformat(text).astimezone(UTC)


def decimal_text(value: Decimal) -> str:
    """Exact decimal text in plain notation (``0.00000001``, not ``1E-8``); zeros kept."""
    return format(value if type(value) is Decimal else Decimal(value), "f")


def optional_decimal_text(value: Decimal | None) -> str | None:
    """:func:`decimal_text`, or ``None`` for ``None`` (a market order's limit price)."""
    return None if value is None else decimal_text(value)


def fill_from_row(row: Sequence[Any]) -> Fill:
    """A stored fill (the columns of :data:`FILL_COLUMNS`) as the exact Fill it was."""
    cid, symbol, side, quantity, price, commission, ts, exec_id, broker_order_id = row
    return Fill(
        order_id=cid,
        symbol=symbol,
        side=Side(side),
        quantity=Decimal(quantity),
        price=Decimal(price),
        commission=Decimal(commission),
        ts=parse_ts(ts),
        exec_id=exec_id,
        broker_order_id=broker_order_id,
    )


def stored_order_from_row(run_id: str, row: Sequence[Any]) -> StoredOrder:
    """A stored order (the columns of :data:`STORED_ORDER_COLUMNS`) with its status."""
    (cid, strategy, sha, signer, symbol, side, quantity, kind, limit, stop, tag, created,
     liquidation, status, filled) = row  # fmt: skip
    intent = OrderIntent(
        symbol=symbol,
        side=Side(side),
        quantity=Decimal(quantity),
        type=OrderType(kind),
        limit_price=None if limit is None else Decimal(limit),
        stop_price=None if stop is None else Decimal(stop),
        tag=tag or "",
    )
    order = Order(cid, strategy, sha, signer, intent, parse_ts(created), bool(liquidation))
    return StoredOrder(run_id, order, str(status), Decimal(filled))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a run's process, say)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to someone else
        return True
    return True


def duplicate_order(client_order_id: str) -> ValueError:
    """The error for a client order id that is already stored."""
    return ValueError(
        f"client order id {client_order_id!r} is already stored; an order id is never reused"
    )


def check_order_status(status: str) -> None:
    """Refuse a status that is not an :class:`bastion.models.OrderStatus` value."""
    if status not in ORDER_STATUSES:
        raise ValueError(f"order status must be one of {sorted(ORDER_STATUSES)}, not {status!r}")
