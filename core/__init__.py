"""Bastion: a trading kernel that runs only signed, whitelisted strategy code.

The public API is what ``__all__`` lists.  Strategy authors need only
``from bastion import strategy``; plugin authors need ``bastion.hookimpl`` and
the contracts in :mod:`bastion.hookspecs`.

The names below are imported lazily (PEP 562): ``import bastion.strategy`` or
``import bastion.models`` — all a sandboxed strategy worker needs — loads
neither the kernel nor pluggy's plugin manager nor ``cryptography``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: The plugin API's version: ``MAJOR.MINOR``.  A minor release only adds; a major
#: one may remove or change what the public modules offer (docs/extend/versioning.md).
#: A plugin may declare the major version it was written for as a module (or object)
#: attribute ``BASTION_API = 1``; the kernel refuses one written for another.
API_VERSION = "1.0"

if TYPE_CHECKING:
    import pluggy

    from ._environment import Environment
    from ._errors import (
        BastionError,
        ConfigError,
        FormatError,
        PluginError,
        TrustError,
        one_line,
        printable,
    )
    from ._kernel import BUILTIN_PLUGINS, Kernel, PluginInfo
    from ._loader import Gate, Refusal, Status, Strategy, StrategyInfo
    from ._workspace import Workspace

    hookimpl: pluggy.HookimplMarker

__all__ = [
    "API_VERSION",
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
    "one_line",
    "printable",
]

_LAZY = {
    "BUILTIN_PLUGINS": "._kernel",
    "BastionError": "._errors",
    "ConfigError": "._errors",
    "Environment": "._environment",
    "FormatError": "._errors",
    "Gate": "._loader",
    "Kernel": "._kernel",
    "PluginError": "._errors",
    "PluginInfo": "._kernel",
    "Refusal": "._loader",
    "Status": "._loader",
    "Strategy": "._loader",
    "StrategyInfo": "._loader",
    "TrustError": "._errors",
    "Workspace": "._workspace",
    "one_line": "._errors",
    "printable": "._errors",
}


def __getattr__(name: str) -> Any:
    if name == "hookimpl":
        import pluggy

        value: Any = pluggy.HookimplMarker("bastion")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module 'bastion' has no attribute {name!r}")
    globals()[name] = value  # once resolved, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
