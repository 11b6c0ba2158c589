"""The risk check on its own, through the kernel, and in a sandboxed backtest.

bastion_run and make_bars come from Bastion's pytest plugin (bastion.testing), which
pytest loads by itself wherever bastion-kernel is installed.
"""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from bastion import Kernel
from bastion.models import OrderIntent
from bastion.testing import make_bars

import bastion_market_hours as plugin
from bastion_market_hours import settings
from bastion_market_hours.source import HoursSource

STRATEGIES = Path(__file__).parent / "strategies"
TUESDAY_NOON = datetime(2024, 1, 2, 17, 0, tzinfo=UTC)  # 12:00 in New York
CLOSED = "(open 09:30-16:00 America/New_York, Monday to Friday)"


def check(intent, environment="development", ts=TUESDAY_NOON, last_price=Decimal(50)):
    return plugin.check_order(
        intent=intent, strategy=None, environment=environment, ts=ts, last_price=last_price
    )


def limit(quantity, price):
    return OrderIntent("AAA", "buy", quantity, type="limit", limit_price=price)


def test_a_market_order_is_valued_at_the_last_price():
    """A market order carries no price: it is valued at last_price, the last close Bastion
    saw for its symbol, and held to the same notional limit."""
    assert check(OrderIntent("AAA", "sell", 1_000), last_price=Decimal(50)) is None
    assert check(OrderIntent("AAA", "sell", 1_001), last_price=Decimal(50)) == (
        "market_hours: notional 50,050.00 (1001 at the last price 50.00) is over the "
        "limit of 50,000.00"
    )
    assert check(OrderIntent("AAA", "buy", 1_001), last_price=Decimal("49.9")) is None


def test_a_market_order_with_no_price_yet_is_vetoed():
    """Before the first bar of its symbol (last_price None) a market order's notional
    cannot be known: it is vetoed, saying so; a limit order still has its own price."""
    assert check(OrderIntent("AAA", "buy", 1), last_price=None) == (
        "market_hours: no price seen yet for AAA, so the notional of a market order "
        "cannot be checked"
    )
    assert check(limit(10, 100), last_price=None) is None


def test_an_order_over_the_notional_is_vetoed():
    """A limit (or stop) order is valued at its own price: worth more than the limit, it
    is vetoed, the reason naming the plugin, the notional and the price it used."""
    assert check(limit(1_000, 100)) == (
        "market_hours: notional 100,000.00 (1000 at the limit price 100.00) is over the "
        "limit of 50,000.00"
    )
    assert check(limit(10, 100)) is None
    stop = OrderIntent("AAA", "sell", 600, type="stop", stop_price=90)
    assert "notional 54,000.00 (600 at the stop price 90.00)" in check(stop)


def test_the_limit_comes_from_the_environment(monkeypatch):
    """MARKET_HOURS_MAX_NOTIONAL changes the limit, for limit and market orders alike."""
    monkeypatch.setenv(settings.MAX_NOTIONAL_VAR, "1_000")
    assert "over the limit of 1,000.00" in check(limit(11, 100))
    assert "(21 at the last price 50.00) is over the limit of 1,000.00" in check(
        OrderIntent("AAA", "buy", 21)
    )
    assert check(OrderIntent("AAA", "buy", 20)) is None


@pytest.mark.parametrize("environment", ["development", "paper", "live"])
@pytest.mark.parametrize(
    ("ts", "open_"),
    [
        (TUESDAY_NOON, True),
        (datetime(2024, 1, 2, 14, 30, tzinfo=UTC), True),  # 09:30 EST: the open
        (datetime(2024, 1, 2, 14, 29, tzinfo=UTC), False),  # 09:29 EST
        (datetime(2024, 1, 2, 20, 59, tzinfo=UTC), True),  # 15:59 EST
        (datetime(2024, 1, 2, 21, 0, tzinfo=UTC), False),  # 16:00 EST: the close
        (datetime(2024, 7, 2, 13, 45, tzinfo=UTC), True),  # 09:45 EDT (summer time)
        (datetime(2024, 1, 6, 17, 0, tzinfo=UTC), False),  # a Saturday
    ],
)
def test_orders_keep_to_the_session_by_their_time(environment, ts, open_):
    """The session is judged by ts, the time of the bar the strategy answered: outside
    09:30-16:00 New York time on weekdays the order is vetoed, with the local time and
    the session in the reason, in backtests (development) as in paper and live."""
    reason = check(limit(10, 100), environment, ts=ts)
    if open_:
        assert reason is None
    else:
        local = ts.astimezone(settings.session().zone)
        assert reason == (
            f"market_hours: the market is closed at {local:%a %Y-%m-%d %H:%M %Z} {CLOSED}"
        )


def test_the_reason_gives_the_local_time():
    """A Saturday noon in New York is named as such, whatever the order's size."""
    saturday = datetime(2024, 1, 6, 17, 0, tzinfo=UTC)
    assert check(limit(1_000, 100), ts=saturday) == (
        f"market_hours: the market is closed at Sat 2024-01-06 12:00 EST {CLOSED}"
    )


def test_a_bad_setting_vetoes_through_the_kernel(monkeypatch):
    """A setting that cannot be read raises in check_order; Bastion then vetoes the
    order (fail closed), naming the plugin and the error."""
    monkeypatch.setenv(settings.MAX_NOTIONAL_VAR, "lots")
    with pytest.raises(ValueError, match="MARKET_HOURS_MAX_NOTIONAL='lots'"):
        check(limit(10, 100))
    kernel = Kernel()
    reason = kernel.check_order(limit(10, 100), None, "development", TUESDAY_NOON, None)
    assert reason.startswith("risk check of plugin 'market_hours' failed (ValueError: ")
    assert reason.endswith("order refused")


def test_the_kernel_passes_the_time_and_the_price():
    """Through the kernel (the installed entry point), ts and last_price reach the check."""
    kernel = Kernel()
    market = OrderIntent("AAA", "buy", 1_001)
    assert kernel.check_order(market, None, "development", TUESDAY_NOON, Decimal(50)) == (
        "market_hours: notional 50,050.00 (1001 at the last price 50.00) is over the "
        "limit of 50,000.00"
    )
    saturday = datetime(2024, 1, 6, 17, 0, tzinfo=UTC)
    assert "the market is closed at Sat" in kernel.check_order(
        market, None, "development", saturday, Decimal(1)
    )


def test_bastion_finds_the_plugin():
    """The entry point in pyproject.toml makes the plugin part of Bastion (after
    'pip install'), with both hooks and its version."""
    (row,) = [p for p in Kernel().plugins() if p.name == "market_hours"]
    assert (row.origin, row.version) == ("entry point", "0.1.0")
    assert {"check_order", "register_sources"} <= set(row.hooks)


def test_a_backtest_vetoes_the_big_order(bastion_run):
    """In a backtest over the hours source (the strategy signed with a throw-away key
    and run sandboxed, as 'bastion backtest' would) the small order fills and the big
    one is vetoed with the plugin's reason."""
    bars = list(HoursSource.open("AAA,days=1").bars())
    result = bastion_run(STRATEGIES / "big_orders.py", bars, plugins=[plugin])
    small, big = result.orders
    assert (small.status, small.filled) == ("filled", Decimal(10))
    assert big.status == "rejected"
    assert big.reason.startswith("market_hours: notional")
    assert result.positions == {"AAA": Decimal(10)}


def test_a_backtest_is_judged_by_the_bars_time(bastion_run):
    """The hours are judged by the bar's time in a backtest too: make_bars' daily bars
    close at 16:00 New York time, when the market is closed, so both orders are vetoed."""
    bars = make_bars("AAA", [100, 101, 102])
    result = bastion_run(STRATEGIES / "big_orders.py", bars, plugins=[plugin])
    assert [o.status for o in result.orders] == ["rejected", "rejected"]
    assert all(
        o.reason == f"market_hours: the market is closed at Tue 2024-01-02 16:00 EST {CLOSED}"
        for o in result.orders
    )
    assert result.positions == {}


def test_a_backtest_values_market_orders_at_the_last_close(bastion_run):
    """Market orders on the first bar are valued at that bar's close: 10 shares pass,
    1,000 are over the notional limit."""
    bars = list(HoursSource.open("AAA,days=1").bars())
    result = bastion_run(STRATEGIES / "market_orders.py", bars, plugins=[plugin])
    small, big = result.orders
    assert (small.status, small.filled) == ("filled", Decimal(10))
    assert big.status == "rejected"
    assert f"(1000 at the last price {bars[0].close:.2f})" in big.reason
