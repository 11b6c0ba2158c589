"""One isolated portfolio per strategy (exact Decimal ledger) and an aggregate view.

Average-cost accounting.  For any sequence of fills the ledger satisfies::

    cash + sum(quantity * price) ==
        starting cash + realised P&L + unrealised P&L - commissions

where unrealised P&L is ``sum(quantity * (price - avg_price))``.  Round trips
(flat -> position -> flat) are counted as trades for the win rate, and kept as
:class:`TradeRecord` s unless the portfolio is told not to (the engine counts them
only, so that a run's memory does not grow with its round trips).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal

import attrs

from ._metrics import TradeRecord
from .models import AccountSnapshot, Fill, Position

__all__ = ["Portfolio", "aggregate_snapshot"]

ZERO = Decimal(0)
# The part of a cost basis a partial close removes is rounded to this step; every
# other ledger operation is exact, so sums of ledger values never round.
COST_STEP = Decimal("1e-8")


def _price(value: float | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(repr(value))


@attrs.define
class _Holding:
    quantity: Decimal = ZERO
    cost: Decimal = ZERO  # signed cost basis of the open position (exact)
    realized: Decimal = ZERO
    trade_opened: datetime | None = None
    trade_pnl: Decimal = ZERO  # realised P&L minus commissions of the open round trip

    @property
    def avg_price(self) -> Decimal:
        return self.cost / self.quantity if self.quantity else ZERO


class Portfolio:
    """The ledger of one strategy.  Only :meth:`apply` changes it.

    The open position's cost basis is kept exactly; the part of it a reducing
    fill removes is ``cost * closed / |quantity|`` and what remains is the exact
    difference, so realised + unrealised P&L always add up to the cash and
    market value, to the last digit.
    """

    def __init__(self, name: str, cash: Decimal, *, keep_trades: bool = True) -> None:
        self.name = name
        self.starting_cash = cash
        self.cash = cash
        self.commissions = ZERO
        self.realized = ZERO
        self.holdings: dict[str, _Holding] = {}
        self.trades: list[TradeRecord] = []  # stays empty without keep_trades
        self.keep_trades = keep_trades
        self.round_trips = 0  # closed round trips, kept or not
        self.winning_trips = 0  # those with pnl > 0
        # Float mirrors of the ledger for fast marking on the bar path.
        self.quantities_f: dict[str, float] = {}
        self.cash_f = float(cash)

    def quantity(self, symbol: str) -> Decimal:
        holding = self.holdings.get(symbol)
        return holding.quantity if holding else ZERO

    def apply(self, fill: Fill) -> None:
        """Book one fill: cash, position, cost basis, realised P&L, commissions, trades."""
        signed = fill.signed_quantity
        price = fill.price
        holding = self.holdings.setdefault(fill.symbol, _Holding())
        self.cash -= signed * price + fill.commission
        self.commissions += fill.commission
        old = holding.quantity
        new = old + signed
        if old == 0:
            holding.trade_opened = fill.ts
            holding.trade_pnl = ZERO
        holding.trade_pnl -= fill.commission
        if old == 0 or (old > 0) == (signed > 0):
            holding.cost += signed * price  # opening or adding
        else:
            closed = min(abs(old), abs(signed))
            removed = (
                holding.cost
                if closed == abs(old)
                else (holding.cost * closed / abs(old)).quantize(COST_STEP)
            )
            reduction = closed if old < 0 else -closed  # signed quantity that reduces
            pnl = -reduction * price - removed
            holding.cost -= removed
            holding.realized += pnl
            self.realized += pnl
            holding.trade_pnl += pnl
            if new == 0 or (new > 0) != (old > 0):
                assert holding.trade_opened is not None
                self.round_trips += 1
                if holding.trade_pnl > 0:
                    self.winning_trips += 1
                if self.keep_trades:
                    self.trades.append(
                        TradeRecord(
                            symbol=fill.symbol,
                            opened=holding.trade_opened,
                            closed=fill.ts,
                            pnl=holding.trade_pnl,
                        )
                    )
                holding.trade_opened = fill.ts if new != 0 else None
                holding.trade_pnl = ZERO
                holding.cost = new * price  # a flip opens the remainder at this price
        holding.quantity = new
        if new:
            self.quantities_f[fill.symbol] = float(new)
        else:
            self.quantities_f.pop(fill.symbol, None)
        self.cash_f = float(self.cash)

    def forget_trades(self) -> None:
        """Start counting round trips afresh (those before are not this run's)."""
        self.trades.clear()
        self.round_trips = self.winning_trips = 0

    # -- views ---------------------------------------------------------------------------

    def equity(self, prices: Mapping[str, float | Decimal]) -> Decimal:
        """Cash plus every position marked at ``prices`` (exact)."""
        total = self.cash
        for symbol, holding in self.holdings.items():
            if holding.quantity:
                total += holding.quantity * _price(prices[symbol])
        return total

    def unrealized(self, prices: Mapping[str, float | Decimal]) -> Decimal:
        return sum(
            (
                h.quantity * _price(prices[s]) - h.cost
                for s, h in self.holdings.items()
                if h.quantity
            ),
            ZERO,
        )

    def positions(self) -> list[Position]:
        return [
            Position(symbol=s, quantity=h.quantity, avg_price=h.avg_price, realized=h.realized)
            for s, h in sorted(self.holdings.items())
            if h.quantity or h.realized
        ]

    def snapshot(
        self, prices: Mapping[str, float | Decimal], also: Iterable[str] = ()
    ) -> AccountSnapshot:
        """The portfolio as plain data; ``prices`` covers held symbols and ``also``
        (e.g. the symbol of an order being checked), where a price is known."""
        marks: dict[str, Decimal] = {}
        positions: dict[str, Decimal] = {}
        long_value = short_value = ZERO
        for symbol, holding in self.holdings.items():
            quantity = holding.quantity
            if quantity:
                mark = marks[symbol] = _price(prices[symbol])
                positions[symbol] = quantity
                if quantity > 0:
                    long_value += quantity * mark
                else:
                    short_value += -quantity * mark
        for symbol in also:
            if symbol in prices and symbol not in marks:
                marks[symbol] = _price(prices[symbol])
        return AccountSnapshot(
            cash=self.cash,
            equity=self.cash + long_value - short_value,
            positions=positions,
            prices=marks,
            long_value=long_value,
            short_value=short_value,
        )


def aggregate_snapshot(snapshots: Iterable[AccountSnapshot]) -> AccountSnapshot:
    """Every strategy's portfolio added up (the account as a broker would see it)."""
    cash = equity = long_value = short_value = ZERO
    positions: dict[str, Decimal] = {}
    prices: dict[str, Decimal] = {}
    for snap in snapshots:
        cash += snap.cash
        equity += snap.equity
        long_value += snap.long_value
        short_value += snap.short_value
        for symbol, quantity in snap.positions.items():
            positions[symbol] = positions.get(symbol, ZERO) + quantity
        prices.update(snap.prices)
    return AccountSnapshot(
        cash=cash,
        equity=equity,
        positions={s: q for s, q in positions.items() if q},
        prices=prices,
        long_value=long_value,
        short_value=short_value,
    )
