"""The only door through which strategy code enters: :meth:`Gate.admit`.

``admit`` reads a strategy file's bytes once, verifies those bytes (path,
whitelist, detached signature, trusted key), compiles exactly those bytes,
runs the module body with a restricted import, and registers the module with
pluggy under the ``bastion.strategy`` project.  Nothing is compiled or run
before every verification check has passed, and nothing is written to
``__pycache__``.  A verified file whose module body then fails (forbidden
import, exception, bad hook interface) is not registered anywhere: it is
never put in ``sys.modules`` and receives no events.
"""

from __future__ import annotations

import builtins
import enum
import linecache
import os
import stat
import sys
import types
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pluggy

from . import hookspecs
from . import strategy as strategy_api
from ._errors import FormatError, one_line
from ._minisign import Signature, SignatureCheckFailed, verify
from ._trust import (
    STRATEGY_NAME_RE,
    KeyProblem,
    TrustStore,
    Whitelist,
    WhitelistProblem,
    WhitelistState,
    check_trusted_comment,
    load_whitelist,
    sha256_hex,
)
from ._workspace import Workspace

__all__ = ["ALLOWED_IMPORTS", "Gate", "Refusal", "Status", "Strategy", "StrategyInfo"]

MAX_STRATEGY_BYTES = 1024 * 1024


class Status(enum.StrEnum):
    """Every outcome of :meth:`Gate.admit`, as shown by ``bastion strategies``."""

    LOADED_OK = "loaded-ok"
    LOADED_UNSIGNED = "loaded-unsigned"  # development + allow-unsigned only
    UNSIGNED = "unsigned"
    NOT_WHITELISTED = "not-whitelisted"
    HASH_MISMATCH = "hash-mismatch"
    BAD_SIGNATURE = "bad-signature"
    LEGACY_SIGNATURE = "legacy-signature"
    WRONG_FILE = "signature-mismatch"  # trusted comment names another file/hash
    UNKNOWN_KEY = "unknown-key"
    REVOKED_KEY = "revoked-key"
    EXAMPLE_KEY = "example-key-refused"  # live trading refuses the example key
    WHITELIST_MISSING = "whitelist-missing"
    WHITELIST_INVALID = "whitelist-invalid"
    WHITELIST_EXPIRED = "whitelist-expired"
    WHITELIST_ROLLBACK = "whitelist-rollback"
    BAD_NAME = "bad-name"
    SYMLINK = "symlink"
    OUTSIDE = "outside-strategies"
    UNREADABLE = "unreadable"
    SYNTAX_ERROR = "syntax-error"
    FORBIDDEN_IMPORT = "forbidden-import"
    LOAD_ERROR = "load-error"
    BAD_INTERFACE = "bad-interface"

    @property
    def ok(self) -> bool:
        return self in (Status.LOADED_OK, Status.LOADED_UNSIGNED)


@attrs.frozen
class Refusal:
    """A file that did not get in: which file, which check, and what to do."""

    name: str
    path: Path
    status: Status
    reason: str

    def line(self) -> str:
        return f"{self.path}: {self.status}: {self.reason}"


@attrs.frozen
class StrategyInfo:
    """Plain facts about an admitted strategy: safe to log, store and send anywhere."""

    name: str
    path: Path
    sha256: str
    signer: str | None  # key id, None when admitted unsigned
    signer_name: str | None
    signed_at: datetime | None
    whitelist_version: int | None
    unsigned: bool

    @property
    def status(self) -> Status:
        return Status.LOADED_UNSIGNED if self.unsigned else Status.LOADED_OK


@attrs.frozen
class Strategy:
    """An admitted strategy: its facts, its module and its own hook manager."""

    info: StrategyInfo
    module: types.ModuleType
    hooks: pluggy.PluginManager
    params: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.info.name

    def implemented_hooks(self) -> list[str]:
        return sorted(caller.name for caller in self.hooks.get_hookcallers(self.module) or [])


# --------------------------------------------------------------------------
# What a strategy may import
# --------------------------------------------------------------------------

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


class ForbiddenImport(ImportError):
    pass


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


def _strategy_builtins(name: str) -> dict[str, Any]:
    namespace = dict(vars(builtins))
    for key in _REMOVED_BUILTINS:
        namespace.pop(key, None)
    namespace["__import__"] = _guarded_import(name, _strategy_view_of_bastion())
    return namespace


_PARAM_TYPES = (bool, int, float, str)


def _check_params(value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, _PARAM_TYPES) for k, v in value.items()
    ):
        raise ValueError("PARAMS must be a dict of name -> bool, int, float or str")
    return types.MappingProxyType(dict(value))


# --------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------


class Gate:
    """Verification context for one workspace: trust store, whitelist, policy.

    Build one per command or run; then call :meth:`admit` (or :meth:`check`,
    which verifies without running anything) for each file.
    """

    def __init__(
        self,
        workspace: Workspace,
        *,
        allow_unsigned: bool = False,
        refuse_example_key: bool = False,
        now: datetime | None = None,
    ) -> None:
        self.workspace = workspace
        self.allow_unsigned = allow_unsigned
        self.refuse_example_key = refuse_example_key
        self.now = now or datetime.now(UTC)
        self.trust = TrustStore.load(workspace.signatures)  # FormatError: one-line, names file
        self._state = WhitelistState(workspace.data_dir / "whitelist-state.json")
        loaded = load_whitelist(workspace.signatures, self.trust, self.now)
        if isinstance(loaded, Whitelist):
            rollback = self._state.check(loaded)
            if rollback is None:
                self._state.record(loaded)
            self.whitelist: Whitelist | WhitelistProblem = rollback or loaded
        else:
            self.whitelist = loaded

    # -- discovery ---------------------------------------------------------------

    def candidates(self) -> list[Path]:
        """Every ``*.py`` entry of ``strategies/`` (links and odd names included, to be refused)."""
        folder = self.workspace.strategies
        if not folder.is_dir():
            return []
        return sorted(
            p for p in folder.iterdir() if p.name.endswith(".py") and not p.name.startswith(".")
        )

    def resolve(self, spec: str) -> Path:
        """A command-line name (``sma_cross``, ``sma_cross.py`` or a path) as a path."""
        candidate = Path(spec)
        if len(candidate.parts) == 1 and not candidate.is_absolute():
            name = spec if spec.endswith(".py") else f"{spec}.py"
            return self.workspace.strategies / name
        return Path(os.path.abspath(candidate))

    # -- verification (no code runs) -----------------------------------------------

    def check(self, path: Path) -> tuple[StrategyInfo, bytes] | Refusal:
        """Verify one file; return its facts and the exact verified bytes, or a refusal."""
        name = path.name

        def refuse(status: Status, reason: str) -> Refusal:
            return Refusal(name=name, path=path, status=status, reason=reason)

        folder = self.workspace.strategies
        if Path(os.path.abspath(path.parent)).resolve() != folder.resolve():
            return refuse(
                Status.OUTSIDE, f"strategies are loaded only from {folder}; move it there"
            )
        if not STRATEGY_NAME_RE.match(name):
            return refuse(
                Status.BAD_NAME,
                "a strategy file name must be a plain identifier ending in .py (e.g. sma_cross.py)",
            )
        source = self._read_once(path)
        if isinstance(source, Refusal):
            return source
        digest = sha256_hex(source)
        sig_path = self.workspace.signatures / f"{name}.minisig"
        try:
            sig_bytes: bytes | None = sig_path.read_bytes()
        except FileNotFoundError:
            sig_bytes = None
        except OSError as exc:
            return refuse(Status.BAD_SIGNATURE, f"cannot read {sig_path} ({exc.strerror})")

        if sig_bytes is None:
            if self.allow_unsigned:
                return self._unsigned(path, digest), source
            return refuse(
                Status.UNSIGNED,
                f"no signature {sig_path}; sign it with 'bastion sign {name} --key KEY'",
            )
        whitelist = self.whitelist
        if isinstance(whitelist, WhitelistProblem):
            return refuse(Status(whitelist.status), whitelist.reason)
        if self.refuse_example_key and whitelist.signer.example:
            return refuse(
                Status.EXAMPLE_KEY,
                f"the whitelist is signed by the example key {whitelist.signer.id}, which is "
                "never valid for live trading; re-sign it with your own key",
            )
        approved = whitelist.strategies.get(name)
        if approved is None:
            return refuse(
                Status.NOT_WHITELISTED,
                f"not in whitelist version {whitelist.version}; an operator must approve it "
                "('bastion sign')",
            )
        if approved != digest:
            return refuse(
                Status.HASH_MISMATCH,
                f"SHA-256 is {digest[:12]}..., whitelist version {whitelist.version} approves "
                f"{approved[:12]}...; the file changed after it was approved: "
                "re-sign or restore it",
            )
        try:
            sig = Signature.parse(sig_bytes, str(sig_path))
        except FormatError as exc:
            return refuse(Status.BAD_SIGNATURE, str(exc))
        key = self.trust.lookup(sig.key_id)
        if isinstance(key, KeyProblem):
            return refuse(Status(key.status), key.reason)
        if self.refuse_example_key and key.example:
            return refuse(
                Status.EXAMPLE_KEY,
                f"signed by the example key {key.id}, which is never valid for live trading; "
                "re-sign with your own key",
            )
        try:
            verify(key.public, sig, source)
        except SignatureCheckFailed as exc:
            status = Status.LEGACY_SIGNATURE if "legacy" in exc.reason else Status.BAD_SIGNATURE
            return refuse(status, f"{sig_path.name}: {exc.reason}")
        try:
            signed_at = check_trusted_comment(
                sig.trusted_comment, name=name, digest=digest, key_id=key.id, now=self.now
            )
        except ValueError as exc:
            return refuse(Status.WRONG_FILE, f"{sig_path.name}: {exc}")
        info = StrategyInfo(
            name=name,
            path=path,
            sha256=digest,
            signer=key.id,
            signer_name=key.name,
            signed_at=signed_at,
            whitelist_version=whitelist.version,
            unsigned=False,
        )
        return info, source

    def _unsigned(self, path: Path, digest: str) -> StrategyInfo:
        return StrategyInfo(
            name=path.name,
            path=path,
            sha256=digest,
            signer=None,
            signer_name=None,
            signed_at=None,
            whitelist_version=None,
            unsigned=True,
        )

    def _read_once(self, path: Path) -> bytes | Refusal:
        def refuse(status: Status, reason: str) -> Refusal:
            return Refusal(name=path.name, path=path, status=status, reason=reason)

        try:
            st = path.lstat()
        except FileNotFoundError:
            return refuse(Status.UNREADABLE, "no such file")
        if stat.S_ISLNK(st.st_mode):
            return refuse(
                Status.SYMLINK, "strategy files must be regular files, not symbolic links; copy it"
            )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            return refuse(Status.UNREADABLE, f"cannot open ({exc.strerror})")
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                return refuse(Status.UNREADABLE, "not a regular file")
            data = handle.read(MAX_STRATEGY_BYTES + 1)
        if len(data) > MAX_STRATEGY_BYTES:
            return refuse(Status.UNREADABLE, f"larger than {MAX_STRATEGY_BYTES} bytes")
        return data

    # -- THE door --------------------------------------------------------------------

    def admit(self, path: Path) -> Strategy | Refusal:
        """Verify ``path`` and, only if it passes, compile and load exactly the verified bytes."""
        checked = self.check(path)
        if isinstance(checked, Refusal):
            return checked
        info, source = checked
        return _load(info, source)


def _load(info: StrategyInfo, source: bytes) -> Strategy | Refusal:
    """Compile and run verified bytes; register the module's hooks with pluggy."""

    def refuse(status: Status, reason: str) -> Refusal:
        return Refusal(name=info.name, path=info.path, status=status, reason=reason)

    filename = str(info.path)
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return refuse(Status.SYNTAX_ERROR, f"line {exc.lineno}: {exc.msg}")
    except ValueError as exc:  # e.g. null bytes
        return refuse(Status.SYNTAX_ERROR, str(exc))
    # Tracebacks show the verified source, never a re-read of the file.
    text = source.decode("utf-8", "replace")
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    module = types.ModuleType(f"bastion_strategy_{info.name.removesuffix('.py')}")
    module.__file__ = filename
    module.__dict__["__builtins__"] = _strategy_builtins(info.name)
    try:
        exec(code, module.__dict__)  # noqa: S102 - verified bytes only; this is the door
    except ForbiddenImport as exc:
        return refuse(Status.FORBIDDEN_IMPORT, str(exc).removeprefix(f"{info.name}: "))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit and friends too: a strategy never stops the kernel
        return refuse(Status.LOAD_ERROR, f"module body raised {type(exc).__name__}: {exc}")
    try:
        params = _check_params(module.__dict__.get("PARAMS"))
    except ValueError as exc:
        return refuse(Status.BAD_INTERFACE, str(exc))
    manager = pluggy.PluginManager(strategy_api.PROJECT)
    manager.add_hookspecs(hookspecs)
    spec_names = {
        name
        for name in dir(hookspecs)
        if hasattr(getattr(hookspecs, name), f"{strategy_api.PROJECT}_spec")
    }
    for attr in spec_names:
        value = module.__dict__.get(attr)
        if callable(value) and not hasattr(value, f"{strategy_api.PROJECT}_impl"):
            return refuse(
                Status.BAD_INTERFACE,
                f"{attr}() is not marked as a hook; decorate it with @strategy.hook",
            )
    try:
        manager.register(module, name=f"strategy:{info.name}")
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        return refuse(Status.BAD_INTERFACE, _interface_reason(str(exc), spec_names))
    strategy = Strategy(info=info, module=module, hooks=manager, params=params)
    if not strategy.implemented_hooks():
        return refuse(
            Status.BAD_INTERFACE,
            f"implements no strategy hook; define one of {', '.join(sorted(spec_names))} "
            "decorated with @strategy.hook",
        )
    return strategy


def _interface_reason(message: str, spec_names: set[str]) -> str:
    """pluggy's validation message as one line that says what to do."""
    if message.startswith("unknown hook"):
        hook = message.split("'")[1] if "'" in message else "?"
        return f"unknown hook {hook!r}; strategy hooks are: {', '.join(sorted(spec_names))}"
    return f"{one_line(message)} (see 'bastion hooks' for each hook's arguments)"
