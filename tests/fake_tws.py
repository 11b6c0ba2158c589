"""A fake Interactive Brokers TWS / IB Gateway for tests: the real socket API, on 127.0.0.1.

``FakeTWS`` speaks the TWS API wire protocol closely enough that the real ``ib_async``
2.1 client (``IB().connectAsync``) connects, synchronises and trades against it with no
mocking. It was written field for field against ``ib_async`` 2.1.0's own code
(``client.py`` for what the client sends, ``decoder.py`` for what it expects back at a given
server version, ``ib.py`` for what ``connectAsync`` asks for and waits on).

Wire protocol (as implemented here):

* The client opens with ``b"API\\0"`` then one frame ``"v{min}..{max}[ options]"``; every
  frame is a 4-byte big-endian length followed by NUL-terminated text fields.
* The server answers with the frame ``"{serverVersion}\\0{connectionTime}\\0"``. The version
  is ``min(server_version, client max)``; ``server_version`` defaults to 178, ib_async 2.1's
  ``MaxClientVersion``, and may be set to anything in 157..178 (every message below is
  encoded for that version the way ib_async decodes it).
* The client sends ``startApi`` (71) with its client id; the server answers
  ``managedAccounts`` (15) and ``nextValidId`` (9) (the two ib_async waits for), then the
  usual data-farm notices 2104/2106/2158 (``farm_notices=True``). A client id that is in
  use, or was refused with :meth:`FakeTWS.reject_client_id`, gets error 326 and the socket
  is closed, as the real gateway does.
* ``connectAsync``'s start-up requests are all answered with their end markers:
  ``reqPositions`` -> position*/positionEnd, ``reqOpenOrders`` -> openOrder+orderStatus*
  /openOrderEnd, ``reqCompletedOrders`` -> completedOrder*/completedOrdersEnd,
  ``reqAccountUpdates`` -> accountValue*/portfolioValue*/accountTime/accountDownloadEnd,
  ``reqAccountUpdatesMulti`` -> accountUpdateMulti*/End, ``reqExecutions`` ->
  (execDetails+commissionReport)*/execDetailsEnd.

Also implemented: reqIds, reqManagedAccts, reqCurrentTime, reqContractDetails (stocks only,
one SMART/USD detail per symbol), reqHistoricalData (programmed bars, filtered to
``[end - duration, end)``; ``keepUpToDate`` answered with :meth:`push_historical_update`),
cancelHistoricalData, reqRealTimeBars / cancelRealTimeBars (fed by :meth:`push_bar`),
reqMktData / cancelMktData (last/bid/ask price ticks from :meth:`set_price`),
reqAccountSummary, reqPositionsMulti, placeOrder (new, modify, whatIf), cancelOrder,
reqGlobalCancel, reqAllOpenOrders. Anything else is recorded; a request that carries a
request id is answered with error :data:`NOT_IMPLEMENTED` so the client does not hang.

State survives connections (as on a real gateway): orders, executions, positions and
account values live in the ``FakeTWS`` object, so a restarted client can reconcile through
reqOpenOrders / reqCompletedOrders / reqExecutions.

Threading: the server runs its own asyncio loop in a daemon thread. Every public method
is thread-safe; methods that change state or send messages run on the server's loop and
have finished writing to the sockets when they return.

Run standalone (for a gateway in another process)::

    python tests/fake_tws.py [--port N] [--account DU1234567]

prints ``PORT <n>`` and serves until stdin closes or SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import math
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import ClassVar, TypeVar
from zoneinfo import ZoneInfo

__all__ = [
    "MAX_SERVER_VERSION",
    "MIN_SERVER_VERSION",
    "NOT_IMPLEMENTED",
    "Bar",
    "FakeExecution",
    "FakeOrder",
    "FakeTWS",
    "FillPolicy",
    "ReceivedRequest",
    "StockInfo",
    "market_orders_fill",
    "never_fill",
]

#: The server versions this fake can speak (ib_async 2.1: MinClientVersion..MaxClientVersion).
MIN_SERVER_VERSION = 157
MAX_SERVER_VERSION = 178

#: Error code this fake sends for a request it does not implement (not a real IB code).
NOT_IMPLEMENTED = 10999

#: IB's "unset" double, as TWS writes it on the wire.
UNSET_DOUBLE = sys.float_info.max
UNSET_DOUBLE_TEXT = "1.7976931348623157E308"

#: Order statuses after which an order is no longer working.
DONE_STATES = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})

#: Default messages for :meth:`FakeTWS.send_error`, worded as TWS words them.
DEFAULT_MESSAGES: dict[int, str] = {
    162: "Historical Market Data Service error message:Historical data request pacing violation",
    200: "No security definition has been found for the request",
    201: "Order rejected - reason:FakeTWS scripted rejection",
    202: "Order Canceled - reason:",
    326: "Unable to connect as the client id is already in use. Retry with a unique client id.",
    366: "No historical data query found for ticker id:",
    420: "Invalid Real-time Query:Historical data request pacing violation",
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and TWS has been restored- data lost.",
    1102: "Connectivity between IB and Trader Workstation has been restored - data maintained.",
    2103: "Market data farm connection is broken:usfarm",
    2104: "Market data farm connection is OK:usfarm",
    2105: "HMDS data farm connection is broken:ushmds",
    2106: "HMDS data farm connection is OK:ushmds",
    2107: "HMDS data farm connection is inactive but should be available upon demand.ushmds",
    2108: "Market data farm connection is inactive but should be available upon demand.usfarm",
    2158: "Sec-def data farm connection is OK:secdefnj",
}

#: Client -> server message ids, named as in the TWS API (EClient method names).
REQUEST_NAMES: dict[int, str] = {
    1: "reqMktData",
    2: "cancelMktData",
    3: "placeOrder",
    4: "cancelOrder",
    5: "reqOpenOrders",
    6: "reqAccountUpdates",
    7: "reqExecutions",
    8: "reqIds",
    9: "reqContractDetails",
    10: "reqMktDepth",
    11: "cancelMktDepth",
    12: "reqNewsBulletins",
    13: "cancelNewsBulletins",
    14: "setServerLogLevel",
    15: "reqAutoOpenOrders",
    16: "reqAllOpenOrders",
    17: "reqManagedAccts",
    18: "requestFA",
    19: "replaceFA",
    20: "reqHistoricalData",
    21: "exerciseOptions",
    22: "reqScannerSubscription",
    23: "cancelScannerSubscription",
    24: "reqScannerParameters",
    25: "cancelHistoricalData",
    49: "reqCurrentTime",
    50: "reqRealTimeBars",
    51: "cancelRealTimeBars",
    52: "reqFundamentalData",
    53: "cancelFundamentalData",
    54: "calculateImpliedVolatility",
    55: "calculateOptionPrice",
    56: "cancelCalculateImpliedVolatility",
    57: "cancelCalculateOptionPrice",
    58: "reqGlobalCancel",
    59: "reqMarketDataType",
    61: "reqPositions",
    62: "reqAccountSummary",
    63: "cancelAccountSummary",
    64: "cancelPositions",
    65: "verifyRequest",
    66: "verifyMessage",
    67: "queryDisplayGroups",
    68: "subscribeToGroupEvents",
    69: "updateDisplayGroup",
    70: "unsubscribeFromGroupEvents",
    71: "startApi",
    72: "verifyAndAuthRequest",
    73: "verifyAndAuthMessage",
    74: "reqPositionsMulti",
    75: "cancelPositionsMulti",
    76: "reqAccountUpdatesMulti",
    77: "cancelAccountUpdatesMulti",
    78: "reqSecDefOptParams",
    79: "reqSoftDollarTiers",
    80: "reqFamilyCodes",
    81: "reqMatchingSymbols",
    82: "reqMktDepthExchanges",
    83: "reqSmartComponents",
    84: "reqNewsArticle",
    85: "reqNewsProviders",
    86: "reqHistoricalNews",
    87: "reqHeadTimeStamp",
    88: "reqHistogramData",
    89: "cancelHistogramData",
    90: "cancelHeadTimeStamp",
    91: "reqMarketRule",
    92: "reqPnL",
    93: "cancelPnL",
    94: "reqPnLSingle",
    95: "cancelPnLSingle",
    96: "reqHistoricalTicks",
    97: "reqTickByTickData",
    98: "cancelTickByTickData",
    99: "reqCompletedOrders",
    100: "reqWshMetaData",
    101: "cancelWshMetaData",
    102: "reqWshEventData",
    103: "cancelWshEventData",
    104: "reqUserInfo",
}

# Unimplemented requests that carry a request id, and where it sits (after the message id).
_REQ_ID_INDEX: dict[int, int] = {
    10: 2, 52: 2, 54: 2, 55: 2, 67: 2, 68: 2,
    22: 1, 78: 1, 79: 1, 81: 1, 83: 1, 84: 1, 86: 1, 87: 1, 88: 1,
    92: 1, 94: 1, 96: 1, 97: 1, 100: 1, 102: 1, 104: 1,
}  # fmt: skip
# Unimplemented requests without a request id that still expect an answer.
_EXPECTS_REPLY = frozenset({18, 24, 80, 82, 85, 91})

# Fields after the condition type, per order-condition type (ib_async's dataclasses).
_CONDITION_FIELDS = {1: 6, 3: 3, 4: 3, 5: 4, 6: 5, 7: 5}

_CONTRACT_KEYS = (
    "conId",
    "symbol",
    "secType",
    "lastTradeDateOrContractMonth",
    "strike",
    "right",
    "multiplier",
    "exchange",
    "primaryExchange",
    "currency",
    "localSymbol",
    "tradingClass",
)

_DEFAULT_ACCOUNT_VALUES: tuple[tuple[str, str, str], ...] = (
    ("AccountType", "INDIVIDUAL", ""),
    ("NetLiquidation", "100000.00", "USD"),
    ("TotalCashValue", "100000.00", "USD"),
    ("SettledCash", "100000.00", "USD"),
    ("BuyingPower", "400000.00", "USD"),
    ("AvailableFunds", "100000.00", "USD"),
    ("ExcessLiquidity", "100000.00", "USD"),
    ("EquityWithLoanValue", "100000.00", "USD"),
    ("GrossPositionValue", "0.00", "USD"),
    ("InitMarginReq", "0.00", "USD"),
    ("MaintMarginReq", "0.00", "USD"),
    ("CashBalance", "100000.00", "BASE"),
)

_STOP_TYPES = frozenset({"STP", "STP LMT", "TRAIL", "TRAIL LIMIT"})

T = TypeVar("T")


# --------------------------------------------------------------------------- public records


@dataclass(frozen=True)
class Bar:
    """One bar for historical data or the real-time feed; ``time`` is the bar's start."""

    time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    wap: float | None = None
    count: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", _as_utc(self.time))


@dataclass
class StockInfo:
    """A stock the fake knows (what reqContractDetails answers with)."""

    symbol: str
    con_id: int
    primary_exchange: str = "NASDAQ"
    currency: str = "USD"
    long_name: str = ""
    trading_class: str = ""
    min_tick: float = 0.01


@dataclass
class FakeOrder:
    """An order as the fake gateway holds it (all clients' orders, across connections)."""

    order_id: int
    client_id: int
    perm_id: int
    account: str
    symbol: str
    con_id: int
    action: str
    total_quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    order_ref: str
    transmit: bool
    parent_id: int
    outside_rth: bool
    status: str
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    why_held: str = ""
    completed_time: str = ""
    completed_status: str = ""
    #: The contract exactly as the client sent it (ib_async field names).
    contract: dict[str, str] = field(default_factory=dict)
    #: Every placeOrder field as the client sent it (ib_async ``Order`` field names).
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def remaining(self) -> float:
        return max(self.total_quantity - self.filled, 0.0)

    @property
    def is_done(self) -> bool:
        return self.status in DONE_STATES


@dataclass(frozen=True)
class FakeExecution:
    """One fill as the fake gateway reports it in execDetails + commissionReport."""

    exec_id: str
    order_id: int
    client_id: int
    perm_id: int
    order_ref: str
    account: str
    symbol: str
    con_id: int
    side: str  # "BOT" or "SLD"
    shares: float
    price: float
    time: datetime
    cum_qty: float
    avg_price: float
    commission: float
    realized_pnl: float | None
    exchange: str


@dataclass(frozen=True)
class ReceivedRequest:
    """A message the fake received (after the handshake)."""

    client_id: int | None
    name: str
    fields: tuple[str, ...]


#: Decides fills when an order is placed or modified, and when its symbol's price is set:
#: ``policy(order, price_or_None) -> [(quantity, price), ...]`` (empty: no fill now).
FillPolicy = Callable[[FakeOrder, "float | None"], Sequence[tuple[float, float]]]


def market_orders_fill(order: FakeOrder, price: float | None) -> list[tuple[float, float]]:
    """The default policy: a transmitted MKT order fills completely at the symbol's price
    (as soon as the test has set one); every other order waits for :meth:`FakeTWS.fill`."""
    if order.order_type == "MKT" and order.transmit and price is not None and order.remaining:
        return [(order.remaining, price)]
    return []


def never_fill(order: FakeOrder, price: float | None) -> list[tuple[float, float]]:
    """A policy under which nothing fills until the test calls :meth:`FakeTWS.fill`."""
    return []


# --------------------------------------------------------------------------- helpers


class ProtocolError(Exception):
    """A message did not have the fields this server expects."""


def _as_utc(t: datetime | float | int) -> datetime:
    if isinstance(t, datetime):
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return datetime.fromtimestamp(float(t), UTC)


def _num(x: float | int | bool | None) -> str:
    """A number the way TWS writes it: integral values without a fraction."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, int):
        return str(x)
    if math.isinf(x) or x >= UNSET_DOUBLE:
        return UNSET_DOUBLE_TEXT
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def _field(v: object) -> str:
    if isinstance(v, str):
        return v
    if v is None or isinstance(v, (bool, int, float)):
        return _num(v)
    return str(v)


def _opt_float(s: str) -> float | None:
    if not s:
        return None
    v = float(s)
    return None if v >= UNSET_DOUBLE else v


def _parse_ib_time(s: str, default_tz: str) -> datetime | None:
    """Parse the time formats clients send (``yyyymmdd[-| ]hh:mm:ss[ tz]``, ``yyyymmdd``)."""
    s = s.strip()
    if not s:
        return None
    m = re.fullmatch(r"(\d{8})(?:[- ]+(\d{2}:\d{2}:\d{2})(?:\s+(\S+))?)?", s)
    if not m:
        raise ProtocolError(f"unparseable time {s!r}")
    day, clock, tz = m.groups()
    if clock is None:
        return datetime.strptime(day + "23:59:59", "%Y%m%d%H:%M:%S").replace(
            tzinfo=ZoneInfo(default_tz)
        )
    zone = ZoneInfo(tz) if tz else (UTC if "-" in s else ZoneInfo(default_tz))
    return datetime.strptime(day + clock, "%Y%m%d%H:%M:%S").replace(tzinfo=zone)


def _parse_duration(s: str) -> timedelta | None:
    m = re.fullmatch(r"\s*(\d+)\s*([SDWMY])\s*", s.upper())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    days = {"S": 0, "D": 1, "W": 7, "M": 30, "Y": 365}[unit]
    return timedelta(seconds=n) if unit == "S" else timedelta(days=n * days)


class _Reader:
    """Sequential access to a message's fields."""

    def __init__(self, fields: Sequence[str]) -> None:
        self._fields = fields
        self._i = 0

    def text(self) -> str:
        if self._i >= len(self._fields):
            raise ProtocolError(f"message too short ({len(self._fields)} fields)")
        v = self._fields[self._i]
        self._i += 1
        return v

    def integer(self, default: int = 0) -> int:
        v = self.text()
        return int(v) if v else default

    def flag(self) -> bool:
        return self.text() not in ("", "0")

    def skip(self, n: int = 1) -> None:
        for _ in range(n):
            self.text()

    def remaining(self) -> int:
        return len(self._fields) - self._i

    def contract(self) -> dict[str, str]:
        return {key: self.text() for key in _CONTRACT_KEYS}

    def named(self, into: dict[str, str], *names: str) -> None:
        for name in names:
            into[name] = self.text()


def _words(text: str) -> list[str]:
    return text.split()


def _parse_place_order(r: _Reader, version: int) -> tuple[int, dict[str, str], dict[str, str]]:
    """Read a placeOrder message exactly as ib_async 2.1's ``Client.placeOrder`` writes it."""
    o: dict[str, str] = {}
    order_id = r.integer()
    contract = r.contract()
    r.named(o, "secIdType", "secId")
    r.named(
        o,
        *_words(
            "action totalQuantity orderType lmtPrice auxPrice tif ocaGroup account openClose "
            "origin orderRef transmit parentId blockOrder sweepToFill displaySize triggerMethod "
            "outsideRth hidden"
        ),
    )
    if contract["secType"] == "BAG":
        r.skip(8 * r.integer())  # combo legs
        r.skip(r.integer())  # order combo leg prices
        r.skip(2 * r.integer())  # smart combo routing params
    r.skip()  # deprecated sharesAllocation
    r.named(o, *_words("discretionaryAmt goodAfterTime goodTillDate faGroup faMethod faPercentage"))
    if version < 177:
        r.named(o, "faProfile")
    r.named(
        o,
        *_words(
            "modelCode shortSaleSlot designatedLocation exemptCode ocaType rule80A settlingFirm "
            "allOrNone minQty percentOffset eTradeOnly firmQuoteOnly nbboPriceCap auctionStrategy "
            "startingPrice stockRefPrice delta stockRangeLower stockRangeUpper "
            "overridePercentageConstraints volatility volatilityType deltaNeutralOrderType "
            "deltaNeutralAuxPrice"
        ),
    )
    if o["deltaNeutralOrderType"]:
        r.named(
            o,
            *_words(
                "deltaNeutralConId deltaNeutralSettlingFirm deltaNeutralClearingAccount "
                "deltaNeutralClearingIntent deltaNeutralOpenClose deltaNeutralShortSale "
                "deltaNeutralShortSaleSlot deltaNeutralDesignatedLocation"
            ),
        )
    r.named(
        o,
        *_words(
            "continuousUpdate referencePriceType trailStopPrice trailingPercent "
            "scaleInitLevelSize scaleSubsLevelSize scalePriceIncrement"
        ),
    )
    increment = float(o["scalePriceIncrement"] or 0)
    if 0 < increment < UNSET_DOUBLE:
        r.named(
            o,
            *_words(
                "scalePriceAdjustValue scalePriceAdjustInterval scaleProfitOffset scaleAutoReset "
                "scaleInitPosition scaleInitFillQty scaleRandomPercent"
            ),
        )
    r.named(o, "scaleTable", "activeStartTime", "activeStopTime", "hedgeType")
    if o["hedgeType"]:
        r.named(o, "hedgeParam")
    r.named(o, "optOutSmartRouting", "clearingAccount", "clearingIntent", "notHeld")
    if r.flag():  # delta-neutral contract
        r.skip(3)
    r.named(o, "algoStrategy")
    if o["algoStrategy"]:
        r.skip(2 * r.integer())
    r.named(o, *_words("algoId whatIf orderMiscOptions solicited randomizeSize randomizePrice"))
    if o["orderType"] in {"PEG BENCH", "PEGBENCH"}:
        r.named(
            o,
            *_words(
                "referenceContractId isPeggedChangeAmountDecrease peggedChangeAmount "
                "referenceChangeAmount referenceExchangeId"
            ),
        )
    n_conditions = r.integer()
    o["conditionCount"] = str(n_conditions)
    for _ in range(n_conditions):
        cond_type = r.integer()
        if cond_type not in _CONDITION_FIELDS:
            raise ProtocolError(f"unknown order condition type {cond_type}")
        r.skip(_CONDITION_FIELDS[cond_type])
    if n_conditions:
        r.named(o, "conditionsIgnoreRth", "conditionsCancelOrder")
    r.named(
        o,
        *_words(
            "adjustedOrderType triggerPrice lmtPriceOffset adjustedStopPrice "
            "adjustedStopLimitPrice adjustedTrailingAmount adjustableTrailingUnit extOperator "
            "softDollarTierName softDollarTierValue cashQty mifid2DecisionMaker "
            "mifid2DecisionAlgo mifid2ExecutionTrader mifid2ExecutionAlgo "
            "dontUseAutoPriceForHedge isOmsContainer discretionaryUpToLimitPrice "
            "usePriceMgmtAlgo"
        ),
    )
    if version >= 158:
        r.named(o, "duration")
    if version >= 160:
        r.named(o, "postToAts")
    if version >= 162:
        r.named(o, "autoCancelParent")
    if version >= 166:
        r.named(o, "advancedErrorOverride")
    if version >= 169:
        r.named(o, "manualOrderTime")
    if version >= 170:
        if contract["exchange"] == "IBKRATS":
            r.named(o, "minTradeQty")
        if o["orderType"] in {"PEG BEST", "PEGBEST"}:
            r.named(o, "minCompeteSize", "competeAgainstBestOffset")
            if o["competeAgainstBestOffset"] == "Infinite":
                r.named(o, "midOffsetAtWhole", "midOffsetAtHalf")
        elif o["orderType"] in {"PEG MID", "PEGMID"}:
            r.named(o, "midOffsetAtWhole", "midOffsetAtHalf")
    if r.remaining():
        raise ProtocolError(f"placeOrder has {r.remaining()} unexpected trailing fields")
    return order_id, contract, o


# --------------------------------------------------------------------------- connection


class _Connection(asyncio.Protocol):
    """One client socket: handshake, framing, and the client's subscriptions."""

    def __init__(self, tws: FakeTWS) -> None:
        self.tws = tws
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.version = 0
        self.handshaken = False
        self.client_id: int | None = None
        self.api_started = False
        self.muted = False  # drop outgoing messages (an order "lost" before a drop)
        self.positions_sub = False
        self.account_sub: str | None = None
        self.account_multi_subs: dict[int, str] = {}
        self.account_summary_subs: dict[int, str] = {}
        self.rt_bar_subs: dict[int, int] = {}  # reqId -> conId
        self.hist_update_subs: dict[int, int] = {}  # reqId -> conId
        self.mkt_data_subs: dict[int, int] = {}  # reqId -> conId

    # asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # no Nagle delay between the small messages of one answer
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tws._connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.tws._connection_lost(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._drain()
        except Exception as e:  # a protocol bug must be visible, not kill the loop
            self.tws._protocol_error(f"client {self.client_id}: {e!r}")

    # framing ----------------------------------------------------------------------------

    def _drain(self) -> None:
        if not self.handshaken:
            if len(self.buffer) < 4:
                return
            if self.buffer[:4] != b"API\0":
                self.tws._protocol_error(f"bad handshake prefix {bytes(self.buffer[:4])!r}")
                self.close()
                return
            payload = self._frame(4)
            if payload is None:
                return
            self._handshake(payload.decode(errors="replace"))
        while self.transport is not None:
            payload = self._frame(0)
            if payload is None:
                return
            fields = payload.decode(errors="replace").split("\0")
            if fields and fields[-1] == "":
                fields.pop()
            if fields:
                self.tws._dispatch(self, fields)

    def _frame(self, offset: int) -> bytes | None:
        if len(self.buffer) < offset + 4:
            return None
        (n,) = struct.unpack(">I", self.buffer[offset : offset + 4])
        end = offset + 4 + n
        if len(self.buffer) < end:
            return None
        payload = bytes(self.buffer[offset + 4 : end])
        del self.buffer[:end]
        return payload

    def _handshake(self, text: str) -> None:
        m = re.match(r"v(\d+)(?:\.\.(\d+))?", text)
        if not m:
            self.tws._protocol_error(f"bad version string {text!r}")
            self.close()
            return
        low = int(m.group(1))
        high = int(m.group(2) or low)
        version = min(self.tws.server_version, high)
        if version < max(low, MIN_SERVER_VERSION):
            self.tws._protocol_error(f"no common version with client range {text!r}")
            self.close()
            return
        self.version = version
        self.handshaken = True
        now = datetime.now(UTC).strftime("%Y%m%d %H:%M:%S UTC")
        self._write(f"{version}\0{now}\0".encode())

    # output -----------------------------------------------------------------------------

    def send(self, *fields: object) -> None:
        if self.muted or self.transport is None:
            return
        self._write("".join(_field(f) + "\0" for f in fields).encode())

    def _write(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(struct.pack(">I", len(payload)) + payload)

    def close(self) -> None:
        """Close after flushing what was written (how TWS ends a refused connection)."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the socket at once, unsent data lost (a network failure)."""
        if self.transport is not None:
            self.transport.abort()

    def error(self, req_id: int, code: int, message: str, advanced: str = "") -> None:
        fields: list[object] = [4, 2, req_id, code, message]
        if self.version >= 166:
            fields.append(advanced)
        self.send(*fields)


# --------------------------------------------------------------------------- the server


class FakeTWS:
    """A fake TWS / IB Gateway on 127.0.0.1; see the module docstring.

    ``account`` is the managed account (``accounts`` lists several instead);
    ``server_version`` picks the protocol version (157..178, default 178);
    ``port`` 0 binds an ephemeral port; ``farm_notices`` sends 2104/2106/2158 on connect;
    ``time_zone`` is the gateway's zone for times it writes (bar dates, executions).
    """

    def __init__(
        self,
        account: str = "DU1234567",
        accounts: Sequence[str] | None = None,
        server_version: int | None = None,
        *,
        port: int = 0,
        farm_notices: bool = True,
        time_zone: str = "UTC",
        fill_policy: FillPolicy = market_orders_fill,
    ) -> None:
        version = MAX_SERVER_VERSION if server_version is None else int(server_version)
        if not MIN_SERVER_VERSION <= version <= MAX_SERVER_VERSION:
            raise ValueError(
                f"server_version must be in {MIN_SERVER_VERSION}..{MAX_SERVER_VERSION}"
            )
        self.server_version = version
        self.accounts: list[str] = list(accounts) if accounts else [account]
        self.account = self.accounts[0]
        self.farm_notices = farm_notices
        self.time_zone = time_zone
        ZoneInfo(time_zone)  # fail early on a bad zone
        self._requested_port = port

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stop_event: asyncio.Event | None = None
        self._port: int | None = None
        self._conns: list[_Connection] = []

        # state that outlives connections
        self._stocks: dict[str, StockInfo] = {}
        self._next_con_id = 100001
        self._prices: dict[str, float] = {}
        self._positions: dict[tuple[str, str], list[float]] = {}  # (acct, sym) -> [qty, avg]
        self._account_values: dict[tuple[str, str, str], str] = {}
        for acct in self.accounts:
            for tag, value, currency in _DEFAULT_ACCOUNT_VALUES:
                self._account_values[(acct, tag, currency)] = value
        self._orders: dict[tuple[int, int], FakeOrder] = {}
        self._executions: list[FakeExecution] = []
        self._historical: dict[str, list[Bar]] = {}
        self._next_order_id = 1
        self._next_perm_id = 1_000_000_001
        self._exec_seq = 0
        self.fill_policy: FillPolicy = fill_policy
        self.commission_per_share = 0.005
        self.min_commission = 1.0
        self.fill_exchange = "ISLAND"

        # scripted faults
        self._rejections: list[tuple[int, str, str]] = []
        self._rejected_client_ids: set[int] = set()
        self._duplicate_executions = 0
        self._pace_historical = 0
        self._drop_after_order = False

        # inspection
        self._log: list[ReceivedRequest] = []
        self._protocol_errors: list[str] = []
        self._refused: list[int] = []
        self._connect_count = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> int:
        """Bind 127.0.0.1 (ephemeral port unless ``port`` was given), serve, return the port."""
        if self._thread is not None:
            raise RuntimeError("FakeTWS already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._requested_port))
            sock.listen(16)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, args=(loop, sock, ready, failure), name=f"FakeTWS:{self._port}"
        )
        self._thread.daemon = True
        self._thread.start()
        if not ready.wait(5) or failure:
            self.stop()
            raise RuntimeError(f"FakeTWS failed to start: {failure!r}")
        return self._port

    def stop(self) -> None:
        """Close every client socket and the listener, stop the thread; idempotent."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None or loop is None:
            return
        if stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already gone
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError("FakeTWS thread did not stop")
        self._thread = None
        self._loop = None
        self._stop_event = None

    def __enter__(self) -> FakeTWS:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeTWS not started")
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ready: threading.Event,
        failure: list[BaseException],
    ) -> None:
        try:
            loop.run_until_complete(self._serve(sock, ready))
        except BaseException as e:
            failure.append(e)
            ready.set()
            sock.close()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            me = asyncio.current_task()

            def others() -> list[asyncio.Task[object]]:
                return [t for t in asyncio.all_tasks() if t is not me]

            # A connection accepted just before the listener closes gets its transport in
            # a task's first step; if that step runs after Server.close(), asyncio 3.11
            # fails in Server._attach and leaks the socket. So let in-flight accepts
            # finish, then close in the same step (a later accept callback is cancelled).
            for _ in range(1000):
                if not others():
                    break
                await asyncio.sleep(0)
            self._server.close()
            # Abort every client until none is left: a new transport reaches
            # connection_made an iteration later, and an aborted socket is only closed by
            # its connection_lost callback.
            for _ in range(1000):
                with self._lock:
                    conns = list(self._conns)
                for conn in conns:
                    conn.abort()
                if not conns and not others():
                    break
                await asyncio.sleep(0)
            await self._server.wait_closed()
            self._server = None

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` under the lock on the server loop (directly if already on it or if
        the server is not running) and return its result."""
        loop, thread = self._loop, self._thread
        if (
            loop is None
            or thread is None
            or not thread.is_alive()
            or threading.current_thread() is thread
        ):
            with self._lock:
                return fn()
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                with self._lock:
                    result.set_result(fn())
            except BaseException as e:
                result.set_exception(e)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed under us
            with self._lock:
                return fn()
        return result.result(timeout=10)

    # ------------------------------------------------------------------ connection events

    def _connection_made(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.append(conn)
            self._connect_count += 1
            self._changed.notify_all()

    def _connection_lost(self, conn: _Connection) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
            self._changed.notify_all()

    def _protocol_error(self, message: str) -> None:
        with self._lock:
            self._protocol_errors.append(message)
            self._changed.notify_all()

    def _live(self) -> list[_Connection]:
        return [
            c
            for c in self._conns
            if c.api_started and c.transport is not None and not c.transport.is_closing()
        ]

    def _owners(self, order: FakeOrder) -> list[_Connection]:
        return [c for c in self._live() if c.client_id == order.client_id]

    # ------------------------------------------------------------------ state set-up

    def add_stock(
        self,
        symbol: str,
        con_id: int | None = None,
        *,
        primary_exchange: str = "NASDAQ",
        currency: str = "USD",
        long_name: str = "",
        trading_class: str = "",
    ) -> int:
        """Make a stock known (idempotent); return its conId (assigned if not given)."""

        def do() -> int:
            info = self._stocks.get(symbol)
            if info is not None:
                return info.con_id
            cid = con_id if con_id is not None else self._next_con_id
            self._next_con_id = max(self._next_con_id, cid) + 1
            self._stocks[symbol] = StockInfo(
                symbol,
                cid,
                primary_exchange,
                currency,
                long_name or f"{symbol} INC",
                trading_class or symbol,
            )
            return cid

        return self._call(do)

    def con_id(self, symbol: str) -> int:
        with self._lock:
            return self._stocks[symbol].con_id

    def set_price(self, symbol: str, price: float) -> None:
        """Set the symbol's market price: MKT fills, portfolio values, market-data ticks.
        Working orders on the symbol are offered to the fill policy again."""

        def do() -> None:
            self.add_stock(symbol)
            self._prices[symbol] = float(price)
            info = self._stocks[symbol]
            for conn in self._live():
                for req_id, con_id in conn.mkt_data_subs.items():
                    if con_id == info.con_id:
                        self._send_ticks(conn, req_id, symbol)
            for order in list(self._orders.values()):
                if order.symbol == symbol and not order.is_done:
                    self._apply_policy(order)

        self._call(do)

    def set_position(
        self, symbol: str, quantity: float, avg_cost: float, account: str | None = None
    ) -> None:
        """Set a position (streamed to clients subscribed to positions/account updates)."""

        def do() -> None:
            self.add_stock(symbol)
            acct = account or self.account
            self._positions[(acct, symbol)] = [float(quantity), float(avg_cost)]
            self._stream_position(acct, symbol)

        self._call(do)

    def set_account_value(
        self, tag: str, value: str | float, currency: str = "USD", account: str | None = None
    ) -> None:
        """Set one account value (streamed to account-update subscribers)."""

        def do() -> None:
            acct = account or self.account
            text = value if isinstance(value, str) else f"{value:.2f}"
            self._account_values[(acct, tag, currency)] = text
            for conn in self._live():
                if conn.account_sub == acct:
                    conn.send(6, 2, tag, text, currency, acct)
                for req_id, a in conn.account_multi_subs.items():
                    if a in (acct, "", "All"):
                        conn.send(73, 1, req_id, acct, "", tag, text, currency)

        self._call(do)

    def set_historical_bars(self, symbol: str, bars: Iterable[Bar]) -> None:
        """Program the bars reqHistoricalData returns for the symbol (sorted by time)."""
        items = sorted(bars, key=lambda b: b.time)

        def do() -> None:
            self.add_stock(symbol)
            self._historical[symbol] = items

        self._call(do)

    def set_fill_policy(self, policy: FillPolicy) -> None:
        def do() -> None:
            self.fill_policy = policy

        self._call(do)

    def set_commission(self, per_share: float, minimum: float = 0.0) -> None:
        def do() -> None:
            self.commission_per_share = per_share
            self.min_commission = minimum

        self._call(do)

    # ------------------------------------------------------------------ live feeds

    def push_bar(
        self,
        symbol: str,
        time: datetime | float | int,
        open: float,
        high: float,
        low: float,
        close: float,
        volume: float = 0.0,
        wap: float | None = None,
        count: int = 0,
    ) -> int:
        """Send a 5-second bar to every reqRealTimeBars subscription on the symbol;
        return how many subscriptions it reached."""
        bar = Bar(_as_utc(time), open, high, low, close, volume, wap, count)

        def do() -> int:
            info = self._stocks.get(symbol)
            if info is None:
                return 0
            sent = 0
            for conn in self._live():
                for req_id, con_id in conn.rt_bar_subs.items():
                    if con_id == info.con_id:
                        conn.send(
                            50, 3, req_id, int(bar.time.timestamp()), bar.open, bar.high,
                            bar.low, bar.close, bar.volume,
                            bar.close if bar.wap is None else bar.wap, bar.count,
                        )  # fmt: skip
                        sent += 1
            return sent

        return self._call(do)

    def push_historical_update(self, symbol: str, bar: Bar) -> int:
        """Send ``historicalDataUpdate`` to every keepUpToDate historical subscription on
        the symbol (epoch-seconds date); return how many it reached."""

        def do() -> int:
            info = self._stocks.get(symbol)
            if info is None:
                return 0
            sent = 0
            for conn in self._live():
                for req_id, con_id in conn.hist_update_subs.items():
                    if con_id == info.con_id:
                        conn.send(
                            90, req_id, bar.count, int(bar.time.timestamp()), bar.open,
                            bar.close, bar.high, bar.low,
                            bar.close if bar.wap is None else bar.wap, bar.volume,
                        )  # fmt: skip
                        sent += 1
            return sent

        return self._call(do)

    def realtime_subscriptions(self, symbol: str) -> int:
        """How many reqRealTimeBars subscriptions on the symbol are live."""
        with self._lock:
            info = self._stocks.get(symbol)
            if info is None:
                return 0
            return sum(
                1 for c in self._live() for cid in c.rt_bar_subs.values() if cid == info.con_id
            )

    # ------------------------------------------------------------------ orders

    def fill(
        self,
        order_id: int,
        qty: float | None = None,
        price: float | None = None,
        *,
        client_id: int | None = None,
    ) -> FakeExecution:
        """Fill (part of) a working order: execDetails + orderStatus (+ openOrder when
        complete) + commissionReport to the owning client. ``qty`` defaults to what
        remains, ``price`` to the limit/stop price or the symbol's price."""

        def do() -> FakeExecution:
            order = self._find(order_id, client_id)
            if order.is_done:
                raise ValueError(f"order {order_id} is {order.status}")
            q = order.remaining if qty is None else float(qty)
            if not 0 < q <= order.remaining + 1e-9:
                raise ValueError(f"cannot fill {q} of order {order_id}: {order.remaining} left")
            p = price
            if p is None:
                p = order.lmt_price or order.aux_price or self._prices.get(order.symbol)
            if p is None:
                raise ValueError(f"no price to fill order {order_id} at")
            return self._execute(order, q, float(p))

        return self._call(do)

    def cancel(self, order_id: int, *, client_id: int | None = None, reason: str = "") -> None:
        """Cancel a working order from the gateway side (expiry, risk): orderStatus
        Cancelled + error 202 to the owning client."""

        def do() -> None:
            order = self._find(order_id, client_id)
            if order.is_done:
                raise ValueError(f"order {order_id} is {order.status}")
            self._cancel(order, reason)

        self._call(do)

    def _find(self, order_id: int, client_id: int | None) -> FakeOrder:
        matches = [
            o
            for (cid, oid), o in self._orders.items()
            if oid == order_id and (client_id is None or cid == client_id)
        ]
        if len(matches) != 1:
            raise KeyError(f"order {order_id} (client {client_id}): {len(matches)} matches")
        return matches[0]

    # ------------------------------------------------------------------ scripted faults

    def reject_next_order(self, code: int = 201, message: str | None = None) -> None:
        """The next new order is rejected: error ``code`` then orderStatus Cancelled."""
        text = message if message is not None else DEFAULT_MESSAGES.get(code, "Order rejected")

        def do() -> None:
            self._rejections.append((code, text, ""))

        self._call(do)

    def send_error(
        self, req_id: int, code: int, message: str | None = None, *, client_id: int | None = None
    ) -> int:
        """Send an error message (informational 2104/2106/2158, pacing 162/420,
        connectivity 1100/1102, ...) to every client or to one; return how many got it."""
        text = message if message is not None else DEFAULT_MESSAGES.get(code, f"error {code}")

        def do() -> int:
            conns = [c for c in self._live() if client_id is None or c.client_id == client_id]
            for conn in conns:
                conn.error(req_id, code, text)
            return len(conns)

        return self._call(do)

    def duplicate_next_execution(self) -> None:
        """The next fill sends its execDetails + commissionReport twice."""

        def do() -> None:
            self._duplicate_executions += 1

        self._call(do)

    def reject_client_id(self, client_id: int) -> None:
        """Connections with this client id get error 326 and are closed (until allowed)."""

        def do() -> None:
            self._rejected_client_ids.add(int(client_id))

        self._call(do)

    def allow_client_id(self, client_id: int) -> None:
        def do() -> None:
            self._rejected_client_ids.discard(int(client_id))

        self._call(do)

    def drop_connections(self, client_id: int | None = None) -> int:
        """Abort every client socket (or one client's): a network drop mid-session.
        Server state is kept; clients may reconnect. Returns how many were dropped."""

        def do() -> int:
            conns = [c for c in self._conns if client_id is None or c.client_id == client_id]
            for conn in conns:
                conn.abort()
            return len(conns)

        return self._call(do)

    def drop_after_next_order(self) -> None:
        """The next placeOrder reaches the gateway (recorded, working, fill policy applied)
        but its connection is dropped before any answer is sent."""

        def do() -> None:
            self._drop_after_order = True

        self._call(do)

    def pace_historical(self, n: int) -> None:
        """Answer the next ``n`` reqHistoricalData with error 162 instead of data."""

        def do() -> None:
            self._pace_historical += int(n)

        self._call(do)

    # ------------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[str]:
        """Names of every message received after the handshake, in order."""
        with self._lock:
            return [r.name for r in self._log]

    @property
    def request_log(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._log)

    def requests_from(self, client_id: int) -> list[str]:
        with self._lock:
            return [r.name for r in self._log if r.client_id == client_id]

    @property
    def orders(self) -> list[FakeOrder]:
        """Every order placed (all clients, all connections), in placement order; copies."""
        with self._lock:
            return [dataclasses.replace(o, fields=dict(o.fields)) for o in self._orders.values()]

    def order(self, order_id: int, client_id: int | None = None) -> FakeOrder:
        with self._lock:
            o = self._find(order_id, client_id)
            return dataclasses.replace(o, fields=dict(o.fields))

    def orders_by_ref(self, order_ref: str) -> list[FakeOrder]:
        with self._lock:
            return [
                dataclasses.replace(o, fields=dict(o.fields))
                for o in self._orders.values()
                if o.order_ref == order_ref
            ]

    @property
    def executions(self) -> list[FakeExecution]:
        with self._lock:
            return list(self._executions)

    @property
    def positions(self) -> dict[str, tuple[float, float]]:
        """symbol -> (quantity, average cost) for the main account."""
        with self._lock:
            return {
                sym: (qty_avg[0], qty_avg[1])
                for (acct, sym), qty_avg in self._positions.items()
                if acct == self.account
            }

    @property
    def connected_client_ids(self) -> list[int]:
        """Client ids of connections that completed startApi and are still open."""
        with self._lock:
            return [c.client_id for c in self._live() if c.client_id is not None]

    @property
    def connection_count(self) -> int:
        """Open sockets, including ones that have not (yet) sent startApi."""
        with self._lock:
            return len(self._conns)

    @property
    def total_connections(self) -> int:
        """Sockets accepted since start."""
        with self._lock:
            return self._connect_count

    @property
    def refused_client_ids(self) -> list[int]:
        """Client ids that were answered with 326, in order."""
        with self._lock:
            return list(self._refused)

    @property
    def protocol_errors(self) -> list[str]:
        """Messages this server could not parse exactly; a test should expect none."""
        with self._lock:
            return list(self._protocol_errors)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block (not on the server thread) until ``predicate()`` holds, re-checked after
        every received message and connection change; return whether it did."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, conn: _Connection, fields: list[str]) -> None:
        with self._lock:
            try:
                msg_id = int(fields[0])
            except ValueError:
                self._protocol_error(f"bad message id {fields[0]!r}")
                return
            name = REQUEST_NAMES.get(msg_id, f"unknown({msg_id})")
            self._log.append(ReceivedRequest(conn.client_id, name, tuple(fields)))
            handler = self._handlers.get(msg_id)
            try:
                if handler is None:
                    self._not_implemented(conn, msg_id, name, fields)
                else:
                    handler(self, conn, _Reader(fields[1:]))
            except (ProtocolError, ValueError, KeyError) as e:
                self._protocol_error(f"{name} from client {conn.client_id}: {e!r}")
            finally:
                self._changed.notify_all()

    def _not_implemented(
        self, conn: _Connection, msg_id: int, name: str, fields: list[str]
    ) -> None:
        text = f"FakeTWS does not implement {name}"
        index = _REQ_ID_INDEX.get(msg_id)
        if index is not None and len(fields) > index and fields[index].lstrip("-").isdigit():
            conn.error(int(fields[index]), NOT_IMPLEMENTED, text)
        elif msg_id in _EXPECTS_REPLY:
            conn.error(-1, NOT_IMPLEMENTED, text)

    # -- connection set-up -----------------------------------------------------------

    def _on_start_api(self, conn: _Connection, r: _Reader) -> None:
        r.skip()  # version
        client_id = r.integer()
        r.text()  # optional capabilities
        in_use = any(c is not conn and c.client_id == client_id for c in self._live())
        if client_id in self._rejected_client_ids or in_use:
            self._refused.append(client_id)
            conn.error(-1, 326, DEFAULT_MESSAGES[326])
            conn.close()
            return
        conn.client_id = client_id
        conn.api_started = True
        conn.send(15, 1, ",".join(self.accounts))
        conn.send(9, 1, self._next_order_id)
        if self.farm_notices:
            for code in (2104, 2106, 2158):
                conn.error(-1, code, DEFAULT_MESSAGES[code])

    def _on_req_ids(self, conn: _Connection, r: _Reader) -> None:
        conn.send(9, 1, self._next_order_id)

    def _on_req_managed_accts(self, conn: _Connection, r: _Reader) -> None:
        conn.send(15, 1, ",".join(self.accounts))

    def _on_req_current_time(self, conn: _Connection, r: _Reader) -> None:
        conn.send(49, 1, int(time.time()))

    def _on_silent(self, conn: _Connection, r: _Reader) -> None:
        """Recorded only (reqAutoOpenOrders, reqMarketDataType, ...)."""

    # -- account & positions ---------------------------------------------------------

    def _contract_fields(self, info: StockInfo, exchange: str) -> list[object]:
        """conId..tradingClass without primaryExchange (position/execution layout)."""
        return [
            info.con_id, info.symbol, "STK", "", 0.0, "", "", exchange, info.currency,
            info.symbol, info.trading_class,
        ]  # fmt: skip

    def _position_fields(self, acct: str, symbol: str) -> list[object]:
        info = self._stocks[symbol]
        qty, avg = self._positions[(acct, symbol)]
        return [61, 3, acct, *self._contract_fields(info, info.primary_exchange), qty, avg]

    def _portfolio_fields(self, acct: str, symbol: str) -> list[object]:
        info = self._stocks[symbol]
        qty, avg = self._positions[(acct, symbol)]
        mark = self._prices.get(symbol, avg)
        return [
            7, 8, info.con_id, info.symbol, "STK", "", 0.0, "", "", info.primary_exchange,
            info.currency, info.symbol, info.trading_class, qty, mark, qty * mark, avg,
            (mark - avg) * qty, 0.0, acct,
        ]  # fmt: skip

    def _stream_position(self, acct: str, symbol: str) -> None:
        for conn in self._live():
            if conn.positions_sub:
                conn.send(*self._position_fields(acct, symbol))
            if conn.account_sub == acct:
                conn.send(*self._portfolio_fields(acct, symbol))

    def _on_req_positions(self, conn: _Connection, r: _Reader) -> None:
        conn.positions_sub = True
        for acct, symbol in self._positions:
            conn.send(*self._position_fields(acct, symbol))
        conn.send(62, 1)

    def _on_cancel_positions(self, conn: _Connection, r: _Reader) -> None:
        conn.positions_sub = False

    def _on_req_positions_multi(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        req_id = r.integer()
        account = r.text()
        model_code = r.text()
        for (acct, symbol), (qty, avg) in self._positions.items():
            if account in ("", "All", acct):
                info = self._stocks[symbol]
                conn.send(
                    71, 1, req_id, acct, *self._contract_fields(info, info.primary_exchange),
                    qty, avg, model_code,
                )  # fmt: skip
        conn.send(72, 1, req_id)

    def _on_req_account_updates(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        subscribe = r.flag()
        acct = r.text() or self.account
        if not subscribe:
            conn.account_sub = None
            return
        conn.account_sub = acct
        conn.send(6, 2, "AccountCode", acct, "", acct)
        for (a, tag, currency), value in self._account_values.items():
            if a == acct:
                conn.send(6, 2, tag, value, currency, acct)
        for a, symbol in self._positions:
            if a == acct:
                conn.send(*self._portfolio_fields(a, symbol))
        conn.send(8, 1, datetime.now(ZoneInfo(self.time_zone)).strftime("%H:%M"))
        conn.send(54, 1, acct)

    def _on_req_account_updates_multi(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        req_id = r.integer()
        account = r.text()
        model_code = r.text()
        conn.account_multi_subs[req_id] = account
        for (acct, tag, currency), value in self._account_values.items():
            if account in ("", "All", acct):
                conn.send(73, 1, req_id, acct, model_code, tag, value, currency)
        conn.send(74, 1, req_id)

    def _on_cancel_account_updates_multi(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        conn.account_multi_subs.pop(r.integer(), None)

    def _on_req_account_summary(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        req_id = r.integer()
        r.text()  # group
        tags = {t for t in r.text().split(",") if t}
        everything = any(t.startswith("$LEDGER") for t in tags)
        conn.account_summary_subs[req_id] = ",".join(sorted(tags))
        for (acct, tag, currency), value in self._account_values.items():
            if everything or tag in tags:
                conn.send(63, 1, req_id, acct, tag, value, currency)
        conn.send(64, 1, req_id)

    def _on_cancel_account_summary(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        conn.account_summary_subs.pop(r.integer(), None)

    # -- contracts & market data -----------------------------------------------------

    def _resolve(self, c: dict[str, str]) -> StockInfo | None:
        con_id = int(c["conId"] or 0)
        if con_id:
            return next((s for s in self._stocks.values() if s.con_id == con_id), None)
        if c["secType"] not in ("", "STK"):
            return None
        info = self._stocks.get(c["symbol"] or c["localSymbol"])
        if info is None or c["currency"] not in ("", info.currency):
            return None
        return info

    def _on_req_contract_details(self, conn: _Connection, r: _Reader) -> None:
        r.skip()  # version
        req_id = r.integer()
        c = r.contract()
        r.skip(3)  # includeExpired, secIdType, secId
        if conn.version >= 176:
            r.skip()  # issuerId
        info = self._resolve(c)
        if info is None:
            conn.error(req_id, 200, DEFAULT_MESSAGES[200])
            return
        exchange = c["exchange"] or "SMART"
        head: list[object] = [10] if conn.version >= 164 else [10, 8]
        fields: list[object] = [
            *head, req_id, info.symbol, "STK", "", 0.0, "", exchange, info.currency,
            info.symbol, info.trading_class, info.trading_class, info.con_id, info.min_tick,
        ]  # fmt: skip
        if conn.version < 164:
            fields.append(1)  # mdSizeMultiplier
        fields += [
            "",  # multiplier
            "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,AVGCOST,BASKET,DAY,GAT,GTC,GTD,LIT,LMT,"
            "MIT,MKT,MOC,NONALGO,OCA,REL,STP,STPLMT,TRAIL,TRAILLIT,TRAILLMT,WHATIF",
            f"SMART,{info.primary_exchange},ARCA,BATS,IEX,ISLAND",
            1,  # priceMagnifier
            0,  # underConId
            info.long_name,
            info.primary_exchange,
            "",  # contractMonth
            "Technology",
            "Computers",
            "Computers",
            "US/Eastern",
            "20240102:0400-20240102:2000;20240103:0400-20240103:2000",
            "20240102:0930-20240102:1600;20240103:0930-20240103:1600",
            "",  # evRule
            "",  # evMultiplier
            0,  # secIdList
            1,  # aggGroup
            "",  # underSymbol
            "",  # underSecType
            "26,26,26,26,26,26",
            "",  # realExpirationDate
            "COMMON",
        ]
        if conn.version == 163:
            fields.append(100)  # suggestedSizeIncrement
        if conn.version >= 164:
            fields += [1, 1, 100]  # minSize, sizeIncrement, suggestedSizeIncrement
        conn.send(*fields)
        conn.send(52, 1, req_id)

    def _send_ticks(self, conn: _Connection, req_id: int, symbol: str) -> None:
        price = self._prices.get(symbol)
        if price is None:
            return
        tick = self._stocks[symbol].min_tick
        for tick_type, value in ((1, price - tick), (2, price + tick), (4, price)):
            conn.send(1, 6, req_id, tick_type, round(value, 6), 100, 0)

    def _on_req_mkt_data(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        req_id = r.integer()
        c = r.contract()
        if c["secType"] == "BAG":
            r.skip(4 * r.integer())
        if r.flag():
            r.skip(3)
        r.text()  # genericTickList
        snapshot = r.flag()
        r.skip(2)  # regulatorySnapshot, mktDataOptions
        info = self._resolve(c)
        if info is None:
            conn.error(req_id, 200, DEFAULT_MESSAGES[200])
            return
        self._send_ticks(conn, req_id, info.symbol)
        if snapshot:
            conn.send(57, 1, req_id)
        else:
            conn.mkt_data_subs[req_id] = info.con_id

    def _on_cancel_mkt_data(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        conn.mkt_data_subs.pop(r.integer(), None)

    def _bar_date(self, bar: Bar, bar_size: str, format_date: int) -> str:
        if any(unit in bar_size for unit in ("day", "week", "month")):
            return bar.time.astimezone(ZoneInfo(self.time_zone)).strftime("%Y%m%d")
        if format_date == 2:
            return str(int(bar.time.timestamp()))
        local = bar.time.astimezone(ZoneInfo(self.time_zone))
        return local.strftime("%Y%m%d %H:%M:%S ") + self.time_zone

    def _on_req_historical_data(self, conn: _Connection, r: _Reader) -> None:
        req_id = r.integer()
        c = r.contract()
        r.skip()  # includeExpired
        end_text = r.text()
        bar_size = r.text()
        duration = r.text()
        r.skip(2)  # useRTH, whatToShow
        format_date = r.integer(1)
        if c["secType"] == "BAG":
            r.skip(4 * r.integer())
        keep_up_to_date = r.flag()
        r.text()  # chartOptions
        if self._pace_historical > 0:
            self._pace_historical -= 1
            conn.error(req_id, 162, DEFAULT_MESSAGES[162])
            return
        info = self._resolve(c)
        if info is None:
            conn.error(req_id, 200, DEFAULT_MESSAGES[200])
            return
        bars = self._historical.get(info.symbol, [])
        end = _parse_ib_time(end_text, self.time_zone)
        if end is None:
            end = bars[-1].time + timedelta(seconds=1) if bars else datetime.now(UTC)
        span = _parse_duration(duration)
        start = end - span if span is not None else datetime.min.replace(tzinfo=UTC)
        chosen = [b for b in bars if start <= b.time < end]
        fields: list[object] = [
            17, req_id, start.strftime("%Y%m%d %H:%M:%S"), end.strftime("%Y%m%d %H:%M:%S"),
            len(chosen),
        ]  # fmt: skip
        for b in chosen:
            fields += [
                self._bar_date(b, bar_size, format_date), b.open, b.high, b.low, b.close,
                b.volume, b.close if b.wap is None else b.wap, b.count,
            ]  # fmt: skip
        conn.send(*fields)
        if keep_up_to_date:
            conn.hist_update_subs[req_id] = info.con_id

    def _on_cancel_historical_data(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        conn.hist_update_subs.pop(r.integer(), None)

    def _on_req_real_time_bars(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        req_id = r.integer()
        c = r.contract()
        r.skip(4)  # barSize, whatToShow, useRTH, options
        info = self._resolve(c)
        if info is None:
            conn.error(req_id, 200, DEFAULT_MESSAGES[200])
            return
        conn.rt_bar_subs[req_id] = info.con_id

    def _on_cancel_real_time_bars(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        conn.rt_bar_subs.pop(r.integer(), None)

    # -- orders: messages ------------------------------------------------------------

    def _order_contract_fields(self, order: FakeOrder) -> list[object]:
        info = self._stocks[order.symbol]
        c = order.contract
        return [
            info.con_id, info.symbol, "STK", "", 0.0, "", "", c.get("exchange") or "SMART",
            info.currency, info.symbol, info.trading_class,
        ]  # fmt: skip

    def _open_order_fields(
        self,
        conn: _Connection,
        order: FakeOrder,
        *,
        what_if: dict[str, str] | None = None,
    ) -> list[object]:
        """openOrder (5) exactly as ib_async 2.1's ``Decoder.openOrder`` reads it."""
        v = conn.version
        f = order.fields

        def g(key: str, default: str = "") -> str:
            return f.get(key) or default

        unset = UNSET_DOUBLE_TEXT
        state = what_if or {}
        fields: list[object] = [
            5, order.order_id, *self._order_contract_fields(order),
            order.action, order.total_quantity, order.order_type, order.lmt_price,
            order.aux_price, order.tif, g("ocaGroup"), order.account, g("openClose"),
            g("origin", "0"), order.order_ref, order.client_id, order.perm_id,
            order.outside_rth, g("hidden", "0"), g("discretionaryAmt", "0"),
            g("goodAfterTime"), "", g("faGroup"), g("faMethod"), g("faPercentage"),
        ]  # fmt: skip
        if v < 177:
            fields.append(g("faProfile"))
        fields += [
            g("modelCode"), g("goodTillDate"), g("rule80A"), g("percentOffset"),
            g("settlingFirm"), g("shortSaleSlot", "0"), g("designatedLocation"),
            g("exemptCode", "-1"), g("auctionStrategy", "0"), g("startingPrice"),
            g("stockRefPrice"), g("delta"), g("stockRangeLower"), g("stockRangeUpper"),
            g("displaySize"), g("blockOrder", "0"), g("sweepToFill", "0"),
            g("allOrNone", "0"), g("minQty"), g("ocaType", "0"), g("eTradeOnly", "0"),
            g("firmQuoteOnly", "0"), g("nbboPriceCap"), order.parent_id,
            g("triggerMethod", "0"), g("volatility"), g("volatilityType"),
            "",  # deltaNeutralOrderType (so no delta-neutral block)
            g("deltaNeutralAuxPrice"),
            g("continuousUpdate", "0"), g("referencePriceType"), g("trailStopPrice"),
            g("trailingPercent"), "", "",  # basisPoints, basisPointsType
            "",  # comboLegsDescrip
            0, 0, 0,  # combo legs, order combo legs, smart combo routing params
            g("scaleInitLevelSize"), g("scaleSubsLevelSize"),
            "",  # scalePriceIncrement (so no scale block)
            "",  # hedgeType
            g("optOutSmartRouting", "0"), g("clearingAccount"), g("clearingIntent"),
            g("notHeld", "0"),
            0,  # no delta-neutral contract
            "",  # algoStrategy
            g("solicited", "0"), what_if is not None,
            order.status,
            state.get("initMarginBefore", unset), state.get("maintMarginBefore", unset),
            state.get("equityWithLoanBefore", unset), state.get("initMarginChange", unset),
            state.get("maintMarginChange", unset), state.get("equityWithLoanChange", unset),
            state.get("initMarginAfter", unset), state.get("maintMarginAfter", unset),
            state.get("equityWithLoanAfter", unset),
            state.get("commission", unset), state.get("minCommission", unset),
            state.get("maxCommission", unset), "USD" if what_if is not None else "",
            "",  # warningText
            g("randomizeSize", "0"), g("randomizePrice", "0"),
        ]  # fmt: skip
        if order.order_type in {"PEG BENCH", "PEGBENCH"}:
            fields += [
                g("referenceContractId", "0"), g("isPeggedChangeAmountDecrease", "0"),
                g("peggedChangeAmount", "0"), g("referenceChangeAmount", "0"),
                g("referenceExchangeId"),
            ]  # fmt: skip
        fields += [
            0,  # conditions
            g("adjustedOrderType"), g("triggerPrice"), g("trailStopPrice"),
            g("lmtPriceOffset"), g("adjustedStopPrice"), g("adjustedStopLimitPrice"),
            g("adjustedTrailingAmount"), g("adjustableTrailingUnit", "0"),
            g("softDollarTierName"), g("softDollarTierValue"), "",  # tier displayName
            g("cashQty"), g("dontUseAutoPriceForHedge", "0"), g("isOmsContainer", "0"),
            g("discretionaryUpToLimitPrice", "0"), g("usePriceMgmtAlgo"),
        ]  # fmt: skip
        if v >= 159:
            fields.append(g("duration"))
        if v >= 160:
            fields.append(g("postToAts"))
        if v >= 162:
            fields.append(g("autoCancelParent", "0"))
        if v >= 170:
            fields += [
                g("minTradeQty"), g("minCompeteSize"), g("competeAgainstBestOffset"),
                g("midOffsetAtWhole"), g("midOffsetAtHalf"),
            ]  # fmt: skip
        return fields

    def _completed_order_fields(self, conn: _Connection, order: FakeOrder) -> list[object]:
        """completedOrder (101) exactly as ib_async 2.1's ``Decoder.completedOrder`` reads
        it: no orderId and no clientId on the wire."""
        v = conn.version
        f = order.fields

        def g(key: str, default: str = "") -> str:
            return f.get(key) or default

        fields: list[object] = [
            101, *self._order_contract_fields(order),
            order.action, order.total_quantity, order.order_type, order.lmt_price,
            order.aux_price, order.tif, g("ocaGroup"), order.account, g("openClose"),
            g("origin", "0"), order.order_ref, order.perm_id, order.outside_rth,
            g("hidden", "0"), g("discretionaryAmt", "0"), g("goodAfterTime"), g("faGroup"),
            g("faMethod"), g("faPercentage"),
        ]  # fmt: skip
        if v < 177:
            fields.append(g("faProfile"))
        fields += [
            g("modelCode"), g("goodTillDate"), g("rule80A"), g("percentOffset"),
            g("settlingFirm"), g("shortSaleSlot", "0"), g("designatedLocation"),
            g("exemptCode", "-1"), g("startingPrice"), g("stockRefPrice"), g("delta"),
            g("stockRangeLower"), g("stockRangeUpper"), g("displaySize"),
            g("sweepToFill", "0"), g("allOrNone", "0"), g("minQty"), g("ocaType", "0"),
            g("triggerMethod", "0"), g("volatility"), g("volatilityType"),
            "",  # deltaNeutralOrderType
            g("deltaNeutralAuxPrice"),
            g("continuousUpdate", "0"), g("referencePriceType"), g("trailStopPrice"),
            g("trailingPercent"), "",  # comboLegsDescrip
            0, 0, 0,
            g("scaleInitLevelSize"), g("scaleSubsLevelSize"), "",  # scalePriceIncrement
            "",  # hedgeType
            g("clearingAccount"), g("clearingIntent"), g("notHeld", "0"),
            0,  # no delta-neutral contract
            "",  # algoStrategy
            g("solicited", "0"), order.status, g("randomizeSize", "0"),
            g("randomizePrice", "0"),
        ]  # fmt: skip
        if order.order_type in {"PEG BENCH", "PEGBENCH"}:
            fields += [
                g("referenceContractId", "0"), g("isPeggedChangeAmountDecrease", "0"),
                g("peggedChangeAmount", "0"), g("referenceChangeAmount", "0"),
                g("referenceExchangeId"),
            ]  # fmt: skip
        fields += [
            0,  # conditions
            g("trailStopPrice"), g("lmtPriceOffset"), g("cashQty"),
            g("dontUseAutoPriceForHedge", "0"), g("isOmsContainer", "0"),
            "",  # autoCancelDate
            order.filled,
            0,  # refFuturesConId
            g("autoCancelParent", "0"),
            "",  # shareholder
            0,  # imbalanceOnly
            0,  # routeMarketableToBbo
            0,  # parentPermId
            order.completed_time, order.completed_status,
        ]  # fmt: skip
        if v >= 170:
            fields += [
                g("minTradeQty"), g("minCompeteSize"), g("competeAgainstBestOffset"),
                g("midOffsetAtWhole"), g("midOffsetAtHalf"),
            ]  # fmt: skip
        return fields

    def _order_status_fields(self, order: FakeOrder) -> list[object]:
        return [
            3, order.order_id, order.status, order.filled, order.remaining,
            order.avg_fill_price, order.perm_id, order.parent_id, order.last_fill_price,
            order.client_id, order.why_held, 0.0,
        ]  # fmt: skip

    def _exec_fields(self, conn: _Connection, req_id: int, ex: FakeExecution) -> list[object]:
        info = self._stocks[ex.symbol]
        when = ex.time.astimezone(ZoneInfo(self.time_zone))
        fields: list[object] = [
            11, req_id, ex.order_id, *self._contract_fields(info, ex.exchange),
            ex.exec_id, when.strftime("%Y%m%d %H:%M:%S ") + self.time_zone, ex.account,
            ex.exchange, ex.side, ex.shares, ex.price, ex.perm_id, ex.client_id,
            0,  # liquidation
            ex.cum_qty, ex.avg_price, ex.order_ref,
            "", "",  # evRule, evMultiplier
            "",  # modelCode
            1,  # lastLiquidity: added
        ]  # fmt: skip
        if conn.version >= 178:
            fields.append(0)  # pendingPriceRevision
        return fields

    def _commission_fields(self, ex: FakeExecution) -> list[object]:
        return [
            59, 1, ex.exec_id, ex.commission, "USD",
            UNSET_DOUBLE_TEXT if ex.realized_pnl is None else ex.realized_pnl,
            UNSET_DOUBLE_TEXT, "",
        ]  # fmt: skip

    # -- orders: requests --------------------------------------------------------------

    def _on_place_order(self, conn: _Connection, r: _Reader) -> None:
        order_id, contract, f = _parse_place_order(r, conn.version)
        client_id = conn.client_id if conn.client_id is not None else -1
        drop = self._drop_after_order
        self._drop_after_order = False
        if drop:
            conn.muted = True
        try:
            self._place(conn, client_id, order_id, contract, f)
        finally:
            if drop:
                conn.abort()

    def _place(
        self,
        conn: _Connection,
        client_id: int,
        order_id: int,
        contract: dict[str, str],
        f: dict[str, str],
    ) -> None:
        info = self._resolve(contract)
        if info is None:
            conn.error(order_id, 200, DEFAULT_MESSAGES[200])
            return
        self._next_order_id = max(self._next_order_id, order_id + 1)
        existing = self._orders.get((client_id, order_id))
        qty = float(f["totalQuantity"] or 0)
        lmt = _opt_float(f["lmtPrice"])
        aux = _opt_float(f["auxPrice"])

        if f["whatIf"] not in ("", "0"):
            preview = FakeOrder(
                order_id, client_id, 0, f["account"] or self.account, info.symbol,
                info.con_id, f["action"], qty, f["orderType"], lmt, aux, f["tif"] or "DAY",
                f["orderRef"], True, 0, False, "PreSubmitted", contract=contract, fields=f,
            )  # fmt: skip
            price = lmt or self._prices.get(info.symbol) or 0.0
            margin = f"{qty * price * 0.25:.2f}"
            state = {
                "initMarginBefore": "0.00", "maintMarginBefore": "0.00",
                "equityWithLoanBefore": self._account_values.get(
                    (preview.account, "EquityWithLoanValue", "USD"), "0.00"),
                "initMarginChange": margin, "maintMarginChange": margin,
                "equityWithLoanChange": "0.00", "initMarginAfter": margin,
                "maintMarginAfter": margin,
                "commission": _num(max(self.min_commission, qty * self.commission_per_share)),
            }  # fmt: skip
            state["equityWithLoanAfter"] = state["equityWithLoanBefore"]
            conn.send(*self._open_order_fields(conn, preview, what_if=state))
            return

        if existing is not None:
            if existing.is_done:
                conn.error(order_id, 103, "Duplicate order id")
                return
            existing.total_quantity = qty
            existing.lmt_price = lmt
            existing.aux_price = aux
            existing.order_type = f["orderType"]
            existing.tif = f["tif"] or existing.tif
            existing.order_ref = f["orderRef"]
            existing.fields = f
            if existing.transmit is False and f["transmit"] not in ("", "0"):
                existing.transmit = True
                existing.status = self._working_status(existing)
            for owner in self._owners(existing):
                owner.send(*self._open_order_fields(owner, existing))
                owner.send(*self._order_status_fields(existing))
            self._apply_policy(existing)
            return

        perm_id = self._next_perm_id
        self._next_perm_id += 1
        order = FakeOrder(
            order_id=order_id,
            client_id=client_id,
            perm_id=perm_id,
            account=f["account"] or self.account,
            symbol=info.symbol,
            con_id=info.con_id,
            action=f["action"],
            total_quantity=qty,
            order_type=f["orderType"],
            lmt_price=lmt,
            aux_price=aux,
            tif=f["tif"] or "DAY",
            order_ref=f["orderRef"],
            transmit=f["transmit"] not in ("", "0"),
            parent_id=int(f["parentId"] or 0),
            outside_rth=f["outsideRth"] not in ("", "0"),
            status="PendingSubmit",
            contract=contract,
            fields=f,
        )
        self._orders[(client_id, order_id)] = order

        if self._rejections:
            code, text, advanced = self._rejections.pop(0)
            order.status = "Cancelled"
            order.completed_time = self._now_text()
            order.completed_status = text
            conn.error(order_id, code, text, advanced)
            conn.send(*self._order_status_fields(order))
            return

        order.status = self._working_status(order)
        conn.send(*self._open_order_fields(conn, order))
        conn.send(*self._order_status_fields(order))
        self._apply_policy(order)

    @staticmethod
    def _working_status(order: FakeOrder) -> str:
        if not order.transmit or order.order_type in _STOP_TYPES:
            return "PreSubmitted"
        return "Submitted"

    def _apply_policy(self, order: FakeOrder) -> None:
        if order.is_done:
            return
        for qty, price in self.fill_policy(order, self._prices.get(order.symbol)):
            if order.is_done or qty <= 0:
                break
            self._execute(order, min(qty, order.remaining), price)

    def _now_text(self) -> str:
        now = datetime.now(ZoneInfo(self.time_zone))
        return now.strftime("%Y%m%d %H:%M:%S ") + self.time_zone

    def _execute(self, order: FakeOrder, qty: float, price: float) -> FakeExecution:
        sign = 1.0 if order.action.upper() in ("BUY", "BOT") else -1.0
        total = order.avg_fill_price * order.filled + price * qty
        order.filled += qty
        order.avg_fill_price = total / order.filled
        order.last_fill_price = price
        if order.remaining <= 1e-9:
            order.status = "Filled"
            order.completed_time = self._now_text()
            order.completed_status = "Filled"
        else:
            order.status = "Submitted"
        commission = round(max(self.min_commission, qty * self.commission_per_share), 6)
        realized = self._book(order.account, order.symbol, sign * qty, price)
        self._exec_seq += 1
        ex = FakeExecution(
            exec_id=f"0000fa7e.{order.perm_id:08x}.{self._exec_seq:02d}.01",
            order_id=order.order_id,
            client_id=order.client_id,
            perm_id=order.perm_id,
            order_ref=order.order_ref,
            account=order.account,
            symbol=order.symbol,
            con_id=order.con_id,
            side="BOT" if sign > 0 else "SLD",
            shares=qty,
            price=price,
            time=datetime.now(UTC).replace(microsecond=0),
            cum_qty=order.filled,
            avg_price=order.avg_fill_price,
            commission=commission,
            realized_pnl=None if realized is None else round(realized - commission, 6),
            exchange=self.fill_exchange,
        )
        self._executions.append(ex)
        times = 1
        if self._duplicate_executions:
            self._duplicate_executions -= 1
            times = 2
        for conn in self._owners(order):
            conn.send(*self._exec_fields(conn, -1, ex))
            conn.send(*self._order_status_fields(order))
            if order.status == "Filled":
                conn.send(*self._open_order_fields(conn, order))
            conn.send(*self._commission_fields(ex))
            for _ in range(times - 1):
                conn.send(*self._exec_fields(conn, -1, ex))
                conn.send(*self._commission_fields(ex))
        self._stream_position(order.account, order.symbol)
        return ex

    def _book(self, acct: str, symbol: str, signed_qty: float, price: float) -> float | None:
        """Apply a fill to the position; return the gross realized P&L if it closed any."""
        pos = self._positions.setdefault((acct, symbol), [0.0, 0.0])
        qty, avg = pos
        if qty == 0 or (qty > 0) == (signed_qty > 0):
            new_qty = qty + signed_qty
            pos[1] = (qty * avg + signed_qty * price) / new_qty
            pos[0] = new_qty
            return None
        closed = min(abs(signed_qty), abs(qty))
        realized = closed * (price - avg) * (1.0 if qty > 0 else -1.0)
        new_qty = qty + signed_qty
        if abs(new_qty) < 1e-9:
            pos[:] = [0.0, 0.0]
        elif (new_qty > 0) != (qty > 0):
            pos[:] = [new_qty, price]
        else:
            pos[0] = new_qty
        return realized

    def _cancel(self, order: FakeOrder, reason: str = "") -> None:
        order.status = "Cancelled"
        order.completed_time = self._now_text()
        order.completed_status = reason or "Cancelled by Trader"
        for conn in self._owners(order):
            conn.send(*self._order_status_fields(order))
            conn.error(order.order_id, 202, DEFAULT_MESSAGES[202] + reason)

    def _on_cancel_order(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        order_id = r.integer()
        if conn.version >= 169:
            r.text()  # manualCancelOrderTime
        order = self._orders.get((conn.client_id if conn.client_id is not None else -1, order_id))
        if order is None:
            conn.error(
                order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found."
            )
        elif order.is_done:
            conn.error(
                order_id,
                10148,
                f"OrderId {order_id} that needs to be cancelled cannot be cancelled, "
                f"state: {order.status}.",
            )
        else:
            self._cancel(order)

    def _on_req_global_cancel(self, conn: _Connection, r: _Reader) -> None:
        for order in list(self._orders.values()):
            if not order.is_done:
                self._cancel(order)

    def _send_open_orders(self, conn: _Connection, everyone: bool) -> None:
        for order in self._orders.values():
            if order.is_done or not (everyone or order.client_id == conn.client_id):
                continue
            conn.send(*self._open_order_fields(conn, order))
            conn.send(*self._order_status_fields(order))
        conn.send(53, 1)

    def _on_req_open_orders(self, conn: _Connection, r: _Reader) -> None:
        self._send_open_orders(conn, everyone=False)

    def _on_req_all_open_orders(self, conn: _Connection, r: _Reader) -> None:
        self._send_open_orders(conn, everyone=True)

    def _on_req_completed_orders(self, conn: _Connection, r: _Reader) -> None:
        r.text()  # apiOnly (every order here is an API order)
        for order in self._orders.values():
            if order.is_done:
                conn.send(*self._completed_order_fields(conn, order))
        conn.send(102)

    def _on_req_executions(self, conn: _Connection, r: _Reader) -> None:
        r.skip()
        req_id = r.integer()
        client_id = r.integer()
        acct = r.text()
        since = _parse_ib_time(r.text(), self.time_zone)
        symbol = r.text()
        sec_type = r.text()
        exchange = r.text()
        side = r.text().upper()
        for ex in self._executions:
            if (
                (client_id and ex.client_id != client_id)
                or (acct and ex.account != acct)
                or (since is not None and ex.time < since)
                or (symbol and ex.symbol != symbol)
                or (sec_type and sec_type != "STK")
                or (exchange and ex.exchange != exchange)
                or (side and not ex.side.startswith(side[:1]))
            ):
                continue
            conn.send(*self._exec_fields(conn, req_id, ex))
            conn.send(*self._commission_fields(ex))
        conn.send(55, 1, req_id)

    _handlers: ClassVar[dict[int, Callable[[FakeTWS, _Connection, _Reader], None]]] = {
        1: _on_req_mkt_data,
        2: _on_cancel_mkt_data,
        3: _on_place_order,
        4: _on_cancel_order,
        5: _on_req_open_orders,
        6: _on_req_account_updates,
        7: _on_req_executions,
        8: _on_req_ids,
        9: _on_req_contract_details,
        15: _on_silent,  # reqAutoOpenOrders
        16: _on_req_all_open_orders,
        17: _on_req_managed_accts,
        20: _on_req_historical_data,
        25: _on_cancel_historical_data,
        49: _on_req_current_time,
        50: _on_req_real_time_bars,
        51: _on_cancel_real_time_bars,
        58: _on_req_global_cancel,
        59: _on_silent,  # reqMarketDataType
        61: _on_req_positions,
        62: _on_req_account_summary,
        63: _on_cancel_account_summary,
        64: _on_cancel_positions,
        71: _on_start_api,
        74: _on_req_positions_multi,
        75: _on_silent,  # cancelPositionsMulti
        76: _on_req_account_updates_multi,
        77: _on_cancel_account_updates_multi,
        99: _on_req_completed_orders,
    }


# --------------------------------------------------------------------------- standalone


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a FakeTWS until stdin closes or SIGTERM/SIGINT; print ``PORT <n>`` first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--account", default="DU1234567")
    parser.add_argument("--server-version", type=int, default=None)
    args = parser.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with FakeTWS(args.account, server_version=args.server_version, port=args.port) as tws:
        print(f"PORT {tws.port}", flush=True)

        def wait_for_stdin_eof() -> None:
            sys.stdin.read()
            done.set()

        threading.Thread(target=wait_for_stdin_eof, daemon=True).start()
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
