"""Preparing and running backtests, paper and live runs: for command plugins that
start runs the way ``bastion backtest`` and ``bastion run`` do.

:func:`prepare_backtest` resolves a :class:`BacktestRequest` (source, broker,
storage, strategies, cash, dates) through the kernel's plugins and admits the
strategies through the one door; everything else about a run happens inside it.

Public API (see docs/reference/api.md).
"""

from __future__ import annotations

from ._backtest import BacktestRequest, parse_cash, parse_date, prepare_backtest
from ._reconcile import BLOCKS_FILE, Blocks, Reconciliation

__all__ = [
    "BLOCKS_FILE",
    "BacktestRequest",
    "Blocks",
    "Reconciliation",
    "parse_cash",
    "parse_date",
    "prepare_backtest",
]
