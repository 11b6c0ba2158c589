"""The API a strategy file sees.

    from bastion import strategy

    PARAMS = {"fast": 10, "slow": 30}

    @strategy.hook
    def on_bar(ctx, bar):
        ...

``hook`` marks a function as an implementation of a ``bastion.strategy`` hook
(see :mod:`bastion.hookspecs`).  This module is one of the few a strategy may
import; it exposes nothing that reaches the kernel, a broker or a file.
"""

from __future__ import annotations

import pluggy

from .models import Bar, Fill, OrderIntent, OrderType, Side

__all__ = ["PROJECT", "Bar", "Fill", "OrderIntent", "OrderType", "Side", "hook"]

PROJECT = "bastion.strategy"
hook = pluggy.HookimplMarker(PROJECT)
