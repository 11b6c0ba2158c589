"""Verified bytes -> a strategy module: compile, run the body under the import
allow-list, check the hooks against the ``bastion.strategy`` specs.

This is what happens behind a :class:`~bastion._host.StrategyHost` once the
kernel's :class:`~bastion.Gate` has verified the bytes: in the kernel's own
process for ``--in-process`` runs, inside the locked-down worker otherwise.
It imports neither the kernel nor ``cryptography`` (a worker loads it before
it locks itself down); pluggy is used only to validate the hooks, so both
modes refuse a bad file with exactly the same words.
"""

from __future__ import annotations

import builtins
import linecache
import math
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from . import hookspecs
from . import strategy as strategy_api
from ._errors import one_line, printable

__all__ = [
    "ALLOWED_IMPORTS",
    "HOOK_ARGS",
    "LoadFailure",
    "LoadedModule",
    "SourceProblem",
    "check_params",
    "compile_source",
    "load_module",
]

# Pure computation from the standard library, and Bastion's strategy API.
# Anything else (a sibling in strategies/, the file system, the network,
# subprocesses, installed packages) is refused at import time.
ALLOWED_IMPORTS = frozenset(
    {
        "__future__",
        "abc",
        "array",
        "bisect",
        "cmath",
        "collections",
        "collections.abc",
        "copy",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "fractions",
        "functools",
        "heapq",
        "itertools",
        "math",
        "numbers",
        "operator",
        "random",
        "re",
        "statistics",
        "string",
        "typing",
        "bastion",
        "bastion.strategy",
        "bastion.models",
    }
)

#: Each strategy hook and the arguments the engine passes it, in order.
HOOK_ARGS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        "on_start": ("ctx",),
        "on_bar": ("ctx", "bar"),
        "on_fill": ("ctx", "fill"),
        "on_reject": ("ctx", "intent", "reason"),
        "on_stop": ("ctx",),
    }
)

# Built-ins that reach files, the terminal or the compiler are not a strategy's business.
_REMOVED_BUILTINS = (
    "open",
    "exec",
    "eval",
    "compile",
    "input",
    "breakpoint",
    "help",
    "exit",
    "quit",
    "__loader__",
    "__spec__",
)

MAX_PARAMS = 200
MAX_PARAM_TEXT = 10_000

# Load outcomes, the values of the matching ``bastion.Status`` members.
SYNTAX_ERROR = "syntax-error"
FORBIDDEN_IMPORT = "forbidden-import"
LOAD_ERROR = "load-error"
BAD_INTERFACE = "bad-interface"


class SourceProblem(ValueError):
    """Bytes Python's compiler refuses; the message is one line (``line N: why``)."""


class ForbiddenImport(ImportError):
    pass


MAX_REASON = 500


def _capped(text: object) -> str:
    return printable(str(text))[:MAX_REASON]


@attrs.frozen
class LoadFailure:
    """Verified bytes that did not become a strategy: a ``Status`` value and one line
    (capped at :data:`MAX_REASON` characters, whichever host loaded it)."""

    status: str
    reason: str = attrs.field(converter=_capped)


@attrs.frozen
class LoadedModule:
    """A strategy's module, its hook functions (by hook name) and its ``PARAMS``."""

    module: types.ModuleType
    functions: Mapping[str, tuple[Callable[..., Any], tuple[str, ...]]]
    params: Mapping[str, Any]

    @property
    def hooks(self) -> tuple[str, ...]:
        return tuple(sorted(self.functions))


def compile_source(source: bytes, filename: str) -> types.CodeType:
    """Compile (never run) ``source``; :class:`SourceProblem` with one line otherwise.

    A file nested too deep or too large for the compiler is a refusal like a
    syntax error, never a ``RecursionError`` or ``MemoryError`` traceback.
    """
    try:
        return compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise SourceProblem(f"line {exc.lineno}: {exc.msg}") from None
    except ValueError as exc:  # e.g. null bytes
        raise SourceProblem(str(exc)) from None
    except (RecursionError, MemoryError):
        raise SourceProblem(
            "too deeply nested or too large for Python's compiler; simplify it"
        ) from None


def _strategy_view_of_bastion() -> types.ModuleType:
    """What ``import bastion`` gives a strategy: only the strategy API and models."""
    from . import models

    view = types.ModuleType("bastion", "Bastion's strategy API (a strategy's view)")
    view.strategy = strategy_api  # type: ignore[attr-defined]
    view.models = models  # type: ignore[attr-defined]
    return view


def _guarded_import(name: str, view: types.ModuleType) -> Callable[..., Any]:
    real_import = builtins.__import__

    def guarded(
        module: str,
        globals: Mapping[str, Any] | None = None,
        locals: Mapping[str, Any] | None = None,
        fromlist: tuple[str, ...] | list[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level:
            raise ForbiddenImport(f"{name}: relative imports are not allowed in a strategy")
        if module not in ALLOWED_IMPORTS:
            raise ForbiddenImport(
                f"{name}: 'import {module}' is not allowed; a strategy may import only "
                "bastion.strategy and pure-computation standard modules (math, statistics, ...)"
            )
        if module.split(".")[0] == "bastion":
            if module == "bastion":
                return view
            real_import(module, None, None, (), 0)
            return sys.modules[module] if fromlist else view
        imported = real_import(module, globals, locals, fromlist or (), 0)
        if fromlist:
            target = sys.modules[module]
            for item in fromlist:
                value = getattr(target, item, None)
                if item.startswith("_") or (
                    isinstance(value, types.ModuleType) and value.__name__ not in ALLOWED_IMPORTS
                ):
                    raise ForbiddenImport(f"{name}: 'from {module} import {item}' is not allowed")
        return imported

    return guarded


def _printer(output: Callable[[str], None]) -> Callable[..., None]:
    """``print`` for strategy code: the text goes to ``output`` (the strategy's log
    stream), never to the kernel's terminal or the worker's protocol channel."""

    def print(*values: object, sep: str | None = " ", end: str | None = "\n", **_: Any) -> None:
        text = (" " if sep is None else str(sep)).join(str(v) for v in values)
        output(text + ("\n" if end is None else str(end)))

    return print


def _strategy_builtins(name: str, output: Callable[[str], None]) -> dict[str, Any]:
    namespace = dict(vars(builtins))
    for key in _REMOVED_BUILTINS:
        namespace.pop(key, None)
    namespace["__import__"] = _guarded_import(name, _strategy_view_of_bastion())
    namespace["print"] = _printer(output)
    return namespace


_PARAM_TYPES = (bool, int, float, str)


def check_params(value: object) -> Mapping[str, Any]:
    """``PARAMS`` as a read-only mapping of name -> bool, int, float (finite) or str."""
    if value is None:
        return types.MappingProxyType({})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and type(v) in _PARAM_TYPES for k, v in value.items()
    ):
        raise ValueError("PARAMS must be a dict of name -> bool, int, float or str")
    if len(value) > MAX_PARAMS:
        raise ValueError(f"PARAMS has more than {MAX_PARAMS} entries")
    for key, item in value.items():
        if len(key) > 100 or (isinstance(item, str) and len(item) > MAX_PARAM_TEXT):
            raise ValueError(f"PARAMS entry {key[:40]!r} is too long")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"PARAMS[{key!r}] = {item!r}; parameters must be finite numbers")
        if type(item) is int and not -(2**63) <= item < 2**63:
            raise ValueError(f"PARAMS[{key!r}] does not fit in 64 bits")
    return types.MappingProxyType(dict(value))


def _spec_names() -> frozenset[str]:
    marker = f"{strategy_api.PROJECT}_spec"
    return frozenset(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), marker))


def load_module(
    name: str,
    filename: str,
    source: bytes,
    output: Callable[[str], None] = lambda text: None,
) -> LoadedModule | LoadFailure:
    """Compile and run verified ``source``; validate its hooks with pluggy.

    ``name`` is the strategy's file name (``sma_cross.py``), ``filename`` what
    tracebacks show.  Nothing is put in ``sys.modules`` or ``__pycache__``.
    ``output`` receives what the strategy prints.
    """
    import pluggy  # validation only; the worker imports it before locking down

    try:
        code = compile_source(source, filename)
    except SourceProblem as exc:
        return LoadFailure(SYNTAX_ERROR, str(exc))
    # Tracebacks show the verified source, never a re-read of the file.
    text = source.decode("utf-8", "replace")
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    module = types.ModuleType(f"bastion_strategy_{name.removesuffix('.py')}")
    module.__file__ = filename
    module.__dict__["__builtins__"] = _strategy_builtins(name, output)
    try:
        exec(code, module.__dict__)  # noqa: S102 - verified bytes only; this is the door
    except ForbiddenImport as exc:
        return LoadFailure(FORBIDDEN_IMPORT, str(exc).removeprefix(f"{name}: "))
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: strategy code never stops us
        return LoadFailure(LOAD_ERROR, f"module body raised {_describe(exc)}")
    try:
        params = check_params(module.__dict__.get("PARAMS"))
    except ValueError as exc:
        return LoadFailure(BAD_INTERFACE, str(exc))
    manager = pluggy.PluginManager(strategy_api.PROJECT)
    manager.add_hookspecs(hookspecs)
    spec_names = _spec_names()
    for attr in spec_names:
        value = module.__dict__.get(attr)
        if callable(value) and not hasattr(value, strategy_api.MARKER):
            return LoadFailure(
                BAD_INTERFACE,
                f"{attr}() is not marked as a hook; decorate it with @strategy.hook",
            )
    try:
        manager.register(module, name=f"strategy:{name}")
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        return LoadFailure(BAD_INTERFACE, _interface_reason(str(exc), spec_names))
    except BaseException as exc:  # a hostile marker or descriptor: still just a refusal
        return LoadFailure(BAD_INTERFACE, f"hooks could not be read: {_describe(exc)}")
    functions: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {}
    for hook in HOOK_ARGS:
        impls = getattr(manager.hook, hook).get_hookimpls()
        if impls:
            functions[hook] = (impls[0].function, tuple(impls[0].argnames))
    if not functions:
        return LoadFailure(
            BAD_INTERFACE,
            f"implements no strategy hook; define one of {', '.join(sorted(spec_names))} "
            "decorated with @strategy.hook",
        )
    return LoadedModule(module=module, functions=functions, params=params)


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:500]
    except BaseException:  # a hostile __str__
        return type(exc).__name__


def _interface_reason(message: str, spec_names: frozenset[str]) -> str:
    """pluggy's validation message as one line that says what to do."""
    if message.startswith("unknown hook"):
        hook = message.split("'")[1] if "'" in message else "?"
        return f"unknown hook {hook!r}; strategy hooks are: {', '.join(sorted(spec_names))}"
    return f"{one_line(message)} (see 'bastion hooks' for each hook's arguments)"
