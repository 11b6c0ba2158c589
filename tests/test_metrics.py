"""Performance metrics: hand-computed examples, edge cases, and properties."""

from __future__ import annotations

import itertools
import math
import statistics
from array import array
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion._metrics import (
    Column,
    TradeRecord,
    column_benchmark_comparison,
    column_downsample,
    column_metrics,
    column_period_returns,
    compute_metrics,
    downsample,
    downsample_columns,
    drawdown_series,
    from_micros,
    metrics_from_columns,
    periods_per_year,
    to_micros,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def daily(values: Sequence[float], start: datetime = T0) -> list[tuple[datetime, float]]:
    return [(start + timedelta(days=i), float(v)) for i, v in enumerate(values)]


def trade(pnl: str, symbol: str = "AAPL") -> TradeRecord:
    return TradeRecord(symbol=symbol, opened=T0, closed=T0 + timedelta(days=1), pnl=Decimal(pnl))


def metrics(
    values: Sequence[float],
    trades: Sequence[TradeRecord] = (),
    exposure_bars: int = 0,
    total_bars: int | None = None,
    start: float = 100.0,
) -> dict[str, float | int | None]:
    total = len(values) if total_bars is None else total_bars
    return compute_metrics(daily(values), trades, exposure_bars, total, start)


# --------------------------------------------------------------------------- hand-computed


def test_worked_example_return_drawdown_and_duration() -> None:
    """100 -> 110 -> 99 -> 121: return 21 %, a 10 % drawdown from 110 lasting two days."""
    m = metrics([100, 110, 99, 121])
    assert m["start_equity"] == 100.0
    assert m["end_equity"] == 121.0
    assert m["total_return"] == pytest.approx(0.21)
    assert m["max_drawdown"] == pytest.approx(0.1)
    assert m["max_drawdown_duration_days"] == pytest.approx(2.0)


def test_worked_example_sharpe_and_volatility() -> None:
    """Daily returns 0.1, -0.1, 0.2222: Sharpe = mean/sd*sqrt(252) ~ 7.2288, vol = sd*sqrt(252).

    mean = 0.0740741, sample sd = 0.1626681 (ddof 1), sqrt(252) = 15.8745.
    """
    m = metrics([100, 110, 99, 121])
    assert m["sharpe"] == pytest.approx(7.2288, rel=1e-4)
    assert m["volatility"] == pytest.approx(0.1626681 * math.sqrt(252), rel=1e-6)


def test_cagr_over_exactly_two_years() -> None:
    """100 -> 121 over two 365.25-day years is 10 % a year."""
    equity = [(T0, 100.0), (T0 + timedelta(days=2 * 365.25), 121.0)]
    m = compute_metrics(equity, [], 0, 2, 100.0)
    assert m["cagr"] == pytest.approx(0.10)
    assert m["total_return"] == pytest.approx(0.21)


def test_cagr_uses_starting_equity_like_total_return() -> None:
    """CAGR compounds the same ratio as total_return (end / starting_equity), over the span."""
    equity = [(T0, 95.0), (T0 + timedelta(days=365.25), 110.0)]
    m = compute_metrics(equity, [], 0, 2, 100.0)
    assert m["cagr"] == pytest.approx(0.10)
    assert m["cagr"] == pytest.approx(m["total_return"])


def test_cagr_none_for_short_span_wipeout_or_overflow() -> None:
    """CAGR is undefined under one day of data, at zero equity, or when it overflows a float."""
    intraday = [(T0, 100.0), (T0 + timedelta(hours=23), 101.0)]
    assert compute_metrics(intraday, [], 0, 2, 100.0)["cagr"] is None
    assert metrics([100, 50, 0])["cagr"] is None
    assert metrics([100, 1e9])["cagr"] is None  # x10^7 in one day, annualised: > 1e308
    assert metrics([100, 100])["cagr"] == pytest.approx(0.0)


def test_sharpe_sign_follows_the_drift() -> None:
    """A noisy rising series has a positive Sharpe, the mirrored falling one a negative Sharpe."""
    up = metrics([100, 102, 101, 104, 103, 106, 108])
    down = metrics([100, 98, 99, 96, 97, 94, 92])
    assert up["sharpe"] is not None and up["sharpe"] > 0
    assert down["sharpe"] is not None and down["sharpe"] < 0


def test_sharpe_none_with_fewer_than_two_returns() -> None:
    """No equity, one point, or two points (one return) leave Sharpe and volatility undefined."""
    for values in ([], [100], [100, 110]):
        m = metrics(values)
        assert m["sharpe"] is None, values
        assert m["volatility"] is None, values


def test_constant_equity() -> None:
    """Flat equity: no return, no drawdown, zero volatility, and Sharpe undefined (not inf/NaN)."""
    m = metrics([100] * 10)
    assert m["total_return"] == 0.0
    assert m["cagr"] == pytest.approx(0.0)
    assert m["max_drawdown"] == 0.0
    assert m["max_drawdown_duration_days"] == 0.0
    assert m["volatility"] == 0.0
    assert m["sharpe"] is None


def test_constant_growth_is_zero_variance_not_an_absurd_sharpe() -> None:
    """Exactly 1 % a day has float-noise variance only: Sharpe is None, volatility 0."""
    values = [100.0]
    for _ in range(20):
        values.append(values[-1] * 1.01)
    m = metrics(values)
    assert m["sharpe"] is None
    assert m["volatility"] == 0.0


def test_empty_equity_keeps_the_starting_cash() -> None:
    """A strategy that saw no bars ends where it started; nothing is NaN."""
    m = compute_metrics([], [], 0, 0, 1000.0)
    assert m["end_equity"] == 1000.0
    assert m["total_return"] == 0.0
    assert m["max_drawdown"] == 0.0
    assert m["exposure"] is None
    assert all(v is None or math.isfinite(v) for v in m.values())


def test_equity_hitting_zero() -> None:
    """A wiped-out account: drawdown 100 %, return -100 %, later 0 -> 0 periods are skipped."""
    m = metrics([100, 50, 0, 0, 0])
    assert m["max_drawdown"] == pytest.approx(1.0)
    assert m["total_return"] == pytest.approx(-1.0)
    assert m["max_drawdown_duration_days"] == pytest.approx(4.0)
    assert all(v is None or math.isfinite(v) for v in m.values())


def test_trades_and_win_rate() -> None:
    """Win rate counts strictly positive P&L (a break-even trade is not a win)."""
    m = metrics([100, 101], trades=[trade("10"), trade("-5"), trade("0"), trade("3.5")])
    assert m["trades"] == 4
    assert m["win_rate"] == pytest.approx(0.5)
    none = metrics([100, 101])
    assert none["trades"] == 0
    assert none["win_rate"] is None


def test_exposure() -> None:
    """Exposure is the fraction of bars with a position; undefined without bars."""
    assert metrics([100, 101], exposure_bars=30, total_bars=120)["exposure"] == pytest.approx(0.25)
    assert metrics([], exposure_bars=0, total_bars=0)["exposure"] is None


def test_drawdown_duration_counts_an_unrecovered_drawdown_to_the_end() -> None:
    """A drawdown still open at the last point lasts from its peak to that point."""
    m = metrics([100, 120, 110, 115, 125, 90, 95, 100])
    # 120 (day 1) recovered at 125 (day 4): 3 days; 125 (day 4) never recovered: 3 days to day 7
    assert m["max_drawdown_duration_days"] == pytest.approx(3.0)
    m = metrics([100, 120, 110, 115, 125, 90, 95, 100, 101, 102])
    assert m["max_drawdown_duration_days"] == pytest.approx(5.0)


def test_rising_equity_has_no_drawdown_duration() -> None:
    """New highs every bar are never under water, so the duration is 0."""
    assert metrics([100, 101, 102, 103])["max_drawdown_duration_days"] == 0.0


@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, -math.inf],
)
def test_non_finite_equity_is_rejected(bad: float) -> None:
    """NaN or infinite equity raises ValueError naming the point, instead of NaN metrics."""
    with pytest.raises(ValueError, match="point 1"):
        metrics([100, bad, 100])
    with pytest.raises(ValueError, match="finite"):
        drawdown_series(daily([100, bad]))


def test_bad_inputs_are_rejected() -> None:
    """Out-of-order timestamps, a non-positive start and impossible bar counts raise ValueError."""
    backwards = [(T0 + timedelta(days=1), 100.0), (T0, 101.0)]
    with pytest.raises(ValueError, match="earlier"):
        compute_metrics(backwards, [], 0, 2, 100.0)
    with pytest.raises(ValueError, match="starting_equity"):
        compute_metrics(daily([100]), [], 0, 1, 0.0)
    with pytest.raises(ValueError, match="starting_equity"):
        compute_metrics(daily([100]), [], 0, 1, math.nan)
    with pytest.raises(ValueError, match="exposure_bars"):
        compute_metrics(daily([100]), [], 2, 1, 100.0)
    with pytest.raises(ValueError, match="exposure_bars"):
        compute_metrics(daily([100]), [], -1, 1, 100.0)


def test_trade_record_validates() -> None:
    """A round trip cannot close before it opened, and its P&L must be a finite Decimal."""
    with pytest.raises(ValueError, match="before opened"):
        TradeRecord("AAPL", T0, T0 - timedelta(seconds=1), Decimal(1))
    with pytest.raises(ValueError, match="finite"):
        TradeRecord("AAPL", T0, T0, Decimal("NaN"))
    assert TradeRecord("AAPL", T0, T0, Decimal("-1.5")).pnl == Decimal("-1.5")


# --------------------------------------------------------------------------- periods per year


def test_periods_per_year_rule() -> None:
    """Median spacing: intraday -> 252 x 6.5 h / spacing; ~daily -> 252; weekly+ -> 365.25 d / m."""

    def every(step: timedelta, n: int = 10) -> list[datetime]:
        return [T0 + step * i for i in range(n)]

    assert periods_per_year(every(timedelta(minutes=1))) == pytest.approx(252 * 390)
    assert periods_per_year(every(timedelta(hours=1))) == pytest.approx(252 * 6.5)
    assert periods_per_year(every(timedelta(hours=12))) == pytest.approx(252)
    assert periods_per_year(every(timedelta(days=1))) == pytest.approx(252)
    assert periods_per_year(every(timedelta(weeks=1))) == pytest.approx(365.25 / 7)
    assert periods_per_year([T0]) is None
    assert periods_per_year([T0, T0, T0]) is None


def test_weekday_bars_count_as_daily() -> None:
    """Mon-Fri bars with weekend gaps have a median spacing of one day, so 252 periods a year."""
    days = [T0 + timedelta(days=i) for i in range(28) if (T0 + timedelta(days=i)).weekday() < 5]
    assert periods_per_year(days) == pytest.approx(252)


# --------------------------------------------------------------------------- drawdown series


def test_drawdown_series_values() -> None:
    """Drawdown is each point's fraction below the running peak (0 at new highs)."""
    series = drawdown_series(daily([100, 110, 99, 121, 60.5]))
    assert [ts for ts, _ in series] == [ts for ts, _ in daily([0] * 5)]
    assert [dd for _, dd in series] == pytest.approx([0.0, 0.0, -0.1, 0.0, -0.5])


def test_drawdown_series_edge_cases() -> None:
    """Empty in, empty out; a series starting at zero has no defined peak, so drawdown 0."""
    assert drawdown_series([]) == []
    assert [dd for _, dd in drawdown_series(daily([0, 0, 10, 5]))] == pytest.approx(
        [0.0, 0.0, 0.0, -0.5]
    )


# --------------------------------------------------------------------------- downsample


def test_downsample_short_input_unchanged() -> None:
    """A series within the limit comes back equal (as a new list)."""
    points = daily([1, 2, 3])
    out = downsample(points, max_points=5)
    assert out == points
    assert out is not points


def test_downsample_keeps_first_last_min_max_and_bounds_length() -> None:
    """A long series keeps its endpoints, its deepest trough and highest peak, within the limit."""
    values = [100.0 + math.sin(i / 50) * 10 for i in range(20_000)]
    values[7_777] = 1.0  # a one-bar crash
    values[12_345] = 500.0  # a one-bar spike
    points = daily(values)
    out = downsample(points, max_points=1000)
    assert len(out) <= 1000
    assert out[0] == points[0]
    assert out[-1] == points[-1]
    assert points[7_777] in out
    assert points[12_345] in out
    assert [ts for ts, _ in out] == sorted(ts for ts, _ in out)


def test_downsample_default_limit() -> None:
    """The default keeps at most 5000 points."""
    assert len(downsample(daily([float(i % 97) for i in range(12_000)]))) <= 5000


def test_downsample_rejects_tiny_limit() -> None:
    """Fewer than 4 points cannot hold first, last, min and max: ValueError."""
    with pytest.raises(ValueError, match="at least 4"):
        downsample(daily([1, 2, 3, 4, 5]), max_points=3)


# --------------------------------------------------------------------------- properties

positive_equity = st.lists(
    st.floats(min_value=1e-6, max_value=1e12, allow_nan=False, allow_infinity=False),
    min_size=0,
    max_size=200,
)


@given(positive_equity)
def test_max_drawdown_is_a_fraction_for_positive_equity(values: list[float]) -> None:
    """For strictly positive equity the maximum drawdown is within [0, 1], never NaN."""
    m = metrics(values)
    dd = m["max_drawdown"]
    assert dd is not None and 0.0 <= dd <= 1.0
    assert all(v is None or math.isfinite(v) for k, v in m.items() if k != "cagr")


@given(positive_equity)
def test_drawdown_series_never_positive(values: list[float]) -> None:
    """Every drawdown point is at or below zero and the deepest one equals max_drawdown."""
    series = drawdown_series(daily(values))
    assert all(dd <= 0.0 for _, dd in series)
    expected = max((-dd for _, dd in series), default=0.0)
    assert metrics(values)["max_drawdown"] == pytest.approx(expected)


@settings(deadline=None)
@given(
    st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=400,
    ),
    st.integers(min_value=4, max_value=60),
)
def test_downsample_is_a_time_ordered_subsequence_with_extremes(
    values: list[float], max_points: int
) -> None:
    """Output is a subsequence of the input, in time order, within the limit, with min and max."""
    points = daily(values)
    out = downsample(points, max_points=max_points)
    if len(points) <= max_points:
        assert out == points
    else:
        assert len(out) <= max_points
    # subsequence: every output point is found in the input after the previous one
    index = 0
    for point in out:
        while points[index] != point:
            index += 1
        index += 1
    assert out[0] == points[0] and out[-1] == points[-1]
    kept = [v for _, v in out]
    assert min(kept) == min(values)
    assert max(kept) == max(values)


def test_sharpe_matches_a_direct_computation() -> None:
    """Sharpe equals mean/stdev*sqrt(252) of the simple daily returns, computed independently."""
    values = [100, 103, 101, 106, 104, 108, 111, 107, 112]
    returns = [b / a - 1 for a, b in itertools.pairwise(values)]
    expected = statistics.fmean(returns) / statistics.stdev(returns) * math.sqrt(252)
    assert metrics(values)["sharpe"] == pytest.approx(expected)


def test_integer_and_decimal_equity_match_float_equity() -> None:
    """Equity given as int or Decimal gives the same metrics as floats; a bool is refused."""
    values = [100, 110, 99, 121]
    as_float = metrics(values)
    as_int = compute_metrics([(ts, int(v)) for ts, v in daily(values)], [], 0, 4, 100)
    as_decimal = compute_metrics(
        [(ts, Decimal(str(v))) for ts, v in daily(values)],  # type: ignore[misc]
        [],
        0,
        4,
        100.0,
    )
    assert as_int == pytest.approx(as_float)
    assert as_decimal == pytest.approx(as_float)
    with pytest.raises(ValueError, match="must be a number"):
        compute_metrics([(T0, True)], [], 0, 1, 100.0)


# --------------------------------------------------------------------------- naive reference
#
# Written from the module docstring and compute_metrics' docstring with plain loops, so the
# optimised code in bastion._metrics is checked against the definitions, not against itself.

REF_SECONDS_PER_DAY = 86_400
REF_YEAR_SECONDS = 365.25 * REF_SECONDS_PER_DAY
# "zero variance": the float-noise tolerance pinned by
# test_constant_growth_is_zero_variance_not_an_absurd_sharpe (Sharpe None, volatility 0).
REF_ZERO_STDEV = 1e-12
# compute_metrics gives up on CAGR at exp(700) ~ 1.01e304 although a float reaches ~1.8e308;
# above this the main property accepts None (test_cagr_defined_until_it_would_overflow pins it).
REF_CAGR_MARGIN = 1e303


def ref_periods_per_year(timestamps: Sequence[datetime]) -> float | None:
    gaps = []
    for i in range(1, len(timestamps)):
        seconds = (timestamps[i] - timestamps[i - 1]).total_seconds()
        if seconds > 0:
            gaps.append(seconds)
    if not gaps:
        return None
    m = statistics.median(gaps)
    if m < 20 * 3600:
        return 252 * max(1.0, 6.5 * 3600 / m)
    if m < 3.5 * REF_SECONDS_PER_DAY:
        return 252.0
    return REF_YEAR_SECONDS / m


def ref_returns(values: Sequence[float]) -> list[float]:
    out = []
    for i in range(1, len(values)):
        if values[i - 1] > 0:
            out.append(values[i] / values[i - 1] - 1.0)
    return out


def ref_max_drawdown(values: Sequence[float]) -> float:
    worst = 0.0
    peak = -math.inf
    for value in values:
        if value > peak:
            peak = value
        if peak > 0:
            worst = max(worst, -(value / peak - 1.0))
    return worst


def ref_max_drawdown_duration(timestamps: Sequence[datetime], values: Sequence[float]) -> timedelta:
    longest = timedelta(0)
    if not values:
        return longest
    peak, peak_ts = values[0], timestamps[0]
    under_water = False
    for ts, value in zip(timestamps[1:], values[1:], strict=True):
        if value >= peak:
            if under_water:
                longest = max(longest, ts - peak_ts)
            under_water = False
            peak, peak_ts = value, ts
        else:
            under_water = True
    if under_water:
        longest = max(longest, timestamps[-1] - peak_ts)
    return longest


def ref_metrics(
    timestamps: Sequence[datetime],
    values: Sequence[float],
    trades: Sequence[TradeRecord],
    exposure_bars: int,
    total_bars: int,
    start: float,
) -> dict[str, Any]:
    end = values[-1] if values else start

    cagr = None
    if len(values) >= 2 and end > 0:
        span = (timestamps[-1] - timestamps[0]).total_seconds()
        if span >= REF_SECONDS_PER_DAY:
            years = span / REF_YEAR_SECONDS
            try:
                growth = (end / start) ** (1 / years)
            except OverflowError:
                growth = math.inf
            if math.isfinite(growth):
                cagr = growth - 1

    sharpe = volatility = None
    returns = ref_returns(values)
    per_year = ref_periods_per_year(timestamps)
    if len(returns) >= 2 and per_year is not None:
        stdev = statistics.stdev(returns)
        if stdev <= REF_ZERO_STDEV:
            volatility = 0.0
        else:
            volatility = stdev * math.sqrt(per_year)
            sharpe = statistics.fmean(returns) / stdev * math.sqrt(per_year)

    wins = 0
    for t in trades:
        if t.pnl > 0:
            wins += 1
    duration = ref_max_drawdown_duration(timestamps, values)
    return {
        "start_equity": start,
        "end_equity": end,
        "total_return": end / start - 1.0,
        "cagr": cagr,
        "sharpe": sharpe,
        "volatility": volatility,
        "max_drawdown": ref_max_drawdown(values),
        "max_drawdown_duration_days": duration.total_seconds() / REF_SECONDS_PER_DAY,
        "trades": len(trades),
        "win_rate": wins / len(trades) if trades else None,
        "exposure": exposure_bars / total_bars if total_bars else None,
    }


def ref_downsample(
    points: Sequence[tuple[datetime, float]], max_points: int
) -> list[tuple[datetime, float]]:
    if len(points) <= max_points:
        return list(points)
    interior = points[1:-1]
    n = len(interior)
    buckets = (max_points - 2) // 2
    out = [points[0]]
    for b in range(buckets):
        first, stop = b * n // buckets, (b + 1) * n // buckets
        lowest = highest = first
        for i in range(first + 1, stop):
            if interior[i][1] < interior[lowest][1]:
                lowest = i
            if interior[i][1] > interior[highest][1]:
                highest = i
        out.append(interior[min(lowest, highest)])
        if lowest != highest:
            out.append(interior[max(lowest, highest)])
    out.append(points[-1])
    return out


def ref_first_bad_point(timestamps: Sequence[Any], values: Sequence[Any]) -> int | None:
    previous = None
    for i, (ts, value) in enumerate(zip(timestamps, values, strict=True)):
        if not isinstance(ts, datetime):
            return i
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            return i
        if not math.isfinite(float(value)):
            return i
        if previous is not None and ts < previous:
            return i
        previous = ts
    return None


# --------------------------------------------------------------------------- series strategies

ZONES = [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]
SPACINGS = [
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(hours=1),
    timedelta(hours=6, minutes=30),
    timedelta(hours=20) - timedelta(microseconds=1),
    timedelta(hours=20),
    timedelta(days=1),
    timedelta(days=3),
    timedelta(days=3.5),
    timedelta(weeks=1),
    timedelta(days=30),
]


@st.composite
def timestamp_columns(draw: st.DrawFn, n: int) -> list[datetime]:
    """``n`` tz-aware, non-decreasing timestamps: mostly one spacing, some odd gaps and ties."""
    strict = draw(st.booleans())
    spacing = draw(st.sampled_from(SPACINGS))
    smallest = timedelta(microseconds=1) if strict else timedelta(0)
    gap = st.one_of(
        st.just(spacing),
        st.sampled_from(SPACINGS),
        st.timedeltas(min_value=smallest, max_value=timedelta(days=40)),
    )
    if not strict:
        gap = st.one_of(gap, st.just(timedelta(0)))
    start = draw(
        st.datetimes(
            min_value=datetime(1990, 1, 1),
            max_value=datetime(2040, 1, 1),
            timezones=st.sampled_from(ZONES),
        )
    )
    out = [start]
    for step in draw(st.lists(gap, min_size=max(n - 1, 0), max_size=max(n - 1, 0))):
        out.append(out[-1] + step)
    if draw(st.booleans()):  # the same instants, written in a mix of time zones
        zones = draw(st.lists(st.sampled_from(ZONES), min_size=n, max_size=n))
        out = [ts.astimezone(zone) for ts, zone in zip(out, zones, strict=False)]
    return out[:n]


SANE_POSITIVE = st.floats(min_value=1e-6, max_value=1e9)
# Magnitudes at least 1e-6 (or exactly zero) keep every return within float range.
SANE_SIGNED = st.one_of(
    st.sampled_from([0.0, -0.0]),
    st.floats(min_value=1e-6, max_value=1e6),
    st.floats(min_value=-1e6, max_value=-1e-6),
)


@st.composite
def equity_values(draw: st.DrawFn, max_size: int = 300) -> list[float]:
    """Equity in several shapes: random walks, arbitrary positives, signed, flat and huge."""
    kind = draw(st.sampled_from(["walk", "positive", "signed", "runs", "wipeout", "huge"]))
    if kind == "walk":
        steps = st.one_of(st.just(0.0), st.floats(min_value=-0.2, max_value=0.2))
        value = draw(st.floats(min_value=1.0, max_value=1e6))
        out = [value]
        for step in draw(st.lists(steps, max_size=max_size - 1)):
            value *= 1.0 + step
            out.append(value)
        return out
    if kind == "positive":
        return draw(st.lists(SANE_POSITIVE, max_size=max_size))
    if kind == "signed":
        return draw(st.lists(SANE_SIGNED, max_size=max_size))
    if kind == "runs":  # repeated values and flat stretches
        pool = draw(st.lists(st.one_of(SANE_POSITIVE, SANE_SIGNED), min_size=1, max_size=4))
        runs = draw(
            st.lists(
                st.tuples(st.sampled_from(pool), st.integers(min_value=1, max_value=30)),
                max_size=20,
            )
        )
        return [value for value, length in runs for _ in range(length)][:max_size]
    if kind == "wipeout":  # falls to zero (or below) and may stay there
        head = draw(st.lists(SANE_POSITIVE, min_size=1, max_size=max_size // 2))
        tail = draw(st.lists(st.sampled_from([0.0, -1.0, 5.0]), max_size=max_size // 2))
        return [*head, 0.0, *tail]
    # huge: the C-speed validity check's sum overflows to inf; returns stay in range
    return draw(st.lists(st.floats(min_value=1e300, max_value=1e308), max_size=max_size))


@st.composite
def equity_columns(draw: st.DrawFn) -> tuple[list[datetime], list[float]]:
    values = draw(equity_values())
    return draw(timestamp_columns(len(values))), values


trade_records = st.lists(
    st.builds(
        lambda pnl: TradeRecord("AAPL", T0, T0 + timedelta(days=1), pnl),
        st.decimals(min_value=-1000, max_value=1000, allow_nan=False, places=2),
    ),
    max_size=8,
)


@st.composite
def bar_counts(draw: st.DrawFn) -> tuple[int, int]:
    total = draw(st.integers(min_value=0, max_value=500))
    return draw(st.integers(min_value=0, max_value=total)), total


# --------------------------------------------------------------------------- against the reference


def assert_matches_reference(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for key in expected.keys() - {"cagr", "sharpe", "volatility"}:
        assert actual[key] == expected[key], key
    for key in ("sharpe", "volatility"):
        if expected[key] is None:
            assert actual[key] is None, key
        else:
            assert actual[key] == pytest.approx(expected[key], rel=1e-9), key
    # pow vs expm1(log): same number by a different route, hence the small absolute slack.
    cagr = expected["cagr"]
    if cagr is None:
        assert actual["cagr"] is None
    elif cagr > REF_CAGR_MARGIN:
        assert actual["cagr"] is None or actual["cagr"] == pytest.approx(cagr, rel=1e-9)
    else:
        assert actual["cagr"] == pytest.approx(cagr, rel=1e-9, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    equity_columns(),
    trade_records,
    bar_counts(),
    st.one_of(st.none(), st.floats(min_value=1.0, max_value=1e6)),
)
def test_metrics_match_the_reference_on_points_and_columns(
    columns: tuple[list[datetime], list[float]],
    trades: list[TradeRecord],
    bars: tuple[int, int],
    start: float | None,
) -> None:
    """compute_metrics and metrics_from_columns agree exactly and match a plain-loop reference."""
    timestamps, values = columns
    if start is None:  # the engine's case: the series opens at the starting equity
        start = values[0] if values and 1e-6 <= values[0] <= 1e9 else 100.0
    exposure_bars, total_bars = bars
    from_points = compute_metrics(
        list(zip(timestamps, values, strict=True)), trades, exposure_bars, total_bars, start
    )
    from_columns = metrics_from_columns(
        timestamps, values, trades, exposure_bars, total_bars, start
    )
    assert from_columns == from_points
    expected = ref_metrics(timestamps, values, trades, exposure_bars, total_bars, start)
    assert_matches_reference(from_points, expected)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.integers(min_value=0, max_value=20), st.integers(min_value=0, max_value=300)
    ).flatmap(timestamp_columns)
)
def test_periods_per_year_matches_the_reference(timestamps: list[datetime]) -> None:
    """periods_per_year is the documented rule applied to statistics.median of positive gaps."""
    assert periods_per_year(timestamps) == ref_periods_per_year(timestamps)


downsample_values = st.one_of(
    st.lists(st.floats(min_value=-1e6, max_value=1e6), max_size=300),
    st.lists(st.sampled_from([1.0, 2.0, 2.0, -3.0, 0.0]), max_size=300),
)


@settings(max_examples=200, deadline=None)
@given(
    downsample_values.flatmap(lambda vs: st.tuples(timestamp_columns(len(vs)), st.just(vs))),
    st.integers(min_value=4, max_value=50),
)
def test_downsample_columns_matches_downsample_and_the_reference(
    columns: tuple[list[datetime], list[float]], max_points: int
) -> None:
    """downsample_columns == downsample of the zipped points == the documented bucket rule."""
    timestamps, values = columns
    points = list(zip(timestamps, values, strict=True))
    out = downsample_columns(timestamps, values, max_points)
    assert out == downsample(points, max_points)
    assert out == ref_downsample(points, max_points)
    assert out == downsample_columns(timestamps, array("d", values), max_points)
    if values:
        kept = [value for _, value in out]
        assert min(kept) == min(values)
        assert max(kept) == max(values)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(min_value=-1e6, max_value=1e6), st.just(math.nan)),
        min_size=1,
        max_size=300,
    ),
    st.integers(min_value=4, max_value=50),
    st.booleans(),
)
def test_downsample_columns_tolerates_nan(
    values: list[float], max_points: int, as_array: bool
) -> None:
    """NaN values (unknown stored equity) do not make downsampling raise; the shape still holds."""
    timestamps = [T0 + timedelta(minutes=i) for i in range(len(values))]
    column: Sequence[float] = array("d", values) if as_array else values
    out = downsample_columns(timestamps, column, max_points)
    if len(values) <= max_points:
        assert [ts for ts, _ in out] == timestamps
    else:
        assert len(out) <= max_points
    kept = [ts for ts, _ in out]
    assert kept[0] == timestamps[0] and kept[-1] == timestamps[-1]
    assert kept == sorted(set(kept))  # a subsequence: strictly increasing timestamps


BAD_VALUES: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    "100",
    None,
    True,
    [1.0],
    Decimal("NaN"),
    Decimal("-Infinity"),
]


@st.composite
def corrupted_columns(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    """A valid series with one to three bad values, bad timestamps or out-of-order points."""
    values: list[Any] = draw(st.lists(SANE_POSITIVE, min_size=1, max_size=50))
    timestamps: list[Any] = draw(timestamp_columns(len(values)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        i = draw(st.integers(min_value=0, max_value=len(values) - 1))
        kind = draw(st.sampled_from(["value", "timestamp", "order"]))
        if kind == "value":
            values[i] = draw(st.sampled_from(BAD_VALUES))
        elif kind == "timestamp":
            timestamps[i] = draw(st.sampled_from([date(2024, 1, 1), "2024-01-01", None, 0]))
        elif i > 0 and isinstance(timestamps[i - 1], datetime):
            step = draw(st.sampled_from([timedelta(microseconds=1), timedelta(days=1)]))
            timestamps[i] = timestamps[i - 1] - step
        else:
            values[i] = math.nan
    return timestamps, values


@settings(max_examples=150, deadline=None)
@given(corrupted_columns())
def test_metrics_from_columns_rejects_bad_input_like_compute_metrics(
    columns: tuple[list[Any], list[Any]],
) -> None:
    """Bad values, non-datetimes and out-of-order points give compute_metrics' exact ValueError."""
    timestamps, values = columns
    first_bad = ref_first_bad_point(timestamps, values)
    assert first_bad is not None
    with pytest.raises(ValueError) as from_points:
        compute_metrics(list(zip(timestamps, values, strict=True)), [], 0, 0, 100.0)
    with pytest.raises(ValueError) as from_columns:
        metrics_from_columns(timestamps, values, [], 0, 0, 100.0)
    assert str(from_columns.value) == str(from_points.value)
    if not isinstance(values[first_bad], Decimal):  # float(Decimal("sNaN")) words its own error
        assert str(from_points.value).startswith(f"equity point {first_bad}")


@settings(max_examples=50, deadline=None)
@given(
    equity_columns(),
    st.integers(min_value=1, max_value=3),
    st.booleans(),
)
def test_metrics_from_columns_rejects_length_mismatch(
    columns: tuple[list[datetime], list[float]], extra: int, more_values: bool
) -> None:
    """Columns of different lengths are refused, naming both lengths."""
    timestamps, values = columns
    if more_values:
        values = values + [100.0] * extra
    else:
        timestamps = timestamps + [T0] * extra
    with pytest.raises(ValueError) as error:
        metrics_from_columns(timestamps, values, [], 0, 0, 100.0)
    assert str(error.value) == f"{len(timestamps)} timestamps but {len(values)} values"


# --------------------------------------------------------------------------- known discrepancies


def test_cagr_defined_until_it_would_overflow() -> None:
    """CAGR is None only when the annualised figure would overflow a float (docstring)."""
    end = 100.0 * math.exp(701 / 365.25)  # x ~6.8 in one day: CAGR ~2.8e304, a finite float
    m = compute_metrics([(T0, 100.0), (T0 + timedelta(days=1), end)], [], 0, 2, 100.0)
    assert m["cagr"] == pytest.approx((end / 100.0) ** 365.25 - 1, rel=1e-9)


def test_cagr_of_a_near_total_loss_is_minus_one() -> None:
    """A positive but tiny end equity is a near-total loss: CAGR -1, not an exception."""
    m = compute_metrics([(T0, 100.0), (T0 + timedelta(days=1), 5e-324)], [], 0, 2, 100.0)
    assert m["cagr"] == pytest.approx(-1.0)


def test_returns_beyond_float_range_do_not_raise() -> None:
    """Finite, ordered equity is valid input: compute_metrics does not raise ValueError for it."""
    m = compute_metrics(daily([1e-300, 1e10, 1e-300, -1e10]), [], 0, 4, 100.0)
    assert m["sharpe"] is None and m["volatility"] is None


def test_a_squared_deviation_beyond_float_range_is_quiet() -> None:
    """Returns whose sum is finite but whose squared deviation overflows give an infinite
    variance quietly, as plain Python floats do (no numpy RuntimeWarning escapes)."""
    m = metrics([1.0, 1e-150, 1e5, 1e5])
    assert m["volatility"] is not None and math.isinf(m["volatility"])


# --------------------------------------------------------------------------- periods, benchmark


def test_period_returns_by_hand() -> None:
    """Month and year returns chain from the starting equity: Jan 100 -> 110 (+10%),
    Feb 110 -> 99 (-10%), the year 100 -> 99 (-1%); a month without points is absent."""
    from bastion._metrics import period_returns

    ts = [datetime(2024, 1, 5, tzinfo=UTC), datetime(2024, 1, 31, 23, tzinfo=UTC),
          datetime(2024, 2, 10, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC)]  # fmt: skip
    got = period_returns(ts, [105.0, 110.0, 99.0, 99.0], 100.0)
    assert got == pytest.approx({"2024-01": 0.10, "2024-02": -0.10, "2024-04": 0.0, "2024": -0.01})
    assert period_returns([], [], 100.0) == {}
    wiped = period_returns(ts[:3], [0.0, 0.0, 5.0], 100.0)
    assert wiped["2024-01"] == -1.0 and wiped["2024-02"] is None


def test_benchmark_comparison_by_hand() -> None:
    """Strategy returns +2%, -1%, +3% against a benchmark's +1%, -1%, +2%: excess is the
    difference of total returns; beta and correlation as computed by hand."""
    from bastion._metrics import benchmark_comparison

    strategy = [100.0, 102.0, 100.98, 104.0094]
    bench = [50.0, 50.5, 49.995, 50.9949]
    got = benchmark_comparison(strategy, bench, 100.0)
    s, b = [0.02, -0.01, 0.03], [0.01, -0.01, 0.02]
    ms, mb = sum(s) / 3, sum(b) / 3
    cov = sum((x - ms) * (y - mb) for x, y in zip(s, b, strict=True)) / 2
    vs = sum((x - ms) ** 2 for x in s) / 2
    vb = sum((y - mb) ** 2 for y in b) / 2
    assert got["benchmark_return"] == pytest.approx(0.019898)
    assert got["excess_return"] == pytest.approx(0.040094 - 0.019898)
    assert got["beta"] == pytest.approx(cov / vb)
    assert got["correlation"] == pytest.approx(cov / math.sqrt(vs * vb))
    flat = benchmark_comparison(strategy, [50.0] * 4, 100.0)
    assert flat["beta"] is None and flat["correlation"] is None
    assert flat["benchmark_return"] == 0.0
    with pytest.raises(ValueError, match="4 equity points but 3 benchmark points"):
        benchmark_comparison(strategy, bench[:3], 100.0)


def test_a_new_high_by_a_hair_ends_the_drawdown_and_starts_the_next() -> None:
    """100, 110, 105, 110 (the peak regained exactly: recovered after 2 days),
    110.0000001 (a new high by a hair), 99, 99: the deepest fall is from the new high,
    and its drawdown runs to the end (2 days, never regained)."""
    m = metrics([100, 110, 105, 110, 110.0000001, 99, 99])
    assert m["max_drawdown"] == pytest.approx((110.0000001 - 99) / 110.0000001, rel=1e-12)
    assert m["max_drawdown_duration_days"] == pytest.approx(2.0)
    m = metrics([100, 110, 105, 109.9999999, 110])
    assert m["max_drawdown_duration_days"] == pytest.approx(3.0)  # a hair short is not back


@pytest.mark.parametrize(
    ("step", "per_year"),
    [
        (timedelta(minutes=1), 252 * 390),
        (timedelta(hours=1), 252 * 6.5),
        (timedelta(days=1), 252),
        (timedelta(days=7), 365.25 / 7),
    ],
)
def test_sharpe_and_volatility_are_annualised_by_the_bar_interval(
    step: timedelta, per_year: float
) -> None:
    """The same returns give a Sharpe of mean / sd * sqrt(periods per year) with the
    periods of their bar interval: minute bars 98,280, hourly 1,638, daily 252,
    weekly 52.18."""
    values = [100.0, 101.0, 100.5, 102.0, 101.0]
    points = [(T0 + step * i, v) for i, v in enumerate(values)]
    m = compute_metrics(points, (), 0, len(values), 100.0)
    returns = [values[i] / values[i - 1] - 1 for i in range(1, len(values))]
    mean = sum(returns) / len(returns)
    sd = math.sqrt(sum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
    assert m["sharpe"] == pytest.approx(mean / sd * math.sqrt(per_year), rel=1e-9)
    assert m["volatility"] == pytest.approx(sd * math.sqrt(per_year), rel=1e-9)


def test_exposure_win_rate_and_cagr_by_hand() -> None:
    """Held on 3 of 8 points: exposure 0.375; trades +5, -2, 0, +1: win rate 0.5 (a
    zero P&L is not a win); 100 -> 150 over 7 days: CAGR 1.5 ** (365.25 / 7) - 1."""
    trades = [trade("5"), trade("-2"), trade("0"), trade("1")]
    m = metrics([100, 101, 102, 103, 104, 105, 120, 150], trades, exposure_bars=3)
    assert m["exposure"] == 0.375 and m["win_rate"] == 0.5 and m["trades"] == 4
    assert m["cagr"] == pytest.approx(1.5 ** (365.25 / 7) - 1, rel=1e-9)


def test_drawdowns_before_equity_is_ever_positive_are_zero() -> None:
    """While the running peak is not above zero there is nothing to fall from: the
    drawdown is 0, and it is measured from the first positive peak on."""
    points = daily([-5, -10, 0, 10, 5])
    assert [value for _, value in drawdown_series(points)] == [0.0, 0.0, 0.0, 0.0, -0.5]


def test_a_boolean_starting_equity_is_refused() -> None:
    """True is an int to Python, not an amount of money."""
    with pytest.raises(ValueError, match="starting_equity must be a number"):
        compute_metrics(daily([100, 101]), (), 0, 2, True)


def test_drawdowns_of_a_small_account_and_of_one_that_starts_under_water() -> None:
    """An account worth less than 1 still has drawdowns (0.5 -> 0.25 is -50 %); a series
    that starts at or below zero is measured from its first positive peak."""
    assert [v for _, v in drawdown_series(daily([0.5, 0.25]))] == [0.0, -0.5]
    m = compute_metrics(daily([-5, -10, 0, 10, 5]), (), 0, 5, 100.0)
    assert m["max_drawdown"] == 0.5


def test_a_negative_starting_equity_is_refused() -> None:
    """Returns need a positive start."""
    with pytest.raises(ValueError, match="starting_equity must be finite and positive"):
        compute_metrics(daily([100, 101]), (), 0, 2, -5.0)


# --------------------------------------------------------------------------- columns (long runs)


def as_columns(
    timestamps: Sequence[datetime], values: Sequence[float], spill_every: int
) -> tuple[Column, Column]:
    """The series as the engine keeps it: epoch microseconds and floats, spilled to the
    temporary file every ``spill_every`` points (0: never), the rest in the buffer."""
    times, column = Column("q"), Column("d")
    for i, (ts, value) in enumerate(zip(timestamps, values, strict=True)):
        times.buffer.append(to_micros(ts))
        column.buffer.append(value)
        if spill_every and (i + 1) % spill_every == 0:
            times.spill()
            column.spill()
    return times, column


@settings(max_examples=300, deadline=None)
@given(
    equity_columns(),
    st.lists(st.decimals(min_value=-10, max_value=10, allow_nan=False, places=1), max_size=8),
    bar_counts(),
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=4, max_value=60),
)
def test_column_functions_give_the_whole_list_numbers_exactly(
    columns: tuple[list[datetime], list[float]],
    pnls: list[Decimal],
    bars: tuple[int, int],
    spill_every: int,
    chunk: int,
    max_points: int,
) -> None:
    """Metrics, period returns, the benchmark comparison and the down-sampled curve from
    spilled columns read in chunks equal the whole-list functions' to the last bit (==,
    not approx), whatever the chunk size and wherever the spills fall."""
    timestamps, values = columns
    timestamps = [ts.astimezone(UTC) for ts in timestamps]  # the engine's bars are UTC
    start = values[0] if values and 1e-6 <= values[0] <= 1e9 else 100.0
    trades = [TradeRecord("AAPL", T0, T0 + timedelta(days=1), pnl) for pnl in pnls]
    times, column = as_columns(timestamps, values, spill_every)
    bench_times, bench_column = as_columns(timestamps, list(reversed(values)), spill_every)
    try:
        check_columns(
            timestamps, values, trades, bars, start, chunk, max_points, times, column, bench_column
        )
    finally:
        for each in (times, column, bench_times, bench_column):
            each.close()


def check_columns(
    timestamps: list[datetime],
    values: list[float],
    trades: list[TradeRecord],
    bars: tuple[int, int],
    start: float,
    chunk: int,
    max_points: int,
    times: Column,
    column: Column,
    bench_column: Column,
) -> None:
    from bastion._metrics import benchmark_comparison, period_returns

    exposure_bars, total_bars = bars
    expected = metrics_from_columns(timestamps, values, trades, exposure_bars, total_bars, start)
    wins = sum(1 for t in trades if t.pnl > 0)
    got = column_metrics(times, column, len(trades), wins, exposure_bars, total_bars, start, chunk)
    assert list(got.items()) == list(expected.items())
    assert column_period_returns(times, column, start, chunk) == period_returns(
        timestamps, values, start
    )
    bench = list(reversed(values))
    assert column_benchmark_comparison(column, bench_column, start, chunk) == (
        benchmark_comparison(values, bench, start)
    )
    assert column_downsample(times, column, max_points) == downsample_columns(
        timestamps, values, max_points
    )


def test_column_metrics_refuse_what_metrics_from_columns_refuses() -> None:
    """Non-finite equity and times out of order raise the same errors from columns."""
    stamps = [T0 + timedelta(days=i) for i in range(5)]
    for spill_every in (0, 2):
        times, column = as_columns(stamps, [1.0, 2.0, math.inf, 3.0, 4.0], spill_every)
        with pytest.raises(ValueError, match=r"equity point 2 .*must be finite"):
            column_metrics(times, column, 0, 0, 0, 5, 1.0, 2)
        times.close(), column.close()
        backwards = [*stamps[:3], stamps[0], stamps[4]]
        times, column = as_columns(backwards, [1.0] * 5, spill_every)
        with pytest.raises(ValueError, match=r"equity point 3 .* is earlier"):
            column_metrics(times, column, 0, 0, 0, 5, 1.0, 2)
        times.close(), column.close()
    times, column = as_columns(stamps, [1.0] * 5, 0)
    with pytest.raises(ValueError, match="wins"):
        column_metrics(times, column, 1, 2, 0, 5, 1.0)


def test_a_column_reads_back_across_its_spills() -> None:
    column = Column("d")
    column.extend([0.5, 1.5])
    column.spill()
    column.extend([2.5, 3.5, 4.5])
    column.spill()
    column.extend([5.5])
    assert len(column) == 6
    assert column.read(1, 6).tolist() == [1.5, 2.5, 3.5, 4.5, 5.5]
    assert column[0] == 0.5 and column[-1] == 5.5
    assert [c.tolist() for c in column.chunks(4)] == [[0.5, 1.5, 2.5, 3.5], [4.5, 5.5]]
    assert to_micros(from_micros(-1)) == -1 and from_micros(0) == datetime(1970, 1, 1, tzinfo=UTC)
    column.close()
    assert len(column) == 0
