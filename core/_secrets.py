"""Secrets: broker account ids, API keys.  Never from a strategy, never in a log
line, a report or the store.

A secret named ``ibkr.account`` is looked up, in order:

1. the variable ``BASTION_SECRET_IBKR_ACCOUNT`` (dots and dashes as underscores);
2. the secrets file, a TOML file outside the workspace that only its owner may
   read (``$BASTION_SECRETS_FILE``, else ``~/.config/bastion/secrets.toml``):
   a key in the environment's table (``[paper]``), then a top-level key;
3. the ``get_secret`` hook of a plugin (a vault, a cloud secret manager).

Every value handed out is remembered, and the log pipeline replaces it with
``[secret]`` wherever it would appear (:func:`redact`), so a mistake in a
plugin's log call does not write it to disk.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from ._errors import ConfigError

__all__ = ["SECRETS_FILE_VAR", "Secrets", "redact", "secrets_file"]

SECRETS_FILE_VAR = "BASTION_SECRETS_FILE"
MASK = "[secret]"

_handed_out: set[str] = set()


def variable_for(name: str) -> str:
    """The environment variable holding secret ``name``."""
    return "BASTION_SECRET_" + "".join(c if c.isalnum() else "_" for c in name).upper()


def secrets_file() -> Path:
    configured = os.environ.get(SECRETS_FILE_VAR)
    if configured:
        return Path(configured).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "bastion" / "secrets.toml"


class Secrets:
    """Secret lookup for one workspace and environment."""

    def __init__(
        self,
        environment: str,
        workspace: Path,
        hook: Callable[..., Any] | None = None,
    ) -> None:
        self.environment = environment
        self.workspace = workspace.resolve()
        self._hook = hook
        self._file: dict[str, Any] | None = None

    def _read_file(self) -> dict[str, Any]:
        if self._file is not None:
            return self._file
        path = secrets_file()
        try:
            st = path.stat()
        except FileNotFoundError:
            self._file = {}
            return self._file
        resolved = path.resolve()
        if resolved == self.workspace or self.workspace in resolved.parents:
            raise ConfigError(
                f"secrets file {path} is inside the workspace {self.workspace}; move it out "
                f"(e.g. ~/.config/bastion/secrets.toml) and point {SECRETS_FILE_VAR} at it"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ConfigError(
                f"secrets file {path} may be read by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}'"
            )
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                f"secrets file {path} cannot be read ({type(exc).__name__}); fix or remove it"
            ) from None
        self._file = data
        return data

    def get(self, name: str) -> str | None:
        """The secret ``name``, or ``None`` when no source has it."""
        value = os.environ.get(variable_for(name))
        if not value:
            data = self._read_file()
            table = data.get(self.environment)
            found = table.get(name) if isinstance(table, dict) else None
            if found is None:
                found = data.get(name)
            value = str(found) if isinstance(found, (str, int)) and found != "" else None
        if not value and self._hook is not None:
            offered = self._hook(name=name, environment=self.environment)
            value = offered if isinstance(offered, str) and offered else None
        if value:
            _handed_out.add(value)
        return value or None


def redact(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: every secret handed out is replaced by ``[secret]``."""
    if not _handed_out:
        return event
    for key, value in list(event.items()):
        if isinstance(value, str):
            for secret in _handed_out:
                if secret in value:
                    value = value.replace(secret, MASK)
            event[key] = value
        elif not isinstance(value, (int, float, bool, type(None))):
            text = str(value)
            if any(secret in text for secret in _handed_out):
                event[key] = MASK
    return event
