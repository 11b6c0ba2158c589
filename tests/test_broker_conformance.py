"""The broker conformance suite (``bastion.testing.BrokerConformance``) run against the
built-in brokers: the simulator, and the IBKR broker against the fake TWS
(tests/fake_tws.py: the real ib_async client, a real protocol peer on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import attrs
import pytest

from bastion.interfaces import Broker
from bastion.models import Bar, Fill, Order
from bastion.plugins import ibkr
from bastion.plugins.sim import SimBroker
from bastion.testing import BrokerConformance

from .fake_tws import FakeOrder, FakeTWS
from .test_ibkr import context


class TestSimBroker(BrokerConformance):
    @pytest.fixture
    def broker(self) -> Broker:
        return SimBroker.open("")


class TestSimBrokerWithoutCosts(BrokerConformance):
    """No slippage, no commission: fills at exactly the prices traded at."""

    price_tolerance = Decimal(0)

    @pytest.fixture
    def broker(self) -> Broker:
        return SimBroker.open("slippage=0,commission=none")


def matching(order: FakeOrder, price: float | None) -> list[tuple[float, float]]:
    """A fill policy for the fake gateway that matches like an exchange: a market order
    fills at the price, a limit order once the price is at its limit or better, a stop
    order once the price has reached its stop; each fills whole, at the price."""
    if price is None or not order.transmit or not order.remaining:
        return []
    buy = order.action.upper() == "BUY"
    limit, stop = order.lmt_price, order.aux_price
    at_limit = limit is not None and (price <= limit if buy else price >= limit)
    at_stop = stop is not None and (price >= stop if buy else price <= stop)
    fills = {"MKT": True, "LMT": at_limit, "STP": at_stop}.get(order.order_type, False)
    return [(order.remaining, price)] if fills else []


class TestIBKRBroker(BrokerConformance):
    """The IBKR broker, its market the fake gateway's price (``trade`` sets it)."""

    @pytest.fixture
    def broker(self) -> Iterator[Broker]:
        with FakeTWS(fill_policy=matching) as gateway:
            gateway.add_stock(self.symbol)
            gateway.set_price(self.symbol, float(self.price))
            self.gateway = gateway
            broker = ibkr.broker_factory("", context=context(gateway.port))
            try:
                yield broker
            finally:
                broker.close()

    def trade(self, broker: Broker, price: Decimal) -> Sequence[Fill]:
        # A cancel travels to the gateway on the client's socket, a price change does not:
        # let the gateway take every cancel sent first (as an exchange would have), so a
        # cancelled order cannot fill by racing its own cancel.
        assert isinstance(broker, ibkr.IBKRBroker)
        ib = broker.session.ib
        cancelling = broker.session.run(
            lambda: [
                t.order.orderId for t in ib.trades() if t.orderStatus.status == "PendingCancel"
            ]
        )
        assert self.gateway.wait_for(lambda: all(self._taken(i) for i in cancelling)), (
            f"the gateway never took the cancels of orders {cancelling}"
        )
        self.gateway.set_price(self.symbol, float(price))
        return ()

    def _taken(self, order_id: int) -> bool:
        """The gateway has the order and has ended it (the order itself may still be on
        its way: placeOrder and cancelOrder travel on the client's socket in turn)."""
        try:
            return bool(self.gateway.order(order_id).is_done)
        except KeyError:
            return False

    def reject_next_order(self, broker: Broker) -> None:
        self.gateway.reject_next_order(201, "Order rejected - reason:not enough margin")


# --------------------------------------------------------------------------- the suite bites


LONG_AGO = datetime(2000, 1, 3, tzinfo=UTC)


class FlawedSim(SimBroker):
    """The simulator with one flaw."""

    flaw = ""

    def cancel(self, client_order_id: str) -> Order | None:
        order = super().cancel(client_order_id)
        return None if self.flaw == "cancel returns nothing" else order

    def cancel_strategy(self, strategy: str) -> Sequence[Order]:
        if self.flaw == "cancels liquidations":
            return [o for o in self.cancel_all("x") if o.strategy == strategy]
        return super().cancel_strategy(strategy)

    def on_bar(self, bar: Bar) -> Sequence[Fill]:
        if self.flaw == "looks ahead":
            for orders in self._working.values():
                for working in orders:
                    working.order = attrs.evolve(working.order, created=LONG_AGO)
        fills = super().on_bar(bar)
        if self.flaw == "fills without the client order id":
            return [attrs.evolve(f, order_id="broker-1") for f in fills]
        if self.flaw == "fills through the limit":
            return [
                attrs.evolve(f, price=f.price + 10 if f.side == "buy" else f.price - 10)
                for f in fills
            ]
        return fills


@pytest.mark.parametrize(
    ("flaw", "failing", "args"),
    [
        ("cancel returns nothing", "test_a_working_order_can_be_cancelled", ()),
        ("cancels liquidations", "test_cancel_strategy_spares_others_and_liquidations", ()),
        ("looks ahead", "test_no_fill_at_a_price_before_the_order", ()),
        ("fills without the client order id", "test_a_market_order_fills_at_the_market", ("buy",)),
        (
            "fills through the limit",
            "test_a_limit_order_fills_only_at_its_limit_or_better",
            ("sell",),
        ),
    ],
)
def test_the_suite_fails_a_broker_that_breaks_the_contract(
    flaw: str, failing: str, args: tuple[str, ...]
) -> None:
    """Each flaw makes its test fail with an AssertionError; without it the test passes."""
    assert hasattr(BrokerConformance, failing)
    broken = FlawedSim.open("")
    broken.flaw = flaw
    with pytest.raises(AssertionError):
        getattr(TestSimBroker(), failing)(broken, *args)
    getattr(TestSimBroker(), failing)(FlawedSim.open(""), *args)
