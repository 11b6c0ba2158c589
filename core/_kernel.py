"""The kernel: one pluggy manager, built-ins first, then entry points, then strategies.

Built-in plugins are listed in :data:`BUILTIN_PLUGINS` and registered exactly
like third-party ones.  The :class:`Kernel` is a small typed facade over
``pm.hook`` so the rest of Bastion calls methods, not hook names.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import pluggy

from . import hookspecs
from ._environment import Environment
from ._errors import ConfigError, PluginError, one_line, printable
from ._loader import Refusal, Strategy, StrategyInfo
from ._secrets import Secrets
from .interfaces import Broker, Offer, PluginContext, Source, Store
from .models import OrderIntent

__all__ = ["BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "Kernel", "PluginFailure", "PluginInfo"]

_PLURAL = {"broker": "brokers", "source": "sources", "storage": "storages"}

ENTRY_POINT_GROUP = "bastion"
DISABLE_VAR = "BASTION_DISABLE_PLUGINS"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "bastion.plugins.signing",
    "bastion.plugins.eventlog",
    "bastion.plugins.sim",
    "bastion.plugins.csv_source",
    "bastion.plugins.synthetic",
    "bastion.plugins.sqlite_store",
    "bastion.plugins.postgres_store",
    "bastion.plugins.backtest",
    "bastion.plugins.bar_store",
    "bastion.plugins.logs",
    "bastion.plugins.ibkr",
    "bastion.plugins.run",
    "bastion.plugins.scaffold",
    "bastion.plugins.sweep",
)


@attrs.frozen
class PluginInfo:
    """One row of ``bastion plugins``."""

    name: str
    origin: str  # "built-in", "entry point", "registered" or "strategy file"
    source: str  # module, distribution or file
    version: str | None
    hooks: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class PluginFailure:
    """A plugin raised in a hook: which plugin, which hook, and the exception (one line).
    Bastion reports it and carries on without that call."""

    plugin: str
    hook: str
    error: str


# Hooks whose every implementation is called on its own, so that one failing plugin
# cannot silence the others: a hook wrapper on them could not be isolated, so none is
# accepted.
_ISOLATED_HOOKS = frozenset(
    {
        "register_brokers",
        "register_sources",
        "register_storages",
        "register_commands",
        "get_secret",
        "check_order",
        "startup",
        "shutdown",
        "strategy_loaded",
        "strategy_refused",
        "order_event",
        "fill_event",
    }
)


def _disabled(config: Iterable[str] = ()) -> set[str]:
    names = {name.strip() for name in os.environ.get(DISABLE_VAR, "").split(",") if name.strip()}
    return names | set(config)


class Kernel:
    """Discovers plugins and is the typed way to call their hooks."""

    def __init__(self, *, entry_points: bool = True, disable: Iterable[str] = ()) -> None:
        """Register the built-ins, then (``entry_points``) installed plugins, except
        those named in ``BASTION_DISABLE_PLUGINS`` or ``disable`` (bastion.toml's
        ``[plugins] disable``)."""
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._origins: dict[str, tuple[str, str, str | None]] = {}
        self.strategies: list[Strategy] = []
        self.failures: list[PluginFailure] = []
        self._reported: set[tuple[str, str]] = set()
        disabled = _disabled(disable)
        self.disabled = frozenset(disabled)
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

    def register(
        self, plugin: object, name: str, *, source: str = "", version: str | None = None
    ) -> None:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions) under
        ``name``, with the same checks as an installed plugin (API version, hook
        signatures, no wrappers on isolated hooks).  For tests and embedding: it is
        listed by ``bastion plugins`` with the origin ``registered``.

        :raises PluginError: the name is taken, or the plugin is refused (with why).
        """
        self._register(plugin, name, ("registered", source or type(plugin).__module__, version))
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            raise PluginError(self._describe(exc, name)) from None

    def _register(self, plugin: object, name: str, origin: tuple[str, str, str | None]) -> None:
        from . import API_VERSION

        wanted = getattr(plugin, "BASTION_API", None)
        if wanted is not None and str(wanted).split(".")[0] != API_VERSION.split(".")[0]:
            raise PluginError(
                f"plugin {name!r} ({origin[0]}: {origin[1]}) was written for Bastion's plugin "
                f"API {wanted}, this Bastion offers {API_VERSION}; install a version of the "
                f"plugin made for API {API_VERSION.split('.')[0]}, or set {DISABLE_VAR}={name}"
            )
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
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.name not in _ISOLATED_HOOKS:
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                    self.pm.unregister(plugin)
                    raise PluginError(
                        f"plugin {name!r} ({origin[0]}: {origin[1]}) implements {caller.name} "
                        "as a hook wrapper; Bastion calls each implementation of that hook on "
                        f"its own and takes no wrappers there; drop wrapper=True, or set "
                        f"{DISABLE_VAR}={name}"
                    )

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

    # -- failures of plugin code ---------------------------------------------------------

    def _report(self, plugin: str, hook: str, exc: BaseException) -> None:
        """A plugin raised in ``hook``: say so (once per plugin and hook), carry on."""
        detail = printable(f"{type(exc).__name__}: {exc}")
        self.failures.append(PluginFailure(plugin, hook, detail))
        if (plugin, hook) in self._reported:
            return
        self._reported.add((plugin, hook))
        from ._logging import get_logger

        get_logger().error("plugin_failed", plugin=plugin, hook=hook, error=detail)
        sys.stderr.write(
            f"bastion: plugin {plugin!r} failed in hook {hook} ({detail}); Bastion carries on "
            f"without it; fix or upgrade the plugin, or set {DISABLE_VAR}={plugin}\n"
        )

    def _calls(self, hook_name: str) -> list[tuple[str, Callable[..., Any], tuple[str, ...]]]:
        """``(plugin, function, argument names)`` of each implementation, in call order."""
        return [
            (impl.plugin_name, impl.function, tuple(impl.argnames))
            for impl in reversed(getattr(self.hook, hook_name).get_hookimpls())
        ]

    def notifier(self, hook_name: str) -> Callable[..., None] | None:
        """A function calling every implementation of an observer hook with keyword
        arguments, each on its own: one that raises is reported (plugin and hook) and
        the others still run.  ``None`` when no plugin implements the hook."""
        calls = self._calls(hook_name)
        if not calls:
            return None

        def notify(**kwargs: Any) -> None:
            for plugin, function, argnames in calls:
                try:
                    function(*[kwargs[name] for name in argnames])
                except Exception as exc:
                    self._report(plugin, hook_name, exc)

        return notify

    def _notify(self, hook_name: str, **kwargs: Any) -> None:
        notify = self.notifier(hook_name)
        if notify is not None:
            notify(**kwargs)

    # -- typed facade over pm.hook ---------------------------------------------------------

    def _registry(self, hook_name: str, what: str) -> dict[str, Offer[Any]]:
        """Every plugin's offers for ``hook_name``, by name.  A plugin that raises or
        returns something else than offers is reported and skipped; two plugins offering
        the same name is an error naming both."""
        merged: dict[str, Offer[Any]] = {}
        owner: dict[str, str] = {}
        for plugin, function, _ in reversed(self._calls(hook_name)):  # registration order
            try:
                offers = _offers(function())
            except Exception as exc:
                self._report(plugin, hook_name, exc)
                continue
            for offer in offers:
                if offer.name in merged:
                    raise PluginError(
                        f"plugins {owner[offer.name]!r} and {plugin!r} both offer a {what} "
                        f"named {offer.name!r}; disable one with {DISABLE_VAR}"
                    )
                merged[offer.name], owner[offer.name] = offer, plugin
        return merged

    def brokers(self) -> dict[str, Offer[Broker]]:
        """Every broker offered, by name."""
        return self._registry("register_brokers", "broker")

    def sources(self) -> dict[str, Offer[Source]]:
        """Every source offered, by scheme."""
        return self._registry("register_sources", "source")

    def storages(self) -> dict[str, Offer[Store]]:
        """Every storage offered, by name."""
        return self._registry("register_storages", "storage")

    def find_offer(self, what: str, spec: str, environment: str) -> tuple[Offer[Any], str]:
        """The offer ``spec`` (``NAME[:SPEC]``) names among the ``what`` offers (``broker``,
        ``source`` or ``storage``) and the text after the colon; a one-line
        :class:`ConfigError` when none has that name or it is not for ``environment``."""
        offers: dict[str, Offer[Any]] = self._registry(f"register_{_PLURAL[what]}", what)
        name, _, rest = spec.partition(":")
        offer = offers.get(name)
        if offer is None:
            names = ", ".join(sorted(offers)) or "none"
            raise ConfigError(
                f"unknown {what} {name!r}; available: {names} ('bastion plugins' lists them)"
            )
        if not offer.allows(environment):
            raise ConfigError(
                f"the {what} {name!r} is not offered in the {environment} environment "
                f"(only in {', '.join(sorted(offer.environments or ()))}); choose another "
                f"--{what}"
            )
        return offer, rest

    def _open(self, what: str, spec: str, context: PluginContext) -> Any:
        offer, rest = self.find_offer(what, spec, context.environment)
        return offer.create(rest, context)

    def open_broker(self, spec: str, context: PluginContext) -> Broker:
        """The broker ``--broker NAME[:SPEC]`` names, made by its offer's factory.  One
        without a ``margin`` attribute (a plugin written for ``margin_call()``) is a
        one-line :class:`ConfigError`, not a run without margin calls."""
        broker = self._open("broker", spec, context)
        if not hasattr(broker, "margin"):
            close = getattr(broker, "close", None)
            if callable(close):
                close()
            name = spec.partition(":")[0]
            raise ConfigError(
                f"broker {name!r} has no 'margin' attribute: its plugin must set it to None "
                "(no margin calls) or a bastion.models.MarginPolicy (maintenance_margin and "
                "margin_call() are no longer used; see docs/extend/brokers.md)"
            )
        return broker  # type: ignore[no-any-return]

    def open_source(self, spec: str, context: PluginContext) -> Source:
        """The source ``--source NAME[:SPEC]`` names, made by its offer's factory."""
        return self._open("source", spec, context)  # type: ignore[no-any-return]

    def open_store(self, spec: str, context: PluginContext) -> Store:
        """The store ``--storage NAME[:SPEC]`` names, made by its offer's factory."""
        return self._open("storage", spec, context)  # type: ignore[no-any-return]

    def add_commands(self, cli: Any) -> None:
        """Let every plugin add its commands; one that raises is reported, not fatal."""
        for plugin, function, argnames in self._calls("register_commands"):
            try:
                function(*[{"cli": cli}[name] for name in argnames])
            except Exception as exc:
                self._report(plugin, "register_commands", exc)

    def secrets(self, environment: str, workspace: Path) -> Secrets:
        """Secret lookup (variables, the secrets file, then the ``get_secret`` hooks)."""
        calls = self._calls("get_secret")

        def get_secret(*, name: str, environment: str) -> str | None:
            arguments = {"name": name, "environment": environment}
            for plugin, function, argnames in calls:
                try:
                    value = function(*[arguments[a] for a in argnames])
                except Exception as exc:
                    self._report(plugin, "get_secret", exc)
                    continue
                if value is not None:
                    return str(value)
            return None

        return Secrets(environment, workspace, get_secret)

    def has_risk_checks(self) -> bool:
        """Whether any plugin implements ``check_order``."""
        return bool(self._calls("check_order"))

    def check_order(
        self,
        intent: OrderIntent,
        strategy: StrategyInfo,
        environment: str,
        ts: datetime,
        last_price: Decimal | None = None,
    ) -> str | None:
        """The first veto reason from a risk plugin, or ``None``.  A check that raises
        vetoes the order (fail closed) and is reported with its plugin's name."""
        arguments = {
            "intent": intent,
            "strategy": strategy,
            "environment": Environment(environment),
            "ts": ts,
            "last_price": last_price,
        }
        for plugin, function, argnames in self._calls("check_order"):
            try:
                veto = function(*[arguments[a] for a in argnames])
            except Exception as exc:
                self._report(plugin, "check_order", exc)
                return (
                    f"risk check of plugin {plugin!r} failed ({type(exc).__name__}: {exc}); "
                    "order refused"
                )
            if veto is not None:
                return str(veto)
        return None

    def startup(self) -> None:
        self._notify("startup", kernel=self)

    def shutdown(self) -> None:
        self._notify("shutdown", kernel=self)

    def strategy_loaded(self, strategy: Strategy) -> None:
        self.strategies.append(strategy)
        self._notify("strategy_loaded", strategy=strategy.info)

    def strategy_refused(self, refusal: Refusal) -> None:
        self._notify("strategy_refused", refusal=refusal)


def _offers(result: object) -> list[Offer[Any]]:
    """A ``register_*`` hook's result as offers: ``None``, a sequence of :class:`Offer`,
    or the short form, a mapping of name to factory (``factory(spec, context)``)."""
    if result is None:
        return []
    if isinstance(result, Mapping):
        return [Offer(str(name), factory) for name, factory in result.items()]
    if isinstance(result, Offer):
        return [result]
    offers: list[Offer[Any]] = list(result)  # type: ignore[call-overload]
    for offer in offers:
        if not isinstance(offer, Offer):
            raise TypeError(
                f"returned {type(offer).__name__}, not bastion.interfaces.Offer "
                "(or a mapping of name to factory)"
            )
    return offers
