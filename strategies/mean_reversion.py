"""Mean reversion on a rolling z-score (example strategy, signed with the example key).

Buy ``quantity`` shares when the close is more than ``entry`` standard
deviations below its ``window``-bar mean; sell when it is back at the mean.
Orders still working count (``ctx.pending``), so none is sent twice.
"""

import math
from collections import deque

from bastion import strategy

PARAMS = {"window": 20, "entry": 2.0, "quantity": 50}


@strategy.hook
def on_start(ctx):
    ctx.state["closes"] = {}


@strategy.hook
def on_bar(ctx, bar):
    window = ctx.params["window"]
    closes = ctx.state["closes"].get(bar.symbol)
    if closes is None:
        closes = ctx.state["closes"][bar.symbol] = deque(maxlen=window)
    closes.append(bar.close)
    if len(closes) < window:
        return
    mean = sum(closes) / window
    std = math.sqrt(sum((c - mean) ** 2 for c in closes) / (window - 1))
    if std == 0:
        return
    z = (bar.close - mean) / std
    held = ctx.position(bar.symbol) + ctx.pending(bar.symbol)
    if z < -ctx.params["entry"] and held == 0:
        ctx.order(bar.symbol, ctx.params["quantity"], tag="entry")
    elif z >= 0 and held > 0:
        ctx.order(bar.symbol, -held, tag="exit")


@strategy.hook
def on_fill(ctx, fill):
    ctx.log.info(
        "filled",
        symbol=fill.symbol,
        side=str(fill.side),
        quantity=str(fill.quantity),
        price=str(fill.price),
    )
