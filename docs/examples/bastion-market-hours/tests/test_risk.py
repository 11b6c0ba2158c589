"""The risk check on its own, through the kernel, and in a sandboxed backtest.

bastion_run comes from Bastion's pytest plugin (bastion.testing), which pytest loads
by itself wherever bastion-kernel is installed.
"""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from bastion import Kernel
from bastion.models import OrderIntent

import bastion_market_hours as plugin
from bastion_market_hours import settings
from bastion_market_hours.source import HoursSource

STRATEGIES = Path(__file__).parent / "strategies"
TUESDAY_NOON = datetime(2024, 1, 2, 17, 0, tzinfo=UTC)  # 12:00 in New York


def check(intent, environment="development"):
    return plugin.check_order(intent=intent, strategy=None, environment=environment)


def limit(quantity, price):
    return OrderIntent("AAA", "buy", quantity, type="limit", limit_price=price)


@pytest.fixture
def clock(monkeypatch):
    """Set the wall clock the check reads in paper and live."""

    def set_to(moment):
        monkeypatch.setattr(plugin, "now", lambda: moment)

    set_to(TUESDAY_NOON)
    return set_to


def test_an_order_over_the_notional_is_vetoed():
    """A limit order worth more than the limit is vetoed, the reason naming the plugin."""
    assert check(limit(1_000, 100)) == (
        "market_hours: notional 100,000.00 is over the limit of 50,000.00"
    )
    assert check(limit(10, 100)) is None


def test_a_market_order_is_held_to_a_quantity():
    """A market order carries no price: it is held to MARKET_HOURS_MAX_MARKET_QUANTITY."""
    assert check(OrderIntent("AAA", "sell", 1_000)) is None
    assert "a market order for 1001 is over the limit of 1000" in check(
        OrderIntent("AAA", "sell", 1_001)
    )


def test_limits_come_from_the_environment(monkeypatch):
    """MARKET_HOURS_MAX_NOTIONAL and MARKET_HOURS_MAX_MARKET_QUANTITY change the limits."""
    monkeypatch.setenv(settings.MAX_NOTIONAL_VAR, "1_000")
    monkeypatch.setenv(settings.MAX_MARKET_QUANTITY_VAR, "5")
    assert "over the limit of 1,000.00" in check(limit(11, 100))
    assert "over the limit of 5" in check(OrderIntent("AAA", "buy", 6))


@pytest.mark.parametrize(
    ("moment", "open_"),
    [
        (TUESDAY_NOON, True),
        (datetime(2024, 1, 2, 14, 30, tzinfo=UTC), True),  # 09:30 EST: the open
        (datetime(2024, 1, 2, 14, 29, tzinfo=UTC), False),  # 09:29 EST
        (datetime(2024, 1, 2, 21, 0, tzinfo=UTC), False),  # 16:00 EST: the close
        (datetime(2024, 7, 2, 13, 45, tzinfo=UTC), True),  # 09:45 EDT (summer time)
        (datetime(2024, 1, 6, 17, 0, tzinfo=UTC), False),  # a Saturday
    ],
)
def test_paper_and_live_orders_keep_to_the_session(clock, moment, open_):
    """In paper and live the order goes out now: outside 09:30-16:00 New York time on
    weekdays it is vetoed, with the local time and the session in the reason."""
    clock(moment)
    for environment in ("paper", "live"):
        reason = check(limit(10, 100), environment)
        if open_:
            assert reason is None
        else:
            assert reason.startswith("market_hours: the market is closed at ")
            assert reason.endswith("(open 09:30-16:00 America/New_York, Monday to Friday)")


def test_backtests_do_not_judge_the_hours(clock):
    """check_order is given no bar time, so in development (backtests) the wall clock
    says nothing about the order and the hours are not judged."""
    clock(datetime(2024, 1, 6, 17, 0, tzinfo=UTC))
    assert check(limit(10, 100), "development") is None


def test_a_bad_setting_vetoes_through_the_kernel(monkeypatch):
    """A setting that cannot be read raises in check_order; Bastion then vetoes the
    order (fail closed), naming the plugin and the error."""
    monkeypatch.setenv(settings.MAX_NOTIONAL_VAR, "lots")
    with pytest.raises(ValueError, match="MARKET_HOURS_MAX_NOTIONAL='lots'"):
        check(limit(10, 100))
    kernel = Kernel()
    reason = kernel.check_order(limit(10, 100), None, "development")
    assert reason.startswith("risk check of plugin 'market_hours' failed (ValueError: ")
    assert reason.endswith("order refused")


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
