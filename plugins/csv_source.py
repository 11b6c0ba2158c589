"""Built-in source ``csv``: daily or intraday bars from CSV files.

``--source csv:SPEC`` where ``SPEC`` is

* a CSV file.  Its symbol is the file name's stem upper-cased
  (``spy.csv`` -> ``SPY``), unless the file has a ``symbol`` column, in which
  case every row names its own symbol (one file may then hold several);
* a folder: every ``*.csv`` file directly inside it, read as above, except
  hidden files (names starting with ``.``, such as editor temporary files).
  A symbol may come from one file only;
* ``sample``: the bundled, synthetic sample data
  (``bastion/plugins/sample_data``, five symbols of weekday bars for
  2021-01-04..2023-12-29).

File format.  A header row is required; column names are case-insensitive and
their order is free; unknown columns are ignored.

* ``date`` or ``timestamp`` (exactly one of them): the time the bar *closed*.
  A plain date ``YYYY-MM-DD`` means that day's close at **21:00 UTC** (16:00
  in New York in winter).  An ISO 8601 datetime with an offset or ``Z``
  (``2021-03-04T14:30:00-05:00``) is that instant; a datetime without an offset
  is taken as UTC.  Every timestamp is converted to UTC.
* ``open``, ``high``, ``low``, ``close``: finite numbers > 0, with
  ``low <= min(open, close)`` and ``max(open, close) <= high``.
* ``volume`` (optional): a finite number >= 0.  Without the column, bars carry
  no volume and the ``sim`` broker fills without a volume limit (a file that
  has the column but a 0 means nothing traded: orders wait).
* ``symbol`` (optional): see above.

A row may not have more fields than the header (a trailing comma on every
line, header included, is fine).  Rows of one symbol must be in strictly
increasing time order.  Everything is read and checked when the source is
opened, so a run never starts on bad data: the first problem raises
:class:`bastion.FormatError` with a one-line message naming the file, the line
and what to fix.  Blank lines are skipped.  A file or folder that cannot be
read raises :class:`bastion.ConfigError` naming it.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time
from itertools import islice, pairwise
from operator import attrgetter
from pathlib import Path
from typing import Final

from bastion import ConfigError, FormatError, hookimpl
from bastion.interfaces import Offer, select_symbols
from bastion.models import Bar

__all__ = ["DAILY_CLOSE", "SAMPLE_DATA", "CsvSource", "register_sources"]

SAMPLE_DATA: Final = Path(__file__).parent / "sample_data"
"""The bundled synthetic sample data (package data)."""

DAILY_CLOSE: Final = time(21, 0, tzinfo=UTC)
"""The close time given to a bar whose timestamp is a plain date."""

_TIME_COLUMNS: Final = ("date", "timestamp")
_PRICE_COLUMNS: Final = ("open", "high", "low", "close")
_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_BAR_KEY: Final = attrgetter("ts", "symbol")


@hookimpl
def register_sources() -> list[Offer[CsvSource]]:
    return [
        Offer(
            "csv",
            lambda spec, context: CsvSource.open(spec),
            description="bars from CSV files",
            options="a CSV file, a folder of SYMBOL.csv files, or 'sample' (the bundled data)",
        )
    ]


class CsvSource:
    """Bars loaded (and validated) from CSV files; see the module docstring for the format."""

    description: str

    def __init__(self, series: Mapping[str, Sequence[Bar]], description: str) -> None:
        """Wrap already-validated bars: ``series`` maps a symbol to its bars in time order.

        Use :meth:`open` to read files; this constructor only re-checks the order.
        """
        if not series:
            raise ValueError("a CsvSource needs at least one symbol")
        self._bars: dict[str, tuple[Bar, ...]] = {}
        self._times: dict[str, list[datetime]] = {}
        for symbol in sorted(series):
            bars = tuple(series[symbol])
            times = [bar.ts for bar in bars]
            if not bars or any(b <= a for a, b in pairwise(times)):
                raise ValueError(f"bars of {symbol!r} must be non-empty and strictly increasing")
            if any(bar.symbol != symbol for bar in bars):
                raise ValueError(f"bars filed under {symbol!r} carry another symbol")
            self._bars[symbol] = bars
            self._times[symbol] = times
        self._symbols = tuple(self._bars)
        self.description = description

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, spec: str) -> CsvSource:
        """Read and validate ``spec``: a CSV file, a folder of them, or ``sample``."""
        spec = spec.strip()
        if not spec:
            # Most likely an unset variable in `--source csv:$DATA`: never guess.
            raise ConfigError(
                "csv source needs a path: --source csv:PATH (a file or a folder) "
                "or csv:sample for the bundled data"
            )
        try:
            path = SAMPLE_DATA if spec == "sample" else Path(spec).expanduser()
        except RuntimeError:  # "~someone" with no such user, or no home directory
            raise ConfigError(
                f"csv source: cannot expand '~' in {spec}; give the full path"
            ) from None
        files = _files(path)
        series: dict[str, list[Bar]] = {}
        origin: dict[str, tuple[Path, int]] = {}
        for file in files:
            for symbol, (bars, first_line) in _read_file(file).items():
                if symbol in origin:
                    other, other_line = origin[symbol]
                    raise FormatError(
                        f"{file}:{first_line}: symbol {symbol!r} is also in "
                        f"{other}:{other_line}; keep each symbol in one file"
                    )
                origin[symbol] = (file, first_line)
                series[symbol] = bars
        first = min(bars[0].ts for bars in series.values())
        last = max(bars[-1].ts for bars in series.values())
        count = len(series)
        description = (
            f"csv:{'sample' if path == SAMPLE_DATA else path} "
            f"({count} symbol{'s' if count != 1 else ''}, "
            f"{first.date().isoformat()}..{last.date().isoformat()})"
        )
        return cls(series, description)

    # ------------------------------------------------------------------ Source

    def symbols(self) -> tuple[str, ...]:
        """Every symbol this source has, sorted."""
        return self._symbols

    def bars(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[Bar]:
        """Bars for ``symbols`` (all if ``None``) with ``start <= ts <= end``, by ``(ts, symbol)``.

        A ``start`` or ``end`` without a time zone is taken as UTC.
        """
        streams = [
            islice(self._bars[symbol], lo, hi)
            for symbol, lo, hi in self._spans(symbols, start, end)
            if lo < hi
        ]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=_BAR_KEY)

    def count(
        self,
        symbols: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> int:
        """How many bars :meth:`bars` yields for the same arguments (for a progress bar)."""
        return sum(max(hi - lo, 0) for _, lo, hi in self._spans(symbols, start, end))

    def _spans(
        self, symbols: Sequence[str] | None, start: datetime | None, end: datetime | None
    ) -> list[tuple[str, int, int]]:
        """For each wanted symbol, the index range of its bars within ``start``..``end``."""
        wanted = select_symbols(symbols, self._symbols, self.description)
        lo_ts = _bound("start", start)
        hi_ts = _bound("end", end)
        spans = []
        for symbol in wanted:
            times = self._times[symbol]
            lo = 0 if lo_ts is None else bisect.bisect_left(times, lo_ts)
            hi = len(times) if hi_ts is None else bisect.bisect_right(times, hi_ts)
            spans.append((symbol, lo, hi))
        return spans

    def __repr__(self) -> str:
        return f"<CsvSource {self.description}>"


# ---------------------------------------------------------------------- reading


def _files(path: Path) -> list[Path]:
    """The CSV files ``path`` names: itself, or the non-hidden ``*.csv`` files in the folder."""
    try:
        if not path.exists():
            raise ConfigError(f"csv source: {path} does not exist; give a CSV file or a folder")
        if not path.is_dir():
            return [path]
        files = sorted(
            p
            for p in path.iterdir()
            if p.suffix.lower() == ".csv" and not p.name.startswith(".") and p.is_file()
        )
    except OSError as exc:
        raise ConfigError(f"csv source: cannot read {path}: {exc.strerror or exc}") from None
    if not files:
        raise ConfigError(
            f"csv source: folder {path} has no .csv files; put one file per symbol there"
        )
    return files


def _as_utc(value: datetime) -> datetime:
    """``value`` in UTC (naive means UTC); OverflowError if that is outside datetime's range."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _bound(name: str, value: datetime | None) -> datetime | None:
    """A ``start``/``end`` argument of :meth:`CsvSource.bars` in UTC, or ConfigError."""
    if value is None:
        return None
    try:
        return _as_utc(value)
    except OverflowError:
        raise ConfigError(
            f"csv source: {name} {value.isoformat()} is out of range in UTC; "
            "give a time between 0001-01-01 and 9999-12-31 UTC"
        ) from None


def _read_file(file: Path) -> dict[str, tuple[list[Bar], int]]:
    """Every symbol in ``file`` -> (its bars in time order, the line of its first bar)."""
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            return _parse(file, csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"{file}: is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV"
        ) from None
    except csv.Error as exc:
        raise FormatError(f"{file}: is not valid CSV ({exc}); check its quoting") from None
    except OSError as exc:
        raise ConfigError(f"csv source: cannot read {file}: {exc.strerror or exc}") from None


def _parse(file: Path, reader: Iterator[list[str]]) -> dict[str, tuple[list[Bar], int]]:
    header: list[str] | None = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip().lower() for cell in row]
            break
    if header is None:
        raise FormatError(f"{file}: no bars (the file is empty); add a header and rows")
    header_line = getattr(reader, "line_num", 1)
    columns = _columns(file, header_line, header)
    time_col = columns["time"]
    o_col, h_col, l_col, c_col = (columns[name] for name in _PRICE_COLUMNS)
    v_col = columns.get("volume")
    s_col = columns.get("symbol")
    width = max(columns.values()) + 1
    default_symbol = file.stem.strip().upper()
    if s_col is None and not default_symbol:
        raise FormatError(f"{file}: cannot take a symbol from this file name; rename the file")

    result: dict[str, tuple[list[Bar], int]] = {}
    # symbol -> (last timestamp, its line) for order and duplicate checks
    previous: dict[str, tuple[datetime, int]] = {}
    seen: dict[str, dict[datetime, int]] = {}  # symbol -> timestamp -> line
    line: int = header_line
    for row in reader:
        start = line + 1  # where this record starts: a quoted field may span lines
        line = getattr(reader, "line_num", 0)
        if not any(cell.strip() for cell in row):
            continue
        where = f"{file}:{line}"
        # An opening quote that is never closed swallows the following lines (up to
        # the next quote or the end of the file) into one field: a row of the wrong width.
        if (len(row) < width or len(row) > len(header)) and any(
            "\n" in cell or "\r" in cell for cell in row
        ):
            runs_on = f" (the quoted field runs on to line {line})" if line > start else ""
            raise FormatError(
                f"{file}:{start}: unterminated quote{runs_on}; "
                'close the quote with another " or remove it'
            )
        if len(row) < width:
            raise FormatError(
                f"{where}: has {len(row)} fields but the header has {len(header)}; "
                "fill in every column"
            )
        if len(row) > len(header):
            raise FormatError(
                f"{where}: has {len(row)} fields but the header has {len(header)}; "
                "remove the extra fields, or quote values that contain a comma"
            )
        if s_col is None:
            symbol = default_symbol
        else:
            symbol = row[s_col].strip()
            if not symbol:
                raise FormatError(f"{where}: empty symbol; every row needs a symbol")
        ts = _timestamp(where, header[time_col], row[time_col])
        open_ = _price(where, "open", row[o_col])
        high = _price(where, "high", row[h_col])
        low = _price(where, "low", row[l_col])
        close = _price(where, "close", row[c_col])
        volume = None if v_col is None else _volume(where, row[v_col])
        if high < max(open_, close):
            which = "open" if open_ >= close else "close"
            raise FormatError(
                f"{where}: high {high!r} is below {which} {max(open_, close)!r}; "
                "high must be >= open and close"
            )
        if low > min(open_, close):
            which = "open" if open_ <= close else "close"
            raise FormatError(
                f"{where}: low {low!r} is above {which} {min(open_, close)!r}; "
                "low must be <= open and close"
            )
        times = seen.setdefault(symbol, {})
        if ts in times:
            raise FormatError(
                f"{where}: duplicate timestamp {_show(ts)} for {symbol} "
                f"(also on line {times[ts]}); remove one of the rows"
            )
        times[ts] = line
        last = previous.get(symbol)
        if last is not None:
            last_ts, last_line = last
            if ts < last_ts:
                raise FormatError(
                    f"{where}: timestamp {_show(ts)} for {symbol} is before "
                    f"{_show(last_ts)} on line {last_line}; sort the rows by time, oldest first"
                )
        previous[symbol] = (ts, line)
        try:
            bar = Bar(symbol, ts, open_, high, low, close, volume)
        except ValueError as exc:  # pragma: no cover - every rule is checked above
            raise FormatError(f"{where}: {exc}") from None
        entry = result.get(symbol)
        if entry is None:
            result[symbol] = ([bar], line)
        else:
            entry[0].append(bar)
    if not result:
        raise FormatError(
            f"{file}:{header_line}: no bars (only a header); add rows below the header"
        )
    return result


def _columns(file: Path, line: int, header: list[str]) -> dict[str, int]:
    where = f"{file}:{line}"
    seen: dict[str, int] = {}
    for index, name in enumerate(header):
        if not name:
            continue
        if name in seen:
            raise FormatError(f"{where}: column {name!r} appears twice; keep one")
        seen[name] = index
    times = [name for name in _TIME_COLUMNS if name in seen]
    if len(times) > 1:
        raise FormatError(f"{where}: has both 'date' and 'timestamp' columns; keep one of them")
    missing = [] if times else ["date (or timestamp)"]
    missing += [name for name in _PRICE_COLUMNS if name not in seen]
    if missing:
        raise FormatError(
            f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            "the header needs date, open, high, low, close (volume and symbol are optional)"
        )
    columns = {"time": seen[times[0]]}
    for name in (*_PRICE_COLUMNS, "volume", "symbol"):
        if name in seen:
            columns[name] = seen[name]
    return columns


def _number(where: str, column: str, cell: str) -> float:
    text = cell.strip()
    if not text:
        raise FormatError(f"{where}: {column} is empty; give a number")
    try:
        value = float(text)
    except ValueError:
        raise FormatError(
            f"{where}: {column} {text!r} is not a number; use digits and '.', e.g. 101.25"
        ) from None
    if not math.isfinite(value):
        raise FormatError(f"{where}: {column} is {text!r}; give a finite number")
    return value


def _price(where: str, column: str, cell: str) -> float:
    value = _number(where, column, cell)
    if value <= 0:
        raise FormatError(f"{where}: {column} {value!r} is not above zero; prices must be > 0")
    return value


def _volume(where: str, cell: str) -> float:
    value = _number(where, "volume", cell)
    if value < 0:
        raise FormatError(f"{where}: volume {value!r} is negative; volume must be >= 0")
    return value


def _timestamp(where: str, column: str, cell: str) -> datetime:
    text = cell.strip()
    try:
        if _DATE_RE.fullmatch(text):
            return datetime.combine(date.fromisoformat(text), DAILY_CLOSE)
        if _DATETIME_RE.match(text):
            value = datetime.fromisoformat(text)
            return _as_utc(value)
    except OverflowError:
        raise FormatError(
            f"{where}: {column} {text!r} is out of range once converted to UTC; "
            "use a time between 0001-01-01 and 9999-12-31 UTC"
        ) from None
    except ValueError:
        pass
    raise FormatError(
        f"{where}: {column} {text!r} is not a date or time; "
        "use YYYY-MM-DD or an ISO datetime such as 2021-03-04T21:00:00Z"
    )


def _show(ts: datetime) -> str:
    if ts.timetz() == DAILY_CLOSE:
        return ts.date().isoformat()
    return ts.isoformat().replace("+00:00", "Z")
