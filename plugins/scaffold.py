"""Built-in plugin: ``bastion new strategy NAME`` and ``bastion new plugin NAME``.

``new strategy`` writes a commented strategy file, ready to backtest unsigned in
development and to sign, into the workspace's ``strategies/``.  ``new plugin``
writes a plugin package: its own ``pyproject.toml`` (entry point group
``bastion``), a risk check and a small market-data source, a README, and tests
that use the ``bastion.testing`` pytest plugin (the backtest fixture and the
source conformance suite).  Neither ever overwrites anything.

Registered through ``register_commands`` like any third-party command; the
templates are strings in this module.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from bastion import API_VERSION, ConfigError, __version__, hookimpl
from bastion.cli import App, console, pass_app, workspace_options

# The strategy file name rule of the verification gate (bastion._trust.STRATEGY_NAME_RE,
# which is not public; tests/test_scaffold.py checks that the two agree).
STRATEGY_NAME_RE = re.compile(r"^(?!__)[A-Za-z_][A-Za-z0-9_]{0,99}\.py$")
PLUGIN_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
MAX_PLUGIN_NAME = 64


# --------------------------------------------------------------------------- templates

STRATEGY_TEMPLATE = '''\
"""{stem}: a Bastion strategy (written by 'bastion new strategy'; edit freely).

As written it holds ``quantity`` shares of each symbol while the symbol's close is
above the average of its last ``lookback`` closes, and is flat while it is below.
Replace the rules in on_bar with your own.

While you work on it (development only: runs the file unsigned, and says so):

    bastion backtest {stem} --allow-unsigned

Test it with pytest: the bastion.testing plugin runs this file over bars you
give, sandboxed like production (docs/how-to/write-test-sign.md).  When it is
ready, sign it (a new signature after every change) and check:

    bastion sign {stem}.py --key YOUR_KEY
    bastion verify {stem}

A strategy may import only bastion.strategy, bastion.models and pure-computation
standard modules (math, statistics, collections, ...).  It runs in a locked-down
worker process: no files, no network, no other strategy's state.
"""

from bastion import strategy

# Defaults of the strategy's parameters (bool, int, float or str).  Override them
# per run with --param KEY=VALUE, or per workspace in bastion.toml under
# [params.{stem}], without changing (and re-signing) this file.
PARAMS = {{"lookback": 20, "quantity": 10}}


@strategy.hook
def on_start(ctx):
    """Once, before the first bar.  Set up ctx.state; orders asked for here are rejected."""
    ctx.state["closes"] = {{}}  # symbol -> its latest closes, oldest first


@strategy.hook
def on_bar(ctx, bar):
    """Every bar of every symbol, in time order: decide, and ask for orders."""
    lookback = ctx.params["lookback"]
    closes = ctx.state["closes"].setdefault(bar.symbol, [])
    closes.append(bar.close)
    del closes[:-lookback]
    if len(closes) < lookback:
        return  # not enough history yet
    average = sum(closes) / lookback
    # position + pending is where the strategy is heading: orders still working count,
    # so a partly filled order is not doubled on the next bar.
    held = ctx.position(bar.symbol) + ctx.pending(bar.symbol)
    if bar.close > average and held <= 0:
        # quantity > 0 buys, < 0 sells; limit=PRICE makes a limit order, stop=PRICE a stop.
        ctx.order(bar.symbol, ctx.params["quantity"] - held, tag="entry")
    elif bar.close < average and held > 0:
        ctx.order(bar.symbol, -held, tag="exit")


@strategy.hook
def on_fill(ctx, fill):
    """Each (partial) fill of one of its orders; ctx already includes it."""
    ctx.log.info("filled", symbol=fill.symbol, side=fill.side, quantity=fill.quantity,
                 price=fill.price)


@strategy.hook
def on_reject(ctx, intent, reason):
    """An order refused by a limit, a risk check or the broker, with the reason."""
    ctx.log.warning("rejected", symbol=intent.symbol, tag=intent.tag, reason=reason)


@strategy.hook
def on_stop(ctx):
    """Once, when the data ends.  Orders asked for here are not executed."""
    ctx.log.info("stopped", equity=ctx.equity, cash=ctx.cash)
'''

PYPROJECT_TEMPLATE = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "A Bastion plugin: a notional risk check and a small market-data source."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["bastion-kernel>={kernel}"]

[project.optional-dependencies]
test = ["pytest>=8"]

# Bastion finds the plugin through this entry point.  Its name is the plugin's name
# in 'bastion plugins', in error messages and in BASTION_DISABLE_PLUGINS; its value
# is the module whose @hookimpl functions Bastion registers.
[project.entry-points.bastion]
{module} = "{module}.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["src"]
"""

README_TEMPLATE = """\
# {name}

A [Bastion](https://pypi.org/project/bastion-kernel/) plugin, written by
`bastion new plugin {name}`. It has two parts, both in `src/{module}/`:

- `plugin.py`: the hook implementations Bastion registers through the entry
  point in `pyproject.toml`:
  - `check_order`, a risk check that vetoes any order whose notional
    (quantity times its limit or stop price, or for a market order the last
    price Bastion saw) is over `MAX_NOTIONAL`;
  - `register_sources`, which offers the market-data source `{module}`.
- `source.py`: that source, daily bars of made-up prices (`--source {module}:AAA,BBB`).
  Replace it with your own feed, or delete it and its hook.

Plugins are trusted code: Bastion neither signs nor sandboxes them. Import only
Bastion's public API (`bastion api` lists it; `docs/reference/api.md`), and
keep `BASTION_API` in `plugin.py` at the major version of the API you wrote
against.

## Develop

```console
$ pip install -e '.[test]'     # into the environment that has Bastion
$ pytest                       # the tests in tests/
$ bastion plugins              # lists {module}, from the entry point
$ bastion backtest --source {module}:AAA,BBB --allow-unsigned
```

The tests use Bastion's pytest plugin, `bastion.testing`, which pytest loads by
itself:

- `tests/test_plugin.py` calls `check_order` directly, then runs a strategy file
  (`tests/strategies/big_orders.py`) over a few bars with the `bastion_run`
  fixture, which signs it with a throw-away key and backtests it sandboxed, as
  `bastion backtest` would, and checks that the big order was vetoed;
- `tests/test_source.py` runs the source conformance suite
  (`bastion.testing.SourceConformance`) against the source.

## Remove

```console
$ pip uninstall {name}
```
"""

INIT_TEMPLATE = '''\
"""{name}: a Bastion plugin (a risk check and a market-data source).

The hook implementations are in :mod:`{module}.plugin`, which the entry point in
pyproject.toml names.
"""

__version__ = "0.1.0"
'''

PLUGIN_TEMPLATE = '''\
"""{module}'s hook implementations: a risk check and a market-data source.

Bastion registers this module (the entry point in pyproject.toml names it) and calls
each @hookimpl function by its name; a function may take any subset of its hook's
arguments (docs/reference/hooks.md).  A hook that raises is reported with this
plugin's name and the kernel carries on; a check_order that raises vetoes the order.
"""

from __future__ import annotations

from decimal import Decimal

from bastion import Environment, StrategyInfo, hookimpl
from bastion.interfaces import Offer
from bastion.models import OrderIntent

from .source import WaveSource

#: The major version of Bastion's plugin API this was written for: Bastion refuses
#: to load the plugin under another one, with a message saying so.
BASTION_API = {api}

#: Orders worth more than this are vetoed: quantity x the limit or stop price, or for
#: a market order x the last price Bastion saw for the symbol.
MAX_NOTIONAL = Decimal(50_000)


@hookimpl
def check_order(
    intent: OrderIntent,
    strategy: StrategyInfo,
    environment: Environment,
    last_price: Decimal | None,
) -> str | None:
    """Veto an order over the limit with a one-line reason, or let it pass (None).

    Called for every order intent of every strategy, in backtests, paper and live,
    after the environment's own order limits (bastion.toml [limits.ENV]).  Bastion
    passes the arguments a hook names: ``ts`` (the bar's time) is there too.
    """
    price = intent.limit_price or intent.stop_price or last_price
    if price is None:
        return f"{module}: no price seen yet for {{intent.symbol}}; cannot value the order"
    notional = intent.quantity * price
    if notional > MAX_NOTIONAL:
        return (
            f"{module}: notional {{notional:,.2f}} is over the limit of {{MAX_NOTIONAL:,.2f}}"
        )
    return None


@hookimpl
def register_sources() -> list[Offer[WaveSource]]:
    """Offer the source ``{module}``: ``--source {module}:AAA,BBB``."""
    return [
        Offer(
            "{module}",
            lambda spec, context: WaveSource.open(spec),
            description="daily bars of made-up prices ({name})",
            options="comma-separated symbols (default DEMO)",
        )
    ]
'''

SOURCE_TEMPLATE = '''\
"""A small market-data source: daily bars of made-up prices (replace with your feed).

It keeps the contract of bastion.interfaces.Source, which tests/test_source.py
checks with bastion.testing.SourceConformance: symbols() sorted; bars() in
(ts, symbol) order, one per symbol and time, start and end inclusive, the symbols
asked for only; an unknown symbol a one-line bastion.ConfigError naming it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta

from bastion import ConfigError
from bastion.interfaces import select_symbols
from bastion.models import Bar

SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9.]{{0,11}}$")


class WaveSource:
    """``days`` daily bars (closing 21:00 UTC) per symbol whose closes follow a wave."""

    def __init__(self, symbols: Sequence[str], days: int = 60) -> None:
        self._symbols = tuple(sorted(set(symbols)))
        self._index = {{s: i for i, s in enumerate(self._symbols)}}
        self.days = days
        self.start = date(2024, 1, 1)
        self.description = f"{module}:{{','.join(self._symbols)}} ({{days}} daily bars)"

    @classmethod
    def open(cls, spec: str) -> WaveSource:
        """The source ``--source {module}:SPEC`` names: comma-separated symbols."""
        symbols = [s.strip() for s in spec.split(",") if s.strip()] or ["DEMO"]
        for symbol in symbols:
            if not SYMBOL_RE.match(symbol):
                raise ConfigError(
                    f"--source {module}:{{spec}}: {{symbol!r}} is not a symbol like AAPL; "
                    "give comma-separated symbols"
                )
        return cls(symbols)

    def symbols(self) -> tuple[str, ...]:
        """Every symbol, sorted."""
        return self._symbols

    def bars(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Bar]:
        """Bars of ``symbols`` (all if None) with start <= ts <= end, by (ts, symbol)."""
        wanted = select_symbols(symbols, self._symbols, self.description)
        return self._generate(wanted, start, end)

    def count(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> int:
        """How many bars bars() yields for the same arguments."""
        return sum(1 for _ in self.bars(symbols, start, end))

    def _generate(
        self, wanted: Sequence[str], start: datetime | None, end: datetime | None
    ) -> Iterator[Bar]:
        for day in range(self.days):
            ts = datetime.combine(self.start + timedelta(days=day), time(21, tzinfo=UTC))
            if start is not None and ts < start:
                continue
            if end is not None and ts > end:
                return
            for symbol in wanted:  # sorted, so bars come in (ts, symbol) order
                yield self._bar(symbol, day, ts)

    def _bar(self, symbol: str, day: int, ts: datetime) -> Bar:
        index = self._index[symbol]

        def close(d: int) -> float:
            return round((100 + 10 * index) * (1 + 0.1 * math.sin(d / 5 + index)), 2)

        price, previous = close(day), close(day - 1) if day else close(day)
        high = round(max(price, previous) * 1.01, 2)
        low = round(min(price, previous) * 0.99, 2)
        return Bar(symbol, ts, previous, high, low, price, 10_000.0)
'''

TEST_PLUGIN_TEMPLATE = '''\
"""{module}'s hooks: the risk check on its own, and in a backtest.

bastion_run and make_bars come from Bastion's pytest plugin (bastion.testing),
which pytest loads by itself wherever bastion-kernel is installed.
"""

from decimal import Decimal
from pathlib import Path

from bastion import Kernel
from bastion.models import OrderIntent
from bastion.testing import make_bars

from {module} import plugin

STRATEGIES = Path(__file__).parent / "strategies"


def check(intent, last_price=Decimal(100)):
    return plugin.check_order(
        intent=intent, strategy=None, environment="development", last_price=last_price
    )


def test_orders_over_the_notional_are_vetoed():
    """A limit order worth more than MAX_NOTIONAL is vetoed, with a reason naming the plugin."""
    big = OrderIntent("AAA", "buy", 1_000, type="limit", limit_price=100)
    assert check(big) == "{module}: notional 100,000.00 is over the limit of 50,000.00"


def test_orders_within_the_limits_pass():
    """Smaller priced orders pass; a market order is valued at the last price."""
    assert check(OrderIntent("AAA", "buy", 10, type="limit", limit_price=100)) is None
    assert check(OrderIntent("AAA", "sell", 500)) is None
    assert check(OrderIntent("AAA", "sell", 501)) == (
        "{module}: notional 50,100.00 is over the limit of 50,000.00"
    )


def test_a_market_order_before_any_price_is_vetoed():
    """Before the first bar there is no price to value a market order at: vetoed."""
    assert check(OrderIntent("AAA", "buy", 1), last_price=None) == (
        "{module}: no price seen yet for AAA; cannot value the order"
    )


def test_bastion_finds_the_plugin():
    """The entry point in pyproject.toml makes the plugin part of Bastion
    (after 'pip install -e .'), with both hooks."""
    (row,) = [p for p in Kernel().plugins() if p.name == "{module}"]
    assert row.origin == "entry point"
    assert {{"check_order", "register_sources"}} <= set(row.hooks)


def test_a_backtest_vetoes_the_big_order(bastion_run):
    """In a backtest (the strategy signed with a throw-away key and run sandboxed, as
    'bastion backtest' would) the small order fills and the big one is vetoed."""
    bars = make_bars("AAA", [100, 101, 102, 103])
    # plugins=: the plugin takes part even before it is installed.
    result = bastion_run(STRATEGIES / "big_orders.py", bars, plugins=[plugin])
    small, big = result.orders
    assert (small.status, small.filled) == ("filled", Decimal(10))
    assert big.status == "rejected"
    assert big.reason.startswith("{module}: notional")
    assert result.positions == {{"AAA": Decimal(10)}}
'''

TEST_SOURCE_TEMPLATE = '''\
"""The source keeps the Source contract: Bastion's conformance suite, run against it."""

from bastion.testing import SourceConformance

from {module}.source import WaveSource


class TestWaveSource(SourceConformance):
    """Every test of bastion.testing.SourceConformance, against a three-symbol source."""

    def make_source(self):
        return WaveSource.open("AAA,BBB,CCC")
'''

TEST_STRATEGY_TEMPLATE = '''\
"""A test strategy: on the first bar, one small and one big limit order."""

from bastion import strategy


@strategy.hook
def on_bar(ctx, bar):
    if ctx.state.get("ordered"):
        return
    ctx.state["ordered"] = True
    limit = round(bar.close * 1.01, 2)
    ctx.order(bar.symbol, 10, limit=limit, tag="small")
    ctx.order(bar.symbol, 1_000, limit=limit, tag="big")
'''


def plugin_files(name: str) -> dict[str, str]:
    """The files of the plugin package ``name``, by path inside it."""
    module = name.replace("-", "_")
    values = {
        "name": name,
        "module": module,
        "kernel": ".".join(__version__.split(".")[:2]),
        "api": API_VERSION.split(".")[0],
    }
    return {
        "pyproject.toml": PYPROJECT_TEMPLATE.format(**values),
        "README.md": README_TEMPLATE.format(**values),
        f"src/{module}/__init__.py": INIT_TEMPLATE.format(**values),
        f"src/{module}/plugin.py": PLUGIN_TEMPLATE.format(**values),
        f"src/{module}/source.py": SOURCE_TEMPLATE.format(**values),
        "tests/test_plugin.py": TEST_PLUGIN_TEMPLATE.format(**values),
        "tests/test_source.py": TEST_SOURCE_TEMPLATE.format(**values),
        "tests/strategies/big_orders.py": TEST_STRATEGY_TEMPLATE,
    }


# --------------------------------------------------------------------------- commands


@click.group("new")
def new_group() -> None:
    """Start a strategy file or a plugin package from a commented template."""


@new_group.command("strategy")
@workspace_options
@click.argument("name")
@pass_app
def new_strategy(app: App, name: str) -> None:
    """Write strategies/NAME.py: a commented strategy, ready to backtest and sign.

    NAME is a plain identifier (letters, digits and _, not starting with a digit
    or __); '.py' may be left out.  An existing file is never overwritten.
    """
    filename = name if name.endswith(".py") else f"{name}.py"
    if not STRATEGY_NAME_RE.match(filename):
        raise ConfigError(
            f"{name!r} is not a strategy name: use a plain identifier such as my_strategy "
            "(letters, digits and _, not starting with a digit or __)"
        )
    folder = app.workspace.strategies
    path = folder / filename
    if path.exists() or path.is_symlink():
        raise ConfigError(
            f"{path} already exists; choose another name, or delete or rename the file first"
        )
    folder.mkdir(exist_ok=True)
    stem = filename.removesuffix(".py")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists; choose another name, or delete or rename the file first"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(STRATEGY_TEMPLATE.format(stem=stem))
    console.print(f"wrote {path}", markup=False)
    console.print(
        f"next: bastion backtest {stem} --allow-unsigned   (development: runs it unsigned)",
        markup=False,
    )
    console.print(f"      bastion sign {filename} --key KEY && bastion verify {stem}", markup=False)


@new_group.command("plugin")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help="The package folder to create (it must not exist, or be empty) [default: ./NAME].",
)
def new_plugin(name: str, directory: Path | None) -> None:
    """Write a plugin package NAME: pyproject.toml, a risk check, a source, a README, tests.

    NAME is the distribution name, lower case (my-risk or my_risk); its module and
    entry point are NAME with '-' as '_'.  Its tests use Bastion's pytest plugin
    (bastion.testing): a backtest with the risk check, and the source conformance
    suite.
    """
    module = name.replace("-", "_")
    if (
        len(name) > MAX_PLUGIN_NAME
        or not PLUGIN_NAME_RE.match(name)
        or keyword.iskeyword(module)
        or module == "bastion"
    ):
        raise ConfigError(
            f"{name!r} is not a plugin name: use lower-case letters, digits and single '-' "
            f"or '_' between them, starting with a letter, at most {MAX_PLUGIN_NAME} "
            "characters (e.g. acme-risk); not 'bastion' or a Python keyword"
        )
    target = Path(os.path.abspath(directory if directory is not None else Path(name)))
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ConfigError(f"--dir {target}: is a file; name a new folder for the package")
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError(f"{target} already exists and is not empty; choose another --dir or NAME")
    if not target.parent.is_dir():
        raise ConfigError(f"--dir {target}: {target.parent} does not exist; create it first")
    # Written aside and moved into place whole: a failure leaves nothing behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{module}-", dir=target.parent))
    try:
        for relative, text in plugin_files(name).items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        staging.chmod(0o755)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    console.print(f"wrote {target}/", markup=False)
    for relative in plugin_files(name):
        console.print(f"  {relative}", markup=False)
    console.print(
        f"next: cd {target} && pip install -e '.[test]' && pytest",
        markup=False,
    )


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(new_group)
