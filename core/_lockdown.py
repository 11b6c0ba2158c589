"""A sandboxed worker locks itself down here, before any strategy byte runs.

Each layer is applied best-effort and reported as ``(name, active, detail)``;
the kernel decides whether what is active is enough for the environment
(``[sandbox] require``).  In order:

``network``       a new, empty network namespace (``unshare``; as a non-root
                  user together with a new user namespace);
``user``          started as root: drop to ``nobody`` (groups, gid, uid);
``rlimits``       address space, CPU time (soft, then hard), open files,
                  file size 0, no core files, no processes, no locked memory;
``no_new_privs``  ``PR_SET_NO_NEW_PRIVS``: nothing it could exec gains privileges;
``not_dumpable``  ``PR_SET_DUMPABLE 0``: no ptrace attach, no core, /proc/PID
                  owned by root;
``landlock``      no writes anywhere, reads only beneath the standard library,
                  no TCP, signals and abstract sockets scoped to itself;
``seccomp``       a libseccomp filter (through ``pyseccomp``) that fails
                  sockets, exec, fork, ptrace, signals to others, mounts, bpf,
                  perf, keyrings, io_uring, credential changes and more with
                  ``EPERM``; threads may still be created.

Everything here runs in the worker before it has seen the strategy's bytes,
so its report is Bastion's own word, not the strategy's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import sysconfig
from collections.abc import Callable

__all__ = ["LAYERS", "Limits", "lock_down"]

LAYERS = ("network", "user", "rlimits", "no_new_privs", "not_dumpable", "landlock", "seccomp")

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
CLONE_THREAD = 0x00010000
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
TIOCSTI = 0x5412
FIOSETOWN, SIOCSPGRP = 0x8901, 0x8902
F_SETOWN, F_SETSIG, F_SETOWN_EX, F_SETLEASE, F_NOTIFY = 8, 10, 15, 1024, 1026
PR_SET_PTRACER = 0x59616D61

_libc = ctypes.CDLL(None, use_errno=True)

Layer = tuple[str, bool, str]


class Limits:
    """The resource limits a worker applies to itself (from ``[sandbox]``)."""

    __slots__ = ("cpu_seconds", "memory_mb", "open_files")

    def __init__(self, memory_mb: int, cpu_seconds: int, open_files: int) -> None:
        self.memory_mb, self.cpu_seconds, self.open_files = memory_mb, cpu_seconds, open_files


def _errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


def _layer(name: str, apply: Callable[[], str]) -> Layer:
    try:
        return (name, True, apply())
    except OSError as exc:
        detail = exc.strerror or str(exc)
        if exc.errno and errno.errorcode.get(exc.errno, "?") not in detail:
            detail = f"{detail} ({errno.errorcode.get(exc.errno, exc.errno)})"
        return (name, False, detail[:500])
    except Exception as exc:  # a missing library, an old kernel: say which
        return (name, False, f"{type(exc).__name__}: {exc}"[:500])


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {_errno_text(err)}")


def _network_as_root() -> bool:
    """Root with CAP_SYS_ADMIN: new network and IPC namespaces, no user namespace."""
    return bool(_libc.unshare(CLONE_NEWNET | CLONE_NEWIPC) == 0)


def _network() -> str:
    """Anyone else (including root without CAP_SYS_ADMIN, once dropped to nobody):
    the same inside a new user namespace."""
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC), "unshare(user+net+ipc)")
    return "own user, network and IPC namespaces (only a down loopback, no System V IPC)"


def _user(nobody: tuple[int, int] | None) -> str:
    if os.geteuid() != 0:
        return (
            f"not root: runs as the operator's uid {os.getuid()} (Landlock keeps it from "
            "the operator's files)"
        )
    if nobody is None:
        raise OSError(errno.ENOENT, "started as root and there is no 'nobody' user to drop to")
    uid, gid = nobody
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.geteuid() == 0 or os.getuid() == 0:
        raise OSError(errno.EPERM, "still root after setresuid")
    return f"dropped from root to nobody (uid {uid}, gid {gid})"


def _parent_death(parent: int) -> None:
    """Die with the kernel.  (Cleared by a credential change, so set after it.)"""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the kernel died before the signal was armed
        os._exit(1)


def _rlimits(limits: Limits) -> str:
    memory = limits.memory_mb * 1024 * 1024
    cpu = limits.cpu_seconds
    settings = [
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_CPU, cpu, cpu + 2),  # SIGXCPU first, SIGKILL two seconds later
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_FSIZE, 0, 0),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NPROC, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    ]
    for which, soft, hard in settings:
        resource.setrlimit(which, (soft, hard))
    return (
        f"address space {limits.memory_mb} MiB, CPU {cpu} s (+2 s hard), "
        f"{limits.open_files} files, file size 0, no core files, no processes"
    )


def _no_new_privs() -> str:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    if _libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1:
        raise OSError(errno.EPERM, "NO_NEW_PRIVS did not stick")
    return "set"


def _not_dumpable() -> str:
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(SET_DUMPABLE)")
    if _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(errno.EPERM, "still dumpable")
    return "set"


def readable_paths() -> list[str]:
    """What the worker may still read once locked down: the standard library (for
    a lazy import inside an allowed module), not site-packages.  Everything it
    needs is imported before the lock-down."""
    stdlib = sysconfig.get_paths()["stdlib"]
    return [stdlib] if stdlib and os.path.isdir(stdlib) else []


def _landlock(readable: list[str]) -> str:
    from . import _landlock

    # A folder the (possibly dropped) user cannot read anyway needs no rule.
    result = _landlock.restrict_self([p for p in readable if os.access(p, os.R_OK | os.X_OK)])
    where = ", ".join(result.readable) or "nothing (not even the standard library)"
    parts = [f"ABI {result.abi}: no writes", f"reads only beneath {where}"]
    if result.net:
        parts.append("no TCP bind/connect")
    if result.scoped:
        parts.append("signals and abstract sockets scoped to itself")
    return "; ".join(parts)


# Denied with EPERM (those missing on this architecture are skipped).
DENIED_SYSCALLS = (
    # the network
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # new programs and processes
    "execve", "execveat", "fork", "vfork",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
    "tkill", "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    # the system
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount",
    "open_tree", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "iopl", "ioperm",
    "modify_ldt", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "vhangup", "personality",
    "name_to_handle_at", "open_by_handle_at", "lookup_dcookie", "fanotify_init",
    # credentials and limits
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset", "setrlimit",
    # other processes' scheduling, memory placement and priority
    "setpriority", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
    "sched_setattr", "ioprio_set", "move_pages", "migrate_pages",
    # System V and POSIX IPC (memory outside the address-space limit, channels between runs)
    "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # the file system (Landlock refuses these too)
    "creat", "mknod", "mknodat", "link", "linkat", "symlink", "symlinkat", "unlink",
    "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir",
    "truncate", "ftruncate", "fallocate", "chmod", "fchmod", "fchmodat", "chown", "fchown",
    "lchown", "fchownat",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "utime", "utimes", "utimensat", "futimesat",
)  # fmt: skip

O_WRITE_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)


def _seccomp() -> str:
    import pyseccomp as sc

    pid = os.getpid()
    eperm = sc.ERRNO(errno.EPERM)
    denied = 0
    filt = sc.SyscallFilter(defaction=sc.ALLOW)
    filt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)  # i386 / x32 entry points

    def rule(action: int, name: str, *args: object) -> None:
        nonlocal denied
        try:
            filt.add_rule(action, name, *args)
        except (ValueError, OSError):  # no such system call on this architecture
            return
        denied += 1

    for name in DENIED_SYSCALLS:
        rule(eperm, name)
    # clone: threads only (a process needs no CLONE_THREAD); clone3 hides its
    # flags in memory, so it is "not implemented" and libc falls back to clone.
    rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # signals: only to itself
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        rule(eperm, name, sc.Arg(0, sc.NE, pid))
    rule(eperm, "prlimit64", sc.Arg(2, sc.NE, 0))  # reading limits is fine, setting is not
    rule(eperm, "ioctl", sc.Arg(1, sc.EQ, TIOCSTI))  # no typing into a terminal
    # signals by the back door: a descriptor's owner gets SIGIO (or any signal it
    # chooses with F_SETSIG) on I/O, a lease or a directory notification
    for command in (F_SETOWN, F_SETSIG, F_SETOWN_EX, F_SETLEASE, F_NOTIFY):
        rule(eperm, "fcntl", sc.Arg(1, sc.EQ, command))
    for request in (FIOSETOWN, SIOCSPGRP):
        rule(eperm, "ioctl", sc.Arg(1, sc.EQ, request))
    # and no undoing what the lock-down set: dying with the kernel, not dumpable
    for option in (PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_PTRACER):
        rule(eperm, "prctl", sc.Arg(0, sc.EQ, option))
    # opening for writing
    for flag in O_WRITE_FLAGS:
        rule(eperm, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
        rule(eperm, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
    rule(sc.ERRNO(errno.ENOSYS), "openat2")  # flags in memory: libc falls back to openat
    filt.load()
    # Prove it: a socket must now be refused.
    fd = _libc.socket(1, 1, 0)  # AF_UNIX, SOCK_STREAM
    if fd >= 0:
        os.close(fd)
        raise OSError(errno.EPERM, "the filter loaded but a socket was still allowed")
    return f"{denied} rules: sockets, exec, fork, ptrace, signals to others, IPC, mounts, bpf, ..."


def lock_down(
    limits: Limits,
    parent: int,
    nobody: tuple[int, int] | None,
    skip: frozenset[str] = frozenset(),
) -> list[Layer]:
    """Apply every layer (reported in the order of :data:`LAYERS`) but those in ``skip``.

    Root first takes new network and IPC namespaces (it may), then drops to
    ``nobody``; anyone else, and root where that was not allowed (a container
    without CAP_SYS_ADMIN), takes them inside a new user namespace once it is
    no longer root.  The parent-death signal is armed after every credential
    change (a change clears it).
    """
    readable = readable_paths()  # while sysconfig can still read its own data

    def layer(name: str, apply: Callable[[], str]) -> Layer:
        if name in skip:
            return (name, False, "skipped: the kernel asked for it to be left out")
        return _layer(name, apply)

    network: Layer | None = None
    if "network" not in skip and os.geteuid() == 0 and _network_as_root():
        network = ("network", True, "own network and IPC namespaces (only a down loopback)")
    user = layer("user", lambda: _user(nobody))
    if network is None:
        network = layer("network", _network)
    layers = [network, user]
    _parent_death(parent)
    layers.append(layer("rlimits", lambda: _rlimits(limits)))
    layers.append(layer("no_new_privs", _no_new_privs))
    layers.append(layer("not_dumpable", _not_dumpable))
    # Landlock and seccomp need no_new_privs (or CAP_SYS_ADMIN): without it they
    # report themselves unavailable with the kernel's reason.
    layers.append(layer("landlock", lambda: _landlock(readable)))
    layers.append(layer("seccomp", _seccomp))
    return layers
