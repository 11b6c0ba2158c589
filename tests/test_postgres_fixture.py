"""The PostgreSQL test server (tests/postgres.py and its fixtures in conftest.py).

The storage plugin for PostgreSQL is tested against this server, so these tests pin that
it is real, reachable through psycopg on 127.0.0.1 and nowhere else, gives each test a
database of its own, cleans up after itself, and that a machine without PostgreSQL fails
the tests loudly instead of skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from . import postgres


def _databases(server: postgres.Server) -> set[str]:
    with psycopg.connect(server.url("postgres")) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def _user_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return [row[0] for row in rows]


def test_the_server_answers_through_psycopg_on_localhost(postgres_url: str) -> None:
    """postgres_url is postgresql://USER@127.0.0.1:PORT/bastion_test, and a TCP connection
    to it runs a query."""
    assert postgres_url.startswith("postgresql://")
    assert "@127.0.0.1:" in postgres_url
    assert postgres_url.endswith("/" + postgres.DBNAME)
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            "SELECT host(inet_server_addr()), current_database(), 6 * 7, version()"
        ).fetchone()
    assert row is not None
    address, database, answer, version = row
    assert (address, database, answer) == ("127.0.0.1", postgres.DBNAME, 42)
    assert version.startswith("PostgreSQL ")


def test_the_server_listens_on_localhost_only(
    postgres_url: str, postgres_server: postgres.Server
) -> None:
    """No network interface but 127.0.0.1, and the unix socket sits in the session's temp
    folder (not /var/run/postgresql, which a system cluster may use)."""
    with psycopg.connect(postgres_url) as conn:
        listen = conn.execute("SHOW listen_addresses").fetchone()
        sockets = conn.execute("SHOW unix_socket_directories").fetchone()
    assert listen == ("127.0.0.1",)
    assert sockets == (str(postgres_server.sockets),)
    assert postgres_server.sockets.is_relative_to(postgres_server.root)


def test_fresh_databases_are_distinct_empty_and_dropped(
    postgres_server: postgres.Server,
) -> None:
    """Two databases from Server.database (what postgres_db yields) have different names,
    start empty, do not share tables, and are dropped on exit even with a connection
    the test left open."""
    with postgres_server.database() as first, postgres_server.database() as second:
        assert first != second
        names = {url.rsplit("/", 1)[1] for url in (first, second)}
        assert len(names) == 2
        assert names <= _databases(postgres_server)
        assert _user_tables(first) == _user_tables(second) == []
        left_open = psycopg.connect(first, autocommit=True)
        left_open.execute("CREATE TABLE bars (symbol text)")
        assert _user_tables(first) == ["bars"]
        assert _user_tables(second) == []
    assert not names & _databases(postgres_server)
    assert _is_dead(left_open)
    left_open.close()


def _is_dead(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


@pytest.fixture
def dropped_after_the_test(postgres_server: postgres.Server) -> Iterator[list[str]]:
    """Listed before postgres_db in a test's arguments, so set up before it and torn down
    after it: then the test's database must be gone."""
    names: list[str] = []
    yield names
    assert names, "the test did not say which database to check"
    assert not set(names) & _databases(postgres_server)


def test_the_postgres_db_fixture_gives_an_empty_database_and_drops_it(
    dropped_after_the_test: list[str], postgres_db: str, postgres_server: postgres.Server
) -> None:
    """postgres_db is a database of its own (not the session's bastion_test), empty, on
    127.0.0.1; after the test it no longer exists (checked by the fixture above)."""
    name = postgres_db.rsplit("/", 1)[1]
    assert name != postgres.DBNAME
    assert name in _databases(postgres_server)
    assert "@127.0.0.1:" in postgres_db
    assert _user_tables(postgres_db) == []
    with psycopg.connect(postgres_db) as conn:
        conn.execute("CREATE TABLE leftover (x int)")
    dropped_after_the_test.append(name)


def test_a_server_is_stopped_and_removed_even_on_keyboard_interrupt(
    postgres_server: postgres.Server,
) -> None:
    """running_server stops its server and deletes its folder when the session is
    interrupted (Ctrl-C), not only on a clean exit."""
    with pytest.raises(KeyboardInterrupt), postgres.running_server(postgres_server.bindir) as other:
        url, root = other.url(), other.root
        psycopg.connect(url).close()
        assert other.port != postgres_server.port
        raise KeyboardInterrupt
    assert not root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=10)


def test_binaries_are_found_in_a_folder_that_has_all_three(tmp_path: Path) -> None:
    """find_bindir wants initdb, pg_ctl and postgres, executable, in one folder."""
    partial, full = tmp_path / "partial", tmp_path / "full"
    for folder, names in (
        (partial, ["initdb", "pg_ctl"]),
        (full, ["initdb", "pg_ctl", "postgres"]),
    ):
        folder.mkdir()
        for name in names:
            (folder / name).write_text("#!/bin/sh\n")
            os.chmod(folder / name, 0o755)
    assert postgres.find_bindir([partial]) is None
    assert postgres.find_bindir([partial, full]) == full


def test_missing_binaries_fail_in_one_line_unless_skip_is_asked() -> None:
    """Without PostgreSQL the tests fail, naming the fix, in one line: a silent skip would
    hide an untested storage plugin. BASTION_TEST_POSTGRES=skip skips them on purpose;
    any other value is a mistake and fails."""
    with pytest.raises(pytest.fail.Exception) as failed:
        postgres.unavailable({})
    message = str(failed.value)
    assert "\n" not in message
    assert ".ci/run" in message and "apt-get install postgresql" in message
    assert not failed.value.pytrace

    with pytest.raises(pytest.skip.Exception) as skipped:
        postgres.unavailable({postgres.MODE_VAR: "skip"})
    assert "BASTION_TEST_POSTGRES=skip" in str(skipped.value)

    with pytest.raises(pytest.fail.Exception) as typo:
        postgres.unavailable({postgres.MODE_VAR: "yes"})
    assert "'skip'" in str(typo.value)


def test_timescaledb_detection_agrees_with_the_server(postgres_url: str) -> None:
    """timescaledb_available is False unless the extension is installed and preloaded
    (Debian's own repositories do not ship it, so on CI it is False)."""
    with psycopg.connect(postgres_url) as conn:
        installed = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone() == (1,)
    available = postgres.timescaledb_available(postgres_url)
    assert isinstance(available, bool)
    if not installed:
        assert available is False
