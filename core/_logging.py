"""structlog, rendering JSON lines into a rotating file per environment."""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
from pathlib import Path
from typing import Any

import structlog

from ._secrets import redact

__all__ = ["configure_logging", "get_logger"]

LOGGER_NAME = "bastion"
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """The standard rotating handler, but every log file it opens is created mode 0600."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def configure_logging(logs_dir: Path | None) -> Path | None:
    """Send Bastion's events to ``logs_dir/bastion.jsonl`` (rotated), or nowhere."""
    global _configured
    _configured = True
    std = logging.getLogger(LOGGER_NAME)
    for handler in list(std.handlers):
        std.removeHandler(handler)
        handler.close()
    std.propagate = False
    std.setLevel(logging.INFO)
    target = None
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = logs_dir / "bastion.jsonl"
        handler = _PrivateRotatingFileHandler(
            target, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        std.addHandler(handler)
    else:
        std.addHandler(logging.NullHandler())
    structlog.configure(
        processors=[
            redact,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(sort_keys=True, default=str),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return target


_configured = False


def get_logger(**bind: Any) -> Any:
    """Bastion's logger.  Until a workspace configures a file, events go nowhere
    (never to stdout, where they would corrupt ``--json`` output)."""
    if not _configured:
        configure_logging(None)
    return structlog.get_logger(LOGGER_NAME).bind(**bind)
