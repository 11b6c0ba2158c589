"""Small file-system helpers: all-or-nothing writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_many"]


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
    atomic_write_many([(path, data)], mode)
