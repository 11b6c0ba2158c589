"""The source ``hours``: intraday bars of a seeded random walk, inside market hours only.

``--source hours:AAA,BBB`` gives 30-minute bars of AAA and BBB for 20 sessions from
2024-01-02: on weekdays, the first bar closing 30 minutes after the open and the
last at the close (09:30-16:00 America/New_York unless ``MARKET_HOURS_SESSION`` and
``MARKET_HOURS_ZONE`` say otherwise), so a strategy never sees a price while the
market is closed; the time zone's daylight-saving changes move the bars in UTC.
Options follow the symbols: ``days=N`` (sessions), ``minutes=M`` (bar length),
``seed=S`` and ``start=YYYY-MM-DD``.

The same options give the same bars, on any machine: each symbol's walk has its own
generator, seeded by the seed and the symbol, so selecting symbols or a time window
never changes a price.

It keeps the contract of ``bastion.interfaces.Source``, which tests/test_source.py
checks with ``bastion.testing.SourceConformance``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta

from bastion import ConfigError
from bastion.interfaces import select_symbols
from bastion.models import Bar

from . import settings

SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9.]{0,11}$")
OPTIONS = {"days": (1, 2000), "minutes": (1, 24 * 60), "seed": (0, 2**31)}


class HoursSource:
    """``days`` sessions of ``minutes``-minute bars per symbol, from ``start``."""

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        days: int = 20,
        minutes: int = 30,
        seed: int = 1,
        start: date = date(2024, 1, 2),
        session: settings.Session | None = None,
    ) -> None:
        self._symbols = tuple(sorted(set(symbols)))
        self.days = days
        self.minutes = minutes
        self.seed = seed
        self.start = start
        self.session = session or settings.session()
        self.description = (
            f"hours:{','.join(self._symbols)} ({days} sessions of {minutes}-minute bars, "
            f"{self.session.describe()})"
        )

    @classmethod
    def open(cls, spec: str) -> HoursSource:
        """The source ``--source hours:SPEC`` names: comma-separated symbols, then options
        (``days=20``, ``minutes=30``, ``seed=1``, ``start=2024-01-02``)."""
        symbols: list[str] = []
        options: dict[str, int] = {}
        start = date(2024, 1, 2)
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            key, eq, value = part.partition("=")
            if not eq:
                if not SYMBOL_RE.match(part):
                    raise ConfigError(
                        f"--source hours:{spec}: {part!r} is not a symbol like AAPL; give "
                        "comma-separated symbols, then options such as days=20"
                    )
                symbols.append(part)
            elif key == "start":
                try:
                    start = date.fromisoformat(value)
                except ValueError:
                    raise ConfigError(
                        f"--source hours:{spec}: start={value!r} is not a date like 2024-01-02"
                    ) from None
            elif key in OPTIONS:
                low, high = OPTIONS[key]
                if not value.isdigit() or not low <= int(value) <= high:
                    raise ConfigError(
                        f"--source hours:{spec}: {key}={value!r} is not a whole number "
                        f"from {low} to {high}"
                    )
                options[key] = int(value)
            else:
                raise ConfigError(
                    f"--source hours:{spec}: unknown option {key!r}; the options are "
                    "days, minutes, seed and start"
                )
        try:
            session = settings.session()
        except ValueError as exc:
            raise ConfigError(f"--source hours:{spec}: {exc}") from None
        return cls(symbols or ["DEMO"], start=start, session=session, **options)

    def symbols(self) -> tuple[str, ...]:
        """Every symbol, sorted."""
        return self._symbols

    def times(self) -> Iterator[datetime]:
        """Every bar's close time, in UTC: inside the session, weekdays only."""
        day, sessions = self.start, 0
        while sessions < self.days:
            if day.weekday() < 5:
                sessions += 1
                opened = datetime.combine(day, self.session.open, self.session.zone)
                closed = datetime.combine(day, self.session.close, self.session.zone)
                step = timedelta(minutes=self.minutes)
                ts = opened + step
                while ts < closed:
                    yield ts.astimezone(UTC)
                    ts += step
                yield closed.astimezone(UTC)  # the last bar closes with the market
            day += timedelta(days=1)

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
        """How many bars :meth:`bars` yields for the same arguments (without making them)."""
        wanted = select_symbols(symbols, self._symbols, self.description)
        times = sum(
            1
            for ts in self.times()
            if (start is None or ts >= start) and (end is None or ts <= end)
        )
        return times * len(wanted)

    def _generate(
        self, wanted: Sequence[str], start: datetime | None, end: datetime | None
    ) -> Iterator[Bar]:
        walks = {symbol: _Walk(self.seed, symbol) for symbol in wanted}
        for ts in self.times():
            if end is not None and ts > end:
                return
            for symbol in wanted:  # sorted: bars come in (ts, symbol) order
                bar = walks[symbol].next(ts)  # every step taken, so prices never depend
                if start is None or ts >= start:  # on the window asked for
                    yield bar


class _Walk:
    """One symbol's prices: each bar opens at the last close and moves a little."""

    def __init__(self, seed: int, symbol: str) -> None:
        self.symbol = symbol
        self.rng = random.Random(f"{seed}:{symbol}")  # a str seed is hashed the same anywhere
        self.close = round(self.rng.uniform(20, 200), 2)

    def next(self, ts: datetime) -> Bar:
        rng = self.rng
        opened = self.close
        closed = max(0.01, round(opened * math.exp(rng.gauss(0, 0.003)), 2))
        high = max(opened, closed, round(max(opened, closed) * (1 + abs(rng.gauss(0, 0.001))), 2))
        low = min(opened, closed, round(min(opened, closed) * (1 - abs(rng.gauss(0, 0.001))), 2))
        volume = float(rng.randint(1_000, 50_000))
        self.close = closed
        return Bar(self.symbol, ts, opened, high, low, closed, volume)
