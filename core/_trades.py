"""Closed round trips, rebuilt from a run's stored fills, for reports.

A round trip in one symbol runs from flat to flat, or to the fill that flips the
position (the flip's remainder opens the next trip at that fill's price).  Its P&L
is what the trip's exits brought in against what its entries cost, less every
commission of its fills (a flip's commission belongs to the trip it closes): the
same figure the ledger books as realised, computed here from the fills alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

import attrs

from .models import Fill

__all__ = ["RoundTrip", "round_trips"]

ZERO = Decimal(0)


@attrs.frozen
class RoundTrip:
    """One closed round trip: ``quantity`` is the largest position held during it,
    ``entry_price`` and ``exit_price`` the average prices of the fills that opened or
    added to it and of those that reduced or closed it; ``pnl`` is net of
    ``commission``."""

    symbol: str
    side: str  # "long" or "short"
    opened: datetime
    closed: datetime
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal
    pnl: Decimal
    commission: Decimal

    @property
    def holding(self) -> timedelta:
        return self.closed - self.opened

    @property
    def return_fraction(self) -> Decimal:
        """P&L over the capital the trip's largest position tied up at its entry price."""
        basis = self.entry_price * self.quantity
        return self.pnl / basis if basis else ZERO


@attrs.define
class _Open:
    opened: datetime
    long: bool
    position: Decimal = ZERO  # signed
    largest: Decimal = ZERO
    entered: Decimal = ZERO  # quantity
    entry_value: Decimal = ZERO
    exited: Decimal = ZERO
    exit_value: Decimal = ZERO
    commission: Decimal = ZERO

    def enter(self, quantity: Decimal, price: Decimal) -> None:
        self.entered += quantity
        self.entry_value += quantity * price
        self.position += quantity if self.long else -quantity
        self.largest = max(self.largest, abs(self.position))

    def close(self, symbol: str, at: datetime) -> RoundTrip:
        gross = self.exit_value - self.entry_value
        return RoundTrip(
            symbol=symbol,
            side="long" if self.long else "short",
            opened=self.opened,
            closed=at,
            quantity=self.largest,
            entry_price=self.entry_value / self.entered,
            exit_price=self.exit_value / self.exited,
            pnl=(gross if self.long else -gross) - self.commission,
            commission=self.commission,
        )


def round_trips(fills: Iterable[Fill]) -> list[RoundTrip]:
    """Every round trip ``fills`` (in booking order) close, in the order they close.
    Trips still open at the end are left out (the run's positions show them)."""
    trips: list[RoundTrip] = []
    open_: dict[str, _Open] = {}
    for fill in fills:
        quantity, price = fill.quantity, fill.price
        buying = fill.signed_quantity > 0
        trip = open_.get(fill.symbol)
        if trip is None:
            trip = open_[fill.symbol] = _Open(opened=fill.ts, long=buying)
        trip.commission += fill.commission
        if buying == trip.long:
            trip.enter(quantity, price)
            continue
        closing = min(quantity, abs(trip.position))
        trip.exited += closing
        trip.exit_value += closing * price
        trip.position += closing if not trip.long else -closing
        if trip.position:
            continue
        trips.append(trip.close(fill.symbol, fill.ts))
        del open_[fill.symbol]
        rest = quantity - closing
        if rest:
            flipped = open_[fill.symbol] = _Open(opened=fill.ts, long=buying)
            flipped.enter(rest, price)
    return trips
