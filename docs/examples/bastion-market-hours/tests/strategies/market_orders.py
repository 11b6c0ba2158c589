"""A test strategy: on the first bar, one small and one big market order."""

from bastion import strategy


@strategy.hook
def on_bar(ctx, bar):
    if ctx.state.get("ordered"):
        return
    ctx.state["ordered"] = True
    ctx.order(bar.symbol, 10, tag="small")
    ctx.order(bar.symbol, 1_000, tag="big")
