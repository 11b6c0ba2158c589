"""Every Bastion hook.  Each docstring here is that hook's reference documentation.

Two pluggy projects live in this module:

* ``"bastion"`` — kernel plugins: built-ins in ``bastion.plugins`` and
  third-party packages in the ``bastion`` entry-point group.  Implement with
  ``@bastion.hookimpl``.
* ``"bastion.strategy"`` — the hooks a strategy file implements.  Implement
  with ``@strategy.hook`` (``from bastion import strategy``).  A strategy's hook
  names and arguments are validated against these specs when it is loaded.

A hook implementation may accept any subset of the spec's arguments, by name.
Kernel hooks are called one implementation at a time: a plugin that raises is
reported with its name and the hook (``bastion: plugin 'x' failed in hook ...``)
and the kernel carries on without that call; a raising ``check_order`` vetoes the
order (fail closed), a raising ``get_secret`` passes to the next plugin.  Hook
wrappers are refused on kernel hooks.  This module holds specifications only; no
behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from ._context import StrategyContext
    from ._environment import Environment
    from ._kernel import Kernel
    from ._loader import Refusal, StrategyInfo
    from .interfaces import Broker, Offer, PluginContext, Source, Store
    from .models import Bar, Fill, Order, OrderIntent

    BrokerFactory = Callable[[str, PluginContext], Broker]
    SourceFactory = Callable[[str, PluginContext], Source]
    StoreFactory = Callable[[str, PluginContext], Store]

__all__ = [
    "check_order",
    "fill_event",
    "get_secret",
    "hookspec",
    "on_bar",
    "on_fill",
    "on_reject",
    "on_start",
    "on_stop",
    "order_event",
    "register_brokers",
    "register_commands",
    "register_sources",
    "register_storages",
    "shutdown",
    "startup",
    "strategy_loaded",
    "strategy_refused",
    "strategy_spec",
]

hookspec = pluggy.HookspecMarker("bastion")
strategy_spec = pluggy.HookspecMarker("bastion.strategy")

# --------------------------------------------------------------------------
# Kernel plugins: what the kernel can be given
# --------------------------------------------------------------------------


@hookspec
def register_brokers() -> Iterable[Offer[Broker]] | Mapping[str, BrokerFactory] | None:
    """Offer brokers (``bastion.interfaces.Broker``).

    Called whenever the kernel looks up a broker (``--broker NAME[:SPEC]``,
    ``bastion plugins``).  Return :class:`bastion.interfaces.Offer` objects (name,
    factory, description, options, allowed environments), or the short form, a
    mapping of name to factory; ``None`` offers nothing.  Every factory is called
    as ``factory(spec, context)``: ``spec`` is the text after ``NAME:`` (``""``
    when there is none), ``context`` the :class:`bastion.interfaces.PluginContext`
    (environment, data directory, settings, secrets, stop event).  Results of all
    plugins are merged; two plugins offering the same name is an error naming both.
    A plugin that raises here is reported and its offers are left out.
    """


@hookspec
def register_sources() -> Iterable[Offer[Source]] | Mapping[str, SourceFactory] | None:
    """Offer signal sources: market data (``bastion.interfaces.Source``).

    Called whenever the kernel looks up a source (``--source NAME[:SPEC]``, e.g.
    the ``csv`` in ``--source csv:PATH``).  Return
    :class:`bastion.interfaces.Offer` objects, or a mapping of name to factory;
    ``None`` offers nothing.  The factory is called as ``factory(spec, context)``
    and returns a source of ``Bar`` objects in time order, having validated its
    data.  Duplicate names are an error naming both plugins; a plugin that raises
    here is reported and its offers are left out.
    """


@hookspec
def register_storages() -> Iterable[Offer[Store]] | Mapping[str, StoreFactory] | None:
    """Offer storage back-ends (``bastion.interfaces.Store``).

    Called whenever the kernel looks up a storage (``--storage NAME[:SPEC]``:
    ``sqlite``, ``postgresql://…``).  Return :class:`bastion.interfaces.Offer`
    objects, or a mapping of name to factory; ``None`` offers nothing.  The
    factory is called as ``factory(spec, context)``; ``context.data_dir`` is the
    environment's data directory.  Stores keep rows; the audit chain over them is
    computed and verified by the kernel (:mod:`bastion.audit`).  Duplicate names
    are an error naming both plugins; a plugin that raises here is reported and its
    offers are left out.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``bastion`` command line.

    Called once before the command line is parsed, with the root
    ``click.Group``.  Add commands with ``cli.add_command(...)`` or
    ``@cli.command()``.  Return value ignored.

    :param cli: the root ``click.Group`` of the ``bastion`` command.
    """


@hookspec(firstresult=True)
def get_secret(name: str, environment: str) -> str | None:
    """Supply a secret (a broker account id, an API key) that Bastion did not find itself.

    Called when a plugin or the kernel asks for the secret ``name`` and neither
    its environment variable (``BASTION_SECRET_<NAME>``, dots and dashes as
    underscores) nor the secrets file holds it; so a vault or a cloud secret
    manager can be added as a plugin.  Return the value, or ``None`` to pass.
    ``firstresult``: the first value wins.  Bastion never logs, stores or
    prints the value (log lines that would contain it are redacted), and never
    hands it to strategy code.

    :param name: the secret's name, e.g. ``"ibkr.account"``.
    :param environment: ``"development"``, ``"paper"`` or ``"live"``.
    """


# --------------------------------------------------------------------------
# Kernel plugins: risk
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def check_order(
    intent: OrderIntent,
    strategy: StrategyInfo,
    environment: Environment,
    ts: datetime,
    last_price: Decimal | None,
) -> str | None:
    """Veto an order intent before any broker sees it.

    Called for every order intent a strategy makes, after the environment's
    own order limits and before the intent reaches the broker.  Return a
    one-line reason (``str``) to veto the intent, or ``None`` to let it pass.
    ``firstresult``: the first veto stops the chain and the intent is rejected
    with that reason; a plugin that raises vetoes the intent too.

    :param intent: the ``bastion.models.OrderIntent``.
    :param strategy: the ``StrategyInfo`` (name, SHA-256, signer key id) of the
        strategy that asked.
    :param environment: the ``bastion.Environment`` (a ``str``: ``"development"``,
        ``"paper"`` or ``"live"``).
    :param ts: when the intent was made (aware, UTC): the close time of the bar
        (or event) the strategy was answering — in a backtest the bar's time, not
        the wall clock — so a trading-hours check judges the market's clock.
    :param last_price: the last price Bastion saw for ``intent.symbol`` (a bar's
        close) as a ``Decimal``, or ``None`` before the first one: what a
        notional check values a market order at.

    Take only the arguments you need (pluggy passes what a function names).
    """


# --------------------------------------------------------------------------
# Kernel plugins: lifecycle and event observers (return values ignored)
# --------------------------------------------------------------------------


@hookspec
def startup(kernel: Kernel) -> None:
    """The kernel has registered every plugin and is about to do work.

    Called once per process, after plugin discovery and before any strategy
    is loaded.  Return value ignored.

    :param kernel: the ``bastion.Kernel``.
    """


@hookspec
def shutdown(kernel: Kernel) -> None:
    """The kernel is stopping; release what ``startup`` acquired.

    Called once, also after an error.  Return value ignored.

    :param kernel: the ``bastion.Kernel``.
    """


@hookspec
def strategy_loaded(strategy: StrategyInfo) -> None:
    """A strategy file passed every check and was admitted.

    Called once per admitted strategy, after its hooks were validated and
    before any market data reaches it.  Return value ignored.

    :param strategy: the ``StrategyInfo``: name, path, SHA-256, signer key id,
        whitelist version, and whether it was admitted unsigned.
    """


@hookspec
def strategy_refused(refusal: Refusal) -> None:
    """A strategy file was refused at the door.

    Called once per refused file with the ``Refusal`` (file, status such as
    ``hash-mismatch``, and a one-line reason).  A file refused by a
    verification check (any status up to ``signature-mismatch``) was never
    compiled or run; one refused as ``forbidden-import``, ``load-error`` or
    ``bad-interface`` passed verification and its module body ran, but it is
    not registered and receives no events.  Return value ignored.

    :param refusal: the ``bastion.Refusal``.
    """


@hookspec
def order_event(order: Order, status: str, reason: str | None) -> None:
    """An order changed state.

    Called when an order is submitted, accepted, rejected (by risk, limits or
    the broker), cancelled or filled.  Return value ignored.

    :param order: the order.
    :param status: ``"submitted"``, ``"accepted"``, ``"rejected"``,
        ``"cancelled"`` or ``"filled"``.
    :param reason: why, for rejections and cancellations; otherwise ``None``.
    """


@hookspec
def fill_event(fill: Fill, strategy: StrategyInfo) -> None:
    """A fill was booked to a strategy's portfolio.

    Called after the portfolio and the store recorded it, before the
    strategy's own ``on_fill``.  Return value ignored.

    :param fill: the ``bastion.models.Fill``.
    :param strategy: the ``StrategyInfo`` of the strategy that owns the order.
    """


# --------------------------------------------------------------------------
# Strategy hooks (project "bastion.strategy")
# --------------------------------------------------------------------------


@strategy_spec
def on_start(ctx: StrategyContext) -> None:
    """The run begins; no market data has been seen yet.

    Called once per run, before the first bar.  Return value ignored.

    :param ctx: the strategy's context: its parameters, portfolio snapshot,
        history, logger and the calls that create order intents.
    """


@strategy_spec
def on_bar(ctx: StrategyContext, bar: Bar) -> None:
    """A new bar closed for a symbol this run trades.

    Called once per bar, in time order across symbols.  Orders asked for here
    fill no earlier than the next price the broker sees.  Return value ignored;
    ask for orders through ``ctx``.

    :param ctx: the strategy's context.
    :param bar: the ``bastion.models.Bar`` that just closed.
    """


@strategy_spec
def on_fill(ctx: StrategyContext, fill: Fill) -> None:
    """One of this strategy's orders was (partly) filled.

    Called after the fill is booked, so ``ctx`` already reflects it.
    Return value ignored.

    :param ctx: the strategy's context.
    :param fill: the ``bastion.models.Fill``.
    """


@strategy_spec
def on_reject(ctx: StrategyContext, intent: OrderIntent, reason: str) -> None:
    """An order intent of this strategy was refused by a limit, a risk check or the broker.

    Called once per refused intent, before the next event reaches the
    strategy.  Return value ignored.

    :param ctx: the strategy's context.
    :param intent: the refused ``bastion.models.OrderIntent``.
    :param reason: the one-line reason.
    """


@strategy_spec
def on_stop(ctx: StrategyContext) -> None:
    """The run ends (data exhausted or the kernel is stopping).

    Called once; orders asked for here are not executed.  Return value ignored.

    :param ctx: the strategy's context.
    """
