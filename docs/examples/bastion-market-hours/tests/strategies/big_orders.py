"""A test strategy: on the first bar, one small and one big limit order."""

from bastion import strategy


@strategy.hook
def on_bar(ctx, bar):
    if ctx.state.get("ordered"):
        return
    ctx.state["ordered"] = True
    limit = round(bar.close * 1.01, 2)
    ctx.order(bar.symbol, 10, limit=limit, tag="small")
    ctx.order(bar.symbol, 1_000, limit=limit, tag="big")
