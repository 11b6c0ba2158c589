"""FakeTWS against the real ib_async 2.1.0 client (no mocking of ib_async).

Each test runs a real ``IB`` client in ``asyncio.run`` against a ``FakeTWS`` serving on
127.0.0.1 from its own thread, and pins one piece of the protocol or one scripted fault.

ib_async 2.1.0 behaviours observed here that Bastion's IBKR adapter must handle:

* Start-up: ``connectAsync`` sends startApi, then reqPositions, reqOpenOrders,
  reqCompletedOrders, reqAccountUpdates (only when exactly one account is managed, or
  ``account=`` is given), reqAccountUpdatesMulti per account, and then reqExecutions, waiting
  for each end marker (a missing one only logs "... request timed out" after ``timeout``
  unless ``raiseSyncErrors``). The gateway's farm notices 2104/2106/2158 reach
  ``errorEvent`` during the connect, with reqId -1: they are informational, not failures.
* Request ids and order ids share one counter (``client.getReqId``), so the order ids an
  adapter sees are increasing but not contiguous.
* Fill sequence: execDetails -> orderStatus(Filled) -> commissionReport. ``filledEvent``
  fires before the commission is known; ``fill.commissionReport`` is filled in later (wait
  for ``commissionReportEvent``). A realized P&L of "unset" (an opening fill) arrives as 0.0.
* A 201 rejection arrives as ``errorEvent(orderId, 201, ...)``; ib_async itself marks the
  trade Cancelled (log entry with errorCode 201) before the Cancelled orderStatus arrives,
  so ``cancelledEvent`` fires exactly once.
* Cancel: ``cancelOrder`` sets PendingCancel locally at once; orderStatus Cancelled then
  error 202 "Order Canceled - reason:" follow (the fake's order; real TWS may send the 202
  first, which ib_async turns into Cancelled itself); 202 reaches ``errorEvent`` too.
* Error 326 (client id in use): the error is delivered to ``errorEvent`` and the gateway
  closes the socket, but ``connectAsync`` does not fail at once: it raises
  ``TimeoutError`` only when its ``timeout`` expires (with ``timeout=0/None`` it would hang
  forever), and ``client.apiError`` says "Peer closed connection. clientId N already in
  use?". Always pass a timeout and treat 326 as "try another client id".
* Connection drop: ``disconnectedEvent`` fires and ib_async *resets its whole session*:
  ``ib.trades()``, ``ib.fills()``, positions become empty; Trade objects the adapter still
  holds are orphaned (their events are set done, their status never changes again). After
  ``connectAsync`` again (same ``IB`` object works), working orders come back as new Trade
  objects (same orderId and permId when the client id is the same); completed orders come
  back from reqCompletedOrders with ``orderId == 0`` and ``clientId == 0`` (the wire
  message has neither), so match them by ``orderRef``/``permId``. Fills that happened while
  disconnected do *not* fire ``execDetailsEvent``/``fillEvent``; they only appear in
  ``ib.fills()`` and the reqExecutions result, but their commission reports *do* fire
  ``commissionReportEvent`` during the start-up sync (for trades known by permId).
* ``reqExecutionsAsync`` for executions this session already knows returns *new* Fill
  objects whose ``commissionReport`` stays empty (ib_async applies the report to the Fill
  it already holds, the one in ``ib.fills()``), and every such call fires
  ``commissionReportEvent`` again for each execution: take commissions from
  ``ib.fills()``/the event, deduplicated by execId, never from that result list.
* An order placed just before a drop (the gateway got it, the client heard nothing):
  the client's Trade stays PendingSubmit forever; the order is live at the gateway and is
  returned after reconnecting (reqOpenOrders, or reqCompletedOrders + reqExecutions if it
  filled), identified by the orderRef the adapter chose.
* Placing an order while disconnected raises ``ConnectionError("Not connected")`` from
  ``client.getReqId`` (before anything is sent).
* A duplicated execution (same execId twice): ib_async records the fill once
  (``trade.fills``, ``ib.fills()``, ``execDetailsEvent`` once) but ``commissionReportEvent``
  fires twice with the same execId: deduplicate commission handling by execId.
* Pacing 162 on historical data: ``reqHistoricalDataAsync`` returns an *empty* BarDataList
  (no exception, since ``RaiseRequestErrors`` is False) and the 162 goes to ``errorEvent``;
  an adapter must tell "no data" from "paced" by watching errorEvent for that reqId.
* An unknown contract: ``qualifyContractsAsync`` returns ``[None]`` (logs a warning) and
  error 200 reaches ``errorEvent``.
* After a kill -9 of a client process, the gateway sees the socket close and the client id
  is free again at once; the restarted client finds its working orders by orderRef.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from ib_async import IB, LimitOrder, MarketOrder, Stock, StopOrder, Trade
from ib_async.contract import Contract

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from fake_tws import NOT_IMPLEMENTED, Bar, FakeTWS, never_fill  # noqa: E402

HOST = "127.0.0.1"
ACCOUNT = "DU1234567"
AAPL_CON_ID = 265598
T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)

Errors = list[tuple[int, int, str]]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def tws() -> Iterator[FakeTWS]:
    fake = FakeTWS(account=ACCOUNT)
    fake.add_stock("AAPL", AAPL_CON_ID, long_name="APPLE INC")
    fake.add_stock("MSFT", 272093, long_name="MICROSOFT CORP")
    fake.set_price("AAPL", 187.5)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
    assert fake.protocol_errors == []


async def until(predicate: Callable[[], object], what: str = "", timeout: float = 3.0) -> None:
    """Wait (bounded) for something the client is expected to receive."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.002)


def record_errors(ib: IB) -> Errors:
    errors: Errors = []

    def on_error(req_id: int, code: int, message: str, contract: Contract | None) -> None:
        errors.append((req_id, code, message))

    ib.errorEvent += on_error
    return errors


def codes(errors: Errors) -> list[int]:
    return [code for _, code, _ in errors]


@contextlib.asynccontextmanager
async def session(port: int, client_id: int = 1, **kwargs: object) -> AsyncIterator[IB]:
    ib = IB()
    await ib.connectAsync(HOST, port, clientId=client_id, timeout=5, **kwargs)  # type: ignore[arg-type]
    try:
        yield ib
    finally:
        ib.disconnect()
        await asyncio.sleep(0)  # let the transport close its socket


async def aapl(ib: IB) -> Stock:
    [contract] = await ib.qualifyContractsAsync(Stock("AAPL", "SMART", "USD"))
    assert isinstance(contract, Stock)
    return contract


def commission_known(trade: Trade, n: int = 1) -> bool:
    return len(trade.fills) >= n and all(f.commissionReport.execId for f in trade.fills)


def bars_5min(n: int = 3) -> list[Bar]:
    return [
        Bar(T0 + timedelta(minutes=5 * i), 100 + i, 101 + i, 99 + i, 100.5 + i, 1000 * (i + 1))
        for i in range(n)
    ]


# --------------------------------------------------------------------------- connection


def test_connect_sends_accounts_and_next_valid_id_and_answers_startup(tws: FakeTWS) -> None:
    """connectAsync completes: managedAccounts and nextValidId arrive, every start-up
    request gets its end marker, the farm notices arrive as informational errors, and the
    server listens on 127.0.0.1 only."""

    async def scenario() -> None:
        ib = IB()
        errors = record_errors(ib)
        await ib.connectAsync(HOST, tws.port, clientId=3, timeout=5, raiseSyncErrors=True)
        try:
            assert ib.isConnected()
            assert ib.managedAccounts() == [ACCOUNT]
            assert ib.client.serverVersion() == 178
            assert ib.client.getReqId() >= 1
            assert tws.connected_client_ids == [3]
            assert sorted(codes(errors)) == [2104, 2106, 2158]
            assert all(req_id == -1 for req_id, _, _ in errors)
            assert await ib.reqCurrentTimeAsync()
        finally:
            ib.disconnect()
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert tws.requests[:7] == [
        "startApi",
        "reqPositions",
        "reqOpenOrders",
        "reqCompletedOrders",
        "reqAccountUpdates",
        "reqAccountUpdatesMulti",
        "reqExecutions",
    ]
    assert tws.wait_for(lambda: tws.connected_client_ids == [], 2)
    assert tws.host == "127.0.0.1"
    with socket.create_connection((HOST, tws.port), timeout=2):
        pass  # reachable on loopback


def test_several_accounts_skip_account_updates() -> None:
    """With two managed accounts ib_async skips reqAccountUpdates and asks
    reqAccountUpdatesMulti for each account; values arrive per account."""
    with FakeTWS(accounts=["DU111", "DU222"]) as fake:

        async def scenario() -> None:
            async with session(fake.port) as ib:
                assert ib.managedAccounts() == ["DU111", "DU222"]
                net = {v.account: v.value for v in ib.accountValues() if v.tag == "NetLiquidation"}
                assert net == {"DU111": "100000.00", "DU222": "100000.00"}

        asyncio.run(scenario())
        assert "reqAccountUpdates" not in fake.requests
        assert fake.requests.count("reqAccountUpdatesMulti") == 2


def test_positions_and_account_values(tws: FakeTWS) -> None:
    """Positions, portfolio and account values are synced at connect; later changes
    (a new position, a new account value) are streamed."""
    tws.set_position("AAPL", 10, 150.0)
    tws.set_account_value("NetLiquidation", 123456.78)

    async def scenario() -> None:
        async with session(tws.port) as ib:
            [pos] = ib.positions()
            assert (pos.account, pos.contract.symbol, pos.contract.conId) == (
                ACCOUNT,
                "AAPL",
                AAPL_CON_ID,
            )
            assert (pos.position, pos.avgCost) == (10.0, 150.0)
            [item] = ib.portfolio()
            assert (item.marketPrice, item.marketValue) == (187.5, 1875.0)
            assert item.unrealizedPNL == pytest.approx(375.0)
            values = {(v.tag, v.currency): v.value for v in ib.accountValues()}
            assert values[("NetLiquidation", "USD")] == "123456.78"
            assert values[("TotalCashValue", "USD")] == "100000.00"
            summary = {v.tag: v.value for v in await ib.accountSummaryAsync()}
            assert summary["NetLiquidation"] == "123456.78"

            tws.set_position("MSFT", -5, 400.0)
            tws.set_account_value("TotalCashValue", 99000.0)
            await until(lambda: len(ib.positions()) == 2, "streamed position")
            await until(
                lambda: any(
                    v.tag == "TotalCashValue" and v.value == "99000.00" for v in ib.accountValues()
                ),
                "streamed account value",
            )

    asyncio.run(scenario())


def test_contract_qualification(tws: FakeTWS) -> None:
    """A SMART/USD stock qualifies with the fake's conId; an unknown symbol gives None
    and error 200."""

    async def scenario() -> None:
        async with session(tws.port) as ib:
            errors = record_errors(ib)
            contract = await aapl(ib)
            assert contract.conId == AAPL_CON_ID
            assert (contract.exchange, contract.primaryExchange) == ("SMART", "NASDAQ")
            [details] = await ib.reqContractDetailsAsync(Stock("AAPL", "SMART", "USD"))
            assert details.longName == "APPLE INC"
            assert details.minTick == 0.01
            assert details.timeZoneId == "US/Eastern"
            assert await ib.qualifyContractsAsync(Stock("ZZZZ", "SMART", "USD")) == [None]
            assert 200 in codes(errors)
            [by_con_id] = await ib.qualifyContractsAsync(Contract(conId=272093))
            assert isinstance(by_con_id, Contract)
            assert (by_con_id.symbol, by_con_id.secType) == ("MSFT", "STK")

    asyncio.run(scenario())


# --------------------------------------------------------------------------- market data


def test_historical_bars(tws: FakeTWS) -> None:
    """reqHistoricalData returns the programmed bars: epoch dates with formatDate=2,
    zoned datetimes with formatDate=1, dates for daily bars; end/duration select bars."""
    tws.set_historical_bars("AAPL", bars_5min(3))
    tws.set_historical_bars(
        "MSFT", [Bar(T0 + timedelta(days=i), 400, 410, 390, 405, 5e6) for i in range(2)]
    )

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            bars = await ib.reqHistoricalDataAsync(
                contract, "", "1 D", "5 mins", "TRADES", True, formatDate=2
            )
            assert [b.date for b in bars] == [b.time for b in bars_5min(3)]
            assert (bars[0].open, bars[0].high, bars[0].low, bars[0].close) == (100, 101, 99, 100.5)
            assert bars[2].volume == 3000
            zoned = await ib.reqHistoricalDataAsync(
                contract, "", "1 D", "5 mins", "TRADES", True, formatDate=1
            )
            assert [b.date for b in zoned] == [b.time for b in bars_5min(3)]
            window = await ib.reqHistoricalDataAsync(
                contract, T0 + timedelta(minutes=10), "600 S", "5 mins", "TRADES", True, 2
            )
            assert [b.date for b in window] == [T0, T0 + timedelta(minutes=5)]
            [msft] = await ib.qualifyContractsAsync(Stock("MSFT", "SMART", "USD"))
            assert isinstance(msft, Contract)
            daily = await ib.reqHistoricalDataAsync(msft, "", "1 W", "1 day", "TRADES", True, 2)
            assert [b.date for b in daily] == [date(2024, 1, 2), date(2024, 1, 3)]

    asyncio.run(scenario())


def test_realtime_bars_pushed_by_the_test(tws: FakeTWS) -> None:
    """reqRealTimeBars subscribes; bars the test pushes reach the client's bar list and
    its updateEvent; cancelRealTimeBars ends the subscription at the server."""

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            bars = ib.reqRealTimeBars(contract, 5, "TRADES", False)
            updates: list[bool] = []
            bars.updateEvent += lambda _bars, has_new: updates.append(has_new)
            await until(lambda: tws.realtime_subscriptions("AAPL") == 1, "subscription")
            assert tws.push_bar("AAPL", T0, 10, 11, 9, 10.5, 1200, 10.2, 7) == 1
            assert tws.push_bar("AAPL", T0 + timedelta(seconds=5), 10.5, 12, 10, 11, 800) == 1
            await until(lambda: len(bars) == 2, "two bars")
            first, second = bars
            assert (first.time, first.open_, first.high, first.low, first.close) == (
                T0,
                10,
                11,
                9,
                10.5,
            )
            assert (first.volume, first.wap, first.count) == (1200, 10.2, 7)
            assert second.time == T0 + timedelta(seconds=5)
            assert updates == [True, True]
            ib.cancelRealTimeBars(bars)
            await until(lambda: tws.realtime_subscriptions("AAPL") == 0, "cancel")
            assert tws.push_bar("AAPL", T0 + timedelta(seconds=10), 1, 1, 1, 1) == 0

    asyncio.run(scenario())


def test_pacing_violation_on_historical_data(tws: FakeTWS) -> None:
    """pace_historical(1): the next request gets error 162 and ib_async returns an empty
    bar list (no exception); the request after it gets the data."""
    tws.set_historical_bars("AAPL", bars_5min(3))

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            errors = record_errors(ib)
            tws.pace_historical(1)
            paced = await ib.reqHistoricalDataAsync(
                contract, "", "1 D", "5 mins", "TRADES", True, 2
            )
            assert list(paced) == []
            assert [(req_id, code) for req_id, code, _ in errors] == [(paced.reqId, 162)]
            assert "pacing violation" in errors[0][2]
            again = await ib.reqHistoricalDataAsync(
                contract, "", "1 D", "5 mins", "TRADES", True, 2
            )
            assert len(again) == 3

    asyncio.run(scenario())


def test_market_data_ticks_keep_up_to_date_and_all_open_orders(tws: FakeTWS) -> None:
    """Smaller requests: reqMktData ticks follow set_price, keepUpToDate history gets
    push_historical_update, reqOpenOrders lists this client's orders and reqAllOpenOrders
    every client's."""
    tws.set_historical_bars("AAPL", bars_5min(2))

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            ticker = ib.reqMktData(contract)
            await until(lambda: ticker.last == 187.5, "last price")
            assert (ticker.bid, ticker.ask) == (187.49, 187.51)
            tws.set_price("AAPL", 190.0)
            await until(lambda: ticker.last == 190.0, "price update")
            ib.cancelMktData(contract)

            bars = await ib.reqHistoricalDataAsync(
                contract, "", "1 D", "5 mins", "TRADES", True, 2, keepUpToDate=True
            )
            assert len(bars) == 2
            new_bar = Bar(T0 + timedelta(minutes=10), 1, 2, 0.5, 1.5, 10, count=3)
            await until(lambda: tws.push_historical_update("AAPL", new_bar) == 1, "update")
            await until(lambda: len(bars) == 3, "appended bar")
            assert (bars[-1].date, bars[-1].close, bars[-1].barCount) == (new_bar.time, 1.5, 3)
            ib.cancelHistoricalData(bars)

            async with session(tws.port, client_id=2) as other:
                theirs = other.placeOrder(contract, LimitOrder("BUY", 1, 100.0, orderRef="c2"))
                await until(lambda: theirs.orderStatus.status == "Submitted", "other client")
                assert await ib.reqOpenOrdersAsync() == []  # this client's orders only
                [seen] = await ib.reqAllOpenOrdersAsync()
                assert (seen.order.orderRef, seen.order.clientId) == ("c2", 2)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- orders


def test_market_order_fills_with_commission_and_order_ref(tws: FakeTWS) -> None:
    """A market order fills at once at the price the test set: Filled, one fill with the
    orderRef and permId, a commission report, and the position updated."""

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            filled: list[Trade] = []
            trade = ib.placeOrder(contract, MarketOrder("BUY", 10, orderRef="bastion-mkt-1"))
            trade.filledEvent += filled.append
            await until(lambda: commission_known(trade), "fill with commission")
            assert filled == [trade]
            assert trade.orderStatus.status == "Filled"
            assert (trade.orderStatus.filled, trade.orderStatus.remaining) == (10, 0)
            assert trade.orderStatus.avgFillPrice == 187.5
            [fill] = trade.fills
            assert fill.execution.orderRef == "bastion-mkt-1"
            assert fill.execution.side == "BOT"
            assert (fill.execution.shares, fill.execution.price) == (10, 187.5)
            assert fill.execution.permId == trade.order.permId != 0
            assert fill.commissionReport.commission == 1.0
            assert fill.commissionReport.realizedPNL == 0.0  # opening fill: "unset"
            await until(lambda: ib.positions() and ib.positions()[0].position == 10, "position")

    asyncio.run(scenario())
    [order] = tws.orders
    assert (order.order_ref, order.order_type, order.action) == ("bastion-mkt-1", "MKT", "BUY")
    assert (order.total_quantity, order.account, order.status) == (10, ACCOUNT, "Filled")
    assert tws.positions == {"AAPL": (10.0, 187.5)}
    [ex] = tws.executions
    assert (ex.order_ref, ex.perm_id, ex.shares) == ("bastion-mkt-1", order.perm_id, 10)


def test_limit_order_partial_then_full_fill(tws: FakeTWS) -> None:
    """A limit order waits for fill(): a partial fill leaves it Submitted with
    filled/remaining, the rest fills it; avgFillPrice is the weighted average."""

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            trade = ib.placeOrder(contract, LimitOrder("BUY", 100, 180.0, orderRef="lmt-1"))
            await until(lambda: trade.orderStatus.status == "Submitted", "Submitted")
            assert trade.fills == []
            order = tws.order(trade.order.orderId)
            assert (order.order_type, order.lmt_price, order.order_ref) == ("LMT", 180.0, "lmt-1")

            tws.fill(trade.order.orderId, 40, 179.5)
            await until(lambda: commission_known(trade, 1), "partial fill")
            assert trade.orderStatus.status == "Submitted"
            assert (trade.orderStatus.filled, trade.orderStatus.remaining) == (40, 60)

            tws.fill(trade.order.orderId)  # the rest, at the limit price
            await until(lambda: commission_known(trade, 2), "second fill")
            assert trade.orderStatus.status == "Filled"
            assert trade.orderStatus.avgFillPrice == pytest.approx((40 * 179.5 + 60 * 180) / 100)
            assert [f.execution.shares for f in trade.fills] == [40, 60]
            assert [f.execution.cumQty for f in trade.fills] == [40, 100]
            assert len({f.execution.execId for f in trade.fills}) == 2

    asyncio.run(scenario())


def test_stop_order_and_modify_then_cancel(tws: FakeTWS) -> None:
    """A stop order rests PreSubmitted; modifying a limit order changes it at the
    gateway; cancelOrder ends in Cancelled plus error 202, and the order is then listed
    by reqCompletedOrders."""

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            errors = record_errors(ib)
            stop = ib.placeOrder(contract, StopOrder("SELL", 5, 170.0, orderRef="stp-1"))
            await until(lambda: stop.orderStatus.status == "PreSubmitted", "PreSubmitted")
            assert tws.order(stop.order.orderId).aux_price == 170.0

            trade = ib.placeOrder(contract, LimitOrder("BUY", 10, 150.0, orderRef="cxl-1"))
            await until(lambda: trade.orderStatus.status == "Submitted", "Submitted")
            trade.order.lmtPrice = 151.0
            ib.placeOrder(contract, trade.order)
            await until(lambda: tws.order(trade.order.orderId).lmt_price == 151.0, "modify")

            cancelled: list[Trade] = []
            trade.cancelledEvent += cancelled.append
            ib.cancelOrder(trade.order)
            assert trade.orderStatus.status == "PendingCancel"
            await until(lambda: trade.orderStatus.status == "Cancelled", "Cancelled")
            await until(lambda: 202 in codes(errors), "error 202")
            assert cancelled == [trade]
            assert tws.order(trade.order.orderId).status == "Cancelled"

            completed = await ib.reqCompletedOrdersAsync(False)
            [done] = [t for t in completed if t.order.orderRef == "cxl-1"]
            assert done.orderStatus.status == "Cancelled"
            assert done.order.lmtPrice == 151.0
            open_refs = [t.order.orderRef for t in await ib.reqOpenOrdersAsync()]
            assert open_refs == ["stp-1"]

    asyncio.run(scenario())


def test_rejection_201(tws: FakeTWS) -> None:
    """reject_next_order(): error 201 reaches errorEvent with the order id and the trade
    ends Cancelled (cancelledEvent once); the next order is accepted."""

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            errors = record_errors(ib)
            tws.reject_next_order(201, "Order rejected - reason:Insufficient margin")
            trade = ib.placeOrder(contract, MarketOrder("BUY", 1_000_000, orderRef="big"))
            cancelled: list[Trade] = []
            trade.cancelledEvent += cancelled.append
            await until(lambda: trade.orderStatus.permId != 0, "Cancelled orderStatus")
            assert trade.orderStatus.status == "Cancelled"
            assert errors == [
                (trade.order.orderId, 201, "Order rejected - reason:Insufficient margin")
            ]
            assert [e.errorCode for e in trade.log if e.errorCode] == [201]
            assert cancelled == [trade]
            assert trade.fills == []

            ok = ib.placeOrder(contract, MarketOrder("BUY", 1, orderRef="small"))
            await until(lambda: ok.isDone(), "next order")
            assert ok.orderStatus.status == "Filled"

    asyncio.run(scenario())
    assert [o.status for o in tws.orders] == ["Cancelled", "Filled"]


def test_informational_error_codes_reach_error_event(tws: FakeTWS) -> None:
    """send_error() delivers informational codes (2104/2106/2158), connectivity (1100)
    and real-time pacing (420) to errorEvent; the session stays up."""

    async def scenario() -> None:
        async with session(tws.port) as ib:
            errors = record_errors(ib)
            assert tws.send_error(-1, 2104) == 1
            tws.send_error(-1, 2106)
            tws.send_error(-1, 2158, "Sec-def data farm connection is OK:secdefil")
            tws.send_error(-1, 1100)
            tws.send_error(42, 420)
            await until(lambda: len(errors) == 5, "five errors")
            assert codes(errors) == [2104, 2106, 2158, 1100, 420]
            assert errors[2][2] == "Sec-def data farm connection is OK:secdefil"
            assert errors[4][0] == 42
            assert ib.isConnected()

    asyncio.run(scenario())


def test_what_if_order(tws: FakeTWS) -> None:
    """whatIfOrder is answered with margin figures and is not recorded as an order."""

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            state = await ib.whatIfOrderAsync(contract, LimitOrder("BUY", 10, 100.0))
            assert float(state.initMarginChange) == 250.0
            assert state.commission == 1.0

    asyncio.run(scenario())
    assert tws.orders == []


def test_duplicate_execution(tws: FakeTWS) -> None:
    """duplicate_next_execution(): the same execDetails + commissionReport arrive twice;
    ib_async keeps one fill and one execDetailsEvent, but commissionReportEvent fires
    twice with the same execId."""

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            reports: list[str] = []
            executions: list[str] = []
            ib.commissionReportEvent += lambda _t, _f, report: reports.append(report.execId)
            ib.execDetailsEvent += lambda _t, fill: executions.append(fill.execution.execId)
            tws.duplicate_next_execution()
            trade = ib.placeOrder(contract, MarketOrder("SELL", 3, orderRef="dup"))
            await until(lambda: len(reports) == 2, "second commission report")
            assert reports[0] == reports[1] == trade.fills[0].execution.execId
            assert len(executions) == 1
            assert len(trade.fills) == 1
            assert len(ib.fills()) == 1

    asyncio.run(scenario())
    assert len(tws.executions) == 1


# --------------------------------------------------------------------------- faults


def test_client_id_in_use_326_then_next_id_works(tws: FakeTWS) -> None:
    """A refused client id (scripted, or already connected) gets error 326 and the socket
    is closed; connectAsync only fails at its timeout. The next client id connects."""
    tws.reject_client_id(5)

    async def attempt(client_id: int) -> tuple[IB, Errors, list[str], BaseException | None]:
        ib = IB()
        errors = record_errors(ib)
        api_errors: list[str] = []
        ib.client.apiError += api_errors.append
        try:
            await ib.connectAsync(HOST, tws.port, clientId=client_id, timeout=1)
        except BaseException as e:
            return ib, errors, api_errors, e
        return ib, errors, api_errors, None

    async def scenario() -> None:
        async with session(tws.port, client_id=9):
            started = time.monotonic()
            results = await asyncio.gather(attempt(5), attempt(9))  # scripted; in use
            assert time.monotonic() - started >= 0.9  # failure comes from the timeout
            for ib, errors, api_errors, exc in results:
                assert isinstance(exc, TimeoutError)
                assert codes(errors) == [326]
                assert "already in use" in errors[0][2]
                assert any("already in use?" in m for m in api_errors)
                assert not ib.isConnected()
            async with session(tws.port, client_id=6) as ib:
                assert ib.isConnected()
        assert sorted(tws.refused_client_ids) == [5, 9]

    asyncio.run(scenario())


def test_drop_and_reconnect_keeps_orders_and_executions(tws: FakeTWS) -> None:
    """drop_connections() mid-session: ib_async resets its session and orphans the Trade
    objects. State lives on at the gateway: after reconnecting, the working order (filled
    partly while away) comes back via reqOpenOrders, the filled one via
    reqCompletedOrders (orderId 0), and both fills via reqExecutions, all matched by
    orderRef/permId."""

    async def scenario() -> None:
        ib = IB()
        await ib.connectAsync(HOST, tws.port, clientId=7, timeout=5)
        try:
            contract = await aapl(ib)
            mkt = ib.placeOrder(contract, MarketOrder("BUY", 10, orderRef="ref-mkt"))
            lmt = ib.placeOrder(contract, LimitOrder("SELL", 4, 200.0, orderRef="ref-lmt"))
            await until(lambda: commission_known(mkt), "market fill")
            await until(lambda: lmt.orderStatus.status == "Submitted", "limit working")
            mkt_perm, lmt_perm = mkt.order.permId, lmt.order.permId

            dropped: list[bool] = []
            ib.disconnectedEvent += lambda: dropped.append(True)
            assert tws.drop_connections() == 1
            await until(lambda: dropped and not ib.isConnected(), "disconnect")
            assert ib.trades() == [] and ib.fills() == [] and ib.positions() == []
            with pytest.raises(ConnectionError):
                ib.placeOrder(contract, MarketOrder("BUY", 1))

            tws.fill(lmt.order.orderId, 1, 200.0)  # fills while the client is away

            live_fills: list[str] = []
            reports: list[str] = []
            ib.execDetailsEvent += lambda _t, f: live_fills.append(f.execution.execId)
            ib.commissionReportEvent += lambda _t, _f, r: reports.append(r.execId)
            await ib.connectAsync(HOST, tws.port, clientId=7, timeout=5)

            assert lmt.orderStatus.filled == 0  # the orphan never hears of the fill
            [working] = ib.openTrades()
            assert working is not lmt
            assert (working.order.orderRef, working.order.orderId) == (
                "ref-lmt",
                lmt.order.orderId,
            )
            assert working.order.permId == lmt_perm
            assert working.orderStatus.status == "Submitted"
            assert (working.orderStatus.filled, working.orderStatus.remaining) == (1, 3)
            assert sorted(f.execution.orderRef for f in ib.fills()) == ["ref-lmt", "ref-mkt"]
            assert live_fills == []  # fills from the start-up sync are not "live"
            assert len(reports) == 2  # ... but their commission reports fire events

            [again] = await ib.reqOpenOrdersAsync()
            assert again.order.orderRef == "ref-lmt"
            completed = await ib.reqCompletedOrdersAsync(False)
            [done] = [t for t in completed if t.order.orderRef == "ref-mkt"]
            assert (done.order.orderId, done.order.clientId) == (0, 0)
            assert done.order.permId == mkt_perm
            assert done.orderStatus.status == "Filled"
            assert done.order.filledQuantity == 10
            fills = await ib.reqExecutionsAsync()
            by_ref = {f.execution.orderRef: f for f in fills}
            assert by_ref["ref-mkt"].execution.permId == mkt_perm
            assert by_ref["ref-lmt"].execution.shares == 1
            # Already-known executions come back as *new* Fill objects whose commission
            # report stays empty (ib_async applies the report to the Fill it already has,
            # in ib.fills()), and the reports fire commissionReportEvent once more.
            assert by_ref["ref-lmt"].commissionReport.execId == ""
            known = {f.execution.execId: f for f in ib.fills()}
            assert known[by_ref["ref-lmt"].execution.execId].commissionReport.commission == 1.0
            await until(lambda: len(reports) == 4, "repeated commission reports")
            [pos] = ib.positions()
            assert pos.position == 9

            tws.fill(working.order.orderId)  # the rest fills in the new session
            await until(lambda: working.orderStatus.status == "Filled", "fill after reconnect")
        finally:
            ib.disconnect()
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert tws.wait_for(lambda: not tws.connected_client_ids, 2)
    assert tws.requests.count("startApi") == 2


def test_order_placed_just_before_a_drop(tws: FakeTWS) -> None:
    """drop_after_next_order(): the gateway takes the order but the client hears nothing
    before the drop. The client's Trade stays PendingSubmit; after reconnecting, a resting
    order is in the open orders and a market order that filled is in the completed orders
    and executions, found by orderRef."""

    async def scenario() -> None:
        ib = IB()
        await ib.connectAsync(HOST, tws.port, clientId=4, timeout=5)
        try:
            contract = await aapl(ib)
            tws.drop_after_next_order()
            resting = ib.placeOrder(contract, LimitOrder("BUY", 5, 150.0, orderRef="lost-lmt"))
            await until(lambda: not ib.isConnected(), "drop")
            assert resting.orderStatus.status == "PendingSubmit"
            assert resting.statusEvent.done()  # events of orphaned trades are finished
            [at_gateway] = tws.orders_by_ref("lost-lmt")
            assert at_gateway.status == "Submitted"

            await ib.connectAsync(HOST, tws.port, clientId=4, timeout=5)
            [found] = [t for t in ib.openTrades() if t.order.orderRef == "lost-lmt"]
            assert found.order.orderId == resting.order.orderId
            assert found.orderStatus.status == "Submitted"

            tws.drop_after_next_order()
            market = ib.placeOrder(contract, MarketOrder("BUY", 2, orderRef="lost-mkt"))
            await until(lambda: not ib.isConnected(), "second drop")
            assert market.orderStatus.status == "PendingSubmit"
            await ib.connectAsync(HOST, tws.port, clientId=4, timeout=5)
            completed = await ib.reqCompletedOrdersAsync(False)
            assert [t.orderStatus.status for t in completed if t.order.orderRef == "lost-mkt"] == [
                "Filled"
            ]
            assert [f.execution.shares for f in ib.fills() if f.execution.orderRef == "lost-mkt"]
        finally:
            ib.disconnect()
            await asyncio.sleep(0)

    asyncio.run(scenario())


def test_never_fill_policy_and_set_price_refill() -> None:
    """Fill policy: with never_fill a market order rests; a market order placed before the
    symbol has a price fills as soon as the test sets one (default policy)."""
    with FakeTWS(fill_policy=never_fill) as fake:
        fake.add_stock("AAPL", AAPL_CON_ID)
        fake.set_price("AAPL", 10.0)

        async def scenario() -> None:
            async with session(fake.port) as ib:
                contract = await aapl(ib)
                resting = ib.placeOrder(contract, MarketOrder("BUY", 1, orderRef="rest"))
                await until(lambda: resting.orderStatus.status == "Submitted", "resting")
                fake.set_fill_policy(lambda o, p: [(o.remaining, 9.0)] if p else [])
                fake.set_price("AAPL", 10.5)
                await until(lambda: resting.isDone(), "filled by the new policy")
                assert resting.orderStatus.avgFillPrice == 9.0

        asyncio.run(scenario())

    with FakeTWS() as fake:
        fake.add_stock("AAPL", AAPL_CON_ID)

        async def unpriced() -> None:
            async with session(fake.port) as ib:
                contract = await aapl(ib)
                trade = ib.placeOrder(contract, MarketOrder("BUY", 1))
                await until(lambda: trade.orderStatus.status == "Submitted", "waiting")
                fake.set_price("AAPL", 12.25)
                await until(lambda: trade.isDone(), "filled once priced")
                assert trade.orderStatus.avgFillPrice == 12.25

        asyncio.run(unpriced())


@pytest.mark.parametrize("version", [157, 163, 166, 170, 176, 178])
def test_protocol_versions(version: int) -> None:
    """Every server version ib_async accepts: handshake, contract details, placeOrder
    parsed field for field, openOrder/orderStatus/execDetails/commission/completedOrder
    decoded, no protocol errors."""
    with FakeTWS(server_version=version) as fake:
        fake.add_stock("AAPL", AAPL_CON_ID)
        fake.set_price("AAPL", 50.0)

        async def scenario() -> None:
            async with session(fake.port) as ib:
                assert ib.client.serverVersion() == version
                errors = record_errors(ib)
                contract = await aapl(ib)
                assert contract.conId == AAPL_CON_ID
                trade = ib.placeOrder(contract, MarketOrder("BUY", 2, orderRef=f"v{version}"))
                await until(lambda: commission_known(trade), "fill")
                assert trade.fills[0].execution.orderRef == f"v{version}"
                lmt = ib.placeOrder(contract, LimitOrder("SELL", 2, 60.0, tif="GTC"))
                await until(lambda: lmt.orderStatus.status == "Submitted", "limit")
                ib.cancelOrder(lmt.order)
                await until(lambda: lmt.orderStatus.status == "Cancelled", "cancel")
                completed = await ib.reqCompletedOrdersAsync(False)
                assert {t.order.orderRef for t in completed} == {f"v{version}", ""}
                assert {t.order.tif for t in completed} == {"DAY", "GTC"}
                await until(lambda: 202 in codes(errors), "202")

        asyncio.run(scenario())
        assert fake.protocol_errors == []
        assert fake.orders[1].fields["tif"] == "GTC"


def test_unimplemented_request_is_answered_with_an_error(tws: FakeTWS) -> None:
    """A request the fake does not implement is recorded and answered with error
    NOT_IMPLEMENTED for its reqId, so the client does not wait for its timeout."""

    async def scenario() -> None:
        async with session(tws.port) as ib:
            contract = await aapl(ib)
            errors = record_errors(ib)
            assert await ib.reqHeadTimeStampAsync(contract, "TRADES", True, 2) == []
            assert codes(errors) == [NOT_IMPLEMENTED]

    asyncio.run(scenario())
    assert "reqHeadTimeStamp" in tws.requests


def test_kill_9_of_a_client_process_frees_its_client_id(tws: FakeTWS, tmp_path: Path) -> None:
    """A client process that placed an order is killed with SIGKILL: the gateway sees the
    socket close, the client id is free again, and a new process with the same id finds
    the working order (same orderId, orderRef) and can follow it to Filled."""
    child = textwrap.dedent(
        """
        import asyncio, sys
        from ib_async import IB, LimitOrder, Stock

        async def main():
            ib = IB()
            await ib.connectAsync("127.0.0.1", int(sys.argv[1]), clientId=5, timeout=5)
            [c] = await ib.qualifyContractsAsync(Stock("AAPL", "SMART", "USD"))
            trade = ib.placeOrder(c, LimitOrder("BUY", 3, 100.0, orderRef="child-1"))
            while trade.orderStatus.status != "Submitted":
                await asyncio.sleep(0.01)
            print(trade.order.orderId, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    stderr = (tmp_path / "child.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", child, str(tws.port)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:
        assert tws.wait_for(lambda: bool(tws.orders_by_ref("child-1")), 20), (
            tmp_path / "child.err"
        ).read_text()
        assert proc.stdout is not None
        order_id = int(proc.stdout.readline())
        assert tws.connected_client_ids == [5]
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        stderr.close()
    assert tws.wait_for(lambda: tws.connected_client_ids == [], 5)

    async def scenario() -> None:
        async with session(tws.port, client_id=5) as ib:
            [trade] = ib.openTrades()
            assert (trade.order.orderId, trade.order.orderRef) == (order_id, "child-1")
            tws.fill(order_id)
            await until(lambda: commission_known(trade), "fill after restart")
            assert trade.orderStatus.status == "Filled"

    asyncio.run(scenario())


def test_stop_closes_clients_and_leaks_nothing() -> None:
    """stop() disconnects clients, ends the server thread and closes the port; the
    server can be used as a context manager; nothing is left open (ResourceWarnings are
    errors in this suite)."""
    fake = FakeTWS()
    port = fake.start()
    assert fake.running

    async def scenario() -> None:
        ib = IB()
        dropped: list[bool] = []
        ib.disconnectedEvent += lambda: dropped.append(True)
        await ib.connectAsync(HOST, port, clientId=1, timeout=5)
        await asyncio.get_running_loop().run_in_executor(None, fake.stop)
        await until(lambda: dropped, "disconnect on stop")
        ib.disconnect()

    asyncio.run(scenario())
    assert not fake.running
    fake.stop()  # idempotent
    with pytest.raises(OSError), socket.create_connection((HOST, port), timeout=1):
        pass
    gc.collect()
    with FakeTWS() as again:
        assert again.running
    assert not again.running
    assert not [t for t in threading.enumerate() if t.name.startswith("FakeTWS")]
