"""Testing strategies and plugins with pytest: Bastion's pytest plugin (``bastion.testing``).

Installed with Bastion through the ``pytest11`` entry point, so pytest loads it in any
environment that holds ``bastion-kernel``; nothing needs importing for the fixture.

* :func:`run_strategy` — and the ``bastion_run`` fixture, the same thing in a
  folder under pytest's ``tmp_path`` — runs one strategy **file** over bars you give
  (:func:`make_bars` builds simple ones) the way ``bastion backtest`` does, and
  returns a :class:`StrategyResult` to assert on: its orders, fills, rejections,
  equity curve, positions, metrics and log records.  The file goes through the
  real door: it is copied into a fresh workspace, signed there with a throw-away
  key that only that workspace trusts, verified by the strict gate (no
  ``--allow-unsigned``), loaded in a sandboxed worker process and run by the
  same engine, ``sim`` broker and store as a backtest.  ``sandboxed=False`` runs
  it inside the test's own process instead (faster, unprotected, as
  ``bastion backtest --in-process``).  Installed plugins (the ``bastion``
  entry-point group) take part as they would in ``bastion backtest``, so a risk
  plugin's ``check_order`` vetoes orders here too.
* Conformance suites: base classes of tests that check a plugin's object against
  its protocol in :mod:`bastion.interfaces`.  Subclass one in a test module (a
  ``Test...`` class) and say how to make the object; pytest runs every check.

  - :class:`SourceConformance` — a :class:`~bastion.interfaces.Source`: return it
    from ``make_source()``.
  - :class:`StoreConformance` — a :class:`~bastion.interfaces.Store` (and a
    :class:`~bastion.interfaces.ReconcilingStore`, when it is one): override the
    ``store`` fixture (a new, empty store per test) and ``reopen(store)`` (close it
    and open the same data again) to have durability checked too.  The built-in
    SQLite store runs the same suite.
  - :class:`BrokerConformance` — a :class:`~bastion.interfaces.Broker` (and a
    :class:`~bastion.interfaces.PushingBroker` or
    :class:`~bastion.interfaces.ReconcilingBroker`, when it is one): override the
    ``broker`` fixture (a new broker on a flat account per test) and, for a broker
    not driven by bars, ``trade(broker, price)`` (move its market) and
    ``reject_next_order(broker)``.  The simulator and the IBKR broker (against a
    test gateway) run the same suite.

Everything heavy (the kernel, the sandbox, the store) is imported only when a
strategy is run, so loading the plugin costs a test session nothing.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import attrs

from ._errors import ConfigError
from .models import AccountSnapshot, Bar, Fill, Order, Position

if TYPE_CHECKING:
    from .interfaces import (
        AuditCheck,
        Broker,
        OrderUpdate,
        PushingBroker,
        ReconcilingBroker,
        ReconcilingStore,
        RunInfo,
        Source,
        Store,
        StrategyRecord,
    )

try:  # the fixture needs pytest; the helpers below do not
    import pytest
except ImportError:  # pragma: no cover - pytest is part of the [test] extra
    pytest = None  # type: ignore[assignment]

__all__ = [
    "BrokerConformance",
    "OrderRecord",
    "SourceConformance",
    "StoreConformance",
    "StrategyQuarantined",
    "StrategyResult",
    "bastion_run",
    "make_bars",
    "run_strategy",
]

_SOURCE = "bastion.testing"  # the scheme of the bars handed to run_strategy
_KEY_NAME = "bastion-testing"
DEFAULT_START = datetime(2024, 1, 2, 21, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- results


@attrs.frozen
class OrderRecord:
    """One order the strategy asked for that became an order, as it ended.

    ``status`` is ``"filled"``, ``"rejected"`` (by an order limit, a risk plugin or
    the broker; ``reason`` says why), ``"cancelled"`` (``reason`` ``"end of run"`` for
    one still working when the bars ran out) or ``"accepted"``; ``filled`` is the
    quantity filled.  The properties below read the order's fields; ``order`` is
    the whole :class:`bastion.models.Order`.
    """

    order: Order
    status: str
    reason: str | None = None
    filled: Decimal = Decimal(0)

    @property
    def symbol(self) -> str:
        """The order's symbol."""
        return self.order.intent.symbol

    @property
    def side(self) -> str:
        """``"buy"`` or ``"sell"`` (a :class:`bastion.models.Side`)."""
        return self.order.intent.side

    @property
    def quantity(self) -> Decimal:
        """The quantity asked for (positive; ``side`` says which way)."""
        return self.order.intent.quantity

    @property
    def signed_quantity(self) -> Decimal:
        """The quantity asked for, negative for a sell."""
        return self.quantity if self.side == "buy" else -self.quantity

    @property
    def type(self) -> str:
        """``"market"``, ``"limit"`` or ``"stop"`` (a :class:`bastion.models.OrderType`)."""
        return self.order.intent.type

    @property
    def limit_price(self) -> Decimal | None:
        """A limit order's limit price."""
        return self.order.intent.limit_price

    @property
    def stop_price(self) -> Decimal | None:
        """A stop order's stop price."""
        return self.order.intent.stop_price

    @property
    def tag(self) -> str:
        """The tag the strategy gave the order."""
        return self.order.intent.tag

    @property
    def created(self) -> datetime:
        """The time of the bar (or fill) the strategy was handling when it asked."""
        return self.order.created


@attrs.frozen
class StrategyResult:
    """What one strategy did over the bars :func:`run_strategy` gave it.

    * ``orders``: every order, in the order asked for (:class:`OrderRecord`);
      ``rejections`` those refused.  An intent asked for in ``on_start`` (refused:
      nothing has a price yet) never becomes an order; the strategy's ``on_reject``
      and ``logs`` see it.
    * ``fills``: every :class:`bastion.models.Fill`, in booking order.
    * ``equity``: ``(time, equity)`` at the close of every timestamp of the bars, as
      stored for the report (runs of more than 5,000 timestamps are down-sampled);
      ``end_equity`` the exact final equity (cash plus positions at the last prices).
    * ``positions``: signed quantity by symbol, for every position still open.
    * ``metrics``: the report's metrics (``total_return``, ``max_drawdown``,
      ``trades``, ...); ``quarantined``: ``"KIND: HOOK: REASON"`` if the strategy was
      stopped; ``logs``: its ``ctx.log`` records (and ``print``s) as dicts.
    * ``workspace``: the run's workspace when it was kept (``directory=`` or the
      ``bastion_run`` fixture), with the store under ``.bastion/development/``.
    """

    name: str
    run_id: str
    sandbox: str  # "sandboxed" or "in-process"
    bars: int
    orders: tuple[OrderRecord, ...]
    fills: tuple[Fill, ...]
    equity: tuple[tuple[datetime, float], ...]
    end_equity: Decimal
    positions: Mapping[str, Decimal]
    metrics: Mapping[str, float | int | None]
    quarantined: str | None
    logs: tuple[Mapping[str, Any], ...]
    workspace: Path | None = None

    @property
    def rejections(self) -> tuple[OrderRecord, ...]:
        """The orders refused by a limit, a risk check or the broker, with their reasons."""
        return tuple(o for o in self.orders if o.status == "rejected")


class StrategyQuarantined(AssertionError):
    """The strategy was quarantined (it raised, missed a deadline, ...): raised by
    :func:`run_strategy` unless ``allow_quarantine=True``, with the stored reason and
    the strategy's traceback.  ``result`` is the :class:`StrategyResult` all the same."""

    def __init__(self, message: str, result: StrategyResult) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------- bars


def make_bars(
    symbol: str,
    closes: Iterable[float],
    *,
    start: datetime = DEFAULT_START,
    step: timedelta = timedelta(days=1),
    volume: float | None = None,
) -> list[Bar]:
    """Bars of ``symbol`` closing at each of ``closes``, one per ``step`` from ``start``.

    Each bar's open, high and low equal its close, so with the ``sim`` broker a
    market order asked for on one bar fills at the next bar's close (plus the
    broker's slippage and commission).  For other shapes build
    :class:`bastion.models.Bar` objects yourself; bars of several symbols may be
    concatenated in any order (:func:`run_strategy` sorts them by time).
    """
    return [
        Bar(symbol, start + i * step, price, price, price, price, volume)
        for i, price in enumerate(float(c) for c in closes)
    ]


class _GivenBars:
    """The bars handed to :func:`run_strategy`, as a :class:`bastion.interfaces.Source`."""

    def __init__(self, bars: Iterable[Bar]) -> None:
        ordered = sorted(bars, key=lambda b: (b.ts, b.symbol))
        for bar in ordered:
            if not isinstance(bar, Bar):
                raise ConfigError(f"run_strategy: {bar!r} is not a bastion.models.Bar")
        for before, after in itertools.pairwise(ordered):
            if (before.ts, before.symbol) == (after.ts, after.symbol):
                raise ConfigError(
                    f"run_strategy: two bars of {after.symbol} at {after.ts.isoformat()}; "
                    "give each symbol one bar per time"
                )
        if not ordered:
            raise ConfigError("run_strategy: no bars given; make_bars() builds some")
        self._bars = ordered
        self._symbols = tuple(sorted({b.symbol for b in ordered}))
        self.description = f"{len(ordered)} given bars of {', '.join(self._symbols)}"

    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    def bars(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Bar]:
        from .interfaces import select_symbols

        wanted = set(select_symbols(symbols, self._symbols, self.description))
        return iter(
            [
                b
                for b in self._bars
                if b.symbol in wanted
                and (start is None or b.ts >= start)
                and (end is None or b.ts <= end)
            ]
        )

    def count(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> int:
        return sum(1 for _ in self.bars(symbols, start, end))


# --------------------------------------------------------------------------- running


class _Harness:
    """The run's own plugin: offers the given bars as a source and records what the
    ``order_event`` and ``fill_event`` observers see (the public hooks any plugin has)."""

    def __init__(self, source: _GivenBars) -> None:
        self.source = source
        self.orders: dict[str, OrderRecord] = {}
        self.fills: list[Fill] = []

    def register_sources(self) -> list[Any]:
        from .interfaces import Offer

        return [
            Offer(
                _SOURCE,
                lambda spec, context: self.source,
                description="the bars given to bastion.testing.run_strategy",
            )
        ]

    def order_event(self, order: Order, status: str, reason: str | None) -> None:
        known = self.orders.get(order.client_order_id)
        filled = known.filled if known is not None else Decimal(0)
        if status == "submitted":
            status = "pending"
        self.orders[order.client_order_id] = OrderRecord(order, status, reason, filled)

    def fill_event(self, fill: Fill) -> None:
        self.fills.append(fill)
        known = self.orders.get(fill.order_id)
        if known is not None:
            self.orders[fill.order_id] = attrs.evolve(known, filled=known.filled + fill.quantity)


def _mark_hooks(harness: type) -> None:
    from . import hookimpl

    for name in ("register_sources", "order_event", "fill_event"):
        hookimpl(getattr(harness, name))


class _LogCapture(logging.Handler):
    """Collects the strategy log stream's records (JSON lines) while a run is on."""

    def __init__(self, strategy: str) -> None:
        super().__init__(logging.DEBUG)
        self.strategy = strategy
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = json.loads(record.getMessage())
        except ValueError:
            return
        if isinstance(data, dict) and data.get("strategy") == self.strategy:
            self.records.append(data)


@contextlib.contextmanager
def _capture_strategy_log(strategy: str) -> Iterator[_LogCapture]:
    from ._logging import LOGGER_NAME, get_logger

    get_logger("strategy")  # configures the streams first, which would drop our handler
    logger = logging.getLogger(f"{LOGGER_NAME}.strategy")
    capture = _LogCapture(strategy)
    logger.addHandler(capture)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)


@contextlib.contextmanager
def _own_data_dir() -> Iterator[None]:
    """``BASTION_DATA_DIR`` would send the throw-away workspace's store and whitelist
    state to the developer's real data directory: set aside for the run."""
    saved = os.environ.pop("BASTION_DATA_DIR", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["BASTION_DATA_DIR"] = saved


def _param_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_strategy(
    path: str | os.PathLike[str],
    bars: Iterable[Bar],
    *,
    cash: Decimal | int | str = 100_000,
    params: Mapping[str, object] | None = None,
    sandboxed: bool = True,
    broker: str = "sim",
    config: str | None = None,
    plugins: Sequence[object] = (),
    entry_points: bool = True,
    allow_quarantine: bool = False,
    directory: str | os.PathLike[str] | None = None,
) -> StrategyResult:
    """Run the strategy file ``path`` over ``bars`` as ``bastion backtest`` would; return
    what it did.

    The file is copied into a fresh workspace (in ``directory``, kept, when given;
    else a temporary folder removed afterwards), signed there with a throw-away key
    that only that workspace trusts, and admitted by the strict verification gate in
    the development environment: a file ``bastion verify`` would refuse is refused
    here too (a :class:`bastion.ConfigError` naming the check).  It then runs in a
    sandboxed worker process (``sandboxed=False``: in this process) with ``cash``,
    ``params`` overriding its ``PARAMS`` (like ``--param``), the broker ``broker``
    (``"sim"``, or ``"sim:commission=0"`` and the like) and the store, the order
    limits and the ``[sandbox]`` settings of a ``bastion.toml`` whose text is
    ``config``.  Installed plugins take part (``entry_points=False``: none) and so
    do the plugin objects in ``plugins`` (a module with ``@bastion.hookimpl``
    functions, say, not yet installed).  A quarantined strategy raises
    :class:`StrategyQuarantined` unless ``allow_quarantine``.
    """
    source_path = Path(path)
    try:
        code = source_path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"run_strategy: cannot read {source_path} ({exc.strerror}); "
            "give the path of a strategy file"
        ) from None
    given = _GivenBars(bars)
    cash = Decimal(str(cash))
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bastion-run-", dir=directory))
    try:
        with _own_data_dir():
            return _run(
                root,
                source_path.name,
                code,
                given,
                cash=cash,
                params=params or {},
                sandboxed=sandboxed,
                broker=broker,
                config=config,
                plugins=plugins,
                entry_points=entry_points,
                allow_quarantine=allow_quarantine,
                keep=directory is not None,
            )
    finally:
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)


def _run(
    root: Path,
    name: str,
    code: bytes,
    given: _GivenBars,
    *,
    cash: Decimal,
    params: Mapping[str, object],
    sandboxed: bool,
    broker: str,
    config: str | None,
    plugins: Sequence[object],
    entry_points: bool,
    allow_quarantine: bool,
    keep: bool,
) -> StrategyResult:
    from ._errors import printable
    from ._kernel import Kernel
    from ._loader import Gate, Refusal
    from ._workspace import Workspace
    from .interfaces import PluginContext
    from .runs import BacktestRequest, prepare_backtest
    from .trust import TrustStore, generate_key, sign_strategies

    home = root / "workspace"
    (home / "strategies").mkdir(parents=True)
    (home / "signatures").mkdir()
    (home / "strategies" / name).write_bytes(code)
    if config is not None:
        (home / "bastion.toml").write_text(config)
    workspace = Workspace(home)
    # What signing refuses ('bastion sign' signs nothing 'bastion verify' would refuse),
    # refused in the loader's words; nothing is compiled here.
    checked = Gate(workspace, allow_unsigned=True).check(workspace.strategies / name)
    if isinstance(checked, Refusal):
        raise ConfigError(
            printable(f"strategy {name} is not verified ({checked.status}: {checked.reason})")
        )
    key = generate_key(_KEY_NAME, root / "keys")
    TrustStore.load(workspace.signatures).add(key.path.with_suffix(".pub"))
    sign_strategies(workspace, key, (name,), valid_for=timedelta(days=1))

    kernel = Kernel(entry_points=entry_points)
    for index, plugin in enumerate(plugins):
        if not kernel.pm.is_registered(plugin):
            label = getattr(plugin, "__name__", None) or f"testing-plugin-{index}"
            kernel.register(plugin, str(label), source="bastion.testing")
    _mark_hooks(_Harness)
    harness = _Harness(given)
    kernel.register(harness, _SOURCE, source="bastion.testing")
    request = BacktestRequest(
        strategies=(name,),
        source=_SOURCE,
        broker=broker,
        cash=cash,
        params=tuple(f"{k}={_param_text(v)}" for k, v in params.items()),
        in_process=not sandboxed,
    )
    context = PluginContext("development", workspace.data_dir)
    kernel.startup()
    try:
        with _capture_strategy_log(name) as capture:
            prepared = prepare_backtest(kernel, Gate(workspace), request, "development", context)
            try:
                outcome, store = prepared.run()
            finally:
                prepared.close()
        try:
            stored = store.load_run(outcome.run_id)
        finally:
            store.close()
    finally:
        kernel.shutdown()
    (data,) = stored.strategies
    (summary,) = outcome.strategies
    result = StrategyResult(
        name=name,
        run_id=outcome.run_id,
        sandbox=summary.sandbox,
        bars=outcome.bars,
        orders=tuple(harness.orders.values()),
        fills=tuple(harness.fills),
        equity=tuple((ts, value) for ts, value in data.equity),
        end_equity=summary.equity,
        positions={p.symbol: p.quantity for p in data.positions if p.quantity},
        metrics=dict(data.metrics),
        quarantined=data.quarantined,
        logs=tuple(r for r in capture.records if r.get("run_id") == outcome.run_id),
        workspace=home if keep else None,
    )
    if result.quarantined is not None and not allow_quarantine:
        traceback = next(
            (r.get("traceback") for r in result.logs if r.get("event") == "strategy_traceback"),
            None,
        )
        raise StrategyQuarantined(
            f"{name} was quarantined: {result.quarantined}"
            + (f"\n{traceback}" if traceback else "")
            + "\n(run_strategy(..., allow_quarantine=True) returns the result instead)",
            result,
        )
    return result


def _bastion_run(tmp_path_factory: Any) -> Callable[..., StrategyResult]:
    """Run a strategy file over bars: ``bastion_run(path, bars, **options)`` is
    :func:`run_strategy` with its workspace kept in a fresh folder under pytest's
    temporary directory (``result.workspace``), so a failing test leaves the run's
    store and files to look at."""

    def run(path: str | os.PathLike[str], bars: Iterable[Bar], **options: Any) -> StrategyResult:
        options.setdefault("directory", tmp_path_factory.mktemp("bastion-run"))
        return run_strategy(path, bars, **options)

    return run


bastion_run = _bastion_run if pytest is None else pytest.fixture(name="bastion_run")(_bastion_run)


# --------------------------------------------------------------------------- sources


class SourceConformance:
    """Tests that a :class:`bastion.interfaces.Source` keeps its contract.

    Subclass it in a test module (the name must start with ``Test``) and return a
    new, small source (a few hundred bars) from ``make_source()``::

        from bastion.testing import SourceConformance

        class TestMySource(SourceConformance):
            def make_source(self):
                return MySource.open("fixtures/")

    pytest then runs each ``test_*`` method below against it: ``symbols()`` sorted and
    unique; ``bars()`` yields :class:`bastion.models.Bar` objects of those symbols,
    ordered by ``(ts, symbol)``, each time at most once per symbol; ``start`` and
    ``end`` filter inclusively; ``symbols`` selects (in any order; ``[]`` selects
    none); an unknown symbol is a one-line :class:`bastion.ConfigError` naming it;
    and an optional ``count()`` agrees with ``bars()``.  ``make_source()`` is called
    afresh for every question asked, so a source need not be re-iterable.
    """

    unknown_symbol = "NO-SUCH-SYMBOL"

    def make_source(self) -> Source:
        """Return the source under test (override this)."""
        raise NotImplementedError(
            f"{type(self).__name__}: return the source to check from make_source()"
        )

    # -- helpers ------------------------------------------------------------------------

    def _bars(self, *args: Any, **kwargs: Any) -> list[Bar]:
        return list(self.make_source().bars(*args, **kwargs))

    def _all(self) -> list[Bar]:
        bars = self._bars()
        assert len(bars) >= 2, "make_source() must return a source with at least two bars"
        return bars

    def _times(self) -> list[datetime]:
        return sorted({b.ts for b in self._all()})

    def _windows(self) -> list[tuple[datetime | None, datetime | None]]:
        times = self._times()
        first, last = times[0], times[-1]
        low, high = times[len(times) // 4], times[(3 * len(times)) // 4]
        tick = timedelta(microseconds=1)
        return [
            (low, high),
            (low, None),
            (None, high),
            (low, low),
            (first, last),
            (low + tick, high - tick),
            (last + tick, None),
            (None, first - tick),
            (high, low),
        ]

    # -- symbols ------------------------------------------------------------------------

    def test_is_a_source(self) -> None:
        """The object has what the ``Source`` protocol names, and a description."""
        from .interfaces import Source

        source = self.make_source()
        assert isinstance(source, Source), f"{source!r} lacks description, symbols() or bars()"
        assert isinstance(source.description, str) and source.description.strip(), (
            "description must be a non-empty string (it names the source in messages)"
        )

    def test_symbols_are_sorted_and_unique(self) -> None:
        """``symbols()`` is every symbol, as sorted, unique, non-empty strings."""
        symbols = list(self.make_source().symbols())
        assert symbols, "symbols() is empty"
        assert all(isinstance(s, str) and s for s in symbols), f"not all strings: {symbols!r}"
        assert symbols == sorted(set(symbols)), f"symbols() not sorted and unique: {symbols!r}"

    # -- bars ---------------------------------------------------------------------------

    def test_bars_are_bars_of_its_symbols(self) -> None:
        """Every item ``bars()`` yields is a ``Bar`` of a symbol ``symbols()`` lists."""
        symbols = set(self.make_source().symbols())
        for bar in self._all():
            assert isinstance(bar, Bar), f"bars() yielded {bar!r}, not a bastion.models.Bar"
            assert bar.symbol in symbols, f"bar of {bar.symbol!r}, which symbols() lacks"

    def test_bars_are_ordered_by_time_then_symbol(self) -> None:
        """Bars come in ``(ts, symbol)`` order across symbols."""
        keys = [(b.ts, b.symbol) for b in self._all()]
        for index, (before, after) in enumerate(itertools.pairwise(keys)):
            assert before <= after, (
                f"bar {index + 1} ({after[1]} at {after[0].isoformat()}) comes after "
                f"{before[1]} at {before[0].isoformat()}: order bars by (ts, symbol)"
            )

    def test_one_bar_per_symbol_and_time(self) -> None:
        """No symbol has two bars with the same timestamp."""
        seen: set[tuple[datetime, str]] = set()
        for bar in self._all():
            key = (bar.ts, bar.symbol)
            assert key not in seen, f"two bars of {bar.symbol} at {bar.ts.isoformat()}"
            seen.add(key)

    def test_start_and_end_filter_inclusively(self) -> None:
        """``bars(start=, end=)`` yields exactly the bars with ``start <= ts <= end``
        (either bound may be left out; bounds on a bar's time include it)."""
        everything = self._all()
        for start, end in self._windows():
            expected = [
                b
                for b in everything
                if (start is None or b.ts >= start) and (end is None or b.ts <= end)
            ]
            got = self._bars(None, start, end)
            assert got == expected, (
                f"bars(start={start}, end={end}) yielded {len(got)} bars, "
                f"expected the {len(expected)} with start <= ts <= end"
            )

    def test_symbols_select_bars(self) -> None:
        """``bars(symbols)`` yields exactly those symbols' bars, whatever the order they
        are named in; an empty list selects none."""
        everything = self._all()
        symbols = list(self.make_source().symbols())
        selections = [[s] for s in symbols[:3]] + [list(reversed(symbols[:2])), symbols, []]
        for wanted in selections:
            expected = [b for b in everything if b.symbol in wanted]
            got = self._bars(wanted)
            assert got == expected, (
                f"bars({wanted!r}) yielded {len(got)} bars, expected {len(expected)}"
            )

    def test_unknown_symbol_is_a_config_error(self) -> None:
        """Asking for a symbol the source lacks raises :class:`bastion.ConfigError` (when
        called or when iterated) with one line that names the symbol."""
        unknown = self.unknown_symbol
        assert unknown not in self.make_source().symbols()
        try:
            self._bars([unknown])
        except ConfigError as exc:
            message = str(exc)
            assert unknown in message, f"the error does not name {unknown!r}: {message}"
            assert "\n" not in message, f"the error is not one line: {message!r}"
        except Exception as exc:
            raise AssertionError(
                f"bars([{unknown!r}]) raised {type(exc).__name__}: {exc}, "
                "not a bastion.ConfigError (bastion.interfaces.select_symbols raises one)"
            ) from exc
        else:
            raise AssertionError(f"bars([{unknown!r}]) raised no bastion.ConfigError")

    def test_count_agrees_with_bars(self) -> None:
        """A source with the optional ``count()`` returns ``None`` or exactly how many
        bars ``bars()`` yields for the same arguments."""
        counter = getattr(self.make_source(), "count", None)
        if counter is None:
            return  # optional
        symbols = list(self.make_source().symbols())
        questions: list[tuple[Any, ...]] = [(None, None, None), (symbols[:1], None, None)]
        questions += [(None, start, end) for start, end in self._windows()]
        for args in questions:
            counted = self.make_source().count(*args)  # type: ignore[attr-defined]
            if counted is None:
                continue
            got = len(self._bars(*args))
            assert counted == got, f"count{args} is {counted}, bars{args} yielded {got}"


# --------------------------------------------------------------------------- shared

if pytest is not None:
    _fixture = pytest.fixture
    _parametrize = pytest.mark.parametrize
else:  # pragma: no cover - the suites need pytest; the module loads without it

    def _fixture(function: Any = None, **kwargs: Any) -> Any:
        return function if function is not None else (lambda f: f)

    def _parametrize(*args: Any, **kwargs: Any) -> Any:
        return lambda function: function


def _skip(reason: str) -> NoReturn:
    if pytest is None:  # pragma: no cover
        raise RuntimeError(reason)
    pytest.skip(reason)


def _utc(moment: datetime, what: str) -> None:
    assert moment.tzinfo is not None, f"{what} {moment!r} came back without a time zone"
    assert moment.utcoffset() == timedelta(0), (
        f"{what} {moment.isoformat()} came back in another zone than UTC (store and return "
        "times as UTC, as bastion.audit.format_ts writes them)"
    )


def _one_line_error(exc: BaseException, *needles: str) -> None:
    message = str(exc)
    assert "\n" not in message, f"the error is not one line: {message!r}"
    for needle in needles:
        assert needle in message, f"the error does not name {needle!r}: {message}"


# --------------------------------------------------------------------------- stores

_STORE_T0 = datetime(2024, 3, 1, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=-5)))
_STORE_RUN = "20240301T143000-c0ffee"
_SHA_A = "a" * 64
_SHA_B = "b" * 64
_RUN_KINDS = ("backtest", "paper")
#: Ways to change a finished run through the store's own methods (see
#: StoreConformance.test_a_finished_run_cannot_be_changed_unnoticed).
_AFTERWARDS = (
    "update_order",
    "record_order",
    "record_fill",
    "record_equity",
    "record_benchmark",
    "record_period_returns",
    "record_positions",
    "record_result",
    "finish_run",
    "begin_run",
)
_TAMPER_WORDS = ("delete", "remove", "drop", "truncate", "purge", "erase", "rewrite", "reset")


class StoreConformance:
    """Tests that a :class:`bastion.interfaces.Store` keeps its contract.

    Subclass it in a test module (the name must start with ``Test``) and override the
    ``store`` fixture: a new, empty store for every test (close it afterwards; ``close()``
    may find it closed already).  Override :meth:`reopen` too, to have durability checked::

        import pytest
        from bastion.testing import StoreConformance

        class TestMyStore(StoreConformance):
            @pytest.fixture
            def store(self, tmp_path):
                store = MyStore.open(tmp_path / "data")
                yield store
                store.close()

            def reopen(self, store):
                store.close()
                return MyStore.open(Path(store.location).parent)

    The suite uses nothing but the :class:`~bastion.interfaces.Store` protocol (and
    :class:`~bastion.interfaces.ReconcilingStore` where the store is one; those tests are
    skipped for a store that is not) and :mod:`bastion.audit`.  It checks: every write
    reads back exactly through ``load_run`` and ``list_runs`` (decimals with their trailing
    zeros, times as aware UTC datetimes, to the microsecond) for backtests and paper runs
    alike; a fill needs its order stored first; writes naming an unknown run, order or
    strategy, a second run or order with the same id and naive times are refused with a
    ``ValueError`` or :class:`bastion.BastionError`; ``load_run`` takes a unique prefix and
    refuses an unknown or ambiguous id with a one-line :class:`bastion.ConfigError`; the
    audit log is the kernel's chain (:func:`bastion.audit.seal` sealed every record;
    ``run_started``/``run_finished`` carry the kernel's payloads and run digests) and
    verifies with :func:`bastion.audit.verify`; concurrent ``audit()`` calls chain; a
    finished run cannot be changed through the store's own methods without being refused
    or caught by ``verify``, and nothing offers to delete or rewrite; after :meth:`reopen`
    everything, chain and digests included, is as it was and the chain continues.
    """

    # -- what a subclass provides --------------------------------------------------------

    @_fixture
    def store(self) -> Store:
        """A new, empty store for each test (override this fixture)."""
        raise NotImplementedError(
            f"{type(self).__name__}: override the store fixture to return a new, empty store"
        )

    def reopen(self, store: Store) -> Store:
        """Close ``store`` and open the same data again (override this to have durability
        checked; the tests that need it are skipped otherwise)."""
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------

    @_fixture(autouse=True)
    def _close_reopened(self) -> Iterator[None]:
        self._reopened: list[Store] = []
        yield
        for store in self._reopened:
            store.close()

    def _reopen(self, store: Store) -> Store:
        try:
            again = self.reopen(store)
        except NotImplementedError:
            _skip(f"{type(self).__name__} does not override reopen(); durability not checked")
        self._reopened.append(again)
        return again

    @staticmethod
    def _reconciling(store: Store) -> ReconcilingStore:
        from .interfaces import ReconcilingStore

        if not isinstance(store, ReconcilingStore):
            _skip(
                f"{type(store).__name__} is not a ReconcilingStore (optional: paper and live "
                "runs need one)"
            )
        assert isinstance(store, ReconcilingStore)
        return store

    @staticmethod
    def _strategies() -> tuple[StrategyRecord, StrategyRecord]:
        from .interfaces import StrategyRecord

        signed = StrategyRecord(
            name="momentum.py",
            sha256=_SHA_A,
            signer="RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3",
            signer_name="alice",
            whitelist_version=4,
            unsigned=False,
            params={"fast": 10, "slow": 30, "threshold": 0.25, "name": "ünïcode"},
        )
        unsigned = StrategyRecord(
            name="scratch.py",
            sha256=_SHA_B,
            signer=None,
            signer_name=None,
            whitelist_version=None,
            unsigned=True,
            params={},
        )
        return signed, unsigned

    @staticmethod
    def _info(
        run_id: str = _STORE_RUN, kind: str = "paper", started: datetime = _STORE_T0
    ) -> RunInfo:
        from .interfaces import RunInfo

        return RunInfo(
            run_id=run_id,
            kind=kind,
            environment="development" if kind == "backtest" else kind,
            started=started,
            bastion_version="1.2.3",
            config={
                "source": "csv:data",
                "broker": "sim",
                "cash": "100000.00",
                "symbols": ["X", "Y"],
                "params": {"fast": 10},
            },
        )

    @staticmethod
    def _order(
        cid: str,
        strategy: StrategyRecord,
        *,
        side: str = "buy",
        quantity: str = "10",
        kind: str = "market",
        limit: str | None = None,
        stop: str | None = None,
        minutes: int = 0,
        symbol: str = "X",
        liquidation: bool = False,
    ) -> Order:
        from .models import OrderIntent

        intent = OrderIntent(
            symbol=symbol,
            side=side,
            quantity=Decimal(quantity),
            type=kind,
            limit_price=None if limit is None else Decimal(limit),
            stop_price=None if stop is None else Decimal(stop),
            tag="entry" if not liquidation else "margin-call",
        )
        return Order(
            client_order_id=cid,
            strategy=strategy.name,
            strategy_sha256=strategy.sha256,
            signer=strategy.signer,
            intent=intent,
            created=_STORE_T0 + timedelta(minutes=minutes),
            liquidation=liquidation,
        )

    @staticmethod
    def _fill(
        order: Order,
        quantity: str,
        price: str,
        commission: str = "0.35",
        *,
        minutes: int = 1,
        exec_id: str | None = None,
    ) -> Fill:
        return Fill(
            order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            quantity=Decimal(quantity),
            price=Decimal(price),
            commission=Decimal(commission),
            ts=order.created + timedelta(minutes=minutes),
            exec_id=exec_id,
            broker_order_id=None if exec_id is None else f"broker-{exec_id}",
        )

    def _small_run(self, store: Store, kind: str = "paper", run_id: str = _STORE_RUN) -> Order:
        """One finished run: an order filled, one cancelled; returns the filled order."""
        signed, _ = self._strategies()
        store.begin_run(self._info(run_id, kind), [signed])
        filled = self._order(f"{run_id}-1", signed)
        store.record_order(run_id, filled, "pending", None)
        store.update_order(run_id, filled.client_order_id, "accepted", None, Decimal(0))
        store.record_fill(run_id, self._fill(filled, "10", "101.50"), filled)
        store.update_order(run_id, filled.client_order_id, "filled", None, Decimal(10))
        cancelled = self._order(f"{run_id}-2", signed, kind="limit", limit="90.00", minutes=5)
        store.record_order(run_id, cancelled, "pending", None)
        store.update_order(run_id, cancelled.client_order_id, "cancelled", "end of run", Decimal(0))
        store.record_equity(run_id, signed.name, [(_STORE_T0, 100000.0)])
        store.record_positions(
            run_id,
            signed.name,
            [Position("X", Decimal("10"), Decimal("101.50"), Decimal("0"), Decimal("102.25"))],
        )
        store.record_result(run_id, signed.name, {"trades": 1}, None)
        store.finish_run(run_id, "completed", None)
        return filled

    @staticmethod
    def _records(store: Store) -> list[Any]:
        with store.audit_view() as view:
            return list(view.records())

    @staticmethod
    def _digest(store: Store, run_id: str) -> str:
        from .audit import DIGEST_FORM, run_digest

        with store.audit_view() as view:
            return run_digest(functools.partial(view.rows, run_id), DIGEST_FORM)

    @staticmethod
    def _verify(store: Store) -> AuditCheck:
        from .audit import verify

        return verify(store)

    def _assert_verifies(self, store: Store) -> AuditCheck:
        check = self._verify(store)
        assert check.ok, (
            f"bastion.audit.verify(store) fails on an untouched store: record "
            f"{check.first_broken}: {check.reason}"
        )
        return check

    @staticmethod
    def _refused(action: Callable[[], object], what: str) -> BaseException:
        from ._errors import BastionError

        try:
            action()
        except (ValueError, BastionError) as exc:
            return exc
        except Exception as exc:
            raise AssertionError(
                f"{what} raised {type(exc).__name__}: {exc}; refuse it with a ValueError or "
                "a bastion.BastionError"
            ) from exc
        raise AssertionError(f"{what} was accepted; it must be refused")

    # -- the protocol -------------------------------------------------------------------

    def test_is_a_store(self, store: Store) -> None:
        """The object has what the ``Store`` protocol names; a new store is empty and its
        (empty) audit log verifies."""
        from .audit import AuditView
        from .interfaces import Store

        assert isinstance(store, Store), f"{store!r} lacks a method of bastion.interfaces.Store"
        assert isinstance(store.location, str) and store.location.strip(), (
            "location must be a non-empty string (it is shown to the user)"
        )
        assert store.list_runs() == [], "a new store must have no runs"
        with store.audit_view() as view:
            assert isinstance(view, AuditView), f"audit_view() gave {view!r}, not an AuditView"
            assert list(view.records()) == [] and view.last() is None
            assert view.highest_id() == 0
            assert dict(view.runs()) == {} and dict(view.strategies()) == {}
        check = self._assert_verifies(store)
        assert check.records == 0

    # -- round trips --------------------------------------------------------------------

    @_parametrize("kind", _RUN_KINDS)
    def test_a_run_reads_back_exactly(self, store: Store, kind: str) -> None:
        """begin → orders → fills → equity, benchmark, period returns, positions → results →
        finish: ``load_run`` returns it all, decimals exact to their last zero, times aware
        UTC to the microsecond, strategies in the order the run began with them."""
        signed, unsigned = self._strategies()
        info = self._info(kind=kind)
        run_id = info.run_id
        store.begin_run(info, [signed, unsigned])
        limit = self._order("o-1", signed, kind="limit", limit="101.2500", quantity="0.00000001")
        stop = self._order("o-2", signed, side="sell", kind="stop", stop="99.10", minutes=3)
        scratch = self._order("o-3", unsigned, quantity="3", minutes=4)
        refused = self._order("o-4", signed, quantity="7.50", minutes=6)
        for order in (limit, stop, scratch):
            store.record_order(run_id, order, "pending", None)
        store.record_order(run_id, refused, "rejected", "limit: max order 5")
        store.update_order(run_id, "o-1", "accepted", None, Decimal(0))
        fills = [
            self._fill(limit, "0.00000001", "101.2500", "0.000"),
            self._fill(scratch, "1", "100.10", exec_id="E-1"),
            self._fill(scratch, "2", "100.20", minutes=2, exec_id="E-2"),
        ]
        store.record_fill(run_id, fills[0], limit)
        store.update_order(run_id, "o-1", "filled", None, Decimal("0.00000001"))
        store.record_fill(run_id, fills[1], scratch)
        store.update_order(run_id, "o-3", "partial", None, Decimal(1))
        store.record_fill(run_id, fills[2], scratch)
        store.update_order(run_id, "o-3", "filled", None, Decimal(3))
        store.update_order(run_id, "o-2", "rejected", "risk: max position", Decimal(0))

        start = datetime(2024, 3, 1, 21, 0, 0, 250001, tzinfo=UTC)
        equity = [(start + timedelta(days=i), 100000.0 + i * 12.5) for i in range(30)]
        store.record_equity(run_id, signed.name, equity[:10])
        store.record_equity(run_id, signed.name, equity[10:])
        store.record_equity(run_id, unsigned.name, [(start, 5000.0)])
        benchmark = [(start, 100000.0), (start + timedelta(days=1), 101500.25)]
        store.record_benchmark(run_id, benchmark)
        returns: dict[str, float | None] = {"2024-03": 0.0125, "2024-04": -0.5, "2024": None}
        store.record_period_returns(run_id, signed.name, returns)
        store.record_positions(
            run_id, signed.name, [Position("X", Decimal(1), Decimal(1), Decimal(0))]
        )
        positions = [
            Position("X", Decimal("0.00000001"), Decimal("101.2500"), Decimal("0.00"), None),
            Position("Y", Decimal("-25"), Decimal("7.125"), Decimal("-13.370"), Decimal("7.50")),
        ]
        store.record_positions(run_id, signed.name, positions)  # replaces the first
        metrics: dict[str, float | int | None] = {"sharpe": 1.375, "trades": 2, "sortino": None}
        store.record_result(run_id, signed.name, metrics, None)
        store.record_result(run_id, unsigned.name, {"trades": 1}, "loss limit: -5% in one day")
        store.finish_run(run_id, "completed", None)

        data = store.load_run(run_id)
        assert data.info == info, f"load_run().info is {data.info!r}, stored {info!r}"
        _utc(data.info.started, "RunInfo.started")
        assert dict(data.info.config) == dict(info.config)
        row = data.row
        assert (row.run_id, row.kind, row.environment, row.status, row.error) == (
            run_id,
            kind,
            info.environment,
            "completed",
            None,
        )
        assert row.started == info.started
        _utc(row.started, "RunRow.started")
        assert row.finished is not None, "a finished run has its end time"
        _utc(row.finished, "RunRow.finished")
        assert tuple(row.strategies) == ("momentum.py", "scratch.py")
        assert [tuple(p) for p in data.benchmark] == benchmark
        first, second = data.strategies
        assert first.record == signed and second.record == unsigned
        assert dict(first.metrics) == metrics and dict(second.metrics) == {"trades": 1}
        assert [tuple(p) for p in first.equity] == equity
        for ts, _ in first.equity:
            _utc(ts, "an equity point's time")
        assert [tuple(p) for p in second.equity] == [(start, 5000.0)]
        assert list(first.positions) == positions
        assert [str(p.avg_price) for p in first.positions] == ["101.2500", "7.125"]
        assert [str(p.realized) for p in first.positions] == ["0.00", "-13.370"]
        assert [str(p.quantity) for p in first.positions] == ["1E-8", "-25"]
        assert list(second.positions) == []
        assert dict(first.period_returns) == returns
        assert (first.orders, first.fills, first.rejected) == (3, 1, 2)
        assert (second.orders, second.fills, second.rejected) == (1, 2, 0)
        assert list(first.executions) == fills[:1] and list(second.executions) == fills[1:]
        assert [str(f.price) for f in second.executions] == ["100.10", "100.20"]
        assert str(first.executions[0].commission) == "0.000"
        for fill in (*first.executions, *second.executions):
            _utc(fill.ts, "a fill's time")
        assert [(r.symbol, r.side, r.quantity, r.reason) for r in first.rejections] == [
            ("X", "sell", Decimal("10"), "risk: max position"),
            ("X", "buy", Decimal("7.50"), "limit: max order 5"),
        ]
        assert [r.created for r in first.rejections] == [stop.created, refused.created]
        assert str(first.rejections[1].quantity) == "7.50"
        assert first.last_rejection == "limit: max order 5"
        assert (first.quarantined, second.quarantined) == (None, "loss limit: -5% in one day")
        (listed,) = store.list_runs()
        assert dict(listed.quarantined) == {"scratch.py": "loss limit: -5% in one day"}
        summary = store.load_run(run_id[:12], details=False)
        assert [list(s.executions) + list(s.rejections) for s in summary.strategies] == [[], []]
        assert [attrs.evolve(s, executions=(), rejections=()) for s in summary.strategies] == [
            attrs.evolve(s, executions=(), rejections=()) for s in data.strategies
        ], (
            "load_run(details=False) must count fills and rejections (and keep the latest "
            "rejection's reason) exactly as load_run() does, without reading them"
        )
        assert (summary.row, summary.info, list(summary.benchmark)) == (
            data.row,
            data.info,
            list(data.benchmark),
        )
        self._assert_verifies(store)

    def test_load_run_has_the_row_list_runs_has(self, store: Store) -> None:
        """``load_run(id).row`` is the run's row as ``list_runs()`` gives it, quarantine
        reasons included, before and after the run finishes."""
        signed, unsigned = self._strategies()
        store.begin_run(self._info(), [signed, unsigned])
        store.record_result(_STORE_RUN, unsigned.name, {"trades": 0}, "raised: on_bar: boom")
        for finished in (False, True):
            if finished:
                store.finish_run(_STORE_RUN, "completed", None)
            (listed,) = store.list_runs()
            assert dict(listed.quarantined) == {unsigned.name: "raised: on_bar: boom"}
            loaded = store.load_run(_STORE_RUN).row
            assert loaded == listed, f"load_run().row is {loaded!r}, list_runs() {listed!r}"

    def test_list_runs_is_newest_first(self, store: Store) -> None:
        """``list_runs`` orders by start time, newest first, naming each run's strategies in
        the order it began with them; an unfinished run of this process is ``running``;
        a failed run keeps its error."""
        signed, unsigned = self._strategies()
        store.begin_run(self._info("old", started=_STORE_T0), [signed])
        store.begin_run(
            self._info("new", started=_STORE_T0 + timedelta(hours=1)), [unsigned, signed]
        )
        store.begin_run(self._info("mid", "backtest", _STORE_T0 + timedelta(minutes=5)), [])
        store.finish_run("old", "completed", None)
        store.finish_run("mid", "failed", "source: bad bar at data/X.csv:17")
        rows = store.list_runs()
        assert [r.run_id for r in rows] == ["new", "mid", "old"]
        assert [tuple(r.strategies) for r in rows] == [
            ("scratch.py", "momentum.py"),
            (),
            ("momentum.py",),
        ]
        assert [r.status for r in rows] == ["running", "failed", "completed"]
        assert [r.error for r in rows] == [None, "source: bad bar at data/X.csv:17", None]
        assert rows[0].finished is None and rows[1].finished is not None
        assert [r.kind for r in rows] == ["paper", "backtest", "paper"]
        self._assert_verifies(store)

    def test_load_run_takes_a_unique_prefix(self, store: Store) -> None:
        """``load_run`` takes a run id or any unique prefix of one (``bastion report``
        promises that); an unknown id or an ambiguous prefix is a one-line
        :class:`bastion.ConfigError` naming it."""
        from ._errors import ConfigError

        signed, _ = self._strategies()
        store.begin_run(self._info("20240301-aaaa"), [signed])
        store.begin_run(self._info("20240301-abcd"), [signed])
        assert store.load_run("20240301-aaaa").info.run_id == "20240301-aaaa"
        assert store.load_run("20240301-ab").info.run_id == "20240301-abcd"
        for wrong in ("nope", "20240301-a", "20240301-%", "20240301-_bcd"):
            try:
                store.load_run(wrong)
            except ConfigError as exc:
                _one_line_error(exc, wrong)
            else:
                raise AssertionError(f"load_run({wrong!r}) raised no bastion.ConfigError")

    @_parametrize("kind", _RUN_KINDS)
    def test_a_fill_needs_its_order_stored_first(self, store: Store, kind: str) -> None:
        """A fill for an order the run has not stored, or recorded against another order, is
        refused; once the order is stored its fill is."""
        signed, _ = self._strategies()
        store.begin_run(self._info(kind=kind), [signed])
        order = self._order("o-1", signed)
        fill = self._fill(order, "10", "100")
        self._refused(
            lambda: store.record_fill(_STORE_RUN, fill, order),
            "record_fill() for an order the run never stored",
        )
        store.record_order(_STORE_RUN, order, "pending", None)
        other = self._order("o-2", signed, minutes=1)
        store.record_order(_STORE_RUN, other, "pending", None)
        self._refused(
            lambda: store.record_fill(_STORE_RUN, fill, other),
            "record_fill() of order o-1's fill against order o-2",
        )
        store.record_fill(_STORE_RUN, fill, order)
        store.finish_run(_STORE_RUN, "completed", None)
        (data,) = store.load_run(_STORE_RUN).strategies
        assert list(data.executions) == [fill]
        assert (data.orders, data.fills) == (2, 1)
        self._assert_verifies(store)

    @_parametrize("kind", _RUN_KINDS)
    def test_unknown_runs_orders_and_strategies_are_refused(self, store: Store, kind: str) -> None:
        """Writes naming a run that is not stored, an order the run does not have or a
        strategy that is not in the run are refused (``ValueError`` or ``BastionError``), and
        change nothing."""
        signed, _ = self._strategies()
        order = self._order("o-1", signed)
        self._refused(
            lambda: store.record_order("ghost", order, "pending", None),
            "record_order() for a run that is not stored",
        )
        self._refused(
            lambda: store.finish_run("ghost", "completed", None),
            "finish_run() of a run that is not stored",
        )
        store.begin_run(self._info(kind=kind), [signed])
        self._refused(
            lambda: store.update_order(_STORE_RUN, "o-404", "filled", None, Decimal(1)),
            "update_order() of an order the run does not have",
        )
        self._refused(
            lambda: store.record_result(_STORE_RUN, "ghost.py", {"trades": 0}, None),
            "record_result() for a strategy that is not in the run",
        )
        store.finish_run(_STORE_RUN, "completed", None)
        assert [r.run_id for r in store.list_runs()] == [_STORE_RUN]
        (data,) = store.load_run(_STORE_RUN).strategies
        assert (data.orders, data.fills) == (0, 0)
        self._assert_verifies(store)

    @_parametrize("kind", _RUN_KINDS)
    def test_ids_are_never_stored_twice(self, store: Store, kind: str) -> None:
        """A second run with a stored run id, or a second order with a stored client order
        id, is refused; the first is kept as it was."""
        signed, unsigned = self._strategies()
        info = self._info(kind=kind)
        store.begin_run(info, [signed])
        self._refused(
            lambda: store.begin_run(attrs.evolve(info, kind="live"), [unsigned]),
            "begin_run() with a run id already stored",
        )
        store.record_order(_STORE_RUN, self._order("dup", signed), "pending", None)
        self._refused(
            lambda: store.record_order(
                _STORE_RUN, self._order("dup", signed, quantity="99"), "pending", None
            ),
            "record_order() with a client order id already stored",
        )
        store.finish_run(_STORE_RUN, "completed", None)
        data = store.load_run(_STORE_RUN)
        assert data.info == info and tuple(data.row.strategies) == (signed.name,)
        assert data.strategies[0].orders == 1
        self._assert_verifies(store)

    def test_finish_run_takes_a_final_status(self, store: Store) -> None:
        """A run finishes ``completed``, ``failed`` or ``interrupted``, nothing else; an
        error given is kept."""
        signed, _ = self._strategies()
        store.begin_run(self._info(), [signed])
        self._refused(
            lambda: store.finish_run(_STORE_RUN, "done", None), "finish_run() with status 'done'"
        )
        assert store.list_runs()[0].status == "running"
        store.finish_run(_STORE_RUN, "interrupted", "killed by signal 15")
        (row,) = store.list_runs()
        assert (row.status, row.error) == ("interrupted", "killed by signal 15")
        self._assert_verifies(store)

    def test_naive_times_are_refused(self, store: Store) -> None:
        """Equity times without a time zone are refused instead of stored ambiguously."""
        signed, _ = self._strategies()
        store.begin_run(self._info(), [signed])
        self._refused(
            lambda: store.record_equity(_STORE_RUN, signed.name, [(datetime(2024, 1, 1), 1.0)]),
            "record_equity() with a naive time",
        )
        assert list(store.load_run(_STORE_RUN).strategies[0].equity) == []

    # -- the audit log ------------------------------------------------------------------

    @_parametrize("kind", _RUN_KINDS)
    def test_the_audit_chain_is_the_kernels(self, store: Store, kind: str) -> None:
        """Every record is as :func:`bastion.audit.seal` made it: ids 1, 2, ... with no gap,
        each ``prev_hash`` the previous record's hash (64 zeros first), each ``hash`` what
        :func:`bastion.audit.record_hash` computes, payloads canonical JSON, times
        canonical UTC text; ``highest_id`` and ``last`` agree; ``verify`` passes."""
        from .audit import GENESIS_HASH, canonical_json, format_ts, record_hash

        self._small_run(store, kind)
        store.audit("note", {"why": "conformance"})
        records = self._records(store)
        assert len(records) >= 3, f"only {len(records)} audit records for a whole run"
        previous = GENESIS_HASH
        for number, record in enumerate(records, 1):
            assert record.id == number, f"record {number} has id {record.id}"
            assert record.prev_hash == previous, f"record {number} does not link to the last"
            assert record.hash == record_hash(
                record.id, record.ts, record.event, record.payload, record.prev_hash
            ), f"record {number}'s hash is not bastion.audit.record_hash of its fields"
            assert record.payload == canonical_json(json.loads(record.payload)), (
                f"record {number}'s payload is not canonical JSON: {record.payload!r}"
            )
            moment = datetime.fromisoformat(record.ts.replace("Z", "+00:00"))
            assert record.ts == format_ts(moment), f"record {number}'s time {record.ts!r}"
            previous = record.hash
        with store.audit_view() as view:
            assert view.highest_id() == len(records)
            assert view.last() == records[-1]
        assert records[0].event == "run_started"
        assert [r.event for r in records][-2:] == ["run_finished", "note"]
        check = self._assert_verifies(store)
        assert check.records == len(records)

    @_parametrize("kind", _RUN_KINDS)
    def test_runs_are_vouched_for_by_the_kernels_records(self, store: Store, kind: str) -> None:
        """``run_started`` carries :func:`bastion.audit.run_started_payload`, ``run_finished``
        :func:`bastion.audit.run_finished_payload` with the run's digest over what
        ``audit_view().rows`` returns; ``runs()`` and ``strategies()`` show the run as
        stored."""
        from .audit import DIGEST_FORM, canonical_json, format_ts, run_started_payload

        signed, _ = self._strategies()
        info = self._info(kind=kind)
        self._small_run(store, kind)
        records = self._records(store)
        started = [json.loads(r.payload) for r in records if r.event == "run_started"]
        finished = [json.loads(r.payload) for r in records if r.event == "run_finished"]
        assert len(started) == 1 and len(finished) == 1
        expected = run_started_payload(info, [signed], started[0].get("pid", 0))
        assert started[0] == json.loads(canonical_json(expected)), (
            f"run_started payload {started[0]!r} is not run_started_payload(run, strategies)"
        )
        with store.audit_view() as view:
            runs = dict(view.runs())
            strategies = {k: dict(v) for k, v in view.strategies().items()}
        stored = runs[_STORE_RUN]
        assert (stored["kind"], stored["environment"], stored["status"]) == (
            kind,
            info.environment,
            "completed",
        )
        assert stored["started"] == format_ts(info.started)
        assert stored["bastion_version"] == "1.2.3" and stored["error"] is None
        assert json.loads(stored["config"]) == dict(info.config)
        assert set(strategies[_STORE_RUN]) == {signed.name}
        row = strategies[_STORE_RUN][signed.name]
        assert (row["sha256"], row["signer"], row["signer_name"]) == (
            signed.sha256,
            signed.signer,
            signed.signer_name,
        )
        assert (row["whitelist_version"], bool(row["unsigned"])) == (4, False)
        done = finished[0]
        assert (done["run_id"], done["status"], done["error"]) == (_STORE_RUN, "completed", None)
        assert (done["orders"], done["fills"]) == (2, 1)
        assert done["finished"] == stored["finished"]
        assert done["trades_digest_form"] == DIGEST_FORM
        assert done["trades_sha256"] == self._digest(store, _STORE_RUN), (
            "run_finished's digest is not bastion.audit.run_digest over audit_view().rows"
        )
        with store.audit_view() as view:  # rows may be streamed: read them inside the view
            orders = [
                list(r)
                for r in view.rows(
                    _STORE_RUN, "orders", "client_order_id, status, filled", "client_order_id"
                )
            ]
        assert orders == [
            [f"{_STORE_RUN}-1", "filled", "10"],
            [f"{_STORE_RUN}-2", "cancelled", "0"],
        ], "rows() must return the stored values as text, decimals exact"
        self._assert_verifies(store)

    def test_audit_appends_one_sealed_record(self, store: Store) -> None:
        """``audit(event, payload)`` appends exactly one record at once: that event, the
        payload as canonical JSON (decimals exact, times as UTC text); earlier records are
        untouched; an event without a name is refused."""
        from .audit import canonical_json

        self._small_run(store)
        before = self._records(store)
        payload = {
            "strategy": "momentum.py",
            "equity": Decimal("95000.10"),
            "at": _STORE_T0,
            "symbols": ["Y", "X"],
            "nested": {"b": 1, "a": None},
        }
        store.audit("margin_call", payload)
        after = self._records(store)
        assert after[: len(before)] == before, "audit() changed earlier records"
        assert len(after) == len(before) + 1, f"audit() added {len(after) - len(before)} records"
        added = after[-1]
        assert (added.event, added.payload) == ("margin_call", canonical_json(payload))
        assert '"equity":"95000.10"' in added.payload
        self._refused(lambda: store.audit("", {"x": 1}), "audit() with an empty event name")
        assert self._records(store) == after
        self._assert_verifies(store)

    def test_concurrent_audits_chain_and_never_fork(self, store: Store) -> None:
        """``audit()`` from several threads at once: every record is appended, the chain
        has no gap and no fork, and it verifies."""
        threads, each = 4, 15
        errors: list[BaseException] = []

        def write(number: int) -> None:
            try:
                for i in range(each):
                    store.audit("tick", {"thread": number, "i": i})
            except BaseException as exc:  # reported below
                errors.append(exc)

        workers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert not errors, f"audit() from {threads} threads raised: {errors[0]!r}"
        records = self._records(store)
        assert [r.id for r in records] == list(range(1, threads * each + 1))
        seen = {(json.loads(r.payload)["thread"], json.loads(r.payload)["i"]) for r in records}
        assert len(seen) == threads * each
        assert self._assert_verifies(store).records == threads * each

    @_parametrize("change", _AFTERWARDS)
    @_parametrize("kind", _RUN_KINDS)
    def test_a_finished_run_cannot_be_changed_unnoticed(
        self, store: Store, kind: str, change: str
    ) -> None:
        """Once a run has finished, a write to it through the store's own methods is either
        refused — and then changes nothing — or caught by :func:`bastion.audit.verify`:
        never silently accepted."""
        signed, _ = self._strategies()
        order = self._small_run(store, kind)
        self._assert_verifies(store)
        before = store.load_run(_STORE_RUN)
        cid = order.client_order_id
        late = self._order("late-1", signed, minutes=30)
        at = _STORE_T0 + timedelta(days=3)
        actions: dict[str, Callable[[], object]] = {
            "update_order": lambda: store.update_order(
                _STORE_RUN, cid, "cancelled", "x", Decimal(0)
            ),
            "record_order": lambda: store.record_order(_STORE_RUN, late, "pending", None),
            "record_fill": lambda: store.record_fill(
                _STORE_RUN, self._fill(order, "1", "1.00", minutes=9), order
            ),
            "record_equity": lambda: store.record_equity(_STORE_RUN, signed.name, [(at, 1.0)]),
            "record_benchmark": lambda: store.record_benchmark(_STORE_RUN, [(at, 1.0)]),
            "record_period_returns": lambda: store.record_period_returns(
                _STORE_RUN, signed.name, {"2024-03": 0.5}
            ),
            "record_positions": lambda: store.record_positions(_STORE_RUN, signed.name, []),
            "record_result": lambda: store.record_result(
                _STORE_RUN, signed.name, {"trades": 99}, None
            ),
            "finish_run": lambda: store.finish_run(_STORE_RUN, "failed", "rewritten"),
            "begin_run": lambda: store.begin_run(self._info(kind=kind), [signed]),
        }
        try:
            actions[change]()
        except Exception:
            after = store.load_run(_STORE_RUN)
            assert after == before, f"a refused {change}() changed the finished run"
            self._assert_verifies(store)
            return
        check = self._verify(store)
        assert not check.ok, (
            f"{change}() changed the finished run {_STORE_RUN} and bastion.audit.verify "
            "still passes: refuse writes to a finished run, or keep what verify reads "
            "(audit_view) the same as what was changed"
        )

    def test_nothing_offers_to_delete_or_rewrite(self, store: Store) -> None:
        """The store has no public method to delete, drop or rewrite what it holds, and
        whatever is written later leaves every earlier audit record as it was."""
        offered = [
            name
            for name in dir(store)
            if not name.startswith("_")
            and callable(getattr(store, name, None))
            and any(word in name.lower() for word in _TAMPER_WORDS)
        ]
        assert offered == [], f"the store offers {offered}: the record must be append-only"
        self._small_run(store, "paper", "run-1")
        first = self._records(store)
        self._small_run(store, "backtest", "run-2")
        store.audit("note", {"n": 1})
        later = self._records(store)
        assert later[: len(first)] == first, "later writes changed earlier audit records"
        assert len(later) > len(first)
        self._assert_verifies(store)

    # -- durability ---------------------------------------------------------------------

    @_parametrize("kind", _RUN_KINDS)
    def test_everything_survives_reopening(self, store: Store, kind: str) -> None:
        """Closed and opened again: runs, the audit log (record for record), every run's
        digest over ``audit_view().rows`` and an unfinished run's rows are as they were."""
        self._small_run(store, kind, "run-1")
        signed, _ = self._strategies()
        store.begin_run(self._info("run-2", kind, _STORE_T0 + timedelta(hours=2)), [signed])
        working = self._order("run-2-1", signed, kind="limit", limit="99.9900", minutes=121)
        store.record_order("run-2", working, "pending", None)
        store.update_order("run-2", "run-2-1", "partial", None, Decimal("2.5"))
        store.record_fill("run-2", self._fill(working, "2.5", "99.99"), working)
        store.record_equity("run-2", signed.name, [(_STORE_T0, 100000.5)])
        runs = {run_id: store.load_run(run_id) for run_id in ("run-1", "run-2")}
        listed = store.list_runs()
        records = self._records(store)
        digests = {run_id: self._digest(store, run_id) for run_id in ("run-1", "run-2")}
        again = self._reopen(store)
        assert again.list_runs() == listed, "the runs are not as they were before reopening"
        assert {run_id: again.load_run(run_id) for run_id in runs} == runs
        assert self._records(again) == records, "the audit log changed across reopening"
        assert {run_id: self._digest(again, run_id) for run_id in digests} == digests
        self._assert_verifies(again)

    def test_the_chain_continues_after_reopening(self, store: Store) -> None:
        """The first record written after reopening follows the last one before it."""
        self._small_run(store)
        last = self._records(store)[-1]
        again = self._reopen(store)
        again.audit("resumed", {"n": 1})
        records = self._records(again)
        assert records[-1].id == last.id + 1 and records[-1].prev_hash == last.hash
        signed, _ = self._strategies()
        again.begin_run(self._info("run-after"), [signed])
        again.finish_run("run-after", "completed", None)
        assert self._assert_verifies(again).records == len(records) + 2

    # -- reconciliation (ReconcilingStore) ------------------------------------------------

    def test_open_orders_are_the_runs_unsettled_orders(self, store: Store) -> None:
        """``open_orders(run)`` returns exactly the run's orders not filled, rejected or
        cancelled, as they were stored (the whole ``Order``), with status and filled."""
        reconciling = self._reconciling(store)
        signed, unsigned = self._strategies()
        store.begin_run(self._info(), [signed, unsigned])
        store.begin_run(self._info("other", started=_STORE_T0 + timedelta(hours=1)), [signed])
        orders = {
            "pending": self._order("o-1", signed, kind="limit", limit="101.2500", minutes=1),
            "accepted": self._order(
                "o-2", unsigned, side="sell", kind="stop", stop="99.1", quantity="0.5", minutes=2
            ),
            "partial": self._order("o-3", signed, minutes=3, liquidation=True),
            "filled": self._order("o-4", signed, minutes=4),
            "rejected": self._order("o-5", signed, minutes=5),
            "cancelled": self._order("o-6", signed, minutes=6),
        }
        for status, order in orders.items():
            store.record_order(_STORE_RUN, order, "pending", None)
            if status != "pending":
                filled = Decimal("3.5") if status == "partial" else Decimal(0)
                store.update_order(_STORE_RUN, order.client_order_id, status, None, filled)
        store.record_order("other", self._order("x-1", signed), "pending", None)
        got = reconciling.open_orders(_STORE_RUN)
        assert [(s.run_id, s.order, s.status, s.filled) for s in got] == [
            (_STORE_RUN, orders["pending"], "pending", Decimal(0)),
            (_STORE_RUN, orders["accepted"], "accepted", Decimal(0)),
            (_STORE_RUN, orders["partial"], "partial", Decimal("3.5")),
        ]
        assert str(got[0].order.intent.limit_price) == "101.2500"
        for stored in got:
            _utc(stored.order.created, "an order's created time")
        assert [s.order.client_order_id for s in reconciling.open_orders("other")] == ["x-1"]
        assert reconciling.open_orders("ghost") == []

    def test_a_stopped_run_is_unsettled_until_finished(self, store: Store) -> None:
        """``stop_run`` leaves a run ``stopped`` (no ``run_finished`` yet: it still
        verifies); ``unsettled_runs(kind)`` lists it, oldest first, until ``finish_run``
        settles it; a run still running in this process is not unsettled."""
        reconciling = self._reconciling(store)
        signed, _ = self._strategies()
        for number, kind in enumerate(("paper", "paper", "live", "paper")):
            run_id = f"run-{number}"
            store.begin_run(self._info(run_id, kind, _STORE_T0 + timedelta(hours=number)), [signed])
            store.record_order(run_id, self._order(f"{run_id}-o", signed), "accepted", None)
        reconciling.stop_run("run-1", "stopped with orders working in X")
        reconciling.stop_run("run-0", "stopped with orders working in X")
        reconciling.stop_run("run-2", "stopped with orders working in X")
        assert reconciling.unsettled_runs("paper") == [("run-0", "stopped"), ("run-1", "stopped")]
        assert reconciling.unsettled_runs("live") == [("run-2", "stopped")]
        assert reconciling.unsettled_runs("backtest") == []
        statuses = {r.run_id: r.status for r in store.list_runs()}
        assert statuses == {
            "run-0": "stopped",
            "run-1": "stopped",
            "run-2": "stopped",
            "run-3": "running",
        }
        self._assert_verifies(store)
        self._refused(
            lambda: reconciling.stop_run("run-0", "again"), "stop_run() of a run not running"
        )
        self._refused(lambda: reconciling.stop_run("ghost", "x"), "stop_run() of no run")
        store.update_order("run-0", "run-0-o", "cancelled", "cancelled at the broker", Decimal(0))
        store.finish_run("run-0", "completed", None)
        assert reconciling.unsettled_runs("paper") == [("run-1", "stopped")]
        assert store.load_run("run-0").row.status == "completed"
        self._assert_verifies(store)

    def test_executions_are_booked_once_across_runs(self, store: Store) -> None:
        """``execution_ids()`` is every stored broker execution id; a second fill with one
        of them is refused, whichever run records it; ``book(kind)`` is every fill of the
        runs of that kind, oldest first, with its strategy."""
        reconciling = self._reconciling(store)
        signed, unsigned = self._strategies()
        store.begin_run(self._info("p-1", "paper"), [signed])
        store.begin_run(self._info("p-2", "paper", _STORE_T0 + timedelta(hours=1)), [unsigned])
        store.begin_run(self._info("l-1", "live"), [signed])
        store.begin_run(self._info("b-1", "backtest"), [signed])
        a = self._order("p-1-a", signed)
        b = self._order("p-2-b", unsigned, side="sell", quantity="4")
        c = self._order("l-1-c", signed)
        d = self._order("b-1-d", signed)
        for run_id, order in (("p-1", a), ("p-2", b), ("l-1", c), ("b-1", d)):
            store.record_order(run_id, order, "accepted", None)
        fills = [
            ("p-1", self._fill(a, "4", "100.10", minutes=1, exec_id="E1"), a),
            ("p-2", self._fill(b, "4", "100.05", minutes=2, exec_id="E2"), b),
            ("p-1", self._fill(a, "6", "100.00", minutes=3, exec_id="E3"), a),
            ("l-1", self._fill(c, "10", "99.5", minutes=1, exec_id="E4"), c),
            ("b-1", self._fill(d, "10", "99.5", minutes=1), d),
        ]
        for run_id, fill, order in fills:
            store.record_fill(run_id, fill, order)
        assert reconciling.execution_ids() == {"E1", "E2", "E3", "E4"}
        again = self._fill(c, "10", "99.5", minutes=1, exec_id="E1")
        self._refused(
            lambda: store.record_fill("l-1", again, c),
            "record_fill() of an execution id already stored by another run",
        )
        assert reconciling.book("paper") == [
            ("momentum.py", fills[0][1]),
            ("scratch.py", fills[1][1]),
            ("momentum.py", fills[2][1]),
        ]
        assert reconciling.book("live") == [("momentum.py", fills[3][1])]
        assert reconciling.book("backtest") == [("momentum.py", fills[4][1])]
        assert reconciling.book("nothing") == []
        self._assert_verifies(store)


# --------------------------------------------------------------------------- brokers


class BrokerConformance:
    """Tests that a :class:`bastion.interfaces.Broker` keeps its contract.

    Subclass it in a test module (the name must start with ``Test``) and override the
    ``broker`` fixture: a new broker for every test, on a flat account (no positions, no
    orders), closed afterwards.  A broker driven by bars (the simulator) needs nothing
    more: :meth:`trade` hands it a bar at the price a test wants.  A broker whose market
    is elsewhere (a live broker, against a test gateway) overrides :meth:`trade` to move
    that market, and :meth:`reject_next_order` to have its broker reject an order::

        import pytest
        from bastion.testing import BrokerConformance

        class TestMyBroker(BrokerConformance):
            @pytest.fixture
            def broker(self):
                broker = MyBroker.open("")
                yield broker
                broker.close()

    The tests follow the protocols of :mod:`bastion.interfaces`: ``submit`` accepts an
    order (``None``) or refuses it with a one-line reason, and an accepted order is working
    (``working_symbols``) until it fills or is cancelled; a market order fills at the
    market (within :attr:`price_tolerance`), a limit order only at its limit or better and
    a stop order only once the market reaches its stop; every fill carries the order's
    client order id, side and symbol, exact ``Decimal`` quantity, price and commission, an
    aware time, and together the fills make up the order's quantity; ``cancel`` returns
    a working order and stops it, and ``None`` for an order that is not working (filled,
    cancelled or never seen); ``cancel_all`` and ``cancel_strategy`` (which spares other
    strategies and margin-call liquidations) return what they cancelled; a broker with a
    margin policy (``margin``) accepts the liquidations it calls for even from an account
    under water; a bar no later than an order's creation never fills it.
    A :class:`~bastion.interfaces.PushingBroker` is also held to ``poll`` (fills with the
    broker's execution id, rejections as :class:`~bastion.interfaces.OrderUpdate`),
    ``listen`` and ``close``; a :class:`~bastion.interfaces.ReconcilingBroker` to
    ``open_orders``, ``completed_orders``, ``executions``, ``positions`` and
    ``cancel_order``.  Tests of a protocol the broker does not implement
    are skipped, saying so.
    """

    #: The symbol the tests trade; the broker must know it.
    symbol = "AAPL"
    #: Where the market starts.
    price = Decimal(100)
    #: How far (as a fraction) a market or stop fill may be from the price traded at.
    price_tolerance = Decimal("0.01")
    #: How long a pushing broker may take to report news that is due, in seconds.
    news_timeout = 5.0
    #: How long to listen for news that must not come, from a pushing broker.
    quiet_seconds = 0.5

    # -- what a subclass provides --------------------------------------------------------

    @_fixture
    def broker(self) -> Broker:
        """A new broker on a flat account for each test (override this fixture)."""
        raise NotImplementedError(
            f"{type(self).__name__}: override the broker fixture to return a new broker"
        )

    def trade(self, broker: Broker, price: Decimal) -> Sequence[Fill]:
        """Make the market trade at ``price`` and return the fills that brings at once.

        The default hands the broker a bar of :attr:`symbol` at ``price`` (open, high, low
        and close), a minute after the last, through ``on_bar``.  Override it for a broker
        whose market is elsewhere (set a test gateway's price; return ``[]`` and let
        ``poll`` bring the fills)."""
        self._now = self._clock() + timedelta(minutes=1)
        value = float(price)
        return broker.on_bar(Bar(self.symbol, self._now, value, value, value, value, None))

    def reject_next_order(self, broker: Broker) -> None:
        """Have the broker reject the next order it is sent, after accepting it (a
        pushing broker reports that through ``poll``).  Override to have that checked."""
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------

    def _clock(self) -> datetime:
        now: datetime = getattr(self, "_now", DEFAULT_START)
        return now

    def _last(self) -> Decimal:
        last: Decimal = getattr(self, "_price", self.price)
        return last

    def _account(
        self, positions: Mapping[str, Decimal] | None = None, cash: Decimal = Decimal(1_000_000)
    ) -> AccountSnapshot:
        held = dict(positions or {})
        prices = {symbol: self._last() for symbol in {self.symbol, *held}}
        long = sum((q * prices[s] for s, q in held.items() if q > 0), Decimal(0))
        short = sum((-q * prices[s] for s, q in held.items() if q < 0), Decimal(0))
        return AccountSnapshot(cash, cash + long - short, held, prices, long, short)

    def _order(
        self,
        cid: str,
        side: str = "buy",
        kind: str = "market",
        *,
        quantity: str = "10",
        limit: Decimal | None = None,
        stop: Decimal | None = None,
        strategy: str = "conformance.py",
        liquidation: bool = False,
        created: datetime | None = None,
    ) -> Order:
        from .models import OrderIntent

        intent = OrderIntent(self.symbol, side, Decimal(quantity), kind, limit, stop, "conformance")
        return Order(
            client_order_id=cid,
            strategy=strategy,
            strategy_sha256="c" * 64,
            signer=None,
            intent=intent,
            created=created or self._clock(),
            liquidation=liquidation,
        )

    def _submit(self, broker: Broker, order: Order) -> None:
        reason = broker.submit(order, self._account())
        assert reason is None, (
            f"submit() refused {order.intent.side} {order.intent.quantity} {order.symbol} "
            f"({order.intent.type}): {reason}"
        )

    def _news(
        self,
        broker: Broker,
        price: Decimal | int | str,
        *,
        fills_of: Order | None = None,
        update_of: str | None = None,
    ) -> list[Fill | OrderUpdate]:
        """Trade at ``price``; return the fills ``trade`` gave and, from a pushing broker,
        what ``poll`` brings: until ``fills_of`` is filled or an update of ``update_of``
        came (at most :attr:`news_timeout`), else for :attr:`quiet_seconds`."""
        from .interfaces import OrderUpdate, PushingBroker

        self._price = Decimal(price)
        got: list[Fill | OrderUpdate] = list(self.trade(broker, self._price))
        if not isinstance(broker, PushingBroker):
            return got

        def done() -> bool:
            if fills_of is not None:
                filled = sum(
                    (
                        n.quantity
                        for n in got
                        if isinstance(n, Fill) and n.order_id == fills_of.client_order_id
                    ),
                    Decimal(0),
                )
                return filled >= fills_of.quantity
            if update_of is not None:
                return any(
                    isinstance(n, OrderUpdate) and n.client_order_id == update_of for n in got
                )
            return False

        wanted = fills_of is not None or update_of is not None
        deadline = time.monotonic() + (self.news_timeout if wanted else self.quiet_seconds)
        while True:
            got.extend(broker.poll())
            if done() or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def _eventually(self, condition: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + self.news_timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _fills(self, news: Iterable[Fill | OrderUpdate], order: Order) -> list[Fill]:
        return [n for n in news if isinstance(n, Fill) and n.order_id == order.client_order_id]

    def _check_fills(self, broker: Broker, fills: Sequence[Fill], order: Order) -> None:
        from .interfaces import PushingBroker

        cid = order.client_order_id
        assert fills, f"order {cid} ({order.intent.type} {order.intent.side}) did not fill"
        total = sum((f.quantity for f in fills), Decimal(0))
        assert total == order.quantity, f"order {cid} of {order.quantity} filled {total}"
        for fill in fills:
            assert (fill.symbol, fill.side) == (order.symbol, order.side), (
                f"fill {fill!r} is not of order {cid} ({order.side} {order.symbol})"
            )
            for name in ("quantity", "price", "commission"):
                value = getattr(fill, name)
                assert type(value) is Decimal and value.is_finite(), f"fill {name} {value!r}"
            assert fill.commission >= 0, f"negative commission {fill.commission}"
            assert fill.ts.tzinfo is not None, f"fill time {fill.ts!r} without a time zone"
            if isinstance(broker, PushingBroker):
                assert isinstance(fill.exec_id, str) and fill.exec_id, (
                    f"a pushing broker's fill carries the broker's execution id: {fill!r}"
                )
                assert fill.broker_order_id is None or (
                    isinstance(fill.broker_order_id, str) and fill.broker_order_id
                ), f"broker_order_id {fill.broker_order_id!r} is neither None nor an id"
        if isinstance(broker, PushingBroker):
            ids = [f.exec_id for f in fills]
            assert len(set(ids)) == len(ids), f"one execution reported twice: {ids}"

    def _not_working(self, broker: Broker, order: Order) -> None:
        """The order ended: its symbol is no longer working, nor is it cancellable."""
        assert self._eventually(lambda: order.symbol not in broker.working_symbols()), (
            f"{order.symbol} still in working_symbols() after order "
            f"{order.client_order_id} ended: {sorted(broker.working_symbols())}"
        )
        assert broker.cancel(order.client_order_id) is None, (
            f"cancel() of order {order.client_order_id}, which is no longer working, "
            "returned an order (it must return None)"
        )

    @staticmethod
    def _pushing(broker: Broker) -> PushingBroker:
        from .interfaces import PushingBroker

        if not isinstance(broker, PushingBroker):
            _skip(f"{type(broker).__name__} is not a PushingBroker (it reports fills from on_bar)")
        assert isinstance(broker, PushingBroker)
        return broker

    # -- the protocol -------------------------------------------------------------------

    def test_is_a_broker(self, broker: Broker) -> None:
        """The object has what the ``Broker`` protocol names: a name, a margin policy
        (``None`` or a :class:`~bastion.models.MarginPolicy`) and, to start with, nothing
        working."""
        from .interfaces import Broker
        from .models import MarginPolicy

        assert isinstance(broker, Broker), f"{broker!r} lacks a method of bastion.interfaces.Broker"
        assert isinstance(broker.name, str) and broker.name.strip(), "name must be a non-empty str"
        margin = broker.margin
        assert margin is None or isinstance(margin, MarginPolicy), (
            f"margin must be None or a bastion.models.MarginPolicy, not {margin!r}"
        )
        working = broker.working_symbols()
        assert isinstance(working, frozenset) and not working, f"working at start: {working!r}"

    @_parametrize("side", ["buy", "sell"])
    def test_a_market_order_fills_at_the_market(self, broker: Broker, side: str) -> None:
        """An accepted market order is working until it fills at the market price (within
        ``price_tolerance``), in fills that carry its client order id and make up its
        quantity; then it is no longer working or cancellable."""
        order = self._order(f"mkt-{side}", side)
        self._submit(broker, order)
        news = self._news(broker, self.price, fills_of=order)
        fills = self._fills(news, order)
        self._check_fills(broker, fills, order)
        for fill in fills:
            off = abs(fill.price - self.price) / self.price
            assert off <= self.price_tolerance, (
                f"market {side} filled at {fill.price} with the market at {self.price}"
            )
        self._not_working(broker, order)

    @_parametrize("side", ["buy", "sell"])
    def test_a_limit_order_fills_only_at_its_limit_or_better(
        self, broker: Broker, side: str
    ) -> None:
        """A limit order does not fill while the market is on the wrong side of its limit,
        and fills at the limit or better once the market gets there."""
        buy = side == "buy"
        limit = self.price - 5 if buy else self.price + 5
        order = self._order(f"lmt-{side}", side, "limit", limit=limit)
        self._submit(broker, order)
        assert order.symbol in broker.working_symbols()
        early = self._fills(self._news(broker, self.price), order)
        assert early == [], f"limit {side} at {limit} filled with the market at {self.price}"
        through = limit - 1 if buy else limit + 1
        fills = self._fills(self._news(broker, through, fills_of=order), order)
        self._check_fills(broker, fills, order)
        for fill in fills:
            better = fill.price <= limit if buy else fill.price >= limit
            assert better, f"limit {side} at {limit} filled at {fill.price}"
        self._not_working(broker, order)

    @_parametrize("side", ["buy", "sell"])
    def test_a_stop_order_waits_for_its_stop(self, broker: Broker, side: str) -> None:
        """A stop order does not fill before the market reaches its stop; once it does, it
        fills at the stop or beyond it (worse), near the market."""
        buy = side == "buy"
        stop = self.price + 5 if buy else self.price - 5
        order = self._order(f"stp-{side}", side, "stop", stop=stop)
        self._submit(broker, order)
        assert order.symbol in broker.working_symbols()
        early = self._fills(self._news(broker, self.price), order)
        assert early == [], f"stop {side} at {stop} filled with the market at {self.price}"
        through = stop + 1 if buy else stop - 1
        fills = self._fills(self._news(broker, through, fills_of=order), order)
        self._check_fills(broker, fills, order)
        for fill in fills:
            beyond = fill.price >= stop if buy else fill.price <= stop
            assert beyond, f"stop {side} at {stop} filled at {fill.price}, before its stop"
            off = abs(fill.price - through) / through
            assert off <= self.price_tolerance, (
                f"stop {side} filled at {fill.price} with the market at {through}"
            )
        self._not_working(broker, order)

    def test_a_working_order_can_be_cancelled(self, broker: Broker) -> None:
        """``cancel`` returns the working order and it stops working: a price that would
        have filled it no longer does; a second ``cancel`` returns ``None``."""
        order = self._order("cxl-1", "buy", "limit", limit=self.price - 10)
        self._submit(broker, order)
        assert broker.working_symbols() == {self.symbol}
        assert broker.cancel(order.client_order_id) == order
        assert self.symbol not in broker.working_symbols()
        late = self._fills(self._news(broker, self.price - 20), order)
        assert late == [], f"a cancelled order filled: {late}"
        assert broker.cancel(order.client_order_id) is None

    def test_cancelling_an_unknown_order_returns_none(self, broker: Broker) -> None:
        """``cancel`` of an id the broker never saw returns ``None`` and changes nothing."""
        order = self._order("kept-1", "buy", "limit", limit=self.price - 10)
        self._submit(broker, order)
        assert broker.cancel("no-such-order") is None
        assert broker.working_symbols() == {self.symbol}
        assert broker.cancel(order.client_order_id) == order

    def test_cancel_all_cancels_every_working_order(self, broker: Broker) -> None:
        """``cancel_all`` returns every working order, of every strategy; none of them
        fills afterwards."""
        orders = [
            self._order("all-1", "buy", "limit", limit=self.price - 10, strategy="a.py"),
            self._order("all-2", "sell", "limit", limit=self.price + 10, strategy="b.py"),
        ]
        for order in orders:
            self._submit(broker, order)
        cancelled = broker.cancel_all("end of run")
        assert sorted(o.client_order_id for o in cancelled) == ["all-1", "all-2"]
        assert broker.working_symbols() == frozenset()
        news = [*self._news(broker, self.price - 20), *self._news(broker, self.price + 20)]
        assert [n for n in news if isinstance(n, Fill)] == [], "cancelled orders filled"

    def test_cancel_strategy_spares_others_and_liquidations(self, broker: Broker) -> None:
        """``cancel_strategy`` returns that strategy's working orders; another strategy's
        orders and the strategy's own margin-call liquidations keep working."""
        mine = self._order("cs-1", "buy", "limit", limit=self.price - 10, strategy="a.py")
        liquidation = self._order(
            "cs-2", "sell", "limit", limit=self.price + 10, strategy="a.py", liquidation=True
        )
        theirs = self._order("cs-3", "buy", "limit", limit=self.price - 11, strategy="b.py")
        for order in (mine, liquidation, theirs):
            self._submit(broker, order)
        assert [o.client_order_id for o in broker.cancel_strategy("a.py")] == ["cs-1"]
        assert broker.cancel("cs-1") is None
        assert broker.cancel("cs-3") == theirs
        assert broker.cancel("cs-2") == liquidation

    def test_margin_call_liquidations_are_accepted(self, broker: Broker) -> None:
        """A broker with a margin policy accepts the liquidation orders the policy calls
        for (``liquidation=True``) from an account under water, where an ordinary order
        of that size could be refused; they close every position and work until they
        fill or are cancelled."""
        if broker.margin is None:
            _skip(f"{type(broker).__name__} has no margin policy (it liquidates by itself)")
        assert broker.margin is not None
        positions = {self.symbol: Decimal(10)}
        account = self._account(positions, cash=-self._last() * 9)  # equity: one share's worth
        intents = broker.margin.liquidation(account)
        assert [(i.symbol, i.side, i.quantity) for i in intents] == [
            (self.symbol, "sell", Decimal(10))
        ], f"the policy's liquidation of {positions}: {intents}"
        orders = [
            attrs.evolve(self._order(f"mc-{n}", liquidation=True), intent=intent)
            for n, intent in enumerate(intents)
        ]
        for order in orders:
            reason = broker.submit(order, account)
            assert reason is None, f"liquidation {order.client_order_id} refused: {reason}"
        assert self.symbol in broker.working_symbols()
        cancelled = broker.cancel_all("end of test")
        assert sorted(o.client_order_id for o in cancelled) == ["mc-0"]

    def test_a_refusal_is_one_line_and_nothing_works(self, broker: Broker) -> None:
        """An order far beyond the account is refused with a one-line reason — and is then
        not working — or accepted, and then working (and cancellable)."""
        order = self._order("huge-1", "buy", "limit", quantity="1000000000", limit=self.price / 2)
        reason = broker.submit(order, self._account(cash=Decimal(1000)))
        if reason is None:
            assert broker.cancel(order.client_order_id) == order
            return
        assert isinstance(reason, str) and reason.strip(), f"submit() returned {reason!r}"
        assert "\n" not in reason, f"the reason is not one line: {reason!r}"
        assert broker.working_symbols() == frozenset()
        assert broker.cancel(order.client_order_id) is None

    def test_no_fill_at_a_price_before_the_order(self, broker: Broker) -> None:
        """A bar no later than an order's creation never fills it (no look-ahead); the
        next one does."""
        from .interfaces import PushingBroker

        if isinstance(broker, PushingBroker):
            _skip(f"{type(broker).__name__} pushes fills as they happen; it is given no bars")
        created = self._clock() + timedelta(minutes=1)  # the time of the next trade
        order = self._order("ahead-1", "buy", created=created)
        self._submit(broker, order)
        early = self._fills(self._news(broker, self.price), order)
        assert self._clock() == created and early == [], f"filled at its own bar: {early}"
        self._check_fills(broker, self._fills(self._news(broker, self.price), order), order)

    # -- pushing brokers ----------------------------------------------------------------

    def test_news_wakes_the_listener(self, broker: Broker) -> None:
        """A pushing broker calls the ``listen`` callback when news arrive; ``poll`` then
        returns it, once."""
        pushing = self._pushing(broker)
        woken = threading.Event()
        pushing.listen(woken.set)
        order = self._order("wake-1")
        self._submit(broker, order)
        news = self._news(broker, self.price, fills_of=order)
        assert woken.wait(self.news_timeout), "listen()'s callback was not called"
        self._check_fills(broker, self._fills(news, order), order)
        again = self._news(broker, self.price)
        assert self._fills(again, order) == [], f"poll() reported a fill twice: {again}"

    def test_a_broker_rejection_is_an_order_update(self, broker: Broker) -> None:
        """An order the broker accepted and then rejects comes back from ``poll`` as an
        :class:`~bastion.interfaces.OrderUpdate` (``rejected``, a one-line reason) and
        never fills."""
        from .interfaces import OrderUpdate

        self._pushing(broker)
        try:
            self.reject_next_order(broker)
        except NotImplementedError:
            _skip(f"{type(self).__name__} does not override reject_next_order()")
        order = self._order("rej-1")
        self._submit(broker, order)
        news = self._news(broker, self.price, update_of=order.client_order_id)
        updates = [
            n
            for n in news
            if isinstance(n, OrderUpdate) and n.client_order_id == order.client_order_id
        ]
        assert len(updates) == 1, f"expected one update of {order.client_order_id}: {news}"
        assert updates[0].status == "rejected", f"{updates[0]!r}"
        assert updates[0].reason.strip() and "\n" not in updates[0].reason
        assert self._fills(news, order) == []
        self._not_working(broker, order)

    def test_close_may_be_repeated(self, broker: Broker) -> None:
        """``close`` disconnects; calling it again is harmless."""
        pushing = self._pushing(broker)
        pushing.close()
        pushing.close()

    # -- reconciling brokers ------------------------------------------------------------

    def _reconciling(self, broker: Broker) -> ReconcilingBroker:
        from .interfaces import ReconcilingBroker

        if not isinstance(broker, ReconcilingBroker):
            _skip(f"{type(broker).__name__} is not a ReconcilingBroker")
        return broker

    def _filled_and_working(self, broker: Broker) -> tuple[list[Fill], Order, Order]:
        """A market sell of 7 that filled (its fills) and a buy limit of 3 left working."""
        filled = self._order("st-1", "sell", quantity="7")
        working = self._order("st-2", "buy", "limit", quantity="3", limit=self.price - 10)
        self._submit(broker, filled)
        fills = self._fills(self._news(broker, self.price, fills_of=filled), filled)
        self._check_fills(broker, fills, filled)
        self._submit(broker, working)
        return fills, filled, working

    def test_open_orders_hold_the_working_orders(self, broker: Broker) -> None:
        """``open_orders()`` holds a working order by its client order id (``working``,
        nothing filled) and not an order that has filled."""
        reconciling = self._reconciling(broker)
        self._filled_and_working(broker)
        orders = reconciling.open_orders()
        seen = orders.get("st-2")
        assert seen is not None, f"the working order st-2 is not in open_orders(): {orders}"
        assert seen.client_order_id == "st-2", seen
        assert (seen.status, seen.filled) == ("working", Decimal(0)), seen
        assert "st-1" not in orders, f"the filled order st-1 is in open_orders(): {orders}"

    def test_completed_orders_hold_a_filled_order_with_its_quantity(self, broker: Broker) -> None:
        """``completed_orders()`` holds a filled order by its client order id (``filled``,
        with the quantity it filled) and not an order that is still working."""
        reconciling = self._reconciling(broker)
        self._filled_and_working(broker)
        orders = reconciling.completed_orders()
        done = orders.get("st-1")
        assert done is not None, f"the filled order st-1 is not in completed_orders(): {orders}"
        assert done.client_order_id == "st-1", done
        assert (done.status, done.filled) == ("filled", Decimal(7)), done
        assert "st-2" not in orders, f"the working order st-2 is in completed_orders(): {orders}"

    def test_executions_carry_the_ids_the_fills_carried(self, broker: Broker) -> None:
        """``executions()`` reports a filled order's executions under its client order
        id, with the execution ids (always set), side, symbol and quantities its fills
        carried; a working order that has not filled has none."""
        reconciling = self._reconciling(broker)
        fills, filled, _ = self._filled_and_working(broker)
        executions = list(reconciling.executions())
        assert all(isinstance(f, Fill) and f.exec_id for f in executions), executions
        mine = [f for f in executions if f.order_id == "st-1"]
        assert {f.exec_id for f in mine} == {f.exec_id for f in fills}, (mine, fills)
        assert sum((f.quantity for f in mine), Decimal(0)) == Decimal(7), mine
        assert {(f.symbol, f.side) for f in mine} == {(filled.symbol, filled.side)}, mine
        assert [f for f in executions if f.order_id == "st-2"] == [], executions

    def test_positions_are_signed(self, broker: Broker) -> None:
        """``positions()`` holds the account's position by symbol, signed: after a sell
        of 7 from a flat account, -7 (a working order changes nothing)."""
        reconciling = self._reconciling(broker)
        self._filled_and_working(broker)
        held = reconciling.positions()
        assert all(type(q) is Decimal for q in held.values()), f"not Decimals: {held}"
        assert {s: q for s, q in held.items() if q} == {self.symbol: Decimal(-7)}, held

    def test_cancel_order_moves_it_to_the_completed_orders(self, broker: Broker) -> None:
        """``cancel_order`` cancels a working order by its client order id: it leaves
        ``open_orders()`` and shows in ``completed_orders()`` as ``cancelled``."""
        reconciling = self._reconciling(broker)
        self._filled_and_working(broker)
        reconciling.cancel_order("st-2")

        def cancelled() -> bool:
            seen = reconciling.completed_orders().get("st-2")
            return seen is not None and seen.status == "cancelled"

        assert self._eventually(cancelled), (
            f"st-2 after cancel_order: completed {reconciling.completed_orders()}, "
            f"open {reconciling.open_orders()}"
        )
        assert "st-2" not in reconciling.open_orders()
