"""Built-in source ``synthetic``: seeded random-walk bars, generated lazily.

``--source synthetic:N[,symbols=K][,seed=S][,start=YYYY-MM-DD][,interval=1d|1h|1m]``

* ``N`` (required): bars per symbol, a positive integer (``1_000_000`` is fine).
* ``symbols`` (default 1): the symbols are ``SYN0`` .. ``SYN{K-1}``.
* ``seed`` (default 42): any integer.  The same spec always gives the same bars.
* ``start`` (default ``2000-01-03``): the first bar's day.
* ``interval`` (default ``1d``): ``1d`` bars close at 21:00 UTC on weekdays
  (Saturday and Sunday are skipped), from the first weekday on or after
  ``start``; ``1h`` and ``1m`` bars run round the clock, the first one closing
  one interval after ``start`` 00:00 UTC.

Every symbol is a geometric random walk with its own starting price (20..500),
volatility (15..45 % a year), drift and typical volume, all drawn from its
own ``random.Random`` stream seeded by ``(seed, symbol index)``: adding symbols
never changes the bars of the existing ones, and asking for a subset of symbols
or a date range gives exactly the bars the full run would have.  Each bar opens
near the previous close (a small gap), ``high``/``low`` bracket ``open`` and
``close``, and volume is positive.  The walk is reflected at 0.01 and 1e7 so
prices stay finite over any length.

Bars are produced one time step at a time in ``(ts, symbol)`` order; nothing is
materialised, so a source of 10**7 bars costs nothing until it is iterated.

This module also writes the bundled sample data (``bastion/plugins/sample_data``)::

    python -m bastion.plugins.synthetic sample-data plugins/sample_data
"""

from __future__ import annotations

import csv
import math
import random
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Final

import attrs

from bastion import ConfigError, hookimpl
from bastion.interfaces import Offer, select_symbols
from bastion.models import Bar

__all__ = [
    "INTERVALS",
    "SAMPLE_END",
    "SAMPLE_SEED",
    "SAMPLE_START",
    "SyntheticSource",
    "SyntheticSpec",
    "parse_spec",
    "register_sources",
    "sample_rows",
    "write_sample_data",
]

INTERVALS: Final[dict[str, timedelta]] = {
    "1d": timedelta(days=1),
    "1h": timedelta(hours=1),
    "1m": timedelta(minutes=1),
}
_DAILY_CLOSE: Final = time(21, 0, tzinfo=UTC)
_TRADING_DAYS: Final = 252.0
_LOW_BOUND: Final = math.log(0.01)
_HIGH_BOUND: Final = math.log(1e7)
_KEYS: Final = ("symbols", "seed", "start", "interval")


@hookimpl
def register_sources() -> list[Offer[SyntheticSource]]:
    return [
        Offer(
            "synthetic",
            lambda spec, context: SyntheticSource.open(spec),
            description="reproducible random-walk bars (benchmarks, tests)",
            options="key=value pairs: symbols, bars, interval, seed, start",
        )
    ]


# ---------------------------------------------------------------------- the spec


@attrs.frozen
class SyntheticSpec:
    """A parsed ``synthetic:`` spec."""

    bars: int
    symbols: int = 1
    seed: int = 42
    start: date = date(2000, 1, 3)
    interval: str = "1d"

    def __str__(self) -> str:
        return (
            f"{self.bars},symbols={self.symbols},seed={self.seed},"
            f"start={self.start.isoformat()},interval={self.interval}"
        )


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"synthetic source: {what} {text!r} is not a positive whole number")
    return value


def parse_spec(spec: str) -> SyntheticSpec:
    """Parse ``N[,symbols=K][,seed=S][,start=YYYY-MM-DD][,interval=1d|1h|1m]``."""
    usage = "e.g. synthetic:1000 or synthetic:1000,symbols=5,seed=7,start=2020-01-01,interval=1h"
    parts = [part.strip() for part in spec.split(",")]
    if not parts[0]:
        raise ConfigError(f"synthetic source: give the number of bars per symbol, {usage}")
    if "=" in parts[0]:
        raise ConfigError(
            f"synthetic source: {parts[0]!r} comes first, but the number of bars must; {usage}"
        )
    bars = _positive_int(parts[0], "bar count")
    options: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep or not key:
            raise ConfigError(
                f"synthetic source: {part!r} is not key=value; "
                f"the options are {', '.join(_KEYS)} ({usage})"
            )
        key = key.lower()
        if key not in _KEYS:
            raise ConfigError(
                f"synthetic source: unknown option {key!r}; the options are {', '.join(_KEYS)}"
            )
        if key in options:
            raise ConfigError(f"synthetic source: option {key!r} is given twice; keep one")
        options[key] = value
    symbols = _positive_int(options["symbols"], "symbols") if "symbols" in options else 1
    seed = 42
    if "seed" in options:
        try:
            seed = int(options["seed"])
        except ValueError:
            raise ConfigError(
                f"synthetic source: seed {options['seed']!r} is not a whole number"
            ) from None
    start = date(2000, 1, 3)
    if "start" in options:
        text = options["start"]
        try:
            if len(text) != 10:  # date.fromisoformat also takes 20200101 and 2020-W01-1
                raise ValueError(text)
            start = date.fromisoformat(text)
        except ValueError:
            raise ConfigError(
                f"synthetic source: start {text!r} is not a date; use YYYY-MM-DD"
            ) from None
    interval = options.get("interval", "1d").lower()
    if interval not in INTERVALS:
        raise ConfigError(
            f"synthetic source: interval {options['interval']!r} is not one of "
            f"{', '.join(INTERVALS)}"
        )
    return SyntheticSpec(bars=bars, symbols=symbols, seed=seed, start=start, interval=interval)


# ---------------------------------------------------------------------- the source


def _first_close(spec: SyntheticSpec) -> datetime:
    if spec.interval == "1d":
        day = spec.start
        while day.weekday() >= 5:
            day += timedelta(days=1)
        return datetime.combine(day, _DAILY_CLOSE)
    return datetime.combine(spec.start, time(0, 0, tzinfo=UTC)) + INTERVALS[spec.interval]


def _close_at(first: datetime, interval: str, index: int) -> datetime:
    """The close time of bar ``index`` (0-based).  Raises OverflowError past year 9999."""
    if interval != "1d":
        return first + INTERVALS[interval] * index
    offset = first.weekday() + index  # counted in weekdays from the Monday of the first week
    weeks, day = divmod(offset, 5)
    return first + timedelta(days=7 * weeks + day - first.weekday())


class SyntheticSource:
    """Seeded random-walk bars (see the module docstring)."""

    description: str

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        self._first = _first_close(spec)
        try:
            self._last = _close_at(self._first, spec.interval, spec.bars - 1)
        except OverflowError:
            raise ConfigError(
                f"synthetic source: {spec.bars} bars of {spec.interval} from {spec.start} "
                "run past the year 9999; use fewer bars or a shorter interval"
            ) from None
        names = [f"SYN{i}" for i in range(spec.symbols)]
        self._index = {name: i for i, name in enumerate(names)}
        self._symbols = tuple(sorted(names))
        count = spec.symbols
        self.description = (
            f"synthetic:{spec} ({count} symbol{'s' if count != 1 else ''} x {spec.bars} bars, "
            f"{self._first.date().isoformat()}..{self._last.date().isoformat()})"
        )

    @classmethod
    def open(cls, spec: str) -> SyntheticSource:
        return cls(parse_spec(spec))

    def symbols(self) -> tuple[str, ...]:
        """``SYN0`` .. ``SYN{K-1}``, sorted as text (so ``SYN10`` comes before ``SYN2``)."""
        return self._symbols

    def bars(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Bar]:
        """Bars with ``start <= ts <= end`` in ``(ts, symbol)`` order, generated as you iterate.

        A ``start`` or ``end`` without a time zone is taken as UTC.
        """
        wanted = select_symbols(symbols, self._symbols, self.description)
        lo = None if start is None else _as_utc(start)
        hi = None if end is None else _as_utc(end)
        return self._generate(wanted, lo, hi)

    def count(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> int | None:
        """How many bars :meth:`bars` yields, when that is known without generating them:
        every bar of every symbol asked for (``None`` with a ``start`` or ``end``)."""
        wanted = select_symbols(symbols, self._symbols, self.description)
        if start is not None or end is not None:
            return None
        return self.spec.bars * len(wanted)

    def _generate(
        self, wanted: tuple[str, ...], lo: datetime | None, hi: datetime | None
    ) -> Iterator[Bar]:
        spec = self.spec
        fraction = INTERVALS[spec.interval] / timedelta(days=1)
        walks = [_Walk(spec.seed, self._index[name], name, fraction) for name in wanted]
        if not walks:
            return
        exp = math.exp
        ts = self._first
        daily = spec.interval == "1d"
        step = INTERVALS[spec.interval]
        # 1d: a Friday close is followed by Monday's; weekday() of a close is 0..4.
        day_steps = (step, step, step, step, timedelta(days=3))
        weekday = ts.weekday()
        for index in range(spec.bars):
            if index:
                if daily:
                    ts += day_steps[weekday]
                    weekday = 0 if weekday == 4 else weekday + 1
                else:
                    ts += step
            if hi is not None and ts > hi:
                return
            emit = lo is None or ts >= lo
            for walk in walks:
                rnd = walk.random
                previous = walk.log_close
                log_open = previous + walk.gap * (rnd() - 0.5)
                log_close = log_open + walk.gauss(walk.drift, walk.sigma)
                if not _LOW_BOUND < log_close < _HIGH_BOUND:
                    log_close = 2.0 * log_open - log_close  # reflect the step
                    if not _LOW_BOUND < log_close < _HIGH_BOUND:
                        log_close = log_open
                walk.log_close = log_close
                # draw every number of this step even when the bar is skipped, so a
                # date range gives exactly the bars of the full run
                up, down, size = rnd(), rnd(), rnd()
                if emit:
                    open_ = exp(log_open)
                    close = exp(log_close)
                    if open_ > close:
                        top, bottom = open_, close
                    else:
                        top, bottom = close, open_
                    yield Bar(
                        walk.symbol,
                        ts,
                        open_,
                        top * (1.0 + walk.wick * up),
                        bottom * (1.0 - walk.wick * down),
                        close,
                        walk.volume * (0.5 + size),
                    )

    def __repr__(self) -> str:
        return f"<SyntheticSource {self.description}>"


class _Walk:
    """One symbol's random stream and parameters."""

    __slots__ = (
        "drift",
        "gap",
        "gauss",
        "log_close",
        "random",
        "sigma",
        "symbol",
        "volume",
        "wick",
    )

    def __init__(self, seed: int, index: int, symbol: str, fraction: float) -> None:
        # A string seed is hashed with SHA-512: stable across runs and platforms,
        # and independent per (seed, index).
        rng = random.Random(f"bastion.synthetic:{seed}:{index}")  # noqa: S311 - not crypto
        self.symbol = symbol
        self.random = rng.random
        self.gauss = rng.gauss
        yearly_vol = rng.uniform(0.15, 0.45)
        yearly_drift = rng.uniform(-0.05, 0.15)
        bars_per_year = _TRADING_DAYS / fraction
        self.sigma = yearly_vol / math.sqrt(bars_per_year)
        self.drift = yearly_drift / bars_per_year - self.sigma * self.sigma / 2.0
        self.gap = self.sigma * 0.5
        self.wick = self.sigma * 0.8
        self.log_close = math.log(rng.uniform(20.0, 500.0))
        self.volume = math.exp(rng.uniform(math.log(1e5), math.log(5e6))) * fraction


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# ---------------------------------------------------------------------- sample data

SAMPLE_SEED: Final = 20210104
SAMPLE_START: Final = date(2021, 1, 4)
SAMPLE_END: Final = date(2023, 12, 29)
_SAMPLE_FLOOR: Final = math.log(22.0)
_SAMPLE_CEILING: Final = math.log(480.0)

# name: (kind, starting price, daily volatility, typical volume)
_SAMPLE_SYMBOLS: Final[dict[str, tuple[str, float, float, float]]] = {
    "ALPHA": ("trend", 120.0, 0.016, 1_400_000.0),
    "BRAVO": ("trend", 48.0, 0.020, 1_600_000.0),
    "CHARLIE": ("revert", 85.0, 0.018, 900_000.0),
    "DELTA": ("revert", 260.0, 0.014, 400_000.0),
    "ECHO": ("walk", 32.0, 0.026, 1_200_000.0),
}


def _weekdays(first: date, last: date) -> list[date]:
    days: list[date] = []
    day = first
    while day <= last:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def sample_rows(name: str) -> list[tuple[str, str, str, str, str, str]]:
    """The bundled sample series ``name`` as CSV rows ``date,open,high,low,close,volume``.

    ``trend`` symbols switch between up and down drift regimes lasting a few
    months (so moving-average crossovers trade); ``revert`` symbols follow an
    Ornstein-Uhlenbeck process in log price around a slowly wandering level
    (so z-score entries trade); ``walk`` is a driftless random walk.
    """
    kind, price, sigma, typical_volume = _SAMPLE_SYMBOLS[name]
    index = list(_SAMPLE_SYMBOLS).index(name)
    rng = random.Random(f"bastion.sample:{SAMPLE_SEED}:{index}")  # noqa: S311 - not crypto
    level = math.log(price)
    log_close = level
    drift = 0.0
    rows: list[tuple[str, str, str, str, str, str]] = []
    for day in _weekdays(SAMPLE_START, SAMPLE_END):
        if kind == "trend" and (not rows or rng.random() < 1 / 70):
            drift = rng.choice((-1.0, 1.0)) * rng.uniform(0.0015, 0.004)
        if kind == "revert":
            level += rng.gauss(0.0, 0.004)
            step = 0.2 * (level - log_close) + rng.gauss(0.0, sigma)
        else:
            step = drift + rng.gauss(0.0, sigma)
        log_open = log_close + rng.gauss(0.0, sigma * 0.3)
        log_close = log_open + step
        # keep the sample inside a realistic price range (reflect at the edges)
        if log_close < _SAMPLE_FLOOR:
            log_close = 2.0 * _SAMPLE_FLOOR - log_close
        elif log_close > _SAMPLE_CEILING:
            log_close = 2.0 * _SAMPLE_CEILING - log_close
        open_ = round(math.exp(log_open), 2)
        close = round(math.exp(log_close), 2)
        high = round(max(open_, close) * (1.0 + abs(rng.gauss(0.0, sigma * 0.6))), 2)
        low = round(min(open_, close) * (1.0 - abs(rng.gauss(0.0, sigma * 0.6))), 2)
        high = max(high, open_, close)
        low = min(low, open_, close)
        surprise = abs(step) / sigma
        volume = typical_volume * math.exp(rng.gauss(0.0, 0.35)) * (0.7 + 0.3 * surprise)
        volume = min(max(volume, 100_000.0), 5_000_000.0)
        rows.append(
            (
                day.isoformat(),
                f"{open_:.2f}",
                f"{high:.2f}",
                f"{low:.2f}",
                f"{close:.2f}",
                str(int(volume)),
            )
        )
    return rows


def write_sample_data(folder: Path) -> list[Path]:
    """Write ``ALPHA.csv`` .. ``ECHO.csv`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in _SAMPLE_SYMBOLS:
        path = folder / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(("date", "open", "high", "low", "close", "volume"))
            writer.writerows(sample_rows(name))
        written.append(path)
    return written


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "sample-data":
        print("usage: python -m bastion.plugins.synthetic sample-data FOLDER", file=sys.stderr)
        return 2
    for path in write_sample_data(Path(argv[1])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
