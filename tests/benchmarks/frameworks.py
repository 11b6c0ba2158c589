"""The other contestants of ``bench_engine.py``: a bare loop, backtrader, vectorbt.

Each takes the same bars, exported once (:func:`export`: naive times and float
columns, made from the engine's own ``Bar`` objects before any timing), runs the
same SMA(FAST)/SMA(SLOW) crossover holding QUANTITY shares while fast > slow,
market orders filled at the next bar's open with no costs (as the engine's ``sim``
broker with ``commission=none,slippage=0``), and returns its seconds and its
executions as ``(bar index, signed quantity, price)`` for ``agreement.per_bar``.
A framework that is not installed returns a one-line note instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from bastion.models import Bar

FAST, SLOW, QUANTITY = 10, 30, 100
CASH = 10**7

Fills = list[tuple[int, float, float]]


class Exported(NamedTuple):
    """The bars as columns: what every framework is fed."""

    ts: list[datetime]  # naive UTC
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    volume: list[float]


def export(bars: Sequence[Bar]) -> Exported:
    return Exported(
        [b.ts.replace(tzinfo=None) for b in bars],
        [b.open for b in bars],
        [b.high for b in bars],
        [b.low for b in bars],
        [b.close for b in bars],
        [float(b.volume) for b in bars],
    )


def bare_loop(bars: Sequence[Bar]) -> tuple[float, int]:
    """The strategy's arithmetic and position switching, no kernel: seconds, switches."""
    started = time.perf_counter()
    closes: deque[float] = deque(maxlen=SLOW + 1)
    fast_sum = slow_sum = 0.0
    held = 0
    switches = 0
    for bar in bars:
        close = bar.close
        closes.append(close)
        fast_sum += close
        slow_sum += close
        n = len(closes)
        if n > FAST:
            fast_sum -= closes[-FAST - 1]
        if n > SLOW:
            slow_sum -= closes[0]
        if n < SLOW:
            continue
        if fast_sum * SLOW > slow_sum * FAST:
            if held <= 0:
                held = QUANTITY
                switches += 1
        elif held > 0:
            held = 0
            switches += 1
    return time.perf_counter() - started, switches


def backtrader_run(data: Exported) -> tuple[float, Fills, str] | str:
    """``bt.ind.SMA`` crossover with ``order_target_size``, default settings."""
    try:
        import backtrader as bt  # type: ignore[import-untyped]
    except ImportError:
        return "backtrader not installed: .venv/bin/pip install -e '.[bench]'"
    rows = list(zip(data.ts, data.open, data.high, data.low, data.close, data.volume, strict=True))

    class Feed(bt.feeds.DataBase):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.i = 0

        def _load(self) -> bool:
            if self.i >= len(rows):
                return False
            ts, o, h, lo, c, v = rows[self.i]
            self.i += 1
            line = self.lines
            line.datetime[0] = bt.date2num(ts)
            line.open[0], line.high[0], line.low[0], line.close[0] = o, h, lo, c
            line.volume[0], line.openinterest[0] = v, 0
            return True

    fills: Fills = []

    class Cross(bt.Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            self.fast = bt.ind.SMA(period=FAST)
            self.slow = bt.ind.SMA(period=SLOW)

        def notify_order(self, order: Any) -> None:
            if order.status == order.Completed:
                # Called on the bar whose open filled it, before that bar's next().
                fills.append((len(self.data) - 1, order.executed.size, order.executed.price))

        def next(self) -> None:
            if self.fast[0] > self.slow[0]:
                if self.position.size <= 0:
                    self.order_target_size(target=QUANTITY)
            elif self.position.size > 0:
                self.order_target_size(target=0)

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(Feed())
    cerebro.addstrategy(Cross)
    cerebro.broker.setcash(CASH)
    started = time.perf_counter()
    cerebro.run()
    return time.perf_counter() - started, fills, bt.__version__


def vectorbt_run(data: Exported, repeat: int) -> tuple[float, Fills, str] | str:
    """``vbt.MA`` fast > slow as the held state, ``Portfolio.from_signals`` with the
    signals moved one bar on and ``price=open`` (so a signal at bar i's close fills at
    bar i+1's open, as in the engine and backtrader).  Timed from the exported
    columns to the portfolio's order records, best of ``repeat``, after a warm-up
    on 1,000 bars that compiles numba's functions (not timed)."""
    try:
        import numpy as np
        import pandas as pd
        import vectorbt as vbt  # type: ignore[import-untyped]
    except ImportError:
        return "vectorbt not installed (optional, heavy): .venv/bin/pip install vectorbt"

    def run(n: int) -> Any:
        index = pd.DatetimeIndex(data.ts[:n])
        close = pd.Series(np.asarray(data.close[:n]), index=index)
        opens = pd.Series(np.asarray(data.open[:n]), index=index)
        fast = vbt.MA.run(close, FAST).ma
        slow = vbt.MA.run(close, SLOW).ma
        above = fast > slow
        below = fast <= slow  # NaN (warm-up) compares False: no signal either way
        entries = above.shift(1, fill_value=False)
        exits = below.shift(1, fill_value=False)
        portfolio = vbt.Portfolio.from_signals(
            close,
            entries,
            exits,
            price=opens,
            size=QUANTITY,
            size_type="amount",
            init_cash=CASH,
            fees=0.0,
            freq="1min",
        )
        return portfolio.orders.values

    run(1_000)
    best = float("inf")
    records: Any = None
    for _ in range(repeat):
        started = time.perf_counter()
        records = run(len(data.ts))
        best = min(best, time.perf_counter() - started)
    # side 0 is a buy, 1 a sell; size is unsigned
    fills: Fills = [
        (int(r["idx"]), float(r["size"]) * (1 if int(r["side"]) == 0 else -1), float(r["price"]))
        for r in records
    ]
    return best, fills, str(vbt.__version__)
