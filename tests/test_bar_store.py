"""The local bar store: ``bastion data import``/``list``, the SQLite ``bars`` table behind
:class:`bastion.interfaces.BarStore`, and the ``store:`` source with its rollups."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest

from bastion import ConfigError
from bastion.interfaces import BarStore
from bastion.models import Bar, Fill
from bastion.plugins import bar_store, sqlite_store
from bastion.plugins.bar_store import StoreSource, parse_store_spec
from bastion.plugins.csv_source import SAMPLE_DATA, CsvSource
from bastion.plugins.sqlite_store import SQLiteStore
from bastion.plugins.synthetic import SyntheticSource

from .conftest import CLI, REPO, one_error_line

SAMPLE_SYMBOLS = ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO")
TICK = timedelta(microseconds=1)


def data_dir(home: Path) -> Path:
    return home / ".bastion" / "development"


def dump(home: Path) -> list[tuple[Any, ...]]:
    """Every stored bar row, as the database holds it (None: no database)."""
    path = data_dir(home) / sqlite_store.DB_NAME
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM bars ORDER BY symbol, interval, ts").fetchall()
    finally:
        conn.close()


def imported(cli: CLI, home: Path, *args: str | Path) -> str:
    r = cli("data", "import", "--home", home, *args)
    assert r.exit_code == 0, r.output + r.stderr
    return r.stdout


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A workspace holding a copy of the repository's signed example strategies."""
    home = tmp_path / "ws"
    shutil.copytree(REPO / "strategies", home / "strategies")
    shutil.copytree(REPO / "signatures", home / "signatures")
    return home


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore.open(tmp_path / "data")
    try:
        yield s
    finally:
        s.close()


# ------------------------------------------------------------------------------ importing


def test_import_sample_stores_exactly_the_csv_bars(cli: CLI, home: Path) -> None:
    """Importing csv:sample stores every bar of the five files as 1d bars; reading them
    back gives the very Bar objects the csv source yields, in the same (ts, symbol) order."""
    out = imported(cli, home, "csv:sample")
    assert "imported 3,900 1d bars of 5 symbols from csv:sample" in out
    assert "3,900 new, 0 already stored" in out
    expected = list(CsvSource.open("sample").bars())
    with SQLiteStore.open(data_dir(home)) as s:
        assert list(s.read_bars(SAMPLE_SYMBOLS, "1d")) == expected
        assert list(s.read_bars(SAMPLE_SYMBOLS, "1h")) == []


def test_reimport_is_idempotent(cli: CLI, home: Path) -> None:
    """Importing the same bars again changes no row and says none was new."""
    imported(cli, home, "csv:sample")
    before = dump(home)
    out = imported(cli, home, "csv:sample")
    assert "0 new, 3,900 already stored" in out
    assert dump(home) == before


def test_import_subset_and_period(cli: CLI, home: Path) -> None:
    """--symbols and --from/--to import only those bars (both days inclusive)."""
    out = imported(
        cli, home, "csv:sample", "--symbols", "BRAVO,ALPHA", "--from", "2022-01-03", "--to",
        "2022-01-07",
    )  # fmt: skip
    assert "imported 10 1d bars of 2 symbols" in out
    rows = dump(home)
    assert {r[0] for r in rows} == {"ALPHA", "BRAVO"}
    assert [r[2][:10] for r in rows if r[0] == "ALPHA"] == [
        "2022-01-03", "2022-01-04", "2022-01-05", "2022-01-06", "2022-01-07",
    ]  # fmt: skip


def test_bad_csv_path_is_one_line_and_changes_nothing(cli: CLI, home: Path) -> None:
    """A missing file is one error line naming it, exit 2, and the stored bars stay."""
    imported(cli, home, "csv:sample", "--symbols", "ALPHA")
    before = dump(home)
    r = cli("data", "import", "--home", home, f"csv:{home / 'missing.csv'}")
    assert r.exit_code == 2
    one_error_line(r.stderr, "missing.csv", "does not exist")
    assert dump(home) == before


def test_bad_csv_row_is_one_line_and_changes_nothing(cli: CLI, home: Path) -> None:
    """A folder with one good file and one bad row stores nothing of either: one error
    line naming the file and line, exit 1 (a malformed data file)."""
    imported(cli, home, "csv:sample", "--symbols", "ALPHA")
    before = dump(home)
    folder = home / "data"
    folder.mkdir()
    shutil.copy(SAMPLE_DATA / "BRAVO.csv", folder / "bravo.csv")
    (folder / "zulu.csv").write_text(
        "date,open,high,low,close\n2024-01-02,10,11,9,10.5\n2024-01-03,10.5,10.4,10,10.2\n"
    )
    r = cli("data", "import", "--home", home, f"csv:{folder}")
    assert r.exit_code == 1
    one_error_line(r.stderr, "zulu.csv:3", "high")
    assert dump(home) == before


def test_failure_half_way_rolls_the_whole_import_back(cli: CLI, home: Path) -> None:
    """Bars finer than --interval are found only while importing (after the first bars
    went in): one error line naming the bars, exit 2, and nothing of the import stored."""
    imported(cli, home, "csv:sample", "--symbols", "ALPHA")
    before = dump(home)
    r = cli("data", "import", "--home", home, "synthetic:50,symbols=2,interval=1h")
    assert r.exit_code == 2
    one_error_line(r.stderr, "SYN0", "closer than --interval 1d", "nothing was imported")
    assert dump(home) == before


def test_write_bars_is_all_or_nothing_across_batches(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_bars whose input fails after several batches were written leaves nothing."""
    monkeypatch.setattr(sqlite_store, "BAR_BATCH", 7)
    bars = minute_bars(["A"], datetime(2024, 1, 2, tzinfo=UTC), 40)

    def failing() -> Iterator[Bar]:
        yield from bars[:30]
        raise ConfigError("bad row")

    with pytest.raises(ConfigError, match="bad row"):
        store.write_bars("1m", failing())
    assert store.bar_series() == []
    assert store.write_bars("1m", bars) == 40
    assert [(s.symbol, s.interval, s.count) for s in store.bar_series()] == [("A", "1m", 40)]


def test_import_errors_are_one_line(cli: CLI, home: Path) -> None:
    """Bad options, unknown sources, symbols or intervals: one line each, exit 2."""
    cases = [
        (("nosuch:x",), "unknown source 'nosuch'"),
        (("csv:sample", "--symbols", "ZULU"), "symbol 'ZULU' is not in csv:sample"),
        (("csv:sample", "--interval", "5x"), "bad bar interval '5x'"),
        (("csv:sample", "--from", "2022-02-01", "--to", "2022-01-01"), "--from is after --to"),
        (("csv:sample", "--from", "2030-01-01"), "has no bars in the chosen period"),
    ]
    for args, needle in cases:
        r = cli("data", "import", "--home", home, *args)
        assert r.exit_code == 2, (args, r.stderr)
        one_error_line(r.stderr, needle)


# ------------------------------------------------------------------------------ encoding


def test_values_are_exact_decimal_text_and_read_back_exactly(store: SQLiteStore) -> None:
    """Prices and volume are stored as the shortest plain decimal text of the float (the
    text Python's repr gives, without exponent) and read back as the same floats; times
    as ISO-8601 UTC text with microseconds; a missing volume stays None."""
    ts = datetime(2024, 3, 1, 14, 30, 0, 123456, tzinfo=ZoneInfo("America/New_York"))
    price = 0.1 + 0.2  # 0.30000000000000004
    bars = [
        Bar("X", ts, price, 1e16, 1e-05, 0.5, 1e-05),
        Bar("X", ts + timedelta(days=1), 101.25, 101.25, 101.25, 101.25, None),
    ]
    store.write_bars("1d", bars)
    conn = sqlite3.connect(store.path)
    rows = conn.execute("SELECT * FROM bars ORDER BY ts").fetchall()
    conn.close()
    assert rows[0] == (
        "X", "1d", "2024-03-01T19:30:00.123456Z", "0.30000000000000004",
        "10000000000000000", "0.00001", "0.5", "0.00001",
    )  # fmt: skip
    assert rows[1][3:] == ("101.25", "101.25", "101.25", "101.25", None)
    assert list(store.read_bars(["X"], "1d")) == bars


def test_sqlite_store_is_a_bar_store(store: SQLiteStore) -> None:
    """The SQLite store satisfies the BarStore protocol."""
    assert isinstance(store, BarStore)


def test_read_bars_orders_and_bounds_across_batches(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_bars yields (ts, symbol) order with inclusive bounds, however many queries
    it takes (a batch boundary falls inside the range), and a naive bound means UTC."""
    monkeypatch.setattr(sqlite_store, "BAR_BATCH", 4)
    start = datetime(2024, 1, 2, tzinfo=UTC)
    bars = minute_bars(["B", "A", "C"], start, 25)
    store.write_bars("1m", reversed(bars))
    assert list(store.read_bars(["A", "B", "C"], "1m")) == bars
    low, high = start + timedelta(minutes=5), start + timedelta(minutes=17)
    want = [b for b in bars if low <= b.ts <= high and b.symbol in ("A", "C")]
    naive = (low.replace(tzinfo=None), high.replace(tzinfo=None))
    assert list(store.read_bars(["C", "A"], "1m", *naive)) == want
    assert list(store.read_bars(["Z"], "1m")) == []


def test_a_schema_3_store_gains_the_bars_table(tmp_path: Path) -> None:
    """A store of schema 3 (before the bar store) opens as schema 4 with an empty bars
    table; its audit log still verifies."""
    data = tmp_path / "data"
    SQLiteStore.open(data).close()
    conn = sqlite3.connect(data / sqlite_store.DB_NAME)
    conn.execute("DROP TABLE bars")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with SQLiteStore.open(data) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone() == (sqlite_store.SCHEMA_VERSION,)
        assert sqlite_store.SCHEMA_VERSION == 4
        assert s.bar_series() == []
        assert s.write_bars("1m", minute_bars(["A"], datetime(2024, 1, 2, tzinfo=UTC), 3)) == 3
        assert s.verify_audit().ok


# ------------------------------------------------------------------------------ data list


def sample_series() -> list[dict[str, Any]]:
    """What the CSV files themselves say (read with the csv module, not Bastion)."""
    out = []
    for symbol in SAMPLE_SYMBOLS:
        with (SAMPLE_DATA / f"{symbol}.csv").open(newline="") as handle:
            days = [row["date"] for row in csv.DictReader(handle)]
        out.append(
            {
                "symbol": symbol,
                "interval": "1d",
                "first": f"{days[0]}T21:00:00Z",
                "last": f"{days[-1]}T21:00:00Z",
                "bars": len(days),
            }
        )
    return out


def test_data_list_json_and_table(cli: CLI, home: Path) -> None:
    """data list --json gives each series' symbol, interval, first/last close and count
    (as the CSV files have them); the table shows the same, intervals finest first, and
    the store's path."""
    imported(cli, home, "csv:sample")
    imported(cli, home, "synthetic:90,symbols=1,interval=1m", "--interval", "1m")
    r = cli("data", "list", "--json", "--home", home)
    assert r.exit_code == 0, r.stderr
    syn = {
        "symbol": "SYN0",
        "interval": "1m",
        "first": "2000-01-03T00:01:00Z",
        "last": "2000-01-03T01:30:00Z",
        "bars": 90,
    }
    assert json.loads(r.stdout) == [*sample_series(), syn]
    r = cli("data", "list", "--home", home)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = [line.split("│")[1:-1] for line in lines if line.startswith("│")]
    cells = [[cell.strip() for cell in row] for row in rows]
    header = next(line for line in lines if line.startswith("┃"))
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == [
        "symbol", "interval", "first", "last", "bars",
    ]  # fmt: skip
    assert cells == [
        *([s["symbol"], "1d", s["first"], s["last"], f"{s['bars']:,}"] for s in sample_series()),
        ["SYN0", "1m", syn["first"], syn["last"], "90"],
    ]
    assert lines[-1] == f"stored in {data_dir(home) / sqlite_store.DB_NAME}"


def test_data_list_with_nothing_stored_creates_nothing(cli: CLI, home: Path) -> None:
    """data list before any import says so, exits 0, prints [] with --json, and does not
    create the database."""
    r = cli("data", "list", "--home", home)
    assert r.exit_code == 0
    assert "no bars stored for the development environment yet" in r.stdout
    assert json.loads(cli("data", "list", "--json", "--home", home).stdout) == []
    assert not (data_dir(home) / sqlite_store.DB_NAME).exists()


# ------------------------------------------------------------------------------ store: source


def run_of(home: Path, run_id: str) -> Any:
    with SQLiteStore.open(data_dir(home)) as s:
        return s.load_run(run_id)


def backtest(cli: CLI, home: Path, *args: str) -> dict[str, Any]:
    r = cli("backtest", "--home", home, "--json", "--no-report", "--in-process", *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def unrun(fill: Fill) -> Fill:
    """The fill with its client order id's run-id prefix cut off (runs differ, fills not)."""
    return attrs.evolve(fill, order_id=fill.order_id.rsplit("-", 1)[-1])


def test_store_backtest_equals_csv_backtest(cli: CLI, home: Path) -> None:
    """Backtesting from store:SYMBOLS gives exactly the fills, equity curves, positions
    and metrics of the same backtest on the CSV files the bars came from."""
    imported(cli, home, "csv:sample")
    args = ("--from", "2022-01-01", "--to", "2023-06-30", "--cash", "50000")
    via_csv = backtest(cli, home, "--source", "csv:sample", *args)
    via_store = backtest(cli, home, "--source", "store:" + ",".join(SAMPLE_SYMBOLS), *args)
    assert via_csv["bars"] == via_store["bars"] > 0
    a, b = run_of(home, via_csv["run_id"]), run_of(home, via_store["run_id"])
    assert len(a.strategies) == len(b.strategies) == 2
    for x, y in zip(a.strategies, b.strategies, strict=True):
        assert x.executions, x.record.name
        assert [unrun(f) for f in x.executions] == [unrun(f) for f in y.executions]
        assert x.equity == y.equity
        assert x.positions == y.positions
        assert x.metrics == y.metrics
    assert a.benchmark == b.benchmark


def test_store_backtest_with_symbols_and_rollup(cli: CLI, home: Path) -> None:
    """store: with --symbols runs on the subset; interval=1h rolls stored 1m bars up (90
    minutes of one symbol: two 1h bars)."""
    imported(cli, home, "synthetic:90,symbols=2,interval=1m", "--interval", "1m")
    result = backtest(cli, home, "--source", "store:SYN0,SYN1,interval=1h", "--symbols", "SYN1")
    assert result["bars"] == 2


def test_store_source_errors_are_one_line(cli: CLI, home: Path) -> None:
    """A bad store: spec, an unknown symbol, an interval nothing rolls up into, or no
    store yet: one line naming the problem, exit 2."""
    r = cli("backtest", "--home", home, "--no-report", "--source", "store:ALPHA")
    assert r.exit_code == 2
    one_error_line(r.stderr, "no bars of 'ALPHA'", "'bastion data import' adds them")
    imported(cli, home, "csv:sample", "--symbols", "ALPHA")
    cases = [
        ("store:", "name the symbols"),
        ("store:ALPHA,colour=red", "unknown option 'colour'"),
        ("store:ALPHA,interval=1d,interval=1d", "option 'interval' is given twice"),
        ("store:ALPHA,interval=1q", "bad bar interval '1q'"),
        ("store:ZULU", "no bars of 'ZULU'"),
        ("store:ALPHA,interval=5m", "no bars to roll up into 5m bars (stored: ALPHA: 1d)"),
        ("store:ALPHA,interval=1d,tz=Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ]
    for spec, needle in cases:
        r = cli("backtest", "--home", home, "--no-report", "--source", spec)
        assert r.exit_code == 2, (spec, r.stderr)
        one_error_line(r.stderr, needle)


def test_parse_store_spec() -> None:
    """Symbols come sorted and unique; interval and tz are optional, tz defaults to UTC."""
    assert parse_store_spec(" MSFT, AAPL ,MSFT") == (("AAPL", "MSFT"), None, "UTC")
    assert parse_store_spec("AAPL,interval=5m,TZ=America/New_York") == (
        ("AAPL",),
        "5m",
        "America/New_York",
    )


def test_default_interval_is_the_finest_common_one(store: SQLiteStore) -> None:
    """Without interval=, the source reads the finest interval stored for every symbol."""
    start = datetime(2024, 1, 2, tzinfo=UTC)
    store.write_bars("1m", minute_bars(["A"], start, 10))
    store.write_bars("5m", rolled(minute_bars(["A", "B"], start, 10), 5, "UTC"))
    assert StoreSource(store, ["A"]).interval == "1m"
    source = StoreSource(store, ["A", "B"])
    assert (source.interval, source.rolled_from) == ("5m", None)
    assert StoreSource(store, ["A", "B"], "10m").rolled_from == "5m"


# ------------------------------------------------------------------------------ rollups


def minute_bars(symbols: Iterable[str], start: datetime, count: int) -> list[Bar]:
    """``count`` 1m bars per symbol from ``start`` (first close one minute later), with
    distinct prices, in (ts, symbol) order."""
    out = []
    for i in range(count):
        for k, symbol in enumerate(sorted(symbols)):
            base = 100 + k * 10 + math.sin(i / 7) * 5
            out.append(
                Bar(symbol, start + timedelta(minutes=i + 1), base, base + 1 + (i % 3), base - 1,
                    base + 0.25 * ((i % 5) - 2), float(100 + i))
            )  # fmt: skip
    return out


def rolled(bars: Iterable[Bar], minutes: int, tz: str) -> list[Bar]:
    """A naive reference rollup: each bar goes to the bucket that ends at the next
    multiple of ``minutes`` of local clock time after midnight (``minutes`` = 1440: the
    local date, the bar's ts being the day's last), then OHLCV by hand."""
    zone = ZoneInfo(tz)
    groups: dict[tuple[str, Any], list[Bar]] = {}
    for bar in bars:
        local = (bar.ts - TICK).astimezone(zone)
        day = local.date()
        if minutes == 1440:
            key: Any = day
        else:
            midnight = datetime.combine(day, time(), zone)
            elapsed = bar.ts.astimezone(zone).replace(tzinfo=None) - midnight.replace(tzinfo=None)
            end = -(-elapsed // timedelta(minutes=minutes)) * minutes
            key = (midnight.replace(tzinfo=None) + timedelta(minutes=end)).replace(tzinfo=zone)
        groups.setdefault((bar.symbol, key), []).append(bar)
    out = []
    for (symbol, key), members in groups.items():
        ts = members[-1].ts if minutes == 1440 else key.astimezone(UTC)
        volumes = [m.volume for m in members]
        volume = None if None in volumes else sum(v for v in volumes if v is not None)
        out.append(
            Bar(symbol, ts, members[0].open, max(m.high for m in members),
                min(m.low for m in members), members[-1].close, volume)
        )  # fmt: skip
    return sorted(out, key=lambda b: (b.ts, b.symbol))


@pytest.fixture
def minutes(store: SQLiteStore) -> list[Bar]:
    """Three days of 1m bars for two symbols from the synthetic source, with gaps (SYN1
    misses every 7th minute, SYN0 a whole hour and a half), stored as 1m bars."""
    source = SyntheticSource.open("4320,symbols=2,interval=1m,start=2024-03-04")
    bars = [
        b
        for b in source.bars()
        if not (b.symbol == "SYN1" and b.ts.minute % 7 == 0)
        and not (b.symbol == "SYN0" and datetime(2024, 3, 5, 13, 15, tzinfo=UTC) < b.ts
                 <= datetime(2024, 3, 5, 14, 45, tzinfo=UTC))
    ]  # fmt: skip
    store.write_bars("1m", bars)
    return bars


@pytest.mark.parametrize(
    ("interval", "minutes_", "tz"),
    [
        ("5m", 5, "UTC"),
        ("1h", 60, "UTC"),
        ("1h", 60, "Asia/Kolkata"),
        ("15m", 15, "America/New_York"),
        ("1d", 1440, "UTC"),
        ("1d", 1440, "America/New_York"),
    ],
)
def test_rollup_through_the_store_matches_a_naive_reference(
    store: SQLiteStore, minutes: list[Bar], interval: str, minutes_: int, tz: str
) -> None:
    """Stored 1m bars read through store:...,interval=I,tz=Z equal a naive by-hand
    aggregation (open first, high max, low min, close last, volume sum) by local-clock
    bucket or local trading date."""
    source = StoreSource(store, ["SYN0", "SYN1"], interval, tz)
    assert source.rolled_from == "1m"
    got = list(source.bars())
    assert got == rolled(minutes, minutes_, tz)
    assert len(got) > 4


@pytest.mark.parametrize(("interval", "tz"), [("1h", "Asia/Kolkata"), ("1d", "America/New_York")])
def test_rollup_with_a_period_keeps_whole_buckets(
    store: SQLiteStore, minutes: list[Bar], interval: str, tz: str
) -> None:
    """With start and end inside buckets, the source yields exactly the rolled-up bars
    of the whole data that close within [start, end], each from all its minutes."""
    source = StoreSource(store, ["SYN0", "SYN1"], interval, tz)
    everything = list(source.bars())
    start = datetime(2024, 3, 5, 3, 7, tzinfo=UTC)
    end = datetime(2024, 3, 6, 20, 33, tzinfo=UTC)
    want = [b for b in everything if start <= b.ts <= end]
    assert want and len(want) < len(everything)
    assert list(source.bars(["SYN1", "SYN0"], start, end)) == want
    assert list(source.bars(["SYN1"], start, end)) == [b for b in want if b.symbol == "SYN1"]


def test_rollup_refuses_coarser_stored_bars_mislabelled(store: SQLiteStore) -> None:
    """Bars stored under 1m that are really 5m apart but off the 15m grid are refused
    when rolled up (a one-line ConfigError), never silently relabelled."""
    start = datetime(2024, 1, 2, 9, 32, tzinfo=UTC)
    store.write_bars(
        "5m", [Bar("A", start + timedelta(minutes=5 * i), 10, 11, 9, 10, 1) for i in range(4)]
    )
    with pytest.raises(ConfigError, match="does not fit in one 15m bucket"):
        list(StoreSource(store, ["A"], "15m").bars())


def test_module_names_are_public() -> None:
    """The plugin's public names exist (a smoke check of its __all__)."""
    assert all(hasattr(bar_store, name) for name in bar_store.__all__)
