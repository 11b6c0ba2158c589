"""The per-strategy ledger: exact accounting identities over any sequence of fills."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion._portfolio import Portfolio, aggregate_snapshot
from bastion.models import Fill, Side

T0 = datetime(2024, 1, 2, tzinfo=UTC)
SYMBOLS = ("AAA", "BBB")

prices = st.decimals(min_value="0.01", max_value="1000", places=2)
quantities = st.integers(min_value=1, max_value=500).map(Decimal)
commissions = st.decimals(min_value="0", max_value="5", places=2)
fills = st.lists(
    st.tuples(st.sampled_from(SYMBOLS), st.sampled_from(Side), quantities, prices, commissions),
    max_size=40,
)


def _fill(n: int, symbol: str, side: Side, qty: Decimal, price: Decimal, fee: Decimal) -> Fill:
    return Fill(
        order_id=f"o{n}",
        symbol=symbol,
        side=side,
        quantity=qty,
        price=price,
        commission=fee,
        ts=T0 + timedelta(days=n),
    )


@settings(max_examples=300, deadline=None)
@given(fills=fills, marks=st.tuples(prices, prices))
def test_equity_identity(fills, marks) -> None:  # type: ignore[no-untyped-def]
    """cash + positions at market == start + realised + unrealised - commissions, exactly."""
    start = Decimal("100000")
    pf = Portfolio("s", start)
    for n, spec in enumerate(fills):
        pf.apply(_fill(n, *spec))
    prices_now = dict(zip(SYMBOLS, marks, strict=True))
    assert pf.equity(prices_now) == (
        start + pf.realized + pf.unrealized(prices_now) - pf.commissions
    )


@settings(max_examples=300, deadline=None)
@given(fills=fills)
def test_no_quantity_from_nowhere(fills) -> None:  # type: ignore[no-untyped-def]
    """Each position equals the signed sum of its fills; nothing else changes it."""
    pf = Portfolio("s", Decimal(0))
    expected = dict.fromkeys(SYMBOLS, Decimal(0))
    for n, (symbol, side, qty, price, fee) in enumerate(fills):
        pf.apply(_fill(n, symbol, side, qty, price, fee))
        expected[symbol] += qty if side is Side.BUY else -qty
    for symbol in SYMBOLS:
        assert pf.quantity(symbol) == expected[symbol]
        assert pf.quantities_f.get(symbol, 0.0) == float(expected[symbol])


@settings(max_examples=200, deadline=None)
@given(fills=fills)
def test_cash_moves_only_by_trades_and_fees(fills) -> None:  # type: ignore[no-untyped-def]
    """Cash changes by exactly -(signed quantity x price) - commission per fill."""
    pf = Portfolio("s", Decimal(1000))
    cash = Decimal(1000)
    for n, (symbol, side, qty, price, fee) in enumerate(fills):
        pf.apply(_fill(n, symbol, side, qty, price, fee))
        cash -= (qty if side is Side.BUY else -qty) * price + fee
        assert pf.cash == cash


def test_round_trip_records_a_trade_net_of_fees() -> None:
    """Buy 10 at 100, sell 10 at 110 with 1 fee each side: one winning trade of +98."""
    pf = Portfolio("s", Decimal(10_000))
    pf.apply(_fill(0, "AAA", Side.BUY, Decimal(10), Decimal(100), Decimal(1)))
    pf.apply(_fill(1, "AAA", Side.SELL, Decimal(10), Decimal(110), Decimal(1)))
    assert pf.realized == Decimal(100)
    assert [t.pnl for t in pf.trades] == [Decimal(98)]
    assert pf.cash == Decimal(10_098)


def test_flip_closes_one_trade_and_opens_another() -> None:
    """Long 10 then sell 15: the long closes (a trade) and a short of 5 opens at the fill price."""
    pf = Portfolio("s", Decimal(10_000))
    pf.apply(_fill(0, "AAA", Side.BUY, Decimal(10), Decimal(100), Decimal(0)))
    pf.apply(_fill(1, "AAA", Side.SELL, Decimal(15), Decimal(90), Decimal(0)))
    assert pf.quantity("AAA") == Decimal(-5)
    assert [t.pnl for t in pf.trades] == [Decimal(-100)]
    assert pf.holdings["AAA"].avg_price == Decimal(90)


def test_short_position_equity() -> None:
    pf = Portfolio("s", Decimal(1000))
    pf.apply(_fill(0, "AAA", Side.SELL, Decimal(10), Decimal(50), Decimal(0)))
    snap = pf.snapshot({"AAA": 40.0})
    assert snap.short_value == Decimal(400) and snap.long_value == 0
    assert snap.equity == Decimal(1100)


def test_aggregate_adds_portfolios() -> None:
    """The aggregate view is the sum of the isolated portfolios."""
    a, b = Portfolio("a", Decimal(1000)), Portfolio("b", Decimal(2000))
    a.apply(_fill(0, "AAA", Side.BUY, Decimal(5), Decimal(10), Decimal(1)))
    b.apply(_fill(1, "AAA", Side.SELL, Decimal(2), Decimal(10), Decimal(1)))
    marks = {"AAA": 12.0}
    total = aggregate_snapshot([a.snapshot(marks), b.snapshot(marks)])
    assert total.positions == {"AAA": Decimal(3)}
    assert total.equity == a.equity(marks) + b.equity(marks)
    assert total.cash == a.cash + b.cash
