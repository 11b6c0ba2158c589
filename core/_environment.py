"""development / paper / live, detected and kept apart.

Detection order: the ``--env`` flag, then the ``BASTION_ENV`` variable, then
``BASTION_ENV=`` in the workspace's ``.env`` file, then the ``environment``
key of its ``bastion.toml``; default ``development``.  Nothing is ever
inferred *into* live: ``live`` must come from the explicit flag.
"""

from __future__ import annotations

import enum
import os
import tomllib
from pathlib import Path

import attrs

from ._errors import ConfigError

__all__ = [
    "Detected",
    "Environment",
    "allow_unsigned_requested",
    "detect",
    "detect_environment",
    "read_config",
    "read_env_file",
]

ENV_VAR = "BASTION_ENV"
ENV_FILE = ".env"
ALLOW_UNSIGNED_VAR = "BASTION_ALLOW_UNSIGNED"


class Environment(enum.StrEnum):
    """Where a run happens: ``development``, ``paper`` or ``live``; each has its own data
    directory, broker ports, client ids and order limits."""

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


@attrs.frozen
class Detected:
    """The environment and where it came from (``--env``, ``BASTION_ENV``, a file, default)."""

    environment: Environment
    source: str


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file (python-dotenv's format); missing is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix its permissions or remove it") from None
    import io

    from dotenv import dotenv_values

    values = dotenv_values(stream=io.StringIO(text))
    return {key: value for key, value in values.items() if value is not None}


def detect(flag: str | None, home: Path) -> Detected:
    """The workspace's environment, in the detection order; live only from the flag."""
    if flag:
        return Detected(Environment.parse(flag, "--env"), "--env")
    candidates: list[tuple[str, str]] = []
    from_var = os.environ.get(ENV_VAR)
    if from_var:
        candidates.append((from_var, ENV_VAR))
    env_file = home / ENV_FILE
    from_file = read_env_file(env_file).get(ENV_VAR) if not candidates else None
    if from_file:
        candidates.append((from_file, f"{env_file} ({ENV_VAR}=)"))
    if not candidates:
        config_path = home / "bastion.toml"
        value = read_config(config_path).get("environment")
        if value is None:
            return Detected(Environment.DEVELOPMENT, "default")
        if not isinstance(value, str):
            raise ConfigError(f"{config_path}: 'environment' must be a string")
        candidates.append((value, str(config_path)))
    value, source = candidates[0]
    env = Environment.parse(value, source)
    if env is Environment.LIVE:
        raise ConfigError(
            f"{source} asks for the live environment; live is never inferred, "
            "pass --env live explicitly"
        )
    return Detected(env, source)


def detect_environment(flag: str | None, config_path: Path) -> Environment:
    """:func:`detect` for the workspace holding ``config_path``; only the environment."""
    return detect(flag, config_path.parent).environment


def allow_unsigned_requested(flag: bool) -> bool:
    """True when the flag or ``BASTION_ALLOW_UNSIGNED=1`` asks for unsigned strategies."""
    value = os.environ.get(ALLOW_UNSIGNED_VAR, "").strip().lower()
    if value not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{ALLOW_UNSIGNED_VAR}={value!r} is not understood; use 1 or 0")
    return flag or value in ("1", "true", "yes")
