"""Built-in plugin: ``bastion sweep``, parameter sweeps and walk-forward optimisation.

Every combination of the ``--grid`` values is an ordinary stored run, admitted
through the same door and run by the same engine as ``bastion backtest --param``
(see :mod:`bastion.plugins.sweep_tasks` for what travels to a worker).  Runs go
to local worker processes by default, or to a Dask cluster with ``--cluster``.
The results are ranked by ``--objective`` and drawn over the grid in a small
report under the environment's ``reports/`` folder.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bastion import BastionError, ConfigError, hookimpl
from bastion.audit import Checkpoints
from bastion.cli import App, console, err_console, pass_app, storage_option, workspace_options
from bastion.files import atomic_write_many
from bastion.interfaces import PluginContext
from bastion.metrics import compute_metrics
from bastion.plugins.backtest import IN_PROCESS_NOTE
from bastion.plugins.sweep_tasks import (
    Axis,
    DaskRunner,
    Fold,
    LocalPool,
    Objective,
    Outcome,
    Runner,
    Sequential,
    SweepTask,
    WalkForward,
    bundle_strategy,
    check_axes,
    combinations,
    drive,
    folds,
    parse_grid,
    parse_objective,
    parse_walk_forward,
)
from bastion.runs import BacktestRequest, parse_cash, parse_date, prepare_backtest

#: Columns shown next to the objective in the ranked table.
SHOWN = ("sharpe", "total_return", "max_drawdown", "trades")
#: Rows of the ranked table printed (all of them are in the report and --json).
TOP = 20


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@attrs.define
class Plan:
    """What a sweep runs: the tasks' common fields, the combinations, the folds."""

    sweep_id: str
    template: SweepTask
    axes: list[Axis]
    combos: list[dict[str, str]]
    fixed: tuple[str, ...]
    objective: Objective
    walk_forward: WalkForward | None
    folds: list[Fold]
    source: str

    def params(self, combo: Mapping[str, str]) -> tuple[str, ...]:
        return (*self.fixed, *(f"{k}={v}" for k, v in combo.items()))


@click.command("sweep")
@workspace_options
@click.argument("strategy")
@click.option(
    "--grid",
    "grids",
    multiple=True,
    metavar="NAME=VALUES",
    help="A parameter and its values: FROM:TO:STEP (inclusive; whole numbers or decimals) "
    "or V1,V2,... (repeat for each parameter swept).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Hold a parameter at a value in every run (repeatable).",
)
@click.option(
    "--source",
    default="csv:sample",
    show_default=True,
    help="Market data, as for 'bastion backtest' (csv:PATH, csv:sample, synthetic:N, store:...).",
)
@click.option("--from", "start", default=None, help="First day (YYYY-MM-DD), inclusive.")
@click.option("--to", "end", default=None, help="Last day (YYYY-MM-DD), inclusive.")
@click.option("--cash", default="100000", show_default=True, help="Starting cash of each run.")
@click.option("--symbols", default=None, help="Comma-separated subset of the source's symbols.")
@click.option("--broker", default="sim", show_default=True, help="Broker and options (sim...).")
@storage_option
@click.option(
    "--objective",
    default="sharpe",
    show_default=True,
    help="The metric to rank by (sharpe, total_return, max_drawdown, ...; each in its "
    "natural direction), or max:NAME / min:NAME.",
)
@click.option(
    "--walk-forward",
    "walk_forward",
    default=None,
    metavar="TRAIN:TEST",
    help="Optimise on a window, test the best parameters on the next one, roll: bar counts "
    "(250:60) or calendar spans with d, w, m (months), y (6m:1m).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Runs at once: local worker processes [default: the cores], 1 runs them one "
    "after the other in this process; with --cluster, runs in flight [default: twice the "
    "cluster's threads].",
)
@click.option(
    "--cluster",
    default=None,
    metavar="tcp://HOST:PORT",
    help="Run on this Dask distributed scheduler's workers instead of local processes.",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="Development only: run the strategy inside each worker process, unsandboxed "
    "(trusted code; each run then needs one core instead of two).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results on stdout.")
@click.option(
    "--report/--no-report",
    default=True,
    show_default=True,
    help="Write the heatmap and HTML report of the objective over the grid.",
)
@pass_app
def sweep_command(
    app: App,
    strategy: str,
    grids: tuple[str, ...],
    params: tuple[str, ...],
    source: str,
    start: str | None,
    end: str | None,
    cash: str,
    symbols: str | None,
    broker: str,
    storage: str | None,
    objective: str,
    walk_forward: str | None,
    workers: int | None,
    cluster: str | None,
    in_process: bool,
    as_json: bool,
    report: bool,
) -> None:
    """Backtest STRATEGY once for every combination of the --grid values and rank them.

    Each combination is an ordinary stored run (the same checks, store and audit log
    as 'bastion backtest --param'); the ranked table is printed and a heatmap of the
    objective over the grid is written to the environment's reports folder.
    """
    if not grids:
        raise ConfigError("give at least one --grid NAME=VALUES, e.g. --grid fast=5:20:5")
    axes = [parse_grid(text) for text in grids]
    goal = parse_objective(objective)
    spec = parse_walk_forward(walk_forward) if walk_forward is not None else None
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: give 1 or more")
    if cluster is not None and "://" not in cluster:
        raise ConfigError(
            f"--cluster {cluster!r}: give a Dask scheduler address like tcp://10.0.0.5:8786"
        )
    wanted = tuple(s.strip() for s in symbols.split(",") if s.strip()) if symbols else ()
    if symbols is not None and not wanted:
        raise ConfigError("--symbols is empty; name symbols like AAPL,MSFT or leave it out")
    for item in params:
        key = item.partition("=")[0].strip()
        if any(axis.name == key for axis in axes):
            raise ConfigError(f"--param {item}: {key} is swept by --grid; drop one of them")
    request = BacktestRequest(
        strategies=(strategy,),
        source=source,
        broker=broker,
        storage=app.storage(storage),
        cash=parse_cash(cash),
        start=parse_date(start, "--from") if start is not None else None,
        end=parse_date(end, "--to", end=True) if end is not None else None,
        symbols=wanted,
        params=params,
        in_process=in_process,
    )
    if in_process:
        err_console.print(IN_PROCESS_NOTE, markup=False)
    plan = _plan(app, request, axes, goal, spec)
    runner = _runner(plan, workers, cluster)
    try:
        outcome, seconds = _execute(plan, runner, quiet=as_json)
    finally:
        runner.close()
    _anchor(app, plan, outcome)
    results = _ranked(plan, outcome)
    report_path = _write_report(app, plan, results, outcome) if report and results else None
    _finish(plan, outcome, results, seconds, report_path, runner.description, as_json)


def _plan(
    app: App,
    request: BacktestRequest,
    axes: list[Axis],
    goal: Objective,
    spec: WalkForward | None,
) -> Plan:
    """Verify the strategy, check every input once (source, broker, storage, dates,
    parameter names and values) before anything is stored, and lay out the runs."""
    gate = app.gate()
    bundle = bundle_strategy(gate, request.strategies[0])
    environment = str(app.environment)
    prepared = prepare_backtest(app.kernel, gate, request, environment)
    try:
        admitted = prepared.strategies[0]
        check_axes(axes, admitted.params, admitted.name)
        description = prepared.source.description
        times: list[datetime] = []
        if spec is not None:
            seen = prepared.first_bar.ts
            times.append(seen)
            for bar in prepared.bars:
                if bar.ts != seen:
                    seen = bar.ts
                    times.append(seen)
    finally:
        prepared.close()
    if admitted.info.sha256 != bundle.sha256:
        raise ConfigError(f"{bundle.name} changed while the sweep was set up; run it again")
    fold_list: list[Fold] = []
    if spec is not None:
        fold_list = folds(times, spec)
        if not fold_list:
            raise ConfigError(
                f"--walk-forward: {description} has {len(times):,} bar times, too few for one "
                f"fold ({spec}); shorten the windows or widen --from/--to"
            )
    sweep_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    template = SweepTask(
        sweep_id=sweep_id,
        index=0,
        bundle=bundle,
        params=(),
        source=request.source,
        broker=request.broker,
        storage=request.storage,
        cash=str(request.cash),
        start=request.start.isoformat() if request.start else None,
        end=request.end.isoformat() if request.end else None,
        symbols=request.symbols,
        environment=environment,
        data_dir=str(app.workspace.ensure_data_dir()),
        allow_unsigned=gate.allow_unsigned,
        disabled=tuple(sorted(app.kernel.disabled)),
        in_process=request.in_process,
    )
    return Plan(
        sweep_id=sweep_id,
        template=template,
        axes=axes,
        combos=combinations(axes),
        fixed=request.params,
        objective=goal,
        walk_forward=spec,
        folds=fold_list,
        source=description,
    )


def _runner(plan: Plan, workers: int | None, cluster: str | None) -> Runner:
    if cluster is not None:
        return DaskRunner(cluster, plan.sweep_id, workers)
    count = workers if workers is not None else _cores()
    if count == 1:
        return Sequential(threading.Event())
    return LocalPool(count)


@attrs.define
class _State:
    """Walk-forward bookkeeping: which task is which, and each fold's train results."""

    plan: Plan
    kinds: dict[int, tuple[str, int, dict[str, str]]] = attrs.Factory(dict)
    train: dict[int, list[dict[str, Any]]] = attrs.Factory(dict)
    next_index: int = 0

    def task(self, kind: str, fold: Fold | None, combo: dict[str, str]) -> SweepTask:
        self.next_index += 1
        number = fold.number if fold else 0
        self.kinds[self.next_index] = (kind, number, combo)
        changes: dict[str, Any] = {"index": self.next_index, "params": self.plan.params(combo)}
        if fold is not None:
            window = (
                (fold.train_start, fold.train_end)
                if kind == "train"
                else (fold.test_start, fold.test_end)
            )
            changes |= {
                "start": window[0].isoformat(),
                "end": window[1].isoformat(),
                "want_equity": kind == "test",
            }
        return attrs.evolve(self.plan.template, **changes)

    def first(self) -> list[SweepTask]:
        if not self.plan.folds:
            return [self.task("grid", None, combo) for combo in self.plan.combos]
        return [
            self.task("train", fold, combo)
            for fold in self.plan.folds
            for combo in self.plan.combos
        ]

    def followups(self, result: dict[str, Any]) -> Iterable[SweepTask]:
        kind, number, combo = self.kinds[result["index"]]
        result["kind"], result["fold"], result["combo"] = kind, number, combo
        if kind != "train":
            return ()
        done = self.train.setdefault(number, [])
        done.append(result)
        if len(done) < len(self.plan.combos):
            return ()
        best = _best(self.plan.objective, done)
        if best is None:
            return ()
        fold = self.plan.folds[number - 1]
        return (self.task("test", fold, best["combo"]),)


def _best(goal: Objective, results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed, unquarantined run with the best defined objective."""
    usable = [
        r
        for r in results
        if r["status"] == "completed"
        and not r.get("quarantined")
        and goal.value(r.get("metrics")) is not None
    ]
    return min(usable, key=lambda r: goal.key(r.get("metrics"))) if usable else None


def _execute(plan: Plan, runner: Runner, *, quiet: bool) -> tuple[Outcome, float]:
    state = _State(plan)
    tasks = state.first()
    total = len(tasks) + len(plan.folds)
    progress = Progress(
        TextColumn("sweep"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=quiet or not err_console.is_terminal,  # a log gets no stray blank line
    )
    stop = runner.event if isinstance(runner, Sequential) else threading.Event()
    began = time.perf_counter()

    def on_result(result: dict[str, Any]) -> Iterable[SweepTask]:
        progress.advance(bar)
        return state.followups(result)

    with progress:
        bar = progress.add_task("runs", total=total)
        outcome = drive(runner, tasks, on_result, stop)
    for result in outcome.results:  # results taken after a stop got no kind yet
        if "kind" not in result:
            kind, number, combo = state.kinds[result["index"]]
            result["kind"], result["fold"], result["combo"] = kind, number, combo
    return outcome, time.perf_counter() - began


def _anchor(app: App, plan: Plan, outcome: Outcome) -> None:
    """Runs a worker could not anchor (a cluster across machines, whose workers do not
    see this data directory): sign the store's chain head here, as a run does."""
    unanchored = [
        r for r in outcome.results if r["status"] == "completed" and not r.get("checkpointed")
    ]
    if not unanchored:
        return
    environment = str(app.environment)
    data_dir = app.workspace.ensure_data_dir()
    context = PluginContext(
        environment, data_dir, secrets=app.kernel.secrets(environment, app.workspace.home)
    )
    store = app.kernel.open_store(plan.template.storage, context)
    try:
        with store.audit_view() as view:
            head = view.last()
        if head is not None:
            Checkpoints(data_dir).append(
                head.id, head.hash, unanchored[-1]["run_id"], store.location
            )
    finally:
        store.close()


def _ranked(plan: Plan, outcome: Outcome) -> list[dict[str, Any]]:
    """Grid results, best first (undefined objectives and failed runs last)."""
    goal = plan.objective
    rows = [r for r in outcome.results if r.get("kind") in ("grid", "train")]
    rows.sort(
        key=lambda r: (
            r.get("fold", 0),
            r["status"] != "completed",
            bool(r.get("quarantined")),
            goal.key(r.get("metrics")),
            r["index"],
        )
    )
    return rows


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _format(metric: str, value: Any) -> str:
    number = _number(value)
    if number is None:
        return "-"
    if metric in ("total_return", "max_drawdown", "cagr", "volatility", "win_rate", "exposure"):
        return f"{number:+.2%}" if metric in ("total_return", "cagr") else f"{number:.2%}"
    if metric in ("trades",):
        return f"{int(number):,}"
    if metric == "end_equity":
        return f"{number:,.2f}"
    return f"{number:.3f}"


def _status(result: Mapping[str, Any]) -> str:
    if result["status"] == "completed" and result.get("quarantined"):
        return "quarantined"
    return str(result["status"])


def _grid_table(plan: Plan, rows: Sequence[dict[str, Any]], title: str) -> Table:
    goal = plan.objective
    table = Table(title=title)
    table.add_column("rank", justify="right")
    for axis in plan.axes:
        table.add_column(axis.name, justify="right")
    metrics = [goal.metric, *(m for m in SHOWN if m != goal.metric)]
    for metric in metrics:
        table.add_column(metric, justify="right", style="bold" if metric == goal.metric else None)
    table.add_column("status")
    table.add_column("run id", no_wrap=True)
    for rank, row in enumerate(rows[:TOP], 1):
        table.add_row(
            str(rank),
            *(row["combo"][axis.name] for axis in plan.axes),
            *(_format(m, (row.get("metrics") or {}).get(m)) for m in metrics),
            _status(row),
            row.get("run_id") or "-",
        )
    return table


def _folds(plan: Plan, outcome: Outcome) -> list[dict[str, Any]]:
    """Per fold: its windows, the best train run and its out-of-sample test run."""
    goal = plan.objective
    out = []
    for fold in plan.folds:
        train = [
            r for r in outcome.results if r.get("kind") == "train" and r["fold"] == fold.number
        ]
        tests = [r for r in outcome.results if r.get("kind") == "test" and r["fold"] == fold.number]
        best = _best(goal, train) if len(train) == len(plan.combos) else None
        test = tests[0] if tests else None
        out.append(
            {
                "fold": fold.number,
                "train": [fold.train_start.isoformat(), fold.train_end.isoformat()],
                "test": [fold.test_start.isoformat(), fold.test_end.isoformat()],
                "train_bars": fold.train_bars,
                "test_bars": fold.test_bars,
                "best_params": best["combo"] if best else None,
                "train_objective": goal.value(best.get("metrics")) if best else None,
                "train_run_id": best["run_id"] if best else None,
                "test_objective": goal.value(test.get("metrics")) if test else None,
                "test_metrics": test.get("metrics") if test else None,
                "test_status": _status(test) if test else None,
                "test_run_id": test.get("run_id") if test else None,
                "_equity": test.get("equity") if test else None,
            }
        )
    return out


def stitched(fold_rows: Sequence[Mapping[str, Any]], cash: float) -> dict[str, Any] | None:
    """The test windows' equity curves chained end to start (each fold starts again
    from the cash; its returns compound on the previous folds'), and its metrics."""
    points: list[tuple[datetime, float]] = []
    level = cash
    used = 0
    for row in fold_rows:
        curve = row.get("_equity")
        if not curve or row.get("test_status") != "completed":
            continue
        used += 1
        for ts, value in curve:
            points.append((datetime.fromisoformat(ts), level * float(value) / cash))
        level = points[-1][1]
    if not points:
        return None
    metrics = compute_metrics(points, [], 0, 0, cash)
    return {
        "folds": used,
        "from": points[0][0].isoformat(),
        "to": points[-1][0].isoformat(),
        "metrics": {k: metrics[k] for k in ("total_return", "sharpe", "max_drawdown", "cagr")},
        "equity": points,
    }


def _finish(
    plan: Plan,
    outcome: Outcome,
    rows: list[dict[str, Any]],
    seconds: float,
    report: Path | None,
    where: str,
    as_json: bool,
) -> None:
    goal = plan.objective
    finished = [r for r in outcome.results if r["status"] == "completed"]
    total = len(plan.combos) * max(len(plan.folds), 1) + len(plan.folds)
    location = next((r.get("location") for r in finished if r.get("location")), None)
    fold_rows = _folds(plan, outcome) if plan.folds else []
    joined = stitched(fold_rows, float(plan.template.cash)) if plan.folds else None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "sweep_id": plan.sweep_id,
                    "strategy": plan.template.bundle.name,
                    "sha256": plan.template.bundle.sha256,
                    "source": plan.source,
                    "objective": goal.metric,
                    "direction": "max" if goal.maximise else "min",
                    "workers": where,
                    "runs": total,
                    "completed": len(finished),
                    "interrupted": outcome.interrupted,
                    "seconds": round(seconds, 3),
                    "store": location,
                    "report": str(report) if report else None,
                    "results": [_public(plan, r) for r in rows],
                    "walk_forward": (
                        {
                            "train": str(plan.walk_forward.train),
                            "test": str(plan.walk_forward.test),
                            "folds": [
                                {k: v for k, v in f.items() if not k.startswith("_")}
                                for f in fold_rows
                            ],
                            "stitched": {k: v for k, v in joined.items() if k != "equity"}
                            if joined
                            else None,
                        }
                        if plan.walk_forward
                        else None
                    ),
                },
                indent=2,
                default=str,
            )
        )
    else:
        _print(plan, outcome, rows, fold_rows, joined, seconds, report, where, total, location)
    if outcome.refused is not None:
        raise BastionError(str(outcome.refused["error"]))
    if outcome.interrupted:
        raise SystemExit(130)


def _public(plan: Plan, row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "params": row["combo"],
        **({"fold": row["fold"]} if plan.folds else {}),
        "objective": plan.objective.value(row.get("metrics")),
        "status": _status(row),
        "run_id": row.get("run_id"),
        "metrics": row.get("metrics"),
        "error": row.get("error"),
    }


def _print(
    plan: Plan,
    outcome: Outcome,
    rows: list[dict[str, Any]],
    fold_rows: list[dict[str, Any]],
    joined: dict[str, Any] | None,
    seconds: float,
    report: Path | None,
    where: str,
    total: int,
    location: str | None,
) -> None:
    goal = plan.objective
    name = plan.template.bundle.name
    finished = sum(1 for r in outcome.results if r["status"] == "completed")
    if not plan.folds:
        console.print(
            _grid_table(
                plan,
                rows,
                f"sweep {plan.sweep_id}: {name} on {plan.source}, by {goal.metric} "
                f"({goal.direction})",
            )
        )
        if len(rows) > TOP:
            console.print(f"... {len(rows) - TOP:,} more in the report and --json", markup=False)
        best = rows[0] if rows and rows[0]["status"] == "completed" else None
        if best is not None and goal.value(best.get("metrics")) is not None:
            combo = " ".join(f"{k}={v}" for k, v in best["combo"].items())
            console.print(
                f"best: {combo} ({goal.metric} {_format(goal.metric, best['metrics'][goal.metric])}"
                f"), run {best['run_id']}",
                markup=False,
            )
    else:
        assert plan.walk_forward is not None
        table = Table(
            title=f"walk-forward {plan.sweep_id}: {name} on {plan.source}, "
            f"{plan.walk_forward}, by {goal.metric} ({goal.direction})"
        )
        for column in ("fold", "train", "test", "best", f"train {goal.metric}"):
            table.add_column(column, justify="right" if column == "fold" else "left")
        table.add_column(f"test {goal.metric}", justify="right", style="bold")
        table.add_column("test return", justify="right")
        table.add_column("test run", no_wrap=True)
        for row in fold_rows:
            table.add_row(
                str(row["fold"]),
                f"{row['train'][0][:10]}..{row['train'][1][:10]}",
                f"{row['test'][0][:10]}..{row['test'][1][:10]}",
                " ".join(f"{k}={v}" for k, v in (row["best_params"] or {}).items()) or "-",
                _format(goal.metric, row["train_objective"]),
                _format(goal.metric, row["test_objective"]),
                _format("total_return", (row["test_metrics"] or {}).get("total_return")),
                row["test_run_id"] or "-",
            )
        console.print(table)
        if joined is not None:
            m = joined["metrics"]
            console.print(
                f"out of sample, {joined['folds']} folds stitched ({joined['from'][:10]} to "
                f"{joined['to'][:10]}): total return {_format('total_return', m['total_return'])}"
                f", sharpe {_format('sharpe', m['sharpe'])}, max drawdown "
                f"{_format('max_drawdown', m['max_drawdown'])}",
                markup=False,
            )
    failed = [r for r in outcome.results if r["status"] in ("failed", "stopped")]
    for result in failed[:5]:
        err_console.print(
            f"run {result.get('run_id') or '(not stored)'} with "
            f"{' '.join(result.get('params', []))} {result['status']}: {result.get('error')}",
            markup=False,
        )
    console.print(
        f"{finished:,} of {total:,} runs completed in {seconds:.2f}s on {where}"
        + (f"; stored in {location}" if location else ""),
        markup=False,
    )
    if report is not None:
        console.print(f"report: {report}", markup=False)
    if outcome.interrupted:
        err_console.print(
            f"sweep stopped: {finished:,} finished runs are stored and kept; "
            f"{total - finished:,} did not run or did not finish",
            markup=False,
        )


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


def _figure_png(plan: Plan, rows: Sequence[dict[str, Any]]) -> bytes | None:
    """The objective over the grid: a heatmap for two parameters, a line for one, the
    best value over the others for each pair when there are more."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    goal = plan.objective
    axes = plan.axes
    value = {
        tuple(r["combo"][a.name] for a in axes): goal.value(r.get("metrics"))
        for r in rows
        if r.get("kind") == "grid"
    }
    if not value or all(v is None for v in value.values()):
        return None
    pairs = [(i, j) for i in range(len(axes)) for j in range(i + 1, len(axes))][:6]
    panels = max(len(pairs), 1)
    figure = Figure(figsize=(6.4 * min(panels, 3), 4.8 * math.ceil(panels / 3)), dpi=100)
    FigureCanvasAgg(figure)
    if len(axes) == 1:
        plot = figure.add_subplot(1, 1, 1)
        xs = list(axes[0].values)
        ys = [value.get((x,)) for x in xs]
        positions = list(range(len(xs)))
        plot.plot(
            positions, [math.nan if y is None else y for y in ys], marker="o", color="#1f77b4"
        )
        plot.set_xticks(positions, xs)
        plot.set_xlabel(axes[0].name)
        plot.set_ylabel(goal.metric)
        plot.set_title(f"{goal.metric} over {axes[0].name}")
        plot.grid(alpha=0.3)
    else:
        for n, (i, j) in enumerate(pairs, 1):
            plot = figure.add_subplot(math.ceil(panels / 3), min(panels, 3), n)
            rows_v, cols_v = axes[i].values, axes[j].values
            grid = [[math.nan] * len(cols_v) for _ in rows_v]
            for key, v in value.items():
                if v is None:
                    continue
                r, c = rows_v.index(key[i]), cols_v.index(key[j])
                old = grid[r][c]
                better = (v > old) if goal.maximise else (v < old)
                if math.isnan(old) or better:
                    grid[r][c] = v
            cmap = "viridis" if goal.maximise else "viridis_r"
            image = plot.imshow(grid, cmap=cmap, aspect="auto", origin="lower")
            plot.set_xticks(range(len(cols_v)), cols_v)
            plot.set_yticks(range(len(rows_v)), rows_v)
            plot.set_xlabel(axes[j].name)
            plot.set_ylabel(axes[i].name)
            best_of = " (best over the others)" if len(axes) > 2 else ""
            plot.set_title(f"{goal.metric}{best_of}")
            figure.colorbar(image, ax=plot)
            if len(rows_v) * len(cols_v) <= 100:
                for r, line in enumerate(grid):
                    for c, v in enumerate(line):
                        if not math.isnan(v):
                            plot.text(
                                c, r, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8
                            )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _html(plan: Plan, rows: Sequence[dict[str, Any]], outcome: Outcome, png: bool) -> str:
    goal = plan.objective
    esc = html.escape
    metrics = [goal.metric, *(m for m in SHOWN if m != goal.metric)]
    head = "".join(f"<th>{esc(a.name)}</th>" for a in plan.axes)
    head += "".join(f"<th>{esc(m)}</th>" for m in metrics)
    lines = []
    for rank, row in enumerate(rows, 1):
        cells = "".join(f"<td>{esc(row['combo'][a.name])}</td>" for a in plan.axes)
        cells += "".join(
            f"<td>{esc(_format(m, (row.get('metrics') or {}).get(m)))}</td>" for m in metrics
        )
        fold = f"<td>{row['fold']}</td>" if plan.folds else ""
        lines.append(
            f"<tr><td>{rank}</td>{fold}{cells}<td>{esc(_status(row))}</td>"
            f"<td><code>{esc(row.get('run_id') or '-')}</code></td></tr>"
        )
    fold_head = "<th>fold</th>" if plan.folds else ""
    folds_html = ""
    if plan.folds:
        fold_lines = []
        for f in _folds(plan, outcome):
            fold_lines.append(
                "<tr>"
                + "".join(
                    f"<td>{esc(str(x))}</td>"
                    for x in (
                        f["fold"],
                        f"{f['train'][0][:10]} .. {f['train'][1][:10]}",
                        f"{f['test'][0][:10]} .. {f['test'][1][:10]}",
                        " ".join(f"{k}={v}" for k, v in (f["best_params"] or {}).items()) or "-",
                        _format(goal.metric, f["train_objective"]),
                        _format(goal.metric, f["test_objective"]),
                        f["test_run_id"] or "-",
                    )
                )
                + "</tr>"
            )
        folds_html = (
            "<h2>Walk-forward folds</h2><table><tr><th>fold</th><th>train</th><th>test</th>"
            f"<th>best</th><th>train {esc(goal.metric)}</th><th>test {esc(goal.metric)}</th>"
            "<th>test run</th></tr>" + "".join(fold_lines) + "</table>"
        )
    image = '<img src="objective.png" alt="objective over the grid">' if png else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sweep {esc(plan.sweep_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}img{{max-width:100%}}</style>
</head><body>
<h1>Sweep {esc(plan.sweep_id)}: {esc(plan.template.bundle.name)}</h1>
<p>SHA-256 <code>{esc(plan.template.bundle.sha256)}</code>, data {esc(plan.source)},
objective <b>{esc(goal.metric)}</b> ({esc(goal.direction)}){
        ", stopped early" if outcome.interrupted else ""
    }.</p>
{image}
{folds_html}
<h2>Every run, ranked</h2>
<table><tr><th>rank</th>{fold_head}{head}<th>status</th><th>run id</th></tr>
{"".join(lines)}
</table></body></html>
"""


def _write_report(app: App, plan: Plan, rows: Sequence[dict[str, Any]], outcome: Outcome) -> Path:
    """``reports/sweep-ID/objective.png`` and ``sweep.html`` (both or neither)."""
    folder = app.workspace.ensure_data_dir() / "reports" / f"sweep-{plan.sweep_id}"
    png = _figure_png(plan, rows) if not plan.folds else None
    page = _html(plan, rows, outcome, png is not None)
    files = [(folder / "sweep.html", page.encode("utf-8"))]
    if png is not None:
        files.insert(0, (folder / "objective.png", png))
    atomic_write_many(files)
    return folder / "sweep.html"


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(sweep_command)
