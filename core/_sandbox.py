"""The kernel's side of the sandbox: :class:`WorkerHost`, one locked-down worker
process per strategy, and :func:`probe` for ``bastion sandbox``.

A worker is a fresh interpreter (``python -I -m bastion._worker``) with an
empty environment, an empty temporary working directory, its own session
(process group) and no inherited descriptor but its shared-memory channel and
a pipe for stray output.  It locks itself down and reports its layers before
it is given the strategy's verified bytes; the kernel refuses to go on when a
layer the environment requires is missing.

Every event has a deadline.  A worker that misses it, dies, or says anything
the protocol does not allow is killed (its whole process group) and its
strategy quarantined with a distinct reason: ``timeout``, ``crashed``,
``memory-limit``, ``cpu-limit``, ``protocol-violation``, ``exited`` (strategy
exceptions come back as ``exception``).  The worker never holds a bar later
than the one its strategy is handling: bars are handed over one at a time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs

from . import _protocol as p
from ._channel import (
    K_CAP,
    K_KIND,
    K_LENGTH,
    K_PAYLOAD,
    K_SEQ,
    K_SLEEPING,
    SPIN_OK,
    W_CAP,
    W_KIND,
    W_LENGTH,
    W_PAYLOAD,
    W_SEQ,
    W_SLEEPING,
    Channel,
)
from ._errors import printable
from ._host import (
    CPU_LIMIT,
    CRASHED,
    EXITED,
    MEMORY_LIMIT,
    PROTOCOL_VIOLATION,
    TIMEOUT,
    Failure,
    Launcher,
    Layer,
    LoadReport,
    Reply,
    StrategyHost,
)
from ._logging import get_logger
from ._module import LOAD_ERROR, LoadFailure
from .models import AccountSnapshot, Bar, Fill, OrderIntent

if TYPE_CHECKING:
    from ._loader import StrategyInfo

__all__ = [
    "LAYER_NAMES",
    "LIVE_REQUIRES",
    "SandboxConfig",
    "WorkerHost",
    "probe",
    "sandboxed",
]

LAYER_NAMES = ("network", "user", "rlimits", "no_new_privs", "not_dumpable", "landlock", "seccomp")
LIVE_REQUIRES = frozenset({"network", "seccomp", "rlimits", "user", "landlock"})
SANDBOX_UNAVAILABLE = "sandbox-unavailable"
ZERO = Decimal(0)
BAR_SIZE = p.BAR.size
K_BAR = p.K_BAR
EXIT_MEMORY = 86  # bastion._worker's code for "out of memory outside strategy code"
OUTPUT_CAP = 256 * 1024  # bytes of a worker's stray stdout/stderr logged per worker
OUTPUT_LINES = 2000  # and at most this many log records of it
SPIN = 2000  # the kernel's polls (~0.1 ms) before blocking, when there is a core to spare
WORKER_SPIN = 20000  # a worker's (~1 ms)
YIELDS = 200  # polls with sched_yield() in between
CROWDED = (0, YIELDS)  # more workers than cores: spin politely, then block


@attrs.frozen
class SandboxConfig:
    """``[sandbox]`` settings (per environment): deadlines, limits, required layers."""

    deadline: float = 5.0  # seconds a worker has to answer one event
    load_deadline: float = 30.0  # to start, lock down and run the module body
    memory_mb: int = 1024  # address space
    cpu_seconds: int = 3600  # CPU time over the worker's life
    open_files: int = 64
    require: frozenset[str] = frozenset()  # layers that must be active, else refuse
    spin: int | None = None  # polls before blocking; None: by the number of cores
    #: Layers not to apply.  Not a bastion.toml setting: for tests that show what a
    #: machine without a layer gets (a refusal where it is required).
    skip: frozenset[str] = frozenset()


_warned: set[str] = set()


class _Gone(Exception):
    """The worker cannot answer: it died, missed its deadline or broke the protocol."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class WorkerHost:
    """One strategy in its own locked-down worker process (see the module docstring)."""

    mode = "sandboxed"

    def __init__(
        self, info: StrategyInfo, source: bytes, config: SandboxConfig, peers: list[WorkerHost]
    ) -> None:
        self.info = info
        self.config = config
        self.layers: tuple[Layer, ...] = ()
        self._source = source
        self._peers = peers
        self._log = get_logger("strategy", strategy=info.name)  # its stray output
        self._seq = 0  # the latest frame posted
        self._hook = "load"
        self._deadline = 0.0
        # Notes delivered with the next frame, coalesced: the net change of each symbol's
        # working quantity, and the latest fill of a strategy without on_fill (a fill
        # only updates ctx there: its time, cash, positions and marks, which the latest
        # snapshot holds whole), so any number of fills between two events is one note.
        self._updates = False  # is there any note?
        self._working: dict[str, Decimal] = {}
        self._fill_note: list[Any] | None = None
        self._hooks: frozenset[str] = frozenset()
        self._answered = False  # the latest post needs no answer from the worker
        self._extra_symbol = self._extra_updates = False
        self._pack_bar = p.BAR.pack_into
        self._clock = time.monotonic
        self._bar_deadline = config.deadline
        self._spins = range(0)
        self._to_us = p.BarClock().to_us
        self._symbols: dict[str, int] = {}
        self._failure: Failure | None = None
        self._status: tuple[int, float] | None = None  # wait status, CPU seconds used
        self._killed: _Gone | None = None
        self._tail = bytearray()
        self._closed = False
        fd = Channel.create()
        self._channel = Channel(fd, spin=0)
        self._words = self._channel.words
        self._memory = self._channel.map
        self._post_seq = self._channel.post
        self._cwd = tempfile.mkdtemp(prefix="bastion-worker-")
        out_read, out_write = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-m", "bastion._worker", str(fd), str(os.getpid())],
                env={},
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=out_write,
                stderr=out_write,
                pass_fds=(fd,),
                close_fds=True,
                start_new_session=True,
            )
        except BaseException:  # nothing started: release what was made for it
            os.close(out_read)
            self._channel.close()
            shutil.rmtree(self._cwd, ignore_errors=True)
            raise
        finally:
            os.close(out_write)
            os.close(fd)
        self._reader = threading.Thread(
            target=self._drain, args=(out_read,), name=f"bastion-output-{info.name}", daemon=True
        )
        self._reader.start()
        peers.append(self)
        self._deadline = time.monotonic() + config.load_deadline
        self._post_message(
            p.K_SETUP,
            {
                "memory_mb": config.memory_mb,
                "cpu_seconds": config.cpu_seconds,
                "open_files": config.open_files,
                "skip": sorted(config.skip),
            },
        )

    # -- the worker's stray output --------------------------------------------------------

    def _drain(self, fd: int) -> None:
        """Log what the worker writes to its stdout/stderr (never the protocol), capped."""
        seen = logged = 0
        pending = b""
        with os.fdopen(fd, "rb", buffering=0) as stream:
            while True:
                try:
                    chunk = stream.read(65536)
                except OSError:
                    break
                if not chunk:
                    break
                self._tail = (self._tail + chunk)[-2048:]
                if seen < OUTPUT_CAP and logged < OUTPUT_LINES:
                    pending += chunk[: OUTPUT_CAP - seen]
                    *lines, pending = pending.split(b"\n")
                    for line in lines[: OUTPUT_LINES - logged]:
                        self._log.warning(
                            "strategy_output", text=line.decode("utf-8", "replace")[:1000]
                        )
                    logged += len(lines)
                seen += len(chunk)
        if pending and seen <= OUTPUT_CAP and logged < OUTPUT_LINES:
            self._log.warning("strategy_output", text=pending.decode("utf-8", "replace")[:1000])
        if seen > OUTPUT_CAP or logged > OUTPUT_LINES:
            self._log.warning(
                "strategy_output_truncated",
                bytes=seen,
                kept_bytes=OUTPUT_CAP,
                lines=logged,
                kept_lines=OUTPUT_LINES,
            )

    # -- frames --------------------------------------------------------------------------

    def _post(self, kind: int, data: bytes, hook: str, deadline: float) -> None:
        memory = self._memory
        size = len(data)
        if size > K_CAP:
            self._too_large(size, hook)
            return
        memory[K_PAYLOAD : K_PAYLOAD + size] = data
        words = self._words
        words[K_LENGTH] = size
        words[K_KIND] = kind
        self._hook = hook
        self._deadline = time.monotonic() + deadline
        self._seq += 1
        self._channel.post(K_SEQ, self._seq, W_SLEEPING)

    def _post_message(self, kind: int, message: Any, hook: str = "load") -> None:
        self._post(kind, p.pack(message), hook, self.config.load_deadline)

    def _check(self) -> None:
        """Between naps while waiting: has the worker died, or missed its deadline?"""
        if self._reap(block=False):
            raise self._death()
        if time.monotonic() > self._deadline:
            limit = self.config.load_deadline if self._hook == "load" else self.config.deadline
            raise _Gone(TIMEOUT, f"no answer within {limit:g} s; the worker was killed")

    def _answer(self) -> tuple[int, bytes]:
        """Wait for the answer to the latest frame: its kind and a private copy of it."""
        words = self._words
        expected = self._seq
        value = words[W_SEQ]
        if value != expected:
            value = self._channel.wait(W_SEQ, expected - 1, K_SLEEPING, 0.002, self._check)
            if value != expected:
                raise _Gone(
                    PROTOCOL_VIOLATION, f"answer out of sequence (expected {expected}, got {value})"
                )
        length = words[W_LENGTH]
        kind = words[W_KIND]
        if length > W_CAP:
            raise _Gone(PROTOCOL_VIOLATION, f"answer of {length} bytes exceeds {W_CAP}")
        data = self._memory[W_PAYLOAD : W_PAYLOAD + length] if length else b""
        return kind, data

    def _too_large(self, size: int, hook: str) -> None:
        """An event the channel cannot carry: that strategy stops, the run goes on (the
        next gather reports it)."""
        self._hook = hook
        self._fail(
            _Gone(
                PROTOCOL_VIOLATION,
                f"an event of {size} bytes does not fit the worker's channel ({K_CAP} bytes)",
            )
        )

    # -- death and quarantine ---------------------------------------------------------------

    def _reap(self, block: bool) -> bool:
        if self._status is not None:
            return True
        try:
            pid, status, usage = os.wait4(self._proc.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status, usage = self._proc.pid, 0, None
        if pid == 0:
            return False
        cpu = (usage.ru_utime + usage.ru_stime) if usage is not None else 0.0
        self._status = (status, cpu)
        self._proc.returncode = os.waitstatus_to_exitcode(status)
        return True

    def _death(self) -> _Gone:
        """Why the worker is gone, from its wait status."""
        assert self._status is not None
        status, cpu = self._status
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            if number == signal.SIGXCPU or (
                number == signal.SIGKILL and cpu >= self.config.cpu_seconds - 0.5
            ):
                return _Gone(CPU_LIMIT, f"used its {self.config.cpu_seconds} s of CPU time")
            return _Gone(CRASHED, f"the worker died of {_signal_name(number)}")
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        if code == EXIT_MEMORY:
            return _Gone(MEMORY_LIMIT, f"ran out of its {self.config.memory_mb} MiB of memory")
        return _Gone(EXITED, f"the worker exited with code {code}")

    def _fail(self, gone: _Gone) -> Failure:
        """Kill the worker (if it still runs) and remember why it is gone."""
        self._kill()
        self._failure = Failure(gone.kind, self._hook, gone.reason)
        return self._failure

    def _kill(self) -> None:
        if self._status is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._reap(block=True)

    # -- StrategyHost ----------------------------------------------------------------------

    def load(self) -> LoadReport | LoadFailure:
        try:
            kind, data = self._answer()
            if kind != p.W_REPLY:
                raise _Gone(PROTOCOL_VIOLATION, "expected the lock-down report")
            try:
                layers = p.decode_layers(data, self._seq)
            except p.ProtocolViolation as exc:  # Bastion's own code still: a bug, not an attack
                raise _Gone(PROTOCOL_VIOLATION, str(exc)) from None
            self.layers = tuple(Layer(*layer) for layer in layers)
            missing = [layer for layer in self.layers if not layer.active]
            required = [layer for layer in missing if layer.name in self.config.require]
            if required:
                self._post_message(p.K_EXIT, [])
                self.close()
                first = required[0]
                return LoadFailure(
                    SANDBOX_UNAVAILABLE,
                    f"the sandbox layer {first.name!r} is unavailable here ({first.detail}) and "
                    "this environment requires it; see 'bastion sandbox' ([sandbox] require)",
                )
            for layer in missing:
                if layer.name not in _warned:
                    _warned.add(layer.name)
                    get_logger("system", strategy=self.info.name).warning(
                        "sandbox_layer_unavailable", layer=layer.name, detail=layer.detail
                    )
            self._post_message(
                p.K_LOAD,
                {"name": self.info.name, "filename": str(self.info.path), "source": self._source},
            )
            kind, data = self._answer()
            if kind not in (p.W_LOADED, p.W_LOAD_FAILED):
                raise _Gone(PROTOCOL_VIOLATION, "expected the load report")
            try:
                first_, second, _, logs = p.decode_loaded(data, self._seq, kind == p.W_LOAD_FAILED)
            except p.ProtocolViolation as exc:
                raise _Gone(PROTOCOL_VIOLATION, str(exc)) from None
        except _Gone as gone:
            self._kill()
            self.close()
            tail = bytes(self._tail).decode("utf-8", "replace").strip().splitlines()
            detail = (
                f" ({printable(tail[-1][:200])})" if tail and gone.kind in (EXITED, CRASHED) else ""
            )
            what = "did not finish loading" if gone.kind == TIMEOUT else "failed while loading"
            return LoadFailure(LOAD_ERROR, f"the sandboxed worker {what}: {gone.reason}{detail}")
        if kind == p.W_LOAD_FAILED:
            self.close()
            return LoadFailure(str(first_), str(second))
        assert isinstance(second, Mapping)
        self._source = b""
        self._hooks = frozenset(first_)
        return LoadReport(hooks=first_, params=second, layers=self.layers, logs=logs)

    def _spin(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(polls, yielding polls) before blocking, for the kernel and for the worker."""
        if not SPIN_OK:
            return (0, 0), (0, 0)
        if self.config.spin is not None:
            return (self.config.spin, YIELDS), (self.config.spin, YIELDS)
        live = sum(1 for peer in self._peers if not peer._closed)
        if live + 1 <= (os.cpu_count() or 1):
            # A core each: the kernel waits for an answer (microseconds) a little,
            # the worker for the next event (the kernel may be booking orders or
            # committing) longer, about a millisecond.
            return (SPIN, 0), (WORKER_SPIN, 0)
        # More workers than cores: a waiting side gives its core away between polls.
        return CROWDED, CROWDED

    def start(self, params: Mapping[str, Any], account: AccountSnapshot) -> None:
        if self._closed or not self._hooks:
            raise RuntimeError(
                f"{self.info.name}: a worker runs one strategy run, after a successful load()"
            )
        (spin, yields), worker = self._spin()
        self._channel.set_spin(spin, yields)
        self._spins = range(spin)
        self._post(
            p.K_START,
            p.pack([self._take_updates(), dict(params), p.encode_account(account), list(worker)]),
            "on_start",
            self.config.deadline,
        )

    def _take_updates(self) -> list[list[Any]]:
        notes: list[list[Any]] = [
            ["w", symbol, str(change)] for symbol, change in self._working.items() if change
        ]
        if self._fill_note is not None:
            notes.append(self._fill_note)
        self._working, self._fill_note, self._updates = {}, None, False
        return notes

    def post_bar(self, bar: Bar) -> None:
        # Once per bar and strategy: everything it touches is bound in __init__.
        if self._failure is not None:
            return
        symbol = bar.symbol
        index = self._symbols.get(symbol)
        volume = bar.volume
        flags = 0 if volume is None else 1  # BAR_VOLUME
        if index is None or self._updates:
            index = self._bar_extra(symbol, index)
            if self._failure is not None:
                return
            flags |= 4 if self._extra_updates else 0
            flags |= 2 if self._extra_symbol else 0
        self._pack_bar(
            self._memory,
            K_PAYLOAD,
            flags,
            index,
            self._to_us(bar.ts),
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            volume or 0.0,
        )
        words = self._words
        if not flags & 6:
            words[K_LENGTH] = BAR_SIZE
        words[K_KIND] = K_BAR
        self._hook = "on_bar"
        self._deadline = self._clock() + self._bar_deadline
        seq = self._seq = self._seq + 1
        self._post_seq(K_SEQ, seq, W_SLEEPING)

    def _bar_extra(self, symbol: str, index: int | None) -> int:
        """A bar that defines a new symbol or carries notes: the msgpack trailer."""
        define = None
        self._extra_symbol = index is None
        if index is None:
            index = self._symbols[symbol] = len(self._symbols)
            define = symbol
        updates = self._take_updates()
        self._extra_updates = bool(updates)
        extra = p.pack([define, updates])
        start = K_PAYLOAD + BAR_SIZE
        if BAR_SIZE + len(extra) > K_CAP:
            self._too_large(BAR_SIZE + len(extra), "on_bar")
            return index
        self._memory[start : start + len(extra)] = extra
        self._words[K_LENGTH] = BAR_SIZE + len(extra)
        return index

    def post_fill(self, fill: Fill, account: AccountSnapshot) -> None:
        if self._failure is not None:
            return
        if "on_fill" not in self._hooks:
            self._fill_note = ["f", p.encode_fill(fill), p.encode_account(account)]
            self._updates = True
            self._answered = True
        else:
            self._post(
                p.K_FILL,
                p.pack([self._take_updates(), p.encode_fill(fill), p.encode_account(account)]),
                "on_fill",
                self.config.deadline,
            )

    def post_reject(self, intent: OrderIntent, reason: str) -> None:
        if self._failure is not None:
            return
        if "on_reject" not in self._hooks:
            self._answered = True  # nothing of the strategy's would run
        else:
            self._post(
                p.K_REJECT,
                p.pack([self._take_updates(), p.encode_intent(intent), reason]),
                "on_reject",
                self.config.deadline,
            )

    def post_stop(self) -> None:
        if self._failure is None:
            self._post(p.K_STOP, p.pack([self._take_updates()]), "on_stop", self.config.deadline)

    def gather(self) -> Reply | None:
        # Once per bar and strategy: the common answer (nothing asked, nothing logged)
        # is awaited right here; anything else goes through _gather.
        if not self._answered and self._failure is None:
            words = self._words
            seq = self._seq
            for _ in self._spins:
                if words[W_SEQ] == seq:
                    if not words[W_LENGTH]:
                        return None
                    break
        return self._gather()

    def _gather(self) -> Reply | None:
        if self._failure is not None:
            return Reply(failure=self._failure)
        if self._answered:
            self._answered = False
            return None
        try:
            kind, data = self._answer()
            if not data:  # an answer of length 0 says nothing, whatever its kind
                return None
            if kind != p.W_REPLY:
                raise _Gone(PROTOCOL_VIOLATION, f"unexpected answer kind {kind}")
            try:
                intents, logs, failure = p.decode_reply(data, self._seq)
            except p.ProtocolViolation as exc:
                raise _Gone(PROTOCOL_VIOLATION, str(exc)) from None
        except _Gone as gone:
            return Reply(failure=self._fail(gone))
        if failure is not None:
            failure = Failure(*failure)
        return Reply(intents=intents, logs=logs, failure=failure)

    def working(self, symbol: str, change: Decimal) -> None:
        self._working[symbol] = self._working.get(symbol, ZERO) + change
        self._updates = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kill()
        self._reader.join(timeout=2.0)
        self._channel.close()
        shutil.rmtree(self._cwd, ignore_errors=True)


def sandboxed(config: SandboxConfig | None = None) -> Launcher:
    """A launcher of :class:`WorkerHost` with ``config`` (default: :class:`SandboxConfig`)."""
    chosen = config or SandboxConfig()
    peers: list[WorkerHost] = []

    def launch(info: StrategyInfo, source: bytes) -> StrategyHost:
        if not sys.platform.startswith("linux"):
            from ._errors import ConfigError

            raise ConfigError(
                f"the strategy sandbox needs Linux (namespaces, seccomp, Landlock), not "
                f"{sys.platform}; run trusted backtests with --in-process"
            )
        peers[:] = [peer for peer in peers if not peer._closed]
        return WorkerHost(info, source, chosen, peers)

    return launch


PROBE_SOURCE = b"""from bastion import strategy


@strategy.hook
def on_bar(ctx, bar):
    pass
"""


def probe(config: SandboxConfig | None = None) -> tuple[Layer, ...]:
    """Start one worker with a do-nothing strategy and return the layers it reports."""
    from pathlib import Path

    from ._loader import StrategyInfo

    info = StrategyInfo(
        name="probe.py",
        path=Path("<bastion sandbox probe>"),
        sha256="",
        signer=None,
        signer_name=None,
        signed_at=None,
        whitelist_version=None,
        unsigned=True,
    )
    host = WorkerHost(info, PROBE_SOURCE, config or SandboxConfig(), [])
    try:
        outcome = host.load()
    finally:
        host.close()
    if isinstance(outcome, LoadFailure) and not host.layers:
        raise RuntimeError(outcome.reason)
    return host.layers


# ------------------------------------------------------------------ configuration

DEFAULT_REQUIRES = {
    "development": frozenset[str](),
    "paper": LIVE_REQUIRES,
    "live": LIVE_REQUIRES,
}
_NUMBERS: dict[str, tuple[type, float, float]] = {
    "deadline": (float, 0.001, 3600.0),
    "load_deadline": (float, 0.1, 3600.0),
    "memory_mb": (int, 128, 1024 * 1024),
    "cpu_seconds": (int, 1, 10**7),
    "open_files": (int, 16, 4096),
    "spin": (int, 0, 10**7),
}


def sandbox_config(config: Mapping[str, Any], environment: str, config_name: str) -> SandboxConfig:
    """``[sandbox]`` then ``[sandbox.ENV]`` of ``bastion.toml`` over the defaults; a bad
    value is a one-line :class:`~bastion.ConfigError` naming the key."""
    from ._errors import ConfigError

    table = config.get("sandbox", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{config_name}: [sandbox] must be a table")
    merged = {k: v for k, v in table.items() if not isinstance(v, dict)}
    for key, value in table.items():
        if isinstance(value, dict) and key not in DEFAULT_REQUIRES:
            raise ConfigError(
                f"{config_name}: [sandbox.{key}] is not an environment; use "
                f"[sandbox.development], [sandbox.paper] or [sandbox.live]"
            )
    own = table.get(environment, {})
    merged.update(own)
    values: dict[str, Any] = {"require": DEFAULT_REQUIRES.get(environment, LIVE_REQUIRES)}
    for key, value in merged.items():
        where = f"{config_name}: sandbox.{key}"
        if key == "require":
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"{where} must be a list of layer names like ['seccomp']")
            if names == ["all"]:
                names = list(LAYER_NAMES)
            unknown = [n for n in names if n not in LAYER_NAMES]
            if unknown:
                raise ConfigError(
                    f"{where}: unknown layer {unknown[0]!r}; layers are {', '.join(LAYER_NAMES)}"
                )
            values["require"] = frozenset(names)
            continue
        if key not in _NUMBERS:
            known = ", ".join(["require", *_NUMBERS])
            raise ConfigError(f"{where} is not a sandbox setting; settings are {known}")
        kind, low, high = _NUMBERS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r} must be a number")
        if kind is int and not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r} must be a whole number")
        if not low <= value <= high:
            raise ConfigError(f"{where} = {value!r} must be between {low:g} and {high:g}")
        values[key] = kind(value)
    if environment != "development" and not values["require"] >= LIVE_REQUIRES:
        weaker = sorted(LIVE_REQUIRES - values["require"])
        get_logger().warning(
            "sandbox_requirement_lowered", environment=environment, not_required=weaker
        )
    return SandboxConfig(**values)
