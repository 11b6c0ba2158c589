"""Performance figures from an equity curve and fills, for report and analysis plugins.

The same functions produce every figure ``bastion backtest`` and ``bastion report``
print; they are checked against independent reference implementations in the
test suite.

Public API (see docs/reference/api.md).
"""

from __future__ import annotations

from ._metrics import (
    compute_metrics,
    downsample,
    drawdown_series,
    period_returns,
    periods_per_year,
)
from ._trades import RoundTrip, round_trips

__all__ = [
    "RoundTrip",
    "compute_metrics",
    "downsample",
    "drawdown_series",
    "period_returns",
    "periods_per_year",
    "round_trips",
]
