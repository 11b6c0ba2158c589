"""Built-in ``sim`` broker: a simulated account for backtests and paper runs.

* Market, limit and stop orders.  An order asked for on a bar fills no earlier
  than the first bar of its symbol that is *strictly later* (no look-ahead):
  market at that bar's open, limit at the open or better once the range
  reaches the limit, stop at the open or worse once the range reaches the stop.
* Slippage (basis points, against the order) on market and stop fills.
* Commission models: ``per-share:RATE[:MIN]`` (e.g. IBKR-like 0.005 per share,
  minimum 1.00, capped at 1% of notional), ``bps:RATE`` of notional, or ``none``.
* Partial fills: at most ``participation`` x the bar's volume fills per bar;
  the rest keeps working.  A bar with volume 0 fills nothing; a bar whose
  data reports no volume (``None``) is not limited.
* Leverage: long exposure up to ``long_leverage`` x equity (default 1.5),
  short exposure up to ``short_leverage`` x equity (default 2); an order that
  would exceed it is rejected with the numbers.
* Maintenance margin (default 25%): the simulator's :class:`~bastion.models.MarginPolicy`
  (``SimBroker.margin``).  When equity falls below that fraction of gross
  exposure the kernel cancels the strategy's working orders and liquidates
  every position at market on the next bar, and says so.

Every rejection has a reason; nothing is silently dropped.  Options come after
``sim:`` as ``key=value`` pairs, e.g.
``--broker sim:commission=bps:1,slippage=2,participation=0.05``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal, InvalidOperation

import attrs

from bastion import ConfigError, hookimpl
from bastion.interfaces import Offer
from bastion.models import (
    AccountSnapshot,
    Bar,
    Fill,
    MarginPolicy,
    Order,
    OrderType,
    Side,
)

ZERO = Decimal(0)
PRICE_STEP = Decimal("0.0001")
CommissionModel = Callable[[Decimal, Decimal], Decimal]  # (quantity, price) -> commission


def _per_share(rate: Decimal, minimum: Decimal) -> CommissionModel:
    def commission(quantity: Decimal, price: Decimal) -> Decimal:
        notional = quantity * price
        return min(max(quantity * rate, minimum), notional / 100).quantize(PRICE_STEP)

    return commission


def _bps(rate: Decimal) -> CommissionModel:
    def commission(quantity: Decimal, price: Decimal) -> Decimal:
        return (quantity * price * rate / 10_000).quantize(PRICE_STEP)

    return commission


def _rate(text: str, default: str) -> Decimal:
    value = Decimal(text or default)
    if not value.is_finite() or value < 0:
        raise InvalidOperation
    return value


def parse_commission(text: str) -> CommissionModel:
    kind, _, rest = text.partition(":")
    try:
        if kind == "none":
            return lambda quantity, price: ZERO
        if kind == "per-share":
            rate, _, minimum = rest.partition(":")
            return _per_share(_rate(rate, "0.005"), _rate(minimum, "1"))
        if kind == "bps":
            bps = _rate(rest, "1")
            if bps >= 10_000:
                raise ConfigError(
                    f"sim broker: commission {text!r} is 100% of the trade or more; "
                    "use bps:RATE below 10000"
                )
            return _bps(bps)
    except InvalidOperation:
        pass
    raise ConfigError(
        f"sim broker: commission {text!r} not understood; "
        "use none, per-share:RATE[:MIN] or bps:RATE with non-negative numbers"
    )


@attrs.frozen
class SimOptions:
    commission: str = "per-share:0.005:1"
    slippage_bps: float = 1.0
    participation: float = 0.1
    long_leverage: float = 1.5
    short_leverage: float = 2.0
    maintenance: float = 0.25

    @classmethod
    def parse(cls, spec: str) -> SimOptions:
        names = {
            "commission": "commission",
            "slippage": "slippage_bps",
            "participation": "participation",
            "long_leverage": "long_leverage",
            "short_leverage": "short_leverage",
            "maintenance": "maintenance",
        }
        values: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in names:
                raise ConfigError(
                    f"sim broker: option {part!r} not understood; options are "
                    f"{', '.join(names)} (e.g. sim:slippage=2,commission=bps:1)"
                )
            if key == "commission":
                parse_commission(value)
                values[names[key]] = value
                continue
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"sim broker: {key}={value!r} is not a number") from None
            if not math.isfinite(number) or number < 0:
                raise ConfigError(f"sim broker: {key} must be a non-negative number")
            if key == "participation" and not 0 < number <= 1:
                raise ConfigError("sim broker: participation must be in (0, 1]")
            if key == "slippage" and number >= 10_000:
                raise ConfigError("sim broker: slippage must be below 10000 bps (100%)")
            if key == "maintenance" and not number < 1:
                raise ConfigError("sim broker: maintenance must be below 1")
            if key in ("long_leverage", "short_leverage") and number <= 0:
                raise ConfigError(f"sim broker: {key} must be positive")
            values[names[key]] = number
        options = cls(**values)  # type: ignore[arg-type]
        if options.maintenance:
            # Fully used leverage L leaves equity / exposure = 1 / L: below the
            # maintenance level, every full-size position would be called at once.
            ceiling = 1 / options.maintenance
            for key in ("long_leverage", "short_leverage"):
                if getattr(options, key) > ceiling:
                    raise ConfigError(
                        f"sim broker: {key}={getattr(options, key):g} with "
                        f"maintenance={options.maintenance:g} puts a fully used account under "
                        f"maintenance at once; use {key} <= {ceiling:g} or a lower maintenance"
                    )
        return options


class _Working:
    """An order the simulator is working: what is left of it, and (stop orders) whether
    it has triggered, after which it fills like a market order."""

    __slots__ = ("order", "remaining", "triggered")

    def __init__(self, order: Order, remaining: Decimal) -> None:
        self.order = order
        self.remaining = remaining
        self.triggered = False


class SimBroker:
    """A simulated broker (see the module docstring for its rules)."""

    name = "sim"

    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.margin: MarginPolicy | None = (
            MarginPolicy(options.maintenance) if options.maintenance else None
        )
        self._commission = parse_commission(options.commission)
        self._slip = Decimal(repr(options.slippage_bps)) / 10_000
        self._participation = Decimal(repr(options.participation))
        self._long_leverage = Decimal(repr(options.long_leverage))
        self._short_leverage = Decimal(repr(options.short_leverage))
        self._working: dict[str, list[_Working]] = {}
        self._symbols: frozenset[str] = frozenset()
        self._last_price: dict[str, float] = {}

    @classmethod
    def open(cls, spec: str = "") -> SimBroker:
        return cls(SimOptions.parse(spec))

    # -- orders ------------------------------------------------------------------------

    def submit(self, order: Order, account: AccountSnapshot) -> str | None:
        if not order.liquidation:
            reason = self._check_buying_power(order, account)
            if reason:
                return reason
        orders = self._working.get(order.symbol)
        if orders is None:
            self._working[order.symbol] = [_Working(order, order.quantity)]
            self._symbols = frozenset(self._working)
        else:
            orders.append(_Working(order, order.quantity))
        return None

    def _committed(
        self, strategy: str
    ) -> tuple[dict[str, Decimal], dict[str, Decimal], dict[str, Decimal]]:
        """What the strategy's working orders still ask for, by symbol: quantities to buy,
        quantities to sell, and the highest limit or stop price among them.

        Margin-call liquidations count too: a strategy selling on top of its own
        liquidation could otherwise go short unchecked.
        """
        buys: dict[str, Decimal] = {}
        sells: dict[str, Decimal] = {}
        own_prices: dict[str, Decimal] = {}
        for symbol, orders in self._working.items():
            for working in orders:
                order = working.order
                if order.strategy == strategy:
                    side = buys if order.side is Side.BUY else sells
                    side[symbol] = side.get(symbol, ZERO) + working.remaining
                    price = order.intent.limit_price or order.intent.stop_price
                    if price is not None and price > own_prices.get(symbol, ZERO):
                        own_prices[symbol] = price
        return buys, sells, own_prices

    def _check_buying_power(self, order: Order, account: AccountSnapshot) -> str | None:
        """Would the positions fit the leverage limits, whichever of the strategy's working
        orders fill, at whatever price they fill?

        Each working order is assumed to fill if that adds exposure and not to
        fill if it would reduce it: a protective stop below a long position
        frees no buying power, because it may never trigger.  Quantities that
        may be bought or sold in a symbol are valued at the higher of its last
        price and every limit or stop price of the strategy's orders there
        (this one included): a sell limit or a buy stop far from the market
        fills at the market, and a buy limit above it may fill up to its limit.
        An order that cannot add exposure whatever fills (it and the working
        orders on its side together at most close the position) is always
        accepted.
        """
        intent = order.intent
        symbol = intent.symbol
        own = intent.limit_price or intent.stop_price
        mark = account.prices.get(symbol)
        if own is None and mark is None:
            return f"no price seen yet for {symbol}; cannot check buying power"
        if mark is None and (intent.type is OrderType.LIMIT) == (intent.side is Side.SELL):
            # A sell limit or a buy stop fills at the first open beyond its price,
            # however far beyond: with no price yet its exposure has no bound.
            kind = "sell limit" if intent.side is Side.SELL else "buy stop"
            return (
                f"no price seen yet for {symbol}; a {kind} may fill at any price beyond its own, "
                f"so its buying power cannot be checked until {symbol} has traded"
            )
        buys, sells, own_prices = self._committed(order.strategy)
        what = " (with working orders)" if buys or sells else ""
        held = account.positions.get(symbol, ZERO)
        if intent.side is Side.BUY:
            buys[symbol] = buys.get(symbol, ZERO) + intent.quantity
            if held < 0 and buys[symbol] <= -held:
                return None  # covers at most the short, whatever fills
        else:
            sells[symbol] = sells.get(symbol, ZERO) + intent.quantity
            if held > 0 and sells[symbol] <= held:
                return None  # sells at most the long, whatever fills
        if own is not None and own > own_prices.get(symbol, ZERO):
            own_prices[symbol] = own
        equity = account.equity
        if equity <= 0:
            return f"account equity is {equity:.2f}; only orders that reduce positions"
        long_value = short_value = ZERO
        for name in sorted({*account.positions, *buys, *sells}):
            quantity = account.positions.get(name, ZERO)
            last = account.prices.get(name)
            if name in buys or name in sells:
                candidates = [p for p in (last, own_prices.get(name)) if p is not None]
                if not candidates:  # a working market order the snapshot has no price for
                    return f"no price seen yet for {name}; cannot check buying power"
                price = max(candidates)
            else:
                price = last if last is not None else ZERO
            most_long = quantity + buys.get(name, ZERO)
            most_short = sells.get(name, ZERO) - quantity
            if most_long > 0:
                long_value += most_long * price
            if most_short > 0:
                short_value += most_short * price
        # A buy can only add long exposure and a sell only short exposure: an order is
        # held to its own side's limit (reversing out of an over-limit long is allowed).
        long_limit = equity * self._long_leverage
        short_limit = equity * self._short_leverage
        if intent.side is Side.BUY and long_value > long_limit:
            return (
                f"insufficient buying power: long exposure{what} {long_value:,.2f} would exceed "
                f"{self.options.long_leverage}x equity ({long_limit:,.2f})"
            )
        if intent.side is Side.SELL and short_value > short_limit:
            return (
                f"insufficient margin: short exposure{what} {short_value:,.2f} would exceed "
                f"{self.options.short_leverage}x equity ({short_limit:,.2f})"
            )
        return None

    def working_symbols(self) -> frozenset[str]:
        return self._symbols

    def cancel_all(self, reason: str) -> Sequence[Order]:
        cancelled = [w.order for orders in self._working.values() for w in orders]
        self._working.clear()
        self._symbols = frozenset()
        return cancelled

    def cancel(self, client_order_id: str) -> Order | None:
        for symbol, orders in self._working.items():
            for working in orders:
                if working.order.client_order_id == client_order_id:
                    orders.remove(working)
                    if not orders:
                        del self._working[symbol]
                        self._symbols = frozenset(self._working)
                    return working.order
        return None

    def cancel_strategy(self, strategy: str) -> Sequence[Order]:
        """Cancel the strategy's working orders, except margin-call liquidations, which
        keep working until the position is closed."""
        cancelled: list[Order] = []
        for symbol, orders in list(self._working.items()):
            keep = [w for w in orders if w.order.strategy != strategy or w.order.liquidation]
            cancelled += [
                w.order for w in orders if w.order.strategy == strategy and not w.order.liquidation
            ]
            if keep:
                self._working[symbol] = keep
            else:
                del self._working[symbol]
        self._symbols = frozenset(self._working)
        return cancelled

    # -- fills -------------------------------------------------------------------------

    def on_bar(self, bar: Bar) -> Sequence[Fill]:
        orders = self._working.get(bar.symbol)
        if not orders or bar.volume == 0:  # nothing traded: nothing fills or triggers
            return ()
        fills: list[Fill] = []
        ts = bar.ts
        # The bar's volume times the participation, computed when an order first
        # could fill; None: the data does not report volume (no participation limit).
        capacity: Decimal | None = None
        limited = bar.volume is not None
        keep: list[_Working] = []
        for working in orders:
            order = working.order
            if order.created >= ts:  # asked for on this bar or later: not yet
                keep.append(working)
                continue
            price = self._fill_price(working, bar)
            if price is None:
                keep.append(working)
                continue
            remaining = working.remaining
            quantity = remaining
            if limited:
                if capacity is None:
                    capacity = (Decimal(repr(bar.volume)) * self._participation).to_integral_value(
                        ROUND_FLOOR
                    )
                if capacity <= 0:
                    keep.append(working)
                    continue
                if capacity < remaining:
                    quantity = capacity.quantize(Decimal(1), rounding=ROUND_DOWN)
                    if quantity <= 0:
                        keep.append(working)
                        continue
                capacity -= quantity
            fills.append(
                Fill(
                    order_id=order.client_order_id,
                    symbol=bar.symbol,
                    side=order.intent.side,
                    quantity=quantity,
                    price=price,
                    commission=self._commission(quantity, price),
                    ts=ts,
                )
            )
            remaining -= quantity
            working.remaining = remaining
            if remaining > 0:
                keep.append(working)
        if keep:
            self._working[bar.symbol] = keep
        else:
            del self._working[bar.symbol]
            self._symbols = frozenset(self._working)
        return fills

    def _fill_price(self, working: _Working, bar: Bar) -> Decimal | None:
        """The fill price in exact Decimal, from the bar's own numbers.

        Open, limit and stop prices are used exactly.  Only slippage makes a
        price inexact; it is then rounded *against* the order (buys up, sells
        down) to 0.0001, or to five significant digits below a price of 1, so a
        buy never fills below the open and a sell never above it; and it never
        takes a price outside the bar's high and low.  Limit fills take no
        slippage and never breach the limit.
        """
        intent = working.order.intent
        buy = intent.side is Side.BUY
        if intent.type is OrderType.LIMIT:
            assert intent.limit_price is not None
            limit = intent.limit_price
            if buy and Decimal(repr(bar.low)) <= limit:
                return min(Decimal(repr(bar.open)), limit)
            if not buy and Decimal(repr(bar.high)) >= limit:
                return max(Decimal(repr(bar.open)), limit)
            return None
        open_ = Decimal(repr(bar.open))
        if intent.type is OrderType.STOP and not working.triggered:
            assert intent.stop_price is not None
            stop = intent.stop_price
            if buy and Decimal(repr(bar.high)) >= stop:
                working.triggered = True
                base = max(open_, stop)
            elif not buy and Decimal(repr(bar.low)) <= stop:
                working.triggered = True
                base = min(open_, stop)
            else:
                return None
        else:
            base = open_
        if not self._slip:
            return base  # the open, or a triggered stop's price: inside the bar's range
        price = self._slipped(base, buy)
        if buy:
            return min(price, max(base, Decimal(repr(bar.high))))
        return max(price, min(base, Decimal(repr(bar.low))))

    def _slipped(self, base: Decimal, buy: bool) -> Decimal:
        if not self._slip:
            return base
        # 0.0001 for ordinary prices; five significant digits for prices below 1 (a
        # fixed 0.0001 step made 1 bp on a 0.000001 price a 100-fold fill).
        step = PRICE_STEP if base >= 1 else Decimal(1).scaleb(base.adjusted() - 4)
        if buy:
            return (base * (1 + self._slip)).quantize(step, rounding=ROUND_CEILING)
        price = (base * (1 - self._slip)).quantize(step, rounding=ROUND_FLOOR)
        return price if price > 0 else base * (1 - self._slip)


@hookimpl
def register_brokers() -> list[Offer[SimBroker]]:
    return [
        Offer(
            "sim",
            lambda spec, context: SimBroker.open(spec),
            description="a simulated account (fills, slippage, commission, margin)",
            options="key=value pairs: commission, slippage, participation, leverage, margin",
        )
    ]
