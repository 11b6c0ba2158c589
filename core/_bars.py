"""Bar rollups: finer OHLCV bars aggregated into coarser ones (1m -> 5m, 1h, 1d), as pure
functions over iterables: no storage, no kernel.

Conventions (those of :class:`bastion.models.Bar`): a bar's ``ts`` is its *close* time, in
UTC. A 1m bar with ``ts`` 09:31 covers 09:30-09:31, so it falls in the 5m bucket that
ends at 09:35; a bar whose ``ts`` is exactly a bucket's end belongs to that bucket (the
09:35 bar closes the 09:30-09:35 bucket). A rolled-up bar has open = the first bar's open,
high = the highest high, low = the lowest low, close = the last bar's close, and volume =
the sum of volumes (``None`` if any bar in the bucket has ``None``).

**Intraday buckets** (``interval`` below one day; it must divide a day evenly: 5m, 15m,
30m, 1h, 4h... not 7m) are aligned on the clock in ``tz``: within a stretch of constant
UTC offset, a bucket ends whenever the local clock reads a multiple of the interval
counted from midnight. A bucket never crosses local midnight (the calendar day in ``tz``
is the session boundary), nor a change of UTC offset: on a daylight-saving day the
bucket that the change falls into is cut there and the clock grid resumes after it
(with 4h buckets in America/New_York on the spring-forward day: 00:00-02:00 EST, then
03:00-04:00 EDT, then 04:00-08:00 EDT...). So no bucket is ever longer than its interval
in real time, and each real hour of the repeated 01:00 in the autumn is a 1h bucket of
its own. A rolled-up intraday bar's ``ts`` is its bucket's end, whether or not a bar
closed exactly then.

**Daily buckets** (``"1d"``) group the bars by their trading date in ``tz``: the local
date of the instant just before ``ts`` (a bar closing at midnight belongs to the day it
ends). A DST day is one day however many hours it has. The daily bar's ``ts`` is the
*last input bar's* ``ts`` of that date, i.e. the session's close as the data shows it
(16:00 New York for a regular US session, 13:00 on a half day), not midnight: a daily
bar is then known exactly when its last constituent is, as with every other bar, and a
backtest on daily bars sees no later data than one on the bars they came from.

**Streaming.** The input must be ordered by ``(ts, symbol)``, each pair once (several
symbols interleaved, gaps allowed); output comes in the same order, lazily, holding one
open bucket per symbol (O(symbols) memory): a bucket is emitted as soon as a bar of a
later bucket arrives. A bar out of order (or repeated) stops the iteration with a
one-line :class:`~bastion.ConfigError` naming its symbol and time; bars already yielded
stay yielded.

**Finer than the input.** Timestamps alone cannot tell 1h bars from 1m bars with gaps,
so rolling 1h bars "up" to 5m would silently relabel them. Pass ``source`` (the input's
interval, e.g. ``"1m"``; the bar store knows it) and :func:`rollup` refuses a target
finer than the source, two bars of one symbol closer together than the source interval,
and any bar whose span ``(ts - source, ts]`` does not lie inside one bucket (coarser or
misaligned input: a 5m bar closing at 09:32 straddles two 15m buckets).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._errors import ConfigError
from .models import Bar

__all__ = ["bucket_end", "parse_interval", "rollup", "trading_date"]

_INTERVAL = re.compile(r"([0-9]{1,9})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_DAY = timedelta(days=1)
_TICK = timedelta(microseconds=1)  # the resolution of datetime


def parse_interval(text: str) -> timedelta:
    """``"5m"`` -> 5 minutes: a positive whole number and one unit, ``s``, ``m``, ``h`` or
    ``d`` (lower case: ``M`` could be minutes or months). Anything else is a one-line
    :class:`~bastion.ConfigError`."""
    match = _INTERVAL.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or int(match[1]) == 0:
        raise ConfigError(
            f"bad bar interval {text!r}: expected a positive whole number and a unit "
            "s, m, h or d, e.g. 5m, 1h, 1d"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise ConfigError(
            f"unknown time zone {tz!r}: expected an IANA name such as UTC or America/New_York"
        ) from None


def _offset(instant: datetime, zone: ZoneInfo) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset


def trading_date(ts: datetime, zone: ZoneInfo) -> date:
    """The local date in ``zone`` that a bar closing at ``ts`` belongs to: that of the
    instant just before ``ts`` (a bar closing at midnight ends the day before)."""
    return (ts - _TICK).astimezone(zone).date()


def bucket_end(ts: datetime, step: timedelta, zone: ZoneInfo) -> datetime:
    """The end (UTC) of the intraday bucket of length ``step`` (which divides a day) that
    holds a bar closing at ``ts``: the first instant at or after ``ts`` where the clock in
    ``zone`` reads a multiple of ``step`` since midnight, or the UTC offset changes."""
    before = ts - _TICK
    offset = _offset(before, zone)
    wall = before.replace(tzinfo=None) + offset  # the local clock just before ts
    midnight = datetime.combine(wall.date(), time())
    elapsed = wall + _TICK - midnight  # in (0, 1 day]
    end = (midnight + step * -(-elapsed // step) - offset).replace(tzinfo=UTC)
    if _offset(end - _TICK, zone) == offset:
        return end
    # The offset changes before the clock reaches the grid: the bucket ends at the change
    # (bisected to the microsecond; a zone changes offset at most once within a day).
    low, high = before, end - _TICK
    while high - low > _TICK:
        middle = low + (high - low) // 2
        if _offset(middle, zone) == offset:
            low = middle
        else:
            high = middle
    return high


class _Bucket:
    """One symbol's open bucket: the OHLCV so far and the last bar's time."""

    __slots__ = ("close", "high", "last", "low", "open", "volume")

    def __init__(self, bar: Bar) -> None:
        self.open, self.high, self.low, self.close = bar.open, bar.high, bar.low, bar.close
        self.volume = bar.volume
        self.last = bar.ts

    def add(self, bar: Bar) -> None:
        self.high = max(self.high, bar.high)
        self.low = min(self.low, bar.low)
        self.close = bar.close
        if self.volume is not None:
            self.volume = None if bar.volume is None else self.volume + bar.volume
        self.last = bar.ts

    def bar(self, symbol: str, ts: datetime) -> Bar:
        return Bar(symbol, ts, self.open, self.high, self.low, self.close, self.volume)


def rollup(
    bars: Iterable[Bar], interval: str, *, tz: str = "UTC", source: str | None = None
) -> Iterator[Bar]:
    """Aggregate ``bars`` (ordered by ``(ts, symbol)``) into bars of ``interval`` per
    symbol, aligned on the clock in ``tz``; see the module's docstring for the rules.

    The interval, ``tz`` and ``source`` are checked at once (a one-line
    :class:`~bastion.ConfigError`); the bars as they are consumed."""
    step = parse_interval(interval)
    zone = _zone(tz)
    if step > _DAY or _DAY % step:
        raise ConfigError(
            f"bar interval {interval!r} cannot be rolled up to: it must divide a day "
            "evenly (e.g. 5m, 15m, 1h, 4h) or be 1d"
        )
    span = None
    if source is not None:
        span = parse_interval(source)
        if span > step:
            raise ConfigError(
                f"cannot roll {source} bars up into {interval} bars: the target interval "
                "is finer than the input's"
            )
    return _rollup(iter(bars), interval, step, zone, source, span)


def _rollup(
    bars: Iterator[Bar],
    interval: str,
    step: timedelta,
    zone: ZoneInfo,
    source: str | None,
    span: timedelta | None,
) -> Iterator[Bar]:
    daily = step == _DAY

    def key(ts: datetime) -> datetime:
        """Intraday: the bucket's end. Daily: the trading date (as midnight UTC, a label)."""
        if daily:
            return datetime.combine(trading_date(ts, zone), time(), UTC)
        return bucket_end(ts, step, zone)

    open_buckets: dict[str, _Bucket] = {}  # all with the key `current`
    current: datetime | None = None
    previous: Bar | None = None
    last_seen: dict[str, datetime] = {}  # with `source`: each symbol's previous bar

    for bar in bars:
        if previous is not None and (bar.ts, bar.symbol) <= (previous.ts, previous.symbol):
            raise ConfigError(
                f"bar {bar.symbol!r} at {bar.ts.isoformat()} is out of order: it comes after "
                f"{previous.symbol!r} at {previous.ts.isoformat()} (bars must be ordered by "
                "time, then symbol, each once)"
            )
        if current is None:
            bar_key = key(bar.ts)
        elif daily:
            # max(): should a clock be set back across midnight, the date stays put.
            bar_key = max(current, key(bar.ts))
        else:
            # An intraday bucket is (start, end]: a bar after the previous one and no
            # later than the open buckets' end is in them.
            bar_key = current if bar.ts <= current else key(bar.ts)
        if span is not None:
            _check_source(bar, bar_key, key, span, last_seen, source, interval)
        if bar_key != current:
            yield from _close(open_buckets, None if daily else current)
            open_buckets.clear()
            current = bar_key
        bucket = open_buckets.get(bar.symbol)
        if bucket is None:
            open_buckets[bar.symbol] = _Bucket(bar)
        else:
            bucket.add(bar)
        previous = bar
    yield from _close(open_buckets, None if daily else current)


def _close(buckets: dict[str, _Bucket], end: datetime | None) -> Iterator[Bar]:
    """The finished buckets as bars, in ``(ts, symbol)`` order: ``ts`` is the bucket's
    end, or for daily buckets (``end`` None) the last bar's time."""
    if end is not None:
        for symbol in sorted(buckets):
            yield buckets[symbol].bar(symbol, end)
    else:
        for symbol, bucket in sorted(buckets.items(), key=lambda item: (item[1].last, item[0])):
            yield bucket.bar(symbol, bucket.last)


def _check_source(
    bar: Bar,
    bar_key: datetime,
    key: Callable[[datetime], datetime],
    span: timedelta,
    last_seen: dict[str, datetime],
    source: str | None,
    interval: str,
) -> None:
    """With a declared input interval: bars of a symbol at least that far apart, and
    each bar's span inside its bucket."""
    before = last_seen.get(bar.symbol)
    if before is not None and bar.ts - before < span:
        raise ConfigError(
            f"bar {bar.symbol!r} at {bar.ts.isoformat()} is closer than {source} to the one "
            f"at {before.isoformat()}: the input is finer than {source}"
        )
    last_seen[bar.symbol] = bar.ts
    if key(bar.ts - span + _TICK) != bar_key:
        raise ConfigError(
            f"bar {bar.symbol!r} at {bar.ts.isoformat()}: a {source} bar closing then does "
            f"not fit in one {interval} bucket (coarser or misaligned input)"
        )
