"""Built-in plugin: ``bastion run`` (paper and live trading), ``bastion halt`` and
``bastion resume``.

A run is a backtest's engine fed by a live source and a live broker: the same
admission, sandbox, checks, booking, store and audit.  Registered through
``register_commands`` like any third-party command.
"""

from __future__ import annotations

import json
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from bastion import ConfigError, Environment, hookimpl
from bastion.cli import App, console, err_console, pass_app, storage_option, workspace_options
from bastion.files import atomic_write
from bastion.interfaces import PluginContext
from bastion.log import masked
from bastion.runs import (
    BLOCKS_FILE,
    BacktestRequest,
    Blocks,
    Reconciliation,
    parse_cash,
    prepare_backtest,
)

HALT_FILE = "HALT"


def halt_path(app: App) -> Path:
    return app.workspace.ensure_data_dir() / HALT_FILE


@click.command("run")
@workspace_options
@click.argument("strategies", nargs=-1)
@click.option(
    "--source",
    required=True,
    help="Live bars, e.g. 'ibkr:symbols=AAPL|MSFT,bar=1m,warmup=1 D'.",
)
@click.option("--broker", default="ibkr", show_default=True, help="e.g. ibkr or ibkr:via=tws.")
@click.option("--cash", default="100000", show_default=True, help="Each strategy's capital.")
@click.option("--symbols", default=None, help="Comma-separated subset of the source's symbols.")
@storage_option
@click.option("--param", "params", multiple=True, metavar="[STRATEGY.]KEY=VALUE")
@click.option(
    "--approve-live",
    "approve_live",
    default=None,
    metavar="ACCOUNT",
    help="Live only: the broker account this run may trade; must equal what it reports.",
)
@click.option(
    "--signal-only",
    is_flag=True,
    help="Record intents that pass every check as signals; send nothing to the broker.",
)
@click.option("--in-process", "in_process", is_flag=True, help="Development only.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary at the end.")
@pass_app
def run_command(
    app: App,
    strategies: tuple[str, ...],
    source: str,
    broker: str,
    cash: str,
    symbols: str | None,
    storage: str | None,
    params: tuple[str, ...],
    approve_live: str | None,
    signal_only: bool,
    in_process: bool,
    as_json: bool,
) -> None:
    """Trade STRATEGIES (default: every verified strategy) live, on paper or for real.

    Strategies run sandboxed on the same engine as backtests; they first get warm-up
    bars from the source's history (their orders then are ignored). Live needs
    --env live and --approve-live ACCOUNT naming the account the broker reports.
    Ctrl-C or SIGTERM stops cleanly: no new orders, working orders cancelled (or left,
    with the broker's on_stop=leave), everything stored.
    """
    environment = app.environment
    settings = app.settings(approve_live=approve_live)
    if approve_live and environment is not Environment.LIVE:
        raise ConfigError("--approve-live is for --env live only; drop it")
    if environment is Environment.LIVE and not settings.approved_account.value:
        raise ConfigError(
            "live trading needs an approval naming the broker account: --approve-live ACCOUNT "
            "(or BASTION_APPROVE_LIVE, or [environments.live] approve_account)"
        )
    if halt_path(app).exists():
        raise ConfigError(
            f"trading is halted in {environment} ({halt_path(app)}); 'bastion resume' first"
        )
    signal_only = signal_only or not settings.auto_execute.value
    wanted = tuple(s.strip() for s in symbols.split(",") if s.strip()) if symbols else ()
    stop = threading.Event()
    context = PluginContext(
        environment=str(environment),
        data_dir=app.workspace.data_dir,
        settings=settings,
        secrets=app.kernel.secrets(str(environment), app.workspace.home),
        live=True,
        stop=stop,
    )
    request = BacktestRequest(
        strategies=strategies,
        source=source,
        broker=broker,
        storage=app.storage(storage),
        cash=parse_cash(cash),
        symbols=wanted,
        params=params,
        in_process=in_process,
        kind=str(environment),
        signal_only=signal_only,
        trade_from=datetime.now(UTC),
    )
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        prepared = prepare_backtest(app.kernel, app.gate(), request, str(environment), context)
        try:
            for refusal in prepared.refusals:
                err_console.print(f"skipped {refusal.line()}", markup=False)
            account = getattr(getattr(prepared.broker, "session", None), "account", "")
            err_console.print(
                f"{environment}: {len(prepared.strategies)} strategies on "
                f"{prepared.source.description}, broker {request.broker}"
                + (f" (account {masked(account)})" if account else "")
                + ("; SIGNAL-ONLY: nothing is sent" if signal_only else "")
                + "; Ctrl-C stops",
                markup=False,
            )
            prepared.on_reconciled = _tell_reconciled
            result, store = prepared.run()
        finally:
            prepared.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        run = store.load_run(result.run_id)
    finally:
        store.close()
    summary = {
        "run_id": result.run_id,
        "environment": str(environment),
        "bars": result.bars,
        "signal_only": signal_only,
        "strategies": [
            {
                "name": s.record.name,
                "orders": s.orders,
                "fills": s.fills,
                "quarantined": s.quarantined,
                "end_equity": s.metrics.get("end_equity"),
            }
            for s in run.strategies
        ],
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    from bastion.plugins.reports import summary_table

    console.print(summary_table(run, width=console.width))
    console.print(
        f"run {result.run_id}: {result.bars:,} bars, stopped; stored in {store.location}",
        markup=False,
    )


def _tell_reconciled(found: Reconciliation) -> None:
    for line in found.lines():
        err_console.print(line, markup=False)


@click.command("halt")
@workspace_options
@click.option("--reason", default="halted by the operator", show_default=True)
@pass_app
def halt_command(app: App, reason: str) -> None:
    """Halt trading in this environment: a running run cancels its working orders and
    refuses new ones (within half a second); new runs refuse to start; until 'bastion resume'."""
    path = halt_path(app)
    record = {"reason": reason, "at": datetime.now(UTC).isoformat()}
    atomic_write(path, (json.dumps(record) + "\n").encode(), 0o600)
    console.print(f"trading halted in {app.environment}: {reason} ({path})", markup=False)


@click.command("resume")
@workspace_options
@click.option(
    "--strategy",
    "strategies",
    multiple=True,
    metavar="NAME",
    help="Lift the block a start-up reconciliation put on this strategy (repeatable).",
)
@click.option(
    "--accept-positions",
    is_flag=True,
    help="With --strategy: accept the position differences it was blocked for as not "
    "Bastion's (e.g. shares bought by hand); later checks allow for them.",
)
@pass_app
def resume_command(app: App, strategies: tuple[str, ...], accept_positions: bool) -> None:
    """Lift a halt set with 'bastion halt', or with --strategy the block a start-up
    reconciliation put on a strategy whose orders or positions did not agree with the
    broker's (after you have looked: 'bastion logs --stream trades')."""
    if accept_positions and not strategies:
        raise ConfigError("--accept-positions goes with --strategy NAME")
    if strategies:
        _unblock(app, strategies, accept_positions)
        return
    path = halt_path(app)
    if not path.exists():
        console.print(f"trading is not halted in {app.environment}", markup=False)
        return
    path.unlink()
    console.print(f"trading resumed in {app.environment}", markup=False)


def _unblock(app: App, strategies: tuple[str, ...], accept_positions: bool) -> None:
    blocks = Blocks(app.workspace.data_dir / BLOCKS_FILE)
    names = [s if s.endswith(".py") else f"{s}.py" for s in strategies]
    missing = [n for n in names if n not in blocks.blocked]
    if missing:
        blocked = ", ".join(sorted(blocks.blocked)) or "none"
        raise ConfigError(
            f"{missing[0]} is not blocked in the {app.environment} environment (blocked: {blocked})"
        )
    lifted = {name: blocks.lift(name, accept_positions) for name in names}
    storage = app.storage(None)
    if storage != "sqlite" or (app.workspace.data_dir / "bastion.db").exists():
        store = app.kernel.open_store(
            storage,
            PluginContext(
                str(app.environment),
                app.workspace.data_dir,
                secrets=app.kernel.secrets(str(app.environment), app.workspace.home),
            ),
        )
        try:
            for name, accepted in lifted.items():
                store.audit(
                    "strategy_unblocked",
                    {
                        "strategy": name,
                        "accepted_positions": {s: str(q) for s, q in accepted.items()},
                    },
                )
        finally:
            store.close()
    blocks.save()
    for name, accepted in lifted.items():
        note = (
            "; accepted as not Bastion's: "
            + ", ".join(f"{s} {q:+}" for s, q in sorted(accepted.items()))
            if accepted
            else ""
        )
        console.print(f"{name} may trade again in {app.environment}{note}", markup=False)


@hookimpl
def register_commands(cli: Any) -> None:
    for command in (run_command, halt_command, resume_command):
        cli.add_command(command)
