"""bastion.testing: the pytest plugin that runs a strategy file through the real door and
engine, and the Source conformance suite (which the built-in sources pass)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import bastion.testing
from bastion import ConfigError, Kernel, hookimpl
from bastion.interfaces import PluginContext, Source, select_symbols
from bastion.models import Bar
from bastion.testing import (
    SourceConformance,
    StrategyQuarantined,
    StrategyResult,
    make_bars,
    run_strategy,
)

from .conftest import CLI

BUY_ONCE = """\
from bastion import strategy

PARAMS = {"quantity": 5}


@strategy.hook
def on_bar(ctx, bar):
    ctx.log.info("bar", symbol=bar.symbol, at=bar.ts)
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order(bar.symbol, ctx.params["quantity"], tag="entry")
"""


def strategy_file(tmp_path: Path, source: str, name: str = "buy_once.py") -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(source)
    return path


# --------------------------------------------------------------------------- the plugin


def test_pytest_loads_the_plugin_through_its_entry_point(request: pytest.FixtureRequest) -> None:
    """The ``pytest11`` entry point ``bastion = bastion.testing`` is installed, and pytest
    loaded that module in this very session (so authors need no conftest)."""
    (entry,) = [e for e in metadata.entry_points(group="pytest11") if e.name == "bastion"]
    assert entry.value == "bastion.testing"
    assert request.config.pluginmanager.get_plugin("bastion") is bastion.testing


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    """Importing bastion.testing (what every pytest session in an environment with Bastion
    does) loads neither the kernel, the sandbox, the store nor their big dependencies."""
    heavy = ["bastion._kernel", "bastion._backtest", "bastion._sandbox", "cryptography"]
    heavy += ["matplotlib", "sqlite_utils", "click"]
    probe = f"import sys, bastion.testing; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- run_strategy


def test_a_run_reports_orders_fills_equity_and_positions(tmp_path: Path) -> None:
    """A sandboxed run over given bars returns the order (filled), its fill at the next
    bar's price, one equity point per bar, the open position, the exact end equity and
    the strategy's own log records."""
    path = strategy_file(tmp_path, BUY_ONCE)
    result = run_strategy(path, make_bars("AAA", [10, 11, 12, 13]))
    assert result.sandbox == "sandboxed" and result.bars == 4 and result.quarantined is None
    (order,) = result.orders
    assert (order.symbol, order.side, order.quantity, order.tag) == ("AAA", "buy", 5, "entry")
    assert (order.status, order.reason, order.filled) == ("filled", None, Decimal(5))
    (fill,) = result.fills
    assert (fill.order_id, fill.quantity, fill.price) == (
        order.order.client_order_id,
        Decimal(5),
        Decimal(11),
    )
    assert result.positions == {"AAA": Decimal(5)}
    assert result.rejections == ()
    assert [ts for ts, _ in result.equity] == [b.ts for b in make_bars("AAA", [1] * 4)]
    assert result.equity[0][1] == 100_000
    expected = Decimal(100_000) - 5 * fill.price - fill.commission + 5 * 13
    assert result.end_equity == expected
    assert result.equity[-1][1] == pytest.approx(float(expected))
    assert [r["event"] for r in result.logs] == ["bar"] * 4
    assert result.workspace is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["buy_once.py"]  # nothing added


def test_params_cash_and_the_in_process_host(tmp_path: Path) -> None:
    """``params`` override PARAMS as --param does, ``cash`` is the starting cash, and
    ``sandboxed=False`` runs the file in this process with the same outcome."""
    path = strategy_file(tmp_path, BUY_ONCE)
    bars = make_bars("AAA", [10, 11, 12, 13])
    runs = [
        run_strategy(path, bars, params={"quantity": 7}, cash=5_000, sandboxed=sandboxed)
        for sandboxed in (True, False)
    ]
    assert [r.sandbox for r in runs] == ["sandboxed", "in-process"]
    assert {(r.orders[0].quantity, r.positions["AAA"], r.equity[0][1]) for r in runs} == {
        (Decimal(7), Decimal(7), 5_000.0)
    }
    assert runs[0].end_equity == runs[1].end_equity
    with pytest.raises(ConfigError, match="no strategy in this run has a parameter 'size'"):
        run_strategy(path, bars, params={"size": 1})


@pytest.mark.parametrize(
    ("name", "source", "status"),
    [
        ("reads_files.py", "import os\n" + BUY_ONCE, "forbidden-import"),
        ("bad-name.py", BUY_ONCE, "bad-name"),
        ("hidden.py", 'x = "\u202e"\n' + BUY_ONCE, "bidi-control"),
        ("misspelt.py", BUY_ONCE.replace("on_bar", "on_bars"), "bad-interface"),
    ],
)
def test_the_file_goes_through_the_verification_door(
    tmp_path: Path, name: str, source: str, status: str
) -> None:
    """The file is admitted by the strict gate, never imported: what ``bastion verify`` or
    the loader refuses is refused here, with the same status."""
    path = strategy_file(tmp_path, source, name)
    with pytest.raises(ConfigError, match=f"{name} is not verified \\({status}: "):
        run_strategy(path, make_bars("AAA", [10, 11]))


def test_a_kept_workspace_is_signed_and_verifies(tmp_path: Path, cli: CLI) -> None:
    """With ``directory`` the run's workspace is kept: the file signed there by a
    throw-away key that workspace trusts, so ``bastion verify`` passes on it too."""
    path = strategy_file(tmp_path, BUY_ONCE)
    result = run_strategy(path, make_bars("AAA", [10, 11]), directory=tmp_path / "runs")
    home = result.workspace
    assert home is not None and home.parent.parent == tmp_path / "runs"
    assert (home / "signatures" / "buy_once.py.minisig").is_file()
    assert (home / ".bastion" / "development" / "bastion.db").is_file()
    verified = cli("verify", "--home", home)
    assert verified.exit_code == 0, verified.output
    assert "buy_once.py: ok" in verified.output


REJECTIONS = """\
from bastion import strategy


@strategy.hook
def on_start(ctx):
    ctx.order("AAA", 1)


@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("done"):
        ctx.state["done"] = True
        ctx.order("ZZZ", 1)
        ctx.order(bar.symbol, 5)


@strategy.hook
def on_reject(ctx, intent, reason):
    ctx.log.warning("rejected", symbol=intent.symbol, reason=reason)
"""


def test_rejections_carry_their_reasons(tmp_path: Path) -> None:
    """Orders refused by the kernel or an order limit (``config``) are in ``rejections``
    with their reasons; an intent of ``on_start`` never becomes an order, but the
    strategy's ``on_reject`` (and so ``logs``) sees it."""
    path = strategy_file(tmp_path, REJECTIONS, "rejects.py")
    result = run_strategy(
        path,
        make_bars("AAA", [10, 11, 12]),
        config="[limits.development]\nmax_order_quantity = 3\n",
    )
    assert [(o.symbol, o.status) for o in result.orders] == [
        ("ZZZ", "rejected"),
        ("AAA", "rejected"),
    ]
    assert [o.reason for o in result.rejections] == [
        "unknown symbol 'ZZZ': not in this run's data",
        "quantity 5 exceeds the development limit of 3",
    ]
    assert [r["reason"] for r in result.logs if r["event"] == "rejected"] == [
        "orders cannot be placed before the first bar",
        *[o.reason for o in result.rejections],
    ]
    assert result.fills == () and result.positions == {}


class VetoBigOrders:
    """A risk plugin object, not installed: handed to run_strategy(plugins=...)."""

    @hookimpl
    def check_order(self, intent: Any) -> str | None:
        return "too big for the test" if intent.quantity > 3 else None


def test_plugins_take_part_in_the_run(tmp_path: Path) -> None:
    """A plugin object given in ``plugins`` vetoes orders as an installed one would."""
    path = strategy_file(tmp_path, BUY_ONCE)
    result = run_strategy(path, make_bars("AAA", [10, 11]), plugins=[VetoBigOrders()])
    assert [(o.status, o.reason) for o in result.orders] == [("rejected", "too big for the test")]


CRASHES = """\
from bastion import strategy


@strategy.hook
def on_bar(ctx, bar):
    if bar.close > 10:
        1 / 0
"""


def test_a_quarantine_fails_the_test_unless_allowed(tmp_path: Path) -> None:
    """A strategy that raises is quarantined; run_strategy raises an AssertionError with
    the stored reason and the strategy's traceback, or returns the result if allowed."""
    path = strategy_file(tmp_path, CRASHES, "crashes.py")
    bars = make_bars("AAA", [10, 11, 12])
    with pytest.raises(StrategyQuarantined) as caught:
        run_strategy(path, bars)
    message = str(caught.value)
    assert message.startswith("crashes.py was quarantined: exception: on_bar: ")
    assert "ZeroDivisionError" in message and "line 7" in message
    assert isinstance(caught.value, AssertionError)
    assert caught.value.result.bars == 3
    result = run_strategy(path, bars, allow_quarantine=True)
    assert result.quarantined is not None and result.quarantined.startswith("exception: on_bar")


def test_bars_are_sorted_and_checked(tmp_path: Path) -> None:
    """Bars of several symbols may be given in any order (the strategy sees them by
    time, then symbol); two bars of one symbol at one time, or none, are refused."""
    path = strategy_file(tmp_path, BUY_ONCE)
    bars = make_bars("BBB", [20, 21]) + make_bars("AAA", [10, 11])
    result = run_strategy(path, reversed(bars))
    assert [r["symbol"] for r in result.logs] == ["AAA", "BBB", "AAA", "BBB"]
    with pytest.raises(ConfigError, match="two bars of AAA at 2024-01-02T21:00:00"):
        run_strategy(path, make_bars("AAA", [10]) * 2)
    with pytest.raises(ConfigError, match="no bars given"):
        run_strategy(path, [])
    with pytest.raises(ConfigError, match="cannot read"):
        run_strategy(tmp_path / "missing.py", make_bars("AAA", [10]))


def test_the_developers_data_directory_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BASTION_DATA_DIR would send the throw-away store there: it is set aside during the
    run and restored after it."""
    elsewhere = tmp_path / "real-data"
    monkeypatch.setenv("BASTION_DATA_DIR", str(elsewhere))
    run_strategy(strategy_file(tmp_path, BUY_ONCE), make_bars("AAA", [10, 11]))
    assert not elsewhere.exists()
    import os

    assert os.environ["BASTION_DATA_DIR"] == str(elsewhere)


def test_the_fixture_keeps_each_run_under_the_test_folder(
    bastion_run: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``bastion_run`` is run_strategy with each run's workspace kept in its own folder
    under pytest's temporary directory."""
    path = strategy_file(tmp_path, BUY_ONCE)
    first: StrategyResult = bastion_run(path, make_bars("AAA", [10, 11]))
    second: StrategyResult = bastion_run(path, make_bars("AAA", [10, 11]), sandboxed=False)
    assert first.workspace is not None and second.workspace is not None
    assert first.workspace != second.workspace
    base = tmp_path_factory.getbasetemp()
    assert base in first.workspace.parents and base in second.workspace.parents
    assert first.fills[0].price == second.fills[0].price == Decimal(11)


def test_make_bars_builds_flat_bars_one_step_apart() -> None:
    """make_bars: open, high and low equal the close; times ``step`` apart from ``start``."""
    start = datetime.fromisoformat("2025-03-03T14:30:00+00:00")
    bars = make_bars("X", [1, 2.5], start=start, step=timedelta(minutes=1), volume=100)
    assert bars == [
        Bar("X", start, 1.0, 1.0, 1.0, 1.0, 100),
        Bar("X", start + timedelta(minutes=1), 2.5, 2.5, 2.5, 2.5, 100),
    ]


# --------------------------------------------------------------------------- conformance

_KERNEL: Kernel | None = None


def open_source(spec: str) -> Source:
    """A source as ``--source SPEC`` opens it, through the built-in plugins."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = Kernel(entry_points=False)
    return _KERNEL.open_source(spec, PluginContext("development", Path("/nonexistent")))


class TestCsvSampleSource(SourceConformance):
    """The bundled sample data (five symbols of daily bars)."""

    def make_source(self) -> Source:
        return open_source("csv:sample")


class TestCsvFolderSource(SourceConformance):
    """A folder of intraday CSV files whose symbols share timestamps."""

    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        for symbol, base in (("MSFT", 300.0), ("AAPL", 150.0), ("IBM", 120.0)):
            rows = ["timestamp,open,high,low,close,volume"]
            for minute in range(30):
                price = base + minute % 7
                rows.append(
                    f"2024-03-01T14:{minute:02d}:00Z,{price},{price + 1},{price - 1},{price},100"
                )
            (tmp_path / f"{symbol}.csv").write_text("\n".join(rows) + "\n")
        self.folder = tmp_path

    def make_source(self) -> Source:
        return open_source(f"csv:{self.folder}")


class TestSyntheticDailySource(SourceConformance):
    """Synthetic daily bars (weekends skipped)."""

    def make_source(self) -> Source:
        return open_source("synthetic:120,symbols=3")


class TestSyntheticMinuteSource(SourceConformance):
    """Synthetic minute bars of twelve symbols (sorted as text: SYN10 before SYN2)."""

    def make_source(self) -> Source:
        return open_source("synthetic:40,symbols=12,interval=1m")


class TestGivenBarsSource(SourceConformance):
    """The source run_strategy makes of the bars it is given."""

    def make_source(self) -> Source:
        from bastion.testing import _GivenBars

        return _GivenBars(make_bars("B", [1, 2, 3]) + make_bars("A", [4, 5, 6, 7]))


class FlawedSource:
    """Bars of A and B; ``flaw`` breaks one rule of the contract."""

    description = "flawed test source"

    def __init__(self, flaw: str | None) -> None:
        self.flaw = flaw
        self._bars = make_bars("A", range(1, 9)) + make_bars("B", range(11, 19))
        self._bars.sort(key=lambda b: (b.ts, b.symbol))

    def symbols(self) -> tuple[str, ...]:
        return ("B", "A") if self.flaw == "unsorted symbols" else ("A", "B")

    def bars(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Bar]:
        flaw = self.flaw
        if flaw == "unknown symbol passes" or flaw == "unknown symbol is a KeyError":
            if symbols is not None and set(symbols) - {"A", "B"}:
                if flaw == "unknown symbol passes":
                    return iter([])
                raise KeyError(symbols[0])
            wanted = set(symbols) if symbols is not None else {"A", "B"}
        elif flaw == "empty list means all":
            wanted = set(symbols or ("A", "B"))
        elif flaw == "symbols ignored":
            wanted = {"A", "B"}
        else:
            wanted = set(select_symbols(symbols, ("A", "B"), self.description))
        out = [
            b
            for b in self._bars
            if b.symbol in wanted
            and (start is None or b.ts >= start)
            and (end is None or (b.ts < end if flaw == "exclusive end" else b.ts <= end))
        ]
        if flaw == "by symbol":
            out.sort(key=lambda b: (b.symbol, b.ts))
        if flaw == "duplicate bar":
            out.append(out[-1])
        return iter(out)

    def count(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> int | None:
        counted = sum(1 for _ in self.bars(symbols, start, end))
        return counted + 1 if self.flaw == "count off by one" else counted


@pytest.mark.parametrize(
    ("flaw", "failing"),
    [
        ("unsorted symbols", "test_symbols_are_sorted_and_unique"),
        ("by symbol", "test_bars_are_ordered_by_time_then_symbol"),
        ("duplicate bar", "test_one_bar_per_symbol_and_time"),
        ("exclusive end", "test_start_and_end_filter_inclusively"),
        ("symbols ignored", "test_symbols_select_bars"),
        ("empty list means all", "test_symbols_select_bars"),
        ("unknown symbol passes", "test_unknown_symbol_is_a_config_error"),
        ("unknown symbol is a KeyError", "test_unknown_symbol_is_a_config_error"),
        ("count off by one", "test_count_agrees_with_bars"),
    ],
)
def test_the_suite_fails_a_source_that_breaks_the_contract(flaw: str, failing: str) -> None:
    """Each rule has a test that fails, with an AssertionError saying what is wrong, on a
    source that breaks just that rule; a source keeping every rule passes them all."""

    class Suite(SourceConformance):
        def make_source(self) -> Source:
            return FlawedSource(flaw)  # type: ignore[return-value]

    class Sound(SourceConformance):
        def make_source(self) -> Source:
            return FlawedSource(None)  # type: ignore[return-value]

    tests = [name for name in dir(SourceConformance) if name.startswith("test_")]
    assert failing in tests
    with pytest.raises(AssertionError):
        getattr(Suite(), failing)()
    for name in tests:
        getattr(Sound(), name)()


def test_the_suite_says_what_to_override() -> None:
    """A subclass that forgot make_source() is told to write it."""

    class Forgot(SourceConformance):
        pass

    with pytest.raises(NotImplementedError, match="Forgot: return the source to check"):
        Forgot().test_is_a_source()
