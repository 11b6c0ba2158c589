"""A throw-away PostgreSQL server for the test suite: its own cluster, on 127.0.0.1 only.

:func:`running_server` finds the server binaries (Debian's ``/usr/lib/postgresql/N/bin``,
newest first, else ``initdb`` on ``PATH``), creates a cluster in a fresh temp folder with
``initdb`` (trust authentication, UTF-8, C locale, no fsync: nothing in it outlives the
session), starts it with ``pg_ctl`` listening on 127.0.0.1 only, on a free port, with its
unix socket inside the temp folder, waits until it accepts connections, creates the
database :data:`DBNAME`, and on the way out stops it (``pg_ctl stop -m fast``) and removes
the folder, whatever ended the session (a failure, Ctrl-C; an ``atexit`` hook backs the
``finally`` up).

PostgreSQL refuses to run as root, so when the tests run as root (as CI does) the cluster
belongs to an unprivileged account, the ``postgres`` system user the Debian package
creates or else ``nobody``: the temp folder is handed to it and ``initdb``, ``pg_ctl`` and
so the server run under its uid and gid, with no supplementary groups (what
``runuser -u USER --`` does, without depending on util-linux or a PAM session). The
Debian cluster service (``postgresql@15-main``) is neither needed nor touched.

tests/conftest.py turns this into the session fixture ``postgres_url`` and the
per-test fixture ``postgres_db`` (:meth:`Server.database`: a fresh empty database,
dropped afterwards). Missing binaries fail those tests with one line
(:data:`INSTALL_HINT`), unless ``BASTION_TEST_POSTGRES=skip`` asks to skip them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

__all__ = [
    "DBNAME",
    "INSTALL_HINT",
    "MODE_VAR",
    "Server",
    "find_bindir",
    "running_server",
    "timescaledb_available",
    "unavailable",
]

MODE_VAR = "BASTION_TEST_POSTGRES"
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: run .ci/run as root, "
    "or apt-get install postgresql"
)
#: The database the session server creates; ``postgres_url`` points at it.
DBNAME = "bastion_test"
#: Accounts that may own the cluster when the tests run as root, in order of preference.
SERVER_ACCOUNTS = ("postgres", "nobody")
HOST = "127.0.0.1"
#: How long the server may take to start or stop (a slow CI machine takes a few seconds).
STARTUP_TIMEOUT = 60
_BINARIES = ("initdb", "pg_ctl", "postgres")


def find_bindir(candidates: Iterable[Path] | None = None) -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``.

    Looks in ``candidates`` when given (for tests), else in Debian's
    ``/usr/lib/postgresql/*/bin`` (highest version first) and then beside ``initdb``
    on ``PATH``."""
    if candidates is None:
        versioned = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)],
            reverse=True,
        )
        on_path = shutil.which("initdb")
        candidates = [*versioned, *([Path(on_path).resolve().parent] if on_path else [])]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in _BINARIES):
            return folder
    return None


def unavailable(environ: Mapping[str, str]) -> NoReturn:
    """Stop a test that needs PostgreSQL when the binaries are missing: a failure with
    :data:`INSTALL_HINT`, or a skip when ``BASTION_TEST_POSTGRES=skip``."""
    mode = environ.get(MODE_VAR, "")
    if mode == "skip":
        pytest.skip(f"{MODE_VAR}=skip and {INSTALL_HINT}")
    if mode:
        pytest.fail(f"{MODE_VAR}={mode!r}: the only value it takes is 'skip'", pytrace=False)
    pytest.fail(INSTALL_HINT, pytrace=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class Server:
    """A running throw-away cluster: its URLs, fresh databases, and how to stop it."""

    def __init__(self, bindir: Path, root: Path, account: pwd.struct_passwd | None) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "server.log"
        #: ``None`` when the tests are not root and the server runs as the current user.
        self.account = account
        self.user = account.pw_name if account else pwd.getpwuid(os.getuid()).pw_name
        self.port = 0
        self._started = False

    def url(self, dbname: str = DBNAME) -> str:
        """``postgresql://USER@127.0.0.1:PORT/DBNAME``."""
        return f"postgresql://{quote(self.user, safe='')}@{HOST}:{self.port}/{quote(dbname)}"

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """Run one of the server's binaries as the cluster's owner; raise with its output
        when it fails."""
        done = self._run(*args)
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} exited with {done.returncode}:\n{done.stdout}{self._log()}"
            )
        return done

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        # The developer's PG* variables (PGDATA, PGPORT, PGHOST...) must not steer the tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        owner: dict[str, object] = {}
        if self.account is not None:
            owner = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(a) for a in args],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            **owner,
        )

    def _log(self) -> str:
        try:
            return "server log:\n" + self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def create(self) -> None:
        """``initdb`` a cluster in ``root/data`` and write its settings."""
        if self.account is not None:
            os.chown(self.root, self.account.pw_uid, self.account.pw_gid)
        self.run(
            self.bindir / "initdb",
            "--pgdata",
            self.data,
            "--username",
            self.user,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )
        self.sockets.mkdir(mode=0o700)
        if self.account is not None:
            os.chown(self.sockets, self.account.pw_uid, self.account.pw_gid)
        settings = [
            f"listen_addresses = '{HOST}'",
            f"unix_socket_directories = '{self.sockets}'",
            # A throw-away cluster: durability only costs time.
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            # Several kernels at once against one database need room for their connections.
            "max_connections = 200",
        ]
        if (Path(self._pg_config("--pkglibdir")) / "timescaledb.so").exists():
            settings.append("shared_preload_libraries = 'timescaledb'")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/postgres.py\n" + "\n".join(settings) + "\n")

    def _pg_config(self, flag: str) -> str:
        pg_config = self.bindir / "pg_config"
        if not os.access(pg_config, os.X_OK):
            return ""
        return self.run(pg_config, flag).stdout.strip()

    def start(self, attempts: int = 5) -> None:
        """Start on a free port (another free one if it is taken meanwhile) and wait
        until the server accepts connections."""
        for attempt in range(attempts):
            self.port = _free_port()
            self._started = True  # from here on, stop() has something to do
            done = self._run(
                self.bindir / "pg_ctl",
                "start",
                "--pgdata",
                self.data,
                "--log",
                self.log,
                "--wait",
                "--timeout",
                str(STARTUP_TIMEOUT),
                "-o",
                f"-p {self.port}",
            )
            if done.returncode == 0:
                break
            if "could not bind" in self._log() and attempt + 1 < attempts:
                self.log.unlink(missing_ok=True)
                continue
            raise RuntimeError(f"pg_ctl start failed:\n{done.stdout}{self._log()}")
        self._wait_for_connections()

    def _wait_for_connections(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=5).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; if that fails, an immediate shutdown by signal."""
        if not self._started:
            return
        self._started = False
        done = self._run(
            self.bindir / "pg_ctl",
            "stop",
            "--pgdata",
            self.data,
            "--mode",
            "fast",
            "--wait",
            "--timeout",
            str(STARTUP_TIMEOUT),
        )
        if done.returncode != 0:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGQUIT)

    def execute(self, statement: sql.Composable | str, dbname: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(statement)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh empty database with a unique name; yields its URL, drops it afterwards
        (with ``FORCE``: connections a test left open do not keep it alive)."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self.url(name)
        finally:
            self.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _server_account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in SERVER_ACCOUNTS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(
        f"running as root and none of the accounts {', '.join(SERVER_ACCOUNTS)} exists "
        "to own the PostgreSQL test cluster"
    )


@contextlib.contextmanager
def running_server(bindir: Path) -> Iterator[Server]:
    """A new cluster, started, with :data:`DBNAME` created; stopped and deleted on exit."""
    root = Path(tempfile.mkdtemp(prefix="bastion-pg-"))
    server = Server(bindir, root, _server_account())

    def cleanup() -> None:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(cleanup)  # should the finally below never run
    try:
        server.create()
        server.start()
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DBNAME)))
        yield server
    finally:
        cleanup()
        atexit.unregister(cleanup)


def timescaledb_available(url: str) -> bool:
    """Whether the server at ``url`` can create the TimescaleDB extension: it is among
    ``pg_available_extensions`` and its library is preloaded (which the extension
    requires; :func:`running_server` preloads it when it is installed)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
            " current_setting('shared_preload_libraries')"
        ).fetchone()
    assert row is not None
    available, preload = row
    return bool(available) and "timescaledb" in [p.strip() for p in str(preload).split(",")]
