"""Built-in plugin: the signing tool — ``keys``, ``trust``, ``sign``, ``verify``, ``strategies``.

Registered through ``register_commands`` like any third-party command.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from bastion import Refusal, Status, Strategy, hookimpl, printable
from bastion.cli import App, admit_all, console, err_console, pass_app, workspace_options
from bastion.trust import (
    TrustStore,
    format_time,
    generate_key,
    load_signing_key,
    resolve_key_path,
    sign_strategies,
)

KEYS_DIR_VAR = "BASTION_KEYS_DIR"


def default_keys_dir() -> Path:
    configured = os.environ.get(KEYS_DIR_VAR)
    if configured:
        return Path(configured).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "bastion" / "keys"


def _emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# --------------------------------------------------------------------------- keys


@click.group("keys")
def keys_group() -> None:
    """Create signing keys (private keys are written mode 0600 and never printed)."""


@keys_group.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Where to write NAME.key and NAME.pub [default: ${KEYS_DIR_VAR} or "
    "~/.config/bastion/keys].",
)
@click.option("--passphrase", is_flag=True, help="Encrypt the private key; prompts twice.")
def keys_new(name: str, directory: Path | None, passphrase: bool) -> None:
    """Create an Ed25519 key pair NAME.key / NAME.pub."""
    secret = None
    if passphrase:
        secret = click.prompt("Passphrase", hide_input=True, confirmation_prompt=True).encode()
    key = generate_key(name, directory or default_keys_dir(), secret)
    console.print(f"private key: {key.path} (mode 0600; keep it secret)", markup=False)
    console.print(f"public key:  {key.path.with_suffix('.pub')}", markup=False)
    console.print(f"key id:      {key.id}", markup=False)
    console.print(
        f"Next: an operator trusts it with 'bastion trust add {key.path.with_suffix('.pub')}'",
        markup=False,
    )


# --------------------------------------------------------------------------- trust


@click.group("trust")
def trust_group() -> None:
    """Manage the public keys trusted in signatures/."""


@trust_group.command("add")
@workspace_options
@click.argument("pubkey", type=click.Path(path_type=Path))
@pass_app
def trust_add(app: App, pubkey: Path) -> None:
    """Trust the public key in PUBKEY (minisign format, from 'bastion keys new')."""
    key = TrustStore.load(app.workspace.signatures).add(pubkey)
    console.print(f"trusted key {key.id} ({key.name}) -> {key.path}", markup=False)


@trust_group.command("revoke")
@workspace_options
@click.argument("key_id")
@click.option("--reason", default="", help="Recorded with the revocation.")
@pass_app
def trust_revoke(app: App, key_id: str, reason: str) -> None:
    """Revoke KEYID: nothing it signed loads any more, and it can never be re-added."""
    TrustStore.load(app.workspace.signatures).revoke(key_id, reason, datetime.now(UTC))
    console.print(f"revoked key {key_id.upper()}", markup=False)


@trust_group.command("list")
@workspace_options
@click.option("--json", "as_json", is_flag=True)
@pass_app
def trust_list(app: App, as_json: bool) -> None:
    """List trusted and revoked keys."""
    store = TrustStore.load(app.workspace.signatures)
    rows = [
        {
            "key_id": k.id,
            "name": k.name,
            "status": "trusted",
            "example": k.example,
            "file": str(k.path),
        }
        for k in store.keys.values()
    ] + [
        {
            "key_id": kid,
            "name": info.get("name", ""),
            "status": "revoked",
            "example": False,
            "file": str(store.revoked_file),
            "reason": info.get("reason", ""),
        }
        for kid, info in store.revoked.items()
    ]
    # People look keys up by name; ids are random, so ordering by them reads as shuffled.
    rows.sort(key=lambda r: (r["status"] != "trusted", str(r["name"]).casefold(), r["key_id"]))
    if as_json:
        _emit_json(rows)
        return
    table = Table(title=f"Keys in {store.directory}")
    for column in ("key id", "name", "status", "note"):
        table.add_column(column)
    for row in rows:
        note = "EXAMPLE KEY: backtest/paper only" if row["example"] else row.get("reason", "")
        table.add_row(str(row["key_id"]), str(row["name"]), str(row["status"]), str(note))
    console.print(table)


# --------------------------------------------------------------------------- sign


@click.command("sign")
@workspace_options
@click.argument("files", nargs=-1, required=True)
@click.option(
    "--key",
    "key_spec",
    required=True,
    help="Private key: a path to NAME.key or a key name in the keys folder.",
)
@click.option(
    "--valid-days",
    type=click.IntRange(min=1, max=3650),
    default=90,
    show_default=True,
    help="How long the re-signed whitelist stays valid.",
)
@click.option(
    "--replace-whitelist",
    is_flag=True,
    help="Start a new whitelist if the current one does not verify.",
)
@pass_app
def sign_command(
    app: App, files: tuple[str, ...], key_spec: str, valid_days: int, replace_whitelist: bool
) -> None:
    """Sign strategy FILES, approve their SHA-256 in the whitelist and re-sign it."""
    key = load_signing_key(resolve_key_path(key_spec, default_keys_dir()))
    result = sign_strategies(
        app.workspace,
        key,
        files,
        valid_for=timedelta(days=valid_days),
        replace_whitelist=replace_whitelist,
    )
    for name, digest in result.signed:
        console.print(f"signed {name}  sha256:{digest}", markup=False)
    console.print(
        f"whitelist version {result.whitelist_version}, expires {format_time(result.expires)}, "
        f"signed by key {key.id} ({key.name})",
        markup=False,
    )


# --------------------------------------------------------------------------- verify / list


def _row(outcome: Strategy | Refusal) -> dict[str, Any]:
    if isinstance(outcome, Refusal):
        return {
            "file": outcome.name,
            "path": str(outcome.path),
            "status": str(outcome.status),
            "reason": outcome.reason,
        }
    info = outcome.info
    return {
        "file": info.name,
        "path": str(info.path),
        "status": str(info.status),
        "sha256": info.sha256,
        "signer": info.signer,
        "signer_name": info.signer_name,
        "signed_at": format_time(info.signed_at) if info.signed_at else None,
        "whitelist_version": info.whitelist_version,
        "hooks": outcome.implemented_hooks(),
    }


@click.command("verify")
@workspace_options
@click.argument("files", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def verify_command(app: App, files: tuple[str, ...], as_json: bool) -> None:
    """Verify the named strategy FILES (default: every file in strategies/).

    Exits 0 only when every one passes; prints one line per refused file.
    Unsigned files never pass, whatever --allow-unsigned says.
    """
    outcomes = admit_all(app, files, strict=True)
    rows = [_row(o) for o in outcomes]
    if as_json:
        _emit_json(rows)
    else:
        for outcome in outcomes:
            if isinstance(outcome, Refusal):
                err_console.print(outcome.line(), markup=False)
            else:
                console.print(
                    f"{outcome.info.path}: ok (sha256:{outcome.info.sha256[:12]}..., "
                    f"key {outcome.info.signer})",
                    markup=False,
                )
    if not outcomes:
        err_console.print(f"no strategy files in {app.workspace.strategies}", markup=False)
        raise SystemExit(1)
    refused = sum(isinstance(o, Refusal) for o in outcomes)
    if refused:
        if not as_json:
            err_console.print(f"{refused} of {len(outcomes)} strategy files refused", markup=False)
        raise SystemExit(1)


@click.command("strategies")
@workspace_options
@click.option("--json", "as_json", is_flag=True)
@pass_app
def strategies_command(app: App, as_json: bool) -> None:
    """List every file in strategies/ with its status (loaded-ok, unsigned, hash-mismatch, ...)."""
    outcomes = admit_all(app)
    rows = [_row(o) for o in outcomes]
    rows += [
        {"file": path.name, "path": str(path), "status": "ignored", "reason": why}
        for path, why in app.gate(strict=True).ignored()  # strict: warn about unsigned once
    ]
    if as_json:
        _emit_json(rows)
        return
    table = Table(title=f"Strategies in {app.workspace.strategies} ({app.environment})")
    for column in ("file", "status", "signer", "sha256 / reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        ok = row["status"] in (Status.LOADED_OK, Status.LOADED_UNSIGNED)
        style = "green" if row["status"] == Status.LOADED_OK else ("yellow" if ok else "red")
        if row["status"] == "ignored":
            style = "dim"
        detail = row["sha256"][:16] + "..." if ok else row["reason"]
        table.add_row(
            escape(printable(row["file"])),
            f"[{style}]{row['status']}[/]",
            row.get("signer") or "",
            escape(printable(detail)),
        )
    console.print(table)


@hookimpl
def register_commands(cli: Any) -> None:
    for command in (keys_group, trust_group, sign_command, verify_command, strategies_command):
        cli.add_command(command)
