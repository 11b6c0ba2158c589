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
* :class:`SourceConformance` — a base class of tests that check a
  :class:`bastion.interfaces.Source` against its contract; subclass it in a test
  module and return your source from ``make_source()``.

Everything heavy (the kernel, the sandbox, the store) is imported only when a
strategy is run, so loading the plugin costs a test session nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import ConfigError
from .models import Bar, Fill, Order

if TYPE_CHECKING:
    from .interfaces import Source

try:  # the fixture needs pytest; the helpers below do not
    import pytest
except ImportError:  # pragma: no cover - pytest is part of the [test] extra
    pytest = None  # type: ignore[assignment]

__all__ = [
    "OrderRecord",
    "SourceConformance",
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
