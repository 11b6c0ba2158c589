"""The ledger (core/_portfolio.py) against an independent reference.

The reference below is average-cost accounting written from scratch over plain
``Fraction``s and dicts; it shares no code with ``bastion._portfolio`` and knows
nothing of its cost basis or rounding.  Hypothesis drives both with random fill
sequences (opens, adds, partial closes, full closes, flips, commissions, fractional
shares) and compares them after every fill.

The one place the ledger rounds is the cost basis a partial close removes (to 1e-8,
``COST_STEP``); every comparison that can see it allows 1e-8 per partial close so
far, and everything else must be equal to the last digit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion._portfolio import Portfolio
from bastion.models import Fill, Side

T0 = datetime(2024, 1, 2, tzinfo=UTC)
CASH = Decimal("100000")
STEP = Fraction(1, 10**8)


@dataclass
class Reference:
    """Average-cost accounting, from scratch: a position is (quantity, average price);
    adding moves the average, reducing realises (price - average) per unit closed,
    crossing zero closes the round trip and opens the rest at the fill's price."""

    cash: Fraction
    quantity: dict[str, Fraction] = field(default_factory=dict)
    average: dict[str, Fraction] = field(default_factory=dict)
    realized: Fraction = Fraction(0)
    commissions: Fraction = Fraction(0)
    open_trade: dict[str, Fraction] = field(default_factory=dict)  # P&L net of fees
    closed_trades: list[Fraction] = field(default_factory=list)
    partial_closes: int = 0

    def fill(self, symbol: str, buy: bool, qty: Fraction, price: Fraction, fee: Fraction) -> None:
        delta = qty if buy else -qty
        self.cash -= delta * price + fee
        self.commissions += fee
        held = self.quantity.get(symbol, Fraction(0))
        avg = self.average.get(symbol, Fraction(0))
        if held == 0:
            self.open_trade[symbol] = Fraction(0)
        self.open_trade[symbol] -= fee
        after = held + delta
        if held == 0 or (held > 0) == (delta > 0):
            avg = (held * avg + delta * price) / after
        else:
            closed = min(abs(held), abs(delta))
            gain = closed * (price - avg) * (1 if held > 0 else -1)
            self.realized += gain
            self.open_trade[symbol] += gain
            if after == 0 or (after > 0) != (held > 0):
                self.closed_trades.append(self.open_trade[symbol])
                self.open_trade[symbol] = Fraction(0)
                avg = price if after else Fraction(0)
            else:
                self.partial_closes += 1
        self.quantity[symbol] = after
        self.average[symbol] = avg

    def equity(self, marks: dict[str, Fraction]) -> Fraction:
        return self.cash + sum(q * marks[s] for s, q in self.quantity.items())


prices = st.one_of(
    st.decimals(min_value="0.01", max_value="5000", places=4),
    # Slippage makes fill prices with many decimals: a cost basis beyond the 1e-8
    # step must still be removed whole by a full close.
    st.decimals(min_value="0.01", max_value="5000", places=9),
)
quantities = st.one_of(
    st.integers(min_value=1, max_value=1000).map(Decimal),
    st.decimals(min_value="0.001", max_value="50", places=3),  # fractional shares
)
commissions = st.decimals(min_value="0", max_value="9.99", places=2)
steps = st.lists(
    st.tuples(st.sampled_from(("AAA", "BBB")), st.booleans(), quantities, prices, commissions),
    min_size=1,
    max_size=60,
)


def _fill(n: int, symbol: str, buy: bool, qty: Decimal, price: Decimal, fee: Decimal) -> Fill:
    side = Side.BUY if buy else Side.SELL
    return Fill(f"o{n}", symbol, side, qty, price, fee, T0 + timedelta(minutes=n))


def _close_all(ledger: Portfolio, n: int, price: Decimal) -> list[Fill]:
    out = []
    for symbol in sorted(ledger.holdings):
        held = ledger.quantity(symbol)
        if held:
            out.append(_fill(n + len(out), symbol, held < 0, abs(held), price, Decimal("1")))
    return out


@settings(max_examples=400, deadline=None)
@given(steps=steps, marks=st.tuples(prices, prices), exit_price=prices)
def test_the_ledger_equals_the_reference_after_every_fill(
    steps: list[tuple[str, bool, Decimal, Decimal, Decimal]],
    marks: tuple[Decimal, Decimal],
    exit_price: Decimal,
) -> None:
    """Cash and quantities are equal exactly; realised P&L and average prices within
    1e-8 per partial close; equity at any marks is equal; a reducing fill that does
    not cross zero leaves the average price where it was; once everything is closed,
    the round trips' P&L adds up to realised P&L minus every commission."""
    ledger = Portfolio("s", CASH)
    ref = Reference(Fraction(CASH))
    mark = dict(zip(("AAA", "BBB"), marks, strict=True))
    mark["CCC"] = Decimal("7.5")  # a symbol not held: only an order being checked needs it
    fills = [_fill(n, *step) for n, step in enumerate(steps)]
    for n, fill in enumerate(fills + _close_all_after(fills, exit_price)):
        before = ledger.holdings[fill.symbol].avg_price if fill.symbol in ledger.holdings else None
        held = ledger.quantity(fill.symbol)
        ledger.apply(fill)
        ref.fill(
            fill.symbol,
            fill.side is Side.BUY,
            Fraction(fill.quantity),
            Fraction(fill.price),
            Fraction(fill.commission),
        )
        slack = ref.partial_closes * STEP
        assert Fraction(ledger.cash) == ref.cash, n
        assert Fraction(ledger.commissions) == ref.commissions
        assert abs(Fraction(ledger.realized) - ref.realized) <= slack, n
        for symbol, quantity in ref.quantity.items():
            assert Fraction(ledger.quantity(symbol)) == quantity
            if quantity:
                avg = Fraction(ledger.holdings[symbol].avg_price)
                assert abs(avg - ref.average[symbol]) <= slack / abs(quantity) + STEP, n
        marks_f = {s: Fraction(p) for s, p in mark.items()}
        assert Fraction(ledger.equity(mark)) == ref.equity(marks_f)
        snap = ledger.snapshot(mark, also=("CCC",) if n % 2 else ())
        assert Fraction(snap.equity) == ref.equity(marks_f)
        assert Fraction(snap.long_value) == sum(
            (q * marks_f[s] for s, q in ref.quantity.items() if q > 0), Fraction(0)
        )
        assert Fraction(snap.short_value) == sum(
            (-q * marks_f[s] for s, q in ref.quantity.items() if q < 0), Fraction(0)
        )
        assert {s: Fraction(q) for s, q in snap.positions.items()} == {
            s: q for s, q in ref.quantity.items() if q
        }
        after = ledger.quantity(fill.symbol)
        reducing = held and after and (held > 0) == (after > 0) and abs(after) < abs(held)
        if reducing:
            assert before is not None
            assert abs(Fraction(ledger.holdings[fill.symbol].avg_price) - Fraction(before)) <= (
                STEP / abs(Fraction(after)) + STEP
            )
    assert all(q == 0 for q in ref.quantity.values())
    assert sum(ref.closed_trades, Fraction(0)) == ref.realized - ref.commissions
    ledger_trades = sum((Fraction(t.pnl) for t in ledger.trades), Fraction(0))
    assert ledger_trades == Fraction(ledger.realized - ledger.commissions)
    assert len(ledger.trades) == len(ref.closed_trades) == ledger.round_trips
    assert ledger.winning_trips == sum(1 for t in ledger.trades if t.pnl > 0)
    assert abs(ledger_trades - sum(ref.closed_trades, Fraction(0))) <= ref.partial_closes * STEP


def _close_all_after(fills: list[Fill], price: Decimal) -> list[Fill]:
    """Fills that flatten what ``fills`` leave open, at ``price``."""
    probe = Portfolio("probe", CASH)
    for fill in fills:
        probe.apply(fill)
    return _close_all(probe, len(fills), price)


def test_a_partial_close_realises_only_the_part_closed() -> None:
    """Buy 10 at 100, sell 5 at 110: 50 realised (not 550), 5 left at an average of
    100, cash 100000 - 1000 + 550."""
    ledger = Portfolio("s", CASH)
    ledger.apply(_fill(0, "AAA", True, Decimal(10), Decimal(100), Decimal(0)))
    ledger.apply(_fill(1, "AAA", False, Decimal(5), Decimal(110), Decimal(0)))
    assert ledger.realized == 50
    assert ledger.quantity("AAA") == 5 and ledger.holdings["AAA"].avg_price == 100
    assert ledger.cash == CASH - 1000 + 550
    assert ledger.trades == []  # still open: no round trip yet


def test_reducing_a_long_to_a_fraction_of_a_share_is_not_a_flip() -> None:
    """Long 10, sell 9.5: still long 0.5 at the same average price, no trade closed; the
    snapshot counts the half share as long, and marks a symbol asked about."""
    ledger = Portfolio("s", CASH)
    ledger.apply(_fill(0, "AAA", True, Decimal(10), Decimal(100), Decimal(0)))
    ledger.apply(_fill(1, "AAA", False, Decimal("9.5"), Decimal(110), Decimal(0)))
    assert ledger.quantity("AAA") == Decimal("0.5")
    assert ledger.holdings["AAA"].avg_price == 100 and ledger.trades == []
    snap = ledger.snapshot({"AAA": Decimal(120), "BBB": Decimal(5)}, also=("BBB",))
    assert (snap.long_value, snap.short_value) == (Decimal(60), Decimal(0))
    assert snap.prices == {"AAA": Decimal(120), "BBB": Decimal(5)}


def test_a_full_close_removes_the_whole_cost_basis_however_many_decimals() -> None:
    """A full close realises against the exact cost, not one rounded to 1e-8."""
    ledger = Portfolio("s", CASH)
    ledger.apply(_fill(0, "AAA", True, Decimal(3), Decimal("1.123456789"), Decimal(0)))
    ledger.apply(_fill(1, "AAA", False, Decimal(3), Decimal(2), Decimal(0)))
    assert ledger.realized == Decimal("2.629629633")
    assert ledger.holdings["AAA"].cost == 0


def test_a_flip_closes_the_trade_and_opens_the_rest_at_the_fill_price() -> None:
    """Long 10 at 100, sell 15 at 90: the round trip loses 100 (and the commissions of
    both fills), and a short of 5 is open at 90."""
    ledger = Portfolio("s", CASH)
    ledger.apply(_fill(0, "AAA", True, Decimal(10), Decimal(100), Decimal(1)))
    ledger.apply(_fill(1, "AAA", False, Decimal(15), Decimal(90), Decimal(2)))
    assert ledger.realized == -100
    assert [t.pnl for t in ledger.trades] == [Decimal(-103)]
    assert ledger.quantity("AAA") == -5 and ledger.holdings["AAA"].avg_price == 90
    assert ledger.cash == CASH - 1000 - 1 + 1350 - 2


def test_a_flip_to_exactly_one_share_keeps_its_trade_open_time() -> None:
    """Long 10, sell 11: a short of exactly one share opens at the flip; buying it back
    closes a second trade that began at the flip (and the same for a long of one)."""
    ledger = Portfolio("s", CASH)
    fee = Decimal(0)
    ledger.apply(_fill(0, "AAA", True, Decimal(10), Decimal(100), fee))
    ledger.apply(_fill(1, "AAA", False, Decimal(11), Decimal(100), fee))
    ledger.apply(_fill(2, "AAA", True, Decimal(2), Decimal(100), fee))
    ledger.apply(_fill(3, "AAA", False, Decimal(1), Decimal(100), fee))
    assert [(t.opened, t.closed) for t in ledger.trades] == [
        (T0, T0 + timedelta(minutes=1)),
        (T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)),
        (T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)),
    ]


def test_positions_list_what_is_held_and_what_was_realised() -> None:
    """The stored positions show an open holding with nothing realised yet, and a
    closed-out symbol with its realised P&L."""
    ledger = Portfolio("s", CASH)
    ledger.apply(_fill(0, "AAA", True, Decimal(10), Decimal(100), Decimal(0)))
    ledger.apply(_fill(1, "BBB", True, Decimal(1), Decimal(50), Decimal(0)))
    ledger.apply(_fill(2, "BBB", False, Decimal(1), Decimal(60), Decimal(0)))
    assert [(p.symbol, p.quantity, p.realized) for p in ledger.positions()] == [
        ("AAA", 10, 0),
        ("BBB", 0, 10),
    ]


def test_a_snapshot_asked_about_a_symbol_without_a_price_leaves_it_out() -> None:
    """An order's symbol with no price yet is simply not marked (the broker then says
    it cannot check buying power); nothing raises."""
    ledger = Portfolio("s", CASH)
    snap = ledger.snapshot({}, also=("ZZZ",))
    assert snap.prices == {} and snap.equity == CASH
