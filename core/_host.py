"""The seam between the engine and strategy code: :class:`StrategyHost`.

The engine never runs strategy code itself.  It hands each strategy's host
the events of one step (start, a bar, a fill, a rejection, stop) and then
gathers the answers — order *intents* and log records, or a failure — so
sandboxed workers compute in parallel.  Two implementations:

* :class:`InProcessHost` (here): compiles the verified bytes and calls the
  hooks in the kernel's own process.  For trusted backtests only
  (``--in-process``); it has no deadline and no protection.
* :class:`~bastion._sandbox.WorkerHost`: one locked-down worker process per
  strategy, fed over shared memory; it enforces the deadline and reports
  why a worker was stopped.

Whatever a host returns is only ever a request: the engine stamps every
order with the identity *it* holds for the strategy (SHA-256, signer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._context import StrategyError, StrategyRunner
from ._errors import printable
from ._module import LoadedModule, LoadFailure, load_module
from .models import AccountSnapshot, Bar, Fill, OrderIntent

if TYPE_CHECKING:
    from ._loader import StrategyInfo

__all__ = [
    "QUARANTINE_KINDS",
    "Failure",
    "InProcessHost",
    "Launcher",
    "Layer",
    "LoadReport",
    "LogRecord",
    "Reply",
    "StrategyHost",
    "in_process",
]

#: Why a strategy was stopped, as stored: the first word of its quarantine reason.
TIMEOUT = "timeout"  # missed its deadline; the worker was killed
CRASHED = "crashed"  # the worker died of a signal (named)
MEMORY_LIMIT = "memory-limit"  # ran out of its address-space limit
CPU_LIMIT = "cpu-limit"  # used up its CPU-time limit
PROTOCOL_VIOLATION = "protocol-violation"  # said something the kernel does not accept
EXITED = "exited"  # the worker exited by itself
EXCEPTION = "exception"  # strategy code raised
QUARANTINE_KINDS = (
    TIMEOUT,
    CRASHED,
    MEMORY_LIMIT,
    CPU_LIMIT,
    PROTOCOL_VIOLATION,
    EXITED,
    EXCEPTION,
)

LogRecord = tuple[str, str, Mapping[str, str]]  # level, event, fields (all text)

#: Field names the kernel's log line owns (or its logger's signature): a strategy's
#: field of that name is renamed ``field_NAME`` rather than speaking for the kernel.
RESERVED_FIELDS = frozenset(
    {"self", "event", "strategy", "run_id", "level", "log_level", "timestamp", "exc_info"}
)


def log_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """A strategy's log fields, safe to pass as keywords next to the kernel's own."""
    if not RESERVED_FIELDS.intersection(fields):
        return dict(fields)
    clean: dict[str, str] = {}
    for key, value in fields.items():
        if key in RESERVED_FIELDS:
            key = f"field_{key}"
            while key in fields or key in clean:
                key = f"field_{key}"
        clean[key] = value
    return clean


@attrs.frozen
class Failure:
    """Why a strategy cannot go on: a kind from :data:`QUARANTINE_KINDS`, the hook it
    was handling, a one-line reason and (for ``exception``) its own traceback."""

    kind: str
    hook: str
    reason: str = attrs.field(converter=printable)
    traceback: str | None = None

    def text(self) -> str:
        """The stored quarantine reason: ``KIND: HOOK: REASON``."""
        return f"{self.kind}: {self.hook}: {self.reason}"


@attrs.frozen
class Reply:
    """A host's answer to one event."""

    intents: tuple[OrderIntent, ...] = ()
    logs: tuple[LogRecord, ...] = ()
    failure: Failure | None = None


@attrs.frozen
class Layer:
    """One protection layer of a sandboxed worker, as it reported it."""

    name: str
    active: bool
    detail: str


@attrs.frozen
class LoadReport:
    """A strategy module loaded behind a host: its hooks, its ``PARAMS`` and, for a
    worker, the protection layers active while the module body ran."""

    hooks: tuple[str, ...]
    params: Mapping[str, Any]
    layers: tuple[Layer, ...] = ()
    logs: tuple[LogRecord, ...] = ()


class StrategyHost(Protocol):
    """Runs one admitted strategy's code for the engine.

    Events are *posted* (``start``, ``post_bar``, ``post_fill``,
    ``post_reject``, ``post_stop``) and answered by :meth:`gather`, exactly
    once per post and in order; a host may compute between the two (a worker
    does, in parallel with the others).  ``working`` notes a change of the
    strategy's working quantity; it is delivered before the next event.
    """

    info: StrategyInfo
    mode: str  # "in-process" or "sandboxed"

    def load(self) -> LoadReport | LoadFailure:
        """Compile and run the verified bytes' module body; validate its hooks."""
        ...

    def start(self, params: Mapping[str, Any], account: AccountSnapshot) -> None: ...

    def post_bar(self, bar: Bar) -> None: ...

    def post_fill(self, fill: Fill, account: AccountSnapshot) -> None: ...

    def post_reject(self, intent: OrderIntent, reason: str) -> None: ...

    def post_stop(self) -> None: ...

    def gather(self) -> Reply | None:
        """The answer to the oldest posted event; ``None`` when it asked for nothing."""
        ...

    def working(self, symbol: str, change: Decimal) -> None: ...

    def close(self) -> None:
        """Release the host (a worker is killed); idempotent."""
        ...


Launcher = Callable[["StrategyInfo", bytes], StrategyHost]


class InProcessHost:
    """Runs the strategy in the kernel's own process: trusted backtests only."""

    mode = "in-process"

    def __init__(self, info: StrategyInfo, source: bytes) -> None:
        self.info = info
        self._source = source
        self._loaded: LoadedModule | None = None
        self._runner: StrategyRunner | None = None
        self._reply: Reply | None = None
        self._early: list[str] = []  # printed by the module body, before a runner exists
        self._bar: Callable[[Bar], list[OrderIntent] | None] | None = None

    @property
    def module(self) -> Any:
        return self._loaded.module if self._loaded else None

    def _output(self, text: str) -> None:
        if self._runner is not None:
            self._runner.output(text)
        elif len(self._early) < 20:
            self._early.append(text.rstrip("\n")[:1000])

    def load(self) -> LoadReport | LoadFailure:
        loaded = load_module(self.info.name, str(self.info.path), self._source, self._output)
        if isinstance(loaded, LoadFailure):
            return loaded
        self._loaded = loaded
        logs = tuple(("info", "print", MappingProxyType({"text": t})) for t in self._early)
        return LoadReport(hooks=loaded.hooks, params=loaded.params, logs=logs)

    def start(self, params: Mapping[str, Any], account: AccountSnapshot) -> None:
        if self._loaded is None:
            raise RuntimeError(f"{self.info.name}: start() before a successful load()")
        if self._runner is not None:
            raise RuntimeError(f"{self.info.name}: a host runs one strategy run only")
        runner = self._runner = StrategyRunner(
            self.info.name, str(self.info.path), self._loaded.functions, params
        )
        self._bar = runner.bar
        self._answer(lambda: runner.start(account))

    def _answer(self, call: Callable[[], list[OrderIntent] | None]) -> None:
        runner = self._runner
        assert runner is not None
        try:
            intents = call()
        except StrategyError as exc:
            self._reply = self._failed(exc)
            return
        logs = runner.take_logs() if runner.logs else ()
        self._reply = Reply(tuple(intents or ()), tuple(logs)) if (intents or logs) else None

    def _failed(self, exc: StrategyError) -> Reply:
        runner = self._runner
        assert runner is not None
        return Reply(
            logs=tuple(runner.take_logs()),
            failure=Failure(exc.kind, exc.hook, exc.reason, exc.traceback),
        )

    def post_bar(self, bar: Bar) -> None:
        handler = self._bar
        assert handler is not None
        try:
            intents = handler(bar)
        except StrategyError as exc:
            self._reply = self._failed(exc)
            return
        if intents is None:
            self._reply = None
        else:
            runner = self._runner
            assert runner is not None
            self._reply = Reply(tuple(intents), tuple(runner.take_logs()))

    def post_fill(self, fill: Fill, account: AccountSnapshot) -> None:
        runner = self._runner
        assert runner is not None
        try:
            intents = runner.fill(fill, account)
        except StrategyError as exc:
            self._reply = self._failed(exc)
            return
        logs = runner.take_logs() if runner.logs else ()
        self._reply = Reply(tuple(intents), tuple(logs)) if (intents or logs) else None

    def post_reject(self, intent: OrderIntent, reason: str) -> None:
        runner = self._runner
        assert runner is not None
        self._answer(lambda: runner.reject(intent, reason))

    def post_stop(self) -> None:
        runner = self._runner
        assert runner is not None
        self._answer(runner.stop)

    def gather(self) -> Reply | None:
        reply, self._reply = self._reply, None
        return reply

    def working(self, symbol: str, change: Decimal) -> None:
        if self._runner is not None:
            self._runner.working(symbol, change)

    def close(self) -> None:
        self._bar = None


def in_process(info: StrategyInfo, source: bytes) -> StrategyHost:
    """The :data:`Launcher` of :class:`InProcessHost`."""
    return InProcessHost(info, source)
