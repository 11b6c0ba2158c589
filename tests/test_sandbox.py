"""The kernel's side of the sandbox: the worker's start, the layers and what each
environment requires, ``bastion sandbox``, ``--in-process``, the exception
policy, and the same results from both hosts.

The attacks themselves (a strategy trying to escape) are in
``test_sandbox_hostile.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from bastion import ConfigError
from bastion._sandbox import (
    LAYER_NAMES,
    LIVE_REQUIRES,
    SandboxConfig,
    probe,
    sandbox_config,
)

from .conftest import CLI, REPO, WS, one_error_line

# Reaches the worker's own modules the way an attacker would (strategies may not import os).
ESCAPE = """
def _modules():
    for cls in ().__class__.__base__.__subclasses__():
        g = getattr(getattr(cls, "__init__", None), "__globals__", None)
        if isinstance(g, dict) and "sys" in g:
            return g["sys"].modules
"""

SHORT = ("--from", "2021-01-04", "--to", "2021-03-31")


@pytest.fixture(scope="module")
def layers() -> dict[str, Any]:
    return {layer.name: layer for layer in probe()}


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    home = tmp_path / "examples"
    shutil.copytree(REPO / "strategies", home / "strategies")
    shutil.copytree(REPO / "signatures", home / "signatures")
    return home


def skip_layers(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make every worker the CLI starts leave ``names`` out, as a machine without them would."""
    import bastion._backtest as backtest_module

    real = backtest_module.sandbox_config

    def without(*args: Any) -> SandboxConfig:
        import attrs

        return attrs.evolve(real(*args), skip=frozenset(names))

    monkeypatch.setattr(backtest_module, "sandbox_config", without)


# ------------------------------------------------------------------------- the layers


def test_every_layer_is_reported_with_a_reason(layers: dict[str, Any]) -> None:
    """The probe reports each layer, in order, active or not, always with a reason; on a
    machine like CI (root, Linux with Landlock and user namespaces) all of them are active."""
    assert tuple(layers) == LAYER_NAMES
    for layer in layers.values():
        assert layer.detail, layer
    if os.geteuid() == 0 and Path("/proc/self/ns/net").exists():
        inactive = [f"{la.name}: {la.detail}" for la in layers.values() if not la.active]
        assert not inactive, inactive


def test_bastion_sandbox_prints_each_layer(cli: CLI, ws: WS) -> None:
    """``bastion sandbox --json`` lists every layer with active/required/detail and says the
    environment is ready; the table form names each layer."""
    r = cli("sandbox", "--json", "--home", ws.home)
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["environment"] == "development"
    assert [row["layer"] for row in data["layers"]] == list(LAYER_NAMES)
    assert not any(row["required"] for row in data["layers"])  # development requires none
    assert data["ready"] is (not data["missing_required"])
    live = json.loads(cli("sandbox", "--json", "--env", "live", "--home", ws.home).stdout)
    assert {row["layer"] for row in live["layers"] if row["required"]} == LIVE_REQUIRES
    table = cli("sandbox", "--home", ws.home).stdout
    for name in LAYER_NAMES:
        assert name in table


def test_bastion_sandbox_fails_when_a_required_layer_is_missing(
    cli: CLI, ws: WS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer the environment requires but the machine lacks: exit 1 and one line saying
    the environment refuses to run strategies."""
    skip_layers(monkeypatch, "seccomp")
    r = cli("sandbox", "--env", "paper", "--home", ws.home)
    assert r.exit_code == 1
    assert "unavailable" in r.stdout
    one_error_line(r.stderr, "paper", "seccomp", "refuses")
    data = json.loads(cli("sandbox", "--json", "--env", "paper", "--home", ws.home).stdout)
    assert data["ready"] is False and data["missing_required"] == ["seccomp"]


def test_paper_refuses_a_strategy_when_a_required_layer_is_missing(
    cli: CLI, examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In paper, a missing required layer refuses the strategy before its bytes reach the
    worker: one line naming the layer, exit non-zero, no run stored, and the module body
    never ran (what it prints would be in the log)."""
    (examples / "strategies" / "sma_cross.py").write_text(
        (examples / "strategies" / "sma_cross.py").read_text() + "\nprint('module body ran')\n"
    )
    skip_layers(monkeypatch, "network")
    r = cli("backtest", "sma_cross", "--env", "paper", "--allow-unsigned", "--home", examples)
    assert r.exit_code != 0
    # paper refuses unsigned code before any sandbox is started: sign it the real way
    one_error_line(r.stderr, "unsigned")
    from bastion import Environment, Workspace
    from bastion._keys import generate_key
    from bastion._signing import sign_strategies
    from bastion._trust import TrustStore

    key = generate_key("op", examples / "keys")
    TrustStore.load(examples / "signatures").add(examples / "keys" / "op.pub")
    sign_strategies(Workspace(examples, Environment.PAPER), key, ["sma_cross.py"])
    r = cli("backtest", "sma_cross", "--env", "paper", *SHORT, "--home", examples)
    assert r.exit_code != 0
    one_error_line(r.stderr, "sma_cross.py", "sandbox-unavailable", "'network'", "bastion sandbox")
    assert not (examples / ".bastion" / "paper" / "bastion.db").exists()
    log = (examples / ".bastion" / "paper" / "logs" / "strategy.jsonl").read_text()
    assert "module body ran" not in log
    # development only warns, once per layer, and runs
    r = cli("backtest", "sma_cross", *SHORT, "--no-report", "--home", examples)
    assert r.exit_code == 0, r.stderr
    assert "warning: sandbox layer network is unavailable" in r.stderr
    assert (
        "module body ran"
        in (examples / ".bastion" / "development" / "logs" / "strategy.jsonl").read_text()
    )


def test_in_process_is_refused_in_paper_and_live(cli: CLI, examples: Path) -> None:
    """--in-process runs strategy code unprotected: paper and live refuse it in one line."""
    for env in ("paper", "live"):
        r = cli("backtest", "--in-process", "--env", env, "--home", examples)
        assert r.exit_code != 0
        one_error_line(r.stderr, "--in-process", env)


# ------------------------------------------------------------------------- configuration


def test_sandbox_settings_come_from_bastion_toml_per_environment() -> None:
    """[sandbox] applies to every environment, [sandbox.ENV] overrides it; paper and live
    require network, seccomp, rlimits and user unless told otherwise."""
    config = {
        "sandbox": {
            "deadline": 2,
            "memory_mb": 512,
            "paper": {"deadline": 0.5, "require": ["seccomp", "landlock"]},
        }
    }
    development = sandbox_config(config, "development", "bastion.toml")
    assert development.deadline == 2.0 and development.memory_mb == 512
    assert development.require == frozenset()
    paper = sandbox_config(config, "paper", "bastion.toml")
    assert paper.deadline == 0.5 and paper.require == {"seccomp", "landlock"}
    assert sandbox_config({}, "live", "x").require == LIVE_REQUIRES
    assert sandbox_config({}, "paper", "x").require == LIVE_REQUIRES
    assert sandbox_config({"sandbox": {"require": ["all"]}}, "development", "x").require == set(
        LAYER_NAMES
    )


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"sandbox": "strict"}, "[sandbox] must be a table"),
        ({"sandbox": {"deadline": "soon"}}, "sandbox.deadline"),
        ({"sandbox": {"deadline": float("nan")}}, "sandbox.deadline"),
        ({"sandbox": {"deadline": 0}}, "between"),
        ({"sandbox": {"memory_mb": 1.5}}, "whole number"),
        ({"sandbox": {"require": ["seccomp", "magic"]}}, "unknown layer 'magic'"),
        ({"sandbox": {"require": "seccomp, network"}}, "unknown layer"),
        ({"sandbox": {"colour": "blue"}}, "not a sandbox setting"),
        ({"sandbox": {"staging": {"deadline": 1}}}, "[sandbox.staging] is not an environment"),
    ],
)
def test_bad_sandbox_settings_are_one_line_errors(table: dict[str, Any], needle: str) -> None:
    """Each bad [sandbox] value names the key and what to use instead."""
    with pytest.raises(ConfigError, match=None) as caught:
        sandbox_config(table, "development", "bastion.toml")
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_bad_sandbox_setting_through_the_cli(cli: CLI, examples: Path) -> None:
    """The CLI prints a bad [sandbox] value as one line, and stores nothing."""
    (examples / "bastion.toml").write_text("[sandbox]\ndeadline = -1\n")
    r = cli("backtest", "--home", examples)
    assert r.exit_code == 2
    one_error_line(r.stderr, "sandbox.deadline")
    assert not (examples / ".bastion" / "development" / "bastion.db").exists()


# ------------------------------------------------------------------------- the worker


def test_the_worker_starts_clean(ws: WS, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's environment is empty (no BASTION_*, no HOME), its working directory is
    an empty temporary folder it cannot list, it holds no descriptor beyond stdin, the
    output pipe and its channel, it is not root, and the kernel's secrets are not in it."""
    monkeypatch.setenv("BASTION_SECRET_TOKEN", "hunter2-do-not-leak")
    from bastion._sandbox import sandboxed

    ws.write(
        "inspect.py",
        ESCAPE
        + """
from bastion import strategy

@strategy.hook
def on_start(ctx):
    os = _modules()["os"]
    fds = []
    for fd in range(64):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            pass
    try:
        listing = repr(os.listdir("."))
    except OSError as exc:
        listing = type(exc).__name__
    ctx.log.info(
        "inside",
        env=repr(dict(os.environ)),
        cwd=os.getcwd(),
        listing=listing,
        fds=repr(fds),
        uid=os.getuid(),
    )
""",
    )
    ws.sign("inspect.py")
    strategy = ws.admit("inspect.py", sandboxed())
    assert not isinstance(strategy, type(None)) and hasattr(strategy, "host"), strategy
    with structlog.testing.capture_logs() as logs:
        from decimal import Decimal

        from bastion.models import AccountSnapshot

        zero = Decimal(0)
        strategy.host.start({}, AccountSnapshot(zero, zero, {}, {}, zero, zero))  # type: ignore[union-attr]
        reply = strategy.host.gather()  # type: ignore[union-attr]
    assert reply is not None and reply.failure is None, reply
    [(_, _, fields)] = reply.logs
    assert fields["env"] == "{}"
    assert "bastion-worker-" in fields["cwd"]
    assert fields["listing"] in ("[]", "PermissionError")
    fds = json.loads(fields["fds"])
    assert len(fds) <= 4 and set(fds) >= {0, 1, 2}
    assert fields["uid"] != "0"
    assert "hunter2" not in repr(reply) and "hunter2" not in repr(logs)


def test_print_and_tracebacks_go_to_the_strategys_log_stream(ws: WS, any_host: str) -> None:
    """What a strategy prints is a ``print`` record of that strategy, never the terminal;
    its exception goes to the log with its own frames only (no kernel or worker frames)."""
    from .test_engine import Harness, bar

    ws.write(
        "noisy.py",
        """
from bastion import strategy

print("loading")

def helper(x):
    return 1 / x

@strategy.hook
def on_bar(ctx, bar):
    print("bar", bar.close, sep="=")
    if bar.close > 101:
        helper(0)
""",
    )
    ws.sign("noisy.py")
    s = ws.admit("noisy.py")
    h = Harness(ws)
    try:
        result = h.run([s], [bar("AAA", d, 100.0 + d) for d in range(4)])  # type: ignore[list-item]
    finally:
        h.store.close()
    assert result.strategies[0].quarantine_kind == "exception"
    printed = [r["text"] for r in h.captured if r["event"] == "print"]
    assert printed == ["bar=100.0", "bar=101.0", "bar=102.0"]
    [tb] = [r["traceback"] for r in h.captured if r["event"] == "strategy_traceback"]
    assert "noisy.py" in tb and "helper" in tb and "ZeroDivisionError" in tb
    for kernel_file in ("_context.py", "_worker.py", "_host.py", "_engine.py"):
        assert kernel_file not in tb


@pytest.mark.parametrize("policy", ["skip", "quarantine"])
def test_exception_policy_skip_is_capped(ws: WS, any_host: str, policy: str) -> None:
    """With ``policy = "skip"`` an exception drops that event (and its orders) and the
    strategy goes on, at most ``max_skips`` times; then it is quarantined as usual."""
    from bastion._engine import ExceptionPolicy

    from .test_engine import Harness, bar

    ws.write(
        "flaky.py",
        """
from bastion import strategy

@strategy.hook
def on_bar(ctx, bar):
    ctx.order(bar.symbol, 1)
    if bar.ts.day % 2:
        raise ValueError("odd day")
""",
    )
    ws.sign("flaky.py")
    s = ws.admit("flaky.py")
    h = Harness(ws)
    exceptions = {"flaky.py": ExceptionPolicy(skip=True, max_skips=2)} if policy == "skip" else {}
    try:
        result = h.run(
            [s],  # type: ignore[list-item]
            [bar("AAA", d, 100.0) for d in range(8)],
            exceptions=exceptions,
        )
    finally:
        h.store.close()
    skipped = [r for r in h.captured if r["event"] == "strategy_event_skipped"]
    stored = h.rows("SELECT count(*) FROM orders")[0][0]
    if policy == "skip":
        # day 2 raises (skip 1), day 4 raises (skip 2), day 6 raises: quarantined
        assert [r["skipped"] for r in skipped] == [1, 2]
        assert result.strategies[0].quarantine_kind == "exception"
        assert stored == 2  # the orders of days 1 and 3; those of failed events were dropped
    else:
        assert skipped == []
        assert result.strategies[0].quarantined == ("exception: on_bar: raised ValueError: odd day")
        assert stored == 0


def test_sandboxed_and_in_process_give_identical_results(cli: CLI, examples: Path) -> None:
    """The same signed example files give the same orders, fills and equity curves
    sandboxed (the default) and --in-process, on the same data."""

    def run(*extra: str) -> dict[str, Any]:
        r = cli("backtest", "--json", "--no-report", *SHORT, *extra, "--home", examples)
        assert r.exit_code == 0, r.stderr
        summary: dict[str, Any] = json.loads(r.stdout)
        conn = sqlite3.connect(examples / ".bastion" / "development" / "bastion.db")
        try:
            run_id = summary["run_id"]
            tables = {
                "orders": "SELECT strategy, side, quantity, type, limit_price, stop_price, status, "
                "reason, filled, created, strategy_sha256, signer FROM orders WHERE run_id = ? "
                "ORDER BY client_order_id",
                "fills": "SELECT strategy, side, quantity, price, commission, ts FROM fills "
                "WHERE run_id = ? ORDER BY rowid",
                "equity": "SELECT strategy, ts, equity FROM equity WHERE run_id = ? "
                "ORDER BY strategy, ts",
            }
            rows = {name: conn.execute(sql, (run_id,)).fetchall() for name, sql in tables.items()}
        finally:
            conn.close()
        return {"summary": summary, **rows}

    sandboxed = run()
    in_process = run("--in-process")
    assert sandboxed["summary"]["sandbox"] == "sandboxed"
    assert in_process["summary"]["sandbox"] == "in-process"
    for table in ("orders", "fills", "equity"):
        assert sandboxed[table] == in_process[table], table
    assert len(sandboxed["fills"]) > 10
    strip = ("sandbox",)
    for a, b in zip(
        sandboxed["summary"]["strategies"], in_process["summary"]["strategies"], strict=True
    ):
        assert {k: v for k, v in a.items() if k not in strip} == b


def test_operator_ctrl_c_stops_the_run_and_its_workers(examples: Path, tmp_path: Path) -> None:
    """SIGINT to ``bastion backtest`` ends the run (stored as failed: interrupted by the
    user) and leaves no worker process behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("bastion")),
            "backtest",
            "--source",
            "synthetic:2000000,symbols=1,seed=1",
            "--no-report",
            "--home",
            str(examples),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = examples / ".bastion" / "development" / "bastion.db"
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and not workers:
        time.sleep(0.2)
        workers = _workers_of(proc.pid)
    assert workers, "no worker started"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a worker survived"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT status, error FROM runs").fetchall() == [
            ("failed", "interrupted by the user")
        ]
    finally:
        conn.close()


def _workers_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if b"bastion._worker" in cmdline and ppid == parent:
            found.append(int(entry.name))
    return found


def test_the_sandbox_says_plainly_that_it_needs_linux(
    ws: WS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On another system, starting a worker is a one-line error pointing at --in-process
    (the layers are Linux's), not a crash deep inside the channel."""
    from bastion._sandbox import sandboxed

    ws.write("good.py")
    ws.sign("good.py")
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ConfigError, match=r"needs Linux.*--in-process"):
        ws.admit("good.py", sandboxed())


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root kernel can drop CAP_SYS_ADMIN")
def test_a_root_kernel_without_cap_sys_admin_still_drops_to_nobody() -> None:
    """Root in a container usually lacks CAP_SYS_ADMIN, so it may not take a network
    namespace itself: the worker then drops to nobody first and takes its namespaces in a
    new user namespace, and reports both layers truthfully (it used to stay root inside
    that namespace while reporting 'not root')."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    code = (
        "import json; from bastion._sandbox import probe\n"
        "print(json.dumps({l.name: [l.active, l.detail] for l in probe()}))\n"
    )
    out = subprocess.run(
        [setpriv, "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin",
         sys.executable, "-I", "-c", code],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    layers = json.loads(out)
    assert layers["user"][0] and "dropped from root to nobody" in layers["user"][1]
    assert layers["network"][0] and "user, network and IPC namespaces" in layers["network"][1]
    assert all(active for active, _ in layers.values()), layers


def test_a_worker_that_cannot_start_leaves_nothing_behind(
    ws: WS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the worker's process cannot be started, its pipe, shared memory and temporary
    folder are released and the error is the original one."""
    import tempfile

    from bastion._sandbox import sandboxed

    ws.write("good.py")
    ws.sign("good.py")
    fds_before = set(os.listdir("/proc/self/fd"))
    folders_before = {p.name for p in Path(tempfile.gettempdir()).glob("bastion-worker-*")}

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(7, "argument list too long (simulated)")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    for _ in range(3):
        with pytest.raises(OSError, match="simulated"):
            ws.admit("good.py", sandboxed())
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    assert {p.name for p in Path(tempfile.gettempdir()).glob("bastion-worker-*")} <= folders_before
