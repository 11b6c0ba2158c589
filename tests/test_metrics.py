"""Performance metrics: hand-computed examples, edge cases, and properties."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion._metrics import (
    TradeRecord,
    compute_metrics,
    downsample,
    drawdown_series,
    periods_per_year,
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
