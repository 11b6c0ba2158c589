"""Secrets: where they come from, where they may live, and that they never reach a log
line, a report or the store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bastion import ConfigError, hookimpl
from bastion._logging import get_logger
from bastion._secrets import Secrets, variable_for

from .conftest import CLI, REPO


@pytest.fixture
def secrets_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "outside" / "secrets.toml"
    path.parent.mkdir()
    monkeypatch.setenv("BASTION_SECRETS_FILE", str(path))
    return path


def write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def test_variable_then_file_then_hook(
    tmp_path: Path, secrets_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret comes from BASTION_SECRET_<NAME>, then the secrets file (the environment's
    table, then the top level), then a get_secret hook; None when nobody has it."""
    asked: list[tuple[str, str]] = []

    def hook(name: str, environment: str) -> str | None:
        asked.append((name, environment))
        return "from-vault" if name == "vault.only" else None

    write_private(
        secrets_file, '"ibkr.account" = "DU0000001"\n[paper]\n"ibkr.account" = "DU0000002"\n'
    )
    secrets = Secrets("paper", tmp_path / "ws", hook)
    assert variable_for("ibkr.account") == "BASTION_SECRET_IBKR_ACCOUNT"
    assert secrets.get("ibkr.account") == "DU0000002"
    assert Secrets("development", tmp_path / "ws", hook).get("ibkr.account") == "DU0000001"
    monkeypatch.setenv("BASTION_SECRET_IBKR_ACCOUNT", "DU0000003")
    assert secrets.get("ibkr.account") == "DU0000003"
    assert secrets.get("vault.only") == "from-vault"
    assert secrets.get("nowhere") is None
    assert ("nowhere", "paper") in asked


def test_a_secrets_file_others_may_read_or_inside_the_workspace_is_refused(
    tmp_path: Path, secrets_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file must be owner-only (0600) and outside the workspace; otherwise a one-line
    error says what to do."""
    secrets_file.write_text('x = "1"\n')
    secrets_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Secrets("paper", tmp_path / "ws").get("x")
    workspace = tmp_path / "ws"
    inside = workspace / "secrets.toml"
    workspace.mkdir()
    write_private(inside, 'x = "1"\n')
    monkeypatch.setenv("BASTION_SECRETS_FILE", str(inside))
    with pytest.raises(ConfigError, match="inside the workspace"):
        Secrets("paper", workspace).get("x")


def test_a_secret_handed_out_is_redacted_from_every_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a secret has been handed out, any log line that would carry it (in a value,
    inside a longer text, or in a structure) says [secret] instead."""
    from bastion._logging import configure_logging

    monkeypatch.setenv("BASTION_SECRET_API_KEY", "sk-live-1234567890")
    assert Secrets("paper", tmp_path).get("api.key") == "sk-live-1234567890"
    logs = tmp_path / "logs"
    configure_logging(logs)
    get_logger().info("connecting", key="sk-live-1234567890", url="x?k=sk-live-1234567890&y=1",
                      extra={"k": "sk-live-1234567890"})  # fmt: skip
    text = "".join(p.read_text() for p in logs.iterdir())
    assert "sk-live-1234567890" not in text
    assert "[secret]" in text and "x?k=[secret]&y=1" in text


class _LeakyRisk:
    """A risk plugin that fetches a secret and (carelessly) logs it with every check."""

    def __init__(self, home: Path) -> None:
        self.home = home

    @hookimpl
    def check_order(self, intent: Any, strategy: Any, environment: str) -> str | None:
        from bastion import Kernel

        secret = Kernel(entry_points=False).secrets(environment, self.home).get("ibkr.account")
        get_logger().warning("risk_checked", account=secret, symbol=intent.symbol)
        return None


def test_a_planted_secret_is_in_no_log_no_report_and_not_in_the_store(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose plugin uses (and carelessly logs) a secret: the secret's value is in no
    file under the environment's data directory (logs, reports, the database)."""
    home = tmp_path / "examples"
    shutil.copytree(REPO / "strategies", home / "strategies")
    shutil.copytree(REPO / "signatures", home / "signatures")
    planted = "DU9182736"
    monkeypatch.setenv("BASTION_SECRET_IBKR_ACCOUNT", planted)
    cli.kernel.pm.register(_LeakyRisk(home), name="leaky-risk")
    r = cli("backtest", "--from", "2021-01-04", "--to", "2021-03-31", "--home", home)
    assert r.exit_code == 0, r.stderr
    assert planted not in r.stdout + r.stderr
    data = home / ".bastion"
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name == "bastion.db" for p in files)
    assert any(p.suffix == ".html" for p in files)
    for path in files:
        assert planted.encode() not in path.read_bytes(), path
    assert any(b"[secret]" in p.read_bytes() for p in files if "logs" in p.parts)
    assert os.environ["BASTION_SECRET_IBKR_ACCOUNT"] == planted
