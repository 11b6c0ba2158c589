"""Hostile strategies against the sandbox: every attack runs next to an honest strategy.

Each test signs a strategy that tries one thing an attacker would try from inside a
sandboxed worker, admits it with :func:`bastion._sandbox.sandboxed` and runs it with
the engine *together with* an ordinary strategy (it buys 10 on its first bar and logs
its fills and its end state).  Every test asserts four things:

1. the kernel survives: the run returns, every bar is processed, the store's audit
   chain verifies, the run and both strategies (and a quarantine) are stored, and no
   worker process is left behind;
2. the attempt failed, proven from outside the worker where that is possible (the
   127.0.0.1 listener the test opened got no connection, the file is not there, the
   secret is in no log record and no stored row, ``/proc`` shows the worker's limits
   and children as the kernel set them);
3. the honest strategy's results (orders, fills, positions, equity curve, metrics and
   its own log records) are exactly those of a reference run of it alone;
4. the hostile strategy was quarantined with the right kind, or, where it catches the
   error itself and carries on, it was not quarantined and its logged outcome says the
   attempt failed.

Strategy code cannot ``import os``; these strategies reach the worker's modules the way
a real attacker would, through ``().__class__.__base__.__subclasses__()``.

Layers: :func:`bastion._sandbox.probe` runs once, at import.  A test whose protection
comes from a layer the machine does not have does not pass silently and is not
skipped: it asserts that ``probe()`` reports every such layer inactive with a reason,
and says in the assertion message that the attempt would then succeed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import select
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog.testing

from bastion import Kernel, Strategy
from bastion._context import MAX_LOGS_PER_EVENT
from bastion._engine import Engine, EngineConfig, RunResult, StrategyResult
from bastion._host import Launcher, Layer, in_process
from bastion._sandbox import OUTPUT_CAP, OUTPUT_LINES, SandboxConfig, probe, sandboxed
from bastion.interfaces import RunInfo, StrategyRecord
from bastion.models import Bar
from bastion.plugins.sim import SimBroker
from bastion.plugins.sqlite_store import SQLiteStore

from .conftest import WS

# ------------------------------------------------------------------ the machine's layers

#: What a sandboxed worker reports on this machine, probed once.
LAYERS: dict[str, Layer] = {layer.name: layer for layer in probe()}
ROOT = os.geteuid() == 0
#: Dropping to ``nobody`` protects what belongs to root only when the kernel runs as root.
USER = ("user",) if ROOT else ()
MACHINE = platform.machine()
#: System call numbers the raw-syscall attacks use.
SYSCALLS = {
    "x86_64": {"kill": 62, "tgkill": 234, "clone": 56, "setrlimit": 160, "prlimit64": 302},
    "aarch64": {"kill": 129, "tgkill": 131, "clone": 220, "setrlimit": 164, "prlimit64": 261},
}


def _protected(attempt: str, *guards: str) -> bool:
    """Whether at least one layer stands between a strategy and ``attempt``.

    A guard is a layer name, optionally with a phrase its detail must contain
    (``"landlock:no TCP"``).  When no guard holds, assert that ``probe()`` reports each
    guarding layer as unavailable with a reason (so the test says so instead of
    passing or skipping silently), and return False: the attack is not run.
    """

    def holds(guard: str) -> bool:
        name, _, needs = guard.partition(":")
        layer = LAYERS[name]
        return layer.active and needs in layer.detail

    if any(holds(guard) for guard in guards):
        return True
    for guard in guards:
        name, _, needs = guard.partition(":")
        layer = LAYERS[name]
        consequence = (
            f"probe() reports none of {list(guards)} in force here, so {attempt} is "
            f"expected to SUCCEED on this machine; layer {name!r} says: {layer.detail!r}"
        )
        assert layer.detail.strip(), consequence
        if needs:
            assert needs not in layer.detail or not layer.active, consequence
        else:
            assert not layer.active, consequence
    return False


# ------------------------------------------------------------------ processes, from outside


def _worker_pids() -> set[int]:
    """The sandboxed workers this test process is running right now (from ``/proc``)."""
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me and b"bastion._worker" in command:
            found.add(int(entry))
    return found


def _children(pid: int) -> list[int]:
    """Every process whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _limits(pid: int) -> dict[str, tuple[str, str]]:
    """``/proc/PID/limits`` as ``{"Max cpu time": (soft, hard), ...}``."""
    limits = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        limits[name] = (soft, hard)
    return limits


# ------------------------------------------------------------------ bars and strategies

T0 = datetime(2024, 1, 1, 21, tzinfo=UTC)
SYMBOL = "AAA"
GOOD, HOSTILE = "good.py", "hostile.py"
REFERENCE_RUN, HOSTILE_RUN = "reference", "hostile"


def _bars(count: int) -> list[Bar]:
    """Bars whose every price occurs once: open, high, low and close of bar i differ from
    each other and from every price of every other bar."""
    bars = []
    for i in range(count):
        base = 100.0 + 2 * i
        bars.append(
            Bar(
                symbol=SYMBOL,
                ts=T0 + timedelta(days=i),
                open=base + 0.125,
                high=base + 1.375,
                low=base - 0.75,
                close=base + 0.5,
                volume=1e6 + i,
            )
        )
    return bars


BARS = _bars(6)

#: The honest strategy every attack runs next to.
GOOD_SOURCE = """\
from bastion import strategy


@strategy.hook
def on_bar(ctx, bar):
    if not ctx.state.get("bought"):
        ctx.state["bought"] = True
        ctx.order(bar.symbol, 10)


@strategy.hook
def on_fill(ctx, fill):
    ctx.log.info(
        "filled", ts=fill.ts.isoformat(), price=fill.price, quantity=fill.quantity,
        held=ctx.position(fill.symbol),
    )


@strategy.hook
def on_stop(ctx):
    ctx.log.info("stopped", equity=ctx.equity, cash=ctx.cash, held=ctx.position("AAA"))
"""

#: What every hostile strategy starts with: the worker's modules, reached without an import.
PRELUDE = """\
from bastion import strategy

PARAMS = {"arg": "", "path": "", "marker": "", "victim": "", "number": 0, "syscalls": ""}


def _modules():
    for cls in ().__class__.__base__.__subclasses__():
        found = getattr(getattr(cls, "__init__", None), "__globals__", None)
        if isinstance(found, dict) and "sys" in found:
            return found["sys"].modules
    raise LookupError("no way to sys.modules")


M = _modules()
os = M["os"]


def load(name):
    # A module of the worker's; the real import when it is not loaded yet.
    return M.get(name) or M["builtins"].__import__(name)


def tried(what, *args):
    # "failed: PermissionError EPERM", "failed: ValueError: why" or "succeeded: value"
    try:
        value = what(*args)
    except BaseException as exc:
        code = getattr(exc, "errno", None)
        if isinstance(exc, OSError) and code:
            return "failed: " + type(exc).__name__ + " " + load("errno").errorcode.get(code, "?")
        return "failed: " + type(exc).__name__ + ": " + str(exc)[:200]
    return "succeeded: " + repr(value)[:300]


def libc():
    return M["ctypes"].CDLL(None, use_errno=True)


def checked(result, what):
    # A libc call's -1 as the OSError it stands for.
    if result is None or result < 0:
        raise OSError(M["ctypes"].get_errno(), what)
    return result


def syscall(ctx, name):
    # This machine's number for system call ``name`` (the test passes them in).
    numbers = dict(item.split("=") for item in ctx.params["syscalls"].split(","))
    return int(numbers[name])


def first_bar(ctx):
    if ctx.state.get("done"):
        return False
    ctx.state["done"] = True
    return True
"""

#: For attacks that rewrite the worker's own code paths: put a replacement wherever the
#: worker holds the original (module attributes, closure cells, frame locals).
PATCHING = """

def replace_everywhere(original, replacement):
    ctypes = M["ctypes"]
    function = type(replace_everywhere)
    count = 0
    for module in list(M.values()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            for key, value in list(namespace.items()):
                if value is original:
                    namespace[key] = replacement
                    count += 1
    for obj in load("gc").get_objects():
        if type(obj) is function and obj.__closure__ and obj.__code__.co_filename != __file__:
            for cell in obj.__closure__:
                try:
                    held = cell.cell_contents
                except ValueError:
                    continue
                if held is original:
                    cell.cell_contents = replacement
                    count += 1
    frame = M["sys"]._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename != __file__:
            local = frame.f_locals
            hits = [key for key, value in local.items() if value is original]
            for key in hits:
                local[key] = replacement
            if hits:
                ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))
                count += len(hits)
        frame = frame.f_back
    if not count:
        raise LookupError("found nothing to replace: the worker changed; update this test")
    return count


def channel():
    # The worker's end of the shared memory, found on the stack by its type.
    kind = M["bastion._channel"].Channel
    frame = M["sys"]._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, kind):
                return value
        frame = frame.f_back
    raise LookupError("no Channel on the stack: the worker changed; update this test")
"""


def hostile(body: str, *, patching: bool = False) -> str:
    """A hostile strategy's source: the prelude (and the patching helpers), then ``body``."""
    return PRELUDE + (PATCHING if patching else "") + "\n" + body


# ------------------------------------------------------------------ running


def _feed(bars: list[Bar], observe: Callable[[int], None] | None) -> Iterator[Bar]:
    """The bars, lazily: ``observe(i)`` runs before bar ``i`` (i >= 1) is handed out,
    that is after every strategy answered bar ``i - 1``, while the workers still run."""
    for index, item in enumerate(bars):
        if index and observe is not None:
            observe(index)
        yield item


@attrs.frozen
class Run:
    run_id: str
    result: RunResult
    captured: list[dict[str, Any]]

    def strategy(self, name: str) -> StrategyResult:
        [found] = [s for s in self.result.strategies if s.name == name]
        return found

    def records(self, name: str, event: str | None = None) -> list[dict[str, Any]]:
        """Log records about strategy ``name`` (its own and the kernel's), in order."""
        return [
            r
            for r in self.captured
            if r.get("strategy") == name and (event is None or r["event"] == event)
        ]


class Harness:
    """The engine over the ``sim`` broker and the SQLite store, read through public APIs."""

    def __init__(self, ws: WS) -> None:
        self.ws = ws
        self.kernel = Kernel(entry_points=False)
        self.store = SQLiteStore.open(ws.workspace.ensure_data_dir())
        self.pids: dict[str, int] = {}  # the worker of the latest admission of each name
        self.started: set[int] = set()  # every worker this harness started

    def admit(self, *entries: tuple[str, Launcher]) -> list[Strategy]:
        """Admit ``(name, launcher)`` pairs together (through ``Gate.admit_many``: their
        workers start in parallel), noting which worker process serves which name."""
        pending = list(entries)

        def launch(info: Any, source: bytes) -> Any:
            name, launcher = pending.pop(0)
            assert info.name == name
            before = _worker_pids()
            host = launcher(info, source)
            started = _worker_pids() - before
            if started:
                [self.pids[name]] = started
                self.started |= started
            return host

        paths = [self.ws.strategies / name for name, _ in entries]
        outcomes = self.ws.gate().admit_many(paths, launch)
        admitted = [o for o in outcomes if isinstance(o, Strategy)]
        self.ws.admitted.extend(admitted)  # closed by the ws fixture, whatever happens
        assert admitted == outcomes, outcomes
        return admitted

    def run(
        self,
        run_id: str,
        strategies: list[Strategy],
        bars: list[Bar],
        params: dict[str, dict[str, Any]] | None = None,
        observe: Callable[[int], None] | None = None,
    ) -> Run:
        self.store.begin_run(
            RunInfo(run_id, "backtest", "development", T0, "test", {}),
            [
                StrategyRecord(s.name, s.info.sha256, s.info.signer, None, None, False, {})
                for s in strategies
            ],
        )
        engine = Engine(
            self.kernel,
            SimBroker.open("commission=none,slippage=0"),
            self.store,
            [(s, {**s.params, **(params or {}).get(s.name, {})}) for s in strategies],
            EngineConfig(
                run_id=run_id,
                environment="development",
                cash=Decimal(100000),
                symbols=frozenset({SYMBOL}),
            ),
        )
        with structlog.testing.capture_logs() as captured:
            try:
                result = engine.run(_feed(bars, observe))
            except BaseException as exc:  # the kernel must never die of a strategy
                description = object.__repr__(exc)  # not the class's own (hostile) code
                with contextlib.suppress(BaseException):
                    description += f": {BaseException.__str__(exc)[:300]}"
                del exc
                pytest.fail(f"the kernel's run raised {description}", pytrace=False)
        self.store.finish_run(run_id, "completed", None)
        return Run(run_id, result, captured)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.store.path)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def everything(self, run: Run) -> str:
        """Every log record of ``run`` and every row of every table, as one text."""
        parts = [repr(r) for r in run.captured]
        for (table,) in self.rows("SELECT name FROM sqlite_master WHERE type = 'table'"):
            parts.extend(repr(row) for row in self.rows(f"SELECT * FROM {table}"))
        return "\n".join(parts)

    def found(self, run: Run, needle: str) -> list[str]:
        """Where ``needle`` occurs: in a log record of ``run`` or any row of any table."""
        hits = [f"log record {r['event']!r}" for r in run.captured if needle in repr(r)]
        for (table,) in self.rows("SELECT name FROM sqlite_master WHERE type = 'table'"):
            hits.extend(
                f"a row of {table}"
                for row in self.rows(f"SELECT * FROM {table}")
                if needle in repr(row)
            )
        return hits

    def stored(self, run_id: str, name: str) -> dict[str, Any]:
        """Everything stored for strategy ``name`` in run ``run_id`` that must not depend on
        who else ran (client order ids and wall-clock times left out, and the signer, which
        is each test's own key: every stored row's signer is checked against the kernel's
        record in ``_assert_kernel_survived``)."""
        key = (run_id, name)
        return {
            "orders": self.rows(
                "SELECT strategy_sha256, symbol, side, quantity, type, limit_price, "
                "stop_price, tag, created, liquidation, status, reason, filled FROM orders "
                "WHERE run_id = ? AND strategy = ? ORDER BY client_order_id",
                *key,
            ),
            "fills": self.rows(
                "SELECT strategy_sha256, symbol, side, quantity, price, commission, ts "
                "FROM fills WHERE run_id = ? AND strategy = ? ORDER BY id",
                *key,
            ),
            "positions": self.rows(
                "SELECT symbol, quantity, avg_price, realized FROM positions "
                "WHERE run_id = ? AND strategy = ? ORDER BY symbol",
                *key,
            ),
            "equity": self.rows(
                "SELECT ts, equity FROM equity WHERE run_id = ? AND strategy = ? ORDER BY ts",
                *key,
            ),
            "strategy": self.rows(
                "SELECT sha256, metrics, quarantined FROM run_strategies "
                "WHERE run_id = ? AND name = ?",
                *key,
            ),
        }

    def view(self, run: Run, name: str) -> dict[str, Any]:
        """What strategy ``name`` got in ``run``: its result, what is stored for it and its log
        records (without the run id)."""
        s = run.strategy(name)
        return {
            "result": (s.quarantined, s.orders, s.fills, s.equity, dict(s.metrics), s.sandbox),
            "logs": [{k: v for k, v in r.items() if k != "run_id"} for r in run.records(name)],
            **self.stored(run.run_id, name),
        }


@pytest.fixture
def h(ws: WS) -> Iterator[Harness]:
    harness = Harness(ws)
    yield harness
    harness.store.close()


@attrs.frozen
class Attack:
    run: Run

    @property
    def result(self) -> StrategyResult:
        return self.run.strategy(HOSTILE)

    def outcomes(self) -> dict[str, str]:
        """What the hostile strategy logged as the outcome of each attempt."""
        return {r["what"]: r["outcome"] for r in self.run.records(HOSTILE, "attempt")}


def _honest(host: str) -> Launcher:
    return sandboxed(SandboxConfig()) if host == "sandboxed" else in_process


#: The honest strategy alone, per host and bars: what it must get whoever runs beside it.
_REFERENCES: dict[tuple[str, tuple[Bar, ...]], dict[str, Any]] = {}


def _reference(h: Harness, host: str, bars: list[Bar]) -> dict[str, Any]:
    """The honest strategy's view of a run of it alone over ``bars`` on ``host`` (run once
    per module: it is deterministic, and only the signing key differs between tests)."""
    key = (host, tuple(bars))
    if key not in _REFERENCES:
        [alone] = h.admit((GOOD, _honest(host)))
        _REFERENCES[key] = h.view(h.run(REFERENCE_RUN, [alone], bars), GOOD)
    return _REFERENCES[key]


def attack(
    h: Harness,
    source: str,
    *,
    config: SandboxConfig | None = None,
    host: str = "sandboxed",
    bars: list[Bar] = BARS,
    params: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
    observe: Callable[[int], None] | None = None,
) -> Attack:
    """Run ``source`` (as hostile.py) together with the honest strategy; assert what every
    attack must leave intact, against a reference run of the honest strategy alone."""
    h.ws.write(GOOD, GOOD_SOURCE)
    h.ws.write(HOSTILE, source)
    h.ws.sign(GOOD, HOSTILE)
    reference = _reference(h, host, bars)
    launcher = sandboxed(config or SandboxConfig()) if host == "sandboxed" else in_process
    good, bad = h.admit((GOOD, _honest(host)), (HOSTILE, launcher))
    chosen = {
        "syscalls": ",".join(f"{k}={v}" for k, v in SYSCALLS.get(MACHINE, {}).items()),
        **(params() if callable(params) else params or {}),
    }
    # The hostile strategy goes first: the honest one is asked after every attack.
    run = h.run(HOSTILE_RUN, [bad, good], bars, {HOSTILE: chosen}, observe)
    _assert_kernel_survived(h, run, bars)
    assert h.view(run, GOOD) == reference, "the honest strategy was affected"
    assert run.strategy(GOOD).quarantined is None and run.strategy(GOOD).fills == 1
    return Attack(run)


def _assert_kernel_survived(h: Harness, run: Run, bars: list[Bar]) -> None:
    result = run.result
    assert result.bars == len(bars)
    assert sorted(s.name for s in result.strategies) == [GOOD, HOSTILE]
    assert h.store.verify_audit().ok
    assert h.rows("SELECT status FROM runs WHERE run_id = ?", run.run_id) == [("completed",)]
    stored = dict(
        h.rows("SELECT name, quarantined FROM run_strategies WHERE run_id = ?", run.run_id)
    )
    assert stored == {s.name: s.quarantined for s in result.strategies}
    audited = [
        json.loads(payload)
        for (payload,) in h.rows("SELECT payload FROM audit WHERE event = 'strategy_quarantined'")
    ]
    audited = [a for a in audited if a["run_id"] == run.run_id]
    quarantined = [s for s in result.strategies if s.quarantined]
    assert sorted((a["strategy"], a["kind"]) for a in audited) == sorted(
        (s.name, s.quarantine_kind) for s in quarantined
    )
    # Every stored order and fill carries the identity the kernel holds for its strategy.
    for table in ("orders", "fills"):
        assert not h.rows(
            f"SELECT t.client_order_id FROM {table} t JOIN run_strategies r "
            "ON r.run_id = t.run_id AND r.name = t.strategy "
            "WHERE t.run_id = ? AND (t.strategy_sha256 != r.sha256 OR t.signer IS NOT r.signer)",
            run.run_id,
        )
    signers = h.rows("SELECT DISTINCT signer FROM run_strategies WHERE run_id = ?", run.run_id)
    assert signers == [(h.ws.key().id,)]
    assert not _worker_pids() & h.started, "a worker outlived its run"


#: How a refused system call looks from inside: an OSError with an errno.
REFUSED = re.compile(r"failed: \w+ E[A-Z0-9]+")


def _caught(attack_: Attack, *whats: str, also: frozenset[str] = frozenset()) -> dict[str, str]:
    """The hostile strategy caught every attempt itself: it was not quarantined, and each
    attempt's logged outcome says the system refused it (an OSError with an errno, or one
    of the outcomes in ``also``) - never a mistake of the strategy's own, which would make
    the test pass for nothing."""
    assert attack_.result.quarantined is None, attack_.result.quarantined
    outcomes = attack_.outcomes()
    assert sorted(outcomes) == sorted(whats), outcomes
    for what, outcome in outcomes.items():
        assert REFUSED.fullmatch(outcome) or outcome in also, f"{what}: {outcome}"
    return outcomes


def _quarantined(attack_: Attack, kind: str, *needles: str, hook: str = "on_bar") -> str:
    text = attack_.result.quarantined
    assert text is not None, "the hostile strategy was not quarantined"
    assert attack_.result.quarantine_kind == kind, text
    assert text.startswith(f"{kind}: {hook}: "), text
    for needle in needles:
        assert needle in text, text
    assert not attack_.run.records(HOSTILE, "attempt"), "the attempt returned"
    return text


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A fresh folder under the system temp dir that everyone may enter and write to, so
    that only the sandbox stands between a worker (running as nobody) and it."""
    path = Path(tempfile.mkdtemp(prefix="bastion-hostile-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ============================================================== the network


CONNECT = hostile(
    """
def with_libc(port):
    ctypes, struct = M["ctypes"], load("struct")
    c = libc()
    fd = checked(c.socket(2, 1, 0), "socket")  # AF_INET, SOCK_STREAM
    address = struct.pack("<H", 2) + struct.pack(">H", port) + bytes([127, 0, 0, 1]) + bytes(8)
    checked(c.connect(fd, address, len(address)), "connect")
    return fd


def with_module(port):
    sockets = M.get("_socket") or load("socket")
    s = sockets.socket(2, 1)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        attempt = {"libc": with_libc, "module": with_module}[ctx.params["arg"]]
        ctx.log.info("attempt", what="connect", outcome=tried(attempt, ctx.params["number"]))
"""
)


@pytest.mark.parametrize("vector", ["libc", "module"])
def test_connect_to_a_local_listener_fails(h: Harness, vector: str) -> None:
    """A strategy cannot open a TCP connection, not even to a listener on the machine's own
    127.0.0.1: the listener the test opened never sees a connection attempt (with
    ``socket()``+``connect()`` through libc, or the socket module if it can be loaded)."""
    if not _protected("a TCP connection to 127.0.0.1", "network", "seccomp", "landlock:no TCP"):
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        done = attack(h, CONNECT, params={"arg": vector, "number": port})
        readable, _, _ = select.select([listener], [], [], 0)
        assert readable == [], "the listener got a connection"
        with pytest.raises(BlockingIOError):
            listener.accept()
    # A worker that cannot even load the socket module (a standard library nobody may read,
    # as with a Python installed under /root) fails before the system call.
    _caught(
        done, "connect", also=frozenset({"failed: ModuleNotFoundError: No module named 'socket'"})
    )


# ============================================================== files


READ = hostile(
    """
def read_io(path):
    with M["io"].open(path, "rb") as f:
        return f.read(4096)


def read_os(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def read_libc(path):
    c = libc()
    fd = checked(c.open(path.encode(), 0), "open")
    buffer = M["ctypes"].create_string_buffer(4096)
    size = checked(c.read(fd, buffer, 4096), "read")
    return buffer.raw[:size]


VECTORS = {"io": read_io, "os": read_os, "libc": read_libc}


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        for path in ctx.params["path"].split("|"):
            for name, how in VECTORS.items():
                ctx.log.info("attempt", what=name + " " + path, outcome=tried(how, path))
        folder = ctx.params["arg"]
        if folder:
            ctx.log.info("attempt", what="list " + folder, outcome=tried(os.listdir, folder))
"""
)


def test_reading_etc_passwd_fails(h: Harness) -> None:
    """``/etc/passwd`` (world-readable) cannot be read through ``io.open``, ``os.open`` or
    libc's ``open(2)``; no line of it reaches a log record or a stored row."""
    if not _protected("reading /etc/passwd", "landlock"):
        return
    done = attack(h, READ, params={"path": "/etc/passwd"})
    _caught(done, "io /etc/passwd", "os /etc/passwd", "libc /etc/passwd")
    first_line = Path("/etc/passwd").read_text().splitlines()[0]
    assert h.found(done.run, first_line) == []


@pytest.mark.parametrize("mode", ["world-readable", "owner-only"])
def test_reading_the_operators_key_folder_fails(h: Harness, open_dir: Path, mode: str) -> None:
    """A private key in the operator's key folder (given to the strategy by its path) can be
    neither read nor listed, whether the folder is world-readable or the operator's alone;
    the key's content is in no log record and no stored row."""
    guards = ("landlock",) if mode == "world-readable" else ("landlock", *USER)
    if not _protected(f"reading a {mode} private key", *guards):
        return
    secret = f"RWRTY0Iy{uuid.uuid4().hex}{uuid.uuid4().hex}"
    key = open_dir / "operator.key"
    key.write_text(f"untrusted comment: minisign encrypted secret key\n{secret}\n")
    if mode == "world-readable":
        open_dir.chmod(0o755)
        key.chmod(0o644)
    else:
        open_dir.chmod(0o700)
        key.chmod(0o600)
    done = attack(h, READ, params={"path": str(key), "arg": str(open_dir)})
    _caught(done, f"io {key}", f"os {key}", f"libc {key}", f"list {open_dir}")
    assert h.found(done.run, secret) == []


ENVIRON = hostile(
    """
def read(path):
    with M["io"].open(path, "rb") as f:
        return f.read(65536)


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        parent = "/proc/%d/environ" % os.getppid()
        ctx.log.info("attempt", what="parent environ", outcome=tried(read, parent))
        ctx.log.info("attempt", what="parent environ (os)", outcome=tried(
            lambda: os.read(os.open(parent, os.O_RDONLY), 65536)))
        ctx.log.info("attempt", what="own /proc environ", outcome=tried(read, "/proc/self/environ"))
        name = ctx.params["arg"]
        ctx.log.info("environment", size=len(os.environ), lookup=repr(os.environ.get(name)),
                     getenv=repr(os.getenv(name)))
"""
)


def test_reading_the_parents_environment_fails(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's environment is out of reach: ``/proc/PARENT/environ`` cannot be read
    (no ``NAME=value`` of it reaches a log record or a stored row), and a secret planted in
    the kernel's environment before the workers start is not in the worker's own (empty)
    environment and appears nowhere either."""
    if not _protected("reading the kernel's /proc/PID/environ", "landlock", *USER):
        return
    name, secret = "HOSTILE_TEST_SECRET", f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv(name, secret)  # before any worker starts
    done = attack(h, ENVIRON, params={"arg": name})
    _caught(done, "parent environ", "parent environ (os)", "own /proc environ")
    [seen] = done.run.records(HOSTILE, "environment")
    assert (seen["size"], seen["lookup"], seen["getenv"]) == ("0", "None", "None")
    assert h.found(done.run, secret) == []
    # /proc/PID/environ holds the environment the process started with.
    started_with = Path(f"/proc/{os.getpid()}/environ").read_bytes().split(b"\0")
    everything = h.everything(done.run)
    leaked = [e for e in started_with if len(e) >= 8 and e.decode("utf-8", "replace") in everything]
    assert leaked == []


WRITE = hostile(
    """
def with_io(path):
    with M["io"].open(path, "w") as f:
        f.write("pwned")


def with_os(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    os.write(fd, b"pwned")


def with_libc(path):
    fd = checked(libc().creat(path.encode(), 0o666), "creat")
    os.write(fd, b"pwned")


def with_mkdir(path):
    os.mkdir(path)


VECTORS = {"io": with_io, "os": with_os, "libc": with_libc, "mkdir": with_mkdir}


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        attempt = VECTORS[ctx.params["arg"]]
        ctx.log.info("attempt", what="write", outcome=tried(attempt, ctx.params["path"]))
"""
)


@pytest.mark.parametrize("vector", ["io", "os", "libc", "mkdir"])
def test_writing_a_file_fails(h: Harness, open_dir: Path, vector: str) -> None:
    """Nothing can be created in a folder everyone may write to (``io.open``, ``os.open``
    with ``O_CREAT``, libc ``creat``, ``mkdir``): the folder is still empty afterwards."""
    if not _protected("creating a file", "seccomp", "landlock"):
        return
    target = open_dir / "planted"
    done = attack(h, WRITE, params={"arg": vector, "path": str(target)})
    _caught(done, "write")
    assert list(open_dir.iterdir()) == []


# ============================================================== processes


FORK = hostile(
    """
def with_fork(marker):
    pid = os.fork()
    if pid == 0:
        os.write(1, marker.encode() + b"\\n")
        M["time"].sleep(30)
        os._exit(0)
    return pid


def with_clone(marker, number):
    pid = libc().syscall(number, 17, 0, 0, 0, 0)  # SIGCHLD: a new process, no shared memory
    if pid == 0:
        os.write(1, marker.encode() + b"\\n")
        M["time"].sleep(30)
        os._exit(0)
    return checked(pid, "clone")


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        marker = ctx.params["marker"]
        if ctx.params["arg"] == "fork":
            outcome = tried(with_fork, marker)
        else:
            outcome = tried(with_clone, marker, syscall(ctx, "clone"))
        ctx.log.info("attempt", what="fork", outcome=outcome)
"""
)


@pytest.mark.parametrize("vector", ["fork", "raw clone"])
def test_forking_fails(h: Harness, vector: str) -> None:
    """A worker cannot make a second process, with ``os.fork()`` or a raw ``clone``
    system call: while the run goes on the worker has no child, and the child's marker
    never reaches the kernel's output capture."""
    if not _protected("forking", "seccomp", "rlimits"):
        return
    if vector == "raw clone" and MACHINE not in SYSCALLS:
        pytest.skip(f"no clone system call number known for {MACHINE}")
    marker = f"FORKED-{uuid.uuid4().hex}"
    children: list[int] = []

    def observe(index: int) -> None:
        children.extend(_children(h.pids[HOSTILE]))

    done = attack(h, FORK, params={"arg": vector, "marker": marker}, observe=observe)
    _caught(done, "fork")
    assert children == []
    assert h.found(done.run, marker) == []


SPAWN = hostile(
    """
def with_subprocess(marker):
    return load("subprocess").run(["/bin/echo", marker]).returncode


def with_posix_spawn(marker):
    return os.posix_spawn("/bin/echo", ["echo", marker], {})


def with_system(marker):
    status = os.system("echo " + marker)
    if status != 0:
        raise OSError(1, "system() returned %d" % status)
    return status


def with_exec(marker):
    os.execv("/bin/echo", ["echo", marker])


VECTORS = {"subprocess": with_subprocess, "posix_spawn": with_posix_spawn,
           "system": with_system, "exec": with_exec}


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        attempt = VECTORS[ctx.params["arg"]]
        ctx.log.info("attempt", what="run", outcome=tried(attempt, ctx.params["marker"]))
"""
)


@pytest.mark.parametrize("vector", ["subprocess", "posix_spawn", "system", "exec"])
def test_running_a_program_fails(h: Harness, vector: str) -> None:
    """No program runs: ``subprocess.run``, ``os.posix_spawn``, ``os.system`` and
    ``os.execv`` of ``/bin/echo MARKER`` all fail, and the marker never reaches the
    kernel's capture of the worker's output."""
    if not _protected("running a program", "seccomp", "rlimits", "landlock"):
        return
    marker = f"SPAWNED-{uuid.uuid4().hex}"
    done = attack(h, SPAWN, params={"arg": vector, "marker": marker})
    _caught(done, "run")
    assert h.found(done.run, marker) == []


KILL = hostile(
    """
def raw(name, *args):
    return checked(libc().syscall(numbers[name], *args), name)


numbers = {}


def kill_parent(): os.kill(os.getppid(), 9)
def kill_parent_raw(): raw("kill", os.getppid(), 9)
def tgkill_parent(): raw("tgkill", os.getppid(), os.getppid(), 9)
def killpg_parent(): os.killpg(os.getpgid(os.getppid()), 9)
def pidfd_parent(): M["signal"].pidfd_send_signal(os.pidfd_open(os.getppid()), 9)
def kill_everyone(): os.kill(-1, 9)


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        numbers.update(kill=syscall(ctx, "kill"), tgkill=syscall(ctx, "tgkill"))
        victim = int(ctx.params["victim"] or 0)
        attempts = {
            "os.kill parent": kill_parent,
            "kill syscall parent": kill_parent_raw,
            "tgkill syscall parent": tgkill_parent,
            "killpg parent": killpg_parent,
            "pidfd parent": pidfd_parent,
            "os.kill other worker": lambda: os.kill(victim, 9),
            "kill syscall other worker": lambda: raw("kill", victim, 9),
            "kill -1": kill_everyone,
        }
        what = ctx.params["arg"]
        ctx.log.info("attempt", what=what, outcome=tried(attempts[what]))
"""
)

KILLS = [
    "os.kill parent",
    "kill syscall parent",
    "tgkill syscall parent",
    "killpg parent",
    "pidfd parent",
    "os.kill other worker",
    "kill syscall other worker",
    "kill -1",
]


@pytest.mark.parametrize("vector", KILLS)
def test_killing_the_kernel_or_another_worker_fails(h: Harness, vector: str) -> None:
    """SIGKILL to the kernel (``os.kill``, the raw ``kill``/``tgkill`` system calls,
    ``killpg`` of its group, a pidfd), to the honest strategy's worker, or to every
    process (``kill(-1)``) fails: the test process lives, the run completes and the honest
    strategy's results are untouched."""
    guards = ("seccomp", "landlock:signals")
    if "parent" in vector:  # the kernel runs as root, the worker as nobody
        guards += USER
    if not _protected(f"{vector} (SIGKILL)", *guards):
        return
    if "syscall" in vector and MACHINE not in SYSCALLS:
        pytest.skip(f"no kill system call numbers known for {MACHINE}")
    done = attack(h, KILL, params=lambda: {"arg": vector, "victim": str(h.pids[GOOD])})
    _caught(done, vector)
    os.kill(os.getpid(), 0)  # this process: alive


FDS = hostile(
    """
def exhaust(how):
    held = []
    try:
        for _ in range(5000):
            if how == "pipes":
                held.extend(os.pipe())
            else:
                held.append(os.dup(0))
    finally:
        kept.extend(held)
    return len(held)


kept = []


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        how, caught = ctx.params["arg"].split(" ")
        if caught == "caught":
            ctx.log.info("attempt", what="10k descriptors", outcome=tried(exhaust, how))
            ctx.log.info("descriptors", held=len(kept))
        else:
            exhaust(how)
"""
)


@pytest.mark.parametrize("how", ["pipes", "dup"])
@pytest.mark.parametrize("caught", ["caught", "uncaught"])
def test_opening_ten_thousand_descriptors_stops_at_the_limit(
    h: Harness, how: str, caught: str
) -> None:
    """Opening 10,000 descriptors stops at ``open_files`` with EMFILE: a strategy that
    catches it goes on (and ``/proc`` shows its worker never held more than the limit); one
    that does not is quarantined ``exception`` naming the error."""
    if not _protected("opening 10,000 descriptors", "rlimits"):
        return
    config = SandboxConfig(open_files=32)
    counts: list[int] = []

    def observe(index: int) -> None:
        if ROOT and caught == "caught":
            counts.append(len(os.listdir(f"/proc/{h.pids[HOSTILE]}/fd")))

    done = attack(h, FDS, config=config, params={"arg": f"{how} {caught}"}, observe=observe)
    if caught == "caught":
        outcomes = _caught(done, "10k descriptors")
        assert outcomes["10k descriptors"] == "failed: OSError EMFILE"
        [held] = done.run.records(HOSTILE, "descriptors")
        assert 0 < int(held["held"]) <= config.open_files
        if ROOT:  # /proc/PID/fd of a worker that is not dumpable: root only
            assert counts and max(counts) <= config.open_files
    else:
        _quarantined(done, "exception", "OSError", "Too many open files")


RLIMITS = hostile(
    """
class Limit(M["ctypes"].Structure):
    _fields_ = [("soft", M["ctypes"].c_uint64), ("hard", M["ctypes"].c_uint64)]


def raw_prlimit(which, number):
    unlimited = Limit(2 ** 64 - 1, 2 ** 64 - 1)
    ctypes = M["ctypes"]
    return checked(libc().syscall(number, 0, which, ctypes.byref(unlimited), None), "prlimit64")


def raw_setrlimit(which, number):
    unlimited = Limit(2 ** 64 - 1, 2 ** 64 - 1)
    return checked(libc().syscall(number, which, M["ctypes"].byref(unlimited)), "setrlimit")


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        r = M["resource"]
        inf = r.RLIM_INFINITY
        cpu_soft, cpu_hard = r.getrlimit(r.RLIMIT_CPU)
        numbers = {name: syscall(ctx, name) for name in ("setrlimit", "prlimit64")}
        attempts = {
            "cpu soft up to hard": lambda: r.setrlimit(r.RLIMIT_CPU, (cpu_hard, cpu_hard)),
            "open files up": lambda: r.setrlimit(r.RLIMIT_NOFILE, (4096, 4096)),
            "address space unlimited": lambda: r.setrlimit(r.RLIMIT_AS, (inf, inf)),
            "prlimit address space": lambda: r.prlimit(0, r.RLIMIT_AS, (inf, inf)),
            "prlimit other worker": lambda: r.prlimit(
                int(ctx.params["victim"]), r.RLIMIT_CPU, (1, 1)),
            "raw prlimit64 processes": lambda: raw_prlimit(r.RLIMIT_NPROC, numbers["prlimit64"]),
            "raw setrlimit file size": lambda: raw_setrlimit(r.RLIMIT_FSIZE, numbers["setrlimit"]),
        }
        for what, how in attempts.items():
            ctx.log.info("attempt", what=what, outcome=tried(how))
"""
)


def test_raising_its_own_limits_fails(h: Harness) -> None:
    """``setrlimit``/``prlimit`` (Python's and raw system calls) cannot raise any limit,
    not even a soft one up to its hard limit, nor lower another worker's: ``/proc``
    shows the worker's limits exactly as the kernel set them after the attempts."""
    if not _protected("raising its own resource limits", "seccomp"):
        return
    if MACHINE not in SYSCALLS:
        pytest.skip(f"no setrlimit/prlimit64 system call numbers known for {MACHINE}")
    config = SandboxConfig(cpu_seconds=100, memory_mb=512, open_files=32)
    seen: list[dict[str, tuple[str, str]]] = []

    def observe(index: int) -> None:
        if index == 1:
            seen.append(_limits(h.pids[HOSTILE]))
            seen.append(_limits(h.pids[GOOD]))

    done = attack(
        h, RLIMITS, config=config, params=lambda: {"victim": str(h.pids[GOOD])}, observe=observe
    )
    _caught(
        done,
        "cpu soft up to hard",
        "open files up",
        "address space unlimited",
        "prlimit address space",
        "prlimit other worker",
        "raw prlimit64 processes",
        "raw setrlimit file size",
        also=frozenset({"failed: ValueError: not allowed to raise maximum limit"}),  # EPERM
    )
    mine, other = seen
    assert mine["Max cpu time"] == ("100", "102")
    assert mine["Max open files"] == ("32", "32")
    assert mine["Max address space"] == (str(512 * 1024 * 1024),) * 2
    assert mine["Max file size"] == ("0", "0")
    assert mine["Max processes"] == ("0", "0")
    assert other["Max cpu time"] == ("3600", "3602")


# ============================================================== resources


MEMORY = hostile(
    """
GIB = 1024 ** 3

ALLOCATE = {
    "bytearray": lambda: bytearray(4 * GIB),
    "bytes": lambda: b"x" * (4 * GIB),
    "list": lambda: [None] * (GIB // 2),
    "ctypes": lambda: M["ctypes"].create_string_buffer(4 * GIB),
}


@strategy.hook
def on_bar(ctx, bar):
    ctx.state["hoard"] = ALLOCATE[ctx.params["arg"]]()
    ctx.log.info("attempt", what="allocate", outcome="succeeded")
"""
)


@pytest.mark.parametrize("vector", ["bytearray", "bytes", "list", "ctypes"])
def test_allocating_four_gib_is_a_memory_limit(h: Harness, vector: str) -> None:
    """Allocating 4 GiB (a bytearray, bytes, a list of 512 Mi pointers, a ctypes buffer)
    against the 1 GiB address-space limit quarantines the strategy ``memory-limit``."""
    if not _protected("allocating 4 GiB", "rlimits"):
        return
    done = attack(h, MEMORY, params={"arg": vector})
    _quarantined(done, "memory-limit", "MemoryError")


LOOP = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    while True:
        pass
"""
)


def test_looping_forever_is_a_timeout(h: Harness) -> None:
    """A strategy that never returns from ``on_bar`` is killed at its deadline and
    quarantined ``timeout``."""
    done = attack(h, LOOP, config=SandboxConfig(deadline=1.0))
    _quarantined(done, "timeout", "1 s")


CPU = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    signal = M["signal"]
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    while True:
        pass
"""
)


def test_ignoring_sigxcpu_and_looping_is_a_cpu_limit(h: Harness) -> None:
    """A strategy that ignores SIGXCPU and burns CPU is still stopped by the hard CPU limit
    (SIGKILL) before its deadline, and quarantined ``cpu-limit``."""
    if not _protected("burning CPU past cpu_seconds", "rlimits"):
        return
    config = SandboxConfig(cpu_seconds=1, deadline=30.0)  # far past cpu_seconds + 2 s hard
    done = attack(h, CPU, config=config)
    _quarantined(done, "cpu-limit", "1 s of CPU")


SLEEP = hostile(
    """
def blocking_read():
    r, w = os.pipe()
    os.read(r, 1)


def blocking_select():
    r, w = os.pipe()
    M["select"].select([r], [], [])


SLEEPS = {"time.sleep": lambda: M["time"].sleep(3600), "read": blocking_read,
          "select": blocking_select}


@strategy.hook
def on_bar(ctx, bar):
    SLEEPS[ctx.params["arg"]]()
"""
)


@pytest.mark.parametrize("vector", ["time.sleep", "read", "select"])
def test_sleeping_forever_is_a_timeout(h: Harness, vector: str) -> None:
    """A strategy that blocks forever (``time.sleep``, a read of an empty pipe, ``select``
    on it) is killed at its deadline and quarantined ``timeout``."""
    done = attack(h, SLEEP, config=SandboxConfig(deadline=1.0), params={"arg": vector})
    _quarantined(done, "timeout", "1 s")


# ============================================================== dying


CRASH = hostile(
    """
CRASHES = {
    "string_at(0)": lambda: M["ctypes"].string_at(0),
    "abort": lambda: os.abort(),
    "SIGKILL itself": lambda: os.kill(os.getpid(), 9),
}


@strategy.hook
def on_bar(ctx, bar):
    CRASHES[ctx.params["arg"]]()
"""
)


@pytest.mark.parametrize(
    ("vector", "signal_name"),
    [("string_at(0)", "SIGSEGV"), ("abort", "SIGABRT"), ("SIGKILL itself", "SIGKILL")],
)
def test_crashing_the_worker_is_crashed_naming_the_signal(
    h: Harness, vector: str, signal_name: str
) -> None:
    """A worker that dies of a signal (a segfault through ``ctypes.string_at(0)``,
    ``os.abort()``, SIGKILL to itself) is quarantined ``crashed``, naming the signal."""
    done = attack(h, CRASH, params={"arg": vector})
    _quarantined(done, "crashed", signal_name)


EXIT = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    os._exit(ctx.params["number"])
"""
)


@pytest.mark.parametrize("code", [3, 0])
def test_exiting_the_worker_is_exited(h: Harness, code: int) -> None:
    """``os._exit(N)`` in ``on_bar`` is quarantined ``exited``, naming the exit code."""
    done = attack(h, EXIT, params={"number": code})
    _quarantined(done, "exited", f"code {code}")


# ============================================================== output floods


PRINT = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        write = print if ctx.params["arg"] == "print" else M["sys"].stdout.write
        for i in range(100000):
            write("flood line %d\\n" % i)
"""
)


@pytest.mark.parametrize("vector", ["print", "sys.stdout.write"])
def test_flooding_print_is_capped(h: Harness, vector: str) -> None:
    """100,000 ``print`` (or ``sys.stdout.write``) calls in one event become at most
    MAX_LOGS_PER_EVENT print records and one ``log_truncated`` record counting the rest;
    the run completes (within the default 5 s deadline)."""
    done = attack(h, PRINT, params={"arg": vector})
    assert done.result.quarantined is None, done.result.quarantined
    printed = done.run.records(HOSTILE, "print")
    assert len(printed) == MAX_LOGS_PER_EVENT
    [truncated] = done.run.records(HOSTILE, "log_truncated")
    assert truncated["dropped"] == str(100000 - MAX_LOGS_PER_EVENT)
    assert not done.run.records(HOSTILE, "strategy_output")


RAW = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        chunk = (b"x" * 99 + b"\\n") * 655 + b"y" * 36
        fd = ctx.params["number"]
        for _ in range(128):
            os.write(fd, chunk)
"""
)


@pytest.mark.parametrize("fd", [1, 2])
def test_flooding_raw_output_is_capped(h: Harness, fd: int) -> None:
    """8 MiB written straight to file descriptor 1 or 2 is logged only up to the output
    caps (bytes and lines), and one ``strategy_output_truncated`` record says how much was
    written; the run completes."""
    done = attack(h, RAW, params={"number": fd})
    assert done.result.quarantined is None, done.result.quarantined
    output = done.run.records(HOSTILE, "strategy_output")
    assert output
    assert sum(len(r["text"]) for r in output) + len(output) - 1 <= OUTPUT_CAP  # and newlines
    assert len(output) <= min(OUTPUT_CAP // 100 + 1, OUTPUT_LINES)
    [truncated] = done.run.records(HOSTILE, "strategy_output_truncated")
    assert truncated["bytes"] == 8 * 1024 * 1024
    assert truncated["kept_bytes"] == OUTPUT_CAP and truncated["kept_lines"] == OUTPUT_LINES


NEWLINES = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        os.write(1, b"\\n" * (1024 * 1024))
"""
)


def test_flooding_bare_newlines_is_capped_in_records_too(h: Harness) -> None:
    """A megabyte of bare newlines is not a quarter of a million log records: at most
    OUTPUT_LINES, then the truncation record."""
    done = attack(h, NEWLINES)
    assert done.result.quarantined is None, done.result.quarantined
    assert len(done.run.records(HOSTILE, "strategy_output")) <= OUTPUT_LINES
    [truncated] = done.run.records(HOSTILE, "strategy_output_truncated")
    assert truncated["bytes"] == 1024 * 1024


# ============================================================== lying to the kernel


OVERLONG = hostile(
    """
def forge_header(channel_):
    c, p = M["bastion._channel"], M["bastion._protocol"]
    words = channel_.words
    words[c.W_LENGTH] = 8 * 1024 * 1024
    words[c.W_KIND] = p.W_REPLY
    channel_.post(c.W_SEQ, words[c.K_SEQ], c.K_SLEEPING)


@strategy.hook
def on_bar(ctx, bar):
    ctx.order(bar.symbol, 1)
    ctx.log.info("padding", text="x" * 256)
    mine = channel()
    if ctx.params["arg"] == "header":
        forge_header(mine)
        M["time"].sleep(60)  # the worker's own answer never overwrites the forged one
    else:
        answers = [f for f in load("gc").get_objects()
                   if type(f) is type(forge_header) and f.__name__ == "answer"
                   and f.__code__.co_filename.endswith("_worker.py")]
        if not answers:
            raise LookupError("no answer() in the worker: it changed; update this test")
        for original in answers:
            replace_everywhere(original, lambda kind, data=b"": forge_header(mine))
""",
    patching=True,
)


@pytest.mark.parametrize("vector", ["header", "answer path"])
def test_an_eight_megabyte_reply_is_a_protocol_violation(h: Harness, vector: str) -> None:
    """An answer whose header claims 8 MiB (written into the shared memory directly, or by
    replacing the worker's answer function) is a ``protocol-violation``; nothing it asked
    for is stored."""
    done = attack(h, OVERLONG, params={"arg": vector})
    _quarantined(done, "protocol-violation", str(8 * 1024 * 1024))
    assert done.result.orders == 0


NOT_FINITE = hostile(
    """
from decimal import Decimal

QUANTITIES = {
    "float nan": float("nan"),
    "float inf": float("inf"),
    "float -inf": float("-inf"),
    "Decimal NaN": Decimal("NaN"),
    "Decimal sNaN": Decimal("sNaN"),
    "Decimal -Infinity": Decimal("-Infinity"),
    "text nan": "nan",
}


@strategy.hook
def on_bar(ctx, bar):
    what = ctx.params["arg"]
    if what == "limit nan":
        ctx.order(bar.symbol, 1, limit=float("nan"))
    else:
        ctx.order(bar.symbol, QUANTITIES[what])
    ctx.log.info("attempt", what=what, outcome="succeeded")
"""
)


@pytest.mark.parametrize("host", ["sandboxed", "in-process"])
@pytest.mark.parametrize(
    "vector",
    [
        "float nan",
        "float inf",
        "float -inf",
        "Decimal NaN",
        "Decimal sNaN",
        "Decimal -Infinity",
        "text nan",
        "limit nan",
    ],
)
def test_a_non_finite_order_through_ctx_is_an_exception(h: Harness, host: str, vector: str) -> None:
    """``ctx.order`` with a NaN or infinite quantity (float, Decimal, text) or limit price
    raises in the strategy: quarantined ``exception`` (ValueError), no order stored."""
    done = attack(h, NOT_FINITE, host=host, params={"arg": vector})
    _quarantined(done, "exception", "ValueError")
    assert done.result.orders == 0


FORGED_INTENT = hostile(
    """
FORGERIES = {
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "sNaN": "sNaN",
    "float nan": float("nan"),
    "float inf": float("inf"),
}


@strategy.hook
def on_bar(ctx, bar):
    quantity = FORGERIES[ctx.params["arg"]]
    original = M["bastion._protocol"].encode_intent

    def forged(intent, _encode=original):
        encoded = list(_encode(intent))
        encoded[2] = quantity
        return encoded

    replace_everywhere(original, forged)
    ctx.order(bar.symbol, 1)
""",
    patching=True,
)


@pytest.mark.parametrize(
    "vector", ["NaN", "Infinity", "-Infinity", "sNaN", "float nan", "float inf"]
)
def test_a_non_finite_quantity_forged_into_the_reply_is_a_protocol_violation(
    h: Harness, vector: str
) -> None:
    """A NaN or infinite quantity written into the encoded reply (the worker's intent
    encoder replaced, as text or as a msgpack float) is a ``protocol-violation``; no order
    is stored."""
    done = attack(h, FORGED_INTENT, params={"arg": vector})
    _quarantined(done, "protocol-violation", "quantity")
    assert done.result.orders == 0


IDENTITY = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    p = M["bastion._protocol"]
    how, victim = ctx.params["arg"], ctx.params["victim"]
    if how == "intent":
        def forged(intent, _encode=p.encode_intent):
            return [*_encode(intent), victim]

        replace_everywhere(p.encode_intent, forged)
    else:
        def forged(message, _pack=p.pack):
            if isinstance(message, dict) and "seq" in message:
                message = {**message, how: victim}
            return _pack(message)

        replace_everywhere(p.pack, forged)
    ctx.order(bar.symbol, 1)
""",
    patching=True,
)


@pytest.mark.parametrize("field", ["strategy", "sha256", "intent"])
def test_a_reply_speaking_for_another_strategy_is_a_protocol_violation(
    h: Harness, field: str
) -> None:
    """A reply that names another strategy (a ``strategy`` or ``sha256`` field in the reply
    map, or an eighth field on an intent) is a ``protocol-violation``; no order is created
    by it, and every stored order carries its own strategy's SHA-256 and signer."""

    good = hashlib.sha256(GOOD_SOURCE.encode()).hexdigest()
    done = attack(h, IDENTITY, params={"arg": field, "victim": good if field == "sha256" else GOOD})
    _quarantined(done, "protocol-violation", "7 fields" if field == "intent" else repr(field))
    assert done.result.orders == 0
    assert h.rows("SELECT strategy FROM orders WHERE run_id = ?", HOSTILE_RUN) == [(GOOD,)]


LOG_IDENTITY = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        claim = {"strategy": ctx.params["victim"], "level": "error", "price": "1.0"}
        ctx.log.info("filled", **claim)
        ctx._logs.append(("info", "filled", {**claim, "event": "filled"}))
"""
)


@pytest.mark.parametrize("host", ["sandboxed", "in-process"])
def test_log_records_cannot_speak_for_another_strategy(h: Harness, host: str) -> None:
    """Log records whose fields claim another strategy (``strategy``, ``event``,
    ``level``), through ``ctx.log`` or written into the log list directly, stay the hostile
    strategy's own: the claims are renamed ``field_*``, the run goes on and the honest
    strategy's records are exactly its reference ones."""
    done = attack(h, LOG_IDENTITY, host=host, params={"victim": GOOD})
    assert done.result.quarantined is None, done.result.quarantined
    claims = done.run.records(HOSTILE, "filled")
    assert len(claims) == 2
    for record in claims:
        assert record["field_strategy"] == GOOD
        assert record["field_level"] == "error"
        assert record["log_level"] == "info"
    assert claims[1]["field_event"] == "filled"


RUN_IDENTITY = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        ctx.log.info("filled", run_id=ctx.params["victim"], price="1.0")
"""
)


@pytest.mark.parametrize("host", ["sandboxed", "in-process"])
def test_log_records_cannot_speak_for_another_run(h: Harness, host: str) -> None:
    """A log record whose fields claim another run (``run_id``) still carries the run it
    was logged in; the claim is renamed like ``strategy``."""
    done = attack(h, RUN_IDENTITY, host=host, params={"victim": REFERENCE_RUN})
    assert done.result.quarantined is None, done.result.quarantined
    [record] = done.run.records(HOSTILE, "filled")
    assert record["run_id"] == HOSTILE_RUN
    assert record["field_run_id"] == REFERENCE_RUN


GARBAGE = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    p, msgpack = M["bastion._protocol"], M["msgpack"]
    how = ctx.params["arg"]

    def garbage(message, _pack=p.pack):
        if not (isinstance(message, dict) and "seq" in message):
            return _pack(message)
        real = _pack(message)
        if how == "undecodable":
            return b"\\xc1" + real
        if how == "not a map":
            return _pack(list(message.items()))
        if how == "wrong seq":
            return _pack({**message, "seq": message["seq"] + 7})
        if how == "truncated":
            return real[: len(real) // 2]
        if how == "nested":
            return b"\\x81\\xa3seq" + b"\\x91" * 100000 + b"\\xc0"
        if how == "trailing data":
            return real + real
        raise LookupError(how)

    replace_everywhere(p.pack, garbage)
    ctx.order(bar.symbol, 1)
    ctx.log.info("padding", text="x")
""",
    patching=True,
)


@pytest.mark.parametrize(
    ("vector", "why"),
    [
        ("undecodable", "undecodable"),
        ("not a map", "must be a map"),
        ("wrong seq", "out of sequence"),
        ("truncated", "undecodable"),
        ("nested", "undecodable"),
        ("trailing data", "undecodable"),
    ],
)
def test_a_worker_whose_encoder_is_replaced_is_a_protocol_violation(
    h: Harness, vector: str, why: str
) -> None:
    """A worker whose reply encoder was replaced (in ``bastion._protocol``, in msgpack's
    caller and in every closure holding it) to emit garbage - undecodable bytes, a list,
    the wrong sequence number, half a message, 100,000 nested arrays, two messages - is a
    ``protocol-violation``; nothing it asked for is stored."""
    done = attack(h, GARBAGE, params={"arg": vector})
    _quarantined(done, "protocol-violation", why)
    assert done.result.orders == 0


# ============================================================== escapes and look-ahead


ESCAPE = hostile(
    """
def subclass(name):
    pending = list(().__class__.__base__.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending.extend(type.__subclasses__(cls))
    raise LookupError(name)


def system(marker):
    status = subclass("_wrap_close").__init__.__globals__["system"]("echo " + marker)
    if status != 0:
        raise OSError(1, "system() returned %d" % status)


def popen(marker):
    return subclass("Popen")(["/bin/echo", marker]).wait()


def fileio(marker):
    return subclass("FileIO")("/etc/passwd").read(4096)


def loader(marker):
    posix = subclass("BuiltinImporter").load_module("posix")
    posix.execv("/bin/echo", ["echo", marker])


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        marker = ctx.params["marker"]
        for what, how in [("os.system via _wrap_close", system), ("Popen", popen),
                          ("FileIO /etc/passwd", fileio), ("execv via BuiltinImporter", loader)]:
            ctx.log.info("attempt", what=what, outcome=tried(how, marker))
"""
)


def test_the_subclasses_escape_reaches_nothing_dangerous(h: Harness) -> None:
    """``().__class__.__base__.__subclasses__()`` does give a strategy ``os.system``,
    ``subprocess.Popen``, ``FileIO`` and ``posix.execv``; calling them still fails, no
    program runs (its marker never reaches the output capture) and no file is read."""
    if not _protected("the subclasses escape", "seccomp", "landlock"):
        return
    marker = f"ESCAPED-{uuid.uuid4().hex}"
    done = attack(h, ESCAPE, params={"marker": marker})
    _caught(
        done,
        "os.system via _wrap_close",
        "Popen",
        "FileIO /etc/passwd",
        "execv via BuiltinImporter",
    )
    assert h.found(done.run, marker) == []
    assert h.found(done.run, Path("/etc/passwd").read_text().splitlines()[0]) == []


FRAMES = hostile(
    """
BLOCK = 65536


def nonzero(memory):
    # The mapping without its all-zero blocks (each kept block with 8 bytes either side).
    zero = bytes(BLOCK)
    view = memoryview(memory)
    kept = [
        bytes(view[max(start - 8, 0) : start + BLOCK + 8])
        for start in range(0, len(memory), BLOCK)
        if view[start : start + BLOCK] != zero[: len(view[start : start + BLOCK])]
    ]
    return bytes(8).join(kept)


def bars_in(memory, patterns):
    # Every bar (by index) one of whose prices occurs in memory, at any offset.
    found = set()
    for tail in {pattern[6:] for pattern in patterns}:
        at = memory.find(tail, 6)
        while at >= 0:
            index = patterns.get(memory[at - 6 : at + 2])
            if index is not None:
                found.add(index)
            at = memory.find(tail, at + 1)
    return found


@strategy.hook
def on_bar(ctx, bar):
    struct = load("struct")
    if "patterns" not in ctx.state:
        rows = [[float(v) for v in row.split(",")] for row in ctx.params["arg"].split(";")]
        ctx.state["rows"] = rows
        ctx.state["patterns"] = {
            struct.pack("<d", price): j for j, row in enumerate(rows) for price in row
        }
    rows = ctx.state["rows"]
    index = [row[3] for row in rows].index(bar.close)
    memory = nonzero(channel().map)  # the whole shared mapping, both directions
    later = sorted(j for j in bars_in(memory, ctx.state["patterns"]) if j > index)
    current = all(memory.find(struct.pack("<d", price)) >= 0 for price in rows[index])
    other = bytes.fromhex(ctx.params["victim"])  # a line of the other strategy's source
    # and everything reachable from the worker's frames
    seen = []
    frame = M["sys"]._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if type(value) is type(bar):
                seen.append(value.ts)
        frame = frame.f_back
    history = [b.ts for b in ctx.history(bar.symbol)]
    ctx.log.info(
        "scan", index=index, later_in_memory=later, current_in_memory=current,
        other_strategy_in_memory=memory.find(other) >= 0,
        latest_on_stack=max(seen).isoformat(), latest_in_history=max(history).isoformat(),
        bar=bar.ts.isoformat(),
    )
""",
    patching=True,
)


def test_walking_frames_and_shared_memory_finds_no_later_bar(h: Harness) -> None:
    """A strategy that walks the worker's frames to its shared memory and reads all of it,
    on each of 60 bars, finds its current bar there and no price of any later bar (nor
    anything of the other strategy); the bars on the stack and in ``ctx.history`` are
    never later than the current one."""
    bars = _bars(60)
    table = ";".join(f"{b.open!r},{b.high!r},{b.low!r},{b.close!r}" for b in bars)
    other = b'ctx.state["bought"] = True'.hex()  # in the honest strategy's source only
    assert other.encode() not in FRAMES.encode()
    done = attack(h, FRAMES, bars=bars, params={"arg": table, "victim": other})
    assert done.result.quarantined is None, done.result.quarantined
    scans = done.run.records(HOSTILE, "scan")
    assert [int(s["index"]) for s in scans] == list(range(len(bars)))
    for scan in scans:
        assert scan["later_in_memory"] == "[]", scan
        assert scan["current_in_memory"] == "True", scan
        assert scan["other_strategy_in_memory"] == "False", scan
        assert scan["latest_on_stack"] == scan["bar"], scan
        assert scan["latest_in_history"] == scan["bar"], scan


LOOKAHEAD = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    gc, datetime = load("gc"), load("datetime").datetime
    Bar = type(bar)
    latest = None
    bars = 0

    def consider(value):
        nonlocal latest, bars
        if type(value) is Bar:
            bars += 1
            value = value.ts
        if isinstance(value, datetime) and value.tzinfo is not None:
            if latest is None or value > latest:
                latest = value

    for obj in gc.get_objects():
        consider(obj)
        if type(obj) in (list, tuple, set, frozenset) or type(obj).__name__ == "deque":
            for item in list(obj):
                consider(item)
        elif type(obj) is dict:
            for key, item in list(obj.items()):
                consider(key)
                consider(item)
    frame = M["sys"]._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            consider(value)
        frame = frame.f_back
    ctx.log.info("latest", found=latest.isoformat(), bar=bar.ts.isoformat(), bars=bars)
"""
)


def test_searching_the_heap_finds_no_later_bar(h: Harness) -> None:
    """A strategy that, on each of 60 bars, searches every object the worker's garbage
    collector knows (and every frame) for a ``Bar`` or an aware ``datetime`` never finds
    one later than the bar it is handling."""
    bars = _bars(60)
    done = attack(h, LOOKAHEAD, bars=bars)
    assert done.result.quarantined is None, done.result.quarantined
    found = done.run.records(HOSTILE, "latest")
    assert len(found) == len(bars)
    for record, item in zip(found, bars, strict=True):
        assert record["bar"] == item.ts.isoformat()
        assert record["found"] == record["bar"], record
        assert int(record["bars"]) >= 1


# ============================================================== exceptions and odd numbers


RAISE = hostile(
    """
class Custom(BaseException):
    pass


RAISES = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "GeneratorExit": GeneratorExit,
    "Custom": Custom,
}


@strategy.hook
def on_bar(ctx, bar):
    raise RAISES[ctx.params["arg"]]("boom")
"""
)


@pytest.mark.parametrize("host", ["sandboxed", "in-process"])
@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "SystemExit", "GeneratorExit", "Custom"])
def test_a_base_exception_from_on_bar_is_an_exception(h: Harness, host: str, raised: str) -> None:
    """KeyboardInterrupt, SystemExit, GeneratorExit or a custom BaseException raised in
    ``on_bar`` quarantines only that strategy (``exception``); the run goes on."""
    done = attack(h, RAISE, host=host, params={"arg": raised})
    assert done.result.quarantined == f"exception: on_bar: raised {raised}: boom"


NAMELESS = hostile(
    """
class Nameless(type):
    @property
    def __name__(cls):
        raise RuntimeError("no name")


class Boom(BaseException, metaclass=Nameless):
    pass


@strategy.hook
def on_bar(ctx, bar):
    raise Boom("boom")
"""
)


@pytest.mark.parametrize("host", ["sandboxed", "in-process"])
def test_an_exception_whose_class_hides_its_name_is_an_exception(h: Harness, host: str) -> None:
    """A BaseException whose class's ``__name__`` raises (a hostile metaclass) quarantines
    the strategy ``exception`` like any other; the run goes on."""
    done = attack(h, NAMELESS, host=host)
    assert done.result.quarantine_kind == "exception", done.result.quarantined


UNHOLDABLE = hostile(
    """
from decimal import Decimal

QUANTITIES = {
    "1e30": lambda: 1e30,
    "10**40": lambda: 10 ** 40,
    "-1e30": lambda: -1e30,
    "a million digits": lambda: Decimal("1" * 10 ** 6),
    "a million nines": lambda: Decimal("9" * 10 ** 6),
    "1e-30": lambda: Decimal("1e-30"),
    "29 digits": lambda: Decimal("1.0000000000000000000000000001"),
    "a million digits near 1": lambda: Decimal("1." + "0" * 999998 + "1"),
}


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        ctx.order(bar.symbol, QUANTITIES[ctx.params["arg"]]())


@strategy.hook
def on_reject(ctx, intent, reason):
    ctx.log.info("rejected", reason=reason, quantity=str(intent.quantity)[:60])
"""
)


@pytest.mark.parametrize("host", ["sandboxed", "in-process"])
@pytest.mark.parametrize("quantity", ["1e30", "10**40", "-1e30", "a million digits", "1e-30"])
def test_a_quantity_the_ledger_cannot_hold_is_rejected_and_never_stored(
    h: Harness, host: str, quantity: str
) -> None:
    """``ctx.order`` with a quantity the ledger cannot hold (1e30, 10**40, a Decimal with a
    million digits, 1e-30) is rejected with a reason that ``on_reject`` sees; nothing of it
    is stored in the orders table and the strategy carries on."""
    done = attack(h, UNHOLDABLE, host=host, params={"arg": quantity})
    assert done.result.quarantined is None, done.result.quarantined
    [rejected] = done.run.records(HOSTILE, "rejected")
    assert "outside what the ledger holds" in rejected["reason"]
    assert done.result.orders == 0
    assert h.rows(
        "SELECT count(*) FROM orders WHERE run_id = ? AND strategy = ?", HOSTILE_RUN, HOSTILE
    ) == [(0,)]


@pytest.mark.parametrize("host", ["sandboxed", "in-process"])
@pytest.mark.parametrize("quantity", ["29 digits", "a million digits near 1", "a million nines"])
def test_a_quantity_with_more_digits_than_the_ledger_holds_is_rejected(
    h: Harness, host: str, quantity: str
) -> None:
    """A quantity with more significant digits than the ledger holds (29 digits, a million
    digits near 1, a million 9s) is rejected with a reason that ``on_reject`` sees, like any
    unholdable quantity: never silently rounded to 28 digits and filled, never an exception
    from inside ``ctx.order``."""
    done = attack(h, UNHOLDABLE, host=host, params={"arg": quantity})
    assert done.result.quarantined is None, done.result.quarantined
    stored = h.rows(
        "SELECT quantity, status FROM orders WHERE run_id = ? AND strategy = ?",
        HOSTILE_RUN,
        HOSTILE,
    )
    assert stored == [], f"stored (rounded) instead of rejected: {stored}"
    [rejected] = done.run.records(HOSTILE, "rejected")
    assert "outside what the ledger holds" in rejected["reason"]


# ============================================================== the shared memory itself


SHRINK = hostile(
    """
def shrink():
    for fd in range(3, 256):
        try:
            size = os.fstat(fd).st_size
        except OSError:
            continue
        if size >= 4 * 1024 * 1024:
            os.ftruncate(fd, 0)
            return fd
    raise LookupError("no shared-memory descriptor")


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        ctx.log.info("attempt", what="shrink", outcome=tried(shrink))
"""
)

#: The hostile run of the shrink test, in a child process: a kernel that dies of SIGBUS
#: must not take pytest with it.
SHRINK_CHILD = """
import json, sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from bastion import Environment, Gate, Kernel, Strategy, Workspace
from bastion._engine import Engine, EngineConfig
from bastion._sandbox import SandboxConfig, sandboxed
from bastion.interfaces import RunInfo, StrategyRecord
from bastion.models import Bar
from bastion.plugins.sim import SimBroker
from bastion.plugins.sqlite_store import SQLiteStore

args = json.loads(sys.argv[1])
workspace = Workspace(Path(args["home"]), Environment.DEVELOPMENT)
gate = Gate(workspace)
strategies = []
for name in args["names"]:
    admitted = gate.admit(workspace.strategies / name, sandboxed(SandboxConfig()))
    assert isinstance(admitted, Strategy), admitted
    strategies.append(admitted)
store = SQLiteStore.open(workspace.ensure_data_dir())
started = datetime.fromisoformat(args["started"])
store.begin_run(
    RunInfo(args["run_id"], "backtest", "development", started, "test", {}),
    [StrategyRecord(s.name, s.info.sha256, s.info.signer, None, None, False, {})
     for s in strategies],
)
bars = [Bar(symbol=b[0], ts=datetime.fromisoformat(b[1]), open=b[2], high=b[3], low=b[4],
            close=b[5], volume=b[6]) for b in args["bars"]]
engine = Engine(
    Kernel(entry_points=False), SimBroker.open("commission=none,slippage=0"), store,
    [(s, dict(s.params)) for s in strategies],
    EngineConfig(run_id=args["run_id"], environment="development", cash=Decimal(100000),
                 symbols=frozenset(b.symbol for b in bars)),
)
result = engine.run(iter(bars))
store.finish_run(args["run_id"], "completed", None)
store.close()
print(json.dumps({s.name: [s.quarantined, s.orders, s.fills, str(s.equity)]
                  for s in result.strategies}))
"""


def test_shrinking_the_shared_memory_does_not_kill_the_kernel(h: Harness) -> None:
    """A worker that truncates its shared-memory file to nothing cannot take the kernel
    down: the kernel's run (here in a child process, so that a SIGBUS cannot take pytest
    with it) completes, the attempt fails or only that strategy is quarantined, and the
    honest strategy's stored results equal its reference run's."""
    h.ws.write(GOOD, GOOD_SOURCE)
    h.ws.write(HOSTILE, SHRINK)
    h.ws.sign(GOOD, HOSTILE)
    reference = h.run(REFERENCE_RUN, h.admit((GOOD, sandboxed(SandboxConfig()))), BARS)
    h.store.close()  # the child writes the hostile run into the same store
    args = {
        "home": str(h.ws.home),
        "names": [HOSTILE, GOOD],
        "run_id": HOSTILE_RUN,
        "started": T0.isoformat(),
        "bars": [
            [b.symbol, b.ts.isoformat(), b.open, b.high, b.low, b.close, b.volume] for b in BARS
        ],
    }
    child = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", SHRINK_CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    h.store = SQLiteStore.open(h.ws.workspace.ensure_data_dir())
    assert child.returncode == 0, f"the kernel died ({child.returncode}): {child.stderr[-500:]}"
    results = json.loads(child.stdout.splitlines()[-1])
    good = reference.strategy(GOOD)
    assert results[GOOD] == [None, good.orders, good.fills, str(good.equity)]
    assert results[HOSTILE][0] is None or results[HOSTILE][0].split(":")[0] in (
        "crashed",
        "protocol-violation",
    )
    assert h.store.verify_audit().ok
    assert h.stored(HOSTILE_RUN, GOOD) == h.stored(REFERENCE_RUN, GOOD)


# ============================================================== found by review

SIGIO = hostile(
    """
def sigio(pid):
    fcntl = load("fcntl")
    r, w = os.pipe()
    fcntl.fcntl(r, fcntl.F_SETOWN, pid)   # refused: the descriptor's owner gets the signal
    fcntl.fcntl(r, 10, 9)                 # F_SETSIG: SIGKILL instead of SIGIO
    fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC | os.O_NONBLOCK)
    os.write(w, b"x")
    return pid


def owner_by_ioctl(pid):
    r, w = os.pipe()
    value = M["ctypes"].c_int(pid)
    return checked(libc().ioctl(r, 0x8901, M["ctypes"].byref(value)), "FIOSETOWN")


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        victim = int(ctx.params["victim"])
        ctx.log.info("attempt", what="sigio kernel", outcome=tried(sigio, os.getppid()))
        ctx.log.info("attempt", what="sigio other worker", outcome=tried(sigio, victim))
        ctx.log.info("attempt", what="FIOSETOWN", outcome=tried(owner_by_ioctl, victim))
"""
)


def test_a_signal_by_the_back_door_fails_even_without_landlock(h: Harness) -> None:
    """``fcntl(F_SETOWN)``/``F_SETSIG`` (or ``ioctl(FIOSETOWN)``) on a pipe of its own
    would make the system deliver SIGKILL to any process of the same user on the next
    write. seccomp refuses them, so this holds even where Landlock cannot scope signals
    (Linux before 6.12, simulated here by leaving Landlock out): the kernel and the other
    worker live."""
    if not _protected("a signal through F_SETOWN", "seccomp"):
        return
    done = attack(
        h,
        SIGIO,
        config=SandboxConfig(skip=frozenset({"landlock"})),
        params=lambda: {"victim": str(h.pids[GOOD])},
    )
    _caught(done, "sigio kernel", "sigio other worker", "FIOSETOWN")


SYSV = hostile(
    """
def segment():
    ipc = libc()
    shmid = checked(ipc.shmget(0, 200 * 1024 * 1024, 0o1666), "shmget")  # IPC_PRIVATE|CREAT
    return shmid


def queue():
    return checked(libc().msgget(0, 0o1666), "msgget")


@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        ctx.log.info("attempt", what="shmget", outcome=tried(segment))
        ctx.log.info("attempt", what="msgget", outcome=tried(queue))
"""
)


def test_system_v_memory_and_queues_are_refused(h: Harness) -> None:
    """System V shared memory would live outside the worker's address-space limit and
    outlive the run (and a message queue would be a channel between strategies): both
    are refused, and no segment owned by the worker's user is left behind."""
    if not _protected("System V IPC", "seccomp", "network:IPC"):
        return
    before = Path("/proc/sysvipc/shm").read_text()
    done = attack(h, SYSV)
    _caught(done, "shmget", "msgget")
    assert Path("/proc/sysvipc/shm").read_text() == before


UNDO = hostile(
    """
@strategy.hook
def on_bar(ctx, bar):
    if first_bar(ctx):
        prctl = libc().prctl
        ctx.log.info(
            "attempt", what="no parent-death signal",
            outcome=tried(lambda: checked(prctl(1, 0, 0, 0, 0), "PR_SET_PDEATHSIG")),
        )
        ctx.log.info(
            "attempt", what="dumpable again",
            outcome=tried(lambda: checked(prctl(4, 1, 0, 0, 0), "PR_SET_DUMPABLE")),
        )
"""
)


def test_the_lock_down_cannot_be_undone(h: Harness) -> None:
    """A worker cannot switch off its parent-death signal (it would outlive a kernel that
    dies uncleanly) or make itself dumpable again."""
    if not _protected("undoing prctl settings", "seccomp"):
        return
    _caught(attack(h, UNDO), "no parent-death signal", "dumpable again")
