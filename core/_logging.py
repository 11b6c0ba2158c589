"""structlog, rendering JSON lines into rotating, gzip-compressed files per environment.

Three streams, each its own file under the environment's ``logs/`` folder:

* ``system``   (``system.jsonl``): the kernel — loads, refusals, quarantines,
  sandbox layers, plugins, reports;
* ``strategy`` (``strategy.jsonl``): what strategies say — ``ctx.log`` records,
  ``print``, tracebacks, a worker's stray output;
* ``trades``   (``trades.jsonl``): orders and fills — rejections, margin calls,
  halts, and (in paper and live runs, or a backtest with ``--log-trades``) every
  order from submission to fill, each record carrying the order's
  ``client_order_id`` as the correlation id.

Files are rotated by size by the standard library's handler, the old ones
gzip-compressed (``trades.jsonl.1.gz`` ...), every file created owner-only.
Development logs at DEBUG, paper and live at INFO.
"""

from __future__ import annotations

import gzip
import io
import logging
import logging.handlers
import os
import shutil
from pathlib import Path
from typing import Any

import structlog

from ._secrets import redact

__all__ = ["STREAMS", "configure_logging", "get_logger", "stream_file"]

LOGGER_NAME = "bastion"
STREAMS = ("system", "strategy", "trades")
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """The standard rotating handler: every file it opens is created mode 0600, and a
    rotated file is gzip-compressed (``NAME.1.gz``)."""

    def __init__(self, filename: Path, **kwargs: Any) -> None:
        super().__init__(filename, **kwargs)
        self.namer = lambda name: name + ".gz"
        self.rotator = _compress

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def _compress(source: str, dest: str) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with (
        open(source, "rb") as plain,
        open(fd, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", filename="") as packed,
    ):
        shutil.copyfileobj(plain, packed)
    os.remove(source)


def stream_file(logs_dir: Path, stream: str) -> Path:
    """The JSON-lines file of log ``stream`` (one of :data:`STREAMS`) in ``logs_dir``."""
    return logs_dir / f"{stream}.jsonl"


def configure_logging(logs_dir: Path | None, *, debug: bool = True) -> Path | None:
    """Send Bastion's events to the three streams under ``logs_dir`` (or nowhere);
    returns the folder.  ``debug``: log at DEBUG (development), else INFO."""
    global _configured
    _configured = True
    level = logging.DEBUG if debug else logging.INFO
    for stream in STREAMS:
        std = logging.getLogger(f"{LOGGER_NAME}.{stream}")
        for old in list(std.handlers):
            std.removeHandler(old)
            old.close()
        std.propagate = False
        std.setLevel(level)
        handler: logging.Handler
        if logs_dir is not None:
            logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            handler = _PrivateRotatingFileHandler(
                stream_file(logs_dir, stream),
                maxBytes=MAX_BYTES,
                backupCount=BACKUPS,
                encoding="utf-8",
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = logging.NullHandler()
        std.addHandler(handler)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
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
    return logs_dir


_configured = False


def get_logger(stream: str = "system", **bind: Any) -> Any:
    """Bastion's logger for ``stream`` (``system``, ``strategy`` or ``trades``).  Until a
    workspace configures the files, events go nowhere (never to stdout, where they
    would corrupt ``--json`` output)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown log stream {stream!r}; streams are {', '.join(STREAMS)}")
    if not _configured:
        configure_logging(None)
    return structlog.get_logger(f"{LOGGER_NAME}.{stream}").bind(**bind)
