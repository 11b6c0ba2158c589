"""The built-in ``csv`` source: the bundled sample, file and folder specs, and bad input."""

from __future__ import annotations

import csv
import re
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path

import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import ConfigError, FormatError, hookspecs
from bastion.interfaces import PluginContext, Source
from bastion.models import Bar
from bastion.plugins import csv_source
from bastion.plugins.csv_source import CsvSource

SAMPLE_SYMBOLS = ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO")
HEADER = "date,open,high,low,close,volume\n"
GOOD_ROW = "2021-01-04,10,11,9,10.5,1000\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _close(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(hour=21, tzinfo=UTC)


# ---------------------------------------------------------------------- the sample


@pytest.fixture(scope="module")
def sample() -> CsvSource:
    return CsvSource.open("sample")


def test_sample_loads_five_symbols_of_weekday_bars(sample: CsvSource) -> None:
    """`csv:sample` opens the bundled folder: five symbols, 780 weekday bars each, 2021..2023."""
    assert sample.symbols() == SAMPLE_SYMBOLS
    bars = list(sample.bars())
    assert len(bars) == 5 * 780
    for symbol in SAMPLE_SYMBOLS:
        own = [bar for bar in bars if bar.symbol == symbol]
        assert len(own) == 780
        assert own[0].ts == _close("2021-01-04")
        assert own[-1].ts == _close("2023-12-29")
        assert all(bar.ts.weekday() < 5 for bar in own)
    # Named as the user wrote it, not by where the package happens to be installed.
    assert sample.description == "csv:sample (5 symbols, 2021-01-04..2023-12-29)"


def test_sample_merge_is_time_then_symbol_ordered_without_duplicates(sample: CsvSource) -> None:
    """Bars from all files come out strictly increasing by (ts, symbol): merged, no repeats."""
    keys = [(bar.ts, bar.symbol) for bar in sample.bars()]
    assert all(a < b for a, b in pairwise(keys))
    assert keys[:5] == [(_close("2021-01-04"), symbol) for symbol in SAMPLE_SYMBOLS]


def test_sample_prices_and_volumes_are_realistic(sample: CsvSource) -> None:
    """The sample stays in the documented ranges: prices 20..500, volumes 1e5..5e6."""
    for bar in sample.bars():
        assert 20 <= bar.low <= bar.high <= 500
        assert 100_000 <= bar.volume <= 5_000_000


@pytest.mark.parametrize("spec", ["", "  "])
def test_empty_spec_is_refused(spec: str) -> None:
    """An empty path (say `csv:$DATA` with DATA unset) is an error, never the sample."""
    with pytest.raises(ConfigError, match=r"needs a path: --source csv:PATH .* csv:sample"):
        CsvSource.open(spec)


def test_registered_through_the_hook(sample: CsvSource) -> None:
    """The module offers `csv` through a spec-valid `register_sources`; it satisfies `Source`."""
    pm = pluggy.PluginManager("bastion")
    pm.add_hookspecs(hookspecs)
    pm.register(csv_source)
    pm.check_pending()
    [[offer]] = pm.hook.register_sources()
    assert offer.name == "csv" and offer.description and offer.options
    made = offer.create("sample", PluginContext("development", Path("unused")))
    assert isinstance(made, CsvSource) and made.symbols() == sample.symbols()
    assert isinstance(sample, Source)


# ---------------------------------------------------------------------- specs


def test_single_file_symbol_is_the_upper_cased_stem(tmp_path: Path) -> None:
    """A file spec gives one symbol named after the file; a date closes at 21:00 UTC."""
    path = _write(tmp_path / "spy.csv", HEADER + GOOD_ROW + "2021-01-05,10.5,12,10,11,0\n")
    source = CsvSource.open(str(path))
    assert source.symbols() == ("SPY",)
    assert list(source.bars()) == [
        Bar("SPY", _close("2021-01-04"), 10.0, 11.0, 9.0, 10.5, 1000.0),
        Bar("SPY", _close("2021-01-05"), 10.5, 12.0, 10.0, 11.0, 0.0),
    ]
    assert source.description == f"csv:{path} (1 symbol, 2021-01-04..2021-01-05)"


def test_symbol_column_and_flexible_header(tmp_path: Path) -> None:
    """A `symbol` column names each row's symbol; headers are case-insensitive and in any order;
    volume is optional (None when absent); datetimes keep their offset (converted to UTC),
    naive ones are UTC."""
    path = _write(
        tmp_path / "mixed.csv",
        "Close,SYMBOL,Timestamp,Low,High,Open\n"
        "2,AAA,2021-03-04T09:30:00-05:00,1,2,1.5\n"
        "3,BBB,2021-03-04 14:30:00,2,3,2.5\n"
        "2.5,AAA,2021-03-04T14:31:00Z,2,3,2\n",
    )
    source = CsvSource.open(str(path))
    assert source.symbols() == ("AAA", "BBB")
    assert list(source.bars()) == [
        Bar("AAA", datetime(2021, 3, 4, 14, 30, tzinfo=UTC), 1.5, 2.0, 1.0, 2.0, None),
        Bar("BBB", datetime(2021, 3, 4, 14, 30, tzinfo=UTC), 2.5, 3.0, 2.0, 3.0, None),
        Bar("AAA", datetime(2021, 3, 4, 14, 31, tzinfo=UTC), 2.0, 3.0, 2.0, 2.5, None),
    ]
    assert all(bar.ts.tzinfo is UTC for bar in source.bars())


def test_folder_spec_reads_every_csv_file(tmp_path: Path) -> None:
    """A folder spec reads each `*.csv` in it (not other files) as one symbol each."""
    _write(tmp_path / "bbb.csv", HEADER + GOOD_ROW)
    _write(tmp_path / "aaa.CSV", HEADER + "2021-01-05,10,11,9,10.5,1000\n")
    _write(tmp_path / "notes.txt", "not data")
    source = CsvSource.open(str(tmp_path))
    assert source.symbols() == ("AAA", "BBB")
    assert [(bar.symbol, bar.ts.day) for bar in source.bars()] == [("BBB", 4), ("AAA", 5)]
    assert source.description.startswith(f"csv:{tmp_path} (2 symbols, ")


def test_hidden_files_in_a_folder_are_skipped(tmp_path: Path) -> None:
    """A folder's hidden files (`.name.csv`, editor temporaries) are not read as symbols;
    a folder holding only hidden CSV files has no .csv files.  A hidden file named
    explicitly is read."""
    _write(tmp_path / ".hidden.csv", HEADER + GOOD_ROW)
    _write(tmp_path / ".#aaa.csv", "not, a, csv file")
    with pytest.raises(ConfigError, match=re.escape(f"folder {tmp_path} has no .csv files")):
        CsvSource.open(str(tmp_path))
    _write(tmp_path / "aaa.csv", HEADER + GOOD_ROW)
    assert CsvSource.open(str(tmp_path)).symbols() == ("AAA",)
    assert CsvSource.open(str(tmp_path / ".hidden.csv")).symbols() == (".HIDDEN",)


def test_unreadable_folder_or_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that cannot be listed (`chmod 000`), a path that cannot be looked at, and a
    file that cannot be opened are each one ConfigError naming the path and the OS reason.
    (Simulated: tests may run as root, whom `chmod 000` does not stop.)"""
    path = _write(tmp_path / "spy.csv", HEADER + GOOD_ROW)

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    with monkeypatch.context() as patch:
        patch.setattr(Path, "iterdir", refuse)
        with pytest.raises(ConfigError) as raised:
            CsvSource.open(str(tmp_path))
    assert str(raised.value) == f"csv source: cannot read {tmp_path}: Permission denied"
    with monkeypatch.context() as patch:
        patch.setattr(Path, "stat", refuse)  # what exists() and is_dir() call
        with pytest.raises(ConfigError) as raised:
            CsvSource.open(str(path))
    assert str(raised.value) == f"csv source: cannot read {path}: Permission denied"
    with monkeypatch.context() as patch:
        patch.setattr(Path, "open", refuse)
        with pytest.raises(ConfigError) as raised:
            CsvSource.open(str(tmp_path))
    assert str(raised.value) == f"csv source: cannot read {path}: Permission denied"


def test_unknown_user_in_a_tilde_path_is_a_config_error() -> None:
    """`~nosuchuser/x.csv` cannot be expanded: a ConfigError naming the spec, no traceback."""
    spec = "~bastion-no-such-user-7f3a/data.csv"
    with pytest.raises(ConfigError, match=re.escape(f"cannot expand '~' in {spec}")):
        CsvSource.open(spec)


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    """A path that does not exist is a ConfigError naming it."""
    missing = tmp_path / "nope.csv"
    with pytest.raises(ConfigError, match=r"nope\.csv does not exist"):
        CsvSource.open(str(missing))


def test_folder_without_csv_files_is_a_config_error(tmp_path: Path) -> None:
    """A folder with no .csv files is a ConfigError naming the folder."""
    _write(tmp_path / "readme.txt", "hello")
    with pytest.raises(ConfigError, match=re.escape(f"folder {tmp_path} has no .csv files")):
        CsvSource.open(str(tmp_path))


def test_symbol_in_two_files_is_refused(tmp_path: Path) -> None:
    """One symbol coming from two files of a folder is a FormatError naming both files."""
    _write(tmp_path / "a.csv", "symbol," + HEADER + "X," + GOOD_ROW)
    _write(tmp_path / "b.csv", "symbol," + HEADER + "X," + GOOD_ROW)
    with pytest.raises(FormatError, match=r"b\.csv:2: symbol 'X' is also in .*a\.csv:2"):
        CsvSource.open(str(tmp_path))


# ---------------------------------------------------------------------- bad input

BAD_FILES: dict[str, tuple[str, int, str]] = {
    # case: (content, line named in the message, fragment of the message)
    "empty file": ("", 0, "no bars"),
    "blank lines only": ("\n\n", 0, "no bars"),
    "header only": (HEADER, 1, "no bars"),
    "missing column": ("date,open,high,close\n" + "2021-01-04,1,2,1.5\n", 1, "missing column low"),
    "missing time column": ("open,high,low,close\n1,2,1,1.5\n", 1, "date (or timestamp)"),
    "both time columns": ("date,timestamp,open,high,low,close\n", 1, "both 'date' and"),
    "duplicate column": ("date,open,open,high,low,close\n", 1, "'open' appears twice"),
    "short row": (HEADER + GOOD_ROW + "2021-01-05,10,11\n", 3, "has 3 fields"),
    "long row": (
        HEADER + GOOD_ROW + "2021-01-05,10,11,9,10.5,1,000\n",
        3,
        "has 7 fields but the header has 6; remove the extra fields",
    ),
    "trailing comma on a row only": (HEADER + GOOD_ROW.replace("\n", ",\n"), 2, "has 7 fields"),
    "unterminated quote": (
        HEADER + GOOD_ROW + '"2021-01-05,10,11,9,10.5,1\n' + GOOD_ROW.replace("04", "06"),
        3,
        "unterminated quote (the quoted field runs on to line 4)",
    ),
    "unterminated quote on the last line": (
        HEADER + GOOD_ROW + '2021-01-05,"10,11,9,10.5,1\n',
        3,
        "unterminated quote; close the quote",
    ),
    "unparseable number": (HEADER + "2021-01-04,10,1l,9,10.5,1000\n", 2, "high '1l' is not a"),
    "empty number": (HEADER + "2021-01-04,10,11,9,,1000\n", 2, "close is empty"),
    "nan price": (HEADER + "2021-01-04,nan,11,9,10.5,1000\n", 2, "open is 'nan'"),
    "inf price": (HEADER + "2021-01-04,10,inf,9,10.5,1000\n", 2, "high is 'inf'"),
    "negative price": (HEADER + "2021-01-04,10,11,-9,10.5,1000\n", 2, "low -9.0 is not above"),
    "zero price": (HEADER + GOOD_ROW + "2021-01-05,0,11,9,10.5,1000\n", 3, "open 0.0 is not"),
    "negative volume": (HEADER + "2021-01-04,10,11,9,10.5,-1\n", 2, "volume -1.0 is negative"),
    "nan volume": (HEADER + "2021-01-04,10,11,9,10.5,NaN\n", 2, "volume is 'NaN'"),
    "high below close": (HEADER + "2021-01-04,10,10.4,9,10.5,1\n", 2, "high 10.4 is below close"),
    "high below open": (HEADER + "2021-01-04,10.6,10.5,9,10.5,1\n", 2, "high 10.5 is below open"),
    "low above open": (HEADER + "2021-01-04,10,11,10.1,10.5,1\n", 2, "low 10.1 is above open"),
    "low above close": (HEADER + "2021-01-04,10,11,9.6,9.5,1\n", 2, "low 9.6 is above close"),
    "bad date": (HEADER + "2021-13-04,10,11,9,10.5,1\n", 2, "date '2021-13-04' is not"),
    "words for date": (HEADER + "yesterday,10,11,9,10.5,1\n", 2, "date 'yesterday' is not"),
    "compact date": (HEADER + "20210104,10,11,9,10.5,1\n", 2, "date '20210104' is not"),
    "time past 9999 in UTC": (
        "timestamp,open,high,low,close,volume\n9999-12-31T23:00:00-05:00,1,2,0.5,1.5,100\n",
        2,
        "timestamp '9999-12-31T23:00:00-05:00' is out of range once converted to UTC",
    ),
    "time before year 1 in UTC": (
        "timestamp,open,high,low,close,volume\n0001-01-01T00:30:00+01:00,1,2,0.5,1.5,100\n",
        2,
        "timestamp '0001-01-01T00:30:00+01:00' is out of range once converted to UTC",
    ),
    "duplicate timestamp": (
        HEADER + GOOD_ROW + "2021-01-05,10,11,9,10.5,1\n" + GOOD_ROW.replace("10.5", "10.2"),
        4,
        "duplicate timestamp 2021-01-04 for BAD (also on line 2)",
    ),
    "out of order": (
        HEADER + "2021-01-05,10,11,9,10.5,1\n" + GOOD_ROW,
        3,
        "2021-01-04 for BAD is before 2021-01-05 on line 2",
    ),
    "empty symbol": ("symbol," + HEADER + " ," + GOOD_ROW, 2, "empty symbol"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_input_names_file_and_line(tmp_path: Path, case: str) -> None:
    """Each kind of bad input is a one-line FormatError naming the file, the line and the fix."""
    content, line, fragment = BAD_FILES[case]
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(FormatError) as raised:
        CsvSource.open(str(path))
    message = str(raised.value)
    assert "\n" not in message
    where = f"{path}:{line}: " if line else f"{path}: "
    assert message.startswith(where), message
    assert fragment in message, message
    assert "; " in message  # ... and then what to do about it


def test_bad_file_inside_a_folder_is_named(tmp_path: Path) -> None:
    """In a folder, the error names the offending file, not the folder."""
    _write(tmp_path / "good.csv", HEADER + GOOD_ROW)
    bad = _write(tmp_path / "worse.csv", HEADER + GOOD_ROW + "2021-01-05,10,11,9,x,1\n")
    with pytest.raises(FormatError, match="^" + re.escape(f"{bad}:3: close 'x' is not a number")):
        CsvSource.open(str(tmp_path))


def test_not_utf8_is_a_format_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is a FormatError naming it."""
    path = tmp_path / "latin.csv"
    path.write_bytes(HEADER.encode() + b"2021-01-04,10,11,9,10.5,1\xe9\n")
    with pytest.raises(FormatError, match="^" + re.escape(f"{path}: is not UTF-8 text")):
        CsvSource.open(str(path))


def test_consistent_trailing_comma_and_quoted_fields_are_fine(tmp_path: Path) -> None:
    """A trailing comma on every line, header included, is one more (empty, ignored) column;
    a quoted field may hold commas and line breaks; neither is a field-count error."""
    path = _write(tmp_path / "tc.csv", HEADER.replace("\n", ",\n") + GOOD_ROW.replace("\n", ",\n"))
    assert len(list(CsvSource.open(str(path)).bars())) == 1
    path = _write(
        tmp_path / "notes.csv",
        "date,open,high,low,close,note\n"
        '2021-01-04,10,11,9,10.5,"split, 2:1"\n'
        '2021-01-05,10,11,9,10.5,"two\nlines"\n'
        "2021-01-06,10,11,9,10.5,\n",
    )
    assert [bar.ts.day for bar in CsvSource.open(str(path)).bars()] == [4, 5, 6]


def test_blank_lines_and_bom_are_tolerated(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark and blank lines do not break reading; line numbers stay right."""
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeff" + HEADER + "\n" + GOOD_ROW + "\n").encode())
    assert len(list(CsvSource.open(str(path)).bars())) == 1
    path.write_bytes(("\ufeff" + HEADER + "\n" + GOOD_ROW + "\n2021-01-05,1,1,1,x,1\n").encode())
    with pytest.raises(FormatError, match=r"bom\.csv:5: close 'x'"):
        CsvSource.open(str(path))


# ---------------------------------------------------------------------- queries


def test_start_end_filter_is_inclusive(sample: CsvSource) -> None:
    """`start <= ts <= end`, both ends inclusive; naive bounds are read as UTC."""
    start, end = _close("2022-03-01"), _close("2022-03-04")
    bars = list(sample.bars(["ALPHA", "ECHO"], start=start, end=end))
    assert {bar.ts for bar in bars} == {start + timedelta(days=d) for d in range(4)}
    assert [bar.symbol for bar in bars] == ["ALPHA", "ECHO"] * 4
    naive = list(sample.bars(["ALPHA"], start=start.replace(tzinfo=None), end=end))
    assert [bar.ts for bar in naive] == [bar.ts for bar in bars if bar.symbol == "ALPHA"]
    assert list(sample.bars(start=_close("2030-01-01"))) == []
    assert list(sample.bars(end=_close("2020-01-01"))) == []
    only_start = list(sample.bars(["DELTA"], start=_close("2023-12-28")))
    assert [bar.ts for bar in only_start] == [_close("2023-12-28"), _close("2023-12-29")]


@pytest.mark.parametrize(
    ("symbols", "start", "end"),
    [
        (None, None, None),
        (["ALPHA", "ECHO"], "2022-03-01", "2022-03-04"),
        (["DELTA"], "2023-12-28", None),
        (None, None, "2021-01-05"),
        (None, "2030-01-01", None),
        (["BRAVO"], "2022-03-05", "2022-03-06"),  # a weekend: nothing
    ],
)
def test_count_is_what_bars_yields(
    sample: CsvSource, symbols: list[str] | None, start: str | None, end: str | None
) -> None:
    """count() says in advance how many bars bars() yields for the same arguments (the
    progress bar's total), and checks symbols the same way."""
    lo = _close(start) if start else None
    hi = _close(end) if end else None
    assert sample.count(symbols, lo, hi) == len(list(sample.bars(symbols, lo, hi)))
    with pytest.raises(ConfigError, match="'ZZZ'"):
        sample.count(["ZZZ"])


def test_start_end_out_of_utc_range_is_a_config_error(sample: CsvSource) -> None:
    """A `start` or `end` that overflows when converted to UTC is a ConfigError naming it."""
    late = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
    with pytest.raises(ConfigError) as raised:
        sample.bars(start=late)
    assert str(raised.value) == (
        "csv source: start 9999-12-31T23:00:00-05:00 is out of range in UTC; "
        "give a time between 0001-01-01 and 9999-12-31 UTC"
    )
    early = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(ConfigError, match=r"^csv source: end 0001-01-01T00:30:00\+01:00 is out"):
        sample.bars(end=early)


def test_symbol_subset(sample: CsvSource) -> None:
    """Asking for some symbols yields exactly theirs, merged in (ts, symbol) order."""
    bars = list(sample.bars(["DELTA", "BRAVO"]))
    assert len(bars) == 2 * 780
    assert [bar.symbol for bar in bars[:4]] == ["BRAVO", "DELTA", "BRAVO", "DELTA"]
    assert [bar.symbol for bar in sample.bars("CHARLIE")][:2] == ["CHARLIE", "CHARLIE"]


def test_unknown_symbol_is_a_config_error(sample: CsvSource) -> None:
    """An unknown symbol is a ConfigError listing what the source has, raised at the call."""
    with pytest.raises(ConfigError) as raised:
        sample.bars(["ALPHA", "ZZZ"])
    assert str(raised.value) == (
        f"symbol 'ZZZ' is not in {sample.description}; it has: ALPHA, BRAVO, CHARLIE, DELTA, ECHO"
    )


# ---------------------------------------------------------------------- round trip

_PRICES = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)


@st.composite
def _bar_series(draw: st.DrawFn) -> list[Bar]:
    count = draw(st.integers(min_value=1, max_value=12))
    start = draw(
        st.datetimes(
            min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
        )
    )
    gaps = draw(st.lists(st.integers(1, 10**10), min_size=count, max_size=count))
    bars: list[Bar] = []
    ts = start
    for gap in gaps:
        ts += timedelta(microseconds=gap)
        a, b, c, d = sorted(draw(st.lists(_PRICES, min_size=4, max_size=4)))
        open_, close = draw(st.permutations([b, c]))
        volume = draw(st.floats(min_value=0, max_value=1e12))
        bars.append(Bar("RT", ts, open_, d, a, close, volume))
    return bars


@settings(max_examples=60, deadline=None)
@given(_bar_series())
def test_valid_bars_round_trip_exactly(bars: list[Bar]) -> None:
    """Any valid bars written as CSV (repr floats, ISO timestamps) read back identical."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rt.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["timestamp", "open", "high", "low", "close", "volume"])
            for bar in bars:
                writer.writerow(
                    [
                        bar.ts.isoformat(),
                        repr(bar.open),
                        repr(bar.high),
                        repr(bar.low),
                        repr(bar.close),
                        repr(bar.volume),
                    ]
                )
        assert list(CsvSource.open(str(path)).bars()) == bars
