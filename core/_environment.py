"""development / paper / live, detected and kept apart.

Detection order: explicit CLI flag, then ``BASTION_ENV``, then the
``environment`` key of ``bastion.toml`` in the workspace; default
``development``.  Nothing is ever inferred *into* live: ``live`` must come
from the explicit flag.
"""

from __future__ import annotations

import enum
import os
import tomllib
from pathlib import Path

from ._errors import ConfigError

__all__ = ["Environment", "allow_unsigned_requested", "detect_environment", "read_config"]

ENV_VAR = "BASTION_ENV"
ALLOW_UNSIGNED_VAR = "BASTION_ALLOW_UNSIGNED"


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PAPER = "paper"
    LIVE = "live"

    @classmethod
    def parse(cls, value: str, source: str) -> Environment:
        try:
            return cls(value.strip().lower())
        except ValueError:
            names = ", ".join(e.value for e in cls)
            raise ConfigError(
                f"{source}: unknown environment {value!r}; use one of {names}"
            ) from None


def read_config(path: Path) -> dict[str, object]:
    """Read ``bastion.toml``; a missing file is an empty config."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}; fix its permissions or remove it"
        ) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix or remove the file") from None


def detect_environment(flag: str | None, config_path: Path) -> Environment:
    if flag:
        return Environment.parse(flag, "--env")
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        env = Environment.parse(from_env, ENV_VAR)
        source = ENV_VAR
    else:
        value = read_config(config_path).get("environment")
        if value is None:
            return Environment.DEVELOPMENT
        if not isinstance(value, str):
            raise ConfigError(f"{config_path}: 'environment' must be a string")
        env = Environment.parse(value, str(config_path))
        source = str(config_path)
    if env is Environment.LIVE:
        raise ConfigError(
            f"{source} asks for the live environment; live is never inferred, "
            "pass --env live explicitly"
        )
    return env


def allow_unsigned_requested(flag: bool) -> bool:
    """True when the flag or ``BASTION_ALLOW_UNSIGNED=1`` asks for unsigned strategies."""
    value = os.environ.get(ALLOW_UNSIGNED_VAR, "").strip().lower()
    if value not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{ALLOW_UNSIGNED_VAR}={value!r} is not understood; use 1 or 0")
    return flag or value in ("1", "true", "yes")
