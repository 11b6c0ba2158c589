"""``bastion backtest``: validate every input, admit strategies, run the engine, store.

Everything a user can get wrong (strategy names, source, symbols, dates, cash,
parameters, plugin names) is checked *before* the run is recorded, so bad
input leaves nothing in the store.  Once the run row exists, any failure
marks it ``failed`` with the reason; nothing is left ``running``.
"""

from __future__ import annotations

import functools
import itertools
import math
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import attrs

from ._engine import Engine, EngineConfig, ExceptionPolicy, OrderLimits, RunResult
from ._environment import read_config
from ._errors import BastionError, ConfigError, printable
from ._fsutil import ExclusiveLock, LockHeld
from ._host import Launcher, in_process
from ._kernel import Kernel
from ._live import drive
from ._loader import Gate, Refusal, Strategy
from ._reconcile import Reconciliation, reconcile
from ._sandbox import SandboxConfig, sandbox_config, sandboxed
from ._settings import limits_from_config
from ._version import __version__
from .audit import Checkpoints
from .interfaces import (
    PluginContext,
    ReconcilingStore,
    RunInfo,
    Source,
    Store,
    StrategyRecord,
)
from .models import Bar

__all__ = ["BacktestRequest", "parse_cash", "parse_date", "prepare_backtest"]


MIN_CASH = Decimal("0.01")
MAX_CASH = Decimal(10) ** 15  # equity is also kept as a float; far from where that matters


def parse_cash(text: str) -> Decimal:
    """Starting cash from ``--cash`` text (``100000``, ``100_000``, ``100,000``); a
    one-line :class:`ConfigError` when it is not a positive amount in range."""
    try:
        cash = Decimal(text.replace(",", "").replace("_", ""))
    except InvalidOperation:
        raise ConfigError(f"--cash {text!r} is not a number") from None
    if not cash.is_finite() or cash <= 0:
        raise ConfigError(f"--cash {text}: starting cash must be a positive amount")
    if not MIN_CASH <= cash <= MAX_CASH:
        raise ConfigError(
            f"--cash {text}: starting cash must be between {MIN_CASH} and {MAX_CASH:,.0f}"
        )
    return cash


def parse_date(text: str, option: str, *, end: bool = False) -> datetime:
    """A day (``2022-01-31``: from its start, or to its end with ``end``) or an ISO
    time (UTC unless it has an offset), as an aware UTC datetime."""
    if not text.strip():
        raise ConfigError(f"{option} is empty; give a date like 2022-01-31 or leave it out")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(f"{option} {text!r} is not a date like 2022-01-31") from None
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise ConfigError(f"{option} {text!r} is out of range in UTC") from None
    return datetime.combine(day, time.max if end else time.min, tzinfo=UTC)


@attrs.frozen
class BacktestRequest:
    """What to run: strategy names, ``--source``/``--broker``/``--storage`` specs, cash,
    dates, parameters and mode, exactly as the command line took them."""

    strategies: tuple[str, ...] = ()
    source: str = "csv:sample"
    broker: str = "sim"
    storage: str = "sqlite"
    cash: Decimal = Decimal(100_000)
    start: datetime | None = None
    end: datetime | None = None
    symbols: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # "key=value" or "strategy.key=value"
    in_process: bool = False  # run strategy code in the kernel's process (trusted, development)
    log_trades: bool = False  # every order's life in the trades log stream
    kind: str = "backtest"  # or "paper" / "live": a run against a live broker
    signal_only: bool = False  # intents are recorded as signals; nothing reaches the broker
    trade_from: datetime | None = None  # earlier bars warm strategies up


def launcher_for(
    in_process_requested: bool, environment: str, config: Mapping[str, Any], config_name: str
) -> tuple[Launcher, SandboxConfig]:
    """The host launcher a run uses: sandboxed workers unless ``--in-process`` (which only
    development allows), with the environment's ``[sandbox]`` settings."""
    settings = sandbox_config(config, environment, config_name)
    if not in_process_requested:
        return sandboxed(settings), settings
    if environment != "development":
        raise ConfigError(
            f"--in-process runs strategy code unprotected inside the kernel; the {environment} "
            "environment refuses it: drop --in-process"
        )
    return in_process, settings


def exception_policies(
    config: Mapping[str, Any], names: Sequence[str], config_name: str
) -> dict[str, ExceptionPolicy]:
    """``[exceptions.STRATEGY]`` (``policy = "skip"`` or ``"quarantine"``, ``max_skips``)."""
    table = config.get("exceptions", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{config_name}: [exceptions] must be a table of [exceptions.STRATEGY]")
    by_stem = {name.removesuffix(".py"): name for name in names}
    policies = {}
    for stem, values in table.items():
        where = f"{config_name}: exceptions.{stem}"
        if not isinstance(values, dict):
            raise ConfigError(f"{where} must be a table like [exceptions.{stem}]")
        unknown = set(values) - {"policy", "max_skips"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; use policy, max_skips")
        policy = values.get("policy", "quarantine")
        if policy not in ("quarantine", "skip"):
            raise ConfigError(f'{where}.policy = {policy!r}; use "quarantine" or "skip"')
        max_skips = values.get("max_skips", ExceptionPolicy.max_skips)
        if (
            isinstance(max_skips, bool)
            or not isinstance(max_skips, int)
            or not (0 <= max_skips <= 1_000_000)
        ):
            raise ConfigError(f"{where}.max_skips = {max_skips!r}; use a whole number >= 0")
        if stem in by_stem:
            policies[by_stem[stem]] = ExceptionPolicy(skip=policy == "skip", max_skips=max_skips)
    return policies


def _coerce(value: str, default: object, where: str) -> object:
    """``value`` as the type of the parameter's default (bool, int, float; else text)."""
    try:
        if isinstance(default, bool):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
    except ValueError:
        kind = (
            "true or false"
            if isinstance(default, bool)
            else "a whole number"
            if isinstance(default, int)
            else "a finite number"
        )
        raise ConfigError(
            f"{where}: {value!r} is not {kind} like the default {default!r}"
        ) from None
    return value


def resolve_params(
    strategies: Sequence[Strategy],
    overrides: Sequence[str],
    config: Mapping[str, Any],
    config_name: str,
) -> dict[str, dict[str, Any]]:
    """Defaults from each file's PARAMS, then ``[params.NAME]`` in bastion.toml, then --param."""
    result = {s.name: dict(s.params) for s in strategies}
    by_stem = {s.name.removesuffix(".py"): s.name for s in strategies}
    table = config.get("params", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{config_name}: [params] must be a table of [params.STRATEGY] tables")
    for stem, values in table.items():
        if stem not in by_stem:
            continue  # parameters for a strategy not in this run
        if not isinstance(values, dict):
            raise ConfigError(f"{config_name}: [params.{stem}] must be a table")
        for key, value in values.items():
            name = by_stem[stem]
            if key not in result[name]:
                raise ConfigError(f"{config_name}: {stem} has no parameter {key!r}")
            result[name][key] = _coerce(
                str(value), result[name][key], f"{config_name} {stem}.{key}"
            )
    # STRATEGY.KEY=VALUE is more specific than KEY=VALUE and wins whatever the order.
    for item in sorted(overrides, key=lambda o: "." in o.partition("=")[0]):
        target, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r}: use KEY=VALUE or STRATEGY.KEY=VALUE")
        stem, dot, key = target.rpartition(".")
        stem = stem.removesuffix(".py")
        names = [by_stem[stem]] if dot and stem in by_stem else [] if dot else list(result)
        if dot and not names:
            raise ConfigError(f"--param {item!r}: no strategy {stem!r} in this run")
        hits = [n for n in names if key in result[n]]
        if not hits:
            raise ConfigError(f"--param {item!r}: no strategy in this run has a parameter {key!r}")
        for name in hits:
            result[name][key] = _coerce(value, result[name][key], f"--param {item}")
    return result


def _limits(config: Mapping[str, Any], environment: str, config_name: str) -> OrderLimits:
    sourced = limits_from_config(config, environment, config_name)
    return OrderLimits(**{key: item.value for key, item in sourced.items()})


@attrs.define
class PreparedBacktest:
    """A validated backtest, ready to run: nothing has been stored yet."""

    kernel: Kernel
    request: BacktestRequest
    strategies: list[Strategy]
    refusals: list[Refusal]
    params: dict[str, dict[str, Any]]
    source: Source
    symbols: tuple[str, ...]
    broker: Any
    open_store: Callable[[], Store]
    first_bar: Bar
    bars: Iterator[Bar]
    total: int | None  # bars the run will see, if the source can tell in advance
    limits: OrderLimits
    data_dir: Any
    environment: str
    sandbox: SandboxConfig
    exceptions: dict[str, ExceptionPolicy]
    stop: Any = None  # threading.Event set by the operator's Ctrl-C or SIGTERM (live runs)
    # Paper and live: told what the start-up reconciliation found, before the first bar.
    on_reconciled: Callable[[Reconciliation], None] | None = None
    # Paper and live: the environment's run lock (one run per data directory at a time).
    lock: ExclusiveLock | None = None

    @property
    def mode(self) -> str:
        return "in-process" if self.request.in_process else "sandboxed"

    def close(self) -> None:
        """Release the strategies' hosts (workers), the broker and the source
        (idempotent: after a run, or instead of one)."""
        for strategy in self.strategies:
            strategy.close()
        _close(self.broker)
        _close(self.source)
        if self.lock is not None:
            self.lock.release()

    def run(self, progress: Callable[[int], None] | None = None) -> tuple[RunResult, Store]:
        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        request = self.request
        info = RunInfo(
            run_id=run_id,
            kind=request.kind,
            environment=self.environment,
            started=datetime.now(UTC),
            bastion_version=__version__,
            config={
                "source": self.source.description,
                "broker": request.broker,
                "storage": request.storage,
                "cash": str(request.cash),
                "from": request.start.isoformat() if request.start else None,
                "to": request.end.isoformat() if request.end else None,
                "symbols": list(self.symbols),
                "params": self.params,
                "sandbox": self.mode,
                "signal_only": request.signal_only,
                "sandbox_layers": {
                    s.name: sorted(layer.name for layer in s.layers if layer.active)
                    for s in self.strategies
                    if s.layers
                },
            },
        )
        records = [
            StrategyRecord(
                name=s.name,
                sha256=s.info.sha256,
                signer=s.info.signer,
                signer_name=s.info.signer_name,
                whitelist_version=s.info.whitelist_version,
                unsigned=s.info.unsigned,
                params=self.params[s.name],
            )
            for s in self.strategies
        ]
        settled = Reconciliation()
        try:
            store = self.open_store()
            if request.kind != "backtest":
                # Before this run exists: earlier runs' orders are settled with the
                # broker and the book is read; a failure here leaves no new run behind.
                settled = reconcile(store, self.broker, request.kind, run_id, self.data_dir)
                if self.on_reconciled is not None:
                    self.on_reconciled(settled)
            store.begin_run(info, records)
        except BaseException:
            self.close()
            raise
        try:
            for refusal in self.refusals:
                store.audit(
                    "strategy_refused",
                    {
                        "run_id": run_id,
                        "file": refusal.name,
                        "status": str(refusal.status),
                        "reason": refusal.reason,
                    },
                )
            engine = Engine(
                self.kernel,
                self.broker,
                store,
                [(s, self.params[s.name]) for s in self.strategies],
                EngineConfig(
                    run_id=run_id,
                    environment=self.environment,
                    cash=request.cash,
                    symbols=frozenset(self.symbols),
                    limits=self.limits,
                    exceptions=self.exceptions,
                    log_trades=request.log_trades or request.kind != "backtest",
                    signal_only=request.signal_only,
                    trade_from=request.trade_from,
                    stop=self.stop,
                    halt_file=None if request.kind == "backtest" else self.data_dir / "HALT",
                    opening=settled.opening,
                    blocked=settled.blocked,
                ),
                progress=progress,
            )
            bars = itertools.chain((self.first_bar,), self.bars)
            if request.kind == "backtest" or self.stop is None:
                result = engine.run(bars)
            else:
                # Paper and live: bars, the broker's news and time, as they come.
                result = drive(engine, bars, self.stop)
        except BaseException as exc:
            reason = (
                str(exc)
                if isinstance(exc, BastionError)
                else (
                    "interrupted by the user"
                    if isinstance(exc, KeyboardInterrupt)
                    else f"{type(exc).__name__}: {exc}"
                )
            )
            store.finish_run(run_id, "failed", reason.splitlines()[0] if reason else "failed")
            self._checkpoint(store, run_id)
            store.close()
            self.close()
            raise
        left = self.broker.working_symbols() if request.kind != "backtest" else frozenset()
        if left and isinstance(store, ReconcilingStore):
            # Orders left working at the broker (on_stop=leave): the run stays open
            # until the next run's reconciliation settles them.
            store.stop_run(run_id, f"stopped with orders working in {', '.join(sorted(left))}")
        else:
            store.finish_run(run_id, "completed", None)
        self._checkpoint(store, run_id)
        return result, store

    def _checkpoint(self, store: Store, run_id: str) -> None:
        """Anchor the audit chain outside the store: its head, signed with this
        installation's key, appended to the data directory's checkpoint file."""
        with store.audit_view() as view:
            head = view.last()
        if head is not None:
            Checkpoints(self.data_dir).append(head.id, head.hash, run_id, store.location)


def prepare_backtest(
    kernel: Kernel,
    gate: Gate,
    request: BacktestRequest,
    environment: str,
    context: PluginContext | None = None,
) -> PreparedBacktest:
    """Check every input and admit the strategies; raise a one-line BastionError otherwise."""
    workspace = gate.workspace
    if request.cash <= 0:
        raise ConfigError(f"--cash {request.cash}: starting cash must be a positive amount")
    if request.start and request.end and request.start > request.end:
        raise ConfigError("--from is after --to; swap them")
    if context is None:  # a backtest: a storage plugin may still need a secret (a password)
        context = PluginContext(
            environment, workspace.data_dir, secrets=kernel.secrets(environment, workspace.home)
        )
    if context.open_store is None:  # what a source may read from: the run's own store
        context = attrs.evolve(
            context, open_store=functools.partial(kernel.open_store, request.storage, context)
        )
    # Unknown or disallowed names fail here, before any strategy is admitted.
    for what, spec in (
        ("source", request.source),
        ("broker", request.broker),
        ("storage", request.storage),
    ):
        kernel.find_offer(what, spec, context.environment)
    config = read_config(workspace.config_file)
    config_name = str(workspace.config_file)
    launcher, sandbox = launcher_for(request.in_process, environment, config, config_name)
    lock = (
        None if request.kind == "backtest" else _run_lock(workspace.ensure_data_dir(), request.kind)
    )
    strategies: list[Strategy] = []
    refusals: list[Refusal] = []
    source: Source | None = None
    broker: Any = None
    try:
        # Strategies are verified before any plugin connects: a live run that would
        # refuse them never reaches the broker.
        if request.strategies:
            # Named twice (sma_cross and sma_cross.py) is the same file: run it once.
            named = {gate.resolve(name): name for name in reversed(request.strategies)}
            paths = list(dict.fromkeys(gate.resolve(name) for name in request.strategies))
            for path in paths:
                if not path.exists() and not path.is_symlink():
                    raise ConfigError(
                        f"unknown strategy {named[path]!r}: no {path.name} in "
                        f"{workspace.strategies}; 'bastion strategies' lists them"
                    )
            outcomes = gate.admit_many(paths, launcher)
            strategies = [o for o in outcomes if isinstance(o, Strategy)]
            for outcome in outcomes:
                if isinstance(outcome, Refusal):
                    kernel.strategy_refused(outcome)
                    raise ConfigError(
                        printable(
                            f"strategy {outcome.name} is not verified "
                            f"({outcome.status}: {outcome.reason})"
                        )
                    )
                kernel.strategy_loaded(outcome)
        else:
            for outcome in gate.admit_many(gate.candidates(), launcher):
                if isinstance(outcome, Refusal):
                    kernel.strategy_refused(outcome)
                    refusals.append(outcome)
                else:
                    kernel.strategy_loaded(outcome)
                    strategies.append(outcome)
            if not strategies:
                raise ConfigError(
                    f"no verified strategy in {workspace.strategies}; 'bastion strategies' says why"
                )
        source = kernel.open_source(request.source, context)
        available = source.symbols()
        symbols = request.symbols or available
        missing = [s for s in symbols if s not in available]
        if missing:
            raise ConfigError(
                f"symbol {missing[0]!r} is not in {source.description}; "
                f"it has: {', '.join(available)}"
            )
        broker = kernel.open_broker(request.broker, context)
        params = resolve_params(strategies, request.params, config, config_name)
        limits = _limits(config, environment, config_name)
        exceptions = exception_policies(config, [s.name for s in strategies], config_name)
        prepared = _prepared_source(source, symbols, request)
        data_dir = workspace.ensure_data_dir()
    except BaseException:
        for strategy in strategies:
            strategy.close()
        if broker is not None:
            _close(broker)
        if source is not None:
            _close(source)
        if lock is not None:
            lock.release()
        raise
    first, bars, total = prepared
    return PreparedBacktest(
        kernel=kernel,
        request=request,
        strategies=strategies,
        refusals=refusals,
        params=params,
        source=source,
        symbols=tuple(symbols),
        broker=broker,
        open_store=functools.partial(kernel.open_store, request.storage, context),
        first_bar=first,
        bars=bars,
        total=total if isinstance(total, int) and total > 0 else None,
        limits=limits,
        data_dir=data_dir,
        environment=environment,
        sandbox=sandbox,
        exceptions=exceptions,
        stop=context.stop if context.live else None,
        lock=lock,
    )


RUN_LOCK = "run.lock"


def _run_lock(data_dir: Path, kind: str) -> ExclusiveLock:
    """Paper and live runs hold ``run.lock`` in the environment's data directory for
    their whole life: a second run would reconcile the first one's working orders as
    abandoned and cancel them.  A killed run's lock goes with its process."""
    try:
        return ExclusiveLock(data_dir / RUN_LOCK)
    except LockHeld as held:
        raise ConfigError(
            f"another {kind} run (process {held.holder}) is running on {data_dir}; "
            "stop it first (Ctrl-C, or 'bastion halt' to stop its orders)"
        ) from None


def _close(plugin: object) -> None:
    """A broker or source may hold a connection: ``close()`` it when it has one."""
    close = getattr(plugin, "close", None)
    if callable(close):
        close()


def _prepared_source(
    source: Source, symbols: Sequence[str], request: BacktestRequest
) -> tuple[Bar, Iterator[Bar], int | None]:
    """The source's first bar (a one-line error when there is none), the rest, and
    how many there will be when the source can tell."""
    bars = iter(source.bars(symbols, request.start, request.end))
    counter = getattr(source, "count", None)
    total = counter(symbols, request.start, request.end) if callable(counter) else None
    first = next(bars, None)
    if first is None:
        span = (
            f" between {request.start:%Y-%m-%d} and {request.end:%Y-%m-%d}"
            if (request.start and request.end)
            else " in the chosen period"
        )
        raise ConfigError(f"{source.description} has no bars{span}; check --from/--to")
    return first, bars, total
