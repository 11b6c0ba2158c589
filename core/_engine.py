"""The engine's driver: runs an :class:`~bastion._core.EngineCore` against the real
things — the strategies' hosts, the broker, the store, the log streams, the plugins.

The data path is source -> strategies -> limits and risk -> broker -> fills ->
portfolio -> storage -> ``on_fill`` back to the strategy.  Every decision along it
is the core's (``bastion._core``: a state machine that does no I/O); the
:class:`Engine` here only carries out the commands the core returns, one at a time
and in order, sending each result back (see :meth:`Engine.execute`).  That is the
one place where the engine touches the world, and it is the same for every driver:
:meth:`Engine.run` is the backtest driver (bars from an iterator, handed to the
core's coroutine by :meth:`Engine.on_bars`; the simulator's fills come out of the
``Match`` command), ``bastion._live.drive`` the paper and live one (bars, the
broker's pushed news and timer ticks, on asyncio, each through
:meth:`Engine.handle`).

Strategy code is never called from here: each strategy sits behind a
:class:`~bastion._host.StrategyHost` (a sandboxed worker, or the in-process
runner for trusted backtests).  The ``Ask`` command posts a bar to every host
first and then gathers the answers in a fixed order, so workers compute in
parallel and the results do not depend on which host ran them.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._context import operator_interrupt
from ._core import (
    Ask,
    Audit,
    CancelAll,
    CancelOrder,
    CancelStrategy,
    CheckRisk,
    Commands,
    Dismiss,
    EngineConfig,
    EngineCore,
    Event,
    ExceptionPolicy,
    Gather,
    Log,
    Match,
    Notify,
    OrderLimits,
    PostFill,
    PostReject,
    PostStop,
    ReadHalt,
    RecordBenchmark,
    RecordEquity,
    RecordFill,
    RecordOrder,
    RecordPeriodReturns,
    RecordPositions,
    RecordResult,
    Start,
    StrategyResult,
    Submit,
    Tick,
    UpdateOrder,
    Working,
    unholdable,
)
from ._host import Reply, StrategyHost
from ._kernel import Kernel
from ._loader import Strategy
from ._logging import get_logger
from .interfaces import Broker, Store
from .models import Bar, Fill

__all__ = [
    "Engine",
    "EngineConfig",
    "ExceptionPolicy",
    "OrderLimits",
    "RunResult",
    "StrategyResult",
    "Tick",
    "unholdable",
]


@attrs.frozen
class RunResult:
    run_id: str
    bars: int
    seconds: float
    strategies: tuple[StrategyResult, ...]


class Engine:
    """Runs admitted strategies over a stream of events against a broker, recording to
    a store: the driver of an :class:`EngineCore` (``self.core``)."""

    def __init__(
        self,
        kernel: Kernel,
        broker: Broker,
        store: Store,
        strategies: Sequence[tuple[Strategy, Mapping[str, Any]]],
        config: EngineConfig,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.kernel = kernel
        self.broker = broker
        self.store = store
        self.config = config
        self.progress = progress
        self._order_event = kernel.notifier("order_event")
        self._fill_event = kernel.notifier("fill_event")
        self.core = EngineCore(
            config,
            [(s.info, params, s.host.mode) for s, params in strategies],
            margin=broker.margin,
            risk=kernel.has_risk_checks(),
            order_events=self._order_event is not None,
            fill_events=self._fill_event is not None,
        )
        self._hosts: dict[str, StrategyHost] = {s.info.name: s.host for s, _ in strategies}
        self._logs = {
            stream: get_logger(stream, run_id=config.run_id)
            for stream in ("system", "strategy", "trades")
        }
        self._started = time.perf_counter()
        self._asked: tuple[str, ...] | None = None  # the strategies _ask last looked up
        self._posts: list[Callable[[Bar], None]] = []
        self._gathers: list[Callable[[], Reply | None]] = []
        run_id = config.run_id
        hosts = self._hosts
        # What each command does, by its type; the value returned goes back to the core.
        self._do: dict[type, Callable[[Any], Any]] = {
            Ask: self._ask,
            Gather: lambda c: hosts[c.strategy].gather(),
            Start: lambda c: hosts[c.strategy].start(c.params, c.account),
            PostFill: lambda c: hosts[c.strategy].post_fill(c.fill, c.account),
            PostReject: lambda c: hosts[c.strategy].post_reject(c.intent, c.reason),
            PostStop: self._post_stop,
            Working: lambda c: hosts[c.strategy].working(c.symbol, c.change),
            Dismiss: lambda c: hosts[c.strategy].close(),
            Match: lambda c: broker.on_bar(c.bar),
            Submit: lambda c: broker.submit(c.order, c.account),
            CancelOrder: lambda c: broker.cancel(c.client_order_id),
            CancelStrategy: lambda c: broker.cancel_strategy(c.strategy),
            CancelAll: lambda c: broker.cancel_all(c.reason),
            RecordOrder: lambda c: store.record_order(run_id, c.order, c.status, c.reason),
            UpdateOrder: lambda c: store.update_order(
                run_id, c.client_order_id, c.status, c.reason, c.filled
            ),
            RecordFill: lambda c: store.record_fill(run_id, c.fill, c.order),
            Audit: lambda c: store.audit(c.event, c.payload),
            CheckRisk: lambda c: kernel.check_order(
                c.intent, c.strategy, config.environment, c.ts, c.last_price
            ),
            Notify: self._notify,
            Log: self._log,
            ReadHalt: self._read_halt,
            RecordBenchmark: lambda c: store.record_benchmark(run_id, c.points),
            RecordEquity: lambda c: store.record_equity(run_id, c.strategy, c.points),
            RecordPeriodReturns: lambda c: store.record_period_returns(
                run_id, c.strategy, c.returns
            ),
            RecordPositions: lambda c: store.record_positions(run_id, c.strategy, c.positions),
            RecordResult: lambda c: store.record_result(
                run_id, c.strategy, c.metrics, c.quarantined
            ),
        }

    @property
    def unknown_fills(self) -> list[Fill]:
        """Fills of orders this run did not place (recorded, reported, booked to none)."""
        return self.core.unknown_fills

    # -- carrying out the core's commands ------------------------------------------------

    def execute(self, commands: Commands) -> Any:
        """Carry out ``commands`` in order, sending each one's result back to the core;
        the value the core returns at the end."""
        do = self._do
        send = commands.send
        try:
            command = send(None)
            while True:
                command = send(do[type(command)](command))
        except StopIteration as done:
            return done.value
        except BaseException as exc:  # the event cannot be finished: nor can the run
            self.core.abandon(exc)
            raise

    def _ask(self, command: Ask) -> Sequence[Reply | None] | None:
        names = command.strategies
        if names is not self._asked:  # the roster changed (a quarantine): look it up again
            self._asked = names
            hosts = [self._hosts[name] for name in names]
            self._posts = [host.post_bar for host in hosts]
            self._gathers = [host.gather for host in hosts]
        bar = command.bar
        if len(self._posts) == 1:  # one strategy: no lists
            self._posts[0](bar)
            reply = self._gathers[0]()
            return None if reply is None else (reply,)
        for post in self._posts:
            post(bar)
        replies = [gather() for gather in self._gathers]
        return None if replies.count(None) == len(replies) else replies

    def _post_stop(self, command: PostStop) -> None:
        for name in command.strategies:
            self._hosts[name].post_stop()

    def _notify(self, command: Notify) -> None:
        notify = self._order_event if command.hook == "order_event" else self._fill_event
        if notify is not None:
            notify(**command.fields)

    def _log(self, command: Log) -> None:
        getattr(self._logs[command.stream], command.level)(command.event, **command.fields)

    def _read_halt(self, command: ReadHalt) -> str | None:
        path = self.config.halt_file
        return _halt_reason(path) if path is not None and path.exists() else None

    # -- drivers --------------------------------------------------------------------------

    def run(self, bars: Iterable[Bar]) -> RunResult:
        """The backtest driver: every bar of ``bars``, in order."""
        with self.session():
            self.on_bars(bars)
        return self.result()

    def on_bars(self, bars: Iterable[Bar]) -> None:
        """Hand each of ``bars`` to the core in turn (the backtest loop): what
        :meth:`handle` does, talking to the core's coroutine and outbox directly."""
        send = self.core.machine.send
        outbox = self.core.outbox
        do = self._do
        progress = self.progress
        core = self.core
        try:
            for bar in bars:
                command = send(bar)
                while True:
                    if outbox:  # (on a failure, abandon() below empties it)
                        for issued in outbox:
                            do[type(issued)](issued)
                        outbox.clear()
                    if command is None:
                        break
                    command = send(do[type(command)](command))
                if progress is not None and not core.bars & 0x3FFF:
                    progress(core.bars)
        except BaseException as exc:  # the event cannot be finished: nor can the run
            core.abandon(exc)
            raise

    def handle(self, event: Event) -> None:
        """One event: a bar, a fill or order update the broker pushed, or a timer tick."""
        self.execute(self.core.handle(event))

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Start the strategies; on leaving, end the run (working orders cancelled,
        ``on_stop``) and release the strategies' hosts.  Between, a driver feeds events
        with :meth:`handle` (or :meth:`on_bars`)."""
        self._started = time.perf_counter()
        try:
            with _operator_sigint(self.config.stop):
                self.execute(self.core.start())
                yield
                if self.progress is not None:
                    self.progress(self.core.bars)
                self.execute(self.core.stop())
        finally:
            for host in self._hosts.values():
                host.close()

    def result(self) -> RunResult:
        """Store each strategy's metrics, equity and positions; the run's result."""
        strategies = self.execute(self.core.results())
        return RunResult(
            run_id=self.config.run_id,
            bars=self.core.bars,
            seconds=time.perf_counter() - self._started,
            strategies=strategies,
        )


@contextlib.contextmanager
def _operator_sigint(stop: Any = None) -> Iterator[None]:
    """While a run is on, the operator's Ctrl-C is told apart from a ``KeyboardInterrupt``
    that strategy code raises (which only quarantines that strategy).  With ``stop`` (a
    live run), Ctrl-C sets it instead: the source ends and the run finishes cleanly; a
    second Ctrl-C interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop is not None and not stop.is_set():
            stop.set()
            return
        operator_interrupt.pressed = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    operator_interrupt.pressed = False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        operator_interrupt.pressed = False


def _halt_reason(path: Path) -> str:
    """The reason ``bastion halt --reason`` wrote into the halt file (any file there
    halts; one that cannot be read halts for an unnamed reason)."""
    try:
        reason = json.loads(path.read_text(encoding="utf-8")).get("reason")
    except (OSError, ValueError, AttributeError):
        reason = None
    text = str(reason) if reason else "halted by the operator"
    return "".join(c if c.isprintable() else " " for c in text)[:200]
