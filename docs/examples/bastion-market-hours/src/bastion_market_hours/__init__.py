"""bastion-market-hours: a Bastion plugin holding orders to the market's hours and a
notional limit, with a session-aware market-data source.

Bastion registers this module (the ``market_hours`` entry point in pyproject.toml
names it) and calls each ``@hookimpl`` function by its hook's name:

* ``check_order`` vetoes an order intent whose notional is over
  ``MARKET_HOURS_MAX_NOTIONAL`` (a market order, which carries no price, is held to
  ``MARKET_HOURS_MAX_MARKET_QUANTITY`` shares instead) and, in paper and live runs,
  one made while the market is closed;
* ``register_sources`` offers the source ``hours`` (``--source hours:AAA,BBB``).

Why the hours are judged only in paper and live: ``check_order`` is given the intent,
the strategy and the environment, and an ``OrderIntent`` carries no time.  In paper
and live the order goes out now, so the wall clock is the order's time.  A backtest
replays the past; its clock is the bar being handled, which the hook is not given,
so there the check cannot tell and leaves the hours alone (the ``hours`` source
makes bars inside the session only).

Only Bastion's public API is used (``bastion``, ``bastion.interfaces``,
``bastion.models``): see docs/reference/api.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

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

#: Where the wall clock is the order's time: orders there go out as they are checked.
WALL_CLOCK_ENVIRONMENTS = frozenset({"paper", "live"})

#: The clock of paper and live runs (tests replace it).
now: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def veto(intent: OrderIntent, limits: settings.Limits, at: datetime | None) -> str | None:
    """Why ``intent`` is refused under ``limits`` at the time ``at`` (``None``: the time
    is not known, so the hours are not judged), or ``None`` when it may go."""
    if at is not None and not limits.session.is_open(at):
        local = at.astimezone(limits.session.zone)
        return (
            f"market_hours: the market is closed at {local:%a %Y-%m-%d %H:%M %Z} "
            f"(open {limits.session.describe()})"
        )
    price = intent.limit_price or intent.stop_price
    if price is not None:
        notional = intent.quantity * price
        if notional > limits.max_notional:
            return (
                f"market_hours: notional {notional:,.2f} is over the limit of "
                f"{limits.max_notional:,.2f}"
            )
    elif intent.quantity > limits.max_market_quantity:
        return (
            f"market_hours: a market order for {intent.quantity} is over the limit of "
            f"{limits.max_market_quantity} (a market order carries no price)"
        )
    return None


@hookimpl
def check_order(
    intent: OrderIntent, strategy: StrategyInfo, environment: Environment
) -> str | None:
    """Veto an order over the limits or outside the session (paper and live), with a
    one-line reason; ``None`` lets it pass.  Settings are read at every call, so a bad
    one raises here, and Bastion then vetoes the order (fail closed)."""
    at = now() if str(environment) in WALL_CLOCK_ENVIRONMENTS else None
    return veto(intent, settings.limits(), at)


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
