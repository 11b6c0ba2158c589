"""The ``postgresql`` store against a real PostgreSQL server (tests/postgres.py).

The Store contract itself is checked by the shared conformance suite
(tests/test_store_conformance.py runs it against SQLite and PostgreSQL); this module
pins what is PostgreSQL's own: the CLI end to end, results equal to SQLite's, several
kernel processes writing one audit chain at once, the database refusing edits to the
log, a database rewritten whole caught by the signed checkpoints, one-line errors
that never show a password, and host-aware ``interrupted``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bastion import audit
from bastion.audit import Checkpoints, verify
from bastion.interfaces import RunInfo, StrategyRecord
from bastion.plugins.postgres_store import PostgresStore, connection_url
from bastion.plugins.sqlite_store import SQLiteStore
from bastion.testing import StoreConformance

from . import postgres
from .conftest import CLI, REPO, one_error_line

BASTION = Path(sys.executable).with_name("bastion")


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A workspace holding a copy of the repository's signed example strategies."""
    home = tmp_path / "examples"
    shutil.copytree(REPO / "strategies", home / "strategies")
    shutil.copytree(REPO / "signatures", home / "signatures")
    return home


@pytest.fixture
def store(postgres_db: str) -> Iterator[PostgresStore]:
    with PostgresStore.open(postgres_db) as opened:
        yield opened


class TestPostgresStoreConformance(StoreConformance):
    """The storage conformance suite SQLite passes (tests/test_store_conformance.py), run
    against PostgreSQL: one suite for both stores."""

    @pytest.fixture
    def store(self, postgres_db: str) -> Iterator[PostgresStore]:
        store = PostgresStore.open(postgres_db)
        self._url = postgres_db
        yield store
        store.close()

    def reopen(self, store: Any) -> PostgresStore:
        store.close()
        return PostgresStore.open(self._url)


def _backtest(cli: CLI, home: Path, *args: str) -> dict[str, Any]:
    r = cli("backtest", "--home", home, "--json", "--no-report", "--source", "csv:sample", *args)
    assert r.exit_code == 0, r.output + r.stderr
    summary: dict[str, Any] = json.loads(r.stdout)
    return summary


def _strategies(store: Any, run_id: str) -> list[Any]:
    return list(store.load_run(run_id).strategies)


def test_a_backtest_stored_in_postgres_equals_the_same_backtest_in_sqlite(
    cli: CLI, examples: Path, postgres_db: str
) -> None:
    """The same backtest stored in PostgreSQL and in SQLite reads back identical (order
    ids aside, which embed the run id): every strategy's record, metrics, equity curve,
    positions, fills and rejections, and the benchmark; runs, report and audit verify
    work against the PostgreSQL URL."""
    in_pg = _backtest(cli, examples, "--storage", postgres_db)
    in_sqlite = _backtest(cli, examples)
    assert in_pg["store"] == postgres_db and in_pg["store"] != in_sqlite["store"]
    with (
        PostgresStore.open(postgres_db) as pg,
        SQLiteStore.open(examples / ".bastion" / "development") as lite,
    ):
        pg_run, lite_run = pg.load_run(in_pg["run_id"]), lite.load_run(in_sqlite["run_id"])
        # Order ids embed their run's id; apart from that the runs are the same.
        pg_text = repr(pg_run.strategies).replace(in_pg["run_id"], "RUN")
        assert pg_text == repr(lite_run.strategies).replace(in_sqlite["run_id"], "RUN")
        assert pg_run.benchmark == lite_run.benchmark
        assert sum(s.fills for s in pg_run.strategies) > 0
        assert pg_run.strategies[0].executions[0].price == (
            lite_run.strategies[0].executions[0].price
        )
    r = cli("runs", "--home", examples, "--storage", postgres_db, "--json")
    assert [row["run_id"] for row in json.loads(r.stdout)] == [in_pg["run_id"]]
    r = cli("audit", "verify", "--home", examples, "--storage", postgres_db)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == (f"audit log intact: 2 records, 1 signed checkpoint ({postgres_db})")
    r = cli("report", in_pg["run_id"][:12], "--home", examples, "--storage", postgres_db, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["run_id"] == in_pg["run_id"]


_PAPER_WRITER = """
import sys
from datetime import UTC, datetime
from decimal import Decimal
from bastion.interfaces import RunInfo, StrategyRecord
from bastion.models import Fill, Order, OrderIntent, Side
from bastion.plugins.postgres_store import PostgresStore

url, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
now = datetime.now(UTC)
run_id = f"paper-{tag}"
with PostgresStore.open(url) as store:
    store.begin_run(
        RunInfo(run_id, "paper", "paper", now, "test", {}),
        [StrategyRecord("s.py", "ab" * 32, "KEY", "k", 1, False, {})],
    )
    for i in range(count):
        intent = OrderIntent(symbol="AAA", side=Side.BUY, quantity=Decimal("1"))
        order = Order(f"{run_id}-{i}", "s.py", "ab" * 32, "KEY", intent, now)
        store.record_order(run_id, order, "accepted", None)
        fill = Fill(order.client_order_id, "AAA", Side.BUY, Decimal("1"), Decimal("10.5"),
                    Decimal("0.01"), now, exec_id=f"{tag}.{i}")
        store.record_fill(run_id, fill, order)
        store.update_order(run_id, order.client_order_id, "filled", None, Decimal("1"))
    store.finish_run(run_id, "completed", None)
"""


def test_several_kernels_writing_at_once_keep_one_verifiable_chain(
    examples: Path, postgres_db: str, tmp_path: Path
) -> None:
    """Three backtest processes and three paper-style writers (every order, fill and
    status an audit record) write one database at the same time; afterwards every run
    is completed, the log has exactly the records they wrote with ids 1..N and no
    gap, and 'bastion audit verify' finds the chain and every run intact, checked
    against the signed heads of all three backtests."""
    script = tmp_path / "writer.py"
    script.write_text(_PAPER_WRITER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    backtests = [
        subprocess.Popen(
            [
                str(BASTION),
                "backtest",
                "--home",
                str(examples),
                "--source",
                "csv:sample",
                "--storage",
                postgres_db,
                "--no-report",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(3)
    ]
    writers = [
        subprocess.Popen(
            [sys.executable, str(script), postgres_db, str(n), "15"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for n in range(3)
    ]
    try:
        for process in backtests + writers:
            _, err = process.communicate(timeout=180)
            assert process.returncode == 0, err.decode()
    finally:
        for process in backtests + writers:
            if process.poll() is None:
                process.kill()
                process.communicate()
    with PostgresStore.open(postgres_db) as store:
        runs = store.list_runs()
        assert len(runs) == 6 and {r.status for r in runs} == {"completed"}
        with store.audit_view() as view:
            ids = [record.id for record in view.records()]
        # 2 per backtest; per writer: started, 15 x (order, fill, order_status), finished
        assert ids == list(range(1, 3 * 2 + 3 * (2 + 15 * 3) + 1))
        check = verify(store, Checkpoints(examples / ".bastion" / "development"))
        assert check.ok, check.reason
    r = subprocess.run(
        [str(BASTION), "audit", "verify", "--home", str(examples), "--storage", postgres_db],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"audit log intact: {len(ids)} records, 3 signed checkpoints")


def _run(store: PostgresStore, run_id: str = "r1", kind: str = "backtest") -> None:
    now = datetime(2024, 1, 2, tzinfo=UTC)
    store.begin_run(
        RunInfo(run_id, kind, "development", now, "test", {"source": "x"}),
        [StrategyRecord("s.py", "cd" * 32, None, None, None, True, {})],
    )
    store.finish_run(run_id, "completed", None)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit SET event = 'x' WHERE id = 1",
        "DELETE FROM audit WHERE id = 2",
        "TRUNCATE audit",
        "INSERT INTO audit VALUES (1, 't', 'e', '{}', 'p', 'h')",
        "UPDATE audit_seq SET seq = 0",
        "DELETE FROM audit_seq",
    ],
)
def test_the_database_refuses_to_change_the_audit_log(
    store: PostgresStore, postgres_db: str, statement: str
) -> None:
    """Triggers refuse any update, delete, truncate or out-of-order insert of the log,
    and any step back of the highest id ever written, even to the table's owner."""
    _run(store)
    with (
        psycopg.connect(postgres_db, autocommit=True) as conn,
        pytest.raises(psycopg.errors.RaiseException, match=r"append-only|only grows"),
    ):
        conn.execute(statement)  # type: ignore[arg-type]
    assert verify(store).ok


def test_a_database_rewritten_whole_fails_against_the_signed_heads(
    store: PostgresStore, postgres_db: str, tmp_path: Path
) -> None:
    """Someone with the database owner's rights disables the triggers and rebuilds a
    consistent chain: the chain alone verifies, but the head signed at the run's end is
    no longer there, and verify says so."""
    _run(store)
    head = store_head(store)
    Checkpoints(tmp_path).append(head.id, head.hash, "r1", store.location)
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        rows = conn.execute("SELECT event, payload FROM audit ORDER BY id").fetchall()
        conn.execute("ALTER TABLE audit DISABLE TRIGGER USER")
        conn.execute("ALTER TABLE audit_seq DISABLE TRIGGER USER")
        conn.execute("DELETE FROM audit")
        conn.execute("UPDATE audit_seq SET seq = 0")
        conn.execute("ALTER TABLE audit ENABLE TRIGGER USER")
        conn.execute("ALTER TABLE audit_seq ENABLE TRIGGER USER")
    for event, payload in rows:
        store.audit(event, json.loads(payload))  # same records, re-sealed now
    assert verify(store).ok
    check = verify(store, Checkpoints(tmp_path))
    assert not check.ok and check.first_broken == head.id
    assert "no longer has the hash signed after run r1" in str(check.reason)


def store_head(store: PostgresStore) -> audit.AuditRecord:
    with store.audit_view() as view:
        last = view.last()
    assert last is not None
    return last


def test_bad_storage_urls_are_one_line_and_never_show_the_password(
    cli: CLI, examples: Path
) -> None:
    """A spec that is not a URL, and a server that does not answer, each give one line
    naming the URL (without its password) and what to do, exit 2, and no traceback."""
    r = cli("runs", "--home", examples, "--storage", "postgresql:nonsense")
    assert r.exit_code == 2
    one_error_line(r.stderr, "postgresql:nonsense", "postgresql://USER@HOST:PORT/DATABASE")
    port = postgres._free_port()  # nothing listens there
    url = f"postgresql://trader:s3cr3t@127.0.0.1:{port}/bastion"
    r = cli("runs", "--home", examples, "--storage", url)
    assert r.exit_code != 0
    one_error_line(r.stderr, "cannot connect to", f"postgresql://trader@127.0.0.1:{port}/bastion")
    assert "s3cr3t" not in r.stderr + r.stdout
    with pytest.raises(Exception, match="not a PostgreSQL URL"):
        connection_url("postgres", "//host-only")


def test_a_running_run_is_interrupted_only_when_its_own_host_says_so(
    store: PostgresStore, postgres_db: str
) -> None:
    """A run whose process is gone on this machine is 'interrupted' and unsettled; a
    run of another machine cannot be judged from here and stays 'running'."""
    now = datetime(2024, 1, 2, tzinfo=UTC)
    for run_id in ("mine", "theirs"):
        store.begin_run(
            RunInfo(run_id, "paper", "paper", now, "test", {}),
            [StrategyRecord("s.py", "cd" * 32, None, None, None, True, {})],
        )
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("UPDATE runs SET pid = %s", (int(dead.stdout),))
        conn.execute("UPDATE runs SET host = 'elsewhere' WHERE run_id = 'theirs'")
    status = {row.run_id: row.status for row in store.list_runs()}
    assert status == {"mine": "interrupted", "theirs": "running"}
    assert store.unsettled_runs("paper") == [("mine", "running")]


def test_timescaledb_makes_the_time_series_hypertables(postgres_db: str) -> None:
    """Where the TimescaleDB extension is installed, equity and benchmark are
    hypertables on their timestamps; where it is not, plain tables that work the same."""
    if not postgres.timescaledb_available(postgres_db):
        pytest.skip("TimescaleDB is not installed on this server (Debian does not package it)")
    with PostgresStore.open(postgres_db) as store:
        assert store.timescale
        _run(store)
    with psycopg.connect(postgres_db) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables"
            )
        }
    assert tables == {"equity", "benchmark"}


def test_plain_tables_without_timescaledb(store: PostgresStore, postgres_db: str) -> None:
    """Without the extension the store says so and keeps equity in a plain table, read
    back in time order with exact timestamps."""
    if postgres.timescaledb_available(postgres_db):
        pytest.skip("this server has TimescaleDB; the hypertable test covers it")
    assert store.timescale is False
    now = datetime(2024, 1, 2, 15, 30, 0, 123456, tzinfo=UTC)
    store.begin_run(
        RunInfo("eq", "backtest", "development", now, "test", {}),
        [StrategyRecord("s.py", "cd" * 32, None, None, None, True, {})],
    )
    store.record_equity("eq", "s.py", [(now, 100.5), (now.replace(minute=31), 101.25)])
    store.finish_run("eq", "completed", None)
    [strategy] = store.load_run("eq").strategies
    assert strategy.equity == [(now, 100.5), (now.replace(minute=31), 101.25)]
    with psycopg.connect(postgres_db) as conn:
        kind = conn.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'equity' AND column_name = 'ts'"
        ).fetchone()
    assert kind == ("timestamp with time zone",)


def test_the_schema_is_created_once_by_concurrent_openers(postgres_db: str) -> None:
    """Several processes opening an empty database at once create the schema exactly
    once (an advisory lock), and all of them can then write."""
    code = textwrap.dedent(
        """
        import sys
        from bastion.plugins.postgres_store import PostgresStore
        with PostgresStore.open(sys.argv[1]) as store:
            store.audit("hello", {"n": 1})
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, postgres_db], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    with PostgresStore.open(postgres_db) as store, store.audit_view() as view:
        assert [r.id for r in view.records()] == [1, 2, 3, 4]


def test_storage_comes_from_the_flag_the_variable_or_bastion_toml(
    cli: CLI, examples: Path, postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --storage, BASTION_STORAGE and then ``storage`` in the environment's table
    of bastion.toml choose the store (runs land in PostgreSQL); 'bastion env' shows the
    setting and its source with any password hidden; --storage sqlite still wins."""
    (examples / "bastion.toml").write_text(
        f'[environments.development]\nstorage = "{postgres_db}"\n'
    )
    summary = _backtest(cli, examples)
    assert summary["store"] == postgres_db
    r = cli("env", "--home", examples, "--json")
    assert json.loads(r.stdout)["storage"] == {
        "value": postgres_db,
        "source": str(examples / "bastion.toml"),
    }
    assert _backtest(cli, examples, "--storage", "sqlite")["store"].endswith("bastion.db")
    secret_url = postgres_db.replace("postgres@", "postgres:hunter2@")
    monkeypatch.setenv("BASTION_STORAGE", secret_url)
    r = cli("env", "--home", examples, "--json")
    shown = json.loads(r.stdout)["storage"]
    assert shown["source"] == "BASTION_STORAGE" and "hunter2" not in r.stdout
    assert shown["value"] == postgres_db.replace("postgres@", "postgres:***@")
    r = cli("runs", "--home", examples, "--json")
    assert r.exit_code == 0, r.stderr
    assert [row["run_id"] for row in json.loads(r.stdout)] == [summary["run_id"]]
    assert "hunter2" not in r.stdout + r.stderr


def _bars(symbol: str, count: int, start: datetime) -> list[Any]:
    from datetime import timedelta

    from bastion.models import Bar

    return [
        Bar(symbol, start + timedelta(minutes=i), 100.1 + i, 101.3 + i, 99.7 + i,
            99.9 + i + (i % 3) / 7, None if i % 7 == 0 else 1000.0 + i)
        for i in range(count)
    ]  # fmt: skip


def test_bars_round_trip_exactly_in_time_then_symbol_order(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PostgreSQL store is a BarStore: bars read back as the same floats, UTC times and
    None volumes, ordered by (ts, symbol) across read batches, bounded inclusively; a
    second write of the same bars is an upsert that changes nothing; the series list
    names each (symbol, interval) with its first, last and count."""
    from datetime import timedelta

    from bastion.interfaces import BarStore
    from bastion.plugins import postgres_store

    monkeypatch.setattr(postgres_store, "BAR_BATCH", 7)
    assert isinstance(store, BarStore)
    t0 = datetime(2024, 3, 1, 14, 30, 0, 250000, tzinfo=UTC)
    given = _bars("MSFT", 40, t0) + _bars("AAPL", 40, t0)
    assert store.write_bars("1m", given) == 80
    assert store.write_bars("1m", reversed(given)) == 80
    got = list(store.read_bars(["MSFT", "AAPL"], "1m"))
    assert got == sorted(given, key=lambda bar: (bar.ts, bar.symbol))
    assert got[0].volume is None and got[0].ts.tzinfo is UTC
    window = list(
        store.read_bars(["AAPL"], "1m", t0 + timedelta(minutes=5), t0 + timedelta(minutes=9))
    )
    assert [bar.ts for bar in window] == [t0 + timedelta(minutes=m) for m in range(5, 10)]
    assert list(store.read_bars(["AAPL"], "5m")) == []
    series = store.bar_series()
    assert [(s.symbol, s.interval, s.first, s.last, s.count) for s in series] == [
        (symbol, "1m", t0, t0 + timedelta(minutes=39), 40) for symbol in ("AAPL", "MSFT")
    ]


def test_a_bar_import_failing_half_way_stores_nothing(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_bars is all or nothing: bad input after several batches were sent leaves no
    bar of that call stored."""
    from bastion.plugins import postgres_store

    monkeypatch.setattr(postgres_store, "BAR_BATCH", 5)
    t0 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)

    def broken() -> Iterator[Any]:
        yield from _bars("AAPL", 23, t0)
        raise ValueError("bad row in data/AAPL.csv:24")

    with pytest.raises(ValueError, match=r"AAPL\.csv:24"):
        store.write_bars("1m", broken())
    assert store.bar_series() == []


def test_bars_imported_into_postgres_are_backtested_from_it(
    cli: CLI, examples: Path, postgres_db: str
) -> None:
    """'bastion data import' into PostgreSQL, 'data list' from it, and a backtest with
    --source store: and --storage postgresql://... reads the bars from that database (the
    run's own store), trading exactly like the same backtest on the CSV files."""
    r = cli("data", "import", "csv:sample", "--home", examples, "--storage", postgres_db)
    assert r.exit_code == 0, r.stderr
    assert f"({postgres_db})" in r.stdout
    r = cli("data", "list", "--home", examples, "--storage", postgres_db, "--json")
    series = json.loads(r.stdout)
    assert series and {row["interval"] for row in series} == {"1d"}
    symbols = ",".join(sorted(row["symbol"] for row in series))
    from_store = _backtest_from(cli, examples, f"store:{symbols}", "--storage", postgres_db)
    from_csv = _backtest_from(cli, examples, "csv:sample")
    assert from_store["bars"] == from_csv["bars"] > 0
    assert [s["metrics"] for s in from_store["strategies"]] == [
        s["metrics"] for s in from_csv["strategies"]
    ]
    r = cli("data", "list", "--home", examples, "--json")  # nothing went to SQLite
    assert json.loads(r.stdout) == []


def _backtest_from(cli: CLI, home: Path, source: str, *args: str) -> dict[str, Any]:
    r = cli("backtest", "--home", home, "--json", "--no-report", "--source", source, *args)
    assert r.exit_code == 0, r.output + r.stderr
    summary: dict[str, Any] = json.loads(r.stdout)
    return summary
