"""The ``bastion`` command.  Kernel commands live here; the rest come from plugins.

Every command takes ``--home DIR`` (the workspace; default the current
directory), ``--env`` and ``--allow-unsigned`` through :func:`workspace_options`,
which third-party commands can use too.  A :class:`~bastion.BastionError` is
printed as one line on stderr with a non-zero exit code, never a traceback.

Public API for command plugins (``register_commands``): what ``__all__`` lists —
:class:`App` (the workspace, environment and kernel a command runs in, passed by
:func:`pass_app`), :func:`workspace_options`, :func:`storage_option`, :func:`admit_all`
and the two rich
consoles.  Everything else here is private.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click
from rich.console import Console
from rich.table import Table

from . import API_VERSION
from ._environment import Detected, Environment, allow_unsigned_requested, detect
from ._errors import BastionError, ConfigError
from ._kernel import Kernel
from ._loader import Gate, Refusal, Strategy
from ._logging import configure_logging
from ._reference import (
    api_markdown,
    api_reference,
    command_markdown,
    command_reference,
    hook_markdown,
    hook_reference,
)
from ._settings import EnvironmentSettings, environment_settings, masked
from ._version import __version__
from ._workspace import Workspace

__all__ = [
    "App",
    "admit_all",
    "console",
    "err_console",
    "main",
    "pass_app",
    "storage_option",
    "workspace_options",
]

F = TypeVar("F", bound=Callable[..., Any])


def _width(stream: Any) -> int | None:
    """Tables piped to a file or CI log get 160 columns, not rich's default 80."""
    if os.environ.get("COLUMNS") or (hasattr(stream, "isatty") and stream.isatty()):
        return None
    return 160


console = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


@attrs.define
class App:
    """What a command works with: the kernel, the workspace and the policy flags."""

    kernel: Kernel
    home: Path = Path(".")
    env_flag: str | None = None
    allow_unsigned_flag: bool = False
    _workspace: Workspace | None = None
    _detected: Detected | None = None

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            home = self.home.expanduser()
            if not home.is_dir():
                raise ConfigError(f"--home {self.home}: no such directory")
            self._detected = detect(self.env_flag, home)
            self._workspace = Workspace(home, self._detected.environment)
            configure_logging(
                self._workspace.logs_dir,
                debug=self._detected.environment is Environment.DEVELOPMENT,
            )
        return self._workspace

    @property
    def detected(self) -> Detected:
        """The environment and where it came from (flag, variable, file, default)."""
        self.workspace  # noqa: B018 - detects on first use
        assert self._detected is not None
        return self._detected

    def settings(self, *, approve_live: str | None = None) -> EnvironmentSettings:
        """This environment's settings, each with its source."""
        from ._environment import read_config

        workspace = self.workspace
        config = read_config(workspace.config_file)
        return environment_settings(
            self.detected,
            workspace.data_dir,
            config,
            workspace.config_file,
            approve_live=approve_live,
        )

    def storage(self, flag: str | None) -> str:
        """The storage spec a command uses: ``--storage``, else ``BASTION_STORAGE``, else
        ``storage`` in this environment's table of bastion.toml, else ``sqlite``."""
        return flag if flag else str(self.settings().storage.value)

    @property
    def environment(self) -> Environment:
        return self.workspace.environment

    def gate(self, *, strict: bool = False) -> Gate:
        """A verification gate with this environment's policy.

        ``strict`` ignores allow-unsigned (``bastion verify`` always is).
        """
        allow = allow_unsigned_requested(self.allow_unsigned_flag) and not strict
        if allow and self.environment is not Environment.DEVELOPMENT:
            raise ConfigError(
                f"unsigned strategies are allowed only in development, not {self.environment}; "
                "remove --allow-unsigned / BASTION_ALLOW_UNSIGNED"
            )
        if allow:
            err_console.print(
                "[bold red]WARNING: unsigned strategies are allowed (development only). "
                "Unverified code will run; this is recorded.[/]"
            )
        return Gate(
            self.workspace,
            allow_unsigned=allow,
            refuse_example_key=self.environment is Environment.LIVE,
        )


pass_app = click.make_pass_decorator(App)
pass_app.__doc__ = """Decorate a command to receive the :class:`App` as its first argument."""


def storage_option(func: F) -> F:
    """Add ``--storage SPEC`` to a command; resolve it with :meth:`App.storage`."""
    return click.option(
        "--storage",
        default=None,
        metavar="SPEC",
        help=(
            "Where runs are stored: sqlite (the default), or a PostgreSQL URL "
            "(postgresql://USER@HOST:PORT/DB). Else BASTION_STORAGE, else storage in "
            "bastion.toml's [environments.ENV]."
        ),
    )(func)


def workspace_options(func: F) -> F:
    """Add ``--home``, ``--env`` and ``--allow-unsigned`` to a command."""

    @click.option(
        "--home",
        type=click.Path(path_type=Path),
        default=None,
        envvar="BASTION_HOME",
        help="Workspace holding strategies/ and signatures/ [default: .]",
    )
    @click.option(
        "--env",
        "env_flag",
        type=click.Choice([e.value for e in Environment]),
        default=None,
        help="Environment (else BASTION_ENV, else bastion.toml, else development).",
    )
    @click.option(
        "--allow-unsigned",
        is_flag=True,
        default=False,
        help="Development only: load strategies that carry no signature (loudly).",
    )
    @click.pass_context
    @functools.wraps(func)
    def wrapper(
        ctx: click.Context,
        home: Path | None,
        env_flag: str | None,
        allow_unsigned: bool,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        app = ctx.find_object(App)
        assert app is not None
        if home is not None:
            app.home = home
        if env_flag is not None:
            app.env_flag = env_flag
        app.allow_unsigned_flag = app.allow_unsigned_flag or allow_unsigned
        return ctx.invoke(func, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class BastionGroup(click.Group):
    """Turns a BastionError into a one-line message and exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BastionError as exc:
            raise _UserError(str(exc), exc.exit_code) from None
        except OSError as exc:
            # A file or folder the user's system will not let us read or write
            # (permissions, a full disk, a folder where a file should be): say
            # which, not where in Bastion it was noticed.
            if exc.filename is None:
                raise
            raise _UserError(
                f"cannot use {exc.filename}: {exc.strerror or exc}; "
                "check that it exists and that you may read and write it",
                1,
            ) from None


class _UserError(click.ClickException):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click declares it a class variable

    def show(self, file: Any = None) -> None:
        err_console.print(f"bastion: error: {self.message}", markup=False)


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def build_cli(kernel: Kernel) -> click.Group:
    @click.group(
        cls=BastionGroup,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )
    @click.version_option(__version__, prog_name="bastion")
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        """Bastion: run only signed, whitelisted strategy code."""
        ctx.obj = App(kernel=kernel)

    @cli.command("plugins")
    @workspace_options
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option(
        "--strategies/--no-strategies",
        default=True,
        help="Also admit and list the verified strategy files.",
    )
    @pass_app
    def plugins_command(app: App, as_json: bool, strategies: bool) -> None:
        """List every plugin, where it came from and the hooks it implements."""
        if strategies:
            admit_all(app)
        rows = [p.as_dict() for p in app.kernel.plugins()]
        if as_json:
            _print_json(rows)
            return
        table = Table(title="Bastion plugins")
        for column in ("name", "origin", "source", "hooks"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["name"], row["origin"], row["source"], ", ".join(row["hooks"]))
        console.print(table)

    @cli.command("env")
    @workspace_options
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @pass_app
    def env_command(app: App, as_json: bool) -> None:
        """Show the detected environment and every setting it has, with where each came from.

        The environment comes from --env, then BASTION_ENV, then BASTION_ENV= in the
        workspace's .env file, then 'environment' in bastion.toml, then development.
        Live is never inferred: it needs --env live.
        """
        from ._secrets import SECRETS_FILE_VAR, secrets_file

        settings = app.settings()
        data = settings.as_dict()
        data["secrets_file"] = {
            "value": str(secrets_file()),
            "source": SECRETS_FILE_VAR if os.environ.get(SECRETS_FILE_VAR) else "default",
        }
        if as_json:
            _print_json(data)
            return
        table = Table(title=f"Environment of {app.workspace.home}")
        for column in ("setting", "value", "from"):
            table.add_column(column, overflow="fold")

        def row(name: str, value: Any, source: str) -> None:
            if isinstance(value, (list, tuple)):
                value = f"{value[0]} to {value[1]}"
            table.add_row(name, "-" if value is None else str(value), source)

        for key in ("environment", "data_dir", "logs_dir", "storage", "client_ids", "host"):
            row(key, data[key]["value"], data[key]["source"])
        for key in ("tws_port", "gateway_port", "auto_execute"):
            row(key, data[key]["value"], data[key]["source"])
        row(
            "approved_account",
            masked(settings.approved_account.value),
            data["approved_account"]["source"],
        )
        for key, item in data["limits"].items():
            row(f"limits.{key}", item["value"], item["source"])
        row("secrets_file", data["secrets_file"]["value"], data["secrets_file"]["source"])
        console.print(table)
        console.print(f"config file: {data['config_file']}", markup=False)

    @cli.command("sandbox")
    @workspace_options
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @pass_app
    def sandbox_command(app: App, as_json: bool) -> None:
        """Show each protection layer of the strategy sandbox: active or unavailable, and why.

        Starts one worker exactly as a run would (with this environment's [sandbox]
        settings) and reports what it could lock down.  Exits 1 when a layer this
        environment requires is unavailable (paper and live would refuse to run).
        """
        from ._backtest import launcher_for
        from ._environment import read_config
        from ._sandbox import probe

        config_file = app.workspace.config_file
        _, settings = launcher_for(
            False, str(app.environment), read_config(config_file), str(config_file)
        )
        layers = probe(settings)
        missing = [la.name for la in layers if la.name in settings.require and not la.active]
        rows = [
            {
                "layer": la.name,
                "active": la.active,
                "required": la.name in settings.require,
                "detail": la.detail,
            }
            for la in layers
        ]
        if as_json:
            _print_json(
                {
                    "environment": str(app.environment),
                    "ready": not missing,
                    "missing_required": missing,
                    "layers": rows,
                }
            )
        else:
            table = Table(title=f"Strategy sandbox on this machine ({app.environment})")
            for column in ("layer", "status", "required", "detail"):
                table.add_column(column, overflow="fold")
            for row in rows:
                status = "[green]active[/]" if row["active"] else "[red]unavailable[/]"
                table.add_row(
                    str(row["layer"]), status, "yes" if row["required"] else "", str(row["detail"])
                )
            console.print(table)
            if missing:
                err_console.print(
                    f"the {app.environment} environment requires {', '.join(missing)}, "
                    "unavailable here: it refuses to run strategies ([sandbox] require in "
                    "bastion.toml)",
                    markup=False,
                )
        if missing:
            raise SystemExit(1)

    @cli.command("api")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option("--markdown", is_flag=True, help="The reference page docs/reference/api.md.")
    def api_command(as_json: bool, markdown: bool) -> None:
        """List the public modules a plugin may import from, and what each offers."""
        rows = api_reference()
        if as_json:
            _print_json({"api_version": API_VERSION, "modules": rows})
        elif markdown:
            click.echo(api_markdown(rows), nl=False)
        else:
            table = Table(title=f"Bastion plugin API {API_VERSION}")
            for column in ("module", "names"):
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(row["module"], ", ".join(n["name"] for n in row["names"]))
            console.print(table)

    @cli.command("commands")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option("--markdown", is_flag=True, help="The reference page docs/reference/commands.md.")
    @click.pass_context
    def commands_command(ctx: click.Context, as_json: bool, markdown: bool) -> None:
        """List every command and subcommand, plugins' too, with its options."""
        group = ctx.find_root().command
        rows = command_reference(group)
        if as_json:
            _print_json(rows)
            return
        if markdown:
            click.echo(command_markdown(rows), nl=False)
            return
        table = Table(title="Bastion commands")
        for column in ("command", "summary"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row["command"], row["summary"])
        console.print(table)

    @cli.command("hooks")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option("--markdown", is_flag=True, help="The reference page docs/reference/hooks.md.")
    def hooks_command(as_json: bool, markdown: bool) -> None:
        """List every hook (kernel and strategy) with its contract."""
        rows = hook_reference()
        if as_json:
            _print_json(rows)
            return
        if markdown:
            click.echo(hook_markdown(rows), nl=False)
            return
        table = Table(title="Bastion hooks")
        for column in ("project", "hook", "arguments", "summary"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["project"], row["name"], ", ".join(row["arguments"]), row["summary"])
        console.print(table)

    kernel.add_commands(cli)
    return cli


def admit_all(
    app: App, names: Sequence[str] = (), *, strict: bool = False
) -> list[Strategy | Refusal]:
    """Admit the named strategies (or every candidate) and tell the observers.

    Each file that passes verification is loaded in a sandboxed worker (with the
    environment's ``[sandbox]`` settings), which is closed again once it has
    reported its hooks.  Returns one :class:`Strategy` or :class:`Refusal` per file.
    """
    from ._backtest import launcher_for
    from ._environment import read_config

    gate = app.gate(strict=strict)
    config_file = app.workspace.config_file
    launcher, _ = launcher_for(
        False, str(app.environment), read_config(config_file), str(config_file)
    )
    paths = [gate.resolve(n) for n in names] if names else gate.candidates()
    outcomes = gate.admit_many(paths, launcher)
    for outcome in outcomes:
        if isinstance(outcome, Refusal):
            app.kernel.strategy_refused(outcome)
        else:
            outcome.close()
            app.kernel.strategy_loaded(outcome)
    return outcomes


def _configured_disable(args: Sequence[str]) -> list[str]:
    """The plugins ``[plugins] disable`` lists in the workspace's bastion.toml (the
    workspace ``--home`` or ``BASTION_HOME`` names, else the current directory): read
    before any plugin is imported, so a broken one can be switched off there."""
    from ._environment import read_config

    home = os.environ.get("BASTION_HOME") or "."
    for i, arg in enumerate(args):
        if arg == "--home" and i + 1 < len(args):
            home = args[i + 1]
        elif arg.startswith("--home="):
            home = arg.split("=", 1)[1]
    path = Path(home).expanduser() / "bastion.toml"
    table = read_config(path).get("plugins", {})
    if not isinstance(table, dict):
        raise ConfigError(f'{path}: [plugins] must be a table, e.g. disable = ["name"]')
    unknown = sorted(set(table) - {"disable"})
    if unknown:
        raise ConfigError(f"{path}: unknown key plugins.{unknown[0]}; the only key is disable")
    names = table.get("disable", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(
            f"{path}: plugins.disable must be a list of plugin names, e.g. "
            "[\"bastion-acme\"] ('bastion plugins' lists the names)"
        )
    return names


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``bastion`` script."""
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        kernel = Kernel(disable=_configured_disable(args))
    except BastionError as exc:
        err_console.print(f"bastion: error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    cli = build_cli(kernel)
    kernel.startup()
    try:
        cli.main(args=args, prog_name="bastion")
    finally:
        kernel.shutdown()
