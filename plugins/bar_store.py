"""Built-in plugin: the local bar store: ``bastion data import``, ``bastion data list``
and the ``store`` source.

``bastion data import SPEC`` reads bars from any source (``csv:PATH``, ``csv:sample``,
``synthetic:...``, a plugin's) and keeps them in the environment's store (one that
implements :class:`bastion.interfaces.BarStore`; ``--storage sqlite`` by default) as
bars of one ``--interval`` (default ``1d``).  Re-importing the same bars changes
nothing (an upsert by symbol, interval and time); an import that fails half-way (a bad
row, bars finer than ``--interval``) stores nothing.

``--source store:SPEC`` backtests from the environment's SQLite store, where ``SPEC`` is

``SYMBOL[,SYMBOL...][,interval=I][,tz=ZONE]``

* the symbols (at least one), as ``bastion data list`` shows them;
* ``interval``: the bars to run on.  Stored at that interval, they are read as they are;
  otherwise they are rolled up (:func:`bastion.bars.rollup`) from the coarsest interval
  stored for every symbol that is finer than ``I`` and divides it (``1m`` -> ``5m``,
  ``1h``, ``1d``).  Default: the finest interval stored for every symbol;
* ``tz`` (default ``UTC``): the clock rolled-up bars are aligned on: intraday buckets
  never cross its midnight, and a ``1d`` bar is one trading date there (use
  ``America/New_York`` for US sessions).

A rolled-up bar is produced only from complete buckets: with ``--from``/``--to``, the
bars around the period's edges are read too, and the rolled-up bars that close outside
it are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import click
from rich.table import Table

from bastion import ConfigError, hookimpl
from bastion.bars import parse_interval, rollup, trading_date
from bastion.cli import App, console, pass_app, storage_option, workspace_options
from bastion.interfaces import BarSeries, BarStore, Offer, PluginContext, select_symbols
from bastion.models import Bar
from bastion.plugins.sqlite_store import DB_NAME, SQLiteStore
from bastion.runs import parse_date

__all__ = ["StoreSource", "parse_store_spec", "register_commands", "register_sources"]

_KEYS: Final = ("interval", "tz")
_DAY: Final = timedelta(days=1)
_UTC: Final = ZoneInfo("UTC")
_USAGE: Final = "e.g. store:AAPL,MSFT or store:AAPL,interval=5m,tz=America/New_York"


@hookimpl
def register_sources() -> list[Offer[StoreSource]]:
    return [
        Offer(
            "store",
            lambda spec, context: StoreSource.open(spec, context),
            description="bars imported with 'bastion data import' (rolled up on request)",
            options="SYMBOL[,SYMBOL...][,interval=I][,tz=ZONE]",
        )
    ]


# ---------------------------------------------------------------------- the spec


def parse_store_spec(spec: str) -> tuple[tuple[str, ...], str | None, str]:
    """``SYMBOL[,SYMBOL...][,interval=I][,tz=ZONE]`` -> (sorted unique symbols, interval or
    ``None``, tz); a one-line :class:`ConfigError` otherwise."""
    symbols: list[str] = []
    options: dict[str, str] = {}
    for part in (piece.strip() for piece in spec.split(",")):
        if not part:
            continue
        key, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep:
            symbols.append(part)
            continue
        key = key.lower()
        if key not in _KEYS:
            raise ConfigError(
                f"store source: unknown option {key!r}; the options are {', '.join(_KEYS)}"
            )
        if key in options:
            raise ConfigError(f"store source: option {key!r} is given twice; keep one")
        if not value:
            raise ConfigError(f"store source: option {key!r} is empty; {_USAGE}")
        options[key] = value
    if not symbols:
        raise ConfigError(
            f"store source: name the symbols, {_USAGE}; 'bastion data list' shows what is stored"
        )
    interval = options.get("interval")
    if interval is not None:
        parse_interval(interval)
    return tuple(sorted(set(symbols))), interval, options.get("tz", "UTC")


# ---------------------------------------------------------------------- the source


def _divides(source: str, target: str) -> bool:
    """Whether bars of ``source`` can roll up into ``target`` (finer, and a whole number
    of them per target bar; any intraday interval dividing a day rolls up into 1d)."""
    small, large = parse_interval(source), parse_interval(target)
    return small < large and (large % small == timedelta(0) or large == _DAY)


def _choose(
    symbols: Sequence[str], stored: dict[str, set[str]], interval: str | None, where: str
) -> tuple[str, str | None]:
    """(the interval to run on, the stored interval to roll up from or ``None``)."""
    for symbol in symbols:
        if symbol not in stored:
            raise ConfigError(
                f"store source: no bars of {symbol!r} in {where}; 'bastion data import' adds "
                "them, 'bastion data list' shows what is stored"
            )
    common = set.intersection(*(stored[s] for s in symbols))
    shown = "; ".join(f"{s}: {', '.join(_by_length(stored[s]))}" for s in symbols)
    if interval is None:
        if not common:
            raise ConfigError(
                f"store source: no interval is stored for every symbol ({shown}); "
                "choose symbols with a common one or import it"
            )
        return _by_length(common)[0], None
    if interval in common:
        return interval, None
    finer = [i for i in _by_length(common) if _divides(i, interval)]
    if not finer:
        raise ConfigError(
            f"store source: no bars to roll up into {interval} bars (stored: {shown}); "
            "import bars at a finer interval that divides it, or choose a stored interval"
        )
    return interval, finer[-1]


def _by_length(intervals: Iterable[str]) -> list[str]:
    return sorted(intervals, key=lambda text: (parse_interval(text), text))


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _shift(value: datetime | None, by: timedelta) -> datetime | None:
    if value is None:
        return None
    try:
        return value + by
    except OverflowError:
        return None  # past the end of datetime: unbounded


class StoreSource:
    """Bars read from a :class:`BarStore`, rolled up on request (see the module docstring)."""

    description: str

    def __init__(
        self,
        store: BarStore,
        symbols: Sequence[str],
        interval: str | None = None,
        tz: str = "UTC",
        *,
        spec: str = "",
    ) -> None:
        """Read ``symbols`` from ``store`` (which this source then owns and closes)."""
        series = store.bar_series()
        stored: dict[str, set[str]] = {}
        for row in series:
            stored.setdefault(row.symbol, set()).add(row.interval)
        self._store = store
        self._symbols = tuple(sorted(set(symbols)))
        self.interval, self.rolled_from = _choose(self._symbols, stored, interval, store.location)
        self.tz = tz
        # Checks tz (also when nothing is rolled up: a typo is never ignored) and, when
        # rolling, the two intervals, at once; the generator itself is discarded.
        rollup((), self.interval if self.rolled_from else "1d", tz=tz, source=self.rolled_from)
        read = self.rolled_from or self.interval
        rows = [r for r in series if r.symbol in self._symbols and r.interval == read]
        first = min(r.first for r in rows).date().isoformat()
        last = max(r.last for r in rows).date().isoformat()
        count = len(self._symbols)
        rolled = f" rolled up from {self.rolled_from}" if self.rolled_from else ""
        self.description = (
            f"store:{spec or ','.join(self._symbols)} ({count} symbol{'s' if count != 1 else ''}, "
            f"{self.interval}{rolled}, {first}..{last})"
        )

    @classmethod
    def open(cls, spec: str, context: PluginContext) -> StoreSource:
        """The ``store:`` source on the run's store (``context.open_store``: its
        ``--storage``), else on the environment's SQLite store (``bastion.db``)."""
        symbols, interval, tz = parse_store_spec(spec)
        if context.open_store is not None:
            opened = context.open_store()
            if not isinstance(opened, BarStore):
                _close(opened)
                raise ConfigError(
                    f"store source: {opened.location} keeps no bars (its storage plugin does "
                    "not implement BarStore); use a storage that does, e.g. --storage sqlite"
                )
            store: BarStore = opened
        elif not (Path(context.data_dir) / DB_NAME).exists():
            raise ConfigError(
                f"store source: no bars stored for the {context.environment} environment yet "
                f"({context.data_dir}); run 'bastion data import' first"
            )
        else:
            store = SQLiteStore.open(context.data_dir)
        try:
            return cls(store, symbols, interval, tz, spec=spec.strip())
        except BaseException:
            _close(store)
            raise

    def symbols(self) -> tuple[str, ...]:
        """The symbols the spec named, sorted."""
        return self._symbols

    def bars(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Bar]:
        """Bars for ``symbols`` (all if ``None``) with ``start <= ts <= end``, by
        ``(ts, symbol)``, streamed from the store (and rolled up)."""
        wanted = select_symbols(symbols, self._symbols, self.description)
        start, end = _utc(start), _utc(end)
        if self.rolled_from is None:
            return self._store.read_bars(wanted, self.interval, start, end)
        # A bucket spans at most its interval (a trading date at most 25 hours): read that
        # much more on each side so the edge buckets are whole, then keep those inside.
        step = parse_interval(self.interval)
        margin = 2 * _DAY if step >= _DAY else step
        raw = self._store.read_bars(
            wanted, self.rolled_from, _shift(start, -margin), _shift(end, margin)
        )
        rolled = rollup(raw, self.interval, tz=self.tz, source=self.rolled_from)
        return _between(rolled, start, end)

    def close(self) -> None:
        """Close the store."""
        close = getattr(self._store, "close", None)
        if callable(close):
            close()

    def __repr__(self) -> str:
        return f"<StoreSource {self.description}>"


def _between(bars: Iterable[Bar], start: datetime | None, end: datetime | None) -> Iterator[Bar]:
    for bar in bars:
        if start is not None and bar.ts < start:
            continue
        if end is not None and bar.ts > end:
            return
        yield bar


# ---------------------------------------------------------------------- commands


def _show(ts: datetime) -> str:
    text = ts.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def _checked(bars: Iterable[Bar], interval: str, description: str) -> Iterator[Bar]:
    """``bars`` as they come, checked: each symbol's bars in time order and no closer
    together than ``interval`` (``1d`` and longer: by UTC trading date), so bars of another
    interval are never filed under this one."""
    step = parse_interval(interval)
    days = step // _DAY if step >= _DAY else 0
    last: dict[str, datetime] = {}
    for bar in bars:
        before = last.get(bar.symbol)
        if before is not None:
            if bar.ts <= before:
                raise ConfigError(
                    f"{description}: bars of {bar.symbol} are out of order at {_show(bar.ts)} "
                    f"(after {_show(before)}); nothing was imported"
                )
            if days:
                apart = (trading_date(bar.ts, _UTC) - trading_date(before, _UTC)).days < days
            else:
                apart = bar.ts - before < step
            if apart:
                raise ConfigError(
                    f"{description}: {bar.symbol} has bars at {_show(before)} and "
                    f"{_show(bar.ts)}, closer than --interval {interval}; give the data's "
                    "interval (e.g. --interval 1m); nothing was imported"
                )
        last[bar.symbol] = bar.ts
        yield bar


def _context(app: App) -> PluginContext:
    environment = str(app.environment)
    secrets = app.kernel.secrets(environment, app.workspace.home)
    return PluginContext(environment, app.workspace.data_dir, secrets=secrets)


def _bar_store(app: App, storage: str, context: PluginContext) -> BarStore:
    store = app.kernel.open_store(storage, context)
    if not isinstance(store, BarStore):
        store.close()
        raise ConfigError(
            f"--storage {storage}: this storage keeps no bars (it does not implement "
            "BarStore); use --storage sqlite"
        )
    return store


def _close(store: object) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


def _series_key(row: BarSeries) -> tuple[str, timedelta, str]:
    try:
        length = parse_interval(row.interval)
    except ConfigError:
        length = timedelta.max
    return row.symbol, length, row.interval


@click.group("data")
def data_group() -> None:
    """The local bar store: historical bars imported once, backtested from
    (--source store:SYMBOLS)."""


@data_group.command("import")
@workspace_options
@click.argument("spec")
@click.option("--symbols", default=None, help="Comma-separated subset of the source's symbols.")
@click.option("--from", "start", default=None, help="First day (YYYY-MM-DD), inclusive.")
@click.option("--to", "end", default=None, help="Last day (YYYY-MM-DD), inclusive.")
@click.option(
    "--interval",
    default="1d",
    show_default=True,
    help="The bars' interval (1m, 5m, 1h, 1d ...); finer bars are refused.",
)
@storage_option
@pass_app
def import_command(
    app: App,
    spec: str,
    symbols: str | None,
    start: str | None,
    end: str | None,
    interval: str,
    storage: str | None,
) -> None:
    """Store the bars of source SPEC (csv:PATH, csv:sample, synthetic:N ...) in the
    environment's store, all or nothing; bars already stored are replaced."""
    interval = interval.strip()
    parse_interval(interval)
    wanted = tuple(s.strip() for s in symbols.split(",") if s.strip()) if symbols else ()
    if symbols is not None and not wanted:
        raise ConfigError("--symbols is empty; name symbols like AAPL,MSFT or leave it out")
    first = parse_date(start, "--from") if start is not None else None
    last = parse_date(end, "--to", end=True) if end is not None else None
    if first and last and first > last:
        raise ConfigError("--from is after --to; swap them")
    context = _context(app)
    storage = app.storage(storage)
    app.kernel.find_offer("source", spec, context.environment)
    app.kernel.find_offer("storage", storage, context.environment)
    source = app.kernel.open_source(spec, context)
    try:
        available = source.symbols()
        missing = [s for s in wanted if s not in available]
        if missing:
            raise ConfigError(
                f"symbol {missing[0]!r} is not in {source.description}; "
                f"it has: {', '.join(available)}"
            )
        chosen = tuple(sorted(set(wanted))) if wanted else tuple(available)
        store = _bar_store(app, storage, context)
        try:
            before = {(r.symbol, r.interval): r.count for r in store.bar_series()}
            bars = _checked(source.bars(chosen, first, last), interval, source.description)
            count = store.write_bars(interval, bars)
            after = {(r.symbol, r.interval): r.count for r in store.bar_series()}
        finally:
            _close(store)
    finally:
        _close(source)
    if not count:
        raise ConfigError(
            f"{source.description} has no bars in the chosen period; check --from/--to"
        )
    new = sum(after.values()) - sum(before.values())
    plural = "s" if len(chosen) != 1 else ""
    console.print(
        f"imported {count:,} {interval} bars of {len(chosen)} symbol{plural} from "
        f"{source.description}: {new:,} new, {count - new:,} already stored ({store.location})",
        markup=False,
    )


@data_group.command("list")
@workspace_options
@storage_option
@click.option("--json", "as_json", is_flag=True, help="One object per series on stdout.")
@pass_app
def list_command(app: App, storage: str | None, as_json: bool) -> None:
    """List the stored bars: symbol, interval, first and last bar, count."""
    context = _context(app)
    storage = app.storage(storage)
    app.kernel.find_offer("storage", storage, context.environment)
    rows: list[BarSeries] = []
    location = str(Path(context.data_dir) / DB_NAME)
    if storage != "sqlite" or (Path(context.data_dir) / DB_NAME).exists():
        store = _bar_store(app, storage, context)
        try:
            rows = sorted(store.bar_series(), key=_series_key)
            location = store.location
        finally:
            _close(store)
    if as_json:
        data: list[dict[str, Any]] = [
            {
                "symbol": r.symbol,
                "interval": r.interval,
                "first": _show(r.first),
                "last": _show(r.last),
                "bars": r.count,
            }
            for r in rows
        ]
        click.echo(json.dumps(data, indent=2))
        return
    if not rows:
        console.print(
            f"no bars stored for the {app.environment} environment yet ({location}); "
            "'bastion data import csv:sample' adds some",
            markup=False,
        )
        return
    table = Table(title=f"Stored bars ({app.environment})")
    table.add_column("symbol", no_wrap=True)
    table.add_column("interval")
    table.add_column("first", no_wrap=True)
    table.add_column("last", no_wrap=True)
    table.add_column("bars", justify="right")
    for r in rows:
        table.add_row(r.symbol, r.interval, _show(r.first), _show(r.last), f"{r.count:,}")
    console.print(table)
    console.print(f"stored in {location}", markup=False)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(data_group)
