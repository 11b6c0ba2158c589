"""Built-in plugin: ``bastion backtest``, ``bastion runs``, ``bastion report``, ``bastion audit``.

Registered through ``register_commands`` like any third-party command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bastion import ConfigError, hookimpl
from bastion.audit import Checkpoints, verify
from bastion.cli import App, console, err_console, pass_app, storage_option, workspace_options
from bastion.interfaces import PluginContext, RunData, Store
from bastion.runs import BacktestRequest, parse_cash, parse_date, prepare_backtest
from bastion.trust import format_time

# The report module pulls in matplotlib (half a second); only commands that
# render import it, so 'bastion --help' and 'bastion verify' stay quick.


IN_PROCESS_NOTE = (
    "note: --in-process: strategy code runs inside the kernel's own process, unsandboxed "
    "(trusted backtests only)"
)


def _emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _store(app: App, storage: str | None) -> Store:
    storage = app.storage(storage)
    data_dir = app.workspace.data_dir
    environment = str(app.environment)
    secrets = app.kernel.secrets(environment, app.workspace.home)
    context = PluginContext(environment, data_dir, secrets=secrets)
    app.kernel.find_offer("storage", storage, context.environment)
    if not (data_dir / "bastion.db").exists() and storage == "sqlite":
        raise ConfigError(
            f"no runs stored for the {app.environment} environment yet ({data_dir}); "
            "run 'bastion backtest' first"
        )
    return app.kernel.open_store(storage, context)


def _check_out(out: Path | None) -> None:
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; the report needs a folder")


def _aggregate(run: Any) -> dict[str, Any]:
    """All strategies' portfolios added up: what the whole (simulated) account did."""
    start = sum(float(s.metrics.get("start_equity") or 0) for s in run.strategies)
    end = sum(float(s.metrics.get("end_equity") or 0) for s in run.strategies)
    return {
        "strategies": len(run.strategies),
        "start_equity": round(start, 2),
        "end_equity": round(end, 2),
        "total_return": end / start - 1 if start else None,
    }


def _report_dir(app: App, run_id: str, out: Path | None) -> Path:
    return out if out is not None else app.workspace.data_dir / "reports" / run_id


@click.command("backtest")
@workspace_options
@click.argument("strategies", nargs=-1)
@click.option(
    "--source",
    default="csv:sample",
    show_default=True,
    help=(
        "Market data: csv:PATH (file or folder), csv:sample (bundled), synthetic:N, "
        "store:SYMBOLS (bars imported with 'bastion data import')."
    ),
)
@click.option("--from", "start", default=None, help="First day (YYYY-MM-DD), inclusive.")
@click.option("--to", "end", default=None, help="Last day (YYYY-MM-DD), inclusive.")
@click.option("--cash", default="100000", show_default=True, help="Starting cash per strategy.")
@click.option("--symbols", default=None, help="Comma-separated subset of the source's symbols.")
@click.option(
    "--broker",
    default="sim",
    show_default=True,
    help="Broker and options, e.g. sim or sim:slippage=2,commission=bps:1.",
)
@storage_option
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="[STRATEGY.]KEY=VALUE",
    help="Override a strategy parameter (repeatable).",
)
@click.option(
    "--report/--no-report", default=True, show_default=True, help="Write the HTML/PNG report."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Report folder [default: .bastion/ENV/reports/RUN_ID].",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option(
    "--log-trades",
    is_flag=True,
    help="Also write every order's life, submission to fill, to the trades log stream.",
)
@click.option(
    "--in-process",
    "in_process",
    is_flag=True,
    help="Trusted backtests only: run strategy code inside this process, unsandboxed "
    "(refused in paper and live).",
)
@pass_app
def backtest_command(
    app: App,
    strategies: tuple[str, ...],
    source: str,
    start: str | None,
    end: str | None,
    cash: str,
    symbols: str | None,
    broker: str,
    storage: str | None,
    params: tuple[str, ...],
    report: bool,
    out: Path | None,
    as_json: bool,
    log_trades: bool,
    in_process: bool,
) -> None:
    """Backtest STRATEGIES (default: every verified strategy) on historical bars.

    Each strategy runs in its own locked-down worker process ('bastion sandbox'
    shows the layers) unless --in-process is given.
    """
    from bastion.plugins.reports import render_report, strategy_summary, summary_table

    _check_out(out)
    if out is not None and not report:
        raise ConfigError("--out names the report's folder; drop it or drop --no-report")
    wanted = tuple(s.strip() for s in symbols.split(",") if s.strip()) if symbols else ()
    if symbols is not None and not wanted:
        raise ConfigError("--symbols is empty; name symbols like AAPL,MSFT or leave it out")
    request = BacktestRequest(
        strategies=strategies,
        source=source,
        broker=broker,
        storage=app.storage(storage),
        cash=parse_cash(cash),
        start=parse_date(start, "--from") if start is not None else None,
        end=parse_date(end, "--to", end=True) if end is not None else None,
        symbols=wanted,
        params=params,
        in_process=in_process,
        log_trades=log_trades,
    )
    prepared = prepare_backtest(app.kernel, app.gate(), request, str(app.environment))
    for refusal in prepared.refusals:
        err_console.print(f"skipped {refusal.line()}", markup=False)
    if in_process:
        # Said on every run, --json or not (stderr): nothing protects the kernel.
        err_console.print(IN_PROCESS_NOTE, markup=False)
    missing = {
        layer.name: layer.detail
        for strategy in prepared.strategies
        for layer in strategy.layers
        if not layer.active
    }
    for name, detail in missing.items():
        err_console.print(
            f"warning: sandbox layer {name} is unavailable here ({detail}); "
            "'bastion sandbox' shows every layer",
            markup=False,
        )
    counted = (
        (TextColumn("{task.completed:,} of {task.total:,} bars"), TimeRemainingColumn())
        if prepared.total
        else (TextColumn("{task.completed:,} bars"),)
    )
    progress = Progress(
        TextColumn("backtest"),
        BarColumn(bar_width=None),
        *counted,
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    )
    try:
        with progress:
            task = progress.add_task("bars", total=prepared.total)
            result, store = prepared.run(lambda n: progress.update(task, completed=n))
    finally:
        prepared.close()
    try:
        run = store.load_run(result.run_id, details=report)  # the summary needs counts only
        report_path = render_report(run, _report_dir(app, result.run_id, out)) if report else None
    finally:
        store.close()
    if as_json:
        _emit_json(
            {
                "run_id": result.run_id,
                "bars": result.bars,
                "seconds": round(result.seconds, 3),
                "bars_per_second": round(result.bars / result.seconds) if result.seconds else None,
                "sandbox": prepared.mode,
                "store": store.location,
                "report": str(report_path) if report_path else None,
                "aggregate": _aggregate(run),
                "strategies": [strategy_summary(s) for s in run.strategies],
            }
        )
        _fail_if_all_quarantined(run, quiet=True)
        return
    console.print(summary_table(run, width=console.width))
    total = _aggregate(run)
    if total["total_return"] is not None and total["strategies"] > 1:
        console.print(
            f"aggregate of {total['strategies']} strategies: {total['start_equity']:,.2f} -> "
            f"{total['end_equity']:,.2f} ({total['total_return']:+.2%})",
            markup=False,
        )
    _print_notes(run)
    console.print(
        f"run {result.run_id}: {result.bars:,} bars in {result.seconds:.2f}s ({prepared.mode}); "
        f"stored in {store.location}",
        markup=False,
    )
    if report_path:
        console.print(f"report: {report_path}", markup=False)
    _fail_if_all_quarantined(run)


def _fail_if_all_quarantined(run: RunData, *, quiet: bool = False) -> None:
    """Exit 1 when no strategy ran to the end: the figures then describe no strategy."""
    if run.strategies and all(s.quarantined for s in run.strategies):
        if not quiet:
            err_console.print(
                f"every strategy of run {run.row.run_id} was quarantined (see above); "
                "its figures are not a strategy's result",
                markup=False,
            )
        raise SystemExit(1)


def _print_notes(run: RunData) -> None:
    """What the table cannot say: rejected orders and quarantines, one line each (stderr)."""
    for strategy in run.strategies:
        if strategy.rejected:
            err_console.print(
                f"{strategy.record.name}: {strategy.rejected:,} of {strategy.orders:,} orders "
                f"rejected; the latest because: {strategy.last_rejection}",
                markup=False,
            )
        if strategy.quarantined:
            err_console.print(
                f"{strategy.record.name} was quarantined: {strategy.quarantined}", markup=False
            )


@click.command("runs")
@workspace_options
@storage_option
@click.option("--json", "as_json", is_flag=True)
@pass_app
def runs_command(app: App, storage: str | None, as_json: bool) -> None:
    """List stored runs, newest first."""
    store = _store(app, storage)
    try:
        rows = store.list_runs()
    finally:
        store.close()
    if as_json:
        _emit_json(
            [
                {
                    "run_id": r.run_id,
                    "kind": r.kind,
                    "environment": r.environment,
                    "status": r.status,
                    "started": format_time(r.started),
                    "finished": format_time(r.finished) if r.finished else None,
                    "strategies": list(r.strategies),
                    "quarantined": dict(r.quarantined),
                    "error": r.error,
                }
                for r in rows
            ]
        )
        return
    table = Table(title=f"Runs ({app.environment})")
    table.add_column("run id", no_wrap=True)
    for column in ("kind", "status", "started", "strategies", "error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        style = {"completed": "green", "failed": "red"}.get(r.status, "yellow")
        table.add_row(
            r.run_id,
            r.kind,
            f"[{style}]{r.status}[/]",
            format_time(r.started),
            ", ".join(
                f"{name} (quarantined: {r.quarantined[name].split(':', 1)[0]})"
                if name in r.quarantined
                else name
                for name in r.strategies
            ),
            r.error or "",
        )
    console.print(table)


@click.command("report")
@workspace_options
@click.argument("run_id")
@storage_option
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Report folder [default: .bastion/ENV/reports/RUN_ID].",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print everything the report shows as JSON (closed trades, open positions, costs, "
    "rejected orders, metrics) instead of writing it.",
)
@pass_app
def report_command(
    app: App, run_id: str, storage: str | None, out: Path | None, as_json: bool
) -> None:
    """Re-render the report of RUN_ID (or a unique prefix) from the store alone."""
    from bastion.plugins.reports import render_report, report_data, summary_table

    _check_out(out)
    store = _store(app, storage)
    try:
        run = store.load_run(run_id)
    finally:
        store.close()
    if as_json:
        _emit_json(report_data(run))
        return
    path = render_report(run, _report_dir(app, run.row.run_id, out))
    console.print(summary_table(run, width=console.width))
    _print_notes(run)
    console.print(f"report: {path}", markup=False)


@click.group("audit")
def audit_group() -> None:
    """The hash-chained audit log."""


@audit_group.command("verify")
@workspace_options
@storage_option
@pass_app
def audit_verify(app: App, storage: str | None) -> None:
    """Check the audit log's hash chain and every run; name the first broken record."""
    store = _store(app, storage)
    checkpoints = Checkpoints(app.workspace.data_dir)
    try:
        check = verify(store, checkpoints)
    finally:
        store.close()
    if check.ok:
        signed = checkpoints.count(store.location)
        console.print(
            f"audit log intact: {check.records} records, {signed} signed "
            f"checkpoint{'' if signed == 1 else 's'} "
            f"({store.location})",
            markup=False,
        )
        return
    err_console.print(
        f"audit log BROKEN at record {check.first_broken}: {check.reason}"
        if check.first_broken is not None
        else f"audit log BROKEN: {check.reason}",
        markup=False,
    )
    raise SystemExit(1)


@hookimpl
def register_commands(cli: Any) -> None:
    for command in (backtest_command, runs_command, report_command, audit_group):
        cli.add_command(command)
