"""Each environment's own settings, and where each one came from.

An environment (``development``, ``paper``, ``live``) has its own data
directory, broker client-id range and ports, order limits, and whether
intents are executed or only recorded as signals.  Settings come from the
command line, then variables, then ``bastion.toml``, then the defaults
below; :func:`environment_settings` returns every value with its source, so
``bastion env`` can say why it is what it is.

``bastion.toml``::

    [environments.paper]
    client_ids = [100, 199]      # the range a broker connection takes its id from
    host = "127.0.0.1"
    tws_port = 7497              # Trader Workstation
    gateway_port = 4002          # IB Gateway
    auto_execute = true          # false: signal-only, nothing reaches the broker
    storage = "postgresql://bastion@db.internal/trading"   # default: sqlite

    [environments.live]
    approve_account = "U1234567" # the account live may trade (or --approve-live)

    [limits.paper]
    max_order_quantity = 500
    max_order_notional = 50000
    max_orders_per_minute = 30
    max_open_positions = 10
    max_daily_loss = 2000
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import attrs

from ._environment import Detected
from ._errors import ConfigError

__all__ = [
    "DEFAULT_CLIENT_IDS",
    "DEFAULT_PORTS",
    "EnvironmentSettings",
    "Limits",
    "Sourced",
    "environment_settings",
    "limits_from_config",
    "masked",
    "without_password",
]

DEFAULT_CLIENT_IDS: Mapping[str, tuple[int, int]] = {
    "live": (1, 99),
    "paper": (100, 199),
    "development": (200, 299),
}
#: TWS and IB Gateway ports: live 7496 / 4001, paper 7497 / 4002; development talks to paper.
DEFAULT_PORTS: Mapping[str, tuple[int, int]] = {
    "live": (7496, 4001),
    "paper": (7497, 4002),
    "development": (7497, 4002),
}
APPROVE_VAR = "BASTION_APPROVE_LIVE"
ENVIRONMENT_KEYS = ("client_ids", "host", "tws_port", "gateway_port", "auto_execute", "storage")
STORAGE_VAR = "BASTION_STORAGE"
LIVE_KEYS = ("approve_account",)
LIMIT_KEYS = (
    "max_order_quantity",
    "max_order_notional",
    "max_orders_per_minute",
    "max_open_positions",
    "max_daily_loss",
)


@attrs.frozen
class Sourced:
    """A setting's value and where it came from (``--env``, ``BASTION_ENV``, a file, default)."""

    value: Any
    source: str


@attrs.frozen
class Limits:
    """An environment's own order limits, applied before risk plugins and the broker.

    ``max_order_quantity`` and ``max_order_notional`` cap each order;
    ``max_orders_per_minute`` caps how many orders all strategies place in any
    60 seconds (of the bars' time); ``max_open_positions`` caps how many symbols
    the account holds; ``max_daily_loss`` halts trading for the rest of the UTC
    day once the account's equity has fallen that much below the day's start.
    ``None``: no limit.
    """

    max_order_quantity: Decimal | None = None
    max_order_notional: Decimal | None = None
    max_orders_per_minute: int | None = None
    max_open_positions: int | None = None
    max_daily_loss: Decimal | None = None


@attrs.frozen
class EnvironmentSettings:
    """Everything one environment is set to, each with its source."""

    environment: Sourced
    data_dir: Sourced
    config_file: Path
    client_ids: Sourced  # (first, last), inclusive
    host: Sourced
    tws_port: Sourced
    gateway_port: Sourced
    auto_execute: Sourced
    approved_account: Sourced  # a secret: show it only through masked()
    limits: Mapping[str, Sourced]
    #: ``--storage`` when not given: a storage spec (``sqlite``, ``postgresql://…``)
    storage: Sourced = Sourced("sqlite", "default")

    @property
    def limit_values(self) -> Limits:
        return Limits(**{key: item.value for key, item in self.limits.items()})

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able description (the approved account masked)."""

        def one(item: Sourced) -> dict[str, Any]:
            value = item.value
            if isinstance(value, (Path, Decimal)):
                value = str(value)
            return {"value": value, "source": item.source}

        return {
            "environment": one(self.environment),
            "data_dir": one(self.data_dir),
            "logs_dir": {"value": str(self.data_dir.value / "logs"), "source": "data_dir"},
            "config_file": str(self.config_file),
            "client_ids": one(self.client_ids),
            "host": one(self.host),
            "tws_port": one(self.tws_port),
            "gateway_port": one(self.gateway_port),
            "auto_execute": one(self.auto_execute),
            "approved_account": {
                "value": masked(self.approved_account.value),
                "source": self.approved_account.source,
            },
            "limits": {key: one(item) for key, item in self.limits.items()},
            "storage": {
                "value": without_password(self.storage.value),
                "source": self.storage.source,
            },
        }


def masked(account: str | None) -> str | None:
    """An account id as ``U****567``: enough to recognise, not enough to use."""
    if not account:
        return None
    keep = 3 if len(account) > 5 else 1
    return account[0] + "*" * max(len(account) - 1 - keep, 1) + account[-keep:]


def without_password(spec: str) -> str:
    """A storage spec or URL with any password in it replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(spec)
    try:
        password = parts.password
    except ValueError:
        return spec
    if not password:
        return spec
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _table(config: Mapping[str, Any], key: str, name: str, config_name: str) -> dict[str, Any]:
    outer = config.get(key, {})
    if not isinstance(outer, dict):
        raise ConfigError(f"{config_name}: [{key}] must be a table of [{key}.ENV] tables")
    inner = outer.get(name, {})
    if not isinstance(inner, dict):
        raise ConfigError(f"{config_name}: {key}.{name} must be a table like [{key}.{name}]")
    return inner


def _positive_decimal(raw: object, where: str) -> Decimal:
    try:
        if isinstance(raw, bool):
            raise InvalidOperation
        value = Decimal(str(raw))
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value <= 0:
        raise ConfigError(f"{where} = {raw!r}; it must be a positive number (or left out)")
    return value


def _positive_int(raw: object, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        raise ConfigError(f"{where} = {raw!r}; it must be a positive whole number (or left out)")
    return raw


def limits_from_config(
    config: Mapping[str, Any], environment: str, config_name: str
) -> dict[str, Sourced]:
    """``[limits.ENV]`` with each limit's source."""
    table = _table(config, "limits", environment, config_name)
    unknown = sorted(set(table) - set(LIMIT_KEYS))
    if unknown:
        raise ConfigError(
            f"{config_name}: limits.{environment}.{unknown[0]} is not a limit; limits are "
            f"{', '.join(LIMIT_KEYS)}"
        )
    limits: dict[str, Sourced] = {}
    for key in LIMIT_KEYS:
        where = f"{config_name}: limits.{environment}.{key}"
        if key not in table:
            limits[key] = Sourced(None, "default (no limit)")
        elif key in ("max_orders_per_minute", "max_open_positions"):
            limits[key] = Sourced(_positive_int(table[key], where), config_name)
        else:
            limits[key] = Sourced(_positive_decimal(table[key], where), config_name)
    return limits


def environment_settings(
    detected: Detected,
    data_dir: Path,
    config: Mapping[str, Any],
    config_file: Path,
    *,
    approve_live: str | None = None,
) -> EnvironmentSettings:
    """Resolve one environment's settings (``--approve-live`` first, then
    ``BASTION_APPROVE_LIVE``, then ``[environments.live] approve_account``)."""
    name = detected.environment.value
    config_name = str(config_file)
    table = _table(config, "environments", name, config_name)
    allowed = ENVIRONMENT_KEYS + (LIVE_KEYS if name == "live" else ())
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{config_name}: environments.{name}.{unknown[0]} is not a setting here; "
            f"settings are {', '.join(allowed)}"
        )
    where = f"{config_name}: environments.{name}"

    def setting(key: str, default: Any, check: Any) -> Sourced:
        if key in table:
            return Sourced(check(table[key], f"{where}.{key}"), config_name)
        return Sourced(default, "default")

    def client_ids(raw: object, at: str) -> tuple[int, int]:
        if (
            not isinstance(raw, list)
            or len(raw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
            or not 0 <= raw[0] <= raw[1] <= 2**31 - 1
        ):
            raise ConfigError(f"{at} = {raw!r}; use [first, last], e.g. [100, 199]")
        return (raw[0], raw[1])

    def port(raw: object, at: str) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
            raise ConfigError(f"{at} = {raw!r}; a port is a whole number from 1 to 65535")
        return raw

    def host(raw: object, at: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(f"{at} must be a host name or address")
        return raw.strip()

    def spec(raw: object, at: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(f'{at} must be a storage spec, e.g. "sqlite" or a postgresql:// URL')
        return raw.strip()

    def flag(raw: object, at: str) -> bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{at} = {raw!r}; use true or false")
        return raw

    tws, gateway = DEFAULT_PORTS[name]
    if approve_live:
        approved = Sourced(approve_live.strip(), "--approve-live")
    elif os.environ.get(APPROVE_VAR):
        approved = Sourced(os.environ[APPROVE_VAR].strip(), APPROVE_VAR)
    elif "approve_account" in table:
        approved = setting("approve_account", None, host)
    else:
        approved = Sourced(None, "not set")
    override = os.environ.get("BASTION_DATA_DIR")
    return EnvironmentSettings(
        environment=Sourced(detected.environment, detected.source),
        data_dir=Sourced(data_dir, "BASTION_DATA_DIR" if override else "default (.bastion/ENV)"),
        config_file=config_file,
        client_ids=setting("client_ids", DEFAULT_CLIENT_IDS[name], client_ids),
        host=setting("host", "127.0.0.1", host),
        tws_port=setting("tws_port", tws, port),
        gateway_port=setting("gateway_port", gateway, port),
        auto_execute=setting("auto_execute", True, flag),
        approved_account=approved,
        limits=limits_from_config(config, name, config_name),
        storage=(
            Sourced(os.environ[STORAGE_VAR].strip(), STORAGE_VAR)
            if os.environ.get(STORAGE_VAR, "").strip()
            else setting("storage", "sqlite", spec)
        ),
    )
