"""bastion-market-hours: a Bastion plugin holding orders to the market's hours and a
notional limit, with a session-aware market-data source.

Bastion registers this module (the ``market_hours`` entry point in pyproject.toml
names it) and calls each ``@hookimpl`` function by its hook's name:

* ``check_order`` vetoes an order intent made while the market is closed (judged by
  ``ts``, the close time of the bar the strategy was answering: the market's clock, in
  backtests as in paper and live) and one whose notional is over
  ``MARKET_HOURS_MAX_NOTIONAL`` (a market order valued at ``last_price``, the last
  close Bastion saw for its symbol; with no price yet it is vetoed);
* ``register_sources`` offers the source ``hours`` (``--source hours:AAA,BBB``).

Only Bastion's public API is used (``bastion``, ``bastion.interfaces``,
``bastion.models``): see docs/reference/api.md.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from bastion import Environment, StrategyInfo, hookimpl
from bastion.interfaces import Offer, PluginContext
from bastion.models import OrderIntent

from . import settings
from .source import HoursSource

__all__ = ["BASTION_API", "check_order", "register_sources"]
__version__ = "0.1.0"

#: The major version of Bastion's plugin API this was written for (``bastion.API_VERSION``
#: is ``MAJOR.MINOR``): Bastion refuses to load the plugin under another major version.
BASTION_API = "1"


def veto(
    intent: OrderIntent, limits: settings.Limits, ts: datetime, last_price: Decimal | None
) -> str | None:
    """Why ``intent``, made at ``ts`` with ``last_price`` the last price seen for its
    symbol, is refused under ``limits``, or ``None`` when it may go."""
    if not limits.session.is_open(ts):
        local = ts.astimezone(limits.session.zone)
        return (
            f"market_hours: the market is closed at {local:%a %Y-%m-%d %H:%M %Z} "
            f"(open {limits.session.describe()})"
        )
    if intent.limit_price is not None:
        price, at = intent.limit_price, "the limit price"
    elif intent.stop_price is not None:
        price, at = intent.stop_price, "the stop price"
    elif last_price is not None:
        price, at = last_price, "the last price"
    else:
        return (
            f"market_hours: no price seen yet for {intent.symbol}, so the notional of a "
            "market order cannot be checked"
        )
    notional = intent.quantity * price
    if notional > limits.max_notional:
        return (
            f"market_hours: notional {notional:,.2f} ({intent.quantity} at {at} {price:,.2f}) "
            f"is over the limit of {limits.max_notional:,.2f}"
        )
    return None


@hookimpl
def check_order(
    intent: OrderIntent,
    strategy: StrategyInfo,
    environment: Environment,
    ts: datetime,
    last_price: Decimal | None,
) -> str | None:
    """Veto an order made outside the session or over the notional limit, with a
    one-line reason; ``None`` lets it pass.  ``ts`` is the market's clock (in a backtest
    the bar's time), so backtests, paper and live are judged alike.  Settings are read
    at every call, so a bad one raises here, and Bastion then vetoes the order (fail
    closed)."""
    return veto(intent, settings.limits(), ts, last_price)


@hookimpl
def register_sources() -> list[Offer[HoursSource]]:
    """Offer the source ``hours``: ``--source hours:AAA,BBB[,days=N][,minutes=M][,seed=S]``."""

    def factory(spec: str, context: PluginContext) -> HoursSource:
        return HoursSource.open(spec)

    return [
        Offer(
            "hours",
            factory,
            description="intraday bars of a seeded random walk, inside market hours only",
            options="SYMBOL,... [days=20] [minutes=30] [seed=1] [start=2024-01-02]",
        )
    ]
