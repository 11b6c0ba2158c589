"""The broker conformance suite (``bastion.testing.BrokerConformance``) run against the
built-in brokers: the simulator, and the IBKR broker against the fake TWS
(tests/fake_tws.py: the real ib_async client, a real protocol peer on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from decimal import Decimal

import pytest

from bastion.interfaces import Broker
from bastion.models import Fill
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
    if order.order_type == "MKT":
        return [(order.remaining, price)]
    if order.order_type == "LMT" and order.lmt_price is not None:
        if (price <= order.lmt_price) if buy else (price >= order.lmt_price):
            return [(order.remaining, price)]
    if order.order_type == "STP" and order.aux_price is not None:
        if (price >= order.aux_price) if buy else (price <= order.aux_price):
            return [(order.remaining, price)]
    return []


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
        self.gateway.set_price(self.symbol, float(price))
        return ()

    def reject_next_order(self, broker: Broker) -> None:
        self.gateway.reject_next_order(201, "Order rejected - reason:not enough margin")
