"""Each environment's own settings, with where each came from (``bastion env``)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bastion import ConfigError, Environment
from bastion._environment import Detected
from bastion._settings import (
    DEFAULT_CLIENT_IDS,
    DEFAULT_PORTS,
    environment_settings,
    limits_from_config,
    masked,
)

from .conftest import CLI, WS


def settings(name: str, config: dict[str, Any] | None = None, **kw: Any) -> Any:
    return environment_settings(
        Detected(Environment(name), "--env"),
        Path("/data") / name,
        config or {},
        Path("bastion.toml"),
        **kw,
    )


@pytest.mark.parametrize("name", ["development", "paper", "live"])
def test_each_environment_has_its_own_defaults(name: str) -> None:
    """Client ids live 1-99, paper 100-199, development 200-299; ports TWS 7496 and
    Gateway 4001 for live, 7497 and 4002 otherwise; orders are executed; no limits."""
    found = settings(name)
    assert found.client_ids.value == DEFAULT_CLIENT_IDS[name]
    assert (found.tws_port.value, found.gateway_port.value) == DEFAULT_PORTS[name]
    assert found.auto_execute.value is True and found.auto_execute.source == "default"
    assert all(item.value is None for item in found.limits.values())
    assert {DEFAULT_CLIENT_IDS[n] for n in DEFAULT_CLIENT_IDS} == {(1, 99), (100, 199), (200, 299)}


def test_bastion_toml_overrides_per_environment_with_its_source() -> None:
    """[environments.ENV] and [limits.ENV] apply to that environment only, and say so."""
    config = {
        "environments": {
            "paper": {"client_ids": [150, 159], "tws_port": 7500, "auto_execute": False},
        },
        "limits": {"paper": {"max_orders_per_minute": 30, "max_daily_loss": 2500}},
    }
    paper = settings("paper", config)
    assert paper.client_ids.value == (150, 159) and paper.client_ids.source == "bastion.toml"
    assert paper.tws_port.value == 7500 and paper.gateway_port.source == "default"
    assert paper.auto_execute.value is False
    assert paper.limit_values.max_orders_per_minute == 30
    assert paper.limit_values.max_daily_loss == Decimal(2500)
    development = settings("development", config)
    assert development.client_ids.value == (200, 299)
    assert development.limit_values.max_daily_loss is None


def test_the_approved_live_account_comes_from_the_flag_the_variable_or_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--approve-live beats BASTION_APPROVE_LIVE beats [environments.live]; shown masked."""
    config = {"environments": {"live": {"approve_account": "U7654321"}}}
    assert settings("live", config).approved_account.value == "U7654321"
    monkeypatch.setenv("BASTION_APPROVE_LIVE", "U1111111")
    assert settings("live", config).approved_account.source == "BASTION_APPROVE_LIVE"
    flagged = settings("live", config, approve_live="U2222222")
    assert flagged.approved_account.value == "U2222222"
    assert flagged.as_dict()["approved_account"]["value"] == masked("U2222222") == "U****222"
    assert "U2222222" not in json.dumps(flagged.as_dict())


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"environments": "paper"}, "[environments] must be a table"),
        ({"environments": {"paper": {"client_ids": [5]}}}, "client_ids"),
        ({"environments": {"paper": {"client_ids": [9, 1]}}}, "client_ids"),
        ({"environments": {"paper": {"tws_port": 70000}}}, "tws_port"),
        ({"environments": {"paper": {"auto_execute": "no"}}}, "true or false"),
        ({"environments": {"paper": {"colour": 1}}}, "not a setting"),
        ({"environments": {"paper": {"approve_account": "U1"}}}, "not a setting"),
        ({"limits": {"paper": {"max_orders_per_minute": 1.5}}}, "whole number"),
        ({"limits": {"paper": {"max_open_positions": 0}}}, "whole number"),
        ({"limits": {"paper": {"max_daily_loss": "lots"}}}, "positive number"),
        ({"limits": {"paper": {"max_loss": 5}}}, "is not a limit"),
    ],
)
def test_bad_settings_are_one_line_errors(config: dict[str, Any], needle: str) -> None:
    """Each bad value names the key and what to use (approve_account only for live)."""
    with pytest.raises(ConfigError) as caught:
        settings("paper", config)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_limits_default_to_none_with_a_source() -> None:
    """A limit left out is None, 'default (no limit)'."""
    limits = limits_from_config({}, "paper", "x")
    assert {item.source for item in limits.values()} == {"default (no limit)"}


def test_bastion_env_shows_the_environment_and_each_source(cli: CLI, ws: WS) -> None:
    """``bastion env --json`` reports the detected environment and its source, the data
    directory, client ids, ports, limits; the approved account masked, never in full."""
    (ws.home / ".env").write_text("BASTION_ENV=paper\n")
    (ws.home / "bastion.toml").write_text(
        "[limits.paper]\nmax_open_positions = 4\n[environments.live]\napprove_account = "
        '"U9876543"\n'
    )
    r = cli("env", "--json", "--home", ws.home)
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["environment"] == {
        "value": "paper",
        "source": str(ws.home / ".env") + " (BASTION_ENV=)",
    }
    assert data["data_dir"]["value"] == str(ws.home / ".bastion" / "paper")
    assert data["client_ids"]["value"] == [100, 199]
    assert data["limits"]["max_open_positions"]["value"] == 4
    live = cli("env", "--json", "--env", "live", "--home", ws.home)
    assert json.loads(live.stdout)["approved_account"]["value"] == "U****543"
    assert "U9876543" not in live.stdout
    table = cli("env", "--home", ws.home).stdout
    assert "paper" in table and "BASTION_ENV=" in table and "100 to 199" in table
