"""Round trips rebuilt from fills (bastion._trades), for reports."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from hypothesis import given, settings

from bastion._portfolio import Portfolio
from bastion._trades import round_trips

from .test_ledger_oracle import CASH, _close_all_after, _fill, steps


def test_a_long_trip_with_adds_and_partial_exits() -> None:
    """Buy 10 at 100, buy 10 at 110, sell 5 at 120, sell 15 at 90: one long trip of 20
    at an average entry of 105 and exit of 97.5: -150 gross, less 4 of commissions."""
    fee = Decimal(1)
    fills = [
        _fill(0, "AAA", True, Decimal(10), Decimal(100), fee),
        _fill(1, "AAA", True, Decimal(10), Decimal(110), fee),
        _fill(2, "AAA", False, Decimal(5), Decimal(120), fee),
        _fill(3, "AAA", False, Decimal(15), Decimal(90), fee),
    ]
    [trip] = round_trips(fills)
    assert (trip.side, trip.quantity, trip.entry_price, trip.exit_price) == (
        "long",
        20,
        105,
        Decimal("97.5"),
    )
    assert (trip.pnl, trip.commission) == (Decimal(-154), Decimal(4))
    assert trip.holding == timedelta(minutes=3)
    assert trip.return_fraction == Decimal(-154) / 2100


def test_a_flip_closes_one_trip_and_opens_a_short() -> None:
    """Long 10, sell 15: the long trip closes (the flip's commission is its), and a short
    of 5 opened at the flip's price closes when bought back."""
    fee = Decimal(2)
    fills = [
        _fill(0, "AAA", True, Decimal(10), Decimal(100), fee),
        _fill(1, "AAA", False, Decimal(15), Decimal(90), fee),
        _fill(2, "AAA", True, Decimal(5), Decimal(80), fee),
    ]
    long_trip, short_trip = round_trips(fills)
    assert (long_trip.side, long_trip.pnl) == ("long", Decimal(-104))
    assert (short_trip.side, short_trip.quantity, short_trip.entry_price) == ("short", 5, 90)
    assert short_trip.pnl == Decimal(48)


@settings(max_examples=300, deadline=None)
@given(steps=steps)
def test_round_trips_agree_with_the_ledgers_trades(
    steps: list[tuple[str, bool, Decimal, Decimal, Decimal]],
) -> None:
    """Over any fills, closed at the end, the trips rebuilt from the fills are the
    ledger's trades: same symbols, times and P&L to the last digit."""
    fills = [_fill(n, *step) for n, step in enumerate(steps)]
    fills += _close_all_after(fills, Decimal("123.45"))
    ledger = Portfolio("s", CASH)
    for fill in fills:
        ledger.apply(fill)
    trips = round_trips(fills)
    assert [(t.symbol, t.opened, t.closed, t.pnl) for t in trips] == [
        (t.symbol, t.opened, t.closed, t.pnl) for t in ledger.trades
    ]
    assert sum((t.pnl for t in trips), Decimal(0)) == ledger.realized - ledger.commissions
