"""Performance metrics of one strategy's run: pure functions, no I/O.

Everything here works on an *equity series*: ``(timestamp, equity)`` pairs in
time order, one per bar the strategy saw (:data:`bastion.interfaces.EquityPoint`).
Money in the ledger is exact; equity for statistics is a float, which is what
the ratios below need.

Rules (also stated on each function):

- **Returns** are per-period simple returns ``e[i] / e[i-1] - 1`` between
  consecutive points.  A period that starts at equity ``<= 0`` has no defined
  return and is skipped (an account that is wiped out stays wiped out).
- **Periods per year** are inferred from the median spacing ``m`` between
  consecutive distinct timestamps:

  ===========================  =====================================================
  ``m < 20 h`` (intraday)      ``252 * max(1, 6.5 h / m)``: US-equity trading time,
                               252 sessions of 6.5 h (1-minute bars -> 98 280)
  ``20 h <= m < 3.5 days``     ``252`` (daily bars; weekend gaps do not count)
  ``m >= 3.5 days``            ``365.25 days / m`` (weekly ~52.2, monthly ~12)
  ===========================  =====================================================

  Markets that trade around the clock (crypto) are therefore under-annualised
  on intraday bars; the rule is deliberately one fixed convention so numbers
  are comparable across runs.
- **Sharpe** is ``mean / stdev * sqrt(periods per year)`` with a risk-free rate
  of 0 and the sample standard deviation (``ddof = 1``); **volatility** is
  ``stdev * sqrt(periods per year)``.
- **Drawdown** is measured from the running peak *of the series*; the first
  point should be the starting equity (the engine records it) for the first
  bar's loss to count.
- **Years** are ``365.25`` days of 86 400 s.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
import os
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import IO, Any

import attrs
import numpy as np
import numpy.typing as npt

__all__ = [
    "CHUNK",
    "DAYS_PER_YEAR",
    "Column",
    "TradeRecord",
    "benchmark_comparison",
    "column_benchmark_comparison",
    "column_downsample",
    "column_metrics",
    "column_period_returns",
    "compute_metrics",
    "downsample",
    "downsample_columns",
    "drawdown_series",
    "from_micros",
    "metrics_from_columns",
    "period_returns",
    "periods_per_year",
    "to_micros",
]

EquitySeries = Sequence[tuple[datetime, float]]

DAYS_PER_YEAR = 365.25
TRADING_DAYS_PER_YEAR = 252
TRADING_SECONDS_PER_DAY = 6.5 * 3600
_SECONDS_PER_DAY = 86_400.0
_INTRADAY_BELOW = timedelta(hours=20).total_seconds()
_DAILY_BELOW = timedelta(days=3.5).total_seconds()
# A sample standard deviation at or below this is "zero variance": constant
# growth produces float noise of ~1e-17, which would give an absurd Sharpe.
_ZERO_STDEV = 1e-12
_NO_TIME = timedelta(0)


def _not_before(instance: TradeRecord, _: attrs.Attribute[datetime], value: datetime) -> None:
    if value < instance.opened:
        raise ValueError(f"trade {instance.symbol}: closed {value} before opened {instance.opened}")


def _finite_decimal(instance: TradeRecord, _: attrs.Attribute[Decimal], value: Decimal) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"trade {instance.symbol}: pnl must be a finite Decimal, got {value!r}")


@attrs.frozen(slots=True)
class TradeRecord:
    """A closed round trip in one symbol; ``pnl`` is net of commissions."""

    symbol: str = attrs.field(validator=attrs.validators.min_len(1))
    opened: datetime
    closed: datetime = attrs.field(validator=_not_before)
    pnl: Decimal = attrs.field(validator=_finite_decimal)


# --------------------------------------------------------------------------- validation


def _validated(equity: EquitySeries) -> list[tuple[datetime, float]]:
    """The series as ``(ts, float)``; raises ``ValueError`` on bad values or order.

    The common case (floats, finite, in order) is checked with builtins over the
    whole series; the point-by-point loop runs only to word an error.
    """
    try:
        timestamps = [ts for ts, _ in equity]
        values = [value for _, value in equity]
        if (
            all(type(v) is float for v in values)
            and all(map(math.isfinite, values))
            and all(type(ts) is datetime for ts in timestamps)
            and all(a <= b for a, b in itertools.pairwise(timestamps))
        ):
            return list(zip(timestamps, values, strict=True))
    except (TypeError, ValueError):
        pass
    return _validated_slowly(equity)


def _validated_slowly(equity: EquitySeries) -> list[tuple[datetime, float]]:
    out: list[tuple[datetime, float]] = []
    previous: datetime | None = None
    for index, point in enumerate(equity):
        ts, value = point
        if not isinstance(ts, datetime):
            raise ValueError(f"equity point {index}: timestamp must be a datetime, got {ts!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            raise ValueError(f"equity point {index} ({ts}): equity must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"equity point {index} ({ts}): equity must be finite, got {value!r}")
        if previous is not None and ts < previous:
            raise ValueError(f"equity point {index} ({ts}) is earlier than the point before it")
        out.append((ts, number))
        previous = ts
    return out


# --------------------------------------------------------------------------- building blocks


def periods_per_year(timestamps: Sequence[datetime]) -> float | None:
    """Periods per year implied by the median spacing of ``timestamps`` (see module doc).

    ``None`` when there are fewer than two distinct timestamps.
    """
    differences: Iterator[timedelta] = map(
        operator.sub, itertools.islice(timestamps, 1, None), timestamps
    )
    gaps = sorted(filter(_NO_TIME.__lt__, differences))
    if not gaps:
        return None
    middle = len(gaps) // 2
    if len(gaps) % 2:
        median: float = gaps[middle].total_seconds()
    else:
        median = (gaps[middle - 1].total_seconds() + gaps[middle].total_seconds()) / 2
    return _per_year(median)


def _per_year(median: float) -> float:
    """Periods per year for a median spacing of ``median`` seconds (see module doc)."""
    if median < _INTRADAY_BELOW:
        return TRADING_DAYS_PER_YEAR * max(1.0, TRADING_SECONDS_PER_DAY / median)
    if median < _DAILY_BELOW:
        return float(TRADING_DAYS_PER_YEAR)
    return DAYS_PER_YEAR * _SECONDS_PER_DAY / median


FloatArray = npt.NDArray[np.float64]


def _returns(values: FloatArray) -> FloatArray:
    """``e[i] / e[i-1] - 1`` where ``e[i-1] > 0`` (each the same IEEE operations as in Python)."""
    previous, current = values[:-1], values[1:]
    with np.errstate(all="ignore"):  # a return beyond float range is judged by the caller
        if len(previous) and previous.min() > 0:  # the usual case
            out: FloatArray = current / previous - 1.0
        else:
            kept = previous > 0
            out = current[kept] / previous[kept] - 1.0
    return out


def drawdown_series(equity: EquitySeries) -> list[tuple[datetime, float]]:
    """Each point's distance below the running peak, as a fraction ``<= 0``.

    ``-0.1`` means 10 % below the highest equity seen so far.  While the peak is
    not positive (a series that starts at or below zero) the drawdown is 0.
    Equity below zero gives a drawdown below ``-1``: more than everything lost.
    Raises ``ValueError`` for non-finite equity or timestamps out of order.
    """
    return _drawdowns(_validated(equity))


def _drawdowns(points: Sequence[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    out: list[tuple[datetime, float]] = []
    peak = -math.inf
    for ts, value in points:
        if value > peak:
            peak = value
        out.append((ts, value / peak - 1.0 if peak > 0 else 0.0))
    return out


def _drawdown_stats(
    timestamps: Sequence[datetime], values: Sequence[float] | FloatArray
) -> tuple[float, timedelta]:
    """The largest fall below the running peak (a positive fraction, as in
    :func:`drawdown_series`) and the longest time from a peak until equity was
    back at or above it (or until the last point, if it never was).

    A point is "at the peak" when it is at or above every point before it; the
    time under water runs from one such point to the next one that is not
    directly after it.
    """
    if not len(values):
        return 0.0, timedelta(0)
    series = np.asarray(values, dtype=float)
    peaks = np.maximum.accumulate(series)
    with np.errstate(all="ignore"):
        if series[0] > 0:  # every running peak is positive
            worst = max(0.0, float(1.0 - (series / peaks).min()))
        else:
            positive = peaks > 0
            falls = 1.0 - series[positive] / peaks[positive]
            worst = max(0.0, float(falls.max())) if len(falls) else 0.0
    at_peak = np.flatnonzero(series == peaks)  # never empty: the first point is its own peak
    episodes = np.flatnonzero(np.diff(at_peak) > 1)  # a peak not followed directly by another
    longest = max(
        (
            timestamps[after] - timestamps[before]
            for before, after in zip(
                at_peak[episodes].tolist(), at_peak[episodes + 1].tolist(), strict=True
            )
        ),
        default=timedelta(0),
    )
    last_peak = int(at_peak[-1])
    if last_peak < len(series) - 1:  # never recovered: counts up to the last point
        longest = max(longest, timestamps[-1] - timestamps[last_peak])
    return worst, longest


def downsample(
    points: Sequence[tuple[datetime, float]], max_points: int = 5000
) -> list[tuple[datetime, float]]:
    """At most ``max_points`` points of ``points`` that still show every drawdown.

    Keeps the first and last point; the points between are split into
    ``(max_points - 2) // 2`` buckets of consecutive points and each bucket
    contributes its minimum and its maximum (one point if they coincide), in
    time order.  The result is a subsequence of the input containing the global
    minimum and maximum.  A series that is already short enough is returned
    as a new list, unchanged.  ``max_points`` must be at least 4.
    """
    return downsample_columns([ts for ts, _ in points], [value for _, value in points], max_points)


def downsample_columns(
    timestamps: Sequence[datetime], values: Sequence[float], max_points: int = 5000
) -> list[tuple[datetime, float]]:
    """:func:`downsample` for a series kept as two parallel sequences."""
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4, got {max_points}")
    if len(timestamps) != len(values):
        raise ValueError(f"{len(timestamps)} timestamps but {len(values)} values")
    if len(values) <= max_points:
        return list(zip(timestamps, values, strict=True))
    n = len(values) - 2  # the interior points 1 .. n
    buckets = (max_points - 2) // 2
    series = np.asarray(values, dtype=float)
    # argmin/argmax give the first extreme, as list.index(min(...)) does; a NaN (an
    # unknown stored value) would win there, so such a series takes the slow path.
    fast = not np.isnan(series).any()
    out = [(timestamps[0], values[0])]
    for b in range(buckets):
        lo, hi = 1 + b * n // buckets, 1 + (b + 1) * n // buckets
        if fast:
            bucket = series[lo:hi]
            lowest = lo + int(bucket.argmin())
            highest = lo + int(bucket.argmax())
        else:
            lowest = min(range(lo, hi), key=values.__getitem__)
            highest = max(range(lo, hi), key=values.__getitem__)
        for i in sorted({lowest, highest}):
            out.append((timestamps[i], values[i]))
    out.append((timestamps[-1], values[-1]))
    return out


# --------------------------------------------------------------------------- metrics


def compute_metrics(
    equity: EquitySeries,
    trades: Sequence[TradeRecord],
    exposure_bars: int,
    total_bars: int,
    starting_equity: float,
) -> dict[str, float | int | None]:
    """The metrics a report shows for one strategy.

    Keys (fractions, not percent; ``None`` where a value is undefined):

    - ``start_equity``: ``starting_equity``.
    - ``end_equity``: the last equity point (``starting_equity`` if there are none).
    - ``total_return``: ``end_equity / start_equity - 1``.
    - ``cagr``: ``(end / start) ** (1 / years) - 1`` with years from the first
      to the last timestamp (365.25-day years); ``None`` when that span is under
      one day, end equity is ``<= 0``, or the annualised figure would
      overflow a float (a large gain over a few days).
    - ``sharpe``: annualised, risk-free 0, from per-period simple returns (see
      the module doc for periods per year); ``None`` with fewer than two returns,
      zero variance, or a return beyond float range (equity within a hair of 0).
    - ``volatility``: annualised standard deviation of those returns; ``None``
      with fewer than two returns.
    - ``max_drawdown``: largest fall from the running peak, a positive fraction
      (``0.1`` = 10 %; above 1 only if equity went negative).
    - ``max_drawdown_duration_days``: longest time, in days, from a peak until
      equity first regained it (or until the last point, if it never did).
    - ``trades``: closed round trips; ``win_rate``: fraction with ``pnl > 0``
      (``None`` with no trades).
    - ``exposure``: ``exposure_bars / total_bars`` (``None`` if ``total_bars`` is 0).

    Raises ``ValueError`` for non-finite equity, timestamps out of order, a
    starting equity that is not finite and positive, or inconsistent bar counts.
    """
    points = _validated(equity)
    return _metrics(
        [ts for ts, _ in points],
        [value for _, value in points],
        trades,
        exposure_bars,
        total_bars,
        starting_equity,
    )


def metrics_from_columns(
    timestamps: Sequence[datetime],
    values: Sequence[float],
    trades: Sequence[TradeRecord],
    exposure_bars: int,
    total_bars: int,
    starting_equity: float,
) -> dict[str, float | int | None]:
    """:func:`compute_metrics` for a series kept as two parallel sequences (as the engine does).

    Same keys, rules and errors; the checks run at C speed when the series is
    well formed, which is what makes this the engine's path for long runs.
    """
    if len(timestamps) != len(values):
        raise ValueError(f"{len(timestamps)} timestamps but {len(values)} values")
    well_formed = False
    with contextlib.suppress(TypeError, ValueError, OverflowError):
        well_formed = (
            set(map(type, values)) <= {float}
            and math.isfinite(sum(values))
            and set(map(type, timestamps)) <= {datetime}
            and all(map(operator.le, timestamps, itertools.islice(timestamps, 1, None)))
        )
    if not well_formed:
        points = _validated_slowly(list(zip(timestamps, values, strict=True)))
        timestamps = [ts for ts, _ in points]
        values = [value for _, value in points]
    return _metrics(timestamps, values, trades, exposure_bars, total_bars, starting_equity)


def _metrics(
    timestamps: Sequence[datetime],
    values: Sequence[float],
    trades: Sequence[TradeRecord],
    exposure_bars: int,
    total_bars: int,
    starting_equity: float,
) -> dict[str, float | int | None]:
    if isinstance(starting_equity, bool) or not isinstance(starting_equity, (int, float, Decimal)):
        raise ValueError(f"starting_equity must be a number, got {starting_equity!r}")
    start = float(starting_equity)
    if not (math.isfinite(start) and start > 0):
        raise ValueError(f"starting_equity must be finite and positive, got {starting_equity!r}")
    if not (0 <= exposure_bars <= total_bars):
        raise ValueError(
            f"need 0 <= exposure_bars <= total_bars, got {exposure_bars} and {total_bars}"
        )
    end = values[-1] if values else start

    cagr: float | None = None
    if len(values) >= 2 and end > 0:
        span = (timestamps[-1] - timestamps[0]).total_seconds()
        if span >= _SECONDS_PER_DAY:
            years = span / (DAYS_PER_YEAR * _SECONDS_PER_DAY)
            # Logs of each side: end / start could underflow to 0 for a near-total loss.
            log_growth = (math.log(end) - math.log(start)) / years
            try:
                cagr = math.expm1(log_growth)
            except OverflowError:  # a huge gain over a few days annualises past float range
                cagr = None

    sharpe: float | None = None
    volatility: float | None = None
    series = np.asarray(values, dtype=float)
    returns_array = _returns(series)
    returns = returns_array.tolist()
    per_year = periods_per_year(timestamps)
    # A return beyond float range (from an equity near zero) has no usable statistics.
    if len(returns) >= 2 and per_year is not None and math.isfinite(sum(returns)):
        mean = math.fsum(returns) / len(returns)  # exact sums: returns may cancel out
        with np.errstate(all="ignore"):  # a square beyond float range is inf, as in Python
            deviations = returns_array - mean
            squares = (deviations * deviations).tolist()
        stdev = math.sqrt(math.fsum(squares) / (len(returns) - 1))
        volatility = stdev * math.sqrt(per_year)
        if stdev > _ZERO_STDEV:
            sharpe = mean / stdev * math.sqrt(per_year)
        else:
            volatility = 0.0

    max_drawdown, duration = _drawdown_stats(timestamps, series)

    wins = sum(1 for trade in trades if trade.pnl > 0)
    return {
        "start_equity": start,
        "end_equity": end,
        "total_return": end / start - 1.0,
        "cagr": cagr,
        "sharpe": sharpe,
        "volatility": volatility,
        "max_drawdown": max_drawdown,
        "max_drawdown_duration_days": duration.total_seconds() / _SECONDS_PER_DAY,
        "trades": len(trades),
        "win_rate": wins / len(trades) if trades else None,
        "exposure": exposure_bars / total_bars if total_bars else None,
    }


# --------------------------------------------------------------------------- periods and benchmark


def period_returns(
    timestamps: Sequence[datetime], values: Sequence[float], starting_equity: float
) -> dict[str, float | None]:
    """Calendar-month (``"2024-03"``) and calendar-year (``"2024"``) returns, UTC.

    Each period's return is its last equity point over the one before the period
    (the starting equity for the first): ``end / previous_end - 1``.  A period that
    starts at equity ``<= 0`` has ``None``.  Periods without a point are absent.
    """
    months: dict[tuple[int, int], float] = {}  # (year, month) -> its last value
    for ts, value in zip(timestamps, values, strict=True):
        months[ts.year, ts.month] = value  # later points overwrite: the last one stays
    return _period_returns(months, starting_equity)


def _period_returns(
    months: Mapping[tuple[int, int], float], starting_equity: float
) -> dict[str, float | None]:
    """:func:`period_returns` from each month's last value, months in time order."""
    out: dict[str, float | None] = {}
    previous_month = previous_year = float(starting_equity)
    year_end: float | None = None
    current_year: int | None = None
    for (year, month), value in months.items():  # in time order (dicts keep insertion)
        out[f"{year:04d}-{month:02d}"] = (
            value / previous_month - 1.0 if previous_month > 0 else None
        )
        previous_month = value
        if current_year is not None and year != current_year:
            assert year_end is not None
            out[f"{current_year:04d}"] = (
                year_end / previous_year - 1.0 if previous_year > 0 else None
            )
            previous_year = year_end
        current_year, year_end = year, value
    if current_year is not None:
        assert year_end is not None
        out[f"{current_year:04d}"] = year_end / previous_year - 1.0 if previous_year > 0 else None
    return out


def benchmark_comparison(
    values: Sequence[float], benchmark: Sequence[float], starting_equity: float
) -> dict[str, float | None]:
    """A strategy's equity against a benchmark's over the same timestamps.

    - ``benchmark_return``: the benchmark's total return (its first point is its start);
    - ``excess_return``: the strategy's total return (from ``starting_equity``) minus it;
    - ``beta``: covariance of the per-period returns over the benchmark's variance;
    - ``correlation``: their Pearson correlation.

    ``None`` where undefined (fewer than two returns, a constant series, equity <= 0).
    """
    if len(values) != len(benchmark):
        raise ValueError(f"{len(values)} equity points but {len(benchmark)} benchmark points")
    out: dict[str, float | None] = {
        "benchmark_return": None,
        "excess_return": None,
        "beta": None,
        "correlation": None,
    }
    if not benchmark or benchmark[0] <= 0:
        return out
    held = benchmark[-1] / benchmark[0] - 1.0
    out["benchmark_return"] = held
    if values and starting_equity > 0:
        out["excess_return"] = values[-1] / starting_equity - 1.0 - held
    strategy = np.asarray(values, dtype=float)
    bench = np.asarray(benchmark, dtype=float)
    usable = (strategy[:-1] > 0) & (bench[:-1] > 0)
    if int(usable.sum()) < 2:
        return out
    with np.errstate(all="ignore"):
        s = strategy[1:][usable] / strategy[:-1][usable] - 1.0
        b = bench[1:][usable] / bench[:-1][usable] - 1.0
    if not (np.isfinite(s).all() and np.isfinite(b).all()):
        return out
    # Correctly rounded sums (math.fsum), not BLAS dot products: np.dot's result depends
    # on the CPU's vector kernels, and a trader's report must not change in the last digit
    # from one machine to the next.
    n = len(s)
    ds = s - math.fsum(s.tolist()) / n
    db = b - math.fsum(b.tolist()) / n
    cov = math.fsum((ds * db).tolist()) / (n - 1)
    var_s = math.fsum((ds * ds).tolist()) / (n - 1)
    var_b = math.fsum((db * db).tolist()) / (n - 1)
    if var_b > _ZERO_STDEV**2:
        out["beta"] = cov / var_b
        if var_s > _ZERO_STDEV**2:
            out["correlation"] = cov / math.sqrt(var_s * var_b)
    return out


# --------------------------------------------------------------------------- long runs
#
# A run of millions of bars cannot keep a ``datetime`` and a ``float`` per bar (~120
# bytes a point for the timestamps, the benchmark and one strategy).  The engine keeps
# its curve as :class:`Column` s instead: 8 bytes a point in a small in-memory
# buffer, spilled to an anonymous temporary file every ``CHUNK`` points, and the
# functions below compute from them, a chunk at a time, exactly the numbers the
# whole-list functions above compute (the same IEEE operations on the same values;
# every sum that was a ``math.fsum`` or a builtin ``sum`` over a list is the same call
# over a generator of the same floats, which is streaming and gives the same result).

CHUNK = 1 << 16
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
_US_PER_SECOND = 1_000_000


def to_micros(ts: datetime) -> int:
    """An aware time as integer microseconds since the Unix epoch (exact)."""
    return (ts - EPOCH) // MICROSECOND


def from_micros(us: int) -> datetime:
    """The inverse of :func:`to_micros`, in UTC."""
    return EPOCH + timedelta(microseconds=int(us))


class Column:
    """A column of int64 (``"q"``) or float64 (``"d"``) numbers that grows by
    :meth:`append`-ing to :attr:`buffer`; :meth:`spill` moves the buffer to an
    anonymous temporary file (deleted when closed or when the process ends)."""

    __slots__ = ("_dtype", "_file", "_spilled", "buffer")

    def __init__(self, typecode: str) -> None:
        if typecode not in ("q", "d"):
            raise ValueError(f"typecode must be 'q' or 'd', got {typecode!r}")
        self.buffer: array[Any] = array(typecode)
        self._dtype = np.dtype(np.int64 if typecode == "q" else np.float64)
        self._file: IO[bytes] | None = None
        self._spilled = 0

    def __len__(self) -> int:
        return self._spilled + len(self.buffer)

    def extend(self, values: Iterable[float]) -> None:
        self.buffer.extend(values)

    def spill(self) -> None:
        if not self.buffer:
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="bastion-curve-")  # noqa: SIM115
        self._file.seek(0, os.SEEK_END)
        self.buffer.tofile(self._file)
        self._spilled += len(self.buffer)
        del self.buffer[:]

    def read(self, start: int, stop: int) -> npt.NDArray[Any]:
        """The values ``start`` to ``stop`` (clipped to the column) as a numpy array."""
        stop = min(stop, len(self))
        start = max(0, min(start, stop))
        parts = []
        if start < self._spilled:
            assert self._file is not None
            end = min(stop, self._spilled)
            size = self._dtype.itemsize
            self._file.seek(start * size)
            parts.append(np.frombuffer(self._file.read((end - start) * size), self._dtype))
        if stop > self._spilled:
            lo, hi = max(start, self._spilled) - self._spilled, stop - self._spilled
            parts.append(np.array(self.buffer[lo:hi], self._dtype))
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.empty(0, self._dtype)

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("column index out of range")
        return self.read(index, index + 1)[0].item()

    def chunks(self, size: int = CHUNK) -> Iterator[npt.NDArray[Any]]:
        for start in range(0, len(self), size):
            yield self.read(start, start + size)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._spilled = 0
        del self.buffer[:]


def _pairs(
    times: Column, values: Column, size: int = CHUNK
) -> Iterator[tuple[npt.NDArray[np.int64], FloatArray]]:
    if len(times) != len(values):
        raise ValueError(f"{len(times)} timestamps but {len(values)} values")
    for start in range(0, len(values), size):
        yield times.read(start, start + size), values.read(start, start + size)


def _returns_chunks(values: Column, size: int = CHUNK) -> Iterator[FloatArray]:
    """:func:`_returns` of the whole column, a chunk at a time (each element the same)."""
    previous: float | None = None
    for chunk in values.chunks(size):
        if previous is None:
            before, after = chunk[:-1], chunk[1:]
        else:
            before = np.concatenate(([previous], chunk[:-1]))
            after = chunk
        previous = float(chunk[-1])
        kept = before > 0
        with np.errstate(all="ignore"):
            yield after[kept] / before[kept] - 1.0


def _floats(chunks: Iterable[FloatArray]) -> Iterator[float]:
    """The chunks' values one by one, through C iterators (``itertools.chain``), not a
    generator frame per value: the same floats in the same order, so ``math.fsum``
    over it is the same exact sum, at ~20 ns a value instead of ~35."""
    return itertools.chain.from_iterable(chunk.tolist() for chunk in chunks)


def _validate_column(times: Column, values: Column, size: int = CHUNK) -> None:
    """The errors :func:`metrics_from_columns` raises for a bad series, worded alike."""
    previous: int | None = None
    offset = 0
    for ts, chunk in _pairs(times, values, size):
        finite = np.isfinite(chunk)
        if not finite.all():
            index = int(np.flatnonzero(~finite)[0])
            raise ValueError(
                f"equity point {offset + index} ({from_micros(int(ts[index]))}): equity must "
                f"be finite, got {float(chunk[index])!r}"
            )
        before = ts if previous is None else np.concatenate(([previous], ts))
        backwards = np.flatnonzero(np.diff(before) < 0)
        if len(backwards):
            index = int(backwards[0]) + (0 if previous is None else -1) + 1
            raise ValueError(
                f"equity point {offset + index} ({from_micros(int(ts[index]))}) is earlier "
                "than the point before it"
            )
        previous = int(ts[-1])
        offset += len(chunk)


def column_metrics(
    times: Column,
    values: Column,
    trades: int,
    wins: int,
    exposure_bars: int,
    total_bars: int,
    starting_equity: float,
    size: int = CHUNK,
) -> dict[str, float | int | None]:
    """:func:`metrics_from_columns` for a curve kept as :class:`Column` s (epoch
    microseconds and floats), with the closed round trips given as ``trades`` of which
    ``wins`` had ``pnl > 0``.  The same keys, rules, errors and numbers, to the last
    digit; memory does not grow with the length of the curve."""
    _validate_column(times, values, size)
    if isinstance(starting_equity, bool) or not isinstance(starting_equity, (int, float, Decimal)):
        raise ValueError(f"starting_equity must be a number, got {starting_equity!r}")
    start = float(starting_equity)
    if not (math.isfinite(start) and start > 0):
        raise ValueError(f"starting_equity must be finite and positive, got {starting_equity!r}")
    if not (0 <= exposure_bars <= total_bars):
        raise ValueError(
            f"need 0 <= exposure_bars <= total_bars, got {exposure_bars} and {total_bars}"
        )
    if not 0 <= wins <= trades:
        raise ValueError(f"need 0 <= wins <= trades, got {wins} and {trades}")
    count = len(values)
    end = float(values[-1]) if count else start

    cagr: float | None = None
    if count >= 2 and end > 0:
        span = (int(times[-1]) - int(times[0])) / _US_PER_SECOND  # as timedelta.total_seconds
        if span >= _SECONDS_PER_DAY:
            years = span / (DAYS_PER_YEAR * _SECONDS_PER_DAY)
            log_growth = (math.log(end) - math.log(start)) / years
            try:
                cagr = math.expm1(log_growth)
            except OverflowError:
                cagr = None

    # One pass for the counts, the spacings and the drawdowns ...
    gaps: Counter[int] = Counter()
    returns = 0
    drawdown = _Drawdown()
    previous: int | None = None
    for ts, chunk in _pairs(times, values, size):
        spacing = np.diff(ts if previous is None else np.concatenate(([previous], ts)))
        distinct, counts = np.unique(spacing[spacing > 0], return_counts=True)
        gaps.update(dict(zip(distinct.tolist(), counts.tolist(), strict=True)))
        previous = int(ts[-1])
        drawdown.add(ts, chunk)
    for chunk in _returns_chunks(values, size):
        returns += len(chunk)

    sharpe: float | None = None
    volatility: float | None = None
    per_year = _per_year_from_gaps(gaps)
    # ... then the sums, each over the whole series as the whole-list function sums it.
    if (
        returns >= 2
        and per_year is not None
        and math.isfinite(sum(_floats(_returns_chunks(values, size))))
    ):
        mean = math.fsum(_floats(_returns_chunks(values, size))) / returns

        def squares() -> Iterator[FloatArray]:
            for chunk in _returns_chunks(values, size):
                with np.errstate(all="ignore"):
                    deviations = chunk - mean
                    yield deviations * deviations

        stdev = math.sqrt(math.fsum(_floats(squares())) / (returns - 1))
        volatility = stdev * math.sqrt(per_year)
        if stdev > _ZERO_STDEV:
            sharpe = mean / stdev * math.sqrt(per_year)
        else:
            volatility = 0.0

    max_drawdown, duration_us = drawdown.result()
    return {
        "start_equity": start,
        "end_equity": end,
        "total_return": end / start - 1.0,
        "cagr": cagr,
        "sharpe": sharpe,
        "volatility": volatility,
        "max_drawdown": max_drawdown,
        "max_drawdown_duration_days": duration_us / _US_PER_SECOND / _SECONDS_PER_DAY,
        "trades": trades,
        "win_rate": wins / trades if trades else None,
        "exposure": exposure_bars / total_bars if total_bars else None,
    }


def _per_year_from_gaps(gaps: Mapping[int, int]) -> float | None:
    """:func:`periods_per_year` from the positive spacings (microseconds -> how many)."""
    total = sum(gaps.values())
    if not total:
        return None
    middle = total // 2
    wanted = [middle] if total % 2 else [middle - 1, middle]
    found: list[float] = []
    seen = 0
    for gap in sorted(gaps):
        seen += gaps[gap]
        while wanted and wanted[0] < seen:
            found.append(gap / _US_PER_SECOND)  # as timedelta.total_seconds()
            wanted.pop(0)
        if not wanted:
            break
    median = found[0] if len(found) == 1 else (found[0] + found[1]) / 2
    return _per_year(median)


class _Drawdown:
    """:func:`_drawdown_stats`, fed a chunk at a time (the duration in microseconds)."""

    __slots__ = ("count", "last_peak", "last_peak_ts", "last_ts", "longest", "lowest", "peak")

    def __init__(self) -> None:
        self.count = 0
        self.peak: float | None = None  # the running peak so far
        self.lowest: float | None = None  # the lowest point / peak where the peak is > 0
        self.last_peak = -1  # index and time of the latest point at its peak
        self.last_peak_ts = 0
        self.last_ts = 0
        self.longest = 0

    def add(self, ts: npt.NDArray[np.int64], chunk: FloatArray) -> None:
        if not len(chunk):
            return
        peaks = np.maximum.accumulate(chunk)
        if self.peak is not None:
            peaks = np.maximum(peaks, self.peak)
        positive = peaks > 0
        with np.errstate(all="ignore"):
            ratios = chunk[positive] / peaks[positive]
        if len(ratios):
            low = float(ratios.min())
            self.lowest = low if self.lowest is None else min(self.lowest, low)
        at_peak = np.flatnonzero(chunk == peaks)  # (1 - x is monotone: max fall = 1 - min x)
        indices = at_peak + self.count
        stamps = ts[at_peak]
        if self.last_peak >= 0:
            indices = np.concatenate(([self.last_peak], indices))
            stamps = np.concatenate(([self.last_peak_ts], stamps))
        episodes = np.flatnonzero(np.diff(indices) > 1)
        if len(episodes):
            self.longest = max(self.longest, int((stamps[episodes + 1] - stamps[episodes]).max()))
        if len(at_peak):
            self.last_peak, self.last_peak_ts = int(indices[-1]), int(stamps[-1])
        self.peak = float(peaks[-1])
        self.count += len(chunk)
        self.last_ts = int(ts[-1])

    def result(self) -> tuple[float, int]:
        if not self.count:
            return 0.0, 0
        worst = max(0.0, 1.0 - self.lowest) if self.lowest is not None else 0.0
        longest = self.longest
        if self.last_peak < self.count - 1:
            longest = max(longest, self.last_ts - self.last_peak_ts)
        return worst, longest


def column_period_returns(
    times: Column, values: Column, starting_equity: float, size: int = CHUNK
) -> dict[str, float | None]:
    """:func:`period_returns` for a curve kept as :class:`Column` s (UTC)."""
    months: dict[tuple[int, int], float] = {}
    for ts, chunk in _pairs(times, values, size):
        month = ts.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)
        ends = np.append(np.flatnonzero(np.diff(month)), len(month) - 1)
        for number, value in zip(month[ends].tolist(), chunk[ends].tolist(), strict=True):
            months[1970 + number // 12, number % 12 + 1] = value
    return _period_returns(months, starting_equity)


def column_benchmark_comparison(
    values: Column, benchmark: Column, starting_equity: float, size: int = CHUNK
) -> dict[str, float | None]:
    """:func:`benchmark_comparison` for columns: the same numbers, the same ``math.fsum``
    sums over the same per-period returns, streamed from the columns."""
    if len(values) != len(benchmark):
        raise ValueError(f"{len(values)} equity points but {len(benchmark)} benchmark points")
    out: dict[str, float | None] = {
        "benchmark_return": None,
        "excess_return": None,
        "beta": None,
        "correlation": None,
    }
    if not len(benchmark) or benchmark[0] <= 0:
        return out
    held = benchmark[-1] / benchmark[0] - 1.0
    out["benchmark_return"] = held
    if len(values) and starting_equity > 0:
        out["excess_return"] = values[-1] / starting_equity - 1.0 - held

    def returns() -> Iterator[tuple[FloatArray, FloatArray]]:
        last: tuple[float, float] | None = None
        for start in range(0, len(values), size):
            strategy = values.read(start, start + size)
            bench = benchmark.read(start, start + size)
            if last is None:
                s_before, s_after = strategy[:-1], strategy[1:]
                b_before, b_after = bench[:-1], bench[1:]
            else:
                s_before, s_after = np.concatenate(([last[0]], strategy[:-1])), strategy
                b_before, b_after = np.concatenate(([last[1]], bench[:-1])), bench
            last = float(strategy[-1]), float(bench[-1])
            usable = (s_before > 0) & (b_before > 0)
            with np.errstate(all="ignore"):
                yield (
                    s_after[usable] / s_before[usable] - 1.0,
                    b_after[usable] / b_before[usable] - 1.0,
                )

    n = 0
    finite = True
    for s, b in returns():
        n += len(s)
        finite = finite and bool(np.isfinite(s).all() and np.isfinite(b).all())
    if n < 2 or not finite:
        return out
    mean_s = math.fsum(_floats(s for s, _ in returns())) / n
    mean_b = math.fsum(_floats(b for _, b in returns())) / n

    def products(which: str) -> Iterator[FloatArray]:
        for s, b in returns():
            ds, db = s - mean_s, b - mean_b
            yield ds * db if which == "sb" else ds * ds if which == "ss" else db * db

    cov = math.fsum(_floats(products("sb"))) / (n - 1)
    var_s = math.fsum(_floats(products("ss"))) / (n - 1)
    var_b = math.fsum(_floats(products("bb"))) / (n - 1)
    if var_b > _ZERO_STDEV**2:
        out["beta"] = cov / var_b
        if var_s > _ZERO_STDEV**2:
            out["correlation"] = cov / math.sqrt(var_s * var_b)
    return out


def column_downsample(
    times: Column, values: Column, max_points: int = 5000
) -> list[tuple[datetime, float]]:
    """:func:`downsample_columns` for :class:`Column` s: the same points, read a bucket
    at a time (timestamps as UTC datetimes)."""
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4, got {max_points}")
    if len(times) != len(values):
        raise ValueError(f"{len(times)} timestamps but {len(values)} values")
    total = len(values)
    if total <= max_points:
        stamps, numbers = times.read(0, total).tolist(), values.read(0, total).tolist()
        return [(from_micros(t), v) for t, v in zip(stamps, numbers, strict=True)]
    n = total - 2
    buckets = (max_points - 2) // 2
    out = [(from_micros(times[0]), float(values[0]))]
    for b in range(buckets):
        lo, hi = 1 + b * n // buckets, 1 + (b + 1) * n // buckets
        bucket = values.read(lo, hi)
        if np.isnan(bucket).any():  # as the whole-series function does for a NaN
            listed = bucket.tolist()
            lowest = min(range(len(listed)), key=listed.__getitem__)
            highest = max(range(len(listed)), key=listed.__getitem__)
        else:
            lowest, highest = int(bucket.argmin()), int(bucket.argmax())
        stamps = times.read(lo, hi)
        for i in sorted({lowest, highest}):
            out.append((from_micros(int(stamps[i])), float(bucket[i])))
    out.append((from_micros(times[-1]), float(values[-1])))
    return out
