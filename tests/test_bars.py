"""Bar rollups (bastion._bars): OHLCV aggregation into coarser bars, per symbol, streaming.

Hand-computed examples pin the conventions (close-time buckets, session and DST
boundaries, the daily bar's time); hypothesis compares rollup with a deliberately naive
reference that finds each bucket by walking the clock minute by minute and groups with
dicts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import ConfigError
from bastion._bars import bucket_end, parse_interval, rollup, trading_date
from bastion.models import Bar

from .conftest import utc

MINUTE = timedelta(minutes=1)
NY = ZoneInfo("America/New_York")


def bar(
    symbol: str,
    ts: datetime,
    o: float,
    h: float,
    low: float,
    c: float,
    v: float | None = 1.0,
) -> Bar:
    return Bar(symbol, ts, o, h, low, c, v)


def flat(symbol: str, ts: datetime, price: float = 10.0, volume: float | None = 1.0) -> Bar:
    return Bar(symbol, ts, price, price, price, price, volume)


def local(*args: int, zone: ZoneInfo = NY, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=zone, fold=fold).astimezone(UTC)  # type: ignore[misc]


def one_line_error(excinfo: pytest.ExceptionInfo[ConfigError], *needles: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


# -- hand-computed examples --------------------------------------------------------------


def test_one_minute_to_five_minutes_by_hand() -> None:
    """1m bars 09:31..09:40: 09:31-09:35 make the bar ending 09:35 (a bar closing exactly
    at 09:35 belongs to it), 09:36-09:40 the one ending 09:40; O/H/L/C/V by hand."""
    closes = [10, 11, 9, 12, 13, 14, 12, 11, 15, 16]
    bars = [
        bar("SPY", utc(2024, 1, 2, 9, 31 + i), c - 0.5, c + 1, c - 1, c, 100 + i)
        for i, c in enumerate(closes)
    ]
    assert list(rollup(bars, "5m")) == [
        Bar("SPY", utc(2024, 1, 2, 9, 35), 9.5, 14, 8, 13, 510),
        Bar("SPY", utc(2024, 1, 2, 9, 40), 13.5, 17, 10, 16, 535),
    ]


def test_a_bar_at_a_bucket_end_belongs_to_that_bucket() -> None:
    """Close-time convention: 09:30 ends the 09:25-09:30 bucket; 09:30:01 starts the next."""
    bars = [flat("A", utc(2024, 1, 2, 9, 30), 1), flat("A", utc(2024, 1, 2, 9, 30, 1), 2)]
    assert [(b.ts, b.close) for b in rollup(bars, "5m")] == [
        (utc(2024, 1, 2, 9, 30), 1),
        (utc(2024, 1, 2, 9, 35), 2),
    ]


def test_five_second_bars_to_one_minute() -> None:
    """Seconds work too: twelve 5s bars 10:00:05..10:01:00 make the 10:01 bar."""
    bars = [
        flat("A", utc(2024, 1, 2, 10, 0) + timedelta(seconds=5 * (i + 1)), i + 1) for i in range(12)
    ]
    assert list(rollup(bars, "1m")) == [Bar("A", utc(2024, 1, 2, 10, 1), 1, 12, 1, 12, 12)]


def test_one_minute_to_one_hour_on_the_new_york_clock() -> None:
    """1m bars of a New York session morning (EDT, UTC-4): 09:31-10:00 make the bar ending
    10:00 New York (14:00 UTC), 10:01-10:30 the one ending 11:00; half-hour sessions start
    mid-bucket."""
    bars = [
        bar("QQQ", local(2024, 7, 1, 9, 30) + MINUTE * (i + 1), 100 + i, 100.5 + i, 99 + i, 100 + i)
        for i in range(60)
    ]
    assert list(rollup(bars, "1h", tz="America/New_York")) == [
        Bar("QQQ", utc(2024, 7, 1, 14), 100, 129.5, 99, 129, 30),
        Bar("QQQ", utc(2024, 7, 1, 15), 130, 159.5, 129, 159, 30),
    ]


def test_hourly_bars_to_daily_across_the_spring_dst_change() -> None:
    """New York sessions 10:00-16:00 (hourly closes) on Fri 8 March 2024 (EST) and Mon 11
    March (EDT): each day is one bar whose ts is the session's last close, 16:00 local,
    i.e. 21:00 UTC before the change and 20:00 UTC after it."""
    bars = []
    for day in (8, 11):
        for hour in range(10, 17):
            price = day * 10 + hour - 10
            bars.append(
                bar("IBM", local(2024, 3, day, hour), price, price + 2, price - 1, price + 1)
            )
    assert list(rollup(bars, "1d", tz="America/New_York")) == [
        Bar("IBM", utc(2024, 3, 8, 21), 80, 88, 79, 87, 7),
        Bar("IBM", utc(2024, 3, 11, 20), 110, 118, 109, 117, 7),
    ]


def test_round_the_clock_days_have_23_and_25_hours_around_dst() -> None:
    """Hourly bars round the clock: 10 March 2024 in New York has 23 of them, 3 November
    has 25, and each is one daily bar whose ts is the day's last hour (midnight local)."""
    start = local(2024, 3, 9)
    bars = [flat("BTC", start + timedelta(hours=h)) for h in range(1, 24 + 23 + 24 + 1)]
    days = list(rollup(bars, "1d", tz="America/New_York"))
    assert [(b.ts, b.volume) for b in days] == [
        (local(2024, 3, 10), 24),
        (local(2024, 3, 11), 23),
        (local(2024, 3, 12), 24),
    ]
    start = local(2024, 11, 2)
    bars = [flat("BTC", start + timedelta(hours=h)) for h in range(1, 24 + 25 + 24 + 1)]
    days = list(rollup(bars, "1d", tz="America/New_York"))
    assert [(b.ts, b.volume) for b in days] == [
        (local(2024, 11, 3), 24),
        (local(2024, 11, 4), 25),
        (local(2024, 11, 5), 24),
    ]


def test_four_hour_buckets_are_cut_at_the_dst_change() -> None:
    """4h buckets on New York's clock on 10 March 2024: 00:00-02:00 EST (the clock jumps
    there), 03:00-04:00 EDT, then 04:00-08:00 and 08:00-12:00 EDT. No bucket is longer than
    4 real hours."""
    bars = [flat("BTC", utc(2024, 3, 10, 5) + timedelta(hours=h)) for h in range(1, 8)]
    assert [(b.ts, b.volume) for b in rollup(bars, "4h", tz="America/New_York")] == [
        (utc(2024, 3, 10, 7), 2),  # 01:00 EST and the bar that closes as the clock jumps
        (utc(2024, 3, 10, 8), 1),  # 04:00 EDT
        (utc(2024, 3, 10, 12), 4),  # 08:00 EDT
    ]


def test_the_repeated_autumn_hour_is_two_buckets() -> None:
    """On 3 November 2024 New York reads 01:00-02:00 twice; each real hour is its own 1h
    bucket (ending 01:00 EST = 06:00 UTC, then 02:00 EST = 07:00 UTC)."""
    bars = [flat("BTC", utc(2024, 11, 3, 4) + timedelta(minutes=30 * m)) for m in range(1, 7)]
    assert [(b.ts, b.volume) for b in rollup(bars, "1h", tz="America/New_York")] == [
        (utc(2024, 11, 3, 5), 2),
        (utc(2024, 11, 3, 6), 2),
        (utc(2024, 11, 3, 7), 2),
    ]


def test_intraday_buckets_never_cross_local_midnight() -> None:
    """Kolkata is UTC+5:30, so its 4h buckets end at 18:30, 22:30 UTC...: bars either side
    of local midnight (18:30 UTC) are in different buckets, whose ends are local multiples
    of 4h."""
    bars = [flat("NIFTY", utc(2024, 1, 1, 18, 30) + MINUTE * m) for m in (-1, 0, 1)]
    kolkata = ZoneInfo("Asia/Kolkata")
    out = list(rollup(bars, "4h", tz="Asia/Kolkata"))
    assert [(b.ts, b.volume) for b in out] == [
        (utc(2024, 1, 1, 18, 30), 2),
        (utc(2024, 1, 1, 22, 30), 1),
    ]
    assert [b.ts.astimezone(kolkata).hour for b in out] == [0, 4]


def test_gaps_and_interleaved_symbols() -> None:
    """Two symbols with different gaps: empty buckets give no bar, a partial bucket is still
    labelled with its end, and the output is ordered by (ts, symbol)."""
    t = utc(2024, 1, 2, 9, 30)
    bars = [
        flat("MSFT", t + MINUTE * 1, 1),
        flat("AAPL", t + MINUTE * 2, 2),
        flat("MSFT", t + MINUTE * 2, 3),
        flat("AAPL", t + MINUTE * 7, 4),  # MSFT has nothing in 09:35-09:40
        flat("MSFT", t + MINUTE * 23, 5),  # AAPL has nothing after 09:40
        flat("MSFT", t + MINUTE * 24, 6),
    ]
    assert [(b.symbol, b.ts, b.open, b.close, b.volume) for b in rollup(bars, "5m")] == [
        ("AAPL", t + MINUTE * 5, 2, 2, 1),
        ("MSFT", t + MINUTE * 5, 1, 3, 2),
        ("AAPL", t + MINUTE * 10, 4, 4, 1),
        ("MSFT", t + MINUTE * 25, 5, 6, 2),
    ]


def test_volume_is_none_when_any_bar_in_the_bucket_has_none() -> None:
    """A bucket with one unknown volume has an unknown volume; its neighbours keep theirs."""
    t = utc(2024, 1, 2, 9, 30)
    bars = [
        flat("A", t + MINUTE, volume=5),
        flat("A", t + MINUTE * 2, volume=None),
        flat("A", t + MINUTE * 3, volume=7),
        flat("A", t + MINUTE * 6, volume=0),
        flat("A", t + MINUTE * 7, volume=3),
        flat("B", t + MINUTE * 8, volume=None),
    ]
    assert [(b.symbol, b.volume) for b in rollup(bars, "5m")] == [
        ("A", None),
        ("A", 3),
        ("B", None),
    ]


def test_daily_bars_of_several_symbols_come_in_time_order() -> None:
    """A daily bar's ts is its symbol's last bar of the date, so symbols that close at
    different times come out ordered by that time, then symbol."""
    bars = [
        flat("B", utc(2024, 1, 2, 14)),
        flat("A", utc(2024, 1, 2, 15)),
        flat("C", utc(2024, 1, 2, 15)),
        flat("B", utc(2024, 1, 2, 21)),
        flat("A", utc(2024, 1, 3, 1)),
    ]
    assert [(b.symbol, b.ts) for b in rollup(bars, "1d")] == [
        ("A", utc(2024, 1, 2, 15)),
        ("C", utc(2024, 1, 2, 15)),
        ("B", utc(2024, 1, 2, 21)),
        ("A", utc(2024, 1, 3, 1)),
    ]
    # A bar closing at midnight ends the day before.
    assert trading_date(utc(2024, 1, 3), ZoneInfo("UTC")) == date(2024, 1, 2)


def test_rollup_streams() -> None:
    """Output comes while the input is still being read: from an endless stream of 1m
    bars of two symbols, the first three 5m bars arrive."""

    def endless() -> Iterator[Bar]:
        for i in itertools.count(1):
            yield flat("A", utc(2024, 1, 2) + MINUTE * i)
            yield flat("B", utc(2024, 1, 2) + MINUTE * i)

    first = list(itertools.islice(rollup(endless(), "5m"), 3))
    assert [(b.symbol, b.ts, b.volume) for b in first] == [
        ("A", utc(2024, 1, 2, 0, 5), 5),
        ("B", utc(2024, 1, 2, 0, 5), 5),
        ("A", utc(2024, 1, 2, 0, 10), 5),
    ]


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("1m", MINUTE),
        ("5m", timedelta(minutes=5)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("4h", timedelta(hours=4)),
        ("1d", timedelta(days=1)),
        (" 90m ", timedelta(minutes=90)),
    ],
)
def test_parse_interval(text: str, expected: timedelta) -> None:
    """A whole number and a unit s, m, h or d."""
    assert parse_interval(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "m",
        "5",
        "0m",
        "-5m",
        "5M",
        "1.5h",
        "5 m",
        "5min",
        "1w",
        "\u0665m",
        "1m\n2m",
        "9" * 10 + "s",
    ],
)
def test_bad_intervals_are_one_line_config_errors(text: str) -> None:
    """Anything else is refused in one line naming the text."""
    with pytest.raises(ConfigError) as excinfo:
        parse_interval(text)
    one_line_error(excinfo, "bad bar interval", repr(text))


@given(st.text(max_size=12))
def test_parse_interval_accepts_exactly_its_grammar(text: str) -> None:
    """Whatever the text, parse_interval returns a positive timedelta or raises
    ConfigError, and it returns one exactly for number+unit."""
    stripped = text.strip()
    valid = (
        len(stripped) >= 2
        and stripped[-1] in "smhd"
        and stripped[:-1].isascii()
        and stripped[:-1].isdigit()
        and len(stripped) <= 10
        and int(stripped[:-1]) > 0
    )
    if valid:
        assert parse_interval(text) > timedelta(0)
    else:
        with pytest.raises(ConfigError):
            parse_interval(text)


@pytest.mark.parametrize("interval", ["7m", "25h", "2d", "5h", "0h"])
def test_intervals_that_do_not_divide_a_day_are_refused(interval: str) -> None:
    """Clock-aligned buckets need an interval that divides the day, or exactly 1d; the
    refusal comes at the call, before any bar is read."""
    with pytest.raises(ConfigError) as excinfo:
        rollup(iter(()), interval)
    assert interval in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_an_unknown_time_zone_is_refused() -> None:
    """tz must be an IANA zone name."""
    for tz in ("Mars/Olympus", "", "../etc/passwd", "America"):
        with pytest.raises(ConfigError) as excinfo:
            rollup([], "5m", tz=tz)
        one_line_error(excinfo, "unknown time zone")


@pytest.mark.parametrize(
    ("bars", "symbol", "ts"),
    [
        (  # time goes back
            [flat("A", utc(2024, 1, 2, 9, 32)), flat("A", utc(2024, 1, 2, 9, 31))],
            "A",
            "2024-01-02T09:31:00+00:00",
        ),
        (  # same time, symbols not in order
            [flat("B", utc(2024, 1, 2, 9, 31)), flat("A", utc(2024, 1, 2, 9, 31))],
            "A",
            "2024-01-02T09:31:00+00:00",
        ),
        (  # the same bar twice
            [flat("A", utc(2024, 1, 2, 9, 31)), flat("A", utc(2024, 1, 2, 9, 31))],
            "A",
            "2024-01-02T09:31:00+00:00",
        ),
        (  # another symbol earlier, after a later bucket has begun
            [flat("A", utc(2024, 1, 2, 9, 40)), flat("B", utc(2024, 1, 2, 9, 33))],
            "B",
            "2024-01-02T09:33:00+00:00",
        ),
    ],
)
def test_out_of_order_input_is_refused(bars: list[Bar], symbol: str, ts: str) -> None:
    """Input must be ordered by (ts, symbol), each once: the refusal names the bar."""
    with pytest.raises(ConfigError) as excinfo:
        list(rollup(bars, "5m"))
    one_line_error(excinfo, f"{symbol!r} at {ts}", "out of order")


def test_a_target_finer_than_the_declared_source_is_refused() -> None:
    """Rolling 1h bars 'up' to 5m would relabel them; with source='1h' it is refused at
    the call."""
    with pytest.raises(ConfigError) as excinfo:
        rollup([], "5m", source="1h")
    one_line_error(excinfo, "1h", "5m", "finer")


def test_bars_denser_than_the_declared_source_are_refused() -> None:
    """Two bars of one symbol 30s apart are not 1m bars."""
    bars = [flat("A", utc(2024, 1, 2, 9, 31)), flat("A", utc(2024, 1, 2, 9, 31, 30))]
    with pytest.raises(ConfigError) as excinfo:
        list(rollup(bars, "5m", source="1m"))
    one_line_error(excinfo, "'A' at 2024-01-02T09:31:30+00:00", "closer than 1m")


def test_bars_that_straddle_a_bucket_are_refused() -> None:
    """5m bars closing at :02, :07... each cover two 15m buckets' worth at the boundary:
    refused, naming the bar."""
    bars = [flat("A", utc(2024, 1, 2, 9, 57)), flat("A", utc(2024, 1, 2, 10, 2))]
    with pytest.raises(ConfigError) as excinfo:
        list(rollup(bars, "15m", source="5m"))
    one_line_error(excinfo, "'A' at 2024-01-02T10:02:00+00:00", "does not fit")


def test_a_declared_source_accepts_gaps_and_equal_spacing() -> None:
    """1m bars with gaps, declared as 1m, roll up exactly as without the declaration;
    hourly bars to 1d with source='1h' too."""
    t = utc(2024, 1, 2, 9, 30)
    bars = [flat("A", t + MINUTE * m) for m in (1, 2, 3, 17, 18, 40)]
    assert list(rollup(bars, "15m", source="1m")) == list(rollup(bars, "15m"))
    hourly = [flat("A", local(2024, 3, 10) + timedelta(hours=h)) for h in range(1, 30)]
    assert list(rollup(hourly, "1d", tz="America/New_York", source="1h")) == list(
        rollup(hourly, "1d", tz="America/New_York")
    )


# -- properties against a naive reference ------------------------------------------------

ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "America/Santiago"]
#: Noon UTC near each zone's 2024 offset changes (Lord Howe moves by 30 minutes;
#: Santiago changes at midnight, and in April sets the clock back across it).
ANCHORS = [
    utc(2024, 3, 10, 12),
    utc(2024, 11, 3, 12),
    utc(2024, 3, 31, 12),
    utc(2024, 10, 27, 12),
    utc(2024, 4, 6, 12),
    utc(2024, 10, 5, 12),
    utc(2024, 9, 7, 12),
    utc(2024, 6, 15, 12),
]
INTRADAY = ["1m", "5m", "15m", "30m", "1h", "2h", "3h", "4h"]


def naive_end(ts: datetime, step: timedelta, zone: ZoneInfo) -> datetime:
    """Walk forward minute by minute from ts to the first instant where the UTC offset has
    just changed or the local clock reads a multiple of step since its midnight."""
    t = ts
    while True:
        here = t.astimezone(zone)
        changed = here.utcoffset() != (t - MINUTE).astimezone(zone).utcoffset()
        since_midnight = timedelta(hours=here.hour, minutes=here.minute, seconds=here.second)
        if changed or since_midnight % step == timedelta(0):
            return t
        t += MINUTE


def naive_rollup(bars: list[Bar], interval: str, tz: str) -> list[Bar]:
    """Group with dicts by (symbol, bucket), then sort: no streaming, no cleverness."""
    zone = ZoneInfo(tz)
    groups: dict[tuple[str, object], list[Bar]] = {}
    for b in bars:
        if interval == "1d":
            key: object = (b.ts - MINUTE).astimezone(zone).date()
        else:
            key = naive_end(b.ts, parse_interval(interval), zone)
        groups.setdefault((b.symbol, key), []).append(b)
    out = []
    for (symbol, key), members in groups.items():
        volumes = [m.volume for m in members]
        out.append(
            Bar(
                symbol,
                max(m.ts for m in members) if interval == "1d" else key,  # type: ignore[arg-type]
                members[0].open,
                max(m.high for m in members),
                min(m.low for m in members),
                members[-1].close,
                None if None in volumes else sum(v for v in volumes if v is not None),
            )
        )
    return sorted(out, key=lambda b: (b.ts, b.symbol))


@st.composite
def minute_bars(draw: st.DrawFn, integer_volumes: bool = False) -> list[Bar]:
    """Up to 80 whole-minute bars of symbols A-C within three days of a DST anchor, in
    (ts, symbol) order, with gaps."""
    anchor = draw(st.sampled_from(ANCHORS))
    keys = draw(
        st.lists(
            st.tuples(st.integers(-3 * 1440, 3 * 1440), st.sampled_from("ABC")),
            unique=True,
            max_size=80,
        )
    )
    volume: st.SearchStrategy[float | None] = (
        st.integers(0, 10**6).map(float)
        if integer_volumes
        else st.none() | st.floats(0, 1e6, allow_nan=False)
    )
    out = []
    for minute, symbol in sorted(keys):
        o, c = draw(st.floats(1, 100)), draw(st.floats(1, 100))
        up, down = draw(st.floats(0, 5)), draw(st.floats(0, 0.9))
        out.append(
            Bar(
                symbol,
                anchor + MINUTE * minute,
                o,
                max(o, c) + up,
                min(o, c) * (1 - down),
                c,
                draw(volume),
            )
        )
    return out


@settings(max_examples=150, deadline=None)
@given(minute_bars(), st.sampled_from([*INTRADAY, "1d"]), st.sampled_from(ZONES))
def test_rollup_matches_the_naive_reference(bars: list[Bar], interval: str, tz: str) -> None:
    """Any whole-minute bars, any interval, any zone (DST changes included): rollup gives
    exactly the reference's bars, in the same order; declaring source='1m' changes nothing."""
    expected = naive_rollup(bars, interval, tz)
    assert list(rollup(bars, interval, tz=tz)) == expected
    assert list(rollup(iter(bars), interval, tz=tz, source="1m")) == expected


@settings(max_examples=100, deadline=None)
@given(
    minute_bars(integer_volumes=True),
    st.sampled_from([("5m", "15m"), ("15m", "1h"), ("1h", "4h"), ("30m", "3h")]),
    st.sampled_from(ZONES),
)
def test_rolling_up_in_two_steps_is_rolling_up_once(
    bars: list[Bar], steps: tuple[str, str], tz: str
) -> None:
    """1m -> 5m -> 15m equals 1m -> 15m (each finer bucket lies in one coarser bucket, DST
    cuts included), and the intermediate bars pass as source bars of their interval."""
    finer, coarser = steps
    once = list(rollup(bars, coarser, tz=tz))
    assert list(rollup(rollup(bars, finer, tz=tz), coarser, tz=tz, source=finer)) == once


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(ANCHORS),
    st.integers(-3 * 1440, 3 * 1440),
    st.sampled_from(INTRADAY),
    st.sampled_from(ZONES),
)
def test_bucket_end_is_the_first_boundary_at_or_after_ts(
    anchor: datetime, minute: int, interval: str, tz: str
) -> None:
    """bucket_end agrees with the minute-by-minute walk, is never before ts, never more
    than the interval after it, and a bar just after a bucket's end starts the next one."""
    ts, step, zone = anchor + MINUTE * minute, parse_interval(interval), ZoneInfo(tz)
    end = bucket_end(ts, step, zone)
    assert end == naive_end(ts, step, zone)
    assert ts <= end < ts + step
    assert bucket_end(end, step, zone) == end
    assert bucket_end(end + timedelta(seconds=1), step, zone) > end
