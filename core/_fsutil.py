"""Small file-system helpers: all-or-nothing writes."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ExclusiveLock", "LockHeld", "atomic_write", "atomic_write_many"]


def _temp_for(path: Path, data: bytes, mode: int) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(tmp)
        if exc.filename is None:  # a full disk says which device, not which file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return Path(tmp)


def atomic_write_many(items: Iterable[tuple[Path, bytes]], mode: int = 0o644) -> None:
    """Write every file to a temporary name first, then rename them all into place.

    If any write fails nothing is replaced, so a failure never leaves a mix of
    old and new files behind.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in items:
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.append((_temp_for(path, data, mode), path))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` all at once (a temporary file, fsynced, renamed)."""
    atomic_write_many([(path, data)], mode)


class ExclusiveLock:
    """An exclusive ``flock`` on ``path`` held until :meth:`release` (or the process
    dies: the kernel drops it even on SIGKILL, so a killed run never leaves it stuck).
    The holder's pid is written into the file for the message others get."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LockHeld(path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class LockHeld(Exception):
    """An :class:`ExclusiveLock` is held by another process (``path``, ``holder``)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by process {holder}")
        self.path = path
        self.holder = holder
