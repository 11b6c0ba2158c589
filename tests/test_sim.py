"""The built-in ``sim`` broker: options, no look-ahead, fill prices, costs, capacity, margin."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import ConfigError
from bastion.interfaces import Broker, PluginContext
from bastion.models import (
    AccountSnapshot,
    Bar,
    Fill,
    MarginPolicy,
    Order,
    OrderIntent,
    OrderType,
    Side,
)
from bastion.plugins.sim import SimBroker, SimOptions, parse_commission, register_brokers

T0 = datetime(2024, 1, 2, 21, tzinfo=UTC)
TICK = Decimal("0.0001")
FREE = "commission=none,slippage=0"  # no costs: fill prices and quantities are easy to read

_ids = itertools.count(1)


def at(day: int) -> datetime:
    return T0 + timedelta(days=day)


def bar(
    day: int = 1,
    open: float = 100.0,
    *,
    symbol: str = "X",
    high: float | None = None,
    low: float | None = None,
    close: float | None = None,
    volume: float = 1e6,
    ts: datetime | None = None,
) -> Bar:
    close = open if close is None else close
    return Bar(
        symbol=symbol,
        ts=at(day) if ts is None else ts,
        open=open,
        high=max(open, close) + 1 if high is None else high,
        low=max(min(open, close) - 1, 0.01) if low is None else low,
        close=close,
        volume=volume,
    )


def order(
    side: str = "buy",
    quantity: int | str | Decimal = 100,
    *,
    symbol: str = "X",
    type: str = "market",
    limit: str | None = None,
    stop: str | None = None,
    created: datetime = T0,
    strategy: str = "s.py",
    liquidation: bool = False,
) -> Order:
    return Order(
        client_order_id=f"o-{next(_ids)}",
        strategy=strategy,
        strategy_sha256="a" * 64,
        signer="K",
        intent=OrderIntent(
            symbol=symbol,
            side=side,
            quantity=quantity,
            type=type,
            limit_price=limit,
            stop_price=stop,
        ),
        created=created,
        liquidation=liquidation,
    )


def account(
    equity: str | int = 100_000,
    *,
    positions: Mapping[str, str | int] | None = None,
    prices: Mapping[str, str | int] | None = None,
) -> AccountSnapshot:
    """A snapshot whose long/short values are the positions marked at ``prices``."""
    held = {s: Decimal(q) for s, q in (positions or {}).items()}
    marks = {s: Decimal(p) for s, p in ({"X": 100} if prices is None else prices).items()}
    values = {s: q * marks.get(s, Decimal(0)) for s, q in held.items()}
    long_value = sum((v for v in values.values() if v > 0), Decimal(0))
    short_value = sum((-v for v in values.values() if v < 0), Decimal(0))
    worth = Decimal(equity)
    return AccountSnapshot(
        cash=worth - long_value + short_value,
        equity=worth,
        positions=held,
        prices=marks,
        long_value=long_value,
        short_value=short_value,
    )


def working(spec: str = FREE, *orders: Order) -> SimBroker:
    """A broker with ``orders`` submitted against a roomy account (all must be accepted)."""
    broker = SimBroker.open(spec)
    for o in orders:
        roomy = account(10**9, prices={"X": 100, "Y": 100, "Z": 100})
        assert broker.submit(o, roomy) is None
    return broker


def fill_one(broker: SimBroker, b: Bar) -> Fill:
    fills = broker.on_bar(b)
    assert len(fills) == 1, fills
    return fills[0]


def slipped(open: float, bps: float, side: str) -> Decimal:
    """The price ``bps`` basis points against the order, rounded to the 0.0001 grid
    against the order too (buys up, sells down)."""
    factor = Decimal(repr(bps)) / 10_000
    base = Decimal(repr(open))
    if side == "buy":
        return (base * (1 + factor)).quantize(TICK, rounding=ROUND_CEILING)
    return (base * (1 - factor)).quantize(TICK, rounding=ROUND_FLOOR)


# --------------------------------------------------------------------------- options


def test_options_defaults() -> None:
    """No options means per-share 0.005 (min 1) commission, 1 bp slippage, 10% participation,
    1.5x long and 2x short leverage and 25% maintenance margin."""
    options = SimOptions.parse("")
    assert options == SimOptions()
    assert options.commission == "per-share:0.005:1"
    assert options.slippage_bps == 1.0
    assert options.participation == 0.1
    assert options.long_leverage == 1.5
    assert options.short_leverage == 2.0
    assert options.maintenance == 0.25
    broker = SimBroker.open()
    assert broker.options == options
    assert broker.name == "sim"
    assert broker.margin == MarginPolicy(0.25)


def test_options_every_key() -> None:
    """Each documented key sets its option; ``slippage`` is in basis points."""
    options = SimOptions.parse(
        "commission=bps:2,slippage=3.5,participation=0.05,"
        "long_leverage=2,short_leverage=3,maintenance=0.3"
    )
    assert options == SimOptions(
        commission="bps:2",
        slippage_bps=3.5,
        participation=0.05,
        long_leverage=2.0,
        short_leverage=3.0,
        maintenance=0.3,
    )
    assert SimBroker.open("maintenance=0.4").margin == MarginPolicy(0.4)


def test_options_tolerate_spaces_and_empty_parts() -> None:
    """Blanks around parts and empty parts between commas are ignored; unset keys keep
    their defaults."""
    options = SimOptions.parse(" slippage=2 ,, participation=1 ,")
    assert options == SimOptions(slippage_bps=2.0, participation=1.0)


@pytest.mark.parametrize(
    ("spec", "field", "value"),
    [
        ("participation=1", "participation", 1.0),
        ("slippage=0", "slippage_bps", 0.0),
        ("maintenance=0", "maintenance", 0.0),
        ("maintenance=0.99,long_leverage=1,short_leverage=1", "maintenance", 0.99),
        ("maintenance=0.25,long_leverage=4,short_leverage=4", "long_leverage", 4.0),
        ("maintenance=0,long_leverage=10", "long_leverage", 10.0),
        ("long_leverage=0.5", "long_leverage", 0.5),
        ("commission=none", "commission", "none"),
        ("commission=per-share", "commission", "per-share"),
        ("commission=per-share:0.01", "commission", "per-share:0.01"),
        ("commission=bps", "commission", "bps"),
    ],
)
def test_options_boundary_values_accepted(spec: str, field: str, value: object) -> None:
    """Values at the edges of their ranges are accepted: participation 1, slippage 0,
    maintenance 0 (or just below 1), leverage below 1, and short commission specs."""
    assert getattr(SimOptions.parse(spec), field) == value


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("long_leverage=5", "long_leverage=5 with maintenance=0.25"),
        ("maintenance=0.6", "short_leverage=2 with maintenance=0.6"),
        ("short_leverage=4.5", "use short_leverage <= 4"),
    ],
)
def test_leverage_beyond_the_maintenance_level_is_refused(spec: str, fragment: str) -> None:
    """Leverage L fully used leaves equity / exposure = 1/L: above 1/maintenance every
    full-size position would be margin-called the moment it filled, so it is a config error."""
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        SimOptions.parse(spec)


def test_maintenance_zero_disables_margin_calls() -> None:
    """``maintenance=0`` reports no maintenance margin (the kernel then never margin-calls)."""
    assert SimBroker.open("maintenance=0").margin is None


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("colour=red", "colour"),
        ("slippage", "slippage"),
        ("Slippage=1", "Slippage"),
        ("slippage=abc", "slippage"),
        ("participation=", "participation"),
        ("long_leverage=1.5x", "long_leverage"),
        ("slippage=-1", "slippage"),
        ("long_leverage=-2", "long_leverage"),
        ("short_leverage=-0.5", "short_leverage"),
        ("maintenance=-0.1", "maintenance"),
        ("participation=-0.1", "participation"),
        ("slippage=nan", "slippage"),
        ("slippage=inf", "slippage"),
        ("participation=0", "participation"),
        ("participation=1.01", "participation"),
        ("participation=2", "participation"),
        ("maintenance=1", "maintenance"),
        ("maintenance=1.5", "maintenance"),
        ("long_leverage=0", "long_leverage"),
        ("short_leverage=0", "short_leverage"),
        ("commission=", "commission"),
        ("commission=flat:1", "commission"),
        ("commission=bps:abc", "commission"),
        ("commission=per-share:x", "commission"),
        ("commission=per-share:0.005:y", "commission"),
        ("commission=per-share:0.005:1:2", "commission"),
        ("slippage=2,participation=0", "participation"),
    ],
)
def test_bad_option_is_a_one_line_config_error_naming_it(spec: str, named: str) -> None:
    """Every unknown key, non-number, out-of-range value or unreadable commission spec is a
    one-line ``ConfigError`` that names the offending option (from parse and from open)."""
    with pytest.raises(ConfigError) as caught:
        SimOptions.parse(spec)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("sim broker:")
    assert named in message
    with pytest.raises(ConfigError):
        SimBroker.open(spec)


def test_unknown_option_message_lists_the_valid_keys() -> None:
    """The error for an unknown key lists every valid key, so the user can correct it."""
    with pytest.raises(ConfigError) as caught:
        SimOptions.parse("slipage=2")
    for key in (
        "commission",
        "slippage",
        "participation",
        "long_leverage",
        "short_leverage",
        "maintenance",
    ):
        assert key in str(caught.value)


@pytest.mark.parametrize(
    "spec",
    [
        "commission=bps:-1",
        "commission=bps:nan",
        "commission=bps:inf",
        "commission=per-share:-0.01:-1",
    ],
)
def test_negative_or_non_finite_commission_rate_is_a_config_error(spec: str) -> None:
    """A commission rate or minimum that is negative, NaN or infinite is a bad commission
    spec: a ``ConfigError`` naming ``commission`` at parse time, not a crash mid-run."""
    with pytest.raises(ConfigError, match="commission"):
        SimOptions.parse(spec)


def test_slippage_of_100_percent_or_more_never_crashes_a_sell() -> None:
    """``slippage=10000`` (100%) is either refused as an option or still gives a sell a
    positive fill price; it never makes ``on_bar`` raise."""
    try:
        broker = SimBroker.open("commission=none,slippage=10000")
    except ConfigError as exc:
        assert "slippage" in str(exc)
        return
    assert broker.submit(order("sell", 10), account()) is None
    fills = broker.on_bar(bar(1, 100.0))
    assert all(f.price > 0 for f in fills)


# --------------------------------------------------------------------------- protocol


def test_sim_broker_implements_the_broker_protocol() -> None:
    """``SimBroker`` satisfies ``bastion.interfaces.Broker`` and is registered as ``sim``."""
    assert isinstance(SimBroker.open(), Broker)
    [offer] = register_brokers()
    assert offer.name == "sim"
    broker = offer.create("slippage=3", PluginContext("development", Path("unused")))
    assert isinstance(broker, SimBroker)
    assert broker.options.slippage_bps == 3.0


# --------------------------------------------------------------------------- no look-ahead


@pytest.mark.parametrize(
    ("kind", "limit", "stop"),
    [("market", None, None), ("limit", "150", None), ("stop", None, "50")],
)
def test_order_never_fills_on_the_bar_it_was_created_on(
    kind: str, limit: str | None, stop: str | None
) -> None:
    """An order created at bar time t does not fill on the bar stamped t, even when that
    bar's range would satisfy it (market, limit or stop)."""
    o = order("buy", 10, type=kind, limit=limit, stop=stop, created=at(0))
    broker = working(FREE, o)
    assert not broker.on_bar(bar(0, 100.0))
    assert broker.working_symbols() == {"X"}


def test_order_never_fills_on_a_second_bar_with_the_same_timestamp() -> None:
    """Another bar of the same symbol with the same timestamp (ts <= t) does not fill it."""
    broker = working(FREE, order(created=at(0)))
    assert not broker.on_bar(bar(0, 100.0))
    assert not broker.on_bar(bar(0, 99.0))
    assert fill_one(broker, bar(1, 98.0)).price == Decimal("98.0000")


def test_order_never_fills_on_an_earlier_bar() -> None:
    """A bar stamped before the order's creation (a late or replayed bar) does not fill it."""
    broker = working(FREE, order(created=at(5)))
    assert not broker.on_bar(bar(4, 100.0))
    assert not broker.on_bar(bar(5, 100.0))
    assert fill_one(broker, bar(6, 101.0)).ts == at(6)


def test_same_instant_in_another_timezone_is_not_later() -> None:
    """Creation time and bar time are compared as instants: a bar stamped at the same
    instant in another time zone is not strictly later."""
    eastern = timezone(timedelta(hours=-5))
    broker = working(FREE, order(created=at(0)))
    assert not broker.on_bar(bar(ts=at(0).astimezone(eastern)))
    assert broker.on_bar(bar(ts=at(0) + timedelta(microseconds=1)))


def test_order_fills_on_the_next_later_bar_of_its_own_symbol_only() -> None:
    """Bars of other symbols never fill an order; the first strictly later bar of its own
    symbol does, at that bar's open and time."""
    broker = working(FREE, order("buy", 10, symbol="X", created=at(0)))
    assert not broker.on_bar(bar(1, 50.0, symbol="Y"))
    assert not broker.on_bar(bar(2, 60.0, symbol="Z"))
    fill = fill_one(broker, bar(3, 70.0, symbol="X"))
    assert (fill.symbol, fill.ts, fill.price, fill.quantity) == (
        "X",
        at(3),
        Decimal("70.0000"),
        Decimal(10),
    )
    assert broker.working_symbols() == frozenset()
    assert not broker.on_bar(bar(4, 71.0))


def test_bar_without_working_orders_gives_no_fills() -> None:
    """``on_bar`` for a symbol nobody has an order in returns nothing."""
    assert not SimBroker.open(FREE).on_bar(bar(1))


# --------------------------------------------------------------------------- market orders


def test_market_order_with_zero_slippage_fills_exactly_at_the_open() -> None:
    """With ``slippage=0`` a market order fills at the next bar's open, whatever the rest
    of the bar does, exactly as the bar gave it."""
    for side in ("buy", "sell"):
        o = order(side, 10)
        fill = fill_one(working(FREE, o), bar(1, 123.4567, high=130, low=120, close=125))
        assert fill.price == Decimal("123.4567")
        assert isinstance(fill.price, Decimal)
        assert (fill.order_id, fill.side, fill.quantity) == (o.client_order_id, side, 10)


def test_market_buy_pays_slippage_above_the_open() -> None:
    """A market buy fills exactly ``slippage`` basis points above the open."""
    fill = fill_one(working("commission=none,slippage=10", order("buy")), bar(1, 100.0))
    assert fill.price == Decimal("100.1000")


def test_market_sell_gets_slippage_below_the_open() -> None:
    """A market sell fills exactly ``slippage`` basis points below the open."""
    fill = fill_one(working("commission=none,slippage=10", order("sell")), bar(1, 100.0))
    assert fill.price == Decimal("99.9000")


def test_default_slippage_is_one_basis_point() -> None:
    """Without a slippage option a buy at open 100 pays 100.01 and a sell gets 99.99."""
    buy = fill_one(working("commission=none", order("buy")), bar(1, 100.0))
    sell = fill_one(working("commission=none", order("sell")), bar(1, 100.0))
    assert (buy.price, sell.price) == (Decimal("100.0100"), Decimal("99.9900"))


@pytest.mark.parametrize(
    ("open_", "bps", "buy", "sell"),
    [
        (100.0, 1, "100.0100", "99.9900"),
        (57.31, 2.5, "57.3244", "57.2956"),
        (12.3456, 7, "12.3543", "12.3369"),
        (4321.0, 0.3, "4321.1297", "4320.8703"),
    ],
)
def test_slippage_is_exactly_the_basis_points_quantized(
    open_: float, bps: float, buy: str, sell: str
) -> None:
    """Buy fills at open x (1 + bps/10000) rounded up, sell at open x (1 - bps/10000)
    rounded down, to 0.0001: rounding never favours the trader."""
    spec = f"commission=none,slippage={bps}"
    buy_fill = fill_one(working(spec, order("buy")), bar(1, open_))
    sell_fill = fill_one(working(spec, order("sell")), bar(1, open_))
    assert buy_fill.price == Decimal(buy) == slipped(open_, bps, "buy")
    assert sell_fill.price == Decimal(sell) == slipped(open_, bps, "sell")
    assert buy_fill.price.as_tuple().exponent == sell_fill.price.as_tuple().exponent == -4


@pytest.mark.parametrize(
    ("open_", "bps", "buy", "sell"),
    [
        (0.5, 20, "0.50100", "0.49900"),
        (0.0005, 1, "0.00050005", "0.00049995"),
        (0.000001, 1, "0.0000010001", "0.00000099990"),
        (0.012345, 1, "0.012347", "0.012343"),  # rounded: 0.0123462345, 0.0123437655
    ],
)
def test_slippage_below_a_price_of_1_keeps_five_significant_digits(
    open_: float, bps: float, buy: str, sell: str
) -> None:
    """Below a price of 1 the slipped price is rounded to five significant digits, still
    against the trader: a fixed 0.0001 step made 1 bp on a 0.000001 price a fill 100
    times the open."""
    spec = f"commission=none,slippage={bps}"
    wide = {"high": open_ * 2, "low": open_ / 2}
    buy_fill = fill_one(working(spec, order("buy")), bar(1, open_, **wide))
    sell_fill = fill_one(working(spec, order("sell")), bar(1, open_, **wide))
    assert buy_fill.price == Decimal(buy) and sell_fill.price == Decimal(sell)


def test_slippage_never_leaves_the_bars_range() -> None:
    """A slipped fill is held inside the bar's high and low: a market buy on a bar whose
    high is its open fills at the open, not above anything that traded."""
    spec = "commission=none,slippage=50"
    assert fill_one(working(spec, order("buy")), bar(1, 100.0, high=100.0)).price == 100
    assert fill_one(working(spec, order("sell")), bar(1, 100.0, low=100.0)).price == 100


def test_market_buy_never_fills_below_an_open_with_more_than_four_decimals() -> None:
    """With no slippage, a market buy on a bar opening at 10.00014 (e.g. adjusted data) pays
    at least the open, and a sell at 10.00016 gets at most the open: rounding to the tick
    never works in the order's favour."""
    buy = fill_one(working(FREE, order("buy")), bar(1, 10.00014))
    sell = fill_one(working(FREE, order("sell")), bar(1, 10.00016))
    assert buy.price >= Decimal("10.00014")
    assert sell.price <= Decimal("10.00016")


def test_sub_tick_prices_do_not_crash_on_bar() -> None:
    """A market order on a bar priced below 0.00005 (valid per ``Bar``) never makes
    ``on_bar`` raise; any fill it gives has a positive price."""
    broker = working(FREE, order("buy", 10))
    fills = broker.on_bar(bar(1, 0.00004, high=0.00004, low=0.00004, close=0.00004))
    assert all(f.price > 0 for f in fills)


# --------------------------------------------------------------------------- limit orders


@pytest.mark.parametrize(
    ("open_", "low", "price"),
    [
        (100.0, 98.0, "99.0000"),  # the range reaches the limit: filled at the limit
        (100.0, 99.0, "99.0000"),  # the low touching the limit is enough
        (97.0, 96.0, "97.0000"),  # opens through the limit: the better open
    ],
)
def test_limit_buy_fills_at_the_lower_of_open_and_limit(
    open_: float, low: float, price: str
) -> None:
    """A limit buy fills at min(open, limit) once the bar's low reaches the limit."""
    o = order("buy", 10, type="limit", limit="99")
    fill = fill_one(working(FREE, o), bar(1, open_, high=open_ + 1, low=low))
    assert fill.price == Decimal(price)


@pytest.mark.parametrize(
    ("open_", "high", "price"),
    [
        (100.0, 102.0, "101.0000"),
        (100.0, 101.0, "101.0000"),
        (103.0, 104.0, "103.0000"),
    ],
)
def test_limit_sell_fills_at_the_higher_of_open_and_limit(
    open_: float, high: float, price: str
) -> None:
    """A limit sell fills at max(open, limit) once the bar's high reaches the limit."""
    o = order("sell", 10, type="limit", limit="101")
    fill = fill_one(working(FREE, o), bar(1, open_, high=high, low=open_ - 1))
    assert fill.price == Decimal(price)


def test_limit_fills_carry_no_slippage() -> None:
    """Slippage applies to market and stop fills only: a limit order fills at its price."""
    spec = "commission=none,slippage=50"
    buy = order("buy", 10, type="limit", limit="99")
    sell = order("sell", 10, type="limit", limit="101")
    assert fill_one(working(spec, buy), bar(1, 100.0, high=100.5, low=98)).price == 99
    assert fill_one(working(spec, sell), bar(1, 100.0, high=102, low=99.5)).price == 101


def test_limit_buy_keeps_working_until_the_low_reaches_it() -> None:
    """A limit buy whose limit is below every bar's low stays working, bar after bar,
    and fills on the first bar whose low reaches it."""
    broker = working(FREE, order("buy", 10, type="limit", limit="95"))
    for day in range(1, 6):
        assert not broker.on_bar(bar(day, 100.0, high=101, low=95.01))
        assert broker.working_symbols() == {"X"}
    fill = fill_one(broker, bar(6, 96.0, high=97, low=94))
    assert (fill.ts, fill.price) == (at(6), Decimal("95.0000"))
    assert broker.working_symbols() == frozenset()


def test_limit_sell_keeps_working_until_the_high_reaches_it() -> None:
    """A limit sell whose limit is above every bar's high stays working until a bar's
    high reaches it."""
    broker = working(FREE, order("sell", 10, type="limit", limit="105"))
    for day in range(1, 4):
        assert not broker.on_bar(bar(day, 100.0, high=104.99, low=99))
    assert fill_one(broker, bar(4, 104.0, high=106, low=103)).price == Decimal("105.0000")


def test_limit_fill_never_breaches_an_off_tick_limit() -> None:
    """A limit sell at 100.72385 never fills below 100.72385 and a limit buy at 99.00015
    never fills above 99.00015, even though fill prices are on the 0.0001 grid."""
    sell = order("sell", 10, type="limit", limit="100.72385")
    buy = order("buy", 10, type="limit", limit="99.00015")
    sell_fill = fill_one(working(FREE, sell), bar(1, 100.0, high=101, low=99))
    buy_fill = fill_one(working(FREE, buy), bar(1, 100.0, high=101, low=98))
    assert sell_fill.price >= Decimal("100.72385")
    assert buy_fill.price <= Decimal("99.00015")


# --------------------------------------------------------------------------- stop orders


@pytest.mark.parametrize(
    ("open_", "high", "price"),
    [
        (103.0, 106.0, "105.1050"),  # the range reaches the stop: the stop plus 10 bp
        (103.0, 105.0, "105"),  # the high touching the stop triggers it; the high caps it
        (107.0, 108.0, "107.1070"),  # opens through the stop: the worse open plus 10 bp
    ],
)
def test_stop_buy_fills_at_the_higher_of_open_and_stop_plus_slippage(
    open_: float, high: float, price: str
) -> None:
    """A stop buy triggers when the high reaches the stop and fills at max(open, stop)
    plus slippage, at most at the bar's high."""
    o = order("buy", 10, type="stop", stop="105")
    fill = fill_one(working("commission=none,slippage=10", o), bar(1, open_, high=high))
    assert fill.price == Decimal(price)


@pytest.mark.parametrize(
    ("open_", "low", "price"),
    [
        (97.0, 94.0, "94.9050"),
        (97.0, 95.0, "95"),
        (93.0, 92.0, "92.9070"),
    ],
)
def test_stop_sell_fills_at_the_lower_of_open_and_stop_minus_slippage(
    open_: float, low: float, price: str
) -> None:
    """A stop sell triggers when the low reaches the stop and fills at min(open, stop)
    minus slippage, at least at the bar's low."""
    o = order("sell", 10, type="stop", stop="95")
    fill = fill_one(working("commission=none,slippage=10", o), bar(1, open_, low=low))
    assert fill.price == Decimal(price)


def test_untriggered_stops_keep_working() -> None:
    """A stop buy stays working while every high is below the stop, and a stop sell while
    every low is above it."""
    broker = working(
        FREE,
        order("buy", 10, type="stop", stop="110", symbol="X"),
        order("sell", 10, type="stop", stop="90", symbol="Y"),
    )
    for day in range(1, 4):
        assert not broker.on_bar(bar(day, 100.0, symbol="X", high=109.99, low=80))
        assert not broker.on_bar(bar(day, 100.0, symbol="Y", high=120, low=90.01))
    assert broker.working_symbols() == {"X", "Y"}


def test_triggered_stop_partly_filled_continues_as_market() -> None:
    """Once triggered, the unfilled rest of a stop order fills at later bars' opens (plus
    slippage) like a market order, even when those bars never reach the stop again."""
    o = order("buy", 150, type="stop", stop="105")
    broker = working("commission=none,slippage=10,participation=0.1", o)
    first = fill_one(broker, bar(1, 103.0, high=106, volume=1000))
    assert (first.quantity, first.price) == (100, Decimal("105.1050"))
    second = fill_one(broker, bar(2, 100.0, high=101, low=99, volume=1000))
    assert (second.quantity, second.price) == (50, Decimal("100.1000"))
    assert broker.working_symbols() == frozenset()


def test_triggered_stop_sell_partly_filled_continues_as_market() -> None:
    """The rest of a triggered stop sell fills at the next open minus slippage even when
    that bar stays above the stop."""
    o = order("sell", 150, type="stop", stop="95")
    broker = working("commission=none,slippage=10,participation=0.1", o)
    assert fill_one(broker, bar(1, 97.0, low=94, volume=1000)).quantity == 100
    second = fill_one(broker, bar(2, 100.0, high=101, low=99, volume=1000))
    assert (second.quantity, second.price) == (50, Decimal("99.9000"))


# --------------------------------------------------------------------------- commission


@pytest.mark.parametrize(
    ("spec", "quantity", "price", "expected"),
    [
        # per-share: rate x shares, at least the minimum, at most 1% of notional
        ("per-share:0.005:1", "1000", "50", "5.0000"),
        ("per-share:0.005:1", "100", "50", "1.0000"),  # 0.50 raised to the minimum
        ("per-share:0.005:1", "10", "5", "0.5000"),  # minimum capped at 1% of 50
        ("per-share:0.005:1", "1000", "0.20", "2.0000"),  # 5.00 capped at 1% of 200
        ("per-share:0.0035:0.35", "37", "12.34", "0.3500"),
        ("per-share:0.0035:0.35", "301", "12.34", "1.0535"),
        ("per-share", "1000", "50", "5.0000"),  # defaults: 0.005 per share, minimum 1
        ("per-share", "10", "500", "1.0000"),
        ("per-share:0.01", "50", "100", "1.0000"),  # minimum defaults to 1
        ("per-share:0.01", "500", "100", "5.0000"),
        # bps: of notional
        ("bps:1", "100", "100", "1.0000"),
        ("bps:2.5", "37", "123.45", "1.1419"),
        ("bps:10", "3", "33.3333", "0.1000"),
        ("bps", "1000", "100", "10.0000"),  # default 1 bp
        # none
        ("none", "1000", "100", "0"),
    ],
)
def test_commission_models_are_exact_decimals(
    spec: str, quantity: str, price: str, expected: str
) -> None:
    """Each commission model gives the exact Decimal amount, rounded to 0.0001."""
    charged = parse_commission(spec)(Decimal(quantity), Decimal(price))
    assert isinstance(charged, Decimal)
    assert charged == Decimal(expected)
    if spec != "none":
        assert charged.as_tuple().exponent == -4


def test_fill_commission_uses_the_fill_price_and_quantity() -> None:
    """A fill's commission is the model applied to that fill's quantity and (slipped) price."""
    bps = fill_one(working("commission=bps:10,slippage=0", order("buy", 100)), bar(1, 100.0))
    assert bps.commission == Decimal("10.0000")
    default = fill_one(working("", order("buy", 2000)), bar(1, 50.0))
    assert default.price == Decimal("50.0050")
    assert default.commission == Decimal("10.0000")  # 2000 x 0.005
    small = fill_one(working("", order("sell", 10)), bar(1, 6.0))
    assert small.price == Decimal("5.9994")
    assert small.commission == Decimal("0.5999")  # minimum 1 capped at 1% of 59.994
    free = fill_one(working(FREE, order("buy", 100)), bar(1, 100.0))
    assert free.commission == 0


def test_each_partial_fill_pays_commission_on_its_own_quantity() -> None:
    """Partial fills are charged separately, each on its own quantity and price."""
    broker = working("commission=bps:10,slippage=0,participation=0.1", order("buy", 150))
    first = fill_one(broker, bar(1, 100.0, volume=1000))
    second = fill_one(broker, bar(2, 200.0, volume=1000))
    assert (first.quantity, first.commission) == (100, Decimal("10.0000"))
    assert (second.quantity, second.commission) == (50, Decimal("10.0000"))


# --------------------------------------------------------------------------- partial fills


def test_participation_caps_each_bar_and_the_rest_fills_later() -> None:
    """At most participation x volume fills per bar; the remainder keeps working and fills
    on later bars until the order is complete."""
    broker = working("commission=none,slippage=0,participation=0.1", order("buy", 250))
    quantities = []
    for day in (1, 2, 3):
        assert broker.working_symbols() == {"X"}
        quantities.append(fill_one(broker, bar(day, 100.0, volume=1000)).quantity)
    assert quantities == [100, 100, 50]
    assert broker.working_symbols() == frozenset()
    assert not broker.on_bar(bar(4, 100.0, volume=1000))


def test_bar_capacity_is_whole_shares() -> None:
    """A bar's capacity is rounded down to whole shares (10% of 1009 is 100)."""
    broker = working("commission=none,slippage=0,participation=0.1", order("buy", 500))
    fill = fill_one(broker, bar(1, 100.0, volume=1009))
    assert fill.quantity == Decimal(100)
    assert fill.quantity == fill.quantity.to_integral_value()


def test_fractional_quantity_within_capacity_fills_in_full() -> None:
    """An order for a fractional quantity that fits in the bar's capacity fills in full."""
    broker = working("commission=none,slippage=0,participation=0.1", order("buy", "2.5"))
    assert fill_one(broker, bar(1, 100.0, volume=1000)).quantity == Decimal("2.5")


def test_fractional_remainder_fills_once_it_fits() -> None:
    """A fractional order larger than capacity fills whole shares first, then the
    fractional remainder."""
    broker = working("commission=none,slippage=0,participation=0.1", order("buy", "10.5"))
    assert fill_one(broker, bar(1, 100.0, volume=50)).quantity == Decimal(5)
    assert fill_one(broker, bar(2, 100.0, volume=50)).quantity == Decimal(5)
    assert fill_one(broker, bar(3, 100.0, volume=50)).quantity == Decimal("0.5")


def test_orders_on_one_symbol_share_the_bar_capacity_in_arrival_order() -> None:
    """Several orders on one symbol share one bar's capacity, first submitted first; the
    rest of the later order fills on the next bar."""
    a, b = order("buy", 80), order("sell", 50)
    broker = working("commission=none,slippage=0,participation=0.1", a, b)
    fills = broker.on_bar(bar(1, 100.0, volume=1000))
    assert [(f.order_id, f.quantity) for f in fills] == [
        (a.client_order_id, 80),
        (b.client_order_id, 20),
    ]
    assert sum(f.quantity for f in fills) == 100
    rest = fill_one(broker, bar(2, 100.0, volume=1000))
    assert (rest.order_id, rest.quantity) == (b.client_order_id, 30)


def test_unfillable_limit_order_does_not_use_capacity() -> None:
    """A working limit order that the bar does not reach leaves the bar's capacity to the
    orders behind it."""
    limit = order("buy", 100, type="limit", limit="50")
    market = order("buy", 100)
    broker = working("commission=none,slippage=0,participation=0.1", limit, market)
    fill = fill_one(broker, bar(1, 100.0, volume=1000))
    assert (fill.order_id, fill.quantity) == (market.client_order_id, 100)
    assert broker.working_symbols() == {"X"}


def test_orders_of_different_symbols_have_separate_capacity() -> None:
    """Capacity is per bar, so each symbol's bar fills its own orders in full."""
    x, y = order("buy", 100, symbol="X"), order("buy", 100, symbol="Y")
    broker = working("commission=none,slippage=0,participation=0.1", x, y)
    assert fill_one(broker, bar(1, 100.0, symbol="X", volume=1000)).quantity == 100
    assert fill_one(broker, bar(1, 100.0, symbol="Y", volume=1000)).quantity == 100


@pytest.mark.parametrize("volume", [0.0, 5.0, 9.99])
def test_bar_with_too_little_volume_fills_nothing(volume: float) -> None:
    """A bar with no volume (or less than one whole share of capacity) fills nothing and
    the order keeps working."""
    broker = working("commission=none,slippage=0,participation=0.1", order("buy", 10))
    assert not broker.on_bar(bar(1, 100.0, volume=volume))
    assert broker.working_symbols() == {"X"}
    assert fill_one(broker, bar(2, 100.0, volume=1000)).quantity == 10


def test_participation_one_allows_the_whole_volume() -> None:
    """``participation=1`` lets one bar fill up to its whole volume."""
    broker = working("commission=none,slippage=0,participation=1", order("buy", 1000))
    assert fill_one(broker, bar(1, 100.0, volume=750)).quantity == 750


def test_capacity_is_the_exact_product_of_participation_and_volume() -> None:
    """With participation 0.29 a bar of volume 100 fills exactly 29 shares."""
    broker = working("commission=none,slippage=0,participation=0.29", order("buy", 1000))
    assert fill_one(broker, bar(1, 100.0, volume=100)).quantity == 29


def test_bar_without_reported_volume_is_not_volume_limited() -> None:
    """A bar whose data reports no volume (``None``, a CSV file without the column) fills
    the whole order at once, whatever the participation."""
    broker = working("commission=none,slippage=0,participation=0.01", order("buy", 100_000))
    assert fill_one(broker, bar(1, 100.0, volume=None)).quantity == 100_000  # type: ignore[arg-type]
    assert broker.working_symbols() == frozenset()


# --------------------------------------------------------------------------- buying power


def test_long_exposure_up_to_the_limit_is_accepted() -> None:
    """A buy that takes long exposure to exactly long_leverage x equity is accepted."""
    broker = SimBroker.open(FREE)
    assert broker.submit(order("buy", 1500), account(100_000)) is None
    assert broker.working_symbols() == {"X"}


def test_long_exposure_beyond_the_limit_is_rejected_with_the_numbers() -> None:
    """A buy that takes long exposure past long_leverage x equity is rejected with a
    one-line reason giving the exposure, the leverage and the limit; it is not worked."""
    broker = SimBroker.open(FREE)
    reason = broker.submit(order("buy", 1501), account(100_000))
    assert reason is not None
    assert "\n" not in reason
    assert "150,100.00" in reason
    assert "1.5x" in reason
    assert "150,000.00" in reason
    assert broker.working_symbols() == frozenset()
    assert not broker.on_bar(bar(1))


def test_existing_long_exposure_counts_against_the_limit() -> None:
    """Long positions already held in other symbols count towards the long limit."""
    held = account(100_000, positions={"Y": 1000}, prices={"X": 100, "Y": 100})
    assert SimBroker.open(FREE).submit(order("buy", 500), held) is None  # 100k + 50k = 150k
    reason = SimBroker.open(FREE).submit(order("buy", 600), held)  # 100k + 60k = 160k
    assert reason is not None and "160,000.00" in reason


def test_adding_to_a_long_position_counts_the_whole_position() -> None:
    """Buying more of a held symbol is checked on the whole resulting position."""
    held = account(100_000, positions={"X": 1000})
    assert SimBroker.open(FREE).submit(order("buy", 500), held) is None
    reason = SimBroker.open(FREE).submit(order("buy", 501), held)
    assert reason is not None and "150,100.00" in reason


def test_long_leverage_option_sets_the_limit() -> None:
    """``long_leverage`` changes the long limit (1x equity here)."""
    assert (
        SimBroker.open("commission=none,slippage=0,long_leverage=1").submit(
            order("buy", 1000), account(100_000)
        )
        is None
    )
    reason = SimBroker.open("commission=none,slippage=0,long_leverage=1").submit(
        order("buy", 1001), account(100_000)
    )
    assert reason is not None and "100,100.00" in reason and "100,000.00" in reason


def test_short_exposure_up_to_the_limit_is_accepted() -> None:
    """A sell that takes short exposure to exactly short_leverage x equity is accepted."""
    assert SimBroker.open(FREE).submit(order("sell", 2000), account(100_000)) is None


def test_short_exposure_beyond_the_limit_is_rejected_with_the_numbers() -> None:
    """A sell that takes short exposure past short_leverage x equity is rejected with a
    one-line reason giving the exposure, the leverage and the limit."""
    broker = SimBroker.open(FREE)
    reason = broker.submit(order("sell", 2001), account(100_000))
    assert reason is not None
    assert "\n" not in reason
    assert "short" in reason
    assert "200,100.00" in reason
    assert "2.0x" in reason
    assert "200,000.00" in reason
    assert broker.working_symbols() == frozenset()


def test_short_leverage_option_sets_the_limit() -> None:
    """``short_leverage`` changes the short limit (0.5x equity here)."""
    assert (
        SimBroker.open("commission=none,slippage=0,short_leverage=0.5").submit(
            order("sell", 500), account(100_000)
        )
        is None
    )
    reason = SimBroker.open("commission=none,slippage=0,short_leverage=0.5").submit(
        order("sell", 501), account(100_000)
    )
    assert reason is not None and "50,100.00" in reason and "50,000.00" in reason


def test_flipping_from_long_to_short_is_checked_as_new_short_exposure() -> None:
    """Selling through a long position into a short is new exposure: the resulting short
    must fit the short limit (the old long no longer counts)."""
    held = account(10_000, positions={"X": 100})  # long 10k, equity 10k
    assert SimBroker.open(FREE).submit(order("sell", 300), held) is None  # short 20k = 2x
    reason = SimBroker.open(FREE).submit(order("sell", 301), held)  # short 20.1k
    assert reason is not None and "20,100.00" in reason and "20,000.00" in reason


@pytest.mark.parametrize(
    ("positions", "side", "quantity"),
    [
        ({"X": 1000}, "sell", 500),  # reduce a long
        ({"X": 1000}, "sell", 1000),  # close a long
        ({"X": -1000}, "buy", 400),  # reduce a short
        ({"X": -1000}, "buy", 1000),  # close a short
    ],
)
def test_reducing_or_closing_is_accepted_even_when_over_leveraged(
    positions: dict[str, int], side: str, quantity: int
) -> None:
    """An order that only reduces or closes a position is accepted even when the account
    is far beyond its leverage limits (10x here)."""
    over = account(10_000, positions=positions)
    assert over.long_value + over.short_value == 100_000
    assert SimBroker.open(FREE).submit(order(side, quantity), over) is None


def test_adding_to_an_over_leveraged_position_is_rejected() -> None:
    """While over the limit, an order that adds exposure is still rejected."""
    over = account(10_000, positions={"X": 1000})
    assert SimBroker.open(FREE).submit(order("buy", 1), over) is not None


@pytest.mark.parametrize("equity", [0, -100])
def test_no_new_exposure_when_equity_is_not_positive(equity: int) -> None:
    """With equity <= 0 any order that adds exposure is rejected, saying so with the
    equity figure."""
    broker = SimBroker.open(FREE)
    for side in ("buy", "sell"):
        reason = broker.submit(order(side, 1), account(equity))
        assert reason is not None
        assert "equity" in reason and f"{equity:.2f}" in reason
    assert broker.working_symbols() == frozenset()


@pytest.mark.parametrize(
    ("positions", "side", "quantity"),
    [({"X": 100}, "sell", 100), ({"X": 100}, "sell", 40), ({"X": -100}, "buy", 100)],
)
def test_closing_is_accepted_when_equity_is_not_positive(
    positions: dict[str, int], side: str, quantity: int
) -> None:
    """Reducing or closing a position is always accepted, even with equity <= 0 (it adds
    no exposure)."""
    broke = account(-100, positions=positions)
    assert SimBroker.open(FREE).submit(order(side, quantity), broke) is None


def test_market_order_without_a_known_price_is_rejected_with_a_reason() -> None:
    """A market order in a symbol with no price seen yet is rejected, naming the symbol."""
    broker = SimBroker.open(FREE)
    reason = broker.submit(order("buy", 1, symbol="NEW"), account(prices={}))
    assert reason is not None
    assert "NEW" in reason and "price" in reason
    assert broker.working_symbols() == frozenset()


def test_limit_and_stop_orders_are_valued_at_their_own_price() -> None:
    """Before a symbol has a price, a buy limit or a sell stop is checked at its own price
    (it cannot fill beyond it) and a high limit counts at that price; a sell limit or a buy
    stop, which may fill at any open beyond its price, is refused until there is a price."""
    no_prices = account(100_000, prices={})
    assert (
        SimBroker.open(FREE).submit(order("buy", 1000, type="limit", limit="150"), no_prices)
        is None
    )
    assert (
        SimBroker.open(FREE).submit(order("sell", 1000, type="stop", stop="150"), no_prices) is None
    )
    reason = SimBroker.open(FREE).submit(order("buy", 1000, type="limit", limit="151"), no_prices)
    assert reason is not None and "151,000.00" in reason
    for side, kind in (("buy", "stop"), ("sell", "limit")):
        unbounded = order(side, 1, type=kind, **{kind: "100"})  # type: ignore[arg-type]
        reason = SimBroker.open(FREE).submit(unbounded, no_prices)
        assert reason == (
            f"no price seen yet for X; a {side} {kind} may fill at any price beyond its own, "
            "so its buying power cannot be checked until X has traded"
        )


def test_liquidation_orders_are_never_rejected() -> None:
    """An order marked ``liquidation=True`` is accepted whatever the account: no equity,
    no price, far beyond any limit."""
    broker = SimBroker.open(FREE)
    broke = account(-50_000, positions={"Y": 10}, prices={})
    for side in ("buy", "sell"):
        assert broker.submit(order(side, 10**6, liquidation=True), broke) is None
    assert broker.working_symbols() == {"X"}


# --------------------------------------------------------------------------- margin call


def liquidations(broker: SimBroker, snapshot: AccountSnapshot, ts: datetime) -> list[Order]:
    """The orders the engine makes of the simulator's margin policy's liquidation."""
    assert broker.margin is not None
    return [
        Order(
            client_order_id=f"margin-{n}",
            strategy="s.py",
            strategy_sha256="",
            signer=None,
            intent=intent,
            created=ts,
            liquidation=True,
        )
        for n, intent in enumerate(broker.margin.liquidation(snapshot))
    ]


def test_margin_call_liquidates_every_non_zero_position() -> None:
    """The simulator's margin policy liquidates with one market order per non-zero
    position, by symbol, on the opposite side for the full quantity, tagged margin-call."""
    snapshot = account(
        -1_000,
        positions={"B": 100, "A": -50, "Z": 0, "C": "2.5"},
        prices={"A": 10, "B": 10, "C": 10, "Z": 10},
    )
    policy = SimBroker.open().margin
    assert policy is not None
    intents = policy.liquidation(snapshot)
    assert [(i.symbol, i.side, i.quantity) for i in intents] == [
        ("A", Side.BUY, Decimal(50)),
        ("B", Side.SELL, Decimal(100)),
        ("C", Side.SELL, Decimal("2.5")),
    ]
    for i in intents:
        assert i.type is OrderType.MARKET
        assert i.tag == "margin-call"


def test_margin_call_without_positions_returns_nothing() -> None:
    """No positions (or only zero ones) means no liquidation orders."""
    policy = SimBroker.open().margin
    assert policy is not None
    assert policy.liquidation(account()) == ()
    assert policy.liquidation(account(positions={"X": 0})) == ()


def test_margin_call_orders_are_accepted_and_fill_at_market_on_the_next_bar() -> None:
    """Liquidation orders are accepted even with negative equity and fill in full at the
    next later bar's open (not on the bar of the margin call)."""
    broker = SimBroker.open("commission=none,slippage=10")
    snapshot = account(-500, positions={"X": 100, "Y": -40}, prices={"X": 100, "Y": 50})
    for o in liquidations(broker, snapshot, at(0)):
        assert broker.submit(o, snapshot) is None
    assert broker.working_symbols() == {"X", "Y"}
    assert not broker.on_bar(bar(0, 100.0, symbol="X"))
    x = fill_one(broker, bar(1, 90.0, symbol="X"))
    y = fill_one(broker, bar(1, 60.0, symbol="Y"))
    assert (x.side, x.quantity, x.price) == (Side.SELL, 100, Decimal("89.9100"))
    assert (y.side, y.quantity, y.price) == (Side.BUY, 40, Decimal("60.0600"))
    assert broker.working_symbols() == frozenset()


# --------------------------------------------------------------------------- cancelling


def test_cancel_strategy_removes_only_that_strategys_orders() -> None:
    """``cancel_strategy`` returns exactly that strategy's working orders and removes them;
    other strategies' orders keep working and still fill."""
    a1 = order("buy", 10, symbol="X", strategy="a.py")
    a2 = order("sell", 10, symbol="Y", strategy="a.py")
    b1 = order("buy", 10, symbol="X", strategy="b.py")
    broker = working(FREE, a1, b1, a2)
    cancelled = broker.cancel_strategy("a.py")
    assert {o.client_order_id for o in cancelled} == {a1.client_order_id, a2.client_order_id}
    assert broker.working_symbols() == {"X"}
    assert not broker.on_bar(bar(1, symbol="Y"))
    fill = fill_one(broker, bar(1, symbol="X"))
    assert fill.order_id == b1.client_order_id
    assert broker.cancel_strategy("a.py") == []


def test_cancel_strategy_of_unknown_strategy_changes_nothing() -> None:
    """Cancelling a strategy with no working orders returns nothing and leaves the rest."""
    broker = working(FREE, order(strategy="a.py"))
    assert broker.cancel_strategy("nobody.py") == []
    assert broker.working_symbols() == {"X"}


def test_cancel_strategy_returns_partly_filled_orders() -> None:
    """A partly filled order is still working, so cancelling its strategy returns it and
    no further fills come."""
    o = order("buy", 250, strategy="a.py")
    broker = working("commission=none,slippage=0,participation=0.1", o)
    fill_one(broker, bar(1, volume=1000))
    assert broker.cancel_strategy("a.py") == [o]
    assert broker.working_symbols() == frozenset()
    assert not broker.on_bar(bar(2, volume=1000))


def test_cancel_all_returns_every_working_order() -> None:
    """``cancel_all`` returns every working order of every strategy and symbol, and no
    order fills afterwards."""
    orders = [
        order("buy", 10, symbol="X", strategy="a.py"),
        order("sell", 10, symbol="Y", strategy="b.py"),
        order("buy", 10, symbol="Y", type="limit", limit="1", strategy="a.py"),
    ]
    broker = working(FREE, *orders)
    cancelled = broker.cancel_all("run ended")
    assert sorted(o.client_order_id for o in cancelled) == sorted(o.client_order_id for o in orders)
    assert broker.working_symbols() == frozenset()
    assert not broker.on_bar(bar(1, symbol="X"))
    assert not broker.on_bar(bar(1, symbol="Y"))
    assert broker.cancel_all("again") == []


def test_working_symbols_follow_the_working_orders() -> None:
    """``working_symbols`` is empty at first, gains a symbol per accepted order, keeps it
    while an order is partly filled or unfilled, and drops it once nothing works there;
    rejected orders never add one."""
    broker = SimBroker.open("commission=none,slippage=0,participation=0.1")
    assert broker.working_symbols() == frozenset()
    assert broker.submit(order("buy", 10, symbol="NEW"), account(prices={})) is not None
    assert broker.working_symbols() == frozenset()
    big = account(10**9, prices={"X": 100, "Y": 100})
    assert broker.submit(order("buy", 150, symbol="X"), big) is None
    assert broker.submit(order("buy", 10, symbol="Y", type="limit", limit="1"), big) is None
    assert broker.working_symbols() == {"X", "Y"}
    fill_one(broker, bar(1, symbol="X", volume=1000))
    assert broker.working_symbols() == {"X", "Y"}
    fill_one(broker, bar(2, symbol="X", volume=1000))
    assert broker.working_symbols() == {"Y"}
    broker.on_bar(bar(2, symbol="Y"))
    assert broker.working_symbols() == {"Y"}


# --------------------------------------------------------------------------- property


_SYMBOLS = ("A", "B")


@st.composite
def _tick_bar(draw: st.DrawFn, symbol: str, ts: datetime) -> Bar:
    """A valid OHLC bar with prices on the 0.0001 grid."""
    low, a, b, high = sorted(draw(st.lists(st.integers(10_000, 5_000_000), min_size=4, max_size=4)))
    open_, close = draw(st.permutations([a, b]))
    volume = draw(
        st.one_of(
            st.just(0.0),
            st.integers(0, 100_000).map(float),
            st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
        )
    )
    return Bar(symbol, ts, open_ / 10_000, high / 10_000, low / 10_000, close / 10_000, volume)


@st.composite
def _session(draw: st.DrawFn) -> list[tuple[str, object]]:
    """A time-ordered mix of bars (some sharing a timestamp) and market orders created at
    the current time."""
    ts = T0
    events: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(1, 40))):
        if draw(st.booleans()):
            ts += timedelta(minutes=draw(st.sampled_from([0, 0, 1, 5])))
            events.append(("bar", draw(_tick_bar(draw(st.sampled_from(_SYMBOLS)), ts))))
        else:
            quantity = draw(
                st.one_of(
                    st.integers(1, 5_000).map(Decimal),
                    st.decimals(Decimal("0.01"), Decimal(500), places=2),
                )
            )
            side = draw(st.sampled_from(["buy", "sell"]))
            symbol = draw(st.sampled_from(_SYMBOLS))
            events.append(("order", order(side, quantity, symbol=symbol, created=ts)))
    return events


@settings(max_examples=300, deadline=None)
@given(
    _session(),
    st.sampled_from([0, 0.5, 1, 2.5, 10, 50]),
    st.sampled_from([0.01, 0.1, 0.25, 0.5, 1]),
)
def test_market_fills_never_overfill_look_ahead_or_beat_the_open(
    events: list[tuple[str, object]], slippage: float, participation: float
) -> None:
    """For any sequence of valid bars and market orders: an order never fills more than its
    quantity, every fill is strictly after the order's creation on a bar of its symbol, a
    buy never fills below that bar's open nor a sell above it, a bar never fills more than
    participation x volume, and exactly the unfinished orders are still working."""
    broker = SimBroker.open(f"commission=bps:1,slippage={slippage},participation={participation}")
    snapshot = account(10**12, prices=dict.fromkeys(_SYMBOLS, 100))
    orders: dict[str, Order] = {}
    filled: dict[str, Decimal] = {}
    for kind, item in events:
        if kind == "order":
            assert isinstance(item, Order)
            assert broker.submit(item, snapshot) is None
            orders[item.client_order_id] = item
            filled[item.client_order_id] = Decimal(0)
            continue
        assert isinstance(item, Bar)
        fills = broker.on_bar(item)
        volume_cap = Decimal(repr(item.volume)) * Decimal(repr(participation))
        assert sum((f.quantity for f in fills), Decimal(0)) <= volume_cap
        open_ = Decimal(repr(item.open))
        for fill in fills:
            placed = orders[fill.order_id]
            filled[fill.order_id] += fill.quantity
            assert filled[fill.order_id] <= placed.quantity
            assert fill.ts == item.ts > placed.created
            assert fill.symbol == placed.symbol == item.symbol
            assert fill.side == placed.side
            assert fill.price.as_tuple().exponent >= -4  # bars and slippage on the tick grid
            assert fill.commission >= 0
            if fill.side is Side.BUY:
                assert fill.price >= open_
            else:
                assert fill.price <= open_
    unfinished = {cid for cid, o in orders.items() if filled[cid] < o.quantity}
    assert broker.working_symbols() == {orders[cid].symbol for cid in unfinished}
    assert {o.client_order_id for o in broker.cancel_all("end")} == unfinished


# --------------------------------------------------------------------------- working orders


def test_working_orders_count_against_the_long_limit() -> None:
    """Orders still working for the same strategy count as exposure: two buys that each fit
    1.5x equity but not together are not both accepted, and the reason says why."""
    broker = SimBroker.open(FREE)
    assert broker.submit(order("buy", 1000), account(100_000)) is None  # 100k of 150k
    reason = broker.submit(order("buy", 501), account(100_000))  # 150.1k with the first
    assert reason is not None
    assert "with working orders" in reason and "150,100.00" in reason
    assert broker.submit(order("buy", 500), account(100_000)) is None  # exactly 150k


def test_working_orders_count_against_the_short_limit() -> None:
    """Working sells add to short exposure the same way."""
    broker = SimBroker.open(FREE)
    assert broker.submit(order("sell", 1500), account(100_000)) is None
    reason = broker.submit(order("sell", 501), account(100_000))
    assert reason is not None and "short" in reason and "200,100.00" in reason


def test_working_orders_of_other_strategies_do_not_count() -> None:
    """Each strategy has its own portfolio: another strategy's working orders are not its
    exposure."""
    broker = SimBroker.open(FREE)
    assert broker.submit(order("buy", 1500, strategy="a.py"), account(100_000)) is None
    assert broker.submit(order("buy", 1500, strategy="b.py"), account(100_000)) is None


def test_sells_that_at_most_close_the_long_are_always_accepted() -> None:
    """Sells that, together with the strategy's working sells, at most close its long
    position cannot add exposure, so they are accepted even when the account is over its
    limit; a buy is not."""
    broker = SimBroker.open(FREE)
    over = account(10_000, positions={"X": 150})  # 15k long of 15k allowed
    assert broker.submit(order("sell", 50), over) is None  # 50 of the 150 working
    assert broker.submit(order("sell", 100), over) is None  # all 150 working
    assert SimBroker.open(FREE).submit(order("buy", 1), over) is not None  # nothing offsets


def test_working_limit_order_in_an_unpriced_symbol_is_valued_at_its_limit() -> None:
    """A working limit order in a symbol without a price yet counts at its limit price."""
    broker = SimBroker.open(FREE)
    no_y = account(100_000, prices={"X": 100})
    assert broker.submit(order("buy", 1000, symbol="Y", type="limit", limit="100"), no_y) is None
    reason = broker.submit(order("buy", 501), no_y)
    assert reason is not None and "150,100.00" in reason


def test_partly_filled_orders_count_only_what_remains() -> None:
    """After a partial fill only the unfilled remainder of a working order is counted (the
    filled part is in the position the next snapshot carries)."""
    broker = working("commission=none,slippage=0,participation=0.5", order("buy", 1000))
    assert fill_one(broker, bar(1, 100.0, volume=1000)).quantity == 500  # 500 remain
    after = account(100_000, positions={"X": 500})
    assert broker.submit(order("buy", 500), after) is None  # 500 + 500 + 500 = 150k
    assert broker.submit(order("buy", 1), after) is not None


def test_liquidation_orders_are_not_limited_but_count_as_working() -> None:
    """A margin-call liquidation skips the buying-power check, and it counts among the
    strategy's working sells: selling on top of its own liquidation is checked as the
    short it could become (it used to pass as "reducing" and go short unchecked)."""
    broker = SimBroker.open(FREE)
    called = account(10_000, positions={"X": 1500})  # 150k long on 10k equity
    assert broker.submit(order("sell", 1500, liquidation=True), called) is None
    reason = broker.submit(order("sell", 1500), called)
    assert reason is not None and "(with working orders)" in reason
    assert SimBroker.open(FREE).submit(order("sell", 1500), called) is None  # alone: reduces


def test_unpriced_working_orders_are_valued_at_the_strategys_own_limit() -> None:
    """Another strategy's working order in the same unpriced symbol does not set the price
    this strategy's working order is valued at."""
    broker = SimBroker.open(FREE)
    no_y = account(100_000, prices={"X": 100})
    other = order("buy", 10, symbol="Y", type="limit", limit="1000", strategy="b.py")
    assert broker.submit(other, no_y) is None
    assert broker.submit(order("buy", 1000, symbol="Y", type="limit", limit="100"), no_y) is None
    reason = broker.submit(order("buy", 501), no_y)
    assert reason is not None and "150,100.00" in reason


def test_a_protective_stop_frees_no_buying_power() -> None:
    """A working stop below a long position may never trigger: it does not make room for
    new buys (it used to net the position to zero and let the strategy buy past its limit)."""
    broker = SimBroker.open(FREE)
    long_x = account(100_000, positions={"X": 1000})  # 100k of 150k
    assert broker.submit(order("sell", 1000, type="stop", stop="90"), long_x) is None
    reason = broker.submit(order("buy", 501), long_x)  # 150.1k if the stop never fires
    assert reason is not None
    assert "long exposure (with working orders) 150,100.00" in reason
    assert broker.submit(order("buy", 500), long_x) is None  # exactly 150k


def test_working_sells_beyond_the_long_count_as_a_short() -> None:
    """A sell that, with the working sells, would take the position short is checked as
    the short it could become."""
    broker = SimBroker.open(FREE)
    long_x = account(100_000, positions={"X": 1000})
    assert broker.submit(order("sell", 1000, type="stop", stop="90"), long_x) is None
    assert broker.submit(order("sell", 2000), long_x) is None  # could be short 2000: 200k
    reason = broker.submit(order("sell", 1), long_x)  # 200.1k of 200k allowed
    assert reason is not None and "short exposure (with working orders) 200,100.00" in reason


def test_working_orders_in_other_symbols_count_at_their_price() -> None:
    """Working buys across several symbols add up: five 1.4x orders on one bar are not all
    accepted (each used to be checked alone, the others valued at 0)."""
    broker = SimBroker.open(FREE)
    marks = account(100_000, prices={s: 100 for s in "ABCDE"})
    accepted = [
        broker.submit(order("buy", 700, symbol=s), marks) is None for s in "ABCDE"
    ]  # 70k each against 150k
    assert accepted == [True, True, False, False, False]
    # A working market order the snapshot has no price for is refused, never valued at 0.
    blind = account(100_000, prices={"X": 100})
    assert "no price seen yet for A" in (broker.submit(order("buy", 1), blind) or "")


@pytest.mark.parametrize(
    ("side", "kind", "price", "what"),
    [
        ("sell", "limit", "0.01", "short exposure 10,000,000.00"),
        ("buy", "stop", "0.01", "long exposure 10,000,000.00"),
        ("buy", "limit", "1000", "long exposure 100,000,000.00"),
    ],
)
def test_limit_or_stop_far_from_the_market_is_valued_at_the_worse_price(
    side: str, kind: str, price: str, what: str
) -> None:
    """A sell limit or a buy stop far below the market fills at the market, and a buy limit
    far above may fill up to its limit: each is valued at the higher of the last price and
    its own (a 0.01 limit used to make 100,000 shares look like 1,000 of exposure)."""
    order_ = order(side, 100_000, type=kind, **{kind: price})  # type: ignore[arg-type]
    reason = SimBroker.open(FREE).submit(order_, account(100_000))
    assert reason is not None and what in reason


@pytest.mark.parametrize(
    ("held", "side", "quantity"),
    [(1000, "sell", 1100), (-1000, "buy", 1100), (1000, "sell", 2000)],
)
def test_reversing_out_of_an_over_limit_position_is_held_to_its_own_side(
    held: int, side: str, quantity: int
) -> None:
    """A sell can only add short exposure and a buy only long: flipping out of a position
    that drifted over its limit is checked against the new side's limit alone (it used to
    be refused for the old side's excess)."""
    over = account(100_000, positions={"X": held}, prices={"X": 160})  # 160k, over 150k
    assert SimBroker.open(FREE).submit(order(side, quantity), over) is None


def test_a_flip_beyond_the_new_sides_limit_is_still_refused() -> None:
    """...but the new side's limit still applies: long 1000 to short 1500 at 160 is a 240k
    short against 200k allowed."""
    over = account(100_000, positions={"X": 1000}, prices={"X": 160})
    reason = SimBroker.open(FREE).submit(order("sell", 2500), over)
    assert reason is not None and "short exposure 240,000.00" in reason


@pytest.mark.parametrize("spec", ["bps:10000", "bps:20000"])
def test_a_commission_of_the_whole_trade_or_more_is_refused(spec: str) -> None:
    """bps commission is capped below 100% of the trade, like slippage (20000 bps used to
    be accepted and took a 1x account to -300,000 in a flat market)."""
    with pytest.raises(ConfigError, match=r"100% of the trade or more; use bps:RATE below 10000"):
        parse_commission(spec)


def test_a_bar_with_zero_volume_triggers_no_stop() -> None:
    """Nothing traded on a zero-volume bar, so its range triggers no stop: a buy stop at 120
    is still untriggered after such a bar reaching 130, and does not fill at the next
    bar's open of 100 (it used to, below its own stop)."""
    broker = working(FREE, order("buy", 10, type="stop", stop="120"))
    assert broker.on_bar(bar(1, 100.0, high=130.0, volume=0)) == ()
    assert broker.on_bar(bar(2, 100.0, high=101.0)) == []
    assert broker.working_symbols() == {"X"}


# ------------------------------------------------------------ buying power, by a reference


def _reference_verdict(
    new: Order,
    mine: list[Order],
    snap: AccountSnapshot,
    long_leverage: Decimal,
    short_leverage: Decimal,
) -> bool:
    """Whether the documented rule accepts ``new`` given the strategy's other working
    orders ``mine``: written from the docstring, not from the code.  Worst case: every
    order that adds exposure fills, at the highest of the last price and every limit or
    stop price of the strategy's orders in that symbol; an order that, with its side's
    working orders, at most closes the position is accepted; otherwise a buy is held to
    the long limit and a sell to the short limit (equity times the leverage)."""
    intent = new.intent
    sym = intent.symbol
    own = intent.limit_price if intent.limit_price is not None else intent.stop_price
    mark = snap.prices.get(sym)
    if own is None and mark is None:
        return False
    if mark is None and (intent.type is OrderType.LIMIT) == (intent.side is Side.SELL):
        return False
    orders = [*mine, new]
    bought: dict[str, Decimal] = {}
    sold: dict[str, Decimal] = {}
    top: dict[str, Decimal] = {}
    for o in orders:
        book = bought if o.side is Side.BUY else sold
        book[o.symbol] = book.get(o.symbol, Decimal(0)) + o.quantity
        p = o.intent.limit_price if o.intent.limit_price is not None else o.intent.stop_price
        if p is not None:
            top[o.symbol] = max(top.get(o.symbol, p), p)
    held = snap.positions.get(sym, Decimal(0))
    if intent.side is Side.BUY and held < 0 and bought[sym] <= -held:
        return True
    if intent.side is Side.SELL and held > 0 and sold[sym] <= held:
        return True
    if snap.equity <= 0:
        return False
    longs = shorts = Decimal(0)
    for name in {*snap.positions, *bought, *sold}:
        q = snap.positions.get(name, Decimal(0))
        options = [p for p in (snap.prices.get(name), top.get(name)) if p is not None]
        if name in bought or name in sold:
            if not options:
                return False
            price = max(options)
        else:
            price = snap.prices.get(name, Decimal(0))
        longs += max(q + bought.get(name, Decimal(0)), Decimal(0)) * price
        shorts += max(sold.get(name, Decimal(0)) - q, Decimal(0)) * price
    if intent.side is Side.BUY:
        return longs <= snap.equity * long_leverage
    return shorts <= snap.equity * short_leverage


_sides = st.sampled_from(["buy", "sell"])
_symbols = st.sampled_from(["X", "Y"])
# Sizes that meet at the boundaries: whole and fractional shares, and small counts that
# equal positions (closing exactly, one share past it).
_qty = st.one_of(
    st.integers(min_value=1, max_value=3000),
    st.sampled_from([1, 2, 100]),
    st.decimals(min_value="0.5", max_value="3", places=1),
)
_px = st.integers(min_value=50, max_value=150).map(Decimal)


@st.composite
def _orders(draw: st.DrawFn, strategy: str) -> Order:
    kind = draw(st.sampled_from(["market", "limit", "stop"]))
    price = draw(_px) if kind != "market" else None
    return order(
        draw(_sides),
        draw(_qty),
        symbol=draw(_symbols),
        type=kind,
        limit=str(price) if kind == "limit" else None,
        stop=str(price) if kind == "stop" else None,
        strategy=strategy,
    )


@settings(max_examples=1500, deadline=None)
@given(
    equity=st.one_of(st.integers(min_value=-1000, max_value=0), st.integers(1, 200_000)),
    positions=st.dictionaries(
        _symbols,
        st.one_of(st.integers(min_value=-2000, max_value=2000), st.sampled_from([-1, 1, 100])),
    ),
    prices=st.dictionaries(_symbols, _px),
    # Another strategy's orders never count ("zz.py" sorts after "s.py" on purpose).
    earlier=st.lists(st.one_of(_orders("s.py"), _orders("zz.py")), max_size=5),
    new=_orders("s.py"),
)
def test_buying_power_follows_the_documented_rule(
    equity: int,
    positions: dict[str, int],
    prices: dict[str, Decimal],
    earlier: list[Order],
    new: Order,
) -> None:
    """Against random accounts, prices, working orders (its own and another
    strategy's) and a new order, the simulator accepts exactly what the reference of
    its documented buying-power rule accepts."""
    broker = SimBroker.open("commission=none,slippage=0,long_leverage=1.5,short_leverage=2")
    snap = account(equity, positions=positions, prices=prices)
    accepted: list[Order] = []
    for o in earlier:
        if broker.submit(o, snap) is None and o.strategy == "s.py":
            accepted.append(o)
    expected = _reference_verdict(new, accepted, snap, Decimal("1.5"), Decimal(2))
    reason = broker.submit(new, snap)
    assert (reason is None) == expected, reason


def test_a_single_share_short_counts_against_the_short_limit() -> None:
    """Selling 1 share short at 100 needs 100 of short capacity: with equity 49 and 2x
    short leverage (98) it is refused, with 50 (100) accepted."""
    broker = SimBroker.open(FREE)
    assert broker.submit(order("sell", 1), account(49)) is not None
    assert SimBroker.open(FREE).submit(order("sell", 1), account(50)) is None


def test_one_working_order_is_cancelled_by_its_id() -> None:
    """cancel(id) removes exactly that order and returns it; the symbol stops counting
    as working once its last order is gone; an unknown id is None."""
    first, second = order("buy", 5), order("buy", 7, symbol="Y")
    broker = working(FREE, first, second)
    assert broker.working_symbols() == {"X", "Y"}
    assert broker.cancel("nope") is None
    assert broker.cancel(first.client_order_id) is first
    assert broker.working_symbols() == {"Y"}
    assert broker.cancel(first.client_order_id) is None
    assert [f.quantity for f in broker.on_bar(bar(1, 100.0, symbol="Y"))] == [7]


def test_a_margin_call_closes_fractional_longs_and_shorts_and_skips_flat_symbols() -> None:
    """Liquidation orders sell what is long and buy back what is short, half shares
    included, and a symbol held at zero (listed first) does not stop the rest."""
    snap = account(100, positions={"A": 0, "B": "0.5", "C": "-0.5"}, prices={})
    orders = liquidations(SimBroker.open(FREE), snap, T0)
    assert [(o.symbol, o.side, o.quantity) for o in orders] == [
        ("B", Side.SELL, Decimal("0.5")),
        ("C", Side.BUY, Decimal("0.5")),
    ]


def test_a_bar_with_room_for_one_share_fills_one() -> None:
    """Volume 10 at 10% participation leaves room for exactly one share on the bar."""
    broker = working("commission=none,slippage=0,participation=0.1", order("buy", 5))
    assert fill_one(broker, bar(1, 100.0, volume=10)).quantity == 1


def test_a_slippage_that_rounds_a_sell_to_nothing_keeps_the_exact_price() -> None:
    """A sell slipped below the price step (1 - 99.9999 %) is not rounded to 0: it keeps
    the exact slipped price, within the bar's range."""
    broker = working("commission=none,slippage=9999.99", order("sell", 1))
    [fill] = broker.on_bar(bar(1, 1.0, high=1.0, low=1e-9))
    assert fill.price == Decimal("1.0") * (1 - Decimal("9999.99") / 10000)


def test_working_orders_are_valued_at_the_highest_of_their_prices() -> None:
    """A buy limit at 150 then one at 120: whatever fills may cost up to 150 a share, so
    with 1,000 of equity (1,500 at 1.5x) 10 shares fit and an 11th does not, even
    though the later limit is lower."""
    broker = SimBroker.open(FREE)
    snap = account(1000)
    assert broker.submit(order("buy", 5, type="limit", limit="150"), snap) is None
    assert broker.submit(order("buy", 5, type="limit", limit="120"), snap) is None
    assert broker.submit(order("buy", 1), snap) is not None


def test_a_fractional_short_elsewhere_frees_no_long_capacity() -> None:
    """Short half a share of Y: it adds nothing to the long side, and takes nothing
    off it either (a buy of X worth 1,520 is over the 1,500 limit of equity 1,000)."""
    snap = account(1000, positions={"Y": "-0.5"}, prices={"X": 100, "Y": 100})
    assert SimBroker.open(FREE).submit(order("buy", "15.2"), snap) is not None
    assert SimBroker.open(FREE).submit(order("buy", 15), snap) is None


def test_cancelling_a_later_order_leaves_the_earlier_one() -> None:
    """cancel(id) matches the id exactly, not the first order of the symbol."""
    first, second = order("buy", 5), order("buy", 7)
    broker = working(FREE, first, second)
    assert broker.cancel(second.client_order_id) is second
    assert [f.quantity for f in broker.on_bar(bar(1, 100.0))] == [5]


def test_an_account_worth_less_than_one_can_still_buy_within_its_limit() -> None:
    """Equity of 1 allows 1.5 of long exposure: a hundredth of a share at 100 fits."""
    assert SimBroker.open(FREE).submit(order("buy", "0.01"), account(1)) is None


def test_a_fractional_long_elsewhere_frees_no_short_capacity() -> None:
    """Long half a share of Y takes nothing off the short side: a short sale of X worth
    2,020 is over the 2,000 limit of equity 1,000."""
    snap = account(1000, positions={"Y": "0.5"}, prices={"X": 100, "Y": 100})
    assert SimBroker.open(FREE).submit(order("sell", "20.2"), snap) is not None
    assert SimBroker.open(FREE).submit(order("sell", 20), snap) is None


def test_a_new_limit_below_a_working_one_is_valued_at_the_higher() -> None:
    """Working: buy 5 at a limit of 150. A new buy limit of 120 for 6 more is valued at
    150 too (either may fill up to its price): 1,650 is over 1,500."""
    broker = SimBroker.open(FREE)
    snap = account(1000)
    assert broker.submit(order("buy", 5, type="limit", limit="150"), snap) is None
    assert broker.submit(order("buy", 6, type="limit", limit="120"), snap) is not None


def test_a_zero_commission_rate_is_allowed() -> None:
    """bps:0 and per-share:0:0 mean no commission, not a mistake."""
    for spec in ("commission=bps:0", "commission=per-share:0:0"):
        broker = working(spec + ",slippage=0", order("buy", 10))
        assert fill_one(broker, bar(1, 100.0)).commission == 0


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["buy", "sell"]),
    st.sampled_from(["market", "limit", "stop"]),
    st.decimals(Decimal("0.0001"), Decimal(300), places=4),
    st.integers(1, 5_000),
    st.sampled_from([0, 1, 25]),
    st.sampled_from(["none", "per-share:0.005:1", "bps:2"]),
    st.sampled_from([None, 0.0, 10.0, 1e6]),
    _tick_bar("X", at(1)),
)
def test_fills_of_every_kind_respect_the_bar_volume(
    side: str,
    kind: str,
    price: Decimal,
    quantity: int,
    slippage: int,
    commission: str,
    volume: float | None,
    bar_: Bar,
) -> None:
    """The participation cap (computed once a bar, when an order first could fill):
    whatever the order type, slippage and commission model, a bar without volume
    data fills the whole order once its price is reached, a bar with volume 0 fills
    nothing, and otherwise at most participation x volume fills, in whole shares;
    each fill is of the order's side and equals a Fill built field by field."""
    broker = SimBroker.open(f"commission={commission},slippage={slippage},participation=0.5")
    limit = str(price) if kind == "limit" else None
    stop = str(price) if kind == "stop" else None
    placed = order(side, quantity, type=kind, limit=limit, stop=stop)
    assert broker.submit(placed, account(10**12, prices={"X": 100})) is None
    bar_ = attrs.evolve(bar_, volume=volume)
    fills = broker.on_bar(bar_)
    total = sum((f.quantity for f in fills), Decimal(0))
    if volume is None:
        assert total in (0, quantity)
    else:
        assert total <= min(Decimal(quantity), int(volume * 0.5))
    if volume == 0:
        assert not fills
    for fill in fills:
        assert Fill(**attrs.asdict(fill, recurse=False)) == fill
        assert fill.order_id == placed.client_order_id and fill.side is placed.side
        assert fill.quantity == fill.quantity.to_integral_value()
    assert bool(broker.working_symbols()) == (total < quantity)
