"""The only door through which strategy code enters: :meth:`Gate.admit`.

``admit`` reads a strategy file's bytes once and verifies those bytes (path,
whitelist, detached signature, trusted key) in the kernel — :meth:`Gate.check`.
Only then does it hand exactly those bytes to a :class:`~bastion._host.StrategyHost`
(a locked-down worker by default, the kernel's own process for ``--in-process``),
which compiles them, runs the module body with a restricted import and
validates the hooks with pluggy (:mod:`bastion._module`).  Nothing is compiled
or run before every verification check has passed, and nothing is written to
``__pycache__``.  A verified file whose module body then fails (forbidden
import, exception, bad hook interface) is refused: its host is closed, it is
never put in ``sys.modules`` and receives no events.
"""

from __future__ import annotations

import enum
import os
import re
import stat
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from ._errors import FormatError, printable
from ._host import Launcher, Layer, StrategyHost, log_fields
from ._minisign import Signature, SignatureCheckFailed, verify
from ._module import ALLOWED_IMPORTS, LoadFailure
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

__all__ = [
    "ALLOWED_IMPORTS",
    "MAX_STRATEGY_BYTES",
    "Gate",
    "Refusal",
    "Status",
    "Strategy",
    "StrategyInfo",
    "bidi_controls",
    "read_strategy",
]

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
    BIDI_CONTROL = "bidi-control"  # text can display differently from what runs
    SYNTAX_ERROR = "syntax-error"
    FORBIDDEN_IMPORT = "forbidden-import"
    LOAD_ERROR = "load-error"
    BAD_INTERFACE = "bad-interface"
    SANDBOX_UNAVAILABLE = "sandbox-unavailable"  # a layer this environment requires is missing

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
        """One line, whatever the file's name holds (a newline is written ``\\x0a``)."""
        return printable(f"{self.path}: {self.status}: {self.reason}")


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
    """An admitted strategy: its verified facts, the hooks and ``PARAMS`` its host
    reported after loading exactly the verified bytes, and that host.

    The host (a worker process, or the module in this process) is what the
    engine runs; :meth:`close` releases it when the strategy is not run.
    """

    info: StrategyInfo
    hooks: tuple[str, ...]
    params: Mapping[str, Any]
    host: StrategyHost = attrs.field(repr=False, eq=False)
    layers: tuple[Layer, ...] = ()

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def sandboxed(self) -> bool:
        return self.host.mode == "sandboxed"

    def implemented_hooks(self) -> list[str]:
        return list(self.hooks)

    def close(self) -> None:
        self.host.close()


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

    def ignored(self) -> list[tuple[Path, str]]:
        """Entries of ``strategies/`` that are never loaded (not ``*.py``, or hidden),
        each with why: listed so that nothing there goes unnoticed."""
        folder = self.workspace.strategies
        if not folder.is_dir():
            return []
        out = []
        for entry in sorted(folder.iterdir()):
            name = entry.name
            if name.endswith(".py") and not name.startswith("."):
                continue
            if name == "__pycache__":
                why = "Python's bytecode cache; never loaded (delete it)"
            elif name.startswith("."):
                why = "a hidden entry; never loaded"
            elif name.endswith((".pyc", ".pyo")):
                why = "compiled bytecode is never loaded; only signed .py source is"
            else:
                why = "not a .py file; never loaded"
            out.append((entry, why))
        return out

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
        hidden = bidi_controls(source)
        if hidden is not None:
            return refuse(Status.BIDI_CONTROL, hidden)
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
        data = read_strategy(path)
        if isinstance(data, tuple):
            return Refusal(name=path.name, path=path, status=data[0], reason=data[1])
        return data

    # -- THE door --------------------------------------------------------------------

    def admit(self, path: Path, launcher: Launcher | None = None) -> Strategy | Refusal:
        """Verify ``path`` and, only if it passes, load exactly the verified bytes
        behind a host from ``launcher`` (default: a sandboxed worker)."""
        return self.admit_many([path], launcher)[0]

    def admit_many(
        self, paths: Sequence[Path], launcher: Launcher | None = None
    ) -> list[Strategy | Refusal]:
        """:meth:`admit` for several files; their hosts start together (workers load
        in parallel).  One outcome per path, in order."""
        if launcher is None:
            from ._sandbox import sandboxed

            launcher = sandboxed()
        started: list[tuple[StrategyInfo, StrategyHost] | Refusal] = []
        try:
            for path in paths:
                checked = self.check(path)
                if isinstance(checked, Refusal):
                    started.append(checked)
                else:
                    info, source = checked
                    started.append((info, launcher(info, source)))
            return [item if isinstance(item, Refusal) else _loaded(*item) for item in started]
        except BaseException:
            for item in started:
                if not isinstance(item, Refusal):
                    item[1].close()
            raise


def _loaded(info: StrategyInfo, host: StrategyHost) -> Strategy | Refusal:
    """Wait for ``host`` to load the verified bytes; a refusal closes it."""
    loaded = host.load()
    if isinstance(loaded, LoadFailure):
        host.close()
        return Refusal(
            name=info.name, path=info.path, status=Status(loaded.status), reason=loaded.reason
        )
    if loaded.logs:  # what the module body printed, in the strategy's log stream
        from ._logging import get_logger

        log = get_logger("strategy")
        for level, event, fields in loaded.logs:
            getattr(log, level)(event, strategy=info.name, **log_fields(fields))
    return Strategy(
        info=info, hooks=loaded.hooks, params=loaded.params, host=host, layers=loaded.layers
    )


def _kind_of(mode: int) -> str:
    """What a non-regular directory entry is, in words."""
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "a special file"


# Unicode's bidirectional formatting characters: in source code they make the text an
# editor or a review tool shows differ from what Python runs ("Trojan Source",
# CVE-2021-42574).  A strategy file may not contain them anywhere.
BIDI_CONTROLS = {
    "\u061c": "ARABIC LETTER MARK",
    "\u200e": "LEFT-TO-RIGHT MARK",
    "\u200f": "RIGHT-TO-LEFT MARK",
    "\u202a": "LEFT-TO-RIGHT EMBEDDING",
    "\u202b": "RIGHT-TO-LEFT EMBEDDING",
    "\u202c": "POP DIRECTIONAL FORMATTING",
    "\u202d": "LEFT-TO-RIGHT OVERRIDE",
    "\u202e": "RIGHT-TO-LEFT OVERRIDE",
    "\u2066": "LEFT-TO-RIGHT ISOLATE",
    "\u2067": "RIGHT-TO-LEFT ISOLATE",
    "\u2068": "FIRST STRONG ISOLATE",
    "\u2069": "POP DIRECTIONAL ISOLATE",
}
_BIDI_RE = re.compile("[" + "".join(BIDI_CONTROLS) + "]")


def bidi_controls(source: bytes) -> str | None:
    """Why ``source`` is refused for holding a bidirectional control character (the
    first one, by line), or ``None``."""
    text = source.decode("utf-8", errors="replace")
    found = _BIDI_RE.search(text)
    if found is None:
        return None
    char = found.group()
    line = text.count("\n", 0, found.start()) + 1
    return (
        f"line {line} holds U+{ord(char):04X} ({BIDI_CONTROLS[char]}): the code can display "
        "differently from what runs; remove it"
    )


def read_strategy(path: Path) -> bytes | tuple[Status, str]:
    """A strategy file's bytes, read once, or why it cannot be (``(status, reason)``):
    missing, a symbolic link, not a regular file (a directory, a FIFO: never waited
    on), unreadable, or larger than :data:`MAX_STRATEGY_BYTES`."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return Status.UNREADABLE, "no such file"
    except OSError as exc:
        return Status.UNREADABLE, f"cannot examine it ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return Status.SYMLINK, "strategy files must be regular files, not symbolic links; copy it"
    if not stat.S_ISREG(st.st_mode):
        return Status.UNREADABLE, f"{_kind_of(st.st_mode)}, not a regular file"
    try:
        # O_NONBLOCK: opening a FIFO swapped in since the lstat never waits for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return Status.UNREADABLE, f"cannot open ({exc.strerror})"
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            return Status.UNREADABLE, f"{_kind_of(st.st_mode)}, not a regular file"
        os.set_blocking(fd, True)
        data = handle.read(MAX_STRATEGY_BYTES + 1)
    if len(data) > MAX_STRATEGY_BYTES:
        return Status.UNREADABLE, f"larger than {MAX_STRATEGY_BYTES} bytes"
    return data
