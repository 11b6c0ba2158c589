"""The shared-memory hand-off between the kernel and a worker (:mod:`bastion._channel`).

A ``memfd`` mapping with sequence words: one side writes its payload, then posts
a new sequence number; the other spins, optionally yields, then blocks with
``futex(2)`` (raising its "sleeping" flag first) until the number changes.
These tests use two ``Channel`` objects on one mapping, in one process and
across a real child process, in every waiting mode: spinning, yielding, and the
pure futex path that machines without ordered stores (``SPIN_OK`` false) use.

Nothing here asserts on speed: every wait is bounded by a generous deadline
(raised from ``check``) or a watchdog that unblocks it, so a broken hand-off
fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bastion._channel import (
    K_CAP,
    K_KIND,
    K_LENGTH,
    K_PAYLOAD,
    K_SEQ,
    K_SLEEPING,
    SIZE,
    SPIN_OK,
    W_CAP,
    W_KIND,
    W_LENGTH,
    W_PAYLOAD,
    W_SEQ,
    W_SLEEPING,
    Channel,
    ChannelTimeout,
)

GENEROUS = 30.0  # seconds: a bound for "never hangs", never an expectation of speed

#: (spin, yields) waiting modes: spinning, yielding, and futex only.
MODES = [
    pytest.param((2000, 0), id="spin"),
    pytest.param((0, 200), id="yield"),
    pytest.param((0, 0), id="futex-only"),
]


@pytest.fixture
def fd() -> Iterator[int]:
    """A fresh mapping's descriptor, closed after the test."""
    descriptor = Channel.create()
    yield descriptor
    os.close(descriptor)


@pytest.fixture
def attach(fd: int) -> Iterator[Callable[..., Channel]]:
    """``attach(spin=..., yields=...)``: another Channel on the fixture's mapping."""
    opened: list[Channel] = []

    def open_one(spin: int = 0, yields: int = 0) -> Channel:
        channel = Channel(fd, spin=spin)
        channel.set_spin(spin, yields)
        opened.append(channel)
        return channel

    yield open_one
    for channel in opened:
        channel.close()


def deadline_check(seconds: float = GENEROUS) -> Callable[[], None]:
    """A ``check`` that raises ChannelTimeout once ``seconds`` have passed."""
    limit = time.monotonic() + seconds

    def check() -> None:
        if time.monotonic() > limit:
            raise ChannelTimeout(f"no answer within {seconds} s")

    return check


@contextlib.contextmanager
def watchdog(poster: Channel, seq_index: int, sleeping_index: int) -> Iterator[None]:
    """Posts 99 to ``seq_index`` after GENEROUS seconds: a wait that should have ended
    through ``check`` but hangs is ended with a value instead (and the test fails)."""
    timer = threading.Timer(GENEROUS, poster.post, (seq_index, 99, sleeping_index))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def must_not_be_called() -> None:
    raise AssertionError("check() ran, but the value had already changed")


# ------------------------------------------------------------------ the mapping


def test_created_mapping_is_zeroed_private_and_of_size(fd: int) -> None:
    """Channel.create() gives a close-on-exec memfd of exactly SIZE bytes, all zero."""
    assert os.fstat(fd).st_size == SIZE
    assert not os.get_inheritable(fd)
    with mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ) as view:
        assert view.size() == SIZE
        assert view[:] == bytes(SIZE)


def test_each_create_is_a_new_mapping(attach: Callable[..., Channel]) -> None:
    """Two created mappings are independent: writing one leaves the other zero."""
    channel = attach()
    channel.map[K_PAYLOAD : K_PAYLOAD + 4] = b"abcd"
    channel.words[K_SEQ] = 9
    other_fd = Channel.create()
    try:
        with mmap.mmap(other_fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ) as view:
            assert view[:] == bytes(SIZE)
    finally:
        os.close(other_fd)


def test_layout_constants() -> None:
    """The documented layout: each sequence word and flag on its own 64-byte cache line,
    the headers below the kernel's payload at 4096, then K_CAP and W_CAP bytes."""
    assert (K_SEQ * 4, W_SEQ * 4, W_SLEEPING * 4, K_SLEEPING * 4) == (0, 64, 128, 192)
    assert (K_LENGTH * 4, K_KIND, W_LENGTH * 4, W_KIND) == (256, K_LENGTH + 1, 320, W_LENGTH + 1)
    assert K_PAYLOAD == 4096 and W_PAYLOAD == K_PAYLOAD + K_CAP and SIZE == W_PAYLOAD + W_CAP
    assert K_CAP >= 3 * 1024 * 1024 and W_CAP >= 1024 * 1024
    assert max(K_SEQ, W_SEQ, W_SLEEPING, K_SLEEPING, K_KIND, W_KIND) * 4 + 4 <= K_PAYLOAD


def test_a_channel_sees_the_whole_mapping(attach: Callable[..., Channel]) -> None:
    """A Channel maps all SIZE bytes and views them as SIZE // 4 u32 words."""
    channel = attach()
    assert len(channel.map) == SIZE
    assert len(channel.words) == SIZE // 4 and channel.words.format == "I"


def test_spinning_only_where_stores_are_ordered(attach: Callable[..., Channel]) -> None:
    """SPIN_OK is true exactly on x86-64; elsewhere ``spin`` and ``yields`` are forced to
    0 (every wait and post goes through futex), here they are kept."""
    assert (platform.machine() in ("x86_64", "AMD64")) == SPIN_OK
    channel = attach(spin=123)
    assert channel.spin == (123 if SPIN_OK else 0)
    channel.set_spin(5, 7)
    assert (channel.spin, channel.yields) == ((5, 7) if SPIN_OK else (0, 0))
    channel.set_spin(0)
    assert (channel.spin, channel.yields) == (0, 0)


# ------------------------------------------------------------------ one process


@pytest.mark.parametrize("mode", MODES)
def test_post_is_seen_by_another_channel_without_waiting(
    attach: Callable[..., Channel], mode: tuple[int, int]
) -> None:
    """A sequence number and payload posted through one Channel are read through another
    on the same fd; ``wait`` returns at once when the word already differs from ``old``
    (``check`` never runs) and leaves the sleeping flag down."""
    kernel, worker = attach(*mode), attach(*mode)
    kernel.map[K_PAYLOAD : K_PAYLOAD + 5] = b"hello"
    kernel.words[K_LENGTH] = 5
    kernel.post(K_SEQ, 1, W_SLEEPING)
    assert worker.words[K_SEQ] == 1
    assert worker.wait(K_SEQ, 0, W_SLEEPING, 0.01, must_not_be_called) == 1
    assert worker.map[K_PAYLOAD : K_PAYLOAD + worker.words[K_LENGTH]] == b"hello"
    assert worker.words[W_SLEEPING] == 0
    worker.post(W_SEQ, 1, K_SLEEPING)
    assert kernel.wait(W_SEQ, 0, K_SLEEPING, 0.01, must_not_be_called) == 1
    assert kernel.words[K_SLEEPING] == 0


def test_wait_returns_the_latest_value(attach: Callable[..., Channel]) -> None:
    """Two posts before a wait: ``wait`` gives the latest number, not the first change."""
    kernel, worker = attach(), attach()
    kernel.post(K_SEQ, 1, W_SLEEPING)
    kernel.post(K_SEQ, 2, W_SLEEPING)
    assert worker.wait(K_SEQ, 0, W_SLEEPING, 0.01, must_not_be_called) == 2


@pytest.mark.parametrize("poster_spin", [0, 2000], ids=["poster-futex", "poster-spins"])
@pytest.mark.parametrize("mode", MODES)
def test_post_wakes_a_sleeping_waiter(
    attach: Callable[..., Channel], mode: tuple[int, int], poster_spin: int
) -> None:
    """A waiter blocked in futex with its sleeping flag up is woken by ``post`` (no lost
    wake-up: its nap is far longer than the bound), whether the poster spins (and wakes
    only when the flag is up) or always wakes."""
    kernel, worker = attach(poster_spin), attach(*mode)
    got: list[int] = []
    waiter = threading.Thread(
        target=lambda: got.append(worker.wait(K_SEQ, 0, W_SLEEPING, 10 * GENEROUS)),
        daemon=True,
    )
    waiter.start()
    limit = time.monotonic() + GENEROUS
    while not worker.words[W_SLEEPING] and time.monotonic() < limit:
        time.sleep(0.001)
    assert worker.words[W_SLEEPING] == 1, "the waiter never raised its sleeping flag"
    kernel.map[K_PAYLOAD : K_PAYLOAD + 3] = b"abc"
    kernel.post(K_SEQ, 5, W_SLEEPING)
    waiter.join(GENEROUS)
    assert not waiter.is_alive(), "post did not wake the sleeping waiter"
    assert got == [5]
    assert worker.words[W_SLEEPING] == 0
    assert worker.map[K_PAYLOAD : K_PAYLOAD + 3] == b"abc"


@pytest.mark.parametrize("mode", MODES)
def test_check_runs_between_naps_and_its_exception_propagates(
    attach: Callable[..., Channel], mode: tuple[int, int]
) -> None:
    """A peer that never answers: ``wait`` calls ``check`` after each nap, and what
    ``check`` raises (a deadline) comes out of ``wait`` unchanged -- never a hang. The
    sleeping flag is down again afterwards."""
    kernel, worker = attach(), attach(*mode)
    calls: list[float] = []
    deadline = deadline_check(0.05)

    def check() -> None:
        calls.append(time.monotonic())
        deadline()

    with watchdog(kernel, K_SEQ, W_SLEEPING), pytest.raises(ChannelTimeout, match=r"0\.05 s"):
        worker.wait(K_SEQ, 0, W_SLEEPING, 0.005, check)
    assert len(calls) >= 1
    assert worker.words[W_SLEEPING] == 0
    assert worker.words[K_SEQ] == 0


def test_check_sees_its_own_exception_type(attach: Callable[..., Channel]) -> None:
    """Any exception type from ``check`` propagates (the kernel raises its own _Gone)."""

    class PeerDied(Exception):
        pass

    def check() -> None:
        raise PeerDied("the worker exited")

    kernel, worker = attach(), attach()
    with watchdog(worker, W_SEQ, K_SLEEPING), pytest.raises(PeerDied, match="worker exited"):
        kernel.wait(W_SEQ, 0, K_SLEEPING, 0.001, check)


def test_fence_does_not_block(attach: Callable[..., Channel]) -> None:
    """``fence()`` returns at once, any number of times, from several threads (its lock
    is never left held)."""
    channel = attach()
    threads = [
        threading.Thread(target=lambda: [channel.fence() for _ in range(20_000)], daemon=True)
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    channel.fence()
    for thread in threads:
        thread.join(GENEROUS)
        assert not thread.is_alive()
    channel.fence()


# ------------------------------------------------------------------ close


def test_close_releases_the_mapping_and_is_idempotent(fd: int) -> None:
    """``close()`` releases the word view and closes the mapping (the ctypes view taken
    in __init__ is gone by then); a second close() is harmless."""
    channel = Channel(fd, spin=0)
    channel.post(K_SEQ, 1, W_SLEEPING)
    channel.close()
    assert channel.map.closed
    with pytest.raises(ValueError):
        channel.words[K_SEQ]
    channel.close()
    assert channel.map.closed


def test_close_with_an_exported_ctypes_view(fd: int) -> None:
    """``close()`` while a ctypes view of the mapping is still alive does not raise: the
    mapping stays valid for that view; once it is gone, close() again closes it."""
    channel = Channel(fd, spin=0)
    channel.post(K_SEQ, 42, W_SLEEPING)
    view = ctypes.c_uint32.from_buffer(channel.map, K_SEQ * 4)
    channel.close()
    assert not channel.map.closed
    assert view.value == 42
    channel.close()  # still exported: still harmless
    del view
    channel.close()
    assert channel.map.closed


def test_close_after_a_ctypes_view_existed(fd: int) -> None:
    """A ctypes view taken and dropped before ``close()`` does not keep the mapping open."""
    channel = Channel(fd, spin=0)
    view = ctypes.c_uint32.from_buffer(channel.map, 0)
    view.value = 3
    del view
    channel.close()
    assert channel.map.closed


# ------------------------------------------------------------------ across processes

CHILD = r"""
import os, sys, time
from bastion._channel import (
    K_LENGTH, K_PAYLOAD, K_SEQ, K_SLEEPING, W_LENGTH, W_PAYLOAD, W_SEQ, W_SLEEPING,
    Channel, ChannelTimeout,
)

fd, spin, yields, count = map(int, sys.argv[1:5])
parent = os.getppid()
channel = Channel(fd, spin=spin)
os.close(fd)
channel.set_spin(spin, yields)
limit = time.monotonic() + 60.0

def check():
    if time.monotonic() > limit or os.getppid() != parent:
        raise ChannelTimeout("the parent stopped posting")

words, memory = channel.words, channel.map
seq = 0
for _ in range(count):
    seq = channel.wait(K_SEQ, seq, W_SLEEPING, 0.05, check)
    length = words[K_LENGTH]
    data = memory[K_PAYLOAD : K_PAYLOAD + length]
    memory[W_PAYLOAD : W_PAYLOAD + length] = data[::-1]
    words[W_LENGTH] = length
    channel.post(W_SEQ, seq, K_SLEEPING)
channel.close()
"""


class ChildGone(Exception):
    pass


def payload(seq: int) -> bytes:
    """A payload that differs for every frame, in content and in length (4..1024 bytes)."""
    return seq.to_bytes(4, "little") * (seq % 256 + 1)


@pytest.mark.parametrize(
    ("kernel_mode", "worker_mode"),
    [
        pytest.param((2000, 0), (2000, 0), id="both-spin"),
        pytest.param((0, 200), (0, 200), id="both-yield"),
        pytest.param((0, 0), (0, 0), id="both-futex-only"),
        pytest.param((2000, 0), (0, 0), id="kernel-spins-worker-futex"),
        pytest.param((0, 0), (2000, 0), id="kernel-futex-worker-spins"),
    ],
)
def test_hand_off_with_a_child_process(
    fd: int, kernel_mode: tuple[int, int], worker_mode: tuple[int, int]
) -> None:
    """A child (``python -I -c``, the fd passed with pass_fds) attaches with
    ``Channel(fd, spin=...)`` and echoes N frames: every sequence number arrives, in
    order, and the payload written before each ``post`` is exactly what the other side
    reads (the child sends it back reversed)."""
    count = 1500
    kernel = Channel(fd, spin=kernel_mode[0])
    kernel.set_spin(*kernel_mode)
    args = [str(fd), str(worker_mode[0]), str(worker_mode[1]), str(count)]
    received: list[int] = []
    wrong: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-I", "-c", CHILD, *args],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as child:
        try:
            deadline = deadline_check()

            def check() -> None:
                if child.poll() is not None:
                    raise ChildGone(f"the child exited with {child.returncode}")
                deadline()

            for seq in range(1, count + 1):
                data = payload(seq)
                kernel.map[K_PAYLOAD : K_PAYLOAD + len(data)] = data
                kernel.words[K_LENGTH] = len(data)
                kernel.post(K_SEQ, seq, W_SLEEPING)
                value = kernel.wait(W_SEQ, seq - 1, K_SLEEPING, 0.05, check)
                received.append(value)
                length = kernel.words[W_LENGTH]
                if kernel.map[W_PAYLOAD : W_PAYLOAD + length] != data[::-1]:
                    wrong.append(seq)
        except BaseException:
            child.kill()
            raise
        finally:
            kernel.close()
        _, errors = child.communicate(timeout=GENEROUS)
    assert child.returncode == 0, errors.decode(errors="replace")
    assert received == list(range(1, count + 1))
    assert wrong == []


def test_child_deadline_when_nobody_posts(fd: int) -> None:
    """A worker-side wait on a kernel that never posts ends through its own ``check``
    (here: the child's deadline), not a hang, and touches no sequence word."""
    code = (
        "import sys, time\n"
        "from bastion._channel import K_SEQ, W_SLEEPING, Channel, ChannelTimeout\n"
        "channel = Channel(int(sys.argv[1]), spin=0)\n"
        "limit = time.monotonic() + 0.1\n"
        "def check():\n"
        "    if time.monotonic() > limit:\n"
        "        raise ChannelTimeout('deadline')\n"
        "try:\n"
        "    channel.wait(K_SEQ, 0, W_SLEEPING, 0.01, check)\n"
        "except ChannelTimeout:\n"
        "    sys.exit(7)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-I", "-c", code, str(fd)],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as child:
        try:
            _, errors = child.communicate(timeout=GENEROUS)
        except subprocess.TimeoutExpired:
            child.kill()
            raise
    assert child.returncode == 7, errors.decode(errors="replace")
    observer = Channel(fd, spin=0)
    try:
        assert (observer.words[K_SEQ], observer.words[W_SEQ], observer.words[W_SLEEPING]) == (
            0,
            0,
            0,
        )
    finally:
        observer.close()
