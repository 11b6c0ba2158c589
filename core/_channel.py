"""The shared-memory hand-off between the kernel and one sandboxed worker.

One ``memfd`` mapping per worker, laid out as::

    0     u32  k_seq        the kernel's latest frame (futex word)
    64    u32  w_seq        the latest frame the worker answered (futex word)
    128   u32  w_sleeping   the worker is blocked on k_seq
    192   u32  k_sleeping   the kernel is blocked on w_seq
    256   u32  k_length, u8 k_kind       header of the kernel's frame
    320   u32  w_length, u8 w_kind       header of the worker's answer
    4096  the kernel's frame payload     (K_CAP bytes)
    ...   the worker's answer payload    (W_CAP bytes)

Each side writes its payload and header, then bumps its sequence word; the
other spins on that word for a while and then blocks on it with
``futex(2)``, a few milliseconds at a time, so a hand-off costs about a
microsecond when both are awake and no CPU when one waits long.  A sleeper
raises its ``*_sleeping`` flag first and the poster makes the wake-up system
call only when the flag is up; a wake-up lost to store ordering costs one nap
(see :meth:`Channel.post`).

Spinning relies on x86-64's ordered stores; on other architectures every
wait and post goes through ``futex(2)``, whose barriers give the ordering.

Nothing here interprets payloads: :mod:`bastion._protocol` encodes them and
the kernel validates everything a worker writes (a hostile worker can write
anything into its mapping, at any time).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import platform
import threading
import time
from collections.abc import Callable

__all__ = ["K_CAP", "SIZE", "W_CAP", "Channel", "ChannelTimeout"]

K_CAP = 3 * 1024 * 1024  # a strategy file (1 MiB) and its setup fit with room to spare
W_CAP = 1024 * 1024  # a worker's answer: an 8 MB reply is a protocol violation
K_PAYLOAD = 4096
W_PAYLOAD = K_PAYLOAD + K_CAP
SIZE = W_PAYLOAD + W_CAP

# u32 word indexes
K_SEQ, W_SEQ, W_SLEEPING, K_SLEEPING = 0, 16, 32, 48
K_LENGTH, K_KIND = 64, 65
W_LENGTH, W_KIND = 80, 81

FUTEX_WAIT, FUTEX_WAKE = 0, 1
_FUTEX_NR = {"x86_64": 202, "aarch64": 98, "arm64": 98}
SPIN_OK = platform.machine() in ("x86_64", "AMD64")


class ChannelTimeout(Exception):
    """The other side did not answer in time (raised by the waiting callback)."""


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_yield = os.sched_yield
_syscall.restype = ctypes.c_long
_NR_FUTEX = _FUTEX_NR.get(platform.machine(), 202)


class Channel:
    """One end of a worker's shared mapping (the kernel's or the worker's)."""

    def __init__(self, fd: int, *, spin: int) -> None:
        self.map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.words = memoryview(self.map).cast("I")
        self.spin = spin if SPIN_OK else 0
        self.yields = 0
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self._addr = {index: ctypes.c_void_p(base + index * 4) for index in (K_SEQ, W_SEQ)}
        lock = threading.Lock()
        self._acquire, self._release = lock.acquire, lock.release

    def set_spin(self, spin: int, yields: int = 0) -> None:
        """Spin this many polls, then poll ``yields`` times giving the core away in
        between (``sched_yield``), before blocking; never where stores are not ordered."""
        self.spin = spin if SPIN_OK else 0
        self.yields = yields if SPIN_OK else 0

    @staticmethod
    def create() -> int:
        """A new, zeroed mapping's file descriptor (close-on-exec; pass it on explicitly).

        Its size is sealed: a worker that truncates it (its ``mmap`` keeps a copy of
        the descriptor) would otherwise make the kernel's next access a SIGBUS.
        """
        fd = os.memfd_create("bastion-worker", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, SIZE)
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close(self) -> None:
        self.words.release()
        self._addr.clear()
        # A ctypes view still exported: the mapping dies with the process instead.
        with contextlib.suppress(BufferError):
            self.map.close()

    # -- the memory barrier and the futex ---------------------------------------------

    def fence(self) -> None:
        """A full memory barrier: a lock round trip is a locked instruction."""
        self._acquire()
        self._release()

    def _futex(self, index: int, op: int, value: int, timeout: float | None) -> None:
        spec = None
        if timeout is not None:
            seconds = max(timeout, 0.0)
            spec = ctypes.byref(
                _Timespec(int(seconds), int((seconds - int(seconds)) * 1_000_000_000))
            )
        _syscall(_NR_FUTEX, self._addr[index], op, value, spec, None, 0)

    # -- posting and waiting ------------------------------------------------------------

    def post(self, seq_index: int, seq: int, sleeping_index: int) -> None:
        """Publish ``seq`` (payload and header already written) and wake a sleeper.

        On x86-64 the wake-up system call is made only when the other side says it
        sleeps.  There is no fence between the store and that load (it would cost
        as much as the rest of a hand-off): in the rare case the load overtakes
        the store while the other side is just going to sleep, the wake-up is
        lost and the sleeper wakes at the end of its nap instead, a few
        milliseconds later.  Elsewhere every post wakes (the system call orders
        memory).
        """
        words = self.words
        words[seq_index] = seq
        if not SPIN_OK or words[sleeping_index]:
            self._futex(seq_index, FUTEX_WAKE, 1, None)

    def wait(
        self,
        seq_index: int,
        old: int,
        sleeping_index: int,
        nap: float,
        check: Callable[[], None] | None = None,
    ) -> int:
        """Wait until the word at ``seq_index`` differs from ``old``; return it.

        Spins first, then blocks ``nap`` seconds at a time; ``check`` runs after
        each nap (it raises to give up: a deadline, a dead peer).
        """
        words = self.words
        for _ in range(self.spin):
            value = words[seq_index]
            if value != old:
                return value
        for _ in range(self.yields):
            value = words[seq_index]
            if value != old:
                return value
            _yield()
        while True:
            words[sleeping_index] = 1
            self.fence()
            value = words[seq_index]
            if value != old and self.spin:
                words[sleeping_index] = 0
                return value
            self._futex(seq_index, FUTEX_WAIT, old, nap)
            words[sleeping_index] = 0
            value = words[seq_index]
            if value != old:
                return value
            if check is not None:
                check()


def monotonic_deadline(seconds: float) -> float:
    return time.monotonic() + seconds
