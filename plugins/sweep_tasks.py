"""Parameter sweeps: grids, objectives, walk-forward folds, the task a worker runs, and
the runners that carry tasks to local processes or to a Dask cluster.

A task is plain data (:meth:`SweepTask.to_wire`: text, numbers and bytes): the
strategy's verified bytes with its detached signature, the signed whitelist, the
trusted public keys and ``bastion.toml``, plus the run's source/broker/storage specs
and ``--param`` overrides.  Never a pickled strategy object.  A worker (this process,
a local process or a Dask worker on another machine) rebuilds a throw-away workspace
from those bytes and admits the strategy through :class:`bastion.Gate`, the same door
``bastion backtest`` uses, then runs it with :func:`bastion.runs.prepare_backtest`:
a tampered byte is refused there and nothing runs.

Built only on Bastion's public API, so a worker needs nothing but an installed
``bastion-kernel`` of the same version.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

import attrs

from bastion import (
    BastionError,
    ConfigError,
    Environment,
    Gate,
    Kernel,
    Workspace,
    __version__,
    printable,
)
from bastion.audit import Checkpoints
from bastion.interfaces import PluginContext
from bastion.runs import BacktestRequest, parse_date, prepare_backtest

__all__ = [
    "MAX_COMBINATIONS",
    "Axis",
    "Bundle",
    "DaskRunner",
    "Fold",
    "LocalPool",
    "Objective",
    "Outcome",
    "Runner",
    "Sequential",
    "SweepStopped",
    "SweepTask",
    "WalkForward",
    "bundle_strategy",
    "check_axes",
    "combinations",
    "drive",
    "folds",
    "parse_grid",
    "parse_objective",
    "parse_walk_forward",
    "run_task",
]

MAX_COMBINATIONS = 10_000

# --------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------


@attrs.frozen
class Axis:
    """One ``--grid NAME=VALUES``: a parameter and the values it takes, as the text
    ``--param NAME=VALUE`` would carry."""

    name: str
    values: tuple[str, ...]


def _number(text: str, grid: str) -> Decimal:
    try:
        value = Decimal(text.strip().replace("_", ""))
    except InvalidOperation:
        raise ConfigError(
            f"--grid {grid}: {text.strip()!r} is not a number; a range is FROM:TO:STEP like 5:20:5"
        ) from None
    if not value.is_finite():
        raise ConfigError(f"--grid {grid}: {text.strip()!r} is not a finite number")
    return value


def _text(value: Decimal) -> str:
    """``5`` for a whole number, ``0.25`` otherwise (never ``1E+1``)."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def parse_grid(text: str) -> Axis:
    """``NAME=FROM:TO:STEP`` (inclusive; whole numbers or decimals) or ``NAME=V1,V2,...``;
    a one-line :class:`ConfigError` naming the value and what to write otherwise."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name or not spec.strip():
        raise ConfigError(
            f"--grid {text!r}: use NAME=FROM:TO:STEP (e.g. fast=5:20:5) or NAME=V1,V2 "
            "(e.g. slow=20,30,60)"
        )
    if not name.isidentifier():
        raise ConfigError(f"--grid {text!r}: {name!r} is not a parameter name")
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ConfigError(
                f"--grid {text}: a range is FROM:TO:STEP with all three, e.g. {name}=5:20:5"
            )
        first, last, step = (_number(p, text) for p in parts)
        if step <= 0:
            raise ConfigError(f"--grid {text}: the step must be above 0, e.g. {name}=5:20:5")
        if first > last:
            raise ConfigError(
                f"--grid {text}: FROM is above TO; write {name}={last}:{first}:{step}"
            )
        count = int((last - first) / step) + 1
        if count > MAX_COMBINATIONS:
            raise ConfigError(
                f"--grid {text}: {count:,} values; at most {MAX_COMBINATIONS:,}, use a larger step"
            )
        values = tuple(_text(first + step * i) for i in range(count))
    else:
        items = [item.strip() for item in spec.split(",")]
        if not all(items):
            raise ConfigError(
                f"--grid {text}: an empty value in the list; write values like {name}=20,30,60"
            )
        values = tuple(dict.fromkeys(items))  # a repeated value runs once
    return Axis(name, values)


def _coerces(value: str, default: object) -> bool:
    """Whether ``--param NAME=value`` takes for a parameter whose default is ``default``."""
    try:
        if isinstance(default, bool):
            return value.strip().lower() in ("true", "false", "1", "0", "yes", "no")
        if isinstance(default, int):
            int(value)
        elif isinstance(default, float):
            return math.isfinite(float(value))
    except ValueError:
        return False
    return True


def check_axes(axes: Sequence[Axis], defaults: Mapping[str, Any], strategy: str) -> None:
    """Every axis names a parameter of ``strategy`` (whose ``PARAMS`` are ``defaults``)
    once, and every value suits that parameter's type; else a one-line ConfigError."""
    seen: set[str] = set()
    for axis in axes:
        if axis.name in seen:
            raise ConfigError(f"--grid {axis.name} is given twice; give each parameter once")
        seen.add(axis.name)
        if axis.name not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(
                f"--grid {axis.name}=...: {strategy} has no parameter {axis.name!r}; "
                f"its PARAMS are: {known}"
            )
        default = defaults[axis.name]
        for value in axis.values:
            if not _coerces(value, default):
                kind = (
                    "true or false"
                    if isinstance(default, bool)
                    else "a whole number"
                    if isinstance(default, int)
                    else "a finite number"
                )
                raise ConfigError(
                    f"--grid {axis.name}: {value!r} is not {kind} like the default "
                    f"{default!r}; change the grid's values"
                )
    total = math.prod(len(axis.values) for axis in axes)
    if total > MAX_COMBINATIONS:
        raise ConfigError(
            f"the grids make {total:,} combinations; at most {MAX_COMBINATIONS:,}: "
            "use larger steps or fewer values"
        )


def combinations(axes: Sequence[Axis]) -> list[dict[str, str]]:
    """Every combination of the axes' values, the last axis varying fastest."""
    return [
        dict(zip([a.name for a in axes], values, strict=True))
        for values in itertools.product(*(a.values for a in axes))
    ]


# --------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------

#: Metrics where less is better; every other metric is maximised.
MINIMISED = frozenset({"max_drawdown", "max_drawdown_duration_days", "volatility"})
#: The metrics a run stores for each strategy (bastion.metrics.compute_metrics and the
#: benchmark comparison).
KNOWN_METRICS = (
    "sharpe",
    "total_return",
    "cagr",
    "end_equity",
    "max_drawdown",
    "max_drawdown_duration_days",
    "volatility",
    "win_rate",
    "trades",
    "exposure",
    "excess_return",
    "benchmark_return",
    "beta",
    "correlation",
)


@attrs.frozen
class Objective:
    """The metric a sweep ranks by, and whether higher (``maximise``) is better."""

    metric: str
    maximise: bool

    @property
    def direction(self) -> str:
        return "highest first" if self.maximise else "lowest first"

    def value(self, metrics: Mapping[str, Any] | None) -> float | None:
        """The objective of one run's metrics, ``None`` when undefined (ranked last)."""
        raw = (metrics or {}).get(self.metric)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return None
        number = float(raw)
        return number if math.isfinite(number) else None

    def key(self, metrics: Mapping[str, Any] | None) -> tuple[int, float]:
        """A sort key: the best first, undefined values last."""
        value = self.value(metrics)
        if value is None:
            return (1, 0.0)
        return (0, -value if self.maximise else value)


def parse_objective(text: str) -> Objective:
    """``sharpe``, ``max_drawdown`` ... (each with its natural direction), or
    ``max:NAME`` / ``min:NAME`` to choose the direction of any metric."""
    prefix, sep, name = text.strip().rpartition(":")
    name = name.strip()
    if sep and prefix not in ("max", "min"):
        raise ConfigError(f"--objective {text!r}: the prefix is max: or min:, e.g. min:trades")
    if not name:
        raise ConfigError("--objective is empty; name a metric such as sharpe")
    if not sep and name not in KNOWN_METRICS:
        raise ConfigError(
            f"--objective {text!r} is not a metric; use one of {', '.join(KNOWN_METRICS)} "
            "(or max:NAME / min:NAME)"
        )
    maximise = prefix == "max" if sep else name not in MINIMISED
    return Objective(name, maximise)


# --------------------------------------------------------------------------
# Walk-forward
# --------------------------------------------------------------------------

_UNITS = {"d": "days", "w": "weeks", "m": "months", "y": "years"}


@attrs.frozen
class Span:
    """A window length: ``count`` bars, or ``count`` calendar days/weeks/months/years."""

    count: int
    unit: str  # "bars", "days", "weeks", "months", "years"

    def __str__(self) -> str:
        return f"{self.count} {self.unit if self.count != 1 else self.unit[:-1]}"

    def after(self, moment: datetime) -> datetime:
        """``moment`` plus this calendar span (months and years keep the day, clamped)."""
        if self.unit == "days":
            return moment + timedelta(days=self.count)
        if self.unit == "weeks":
            return moment + timedelta(weeks=self.count)
        months = self.count * (12 if self.unit == "years" else 1)
        index = moment.year * 12 + moment.month - 1 + months
        year, month = divmod(index, 12)
        day = min(moment.day, _days_in(year, month + 1))
        return moment.replace(year=year, month=month + 1, day=day)


def _days_in(year: int, month: int) -> int:
    following = datetime(year + month // 12, month % 12 + 1, 1)
    return (following - timedelta(days=1)).day


@attrs.frozen
class WalkForward:
    """``--walk-forward TRAIN:TEST``: both in bars, or both in calendar units."""

    train: Span
    test: Span

    def __str__(self) -> str:
        return f"train {self.train}, test {self.test}"


def _span(text: str, whole: str) -> Span:
    text = text.strip()
    unit = "bars"
    if text and text[-1].lower() in _UNITS:
        unit = _UNITS[text[-1].lower()]
        text = text[:-1]
    if not text.isdigit() or int(text) <= 0:
        raise ConfigError(
            f"--walk-forward {whole}: write TRAIN:TEST as bar counts (250:60) or calendar "
            "spans with d, w, m (months) or y (6m:1m)"
        )
    return Span(int(text), unit)


def parse_walk_forward(text: str) -> WalkForward:
    """``250:60`` (bars) or ``6m:1m`` (calendar: ``d``, ``w``, ``m`` months, ``y``)."""
    train, sep, test = text.partition(":")
    if not sep:
        raise ConfigError(
            f"--walk-forward {text}: write TRAIN:TEST, e.g. 250:60 (bars) or 6m:1m (months)"
        )
    spans = WalkForward(_span(train, text), _span(test, text))
    if (spans.train.unit == "bars") != (spans.test.unit == "bars"):
        raise ConfigError(
            f"--walk-forward {text}: give both windows in bars (250:60) or both in calendar "
            "units (6m:1m)"
        )
    return spans


@attrs.frozen
class Fold:
    """One walk-forward step: optimise on the train window, test on the next one.
    Both windows are inclusive ranges of bar times; the test window starts after the
    train window's last bar."""

    number: int
    train_start: datetime
    train_end: datetime
    test_start: datetime
    test_end: datetime
    train_bars: int
    test_bars: int


def folds(times: Sequence[datetime], spec: WalkForward) -> list[Fold]:
    """The folds over the sorted distinct bar times ``times``: windows roll forward by
    the test window, and the last test window runs to the end of the data (it may be
    shorter than the others).  An empty list when the data is too short."""
    out: list[Fold] = []
    if spec.train.unit == "bars":
        train, test = spec.train.count, spec.test.count
        start = 0
        while start + train < len(times):
            window = times[start + train : start + train + test]
            out.append(
                Fold(
                    len(out) + 1,
                    times[start],
                    times[start + train - 1],
                    window[0],
                    window[-1],
                    train,
                    len(window),
                )
            )
            start += test
        return out
    import bisect

    anchor = times[0] if times else None
    while anchor is not None:
        middle = spec.train.after(anchor)
        end = spec.test.after(middle)
        lo = bisect.bisect_left(times, anchor)
        mid = bisect.bisect_left(times, middle)
        hi = bisect.bisect_left(times, end)
        if mid >= len(times) or middle > times[-1]:
            break
        if mid > lo and hi > mid:
            out.append(
                Fold(
                    len(out) + 1,
                    times[lo],
                    times[mid - 1],
                    times[mid],
                    times[hi - 1],
                    mid - lo,
                    hi - mid,
                )
            )
        anchor = spec.test.after(anchor)
    return out


# --------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------


@attrs.frozen
class Bundle:
    """A verified strategy file and everything a worker needs to verify it again: its
    detached signature, the signed whitelist, the trusted (and revoked) keys and the
    workspace's ``bastion.toml`` (limits, sandbox, parameter defaults)."""

    name: str
    sha256: str
    source: bytes
    signature: bytes | None
    whitelist: bytes | None
    whitelist_signature: bytes | None
    keys: tuple[tuple[str, bytes], ...]
    revoked: bytes | None
    config: bytes | None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def bundle_strategy(gate: Gate, name: str) -> Bundle:
    """Verify ``name`` in ``gate``'s workspace (nothing runs) and bundle the exact
    verified bytes with the trust material; a one-line ConfigError when it is refused."""
    path = gate.resolve(name)
    if not path.exists() and not path.is_symlink():
        raise ConfigError(
            f"unknown strategy {name!r}: no {path.name} in {gate.workspace.strategies}; "
            "'bastion strategies' lists them"
        )
    checked = gate.check(path)
    if not isinstance(checked, tuple):
        raise ConfigError(
            printable(
                f"strategy {checked.name} is not verified ({checked.status}: {checked.reason})"
            )
        )
    info, source = checked
    signatures = gate.workspace.signatures
    keys_dir = signatures / "keys"
    keys = (
        tuple((p.name, p.read_bytes()) for p in sorted(keys_dir.glob("*.pub")) if p.is_file())
        if keys_dir.is_dir()
        else ()
    )
    return Bundle(
        name=info.name,
        sha256=info.sha256,
        source=source,
        signature=_read(signatures / f"{info.name}.minisig"),
        whitelist=_read(signatures / "whitelist.json"),
        whitelist_signature=_read(signatures / "whitelist.json.minisig"),
        keys=keys,
        revoked=_read(signatures / "revoked.json"),
        config=_read(gate.workspace.config_file),
    )


@attrs.frozen
class SweepTask:
    """One backtest of a sweep, as plain data a worker anywhere can run."""

    sweep_id: str
    index: int
    bundle: Bundle
    params: tuple[str, ...]  # --param KEY=VALUE
    source: str
    broker: str
    storage: str
    cash: str
    start: str | None  # ISO times (inclusive)
    end: str | None
    symbols: tuple[str, ...]
    environment: str
    data_dir: str  # the client's data directory: the SQLite store and its checkpoints
    allow_unsigned: bool = False
    disabled: tuple[str, ...] = ()
    version: str = __version__
    want_equity: bool = False  # return the equity curve (walk-forward test windows)
    stop_event: str | None = None  # a Dask cluster: the name of the sweep's stop Event
    crowded: bool = False  # other runs share this machine's cores: sandbox channels block
    in_process: bool = False  # run the strategy in the worker's own process (development)

    def to_wire(self) -> dict[str, Any]:
        """The task as a dict of text, numbers, bytes and lists (what travels)."""
        return attrs.asdict(self)

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> SweepTask:
        data = dict(wire)
        bundle = dict(data.pop("bundle"))
        bundle["keys"] = tuple((str(n), bytes(b)) for n, b in bundle["keys"])
        data["params"] = tuple(data["params"])
        data["symbols"] = tuple(data["symbols"])
        data["disabled"] = tuple(data["disabled"])
        return cls(bundle=Bundle(**bundle), **data)


class SweepStopped(BastionError):
    """The sweep was stopped (Ctrl-C or its stop event) while this run was going."""


_POOL_STOP: Any = None  # a local pool worker: the multiprocessing Event of its sweep


def _pool_init(stop: Any) -> None:
    """A local pool worker: Ctrl-C is the client's to handle (it sets ``stop``)."""
    import signal

    global _POOL_STOP
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _POOL_STOP = stop


def _distributed() -> Any:
    """The ``distributed`` module (untyped), imported only when a cluster is used."""
    import importlib

    return importlib.import_module("distributed")


def _ambient_stop(task: SweepTask) -> Callable[[], bool]:
    if _POOL_STOP is not None:
        return _POOL_STOP.is_set  # type: ignore[no-any-return]
    if task.stop_event:
        try:
            event = _distributed().Event(task.stop_event)
        except Exception:  # not on a Dask worker after all
            return lambda: False

        def stopped() -> bool:
            try:
                return bool(event.is_set())
            except Exception:
                return False

        return stopped
    return lambda: False


def _write(path: Path, data: bytes | None) -> None:
    if data is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)


def _safe_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"task names a file {name!r} that is not a plain file name")
    return name


def crowded_config(config: bytes | None) -> bytes | None:
    """``bastion.toml`` with ``[sandbox] spin = 0`` unless it sets ``spin`` itself.

    A run's sandbox spins on its channel while it has a core to spare, judged by the
    cores and that run's own workers; in a parallel sweep the other runs take those
    cores, and spinning would only steal them.  Blocking changes when a worker wakes,
    never what it computes.  The file is left as it is if the edit would not parse."""
    import re
    import tomllib

    text = (config or b"").decode("utf-8", "replace")
    try:
        table = tomllib.loads(text).get("sandbox", {})
    except tomllib.TOMLDecodeError:
        return config
    if (
        not isinstance(table, dict)
        or "spin" in table
        or any(isinstance(v, dict) and "spin" in v for v in table.values())
    ):
        return config
    header = re.search(r"^[ \t]*\[[ \t]*sandbox[ \t]*\][^\n]*\n?", text, re.M)
    if header is not None:
        edited = text[: header.end()] + "\nspin = 0\n" + text[header.end() :]
    else:
        edited = "sandbox.spin = 0\n" + text
    try:
        tomllib.loads(edited)
    except tomllib.TOMLDecodeError:
        return config
    return edited.encode("utf-8")


def _materialise(bundle: Bundle, home: Path, *, crowded: bool = False) -> None:
    """A workspace in ``home`` holding exactly the bundle's files."""
    name = _safe_name(bundle.name)
    _write(home / "strategies" / name, bundle.source)
    signatures = home / "signatures"
    signatures.mkdir(parents=True, exist_ok=True)
    _write(signatures / f"{name}.minisig", bundle.signature)
    _write(signatures / "whitelist.json", bundle.whitelist)
    _write(signatures / "whitelist.json.minisig", bundle.whitelist_signature)
    _write(signatures / "revoked.json", bundle.revoked)
    for key_name, data in bundle.keys:
        _write(signatures / "keys" / _safe_name(key_name), data)
    _write(home / "bastion.toml", crowded_config(bundle.config) if crowded else bundle.config)


def run_task(
    wire: Mapping[str, Any], should_stop: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Run one task (worker side) and say what happened, as a plain dict:
    ``status`` is ``completed``, ``failed`` (the run is stored as failed), ``stopped``
    (stored as failed: the sweep was stopped), ``cancelled`` (never started) or
    ``refused`` (verification or input failed: nothing was stored).

    The strategy is admitted only through :class:`bastion.Gate`, in a throw-away
    workspace rebuilt from the task's bytes; the hash it verifies must also be the one
    the client verified.  Ctrl-C (KeyboardInterrupt) propagates after the run is
    stored as interrupted."""
    task = SweepTask.from_wire(wire)
    base: dict[str, Any] = {"index": task.index, "params": list(task.params), "run_id": None}
    if task.version != __version__:
        return base | {
            "status": "refused",
            "error": f"this worker runs Bastion {__version__}, the sweep {task.version}: "
            "install the same version on every worker",
        }
    stop = should_stop or _ambient_stop(task)
    if stop():
        return base | {"status": "cancelled", "error": "the sweep was stopped first"}
    try:
        environment = Environment(task.environment)
    except ValueError:
        return base | {"status": "refused", "error": f"unknown environment {task.environment!r}"}
    data_dir = Path(task.data_dir)
    shared = data_dir.is_dir()
    if not shared and task.storage.split(":", 1)[0] == "sqlite":
        return base | {
            "status": "refused",
            "error": f"this worker cannot reach the SQLite store in {data_dir}; a cluster "
            "across machines needs --storage postgresql://...",
        }
    with tempfile.TemporaryDirectory(prefix="bastion-sweep-") as temp:
        home = Path(temp) / "home"
        try:
            _materialise(task.bundle, home, crowded=task.crowded)
        except (BastionError, OSError) as exc:
            return base | {"status": "refused", "error": str(exc)}
        workspace = Workspace(home, environment)
        if not shared:
            data_dir = workspace.ensure_data_dir()
        kernel = Kernel(disable=task.disabled)
        kernel.startup()
        try:
            return base | _run(kernel, task, workspace, environment, data_dir, shared, stop)
        finally:
            kernel.shutdown()


def _run(
    kernel: Kernel,
    task: SweepTask,
    workspace: Workspace,
    environment: Environment,
    data_dir: Path,
    shared: bool,
    stop: Callable[[], bool],
) -> dict[str, Any]:
    env = str(environment)
    try:
        gate = Gate(
            workspace,
            allow_unsigned=task.allow_unsigned and environment is Environment.DEVELOPMENT,
            refuse_example_key=environment is Environment.LIVE,
        )
        request = BacktestRequest(
            strategies=(task.bundle.name,),
            source=task.source,
            broker=task.broker,
            storage=task.storage,
            cash=Decimal(task.cash),
            start=parse_date(task.start, "--from") if task.start else None,
            end=parse_date(task.end, "--to") if task.end else None,
            symbols=task.symbols,
            params=task.params,
            in_process=task.in_process,  # refused by prepare_backtest outside development
        )
        context = PluginContext(env, data_dir, secrets=kernel.secrets(env, workspace.home))
        prepared = prepare_backtest(kernel, gate, request, env, context)
    except BastionError as exc:
        return {"status": "refused", "error": f"worker refused the task: {exc}"}
    verified = prepared.strategies[0].info.sha256 if prepared.strategies else None
    if verified != task.bundle.sha256:
        prepared.close()
        return {
            "status": "refused",
            "error": f"worker refused the task: it verified SHA-256 {str(verified)[:12]}..., "
            f"the sweep {task.bundle.sha256[:12]}...",
        }

    def progress(_bars: int) -> None:
        if stop():
            raise SweepStopped("the sweep was stopped before this run finished")

    try:
        result, store = prepared.run(progress)
    except SweepStopped as exc:
        return {"status": "stopped", "error": str(exc)}
    except BastionError as exc:
        return {"status": "failed", "error": str(exc)}
    except Exception as exc:
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        prepared.close()
    try:
        run = store.load_run(result.run_id)
        checkpointed = False
        if shared:
            # prepare_backtest anchored the chain in the throw-away workspace; anchor it
            # where the store's other checkpoints are too, as 'bastion backtest' does.
            if workspace.data_dir.resolve() != data_dir.resolve():
                with store.audit_view() as view:
                    head = view.last()
                if head is not None:
                    Checkpoints(data_dir).append(head.id, head.hash, result.run_id, store.location)
            checkpointed = True
        strategy = run.strategies[0]
        return {
            "status": "completed",
            "run_id": result.run_id,
            "error": None,
            "bars": result.bars,
            "seconds": result.seconds,
            "metrics": dict(strategy.metrics),
            "resolved": dict((run.info.config.get("params") or {}).get(task.bundle.name) or {}),
            "quarantined": strategy.quarantined,
            "location": store.location,
            "checkpointed": checkpointed,
            "equity": [(ts.isoformat(), value) for ts, value in strategy.equity]
            if task.want_equity
            else None,
        }
    finally:
        store.close()


# --------------------------------------------------------------------------
# Runners and the driver
# --------------------------------------------------------------------------


class Handle(Protocol):
    def done(self) -> bool: ...
    def result(self) -> Any: ...
    def cancel(self) -> bool: ...


class Runner(Protocol):
    """Where tasks run: this process, a local pool, a Dask cluster."""

    capacity: int  # runs in flight at once
    description: str

    def submit(self, task: SweepTask) -> Handle: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class Sequential:
    """One run after the other in this process (``--workers 1``)."""

    capacity = 1
    description = "1 worker (this process)"

    def __init__(self, event: threading.Event) -> None:
        self.event = event  # the driver's stop event: runs check it as they go

    def submit(self, task: SweepTask) -> Handle:
        future: Future[Any] = Future()
        future.set_result(run_task(task.to_wire(), self.event.is_set))
        return future

    def stop(self) -> None:
        self.event.set()

    def close(self) -> None:
        pass


class LocalPool:
    """A process pool on this machine (``--workers N``; spawned, so nothing of this
    process is inherited but the task)."""

    def __init__(self, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        self._event = context.Event()
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_pool_init,
            initargs=(self._event,),
        )
        self.capacity = workers
        self.description = f"{workers} local worker processes"

    def submit(self, task: SweepTask) -> Handle:
        crowded = self.capacity > 1
        return self._pool.submit(run_task, attrs.evolve(task, crowded=crowded).to_wire())

    def stop(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskRunner:
    """A Dask distributed cluster (``--cluster tcp://HOST:PORT``): tasks go to its
    workers with ``Client.submit``; a stop sets a cluster-wide ``distributed.Event``."""

    def __init__(self, address: str, sweep_id: str, limit: int | None = None) -> None:
        try:
            dask = _distributed()
        except ImportError:  # pragma: no cover - a dependency
            raise ConfigError("--cluster needs Dask distributed: pip install distributed") from None
        try:
            self._client = dask.Client(address, timeout=10, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"--cluster {address}: cannot reach a Dask scheduler there ({exc}); start one "
                "with 'dask scheduler' or check the address"
            ) from None
        self.stop_name = f"bastion-sweep-{sweep_id}-stop"
        self._event = dask.Event(self.stop_name, client=self._client)
        threads = sum(self._client.nthreads().values())
        self.capacity = limit or max(2 * threads, 1)
        workers = len(self._client.nthreads())
        self.description = f"Dask cluster {address} ({workers} workers, {threads} threads)"
        self._futures: list[Any] = []

    def submit(self, task: SweepTask) -> Handle:
        wire = attrs.evolve(task, stop_event=self.stop_name, crowded=True).to_wire()
        future = self._client.submit(
            run_task, wire, key=f"bastion-sweep-{task.sweep_id}-{task.index}", pure=False
        )
        self._futures.append(future)
        handle: Handle = future
        return handle

    def stop(self) -> None:
        self._event.set()

    def close(self) -> None:
        try:
            self._event.clear()
        finally:
            self._client.close()


@attrs.define
class Outcome:
    """What a sweep's driver saw: every result, and whether it stopped early."""

    results: list[dict[str, Any]] = attrs.Factory(list)
    interrupted: bool = False
    refused: dict[str, Any] | None = None


def _result(handle: Handle, task: SweepTask) -> dict[str, Any]:
    try:
        value = handle.result()
    except BaseException as exc:  # a worker died, the cluster lost it, it was cancelled
        if isinstance(exc, KeyboardInterrupt):
            raise
        name = type(exc).__name__
        status = "cancelled" if "Cancelled" in name else "failed"
        return {
            "index": task.index,
            "params": list(task.params),
            "run_id": None,
            "status": status,
            "error": printable(f"{name}: {exc}".splitlines()[0]),
        }
    return dict(value)


def drive(
    runner: Runner,
    tasks: Iterable[SweepTask],
    on_result: Callable[[dict[str, Any]], Iterable[SweepTask]],
    stop: threading.Event,
) -> Outcome:
    """Run ``tasks`` on ``runner``, at most ``runner.capacity`` in flight.  Each result
    goes to ``on_result``, which may return further tasks (walk-forward test runs).
    Ctrl-C or ``stop`` ends the sweep: tasks not started are cancelled, runs in flight
    are told to stop (and stored as failed), finished runs are kept.  A refused task
    stops the sweep too (every task carries the same bytes)."""
    outcome = Outcome()
    queue: deque[SweepTask] = deque(tasks)
    pending: dict[Any, SweepTask] = {}

    def take(handle: Any, task: SweepTask) -> None:
        result = _result(handle, task)
        outcome.results.append(result)
        if result["status"] == "refused" and outcome.refused is None:
            outcome.refused = result
            stop.set()
        queue.extend(on_result(result))

    try:
        while (queue or pending) and not stop.is_set():
            while queue and len(pending) < runner.capacity and not stop.is_set():
                task = queue.popleft()
                pending[runner.submit(task)] = task
            finished = [h for h in pending if h.done()]
            if not finished:
                time.sleep(0.02)
                continue
            for handle in finished:
                take(handle, pending.pop(handle))
    except KeyboardInterrupt:
        outcome.interrupted = True
    if stop.is_set() and outcome.refused is None:
        outcome.interrupted = True
    if pending:
        runner.stop()
        for handle in pending:
            handle.cancel()
        try:
            while pending:
                finished = [h for h in pending if h.done()]
                if not finished:
                    time.sleep(0.02)
                for handle in finished:
                    result = _result(handle, pending.pop(handle))
                    outcome.results.append(result)
        except KeyboardInterrupt:  # a second Ctrl-C: do not wait for the runs in flight
            pass
    return outcome
