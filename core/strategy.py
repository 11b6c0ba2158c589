"""The API a strategy file sees.

    from bastion import strategy

    PARAMS = {"fast": 10, "slow": 30}

    @strategy.hook
    def on_bar(ctx, bar):
        ...

``hook`` marks a function as an implementation of a ``bastion.strategy`` hook
(see :mod:`bastion.hookspecs`).  This module is one of the few a strategy may
import; it exposes nothing that reaches the kernel, a broker or a file.

It imports neither pluggy nor the kernel (a sandboxed worker loads it before
it locks itself down): ``hook`` writes the same marker pluggy's
``HookimplMarker("bastion.strategy")`` would, which the kernel's plugin
manager reads when it validates the file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from ._context import StrategyContext
from .models import Bar, Fill, OrderIntent, OrderType, Side

__all__ = [
    "PROJECT",
    "Bar",
    "Fill",
    "OrderIntent",
    "OrderType",
    "Side",
    "StrategyContext",
    "hook",
]

PROJECT = "bastion.strategy"
MARKER = PROJECT + "_impl"  # the attribute pluggy looks for

_F = TypeVar("_F", bound=Callable[..., Any])


@overload
def hook(function: _F, *, specname: str | None = None) -> _F: ...


@overload
def hook(function: None = None, *, specname: str | None = None) -> Callable[[_F], _F]: ...


def hook(function: _F | None = None, *, specname: str | None = None) -> _F | Callable[[_F], _F]:
    """Mark ``function`` as the strategy's implementation of the hook of its name
    (or of ``specname``): ``@strategy.hook`` or ``@strategy.hook(specname="on_bar")``."""

    def mark(func: _F) -> _F:
        setattr(
            func,
            MARKER,
            {
                "wrapper": False,
                "hookwrapper": False,
                "optionalhook": False,
                "tryfirst": False,
                "trylast": False,
                "specname": specname,
            },
        )
        return func

    return mark if function is None else mark(function)
