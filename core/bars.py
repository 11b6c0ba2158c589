"""Bar intervals and rollups: finer OHLCV bars aggregated into coarser ones (1m -> 5m,
1h, 1d), as pure streaming functions, for source and storage plugins.

:func:`rollup` aggregates bars ordered by ``(ts, symbol)`` into bars of a coarser
interval per symbol (open = first open, high = highest high, low = lowest low, close =
last close, volume = sum), aligned on the clock of a time zone: intraday buckets never
cross local midnight or a change of UTC offset; daily bars group by trading date and
carry their last constituent's close time.  :func:`parse_interval` reads ``"5m"``,
``"1h"``, ``"1d"``; :func:`bucket_end` and :func:`trading_date` say which bucket a bar
closing at a given time falls in.  Bad input is a one-line :class:`bastion.ConfigError`.

Public API (see docs/reference/api.md).
"""

from __future__ import annotations

from ._bars import bucket_end, parse_interval, rollup, trading_date

__all__ = ["bucket_end", "parse_interval", "rollup", "trading_date"]
