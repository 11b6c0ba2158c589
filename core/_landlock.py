"""A small ctypes binding to the Linux Landlock LSM, for the sandboxed worker.

A worker, once it has imported everything it needs, calls :func:`restrict_self` to
lock itself down: it can then read files and list directories beneath a few paths
only, write, create, remove, rename, truncate, execute nothing anywhere, make no
TCP bind or connect, and (kernel permitting) send no signal and connect no abstract
unix socket outside its own Landlock domain.  The restriction is irreversible and is
inherited by every child the worker may fork.

Landlock is best effort by design: the ruleset handles every access right the running
kernel's ABI knows about (see :func:`_fs_rights`), and :class:`LandlockResult` says
which protections were actually enforced.  Layouts and constants come from the kernel
UAPI header ``include/uapi/linux/landlock.h``.

The syscall numbers 444-446 are the same on every architecture that uses the unified
syscall table (x86_64, aarch64, i386, arm, riscv, ...); alpha, which offsets them, is
not supported.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
from collections.abc import Sequence
from typing import Final

import attrs

__all__ = ["LandlockError", "LandlockResult", "abi_version", "restrict_self"]

# Syscall numbers (unified table).
_SYS_LANDLOCK_CREATE_RULESET: Final = 444
_SYS_LANDLOCK_ADD_RULE: Final = 445
_SYS_LANDLOCK_RESTRICT_SELF: Final = 446

_LANDLOCK_CREATE_RULESET_VERSION: Final = 1 << 0
_LANDLOCK_RULE_PATH_BENEATH: Final = 1

# Filesystem access rights.
_FS_EXECUTE: Final = 1 << 0
_FS_WRITE_FILE: Final = 1 << 1
_FS_READ_FILE: Final = 1 << 2
_FS_READ_DIR: Final = 1 << 3
_FS_REMOVE_DIR: Final = 1 << 4
_FS_REMOVE_FILE: Final = 1 << 5
_FS_MAKE_CHAR: Final = 1 << 6
_FS_MAKE_DIR: Final = 1 << 7
_FS_MAKE_REG: Final = 1 << 8
_FS_MAKE_SOCK: Final = 1 << 9
_FS_MAKE_FIFO: Final = 1 << 10
_FS_MAKE_BLOCK: Final = 1 << 11
_FS_MAKE_SYM: Final = 1 << 12
_FS_REFER: Final = 1 << 13  # ABI 2
_FS_TRUNCATE: Final = 1 << 14  # ABI 3
_FS_IOCTL_DEV: Final = 1 << 15  # ABI 5

_FS_ABI1: Final = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
# The rights that may be granted on a non-directory (the kernel rejects others: EINVAL).
_FS_FILE_RIGHTS: Final = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_FS_READ: Final = _FS_READ_FILE | _FS_READ_DIR

# Network access rights (ABI 4).
_NET_BIND_TCP: Final = 1 << 0
_NET_CONNECT_TCP: Final = 1 << 1

# Scopes (ABI 6).
_SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0
_SCOPE_SIGNAL: Final = 1 << 1


class _RulesetAttr(ctypes.Structure):
    """``struct landlock_ruleset_attr``; only a prefix is passed to older kernels."""

    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    )


class _PathBeneathAttr(ctypes.Structure):
    """``struct landlock_path_beneath_attr``, which is ``__attribute__((packed))``: 12 bytes."""

    _pack_ = 1
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    )


class LandlockError(OSError):
    """Landlock is unavailable, or one of its syscalls failed.

    ``errno`` is the kernel's error number; the message names the failing call, the
    errno symbol and, where it helps, the likely cause, on one line.
    """


@attrs.frozen
class LandlockResult:
    """What :func:`restrict_self` enforced."""

    abi: int
    """The Landlock ABI version used (the running kernel's)."""
    fs_rights: int
    """The ``handled_access_fs`` mask that was enforced."""
    net: bool
    """TCP bind and connect are denied (ABI >= 4)."""
    scoped: bool
    """Signals and abstract unix sockets are scoped to the domain (ABI >= 6)."""
    readable: tuple[str, ...]
    """The paths granted read access: those of the requested ones that existed."""


_libc: ctypes.CDLL | None = None


def _syscall(number: int, *args: int) -> int:
    """``syscall(number, *args)`` with every argument passed as a C ``long``.

    Returns the result, or ``-errno`` on failure.  Pointers are passed as their address;
    ``syscall(2)`` is variadic and reads each argument as a full register-sized ``long``.
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    ctypes.set_errno(0)
    result: int = _libc.syscall(ctypes.c_long(number), *(ctypes.c_long(arg) for arg in args))
    if result < 0:
        return -(ctypes.get_errno() or errno.EINVAL)
    return result


def _errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, f'errno {err}')} ({os.strerror(err)})"


def _fail(call: str, err: int, hint: str = "") -> LandlockError:
    message = f"{call} failed: {_errno_text(err)}"
    if hint:
        message = f"{message}; {hint}"
    return LandlockError(err, message)


def _probe() -> tuple[int, int]:
    """``(abi, 0)`` when Landlock is available, else ``(0, errno)``."""
    if not sys.platform.startswith("linux"):
        return 0, errno.ENOSYS
    try:
        result = _syscall(_SYS_LANDLOCK_CREATE_RULESET, 0, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError):  # no libc, or a libc without syscall()
        return 0, errno.ENOSYS
    if result <= 0:
        return 0, -result if result < 0 else errno.ENOSYS
    return result, 0


def abi_version() -> int:
    """The running kernel's Landlock ABI version, or 0 when Landlock is unavailable
    (ENOSYS: kernel built without it; EOPNOTSUPP: disabled at boot). Never raises."""
    return _probe()[0]


def _fs_rights(abi: int) -> int:
    """The filesystem rights ABI ``abi`` knows: all of them are handled (denied by default)."""
    rights = _FS_ABI1
    if abi >= 2:
        rights |= _FS_REFER
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


def _ruleset_attr_size(abi: int) -> int:
    """How many bytes of ``struct landlock_ruleset_attr`` ABI ``abi`` understands.

    The kernel accepts any size from 8 (``handled_access_fs`` alone) up to its own struct
    size (larger only if the extra bytes are zero, else E2BIG); passing exactly the
    fields the ABI knows is the portable choice.
    """
    fields = 3 if abi >= 6 else 2 if abi >= 4 else 1
    return fields * ctypes.sizeof(ctypes.c_uint64)


def _handled(abi: int) -> tuple[int, int, int]:
    """``(handled_access_fs, handled_access_net, scoped)`` for ABI ``abi``: everything known."""
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    return _fs_rights(abi), net, scoped


def _add_read_rule(ruleset_fd: int, path: str, handled_fs: int) -> bool:
    """Allow reading beneath ``path``; False if it does not exist."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise _fail(f"open({path!r}, O_PATH)", exc.errno or errno.EIO) from exc
    try:
        allowed = _FS_READ
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            allowed &= _FS_FILE_RIGHTS  # READ_DIR on a file is EINVAL
        rule = _PathBeneathAttr(allowed_access=allowed & handled_fs, parent_fd=fd)
        result = _syscall(
            _SYS_LANDLOCK_ADD_RULE,
            ruleset_fd,
            _LANDLOCK_RULE_PATH_BENEATH,
            ctypes.addressof(rule),
            0,
        )
    finally:
        os.close(fd)
    if result < 0:
        raise _fail(f"landlock_add_rule({path!r})", -result)
    return True


def _paths(readable: Sequence[str | os.PathLike[str]]) -> list[str]:
    """``readable`` as a list of ``str`` paths; a lone path is a TypeError, not its letters."""
    if isinstance(readable, str | bytes | os.PathLike):
        raise TypeError("readable must be a sequence of paths, not a single path")
    paths = [os.fspath(path) for path in readable]
    for path in paths:
        if not isinstance(path, str):
            raise TypeError(f"readable paths must be str or os.PathLike[str], not {path!r}")
    return paths


def _enforce(abi: int, readable: Sequence[str | os.PathLike[str]]) -> LandlockResult:
    """:func:`restrict_self` as if the kernel's ABI were ``abi`` (>= 1)."""
    paths = _paths(readable)
    fs, net, scoped = _handled(abi)
    attr = _RulesetAttr(handled_access_fs=fs, handled_access_net=net, scoped=scoped)
    ruleset_fd = _syscall(
        _SYS_LANDLOCK_CREATE_RULESET, ctypes.addressof(attr), _ruleset_attr_size(abi), 0
    )
    if ruleset_fd < 0:
        raise _fail("landlock_create_ruleset", -ruleset_fd)
    try:
        granted = tuple(path for path in paths if _add_read_rule(ruleset_fd, path, fs))
        result = _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0)
        if result < 0:
            err = -result
            hint = ""
            if err == errno.EPERM:
                hint = "set PR_SET_NO_NEW_PRIVS first (or hold CAP_SYS_ADMIN)"
            elif err == errno.E2BIG:
                hint = "too many stacked Landlock domains (at most 16)"
            raise _fail("landlock_restrict_self", err, hint)
    finally:
        os.close(ruleset_fd)
    return LandlockResult(
        abi=abi,
        fs_rights=fs,
        net=net != 0,
        scoped=scoped != 0,
        readable=granted,
    )


def restrict_self(readable: Sequence[str | os.PathLike[str]] = ()) -> LandlockResult:
    """Enforce on the calling thread (and, since it should be called while the process is
    single-threaded, the whole process and its future children): no filesystem access at
    all except reading files and listing directories beneath each path in `readable`
    (paths that do not exist are skipped; files are allowed too: rule with only the
    file-applicable rights), no write/create/remove/rename/truncate/ioctl-dev/execute
    anywhere, no TCP bind or connect (ABI >= 4), and (ABI >= 6) signals and abstract unix
    sockets scoped to the domain. Best effort by ABI: handle every right the running ABI
    knows (ABI 1 base rights; 2 adds REFER; 3 TRUNCATE; 4 net TCP; 5 IOCTL_DEV; 6 scopes;
    7 adds nothing we need). Requires PR_SET_NO_NEW_PRIVS to have been set by the caller
    (or CAP_SYS_ADMIN); raise LandlockError if Landlock is unavailable or any syscall fails.
    Close the ruleset fd in all cases.

    Symbolic links in `readable` are followed: the rule is on their target.  Access is
    checked when a file is opened, so descriptors opened before the call (stdout, a
    socket to the parent) keep working; only other threads of the process stay
    unrestricted, hence "single-threaded".
    """
    _paths(readable)  # a TypeError before anything is created
    abi, err = _probe()
    if abi <= 0:
        reason = {
            errno.ENOSYS: "kernel built without Landlock",
            errno.EOPNOTSUPP: "Landlock disabled at boot (not in lsm=)",
        }.get(err, "")
        raise _fail("Landlock is unavailable: landlock_create_ruleset(VERSION)", err, reason)
    return _enforce(abi, readable)
