"""SMA crossover (example strategy, signed with the example key).

Go long ``quantity`` shares when the fast simple moving average of closes
crosses above the slow one; go flat when it crosses back below.
"""

from collections import deque

from bastion import strategy

PARAMS = {"fast": 10, "slow": 30, "quantity": 100}


@strategy.hook
def on_start(ctx):
    ctx.state["closes"] = {}
    ctx.state["sums"] = {}


@strategy.hook
def on_bar(ctx, bar):
    fast, slow = ctx.params["fast"], ctx.params["slow"]
    closes = ctx.state["closes"].get(bar.symbol)
    if closes is None:
        closes = ctx.state["closes"][bar.symbol] = deque(maxlen=slow)
    closes.append(bar.close)
    if len(closes) < slow:
        return
    fast_avg = sum(closes[i] for i in range(slow - fast, slow)) / fast
    slow_avg = sum(closes) / slow
    held = ctx.position(bar.symbol)
    if fast_avg > slow_avg and held <= 0:
        ctx.order(bar.symbol, ctx.params["quantity"] - held)
    elif fast_avg < slow_avg and held > 0:
        ctx.order(bar.symbol, -held)
