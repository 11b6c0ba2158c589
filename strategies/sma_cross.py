"""SMA crossover (example strategy, signed with the example key).

Hold ``quantity`` shares while the fast simple moving average of closes is
above the slow one; be flat while it is below.  The averages are kept as
running sums, so each bar costs the same whatever the window lengths.
Orders still working count (``ctx.pending``): a partly filled order is
not doubled on the next bar.
"""

from collections import deque

from bastion import strategy

PARAMS = {"fast": 10, "slow": 30, "quantity": 100}


class Averages:
    """Fast and slow simple moving averages of one symbol, updated in O(1)."""

    __slots__ = ("closes", "fast", "fast_sum", "slow", "slow_sum")

    def __init__(self, fast, slow):
        if not 0 < fast < slow:
            raise ValueError("PARAMS need 0 < fast < slow")
        self.fast, self.slow = fast, slow
        self.closes = deque(maxlen=slow + 1)
        self.fast_sum = self.slow_sum = 0.0

    def push(self, close):
        """Add a close; return True once both averages are defined."""
        closes = self.closes
        closes.append(close)
        self.fast_sum += close
        self.slow_sum += close
        n = len(closes)
        if n > self.fast:
            self.fast_sum -= closes[-self.fast - 1]
        if n > self.slow:
            self.slow_sum -= closes[0]
        return n >= self.slow


@strategy.hook
def on_start(ctx):
    ctx.state["averages"] = {}


@strategy.hook
def on_bar(ctx, bar):
    averages = ctx.state["averages"].get(bar.symbol)
    if averages is None:
        averages = Averages(ctx.params["fast"], ctx.params["slow"])
        ctx.state["averages"][bar.symbol] = averages
    if not averages.push(bar.close):
        return
    held = ctx.position(bar.symbol) + ctx.pending(bar.symbol)
    if averages.fast_sum * averages.slow > averages.slow_sum * averages.fast:
        if held <= 0:
            ctx.order(bar.symbol, ctx.params["quantity"] - held)
    elif held > 0:
        ctx.order(bar.symbol, -held)
