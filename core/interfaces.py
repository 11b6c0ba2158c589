"""What broker, source and storage plugins must provide (``typing.Protocol``).

Plugins offer them through the ``register_brokers``, ``register_sources`` and
``register_storages`` hooks (see :mod:`bastion.hookspecs`) as :class:`Offer`
objects whose factory the kernel calls as ``factory(spec, context)``.  Everything
that crosses these interfaces is a plain value type from :mod:`bastion.models` or
this module.  The test suites in :mod:`bastion.testing` check an implementation
against these contracts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

import attrs

from ._errors import ConfigError
from ._secrets import Secrets
from ._settings import EnvironmentSettings
from .models import AccountSnapshot, Bar, Fill, MarginPolicy, Order, Position

if TYPE_CHECKING:
    from .audit import AuditView

__all__ = [
    "AuditCheck",
    "BarSeries",
    "BarStore",
    "Broker",
    "BrokerOrder",
    "BrokerState",
    "EnvironmentSettings",
    "EquityPoint",
    "Offer",
    "OrderUpdate",
    "PluginContext",
    "PushingBroker",
    "ReconcilingBroker",
    "ReconcilingStore",
    "RejectedOrder",
    "RunData",
    "RunInfo",
    "RunRow",
    "Secrets",
    "Source",
    "Store",
    "StoredOrder",
    "StrategyRecord",
    "StrategyRunData",
    "select_symbols",
]

EquityPoint = tuple[datetime, float]


# --------------------------------------------------------------------------- sources


def select_symbols(
    requested: Sequence[str] | str | None, available: Sequence[str], description: str
) -> tuple[str, ...]:
    """The symbols a source's ``bars()``/``count()`` were asked for, sorted and unique
    (``None``: all of ``available``); an unknown one is a one-line :class:`ConfigError`
    naming the source (``description``) and what it has."""
    if requested is None:
        return tuple(available)
    if isinstance(requested, str):  # a lone "SPY" would otherwise be iterated per letter
        requested = (requested,)
    for symbol in requested:
        if symbol not in available:
            raise ConfigError(
                f"symbol {symbol!r} is not in {description}; it has: {', '.join(available)}"
            )
    return tuple(sorted(set(requested)))


@runtime_checkable
class Source(Protocol):
    """Market data.  Its :class:`Offer`'s factory gets the text after ``scheme:`` in
    ``--source scheme:spec`` and must validate its data *before* returning (raise
    :class:`bastion.BastionError` with a one-line message naming the file and line),
    so a run never starts on bad data.
    """

    description: str  # e.g. "csv:/path/to/folder (5 symbols)"

    def symbols(self) -> tuple[str, ...]:
        """Every symbol this source has, sorted."""
        ...

    def bars(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Bar]:
        """Bars for ``symbols`` (all if ``None``) with ``start <= ts <= end``.

        Ordered by ``(ts, symbol)`` across symbols; each timestamp at most once
        per symbol.  Lazily produced where possible.

        Optional: a source that knows how many bars ``bars()`` will yield
        without producing them may also define ``count(symbols, start, end)
        -> int | None`` with the same arguments; the progress bar then shows a
        total and the time left.
        """
        ...


# --------------------------------------------------------------------------- context


@attrs.frozen
class PluginContext:
    """Everything a broker, source or storage factory is given besides its spec.

    ``environment`` (``development``, ``paper`` or ``live``) and its data directory
    (the database, logs and state of that environment); for paper and live runs also
    the environment's :class:`EnvironmentSettings` (host, ports, client-id range,
    approved account, each with where it came from) and the :class:`Secrets` lookup
    (account ids, API keys: never from a strategy, never logged); whether this is a
    paper or live run rather than a backtest or a read-only command; the event
    that is set when the operator stops the run; and ``open_store``, which opens
    (anew, for the caller to close) the store the run or command uses — its
    ``--storage`` — so a source can read what that store keeps (``store:`` reads
    its bars); ``None`` where no storage was chosen.
    """

    environment: str
    data_dir: Path
    settings: EnvironmentSettings | None = None
    secrets: Secrets | None = None
    live: bool = False
    stop: threading.Event = attrs.field(factory=threading.Event)
    open_store: Callable[[], Store] | None = None


_T_co = TypeVar("_T_co", covariant=True)


def _environments(value: Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    return frozenset(value)


@attrs.frozen
class Offer(Generic[_T_co]):
    """A broker, source or storage a plugin offers through ``register_brokers``,
    ``register_sources`` or ``register_storages``.

    The one factory contract, for all three kinds: the kernel calls
    ``factory(spec, context)`` — ``spec`` is the text after ``NAME:`` in
    ``--broker NAME:SPEC`` / ``--source NAME:SPEC`` / ``--storage NAME:SPEC``
    (``""`` when there is none) and ``context`` a :class:`PluginContext` — and the
    factory returns the object, having validated ``spec`` (a one-line
    :class:`bastion.ConfigError` naming the value and what to do otherwise).

    ``description`` and ``options`` (what ``SPEC`` may say) are shown by ``bastion
    plugins``; ``environments``, when given, are the only environments the offer may
    be used in (``--env``), e.g. ``{"paper", "live"}`` for a broker that needs an
    account.
    """

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    factory: Callable[[str, PluginContext], _T_co]
    description: str = ""
    options: str = ""
    environments: frozenset[str] | None = attrs.field(default=None, converter=_environments)

    def allows(self, environment: str) -> bool:
        """Whether the offer may be used in ``environment``."""
        return self.environments is None or str(environment) in self.environments

    def create(self, spec: str, context: PluginContext) -> _T_co:
        """Call the factory: ``factory(spec, context)``."""
        return self.factory(spec, context)


# --------------------------------------------------------------------------- brokers


@attrs.frozen
class OrderUpdate:
    """A live broker's news about an order it had accepted: ``rejected`` (e.g. IBKR's
    201) or ``cancelled`` by the broker itself, with its reason."""

    client_order_id: str
    status: str  # "rejected" or "cancelled"
    reason: str


@runtime_checkable
class Broker(Protocol):
    """Executes orders.  Its :class:`Offer`'s factory gets the text after ``name:`` in
    ``--broker name:spec`` (broker options) and validates it.

    The engine's core decides and its driver calls: :meth:`submit` for each
    order that passed the limits and risk checks (after the order is stored),
    :meth:`on_bar` for every bar of a symbol with orders the broker accepted and
    still works (the simulator fills them there), the cancels when a strategy is
    quarantined, margin-called or halted, and :meth:`cancel_all` when the run
    ends.  A broker that pushes its news (a live one) is a :class:`PushingBroker`.
    """

    name: str
    #: The margin policy the kernel enforces for this broker's accounts (the
    #: simulator's), or ``None`` where the broker liquidates by itself (IBKR).
    margin: MarginPolicy | None

    def submit(self, order: Order, account: AccountSnapshot) -> str | None:
        """Accept the order (return ``None``) or reject it (return a one-line reason)."""
        ...

    def on_bar(self, bar: Bar) -> Sequence[Fill]:
        """Fills for working orders that this new price allows (never at an earlier price)."""
        ...

    def working_symbols(self) -> frozenset[str]:
        """Symbols with working orders, as the broker knows them (reported when a paper
        or live run ends with orders left working)."""
        ...

    def cancel_all(self, reason: str) -> Sequence[Order]:
        """Cancel every working order; return them."""
        ...

    def cancel(self, client_order_id: str) -> Order | None:
        """Cancel one working order; return it, or ``None`` if it is not working."""
        ...

    def cancel_strategy(self, strategy: str) -> Sequence[Order]:
        """Cancel the working orders of one strategy (quarantine, margin call) and return
        them; its margin-call liquidations (``liquidation=True``) keep working."""
        ...


@runtime_checkable
class PushingBroker(Broker, Protocol):
    """A broker that pushes news (a live broker): paper and live runs hand what
    :meth:`poll` returns to the engine as it arrives, not at the next bar."""

    def poll(self) -> Sequence[Fill | OrderUpdate]:
        """Fills and order updates received since the last call (the live driver asks
        when woken and at every tick).  A fill carries Bastion's client order id
        (``order_id``; for an order Bastion did not place, a broker id) and the
        broker's execution id, so a duplicate report is booked once."""
        ...

    def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` (from any thread, without blocking) when news arrive."""
        ...

    def close(self) -> None:
        """Disconnect (the run has ended, or never started)."""
        ...


@attrs.frozen
class BrokerOrder:
    """What the broker says about one of Bastion's orders (matched by the client order
    id it was sent with): ``working``, ``filled``, ``cancelled`` or ``rejected``, how much
    of it filled, and the broker's reason when it ended unfilled."""

    client_order_id: str
    status: str
    filled: Decimal
    reason: str | None = None


@attrs.frozen
class BrokerState:
    """What the broker holds, as one consistent snapshot: assembled by ``bastion`` (the
    start-up reconciliation) from a :class:`ReconcilingBroker`'s four calls, taken again
    when an execution landed while they were being asked.  ``orders`` are the completed
    and the open orders by client order id (an open one wins when the broker reports
    both), ``executions`` the executions (as fills; ``order_id`` is the client order id
    the order carried, or a broker id for an order Bastion did not place) and
    ``positions`` the account's signed quantities by symbol."""

    orders: Mapping[str, BrokerOrder]
    executions: Sequence[Fill]
    positions: Mapping[str, Decimal]


@runtime_checkable
class ReconcilingBroker(Broker, Protocol):
    """A broker that can be reconciled with at start-up (paper and live runs need one).

    Each call asks the broker afresh (not a cache a disconnect may have left stale) and
    raises :class:`~bastion.ConfigError` when it cannot (not connected).  The calls are
    separate requests, so an execution may land between two of them; the
    reconciliation reads :meth:`executions` before and after the others and asks again
    when they differ, so a broker need not make them consistent with each other."""

    def open_orders(self) -> Mapping[str, BrokerOrder]:
        """The orders working at the broker, by the client order id they were sent with
        (IBKR: ``orderRef``), each with status ``working`` and how much of it filled.
        Orders without a client order id (not placed by Bastion) are left out."""
        ...

    def completed_orders(self) -> Mapping[str, BrokerOrder]:
        """The orders the broker reports done, by client order id: ``filled`` (with the
        quantity filled), ``cancelled`` or ``rejected`` (with the broker's reason when it
        gives one).  As far back as the broker keeps them (IBKR: the current day)."""
        ...

    def executions(self) -> Sequence[Fill]:
        """The executions the broker still reports (IBKR: the current day's), as fills:
        ``order_id`` is the client order id the order carried, or a broker id for an
        order Bastion did not place; ``exec_id`` is the broker's execution id, always
        set (an execution is stored once by it)."""
        ...

    def positions(self) -> Mapping[str, Decimal]:
        """The account's positions: signed quantities (negative when short) by symbol;
        a flat symbol may be left out or be zero."""
        ...

    def cancel_order(self, client_order_id: str) -> None:
        """Ask the broker to cancel an order by its client order id (one a previous run
        placed); the outcome shows in later calls (:meth:`completed_orders` holds it
        ``cancelled``, or ``filled`` if it filled first)."""
        ...


# --------------------------------------------------------------------------- storage


@attrs.frozen
class RunInfo:
    """One run, as stored before it starts."""

    run_id: str
    kind: str  # "backtest", "paper", "live"
    environment: str
    started: datetime
    bastion_version: str
    config: Mapping[str, Any]  # source, broker, storage, cash, dates, params ... (JSON-able)


@attrs.frozen
class StrategyRecord:
    """A strategy that took part in a run: the exact code and who vouched for it."""

    name: str
    sha256: str
    signer: str | None  # key id; None when admitted unsigned (development only)
    signer_name: str | None
    whitelist_version: int | None
    unsigned: bool
    params: Mapping[str, Any]


@attrs.frozen
class RunRow:
    """One line of ``bastion runs``."""

    run_id: str
    kind: str
    environment: str
    status: str  # running, completed, failed, interrupted
    started: datetime
    finished: datetime | None
    strategies: tuple[str, ...]
    error: str | None
    #: strategy name -> its stored quarantine reason ("KIND: HOOK: REASON"), if any
    quarantined: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class RejectedOrder:
    """An order refused by a limit, a risk check or the broker, as stored."""

    created: datetime
    symbol: str
    side: str
    quantity: Decimal
    reason: str | None


@attrs.frozen
class StrategyRunData:
    """Everything a report shows for one strategy of a run, read back from the store."""

    record: StrategyRecord
    metrics: Mapping[str, float | int | None]
    equity: Sequence[EquityPoint]  # possibly down-sampled for storage
    positions: Sequence[Position]  # at the end of the run
    orders: int
    fills: int
    quarantined: str | None  # why the strategy was stopped, if it was
    rejected: int = 0  # orders refused by a limit, a risk check or the broker
    last_rejection: str | None = None  # the reason given for the latest of them
    executions: Sequence[Fill] = ()  # every fill of the run, in booking order
    # Calendar-month ("2024-03") and calendar-year ("2024") returns, from the full curve.
    period_returns: Mapping[str, float | None] = attrs.Factory(dict)
    rejections: Sequence[RejectedOrder] = ()  # every rejected order, oldest first


@attrs.frozen
class RunData:
    """One stored run read back whole: its row, what it started with, each strategy's
    results and the buy-and-hold benchmark."""

    row: RunRow
    info: RunInfo
    strategies: Sequence[StrategyRunData]
    # Buy-and-hold of the run's symbols (equal weights, bought at each one's first
    # close), valued like the equity curves and down-sampled the same way.
    benchmark: Sequence[EquityPoint] = ()


@attrs.frozen
class AuditCheck:
    """The outcome of checking the audit log: ``ok``, how many records, the first broken
    record's id and why."""

    ok: bool
    records: int
    first_broken: int | None  # id of the first record that fails the chain
    reason: str | None


@runtime_checkable
class Store(Protocol):
    """Persistence for runs.  Its :class:`Offer`'s factory gets the text after ``name:``
    in ``--storage name:spec`` (e.g. a database URL; ``""`` for the default, a
    database in ``context.data_dir``).

    Order rows are written (``record_order``) before the order is submitted.
    ``audit`` appends to a hash-chained, append-only log whose records the kernel
    seals (:func:`bastion.audit.seal`); ``audit_view`` hands the kernel one
    consistent snapshot to verify (:func:`bastion.audit.verify`).

    The contract every store keeps (``bastion.testing.StoreConformance`` checks it):

    - everything reads back exactly: decimals as the same ``Decimal`` (trailing
      zeros kept), times as aware UTC datetimes to the microsecond;
    - a write naming an unknown run, order or strategy, a second run or order with
      an id already stored, a naive timestamp, an unknown order status, or a second
      ``finish_run`` of a finished run raises ``ValueError`` (or a
      :class:`bastion.BastionError`) and stores nothing;
    - ``load_run`` takes a run id or a unique prefix of one, and raises a one-line
      :class:`bastion.ConfigError` for an unknown or ambiguous one;
    - a fill is recorded only for an order already recorded in the same run;
    - nothing offers to change or delete a finished run or an audit record.
    """

    location: str  # shown to the user, e.g. the database path (never a password)

    def begin_run(self, run: RunInfo, strategies: Sequence[StrategyRecord]) -> None: ...

    def record_order(self, run_id: str, order: Order, status: str, reason: str | None) -> None: ...

    def update_order(
        self,
        run_id: str,
        client_order_id: str,
        status: str,
        reason: str | None,
        filled: Decimal,
    ) -> None: ...

    def record_fill(self, run_id: str, fill: Fill, order: Order) -> None: ...

    def record_equity(self, run_id: str, strategy: str, points: Sequence[EquityPoint]) -> None: ...

    def record_benchmark(self, run_id: str, points: Sequence[EquityPoint]) -> None: ...

    def record_period_returns(
        self, run_id: str, strategy: str, returns: Mapping[str, float | None]
    ) -> None: ...

    def record_positions(
        self, run_id: str, strategy: str, positions: Sequence[Position]
    ) -> None: ...

    def record_result(
        self,
        run_id: str,
        strategy: str,
        metrics: Mapping[str, float | int | None],
        quarantined: str | None,
    ) -> None: ...

    def finish_run(self, run_id: str, status: str, error: str | None) -> None: ...

    def audit(self, event: str, payload: Mapping[str, Any]) -> None:
        """Append a record to the audit log at once, sealed by :func:`bastion.audit.seal`
        under the store's write lock (so concurrent writers chain, never fork)."""
        ...

    def audit_view(self) -> AbstractContextManager[AuditView]:
        """A consistent read-only snapshot (one read transaction) for
        :func:`bastion.audit.verify`, which alone checks the chain and the runs."""
        ...

    def list_runs(self) -> list[RunRow]: ...

    def load_run(self, run_id: str, *, details: bool = True) -> RunData:
        """The run (``run_id`` or a unique prefix of one).  ``details=False`` leaves each
        strategy's ``executions`` and ``rejections`` empty but keeps their counts and
        the latest rejection's reason (what a summary shows), so a run of millions of
        orders is summed up without reading them all."""
        ...

    def close(self) -> None: ...


@attrs.frozen
class StoredOrder:
    """An order as stored: the run that placed it, its status and how much filled."""

    run_id: str
    order: Order
    status: str
    filled: Decimal


@runtime_checkable
class ReconcilingStore(Store, Protocol):
    """A store that paper and live runs can use: it can say what a restart must
    reconcile with the broker, and keep a run open while its orders still work."""

    def unsettled_runs(self, kind: str) -> list[tuple[str, str]]:
        """Runs of ``kind`` (``paper``, ``live``, ...) that ended without settling their
        orders, oldest first, as ``(run id, status)``: killed (``running``, its process
        gone) or ``stopped`` with orders left working at the broker."""
        ...

    def open_orders(self, run_id: str) -> list[StoredOrder]:
        """The run's orders not in a final status (filled, rejected, cancelled)."""
        ...

    def execution_ids(self) -> set[str]:
        """Every broker execution id stored (a fill is stored once across runs)."""
        ...

    def book(self, kind: str) -> list[tuple[str, Fill]]:
        """Every fill of every run of ``kind``, oldest first, with its strategy's name:
        what each strategy holds in that environment's account."""
        ...

    def stop_run(self, run_id: str, reason: str) -> None:
        """End a run whose orders still work at the broker: ``stopped``, not finished;
        the next run's reconciliation settles and finishes it."""
        ...


# --------------------------------------------------------------------------- bar store


@attrs.frozen
class BarSeries:
    """One series a :class:`BarStore` keeps: a symbol's bars at one interval, the first
    and last bar's close time (UTC) and how many bars there are."""

    symbol: str
    interval: str
    first: datetime
    last: datetime
    count: int


@runtime_checkable
class BarStore(Protocol):
    """Historical bars kept by a store (``bastion data import`` writes them, the ``store``
    source reads them): a storage plugin's store may also implement this.

    A series is identified by ``(symbol, interval)``; ``interval`` is a label that
    :func:`bastion.bars.parse_interval` accepts (``"1m"``, ``"5m"``, ``"1h"``, ``"1d"``),
    stored as given.  A bar is identified by ``(symbol, interval, ts)``.  Every value
    reads back exactly as it went in: ``ts`` as the same UTC instant (microseconds
    kept), prices and volume as the same floats (``None`` volume stays ``None``).
    """

    location: str  # shown to the user, e.g. the database path

    def write_bars(self, interval: str, bars: Iterable[Bar]) -> int:
        """Store ``bars`` (any symbols, any order) as bars of ``interval`` and return how
        many were given.

        An upsert by ``(symbol, interval, ts)``: a bar already stored is replaced, so
        writing the same bars again changes nothing.  All or nothing: the bars are
        consumed lazily and written in batches inside one transaction, and if iterating
        ``bars`` raises (bad input half-way) or a write fails, nothing of this call is
        stored and the exception propagates."""
        ...

    def read_bars(
        self,
        symbols: Sequence[str],
        interval: str,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Bar]:
        """The stored bars of ``interval`` for ``symbols`` with ``start <= ts <= end``
        (``None``: unbounded), ordered by ``(ts, symbol)``, streamed (never all in memory
        at once).  A symbol with no such bars yields none; it is not an error."""
        ...

    def bar_series(self) -> list[BarSeries]:
        """Every stored series, ordered by symbol, then interval (as text)."""
        ...
