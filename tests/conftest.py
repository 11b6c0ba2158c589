"""Shared fixtures: a throw-away workspace with freshly generated keys, and a CLI runner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner, Result

from bastion import Environment, Gate, Kernel, Refusal, Status, Strategy, Workspace
from bastion._host import Launcher, in_process
from bastion._keys import SigningKey, generate_key
from bastion._sandbox import SandboxConfig, sandboxed
from bastion._signing import sign_strategies
from bastion._trust import TrustStore
from bastion.cli import build_cli

from . import postgres

REPO = Path(__file__).resolve().parent.parent

GOOD_STRATEGY = """\
from bastion import strategy

PARAMS = {"n": 3}


@strategy.hook
def on_bar(ctx, bar):
    pass
"""


# Read at import: the autouse fixture below clears BASTION_* around every test.
_POSTGRES_MODE = {postgres.MODE_VAR: os.environ.get(postgres.MODE_VAR, "")}


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test sees the developer's Bastion settings, keys or home directory."""
    for name in list(os.environ):
        if name.startswith("BASTION_"):
            monkeypatch.delenv(name)
    fake_home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(fake_home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(fake_home / ".config"))


@attrs.define
class WS:
    """A workspace in a temp folder, with helpers to write, sign and admit strategies."""

    home: Path
    keys_dir: Path
    environment: Environment = Environment.DEVELOPMENT
    _keys: dict[str, SigningKey] = attrs.Factory(dict)
    #: Where ``admit`` loads strategies: in this process unless a test asks for the sandbox.
    launcher: Launcher = in_process
    admitted: list[Strategy] = attrs.Factory(list)

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.home, self.environment)

    @property
    def strategies(self) -> Path:
        return self.home / "strategies"

    @property
    def signatures(self) -> Path:
        return self.home / "signatures"

    def key(self, name: str = "alice", *, trust: bool = True) -> SigningKey:
        if name not in self._keys:
            self._keys[name] = generate_key(name, self.keys_dir)
            if trust:
                TrustStore.load(self.signatures).add(self.keys_dir / f"{name}.pub")
        return self._keys[name]

    def write(self, name: str, source: str | bytes = GOOD_STRATEGY) -> Path:
        path = self.strategies / name
        path.write_bytes(source.encode() if isinstance(source, str) else source)
        return path

    def sign(
        self,
        *names: str,
        key: SigningKey | None = None,
        valid_for: timedelta = timedelta(days=30),
        now: datetime | None = None,
    ) -> None:
        sign_strategies(self.workspace, key or self.key(), names, valid_for=valid_for, now=now)

    def gate(self, **kwargs: object) -> Gate:
        return Gate(self.workspace, **kwargs)  # type: ignore[arg-type]

    def admit(
        self, name: str, launcher: Launcher | None = None, **kwargs: object
    ) -> Strategy | Refusal:
        outcome = self.gate(**kwargs).admit(self.strategies / name, launcher or self.launcher)
        if isinstance(outcome, Strategy):
            self.admitted.append(outcome)
        return outcome

    def status(self, name: str, **kwargs: object) -> Status:
        outcome = self.admit(name, **kwargs)
        return outcome.status if isinstance(outcome, Refusal) else outcome.info.status


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[WS]:
    home = tmp_path / "ws"
    (home / "strategies").mkdir(parents=True)
    (home / "signatures").mkdir()
    workspace = WS(home=home, keys_dir=tmp_path / "keys")
    yield workspace
    for strategy in workspace.admitted:  # a worker a test left running is stopped
        strategy.close()


@pytest.fixture(params=["in-process", "sandboxed"])
def any_host(request: pytest.FixtureRequest, ws: WS) -> Iterator[str]:
    """Run the test once with strategies in this process and once in sandboxed workers;
    ``ws.admit`` uses that host."""
    if request.param == "sandboxed":
        ws.launcher = sandboxed(SandboxConfig(deadline=30.0))
    yield request.param


@pytest.fixture
def signed_ws(ws: WS) -> WS:
    """A workspace with one good strategy, signed and whitelisted by a trusted key."""
    ws.write("good.py")
    ws.sign("good.py")
    return ws


@attrs.define
class CLI:
    runner: CliRunner
    kernel: Kernel

    def __call__(self, *args: str | os.PathLike[str], input: str | None = None) -> Result:
        cli = build_cli(self.kernel)
        return self.runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


@pytest.fixture
def cli() -> Iterator[CLI]:
    yield CLI(CliRunner(), Kernel())


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def one_error_line(stderr: str, *needles: str) -> None:
    """A user mistake is one line on stderr that names what is wrong, never a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.Server]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 for the whole session (tests/postgres.py);
    missing binaries fail the test, or skip it with BASTION_TEST_POSTGRES=skip."""
    bindir = postgres.find_bindir()
    if bindir is None:
        postgres.unavailable(_POSTGRES_MODE)
    with postgres.running_server(bindir) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: postgres.Server) -> str:
    """``postgresql://USER@127.0.0.1:PORT/bastion_test``, shared by the whole session."""
    return postgres_server.url()


@pytest.fixture
def postgres_db(postgres_server: postgres.Server) -> Iterator[str]:
    """The URL of a fresh empty database of its own, dropped after the test."""
    with postgres_server.database() as url:
        yield url
