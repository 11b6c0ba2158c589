"""Every Bastion hook.  Each docstring here is that hook's reference documentation.

Two pluggy projects live in this module:

* ``"bastion"`` — kernel plugins: built-ins in ``bastion.plugins`` and
  third-party packages in the ``bastion`` entry-point group.  Implement with
  ``@bastion.hookimpl``.
* ``"bastion.strategy"`` — the hooks a strategy file implements.  Implement
  with ``@strategy.hook`` (``from bastion import strategy``).  A strategy's hook
  names and arguments are validated against these specs when it is loaded.

A hook implementation may accept any subset of the spec's arguments, by name.
This module holds specifications only; no behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy

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
def register_brokers() -> Mapping[str, Callable[..., Any]] | None:
    """Offer broker implementations.

    Called once when the kernel starts.  Return a mapping of broker name
    (as used by ``--broker NAME``) to a factory; the factory is called with
    keyword arguments describing the run and returns a broker object.  Return
    ``None`` to offer nothing.  Results of all plugins are merged; two plugins
    offering the same name is a load error naming both.
    """


@hookspec
def register_sources() -> Mapping[str, Callable[..., Any]] | None:
    """Offer signal sources (market data).

    Called once when the kernel starts.  Return a mapping of source scheme
    (the ``csv`` in ``--source csv:PATH``) to a factory that receives the text
    after the colon and returns a source of ``Bar`` objects in time order.
    Return ``None`` to offer nothing.  Duplicate names are a load error.
    """


@hookspec
def register_storages() -> Mapping[str, Callable[..., Any]] | None:
    """Offer storage back-ends.

    Called once when the kernel starts.  Return a mapping of storage name
    (``sqlite``, ``postgres`` …) to a factory that receives the workspace's
    per-environment data directory and returns a store.  Return ``None`` to
    offer nothing.  Duplicate names are a load error.
    """


@hookspec
def register_commands(cli: Any) -> None:
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
def check_order(intent: Any, strategy: Any, environment: str) -> str | None:
    """Veto an order intent before any broker sees it.

    Called for every order intent a strategy makes, after the environment's
    own order limits and before the intent reaches the broker.  Return a
    one-line reason (``str``) to veto the intent, or ``None`` to let it pass.
    ``firstresult``: the first veto stops the chain and the intent is rejected
    with that reason; a plugin that raises vetoes the intent too.

    :param intent: the ``bastion.models.OrderIntent``.
    :param strategy: the ``StrategyInfo`` (name, SHA-256, signer key id) of the
        strategy that asked.
    :param environment: ``"development"``, ``"paper"`` or ``"live"``.
    """


# --------------------------------------------------------------------------
# Kernel plugins: lifecycle and event observers (return values ignored)
# --------------------------------------------------------------------------


@hookspec
def startup(kernel: Any) -> None:
    """The kernel has registered every plugin and is about to do work.

    Called once per process, after plugin discovery and before any strategy
    is loaded.  Return value ignored.

    :param kernel: the ``bastion.Kernel``.
    """


@hookspec
def shutdown(kernel: Any) -> None:
    """The kernel is stopping; release what ``startup`` acquired.

    Called once, also after an error.  Return value ignored.

    :param kernel: the ``bastion.Kernel``.
    """


@hookspec
def strategy_loaded(strategy: Any) -> None:
    """A strategy file passed every check and was admitted.

    Called once per admitted strategy, after its hooks were validated and
    before any market data reaches it.  Return value ignored.

    :param strategy: the ``StrategyInfo``: name, path, SHA-256, signer key id,
        whitelist version, and whether it was admitted unsigned.
    """


@hookspec
def strategy_refused(refusal: Any) -> None:
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
def order_event(order: Any, status: str, reason: str | None) -> None:
    """An order changed state.

    Called when an order is submitted, accepted, rejected (by risk, limits or
    the broker), cancelled or filled.  Return value ignored.

    :param order: the order.
    :param status: ``"submitted"``, ``"accepted"``, ``"rejected"``,
        ``"cancelled"`` or ``"filled"``.
    :param reason: why, for rejections and cancellations; otherwise ``None``.
    """


@hookspec
def fill_event(fill: Any, strategy: Any) -> None:
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
def on_start(ctx: Any) -> None:
    """The run begins; no market data has been seen yet.

    Called once per run, before the first bar.  Return value ignored.

    :param ctx: the strategy's context: its parameters, portfolio snapshot,
        history, logger and the calls that create order intents.
    """


@strategy_spec
def on_bar(ctx: Any, bar: Any) -> None:
    """A new bar closed for a symbol this run trades.

    Called once per bar, in time order across symbols.  Orders asked for here
    fill no earlier than the next price the broker sees.  Return value ignored;
    ask for orders through ``ctx``.

    :param ctx: the strategy's context.
    :param bar: the ``bastion.models.Bar`` that just closed.
    """


@strategy_spec
def on_fill(ctx: Any, fill: Any) -> None:
    """One of this strategy's orders was (partly) filled.

    Called after the fill is booked, so ``ctx`` already reflects it.
    Return value ignored.

    :param ctx: the strategy's context.
    :param fill: the ``bastion.models.Fill``.
    """


@strategy_spec
def on_reject(ctx: Any, intent: Any, reason: str) -> None:
    """An order intent of this strategy was refused by a limit, a risk check or the broker.

    Called once per refused intent, before the next event reaches the
    strategy.  Return value ignored.

    :param ctx: the strategy's context.
    :param intent: the refused ``bastion.models.OrderIntent``.
    :param reason: the one-line reason.
    """


@strategy_spec
def on_stop(ctx: Any) -> None:
    """The run ends (data exhausted or the kernel is stopping).

    Called once; orders asked for here are not executed.  Return value ignored.

    :param ctx: the strategy's context.
    """
