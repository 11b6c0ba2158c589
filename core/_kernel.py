"""The kernel: one pluggy manager, built-ins first, then entry points, then strategies.

Built-in plugins are listed in :data:`BUILTIN_PLUGINS` and registered exactly
like third-party ones.  The :class:`Kernel` is a small typed facade over
``pm.hook`` so the rest of Bastion calls methods, not hook names.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import pluggy

from . import hookspecs
from ._errors import PluginError, one_line
from ._loader import Refusal, Strategy, StrategyInfo
from ._secrets import Secrets

__all__ = ["BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "Kernel", "PluginInfo"]

ENTRY_POINT_GROUP = "bastion"
DISABLE_VAR = "BASTION_DISABLE_PLUGINS"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "bastion.plugins.signing",
    "bastion.plugins.eventlog",
    "bastion.plugins.sim",
    "bastion.plugins.csv_source",
    "bastion.plugins.synthetic",
    "bastion.plugins.sqlite_store",
    "bastion.plugins.backtest",
    "bastion.plugins.logs",
    "bastion.plugins.ibkr",
    "bastion.plugins.run",
)


@attrs.frozen
class PluginInfo:
    """One row of ``bastion plugins``."""

    name: str
    origin: str  # "built-in", "entry point" or "strategy file"
    source: str  # module, distribution or file
    version: str | None
    hooks: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _disabled() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_VAR, "").split(",") if name.strip()}


class Kernel:
    """Discovers plugins and is the typed way to call their hooks."""

    def __init__(self, *, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._origins: dict[str, tuple[str, str, str | None]] = {}
        self.strategies: list[Strategy] = []
        disabled = _disabled()
        from ._version import __version__

        for module_name in BUILTIN_PLUGINS:
            if module_name in disabled:
                continue
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                raise PluginError(
                    f"built-in plugin {module_name} failed to import: {type(exc).__name__}: "
                    f"{exc}; reinstall Bastion (pip install -e .) or set "
                    f"{DISABLE_VAR}={module_name}"
                ) from None
            self._register(module, module_name, ("built-in", module_name, __version__))
        if entry_points:
            self._load_entry_points(disabled)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(self._describe(exc)) from None

    # -- discovery -------------------------------------------------------------------

    def _register(self, plugin: object, name: str, origin: tuple[str, str, str | None]) -> None:
        if self.pm.get_plugin(name) is not None:
            raise PluginError(
                f"plugin name {name!r} from {origin[1]} is already taken by "
                f"{self._origins[name][1]}; rename one of the entry points"
            )
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            self._origins[name] = origin
            raise PluginError(self._describe(exc, name)) from None
        self._origins[name] = origin

    def _load_entry_points(self, disabled: set[str]) -> None:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in disabled:
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else None
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} ({ep.value}, from {dist}) failed to import: "
                    f"{type(exc).__name__}: {exc}; fix or uninstall {dist}, or set "
                    f"{DISABLE_VAR}={ep.name}"
                ) from None
            self._register(plugin, ep.name, ("entry point", f"{dist} ({ep.value})", version))

    def _describe(self, exc: pluggy.PluginValidationError, name: str | None = None) -> str:
        name = name or self.pm.get_name(exc.plugin) or "?"
        origin = self._origins.get(name, ("?", "?", None))
        detail = one_line(str(exc))
        return (
            f"plugin {name!r} ({origin[0]}: {origin[1]}) is invalid: {detail}; check its hook "
            f"names and arguments against docs/reference/hooks.md, or set {DISABLE_VAR}={name}"
        )

    # -- introspection -----------------------------------------------------------------

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def plugins(self) -> list[PluginInfo]:
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            origin, source, version = self._origins.get(name, ("registered", repr(plugin), None))
            hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(plugin) or []))
            rows.append(PluginInfo(name, origin, source, version, hooks))
        for strategy in self.strategies:
            info = strategy.info
            rows.append(
                PluginInfo(
                    name=f"strategy:{info.name}",
                    origin="strategy file",
                    source=str(info.path),
                    version=f"sha256:{info.sha256}",
                    hooks=tuple(strategy.implemented_hooks()),
                )
            )
        return rows

    # -- typed facade over pm.hook ---------------------------------------------------------

    def _registry(self, hook_name: str, what: str) -> dict[str, Callable[..., Any]]:
        """Merge the ``{name: factory}`` mappings of every plugin implementing ``hook_name``."""
        merged: dict[str, Callable[..., Any]] = {}
        owner: dict[str, str] = {}
        for impl in getattr(self.hook, hook_name).get_hookimpls():  # registration order
            offered: Mapping[str, Callable[..., Any]] | None = impl.function()
            for key, factory in (offered or {}).items():
                if key in merged:
                    raise PluginError(
                        f"plugins {owner[key]!r} and {impl.plugin_name!r} both offer a {what} "
                        f"named {key!r}; disable one with {DISABLE_VAR}"
                    )
                merged[key], owner[key] = factory, impl.plugin_name
        return merged

    def brokers(self) -> dict[str, Callable[..., Any]]:
        return self._registry("register_brokers", "broker")

    def sources(self) -> dict[str, Callable[..., Any]]:
        return self._registry("register_sources", "source")

    def storages(self) -> dict[str, Callable[..., Any]]:
        return self._registry("register_storages", "storage")

    def add_commands(self, cli: Any) -> None:
        self.hook.register_commands(cli=cli)

    def secrets(self, environment: str, workspace: Path) -> Secrets:
        """Secret lookup (variables, the secrets file, then the ``get_secret`` hooks)."""
        return Secrets(environment, workspace, self.hook.get_secret)

    def check_order(self, intent: Any, strategy: StrategyInfo, environment: str) -> str | None:
        """The first veto reason from a risk plugin, or ``None``.  A crashing check vetoes."""
        try:
            veto: str | None = self.hook.check_order(
                intent=intent, strategy=strategy, environment=environment
            )
        except Exception as exc:
            return f"risk check failed ({type(exc).__name__}: {exc}); order refused"
        return veto

    def startup(self) -> None:
        self.hook.startup(kernel=self)

    def shutdown(self) -> None:
        self.hook.shutdown(kernel=self)

    def strategy_loaded(self, strategy: Strategy) -> None:
        self.strategies.append(strategy)
        self.hook.strategy_loaded(strategy=strategy.info)

    def strategy_refused(self, refusal: Refusal) -> None:
        self.hook.strategy_refused(refusal=refusal)
