"""Built-in plugin: Interactive Brokers, through ``ib_async`` — a broker and a market-data source.

``--broker ibkr[:via=gateway|tws]`` and ``--source ibkr:symbols=AAPL,MSFT[,bar=1m][,warmup=1 D]``.

Both share one connection per process: ``ib_async.IB`` on its own asyncio
loop in a thread, called from the engine's thread.  Host, port and the
client-id range come from the environment's settings (``[environments.ENV]``,
defaults: paper 7497/4002, live 7496/4001; client ids paper 100-199, live
1-99), the account from the secret ``ibkr.account`` (or the only account the
gateway manages) — never from a strategy.  Nothing here trusts ``ib_async``'s
own order cache across a disconnect: fills are matched to Bastion's orders by
their ``orderRef`` (the client order id, stored before the order is sent) and
counted once by execution id.

What the adapter handles, as observed with ib_async 2.1.0 against the test
gateway (``tests/fake_tws.py``):

* error 326 (client id in use): the gateway closes the socket and
  ``connectAsync`` only fails at its timeout, so every connect has one; the
  next id of the environment's range is tried;
* a disconnect: every request in flight fails, ib_async forgets its session;
  the adapter reconnects with back-off, checks the account again, re-reads the
  executions (new ones are booked, known ones ignored) and re-subscribes bars;
  a gap in the bars is reported, never filled in;
* a 201 rejection arrives as an error event plus a ``Cancelled`` status: the
  order is rejected with IBKR's reason and the strategy is told;
* a duplicate execution report: ib_async fires the commission report twice;
  fills are keyed by execution id;
* pacing (162, 420): historical requests are serialised and retried with
  back-off; informational codes (2104, 2106, 2158, ...) are logged as info.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from bastion import ConfigError, hookimpl
from bastion.interfaces import (
    BrokerOrder,
    Offer,
    OrderUpdate,
    PluginContext,
    select_symbols,
)
from bastion.log import get_logger, masked
from bastion.models import AccountSnapshot, Bar, Fill, Order, OrderType, Side

T = TypeVar("T")

INFO_CODES = frozenset({2103, 2104, 2105, 2106, 2107, 2108, 2119, 2157, 2158, 1102})
PACING_CODES = frozenset({162, 420})
REJECT_CODES = frozenset(
    {103, 104, 105, 106, 107, 109, 110, 111, 113, 116, 117, 135, 136, 161, 200, 201, 203}
)
PAPER_PREFIXES = ("DU", "DF")
CONNECT_TIMEOUT = 4.0
BAR_SIZES = {
    "5s": (5, "5 secs"),
    "10s": (10, "10 secs"),
    "15s": (15, "15 secs"),
    "30s": (30, "30 secs"),
    "1m": (60, "1 min"),
    "2m": (120, "2 mins"),
    "3m": (180, "3 mins"),
    "5m": (300, "5 mins"),
    "15m": (900, "15 mins"),
    "30m": (1800, "30 mins"),
    "1h": (3600, "1 hour"),
}
CODE_CLIENT_ID_IN_USE = 326


def _options(spec: str, allowed: Sequence[str], what: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(
                f"{what} option {part!r} is not understood; options are "
                f"{', '.join(f'{k}=...' for k in allowed)}"
            )
        options[key] = value.strip()
    return options


def check_account(
    environment: str, reported: Sequence[str], wanted: str | None, approved: str | None
) -> str:
    """The account to trade, or a one-line refusal: paper and development refuse a
    live account (IBKR's start U/F, paper DU/DF), live refuses a paper one and any
    account but the approved one."""
    if wanted:
        if wanted not in reported:
            raise ConfigError(
                f"the account {masked(wanted)} (secret ibkr.account) is not one the gateway "
                f"manages ({', '.join(str(masked(a)) for a in reported) or 'none'})"
            )
        account = wanted
    elif len(reported) == 1:
        account = reported[0]
    else:
        raise ConfigError(
            "the gateway manages several accounts; say which with the secret ibkr.account "
            "(BASTION_SECRET_IBKR_ACCOUNT)"
        )
    paper = account.upper().startswith(PAPER_PREFIXES)
    if environment != "live" and not paper:
        raise ConfigError(
            f"the {environment} environment refuses the live account {masked(account)}: "
            "connect it to a paper account (DU/DF...), or use --env live with an approval"
        )
    if environment == "live":
        if paper:
            raise ConfigError(
                f"live refuses the paper account {masked(account)}; use --env paper for it"
            )
        if not approved:
            raise ConfigError(
                f"live trading needs an approval naming the account: --approve-live ACCOUNT "
                f"(the broker reports {masked(account)})"
            )
        if approved != account:
            raise ConfigError(
                f"live was approved for {masked(approved)} but the broker reports "
                f"{masked(account)}; nothing was sent"
            )
    return account


class Session:
    """One ``ib_async.IB`` connection on its own asyncio loop, shared by the broker and
    the source of a process; every call from another thread goes through :meth:`call`."""

    def __init__(self, context: Any) -> None:
        import logging

        import ib_async

        # ib_async logs to the root logger (the terminal); Bastion logs what matters
        # itself, from the events, into its own streams.
        quiet = logging.getLogger("ib_async")
        quiet.propagate = False
        if not quiet.handlers:
            quiet.addHandler(logging.NullHandler())

        self.context = context
        settings = context.settings
        self.environment: str = context.environment
        self.host: str = settings.host.value
        self.client_ids: tuple[int, int] = settings.client_ids.value
        self.approved: str | None = settings.approved_account.value
        self.wanted: str | None = context.secrets.get("ibkr.account")
        self.port = 0
        self.client_id = 0
        self.account = ""
        self.log = get_logger("system", broker="ibkr")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="bastion-ibkr", daemon=True
        )
        self._thread.start()
        self.ib: Any = self.call(self._make(ib_async.IB))
        self.users = 0
        self.closing = False
        self.connected = threading.Event()
        self.errors: deque[tuple[int, int, str]] = deque(maxlen=200)  # reqId, code, text
        self.on_reconnect: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self.error_listeners: list[Callable[[int, int, str], None]] = []
        self.key: tuple[str, str, int] = ("", "", 0)
        self.gaps = 0  # 5-second bars missing from the feed (a reconnect, a paused feed)
        self.late = 0  # bars that came after a later one and were dropped

    async def _make(self, factory: Callable[[], T]) -> T:
        return factory()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, function: Callable[[], T], timeout: float = 30.0) -> T:
        async def inside() -> T:
            return function()

        return self.call(inside(), timeout)

    # -- connecting ------------------------------------------------------------------

    def connect(self, port: int) -> None:
        self.port = port
        attempts = self.client_ids[1] - self.client_ids[0] + 2
        self.call(self._connect(), timeout=CONNECT_TIMEOUT * attempts)

    async def _connect(self) -> None:
        ib = self.ib
        if not getattr(self, "_wired", False):
            ib.errorEvent += self._error
            ib.disconnectedEvent += self._disconnected
            self._wired = True
        first, last = self.client_ids
        for client_id in range(first, last + 1):
            self.errors.clear()
            try:
                await ib.connectAsync(
                    self.host, self.port, clientId=client_id, timeout=CONNECT_TIMEOUT
                )
            except (TimeoutError, ConnectionError, OSError) as exc:
                ib.disconnect()
                if any(code == CODE_CLIENT_ID_IN_USE for _, code, _ in self.errors):
                    self.log.info("ibkr_client_id_in_use", client_id=client_id)
                    continue
                raise ConfigError(
                    f"cannot reach IBKR at {self.host}:{self.port} with client id {client_id} "
                    f"({type(exc).__name__}); is TWS / IB Gateway running there, with the API "
                    f"enabled? ('bastion env' shows the host and ports)"
                ) from None
            self.client_id = client_id
            break
        else:
            raise ConfigError(
                f"every client id of the {self.environment} range {first}-{last} is in use at "
                f"{self.host}:{self.port}; stop another client or widen [environments."
                f"{self.environment}] client_ids"
            )
        try:
            self.account = check_account(
                self.environment, ib.managedAccounts(), self.wanted, self.approved
            )
        except ConfigError:
            self.closing = True
            ib.disconnect()
            raise
        self.connected.set()
        self.log.info(
            "ibkr_connected",
            host=self.host,
            port=self.port,
            client_id=self.client_id,
            account=masked(self.account),
        )

    def _error(self, req_id: int, code: int, text: str, *args: Any) -> None:
        self.errors.append((req_id, code, text))
        if code in INFO_CODES:
            self.log.info("ibkr_notice", code=code, message=text)
        elif code not in REJECT_CODES and code != CODE_CLIENT_ID_IN_USE:
            self.log.warning("ibkr_error", req_id=req_id, code=code, message=text)
        for listener in self.error_listeners:
            listener(req_id, code, text)

    def _disconnected(self) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self.closing or not was:
            return
        self.log.warning("ibkr_disconnected", host=self.host, port=self.port)
        self.loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        while not self.closing:
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except ConfigError as exc:
                if "refuses" in str(exc) or "approved" in str(exc):
                    self.log.error("ibkr_account_refused_after_reconnect", reason=str(exc))
                    return  # stays disconnected: nothing is sent
                self.log.warning("ibkr_reconnect_failed", reason=str(exc), retry_in=delay)
                delay = min(delay * 2, 30.0)
                continue
            self.log.info("ibkr_reconnected", client_id=self.client_id)
            for callback in list(self.on_reconnect):
                await callback()
            return

    def release(self) -> None:
        self.users -= 1
        if self.users > 0:
            return
        self.closing = True
        with contextlib.suppress(Exception):
            self.run(self.ib.disconnect, timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()
        _SESSIONS.pop(self.key, None)


_SESSIONS: dict[tuple[str, str, int], Session] = {}
_SESSIONS_LOCK = threading.Lock()


def session_for(context: Any, port: int) -> Session:
    """The process's connection for this environment and port (made on first use)."""
    key = (context.environment, context.settings.host.value, port)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = Session(context)
            session.key = key
            try:
                session.connect(port)
            except BaseException:
                session.users = 1
                session.release()
                raise
            _SESSIONS[key] = session
        session.users += 1
        return session


def _port(context: Any, via: str) -> int:
    settings = context.settings
    return int(settings.tws_port.value if via == "tws" else settings.gateway_port.value)


def _context_required(context: PluginContext, what: str) -> None:
    if not context.live:
        raise ConfigError(
            f"{what} is for paper and live runs ('bastion run --env paper --broker ibkr'); "
            "backtests use --broker sim and a historical --source"
        )


# ------------------------------------------------------------------------------ broker


class IBKRBroker:
    """Orders to IBKR: market, limit and stop orders, cancels, fills and rejections pushed
    back through :meth:`poll`."""

    name = "ibkr"
    margin = None  # IBKR liquidates by itself: no margin policy of the kernel

    def __init__(self, session: Session, cancel_on_stop: bool = True) -> None:
        self.session = session
        self.cancel_on_stop = cancel_on_stop
        self.log = get_logger("trades", broker="ibkr")
        self._news: deque[Fill | OrderUpdate] = deque()
        self._orders: dict[str, Order] = {}  # client order id -> Bastion's order
        self._trades: dict[str, Any] = {}  # client order id -> ib_async Trade
        self._by_ib_id: dict[int, str] = {}  # IBKR order id -> client order id
        self._working: dict[str, Order] = {}
        self._cancelling: set[str] = set()
        self._ended: set[str] = set()  # rejected or cancelled by IBKR, reported once
        self._quiet_cancels: dict[str, float] = {}  # cancelled by IBKR, no reason yet
        self._reasons: dict[str, str] = {}
        self._pending_fills: dict[str, tuple[Any, float]] = {}  # execId -> (fill, when)
        self._contracts: dict[str, Any] = {}
        self._reconciled: set[str] = set()  # execution ids reported by executions()
        self._listener: Callable[[], None] | None = None
        ib = session.ib
        session.run(lambda: self._wire(ib))
        session.error_listeners.append(self._error)
        session.on_reconnect.append(self._after_reconnect)

    def listen(self, wake: Callable[[], None]) -> None:
        """``wake()`` is called (on the session's thread) whenever news arrive for
        :meth:`poll`: the live driver books a fill as it comes, not at the next bar."""
        self._listener = wake

    def _tell(self, news: Fill | OrderUpdate) -> None:
        self._news.append(news)
        if self._listener is not None:
            self._listener()

    def _wire(self, ib: Any) -> None:
        ib.execDetailsEvent += self._execution
        ib.commissionReportEvent += self._commission
        ib.orderStatusEvent += self._status

    # -- events from ib_async (on the session's loop) -----------------------------------

    def _execution(self, trade: Any, fill: Any) -> None:
        exec_id = fill.execution.execId
        if exec_id not in self._pending_fills:
            self._pending_fills[exec_id] = (fill, time.monotonic())

    def _commission(self, trade: Any, fill: Any, report: Any) -> None:
        # ib_async may fire this twice for one execution (and on reconnect without an
        # execDetails before): the engine books an execution id once.
        held = self._pending_fills.pop(fill.execution.execId, None)
        self._emit_fill(held[0] if held else fill, getattr(report, "commission", 0.0))

    def _emit_fill(self, fill: Any, commission: float) -> None:
        execution = fill.execution
        ref = execution.orderRef or ""
        if not ref and execution.orderId in self._by_ib_id:
            ref = self._by_ib_id[execution.orderId]
        if execution.execId in self._reconciled and ref not in self._orders:
            return  # an earlier run's execution, settled by the start-up reconciliation
        self._tell(self._as_fill(fill, ref, commission))
        order = self._orders.get(ref)
        if order is not None and fill.execution.cumQty >= float(order.quantity):
            self._working.pop(ref, None)

    @staticmethod
    def _as_fill(fill: Any, ref: str, commission: float) -> Fill:
        """An ib_async fill as Bastion's: the client order id from ``orderRef`` (or the
        permanent id of an order Bastion did not place), exact quantities."""
        execution = fill.execution
        commission = commission if commission and math.isfinite(commission) else 0.0
        ts = execution.time if execution.time.tzinfo else execution.time.replace(tzinfo=UTC)
        return Fill(
            order_id=ref or f"ibkr-{execution.permId}",
            symbol=fill.contract.symbol,
            side=Side.BUY if execution.side.upper().startswith("B") else Side.SELL,
            quantity=_shares(execution.shares),
            price=Decimal(repr(float(execution.price))),
            commission=Decimal(repr(abs(float(commission)))),
            ts=ts,
            exec_id=execution.execId,
            broker_order_id=str(execution.permId),
        )

    def _status(self, trade: Any) -> None:
        ref = trade.order.orderRef or self._by_ib_id.get(trade.order.orderId, "")
        status = trade.orderStatus.status
        if ref not in self._orders:
            return
        if status == "Filled":
            self._working.pop(ref, None)
        elif status in ("Cancelled", "ApiCancelled", "Inactive"):
            self._working.pop(ref, None)
            if ref in self._cancelling or ref in self._ended:
                return  # Bastion cancelled it (and booked that), or it was reported already
            self._ended.add(ref)
            reason = self._reasons.pop(ref, None)
            if reason is not None or status == "Inactive":
                self._tell(OrderUpdate(ref, "rejected", reason or f"IBKR made the order {status}"))
            else:
                # The error that says why (a 201) may come just after the status: wait
                # for it a little before calling this a plain cancel.
                self._quiet_cancels[ref] = time.monotonic()

    def _error(self, req_id: int, code: int, text: str) -> None:
        ref = self._by_ib_id.get(req_id)
        if ref is not None and code in REJECT_CODES:
            reason = f"IBKR {code}: {text}"
            self.log.info("ibkr_order_rejected", order_id=ref, code=code, message=text)
            if self._quiet_cancels.pop(ref, None) is not None:
                self._tell(OrderUpdate(ref, "rejected", reason))
            else:
                self._reasons[ref] = reason

    async def _after_reconnect(self) -> None:
        """Executions that happened while disconnected: booked once (by execution id)."""
        import ib_async

        fills = await self.session.ib.reqExecutionsAsync(ib_async.ExecutionFilter())
        for fill in fills:
            ref = fill.execution.orderRef
            if ref in self._orders:
                self._emit_fill(fill, getattr(fill.commissionReport, "commission", 0.0))

    # -- reconciliation (bastion.interfaces.ReconcilingBroker) ---------------------------

    def _ask(self, request: Coroutine[Any, Any, T]) -> T:
        """Run one reconciliation request on the session's loop, fresh from the gateway
        (never ib_async's cache, which a disconnect leaves stale)."""
        if not self.session.connected.is_set():
            request.close()
            raise ConfigError(
                "not connected to IBKR; cannot reconcile the stored orders with the broker"
            )
        return self.session.call(request, timeout=120)

    def _ours(self, trade: Any) -> str:
        """The client order id (``orderRef``) of an order of this account, else ``""``."""
        ref: str = trade.order.orderRef or ""
        account = trade.order.account
        return ref if not account or account == self.session.account else ""

    def open_orders(self) -> Mapping[str, BrokerOrder]:
        """The working orders of this account (every client's, not only this
        connection's) that carry an ``orderRef``."""

        async def ask() -> dict[str, BrokerOrder]:
            orders = {}
            for trade in await self.session.ib.reqAllOpenOrdersAsync():
                ref = self._ours(trade)
                seen = _broker_order(ref, trade, completed=False) if ref else None
                if seen is not None and seen.status == "working":
                    orders[ref] = seen
            return orders

        return self._ask(ask())

    def completed_orders(self) -> Mapping[str, BrokerOrder]:
        """The account's completed orders placed through the API, and any the open-order
        list already reports done (filled, cancelled, Inactive), which wins."""

        async def ask() -> dict[str, BrokerOrder]:
            ib = self.session.ib
            orders = {}
            for trade in await ib.reqCompletedOrdersAsync(apiOnly=True):
                if ref := self._ours(trade):
                    orders[ref] = _broker_order(ref, trade, completed=True)
            for trade in await ib.reqAllOpenOrdersAsync():
                ref = self._ours(trade)
                seen = _broker_order(ref, trade, completed=False) if ref else None
                if seen is not None and seen.status != "working":
                    orders[ref] = seen
            return orders

        return self._ask(ask())

    def executions(self) -> Sequence[Fill]:
        """The account's executions IBKR still reports (the current day's), with the
        commission where its report has come.  Their ids are remembered, so :meth:`poll`
        does not report an earlier run's execution again (the reconciliation settles it)."""
        import ib_async

        async def ask() -> list[Fill]:
            ib = self.session.ib
            account_filter = ib_async.ExecutionFilter(acctCode=self.session.account)
            fills = await ib.reqExecutionsAsync(account_filter)
            known = ib.wrapper.fills  # where commission reports land
            executions = []
            for fill in fills:
                execution = fill.execution
                report = getattr(known.get(execution.execId, fill), "commissionReport", None)
                commission = float(getattr(report, "commission", 0.0) or 0.0)
                self._reconciled.add(execution.execId)
                executions.append(self._as_fill(fill, execution.orderRef or "", commission))
            return executions

        return self._ask(ask())

    def positions(self) -> Mapping[str, Decimal]:
        """The account's non-zero positions, summed by symbol."""

        async def ask() -> dict[str, Decimal]:
            positions: dict[str, Decimal] = {}
            for position in await self.session.ib.reqPositionsAsync():
                if position.account == self.session.account and position.position:
                    symbol = position.contract.symbol
                    positions[symbol] = positions.get(symbol, Decimal(0)) + _shares_signed(
                        position.position
                    )
            return positions

        return self._ask(ask())

    def cancel_order(self, client_order_id: str) -> None:
        """Cancel an order an earlier run placed, found among the open orders by its
        ``orderRef``."""

        async def cancel() -> None:
            for trade in await self.session.ib.reqAllOpenOrdersAsync():
                if trade.order.orderRef == client_order_id:
                    self.session.ib.cancelOrder(trade.order)

        self.log.info("ibkr_cancel_earlier_order", order_id=client_order_id)
        self.session.call(cancel(), timeout=30)

    # -- the Broker protocol (the engine's thread) ----------------------------------------

    def _contract(self, symbol: str) -> Any:
        contract = self._contracts.get(symbol)
        if contract is None:
            import ib_async

            stock = ib_async.Stock(symbol, "SMART", "USD")
            [qualified] = self.session.call(self.session.ib.qualifyContractsAsync(stock))
            if qualified is None:
                raise ConfigError(f"IBKR knows no stock {symbol!r} on SMART in USD")
            contract = self._contracts[symbol] = qualified
        return contract

    def submit(self, order: Order, account: AccountSnapshot) -> str | None:
        import ib_async

        if not self.session.connected.is_set():
            return "not connected to IBKR (reconnecting); the order was not sent"
        intent = order.intent
        action = "BUY" if intent.side is Side.BUY else "SELL"
        quantity = float(intent.quantity)
        if intent.type is OrderType.LIMIT:
            ib_order: Any = ib_async.LimitOrder(action, quantity, float(intent.limit_price or 0))
        elif intent.type is OrderType.STOP:
            ib_order = ib_async.StopOrder(action, quantity, float(intent.stop_price or 0))
        else:
            ib_order = ib_async.MarketOrder(action, quantity)
        ib_order.orderRef = order.client_order_id
        ib_order.account = self.session.account
        cid = order.client_order_id

        def place() -> None:
            # On the session's loop, in one go: IBKR's answers (a fill can come at once)
            # are read only after the order is known here.
            trade = self.session.ib.placeOrder(contract, ib_order)
            self._orders[cid] = order
            self._trades[cid] = trade
            self._by_ib_id[trade.order.orderId] = cid
            self._working[cid] = order

        try:
            contract = self._contract(intent.symbol)
            self.session.run(place)
        except ConfigError as exc:
            return str(exc)
        except (ConnectionError, OSError, TimeoutError) as exc:
            return f"IBKR did not take the order ({type(exc).__name__}); it was not sent"
        return None

    def on_bar(self, bar: Bar) -> Sequence[Fill]:
        return ()  # fills are pushed (poll)

    def poll(self) -> Sequence[Fill | OrderUpdate]:
        # Executions whose commission report never came: booked with none after 2 s.
        def stale() -> None:
            now = time.monotonic()
            old = [k for k, (_, at) in self._pending_fills.items() if now - at > 2.0]
            for key in old:
                self._emit_fill(self._pending_fills.pop(key)[0], 0.0)
            for ref in [r for r, at in self._quiet_cancels.items() if now - at > 0.5]:
                del self._quiet_cancels[ref]
                self._tell(OrderUpdate(ref, "cancelled", "cancelled by IBKR"))

        self.session.run(stale)
        news: list[Fill | OrderUpdate] = []
        while self._news:
            news.append(self._news.popleft())
        return news

    def working_symbols(self) -> frozenset[str]:
        return frozenset(order.symbol for order in list(self._working.values()))

    def cancel(self, client_order_id: str) -> Order | None:
        order = self._working.pop(client_order_id, None)
        if order is None:
            return None
        self._cancelling.add(client_order_id)
        trade = self._trades[client_order_id]
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            self.session.run(lambda: self.session.ib.cancelOrder(trade.order))
        return order

    def cancel_strategy(self, strategy: str) -> Sequence[Order]:
        ids = [
            cid
            for cid, order in list(self._working.items())
            if order.strategy == strategy and not order.liquidation
        ]
        return [o for o in (self.cancel(cid) for cid in ids) if o is not None]

    def cancel_all(self, reason: str) -> Sequence[Order]:
        if not self.cancel_on_stop:
            self.log.info("orders_left_working", orders=len(self._working), reason=reason)
            return ()
        return [o for o in (self.cancel(cid) for cid in list(self._working)) if o is not None]

    def close(self) -> None:
        if not getattr(self, "_closed", False):
            self._closed = True
            self.session.release()


# ------------------------------------------------------------------------------ source


class IBKRSource:
    """Warm-up bars from IBKR's history, then live bars built from its 5-second bars,
    in time order across symbols, until the run is stopped."""

    def __init__(
        self,
        session: Session,
        symbols: tuple[str, ...],
        bar_seconds: int,
        bar_size: str,
        warmup: str,
        stop: threading.Event,
    ) -> None:
        self.session = session
        self._symbols = symbols
        self.bar_seconds = bar_seconds
        self.bar_size = bar_size
        self.warmup = warmup
        self.stop = stop
        self.description = f"ibkr:{','.join(symbols)} ({bar_size} bars)"
        self.log = get_logger("system", source="ibkr")
        self._queue: queue.Queue[Bar] = queue.Queue()
        self._subscriptions: list[Any] = []
        self._last_bucket: dict[str, int] = {}
        self._last_five: dict[str, int] = {}  # each symbol's latest 5-second bar (epoch s)
        self._chosen: tuple[str, ...] = symbols
        self._building: dict[str, list[Any]] = {}
        session.on_reconnect.append(self._resubscribe)

    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    def bars(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Bar]:
        chosen = select_symbols(symbols, self._symbols, self.description)
        self._chosen = tuple(chosen)
        history = self._history(chosen)
        yield from history
        self.session.call(self._subscribe(chosen))
        yield from self._live(chosen, history[-1].ts if history else None)

    # -- history (warm-up) ---------------------------------------------------------------

    def _history(self, symbols: Sequence[str]) -> list[Bar]:
        if not self.warmup:
            return []
        bars: list[Bar] = []
        for symbol in symbols:  # serialised: pacing
            bars.extend(self._history_of(symbol))
        bars.sort(key=lambda b: (b.ts, b.symbol))
        now = datetime.now(UTC)
        return [b for b in bars if b.ts <= now]

    def _history_of(self, symbol: str) -> list[Bar]:
        import ib_async

        session = self.session
        contract = ib_async.Stock(symbol, "SMART", "USD")
        delay = 1.0
        for _ in range(6):
            before = len(session.errors)
            data = session.call(
                session.ib.reqHistoricalDataAsync(
                    contract,
                    endDateTime="",
                    durationStr=self.warmup,
                    barSizeSetting=self.bar_size,
                    whatToShow="TRADES",
                    useRTH=False,
                    formatDate=2,
                    timeout=30,
                ),
                timeout=40,
            )
            paced = any(code in PACING_CODES for _, code, _ in list(session.errors)[before:])
            if data or not paced:
                return [self._bar(symbol, item, self.bar_seconds) for item in data or ()]
            self.log.warning("ibkr_pacing", symbol=symbol, retry_in=delay)
            time.sleep(delay)
            delay *= 2
        raise ConfigError(f"IBKR kept refusing historical data for {symbol} (pacing); try later")

    def _bar(self, symbol: str, item: Any, seconds: int) -> Bar:
        moment = item.date
        if not isinstance(moment, datetime):
            moment = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
        ts = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) + timedelta(
            seconds=seconds
        )  # a bar's time is its close
        return Bar(
            symbol=symbol,
            ts=ts,
            open=float(item.open),
            high=float(item.high),
            low=float(item.low),
            close=float(item.close),
            volume=float(item.volume) if item.volume is not None and item.volume >= 0 else None,
        )

    # -- live ----------------------------------------------------------------------------

    async def _subscribe(self, symbols: Sequence[str]) -> None:
        import ib_async

        ib = self.session.ib
        for symbol in symbols:
            bars = ib.reqRealTimeBars(ib_async.Stock(symbol, "SMART", "USD"), 5, "TRADES", False)
            bars.updateEvent += lambda bars, has_new, symbol=symbol: self._five_seconds(
                symbol, bars, has_new
            )
            self._subscriptions.append(bars)

    async def _resubscribe(self) -> None:
        self._subscriptions.clear()
        await self._subscribe(self._chosen)

    def _five_seconds(self, symbol: str, bars: Any, has_new: bool) -> None:
        if not has_new or not bars:
            return
        item = bars[-1]
        moment = item.time if item.time.tzinfo else item.time.replace(tzinfo=UTC)
        stamp = int(moment.timestamp())
        previous = self._last_five.get(symbol)
        if previous is not None and stamp <= previous:
            # Seen already (a feed replaying after a reconnect): never twice to a strategy.
            self.session.late += 1
            self.log.warning("late_bar", symbol=symbol, ts=moment.isoformat(), size="5s")
            return
        if previous is not None and stamp > previous + 5:
            missing = (stamp - previous) // 5 - 1
            self.session.gaps += missing
            self.log.warning(
                "bar_gap",
                symbol=symbol,
                missing_5s_bars=missing,
                after=datetime.fromtimestamp(previous, UTC).isoformat(),
                before=moment.isoformat(),
            )
        self._last_five[symbol] = stamp
        bucket = stamp // self.bar_seconds
        last = self._last_bucket.get(symbol)
        if last is not None and bucket != last and self._building.get(symbol):
            self._emit(symbol, last)
        if last is None or bucket != last:
            self._building[symbol] = []
        self._building.setdefault(symbol, []).append(item)
        self._last_bucket[symbol] = bucket
        if (int(moment.timestamp()) + 5) % self.bar_seconds == 0:  # the bucket is complete
            self._emit(symbol, bucket)

    def _emit(self, symbol: str, bucket: int) -> None:
        items = self._building.pop(symbol, [])
        if not items:
            return
        end = datetime.fromtimestamp((bucket + 1) * self.bar_seconds, UTC)
        volumes = [float(i.volume) for i in items if i.volume is not None and i.volume >= 0]
        self._queue.put(
            Bar(
                symbol=symbol,
                ts=end,
                open=float(items[0].open_),
                high=max(float(i.high) for i in items),
                low=min(float(i.low) for i in items),
                close=float(items[-1].close),
                volume=sum(volumes) if volumes else None,
            )
        )

    def _live(self, symbols: Sequence[str], after: datetime | None) -> Iterator[Bar]:
        """Completed bars in (time, symbol) order: a bar is released once every symbol
        has reached its time, or one bar length after it closed."""
        waiting: list[tuple[datetime, str, Bar]] = []
        reached: dict[str, datetime] = {}
        released = after  # the time of the last bar handed on: time never runs backwards
        seen: set[tuple[datetime, str]] = set()
        while not self.stop.is_set():
            try:
                bar = self._queue.get(timeout=0.2)
            except queue.Empty:
                bar = None
            if bar is not None:
                key = (bar.ts, bar.symbol)
                if (released is not None and bar.ts < released) or key in seen:
                    self.session.late += 1
                    self.log.warning("late_bar", symbol=bar.symbol, ts=bar.ts.isoformat())
                elif after is None or bar.ts > after:
                    seen.add(key)
                    heapq.heappush(waiting, (bar.ts, bar.symbol, bar))
                    reached[bar.symbol] = max(reached.get(bar.symbol, bar.ts), bar.ts)
            now = datetime.now(UTC)
            while waiting:
                ts = waiting[0][0]
                everyone = len(reached) == len(symbols) and min(reached.values()) >= ts
                if not (everyone or now - ts > timedelta(seconds=self.bar_seconds)):
                    break
                released = ts
                seen = {k for k in seen if k[0] >= ts}
                yield heapq.heappop(waiting)[2]

    def close(self) -> None:
        if not getattr(self, "_closed", False):
            self._closed = True
            self.session.release()


WORKING_STATUSES = frozenset(
    {"PendingSubmit", "ApiPending", "PreSubmitted", "Submitted", "PendingCancel"}
)


def _broker_order(ref: str, trade: Any, *, completed: bool) -> BrokerOrder:
    """What IBKR says about one order: working, filled, cancelled or rejected."""
    status = trade.orderStatus.status
    reported = trade.orderStatus.filled or getattr(trade.order, "filledQuantity", 0) or 0
    filled = _shares(reported if 0 <= reported < 1e300 else 0)  # UNSET_DOUBLE: none
    # ib_async keeps a completed order's status but drops its orderState (and the
    # completedStatus text with it), so there is no reason to report beyond the status.
    reason = None
    if status == "Filled":
        return BrokerOrder(ref, "filled", filled)
    if status in WORKING_STATUSES and not completed:
        return BrokerOrder(ref, "working", filled)
    if status == "Inactive":
        return BrokerOrder(ref, "rejected", filled, reason or "IBKR made the order Inactive")
    return BrokerOrder(ref, "cancelled", filled, reason or f"IBKR reports it {status or 'done'}")


def _shares_signed(value: Any) -> Decimal:
    number = float(value)
    return -_shares(-number) if number < 0 else _shares(number)


def _shares(value: Any) -> Decimal:
    """IBKR's share counts are floats (10.0); Bastion's are exact (10, or 0.5 for
    fractional shares)."""
    exact = Decimal(repr(float(value)))
    whole = exact.to_integral_value()
    return whole if exact == whole else exact.normalize()


def _bar_size(text: str) -> tuple[int, str]:
    found = BAR_SIZES.get(text)
    if found is None:
        raise ConfigError(f"bar={text!r} is not a bar size; use one of {', '.join(BAR_SIZES)}")
    return found


def broker_factory(spec: str, context: PluginContext) -> IBKRBroker:
    _context_required(context, "--broker ibkr")
    options = _options(spec, ("via", "on_stop"), "--broker ibkr")
    via = options.get("via", "gateway")
    if via not in ("gateway", "tws"):
        raise ConfigError(f"--broker ibkr:via={via!r}: use via=gateway or via=tws")
    on_stop = options.get("on_stop", "cancel")
    if on_stop not in ("cancel", "leave"):
        raise ConfigError(f"--broker ibkr:on_stop={on_stop!r}: use on_stop=cancel or leave")
    session = session_for(context, _port(context, via))
    return IBKRBroker(session, cancel_on_stop=on_stop == "cancel")


def source_factory(spec: str, context: PluginContext) -> IBKRSource:
    _context_required(context, "--source ibkr")
    options = _options(spec, ("symbols", "bar", "warmup", "via"), "--source ibkr")
    symbols = tuple(s.strip() for s in options.get("symbols", "").split("|") if s.strip())
    if not symbols:
        raise ConfigError(
            "--source ibkr needs symbols, e.g. --source 'ibkr:symbols=AAPL|MSFT,bar=1m'"
        )
    seconds, size = _bar_size(options.get("bar", "1m"))
    session = session_for(context, _port(context, options.get("via", "gateway")))
    return IBKRSource(
        session, tuple(sorted(set(symbols))), seconds, size, options.get("warmup", "1 D"),
        context.stop,
    )  # fmt: skip


@hookimpl
def register_brokers() -> list[Offer[IBKRBroker]]:
    return [
        Offer(
            "ibkr",
            broker_factory,
            description="Interactive Brokers through TWS or IB Gateway (ib_async)",
            options="via=gateway|tws, on_stop=leave|cancel",
        )
    ]


@hookimpl
def register_sources() -> list[Offer[IBKRSource]]:
    return [
        Offer(
            "ibkr",
            source_factory,
            description="Interactive Brokers market data: history, then live 5-second bars",
            options="symbols=A|B, bar=1m, warmup=N, via=gateway|tws",
        )
    ]
