"""The built-in ``synthetic`` source: seeded, lazy random-walk bars, and the sample data."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from itertools import islice, pairwise
from pathlib import Path

import pluggy
import pytest

from bastion import ConfigError, hookspecs
from bastion.interfaces import PluginContext, Source
from bastion.models import Bar
from bastion.plugins import synthetic
from bastion.plugins.csv_source import SAMPLE_DATA
from bastion.plugins.synthetic import SyntheticSource, SyntheticSpec, parse_spec


def _bars(spec: str, **kwargs: object) -> list[Bar]:
    return list(SyntheticSource.open(spec).bars(**kwargs))  # type: ignore[arg-type]


def test_registered_through_the_hook() -> None:
    """The module offers `synthetic` through a spec-valid `register_sources`; it is a `Source`."""
    pm = pluggy.PluginManager("bastion")
    pm.add_hookspecs(hookspecs)
    pm.register(synthetic)
    pm.check_pending()
    [[offer]] = pm.hook.register_sources()
    assert offer.name == "synthetic" and offer.description and offer.options
    made = offer.create("5", PluginContext("development", Path("unused")))
    assert isinstance(made, SyntheticSource) and made.count() == 5
    assert isinstance(SyntheticSource.open("5"), Source)


# ---------------------------------------------------------------------- spec


def test_spec_defaults_and_options() -> None:
    """`N` alone takes the documented defaults; every option is parsed, in any order."""
    assert parse_spec("10") == SyntheticSpec(10, 1, 42, date(2000, 1, 3), "1d")
    assert parse_spec(" 1_000 , interval=1H, start=2020-02-03, seed=-7, symbols=3 ") == (
        SyntheticSpec(1000, 3, -7, date(2020, 2, 3), "1h")
    )
    assert str(parse_spec("10,seed=1")) == "10,symbols=1,seed=1,start=2000-01-03,interval=1d"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "give the number of bars"),
        ("seed=3", "'seed=3' comes first"),
        ("0", "bar count '0' is not a positive whole number"),
        ("-5", "bar count '-5' is not a positive"),
        ("ten", "bar count 'ten' is not a positive"),
        ("1.5", "bar count '1.5' is not a positive"),
        ("10,symbols=0", "symbols '0' is not a positive"),
        ("10,symbols=many", "symbols 'many' is not a positive"),
        ("10,seed=abc", "seed 'abc' is not a whole number"),
        ("10,start=2020-13-01", "start '2020-13-01' is not a date"),
        ("10,start=20200101", "start '20200101' is not a date"),
        ("10,interval=5m", "interval '5m' is not one of 1d, 1h, 1m"),
        ("10,colour=red", "unknown option 'colour'"),
        ("10,seed", "'seed' is not key=value"),
        ("10,", "'' is not key=value"),
        ("10,seed=1,seed=2", "option 'seed' is given twice"),
    ],
)
def test_bad_spec_names_the_bad_part(spec: str, fragment: str) -> None:
    """Each malformed spec is a one-line ConfigError naming the part at fault."""
    with pytest.raises(ConfigError) as raised:
        SyntheticSource.open(spec)
    message = str(raised.value)
    assert fragment in message, message
    assert message.startswith("synthetic source: ")
    assert "\n" not in message


def test_spec_that_runs_past_year_9999_is_refused() -> None:
    """A spec whose last bar would fall after 9999-12-31 is refused up front, not mid-run."""
    with pytest.raises(ConfigError, match="run past the year 9999"):
        SyntheticSource.open("10000000")
    SyntheticSource.open("10000000,interval=1m")  # 19 years of minutes is fine


# ---------------------------------------------------------------------- determinism


def test_same_seed_same_bars_different_seed_different() -> None:
    """A spec always gives identical bars; another seed gives other prices."""
    first = _bars("300,symbols=3,seed=7")
    assert first == _bars("300,symbols=3,seed=7")
    other = _bars("300,symbols=3,seed=8")
    assert [bar.ts for bar in other] == [bar.ts for bar in first]
    assert all(a.close != b.close for a, b in zip(first, other, strict=True))


def test_adding_symbols_keeps_existing_ones_identical() -> None:
    """SYN0 (and SYN1) are the same bars whether the source has 1, 2 or 12 symbols."""
    alone = _bars("200")
    two = SyntheticSource.open("200,symbols=2")
    many = SyntheticSource.open("200,symbols=12")
    assert list(two.bars(["SYN0"])) == alone
    assert list(many.bars(["SYN0"])) == alone
    assert list(many.bars(["SYN1"])) == list(two.bars(["SYN1"]))
    assert [bar for bar in many.bars() if bar.symbol == "SYN0"] == alone


def test_subset_and_range_are_slices_of_the_full_run() -> None:
    """Asking for a subset or a date range gives exactly the bars the full run has there."""
    source = SyntheticSource.open("500,symbols=4,interval=1h,start=2022-06-01")
    full = list(source.bars())
    start = datetime(2022, 6, 5, 3, tzinfo=UTC)
    end = datetime(2022, 6, 9, 17, tzinfo=UTC)
    wanted = {"SYN3", "SYN1"}
    expected = [bar for bar in full if bar.symbol in wanted and start <= bar.ts <= end]
    assert list(source.bars(["SYN3", "SYN1"], start=start, end=end)) == expected
    assert expected[0].ts == start and expected[-1].ts == end  # both ends inclusive
    naive = list(source.bars(["SYN3", "SYN1"], start=start.replace(tzinfo=None), end=end))
    assert naive == expected  # a naive bound is UTC
    assert list(source.bars(start=datetime(2030, 1, 1, tzinfo=UTC))) == []


# ---------------------------------------------------------------------- shape of the data


def test_n_bars_per_symbol_and_symbol_names() -> None:
    """`N,symbols=K` gives K symbols SYN0..SYN{K-1} (sorted as text) with N bars each."""
    source = SyntheticSource.open("37,symbols=11")
    assert source.symbols() == tuple(sorted(f"SYN{i}" for i in range(11)))
    assert source.symbols()[:3] == ("SYN0", "SYN1", "SYN10")
    bars = list(source.bars())
    assert len(bars) == 37 * 11
    for symbol in source.symbols():
        assert sum(bar.symbol == symbol for bar in bars) == 37


def test_ohlc_is_consistent_over_many_bars() -> None:
    """Every bar is finite, positive, high/low bracket open/close, and volume is positive."""
    for spec in ("20000,symbols=3", "20000,interval=1m,seed=3", "5000,symbols=2,interval=1h"):
        for bar in SyntheticSource.open(spec).bars():
            values = (bar.open, bar.high, bar.low, bar.close, bar.volume)
            assert all(math.isfinite(v) and v > 0 for v in values)
            assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
            assert bar.low > 0.005 and bar.high < 2e7


def test_prices_start_realistic_and_vary() -> None:
    """Symbols start between 20 and 500, move every bar, and differ from each other."""
    first = _bars("1,symbols=20")
    assert all(20 * 0.9 < bar.open < 500 * 1.1 for bar in first)
    assert len({bar.open for bar in first}) == 20
    closes = [bar.close for bar in _bars("100")]
    assert len(set(closes)) == 100


def test_bars_are_ordered_by_time_then_symbol() -> None:
    """Bars come out strictly increasing by (ts, symbol), every symbol at every step."""
    bars = _bars("50,symbols=12,interval=1m")
    keys = [(bar.ts, bar.symbol) for bar in bars]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert [bar.symbol for bar in bars[:12]] == sorted(f"SYN{i}" for i in range(12))


def test_daily_bars_close_at_21_utc_on_weekdays() -> None:
    """1d bars close at 21:00 UTC on weekdays, from the first weekday on or after `start`."""
    source = SyntheticSource.open("12,start=2021-01-02")  # a Saturday
    stamps = [bar.ts for bar in source.bars()]
    assert stamps[0] == datetime(2021, 1, 4, 21, tzinfo=UTC)  # Monday
    assert all(ts.weekday() < 5 and ts.time().hour == 21 and ts.tzinfo is UTC for ts in stamps)
    assert stamps[4] == datetime(2021, 1, 8, 21, tzinfo=UTC)  # Friday
    assert stamps[5] == datetime(2021, 1, 11, 21, tzinfo=UTC)  # then Monday
    assert stamps[-1] == datetime(2021, 1, 19, 21, tzinfo=UTC)
    assert source.description.endswith("(1 symbol x 12 bars, 2021-01-04..2021-01-19)")


@pytest.mark.parametrize(
    ("interval", "step"), [("1h", timedelta(hours=1)), ("1m", timedelta(minutes=1))]
)
def test_intraday_bars_run_round_the_clock(interval: str, step: timedelta) -> None:
    """1h/1m bars are evenly spaced, the first closing one interval after start 00:00 UTC."""
    stamps = [bar.ts for bar in _bars(f"3000,interval={interval},start=2021-01-02")]
    assert stamps[0] == datetime(2021, 1, 2, tzinfo=UTC) + step
    assert all(b - a == step for a, b in pairwise(stamps))


def test_last_timestamp_in_description_matches_generation() -> None:
    """The closed-form last timestamp (used for the description) equals the generated one."""
    for count in (1, 4, 5, 6, 9, 10, 11, 263):
        for start in ("2021-01-04", "2021-01-07", "2021-01-09"):
            source = SyntheticSource.open(f"{count},start={start}")
            last = list(source.bars())[-1].ts
            assert source.description.endswith(f"..{last.date().isoformat()})")


def test_generation_is_lazy() -> None:
    """Taking the first bars of a 10**7-bar source generates only those (no materialising)."""
    source = SyntheticSource.open("10000000,symbols=2,interval=1m")
    first = list(islice(source.bars(), 10))
    assert [bar.symbol for bar in first] == ["SYN0", "SYN1"] * 5
    assert first == _bars("5,symbols=2,interval=1m")


def test_unknown_symbol_is_a_config_error() -> None:
    """An unknown symbol is a ConfigError listing the source's symbols, raised at the call."""
    source = SyntheticSource.open("5,symbols=2")
    with pytest.raises(ConfigError) as raised:
        source.bars(["SYN0", "ZZZ"])
    assert str(raised.value) == (f"symbol 'ZZZ' is not in {source.description}; it has: SYN0, SYN1")


# ---------------------------------------------------------------------- sample data


def test_bundled_sample_data_is_what_the_generator_writes(tmp_path: Path) -> None:
    """The CSV files shipped in sample_data are exactly `write_sample_data`'s output."""
    written = synthetic.write_sample_data(tmp_path)
    assert sorted(path.name for path in SAMPLE_DATA.glob("*.csv")) == sorted(
        path.name for path in written
    )
    for path in written:
        assert path.read_bytes() == (SAMPLE_DATA / path.name).read_bytes(), path.name
    assert sum(path.stat().st_size for path in SAMPLE_DATA.iterdir()) < 400_000


def test_sample_data_readme_says_synthetic() -> None:
    """The sample folder's README warns that the data is synthetic and for demos/tests only."""
    text = (SAMPLE_DATA / "README.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in text
    assert "demos and tests only" in text
    assert str(synthetic.SAMPLE_SEED) in text


def test_sample_data_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bastion.plugins.synthetic sample-data DIR` writes the files; bad use is 2."""
    assert synthetic._main(["sample-data", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ALPHA.csv",
        "BRAVO.csv",
        "CHARLIE.csv",
        "DELTA.csv",
        "ECHO.csv",
    ]
    assert "ECHO.csv" in capsys.readouterr().out
    assert synthetic._main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_count_is_known_without_a_period_and_none_with_one() -> None:
    """count() is every bar of every symbol asked for (the progress bar's total) when no
    period is given, None with one (weekend gaps make it costly), and checks symbols."""
    source = SyntheticSource.open("50,symbols=3,seed=1")
    assert source.count() == 150 == len(list(source.bars()))
    assert source.count(["SYN1"]) == 50 == len(list(source.bars(["SYN1"])))
    assert source.count("SYN1") == 50
    assert source.count(start=datetime(2020, 1, 1, tzinfo=UTC)) is None
    with pytest.raises(ConfigError, match="'SYN9'"):
        source.count(["SYN9"])
