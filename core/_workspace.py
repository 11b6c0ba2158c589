"""Where things live: a workspace (``--home``) and its per-environment data."""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from ._environment import Environment

__all__ = ["Workspace"]


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


@attrs.frozen
class Workspace:
    """A folder holding ``strategies/`` and ``signatures/``.

    Per-environment state (the highest whitelist version seen, logs, and later
    the database) lives under ``.bastion/<environment>/`` inside it, so
    development, paper and live never share a file.
    """

    home: Path = attrs.field(converter=_absolute)
    environment: Environment = Environment.DEVELOPMENT

    @property
    def strategies(self) -> Path:
        return self.home / "strategies"

    @property
    def signatures(self) -> Path:
        return self.home / "signatures"

    @property
    def data_dir(self) -> Path:
        override = os.environ.get("BASTION_DATA_DIR")
        base = Path(override).expanduser().resolve() if override else self.home / ".bastion"
        return base / self.environment.value

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def config_file(self) -> Path:
        return self.home / "bastion.toml"

    def ensure_data_dir(self) -> Path:
        """Create the data folder (and ``.bastion``) owner-only; existing folders are kept as is.

        The store, logs and reports below it name strategies, keys and
        trades: nobody else on the machine needs to read them.
        """
        data_dir = self.data_dir
        for folder in reversed([data_dir, *data_dir.parents]):
            if not folder.exists():
                folder.mkdir(mode=0o700, exist_ok=True)
        return data_dir
