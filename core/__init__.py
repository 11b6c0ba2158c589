"""Bastion: a trading kernel that runs only signed, whitelisted strategy code.

The public API is what ``__all__`` lists.  Strategy authors need only
``from bastion import strategy``; plugin authors need ``bastion.hookimpl`` and
the contracts in :mod:`bastion.hookspecs`.
"""

from __future__ import annotations

import pluggy

from ._environment import Environment
from ._errors import BastionError, ConfigError, FormatError, PluginError, TrustError
from ._kernel import BUILTIN_PLUGINS, Kernel, PluginInfo
from ._loader import Gate, Refusal, Status, Strategy, StrategyInfo
from ._version import __version__
from ._workspace import Workspace

__all__ = [
    "BUILTIN_PLUGINS",
    "BastionError",
    "ConfigError",
    "Environment",
    "FormatError",
    "Gate",
    "Kernel",
    "PluginError",
    "PluginInfo",
    "Refusal",
    "Status",
    "Strategy",
    "StrategyInfo",
    "TrustError",
    "Workspace",
    "__version__",
    "hookimpl",
]

hookimpl = pluggy.HookimplMarker("bastion")
