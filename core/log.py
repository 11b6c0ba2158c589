"""Bastion's log streams, for plugins that log: ``system`` (the kernel and plugins),
``strategy`` (what strategies log) and ``trades`` (orders and fills).

Loggers are structlog loggers; every line goes through the secret redaction, so a
value looked up with the ``get_secret`` hook never reaches a log file.  Use
:func:`masked` to show an account id to a person.

Public API (see docs/reference/api.md).
"""

from __future__ import annotations

from ._logging import STREAMS, get_logger, stream_file
from ._settings import masked

__all__ = ["STREAMS", "get_logger", "masked", "stream_file"]
