"""Metrics: hand-computed cases for each number, and properties over any equity curve."""

from __future__ import annotations

import itertools
import math
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

T0 = datetime(2022, 1, 3, 21, tzinfo=UTC)


def daily(values: list[float], step: timedelta = timedelta(days=1)) -> list[tuple[datetime, float]]:
    return [(T0 + i * step, v) for i, v in enumerate(values)]


def test_total_return_and_drawdown_by_hand() -> None:
    """100 -> 110 -> 99 -> 121: return 21 %, max drawdown 10 % (110 -> 99)."""
    m = compute_metrics(daily([100.0, 110.0, 99.0, 121.0]), [], 2, 4, 100.0)
    assert m["total_return"] == pytest.approx(0.21)
    assert m["max_drawdown"] == pytest.approx(0.1)
    assert m["max_drawdown_duration_days"] == pytest.approx(2.0)
    assert m["exposure"] == pytest.approx(0.5)
    assert m["end_equity"] == 121.0


def test_cagr_over_two_years() -> None:
    """Doubling over exactly two 365.25-day years is sqrt(2) - 1 a year."""
    span = timedelta(days=2 * 365.25)
    m = compute_metrics([(T0, 100.0), (T0 + span, 200.0)], [], 0, 2, 100.0)
    assert m["cagr"] == pytest.approx(math.sqrt(2) - 1)


def test_cagr_undefined_for_short_span_or_ruin() -> None:
    assert compute_metrics(daily([100.0]), [], 0, 1, 100.0)["cagr"] is None
    assert compute_metrics(daily([100.0, 0.0]), [], 0, 2, 100.0)["cagr"] is None


def test_sharpe_sign_and_undefined_cases() -> None:
    """Rising noisy equity has positive Sharpe; constant equity has none and zero volatility."""
    up = compute_metrics(daily([100, 101, 101.5, 103, 103.2, 105.0]), [], 0, 6, 100.0)
    assert up["sharpe"] is not None and up["sharpe"] > 0
    down = compute_metrics(daily([100, 99, 99.5, 97, 96.8, 95.0]), [], 0, 6, 100.0)
    assert down["sharpe"] is not None and down["sharpe"] < 0
    flat = compute_metrics(daily([100.0] * 10), [], 0, 10, 100.0)
    assert flat["sharpe"] is None and flat["volatility"] == 0.0 and flat["max_drawdown"] == 0
    assert compute_metrics(daily([100.0, 101.0]), [], 0, 2, 100.0)["sharpe"] is None


def test_sharpe_matches_definition() -> None:
    values = [100, 102, 101, 104, 103, 107.0]
    returns = [b / a - 1 for a, b in itertools.pairwise(values)]
    mean = sum(returns) / len(returns)
    sd = math.sqrt(sum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
    m = compute_metrics(daily(values), [], 0, 6, 100.0)
    assert m["sharpe"] == pytest.approx(mean / sd * math.sqrt(252))


def test_periods_per_year_rules() -> None:
    """Daily bars (with weekend gaps) are 252 a year; minute bars 252 x 390; weekly ~52."""
    weekdays = [T0 + timedelta(days=d) for d in range(30) if (T0 + timedelta(days=d)).weekday() < 5]
    assert periods_per_year(weekdays) == 252
    minutes = [T0 + timedelta(minutes=i) for i in range(100)]
    assert periods_per_year(minutes) == pytest.approx(252 * 390)
    weeks = [T0 + timedelta(weeks=i) for i in range(10)]
    assert periods_per_year(weeks) == pytest.approx(365.25 / 7)
    assert periods_per_year([T0]) is None


def test_trades_and_win_rate() -> None:
    trades = [
        TradeRecord("A", T0, T0 + timedelta(days=1), Decimal("5")),
        TradeRecord("A", T0, T0 + timedelta(days=2), Decimal("-1")),
        TradeRecord("B", T0, T0 + timedelta(days=3), Decimal("0")),
    ]
    m = compute_metrics(daily([100.0, 104.0]), trades, 1, 2, 100.0)
    assert m["trades"] == 3 and m["win_rate"] == pytest.approx(1 / 3)
    assert compute_metrics(daily([100.0]), [], 0, 1, 100.0)["win_rate"] is None


@pytest.mark.parametrize(
    ("equity", "kwargs", "message"),
    [
        (daily([100.0, math.nan]), {}, "finite"),
        ([(T0 + timedelta(days=1), 1.0), (T0, 1.0)], {}, "earlier"),
        (daily([1.0]), {"starting_equity": 0.0}, "positive"),
        (daily([1.0]), {"exposure_bars": 5}, "exposure_bars"),
    ],
)
def test_bad_input_is_refused(equity, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    args = {"trades": [], "exposure_bars": 0, "total_bars": 1, "starting_equity": 100.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        compute_metrics(equity, **args)


def test_drawdown_series() -> None:
    assert [d for _, d in drawdown_series(daily([100.0, 120.0, 90.0, 130.0]))] == [
        0.0,
        0.0,
        pytest.approx(-0.25),
        0.0,
    ]


def test_downsample_bounds_and_keeps_extremes() -> None:
    values = [100 + math.sin(i / 50) * 10 + (i % 17) for i in range(20_000)]
    values[12_345] = 1.0  # a crash that must stay visible
    points = daily(values, timedelta(minutes=1))
    small = downsample(points, 500)
    assert len(small) <= 500
    assert small[0] == points[0] and small[-1] == points[-1]
    assert (points[12_345]) in small
    assert downsample(points[:10], 500) == points[:10]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=1e9), min_size=1, max_size=300))
def test_max_drawdown_is_a_fraction(values: list[float]) -> None:
    """For positive equity the max drawdown lies in [0, 1)."""
    m = compute_metrics(daily(values), [], 0, len(values), values[0])
    assert 0.0 <= m["max_drawdown"] < 1.0  # type: ignore[operator]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=5, max_size=400),
    st.integers(min_value=4, max_value=60),
)
def test_downsample_is_an_ordered_subsequence_with_min_and_max(values, limit) -> None:  # type: ignore[no-untyped-def]
    points = daily(values, timedelta(minutes=1))
    small = downsample(points, limit)
    assert len(small) <= max(limit, len(points) if len(points) <= limit else limit)
    index = {p[0]: i for i, p in enumerate(points)}
    positions = [index[p[0]] for p in small]
    assert positions == sorted(set(positions))
    assert min(values) in [v for _, v in small] and max(values) in [v for _, v in small]
