"""Writing files so that a crash never leaves half of one: for plugins that write
reports, state or exports.

Public API (see docs/reference/api.md).
"""

from __future__ import annotations

from ._fsutil import ExclusiveLock, LockHeld, atomic_write, atomic_write_many

__all__ = ["ExclusiveLock", "LockHeld", "atomic_write", "atomic_write_many"]
