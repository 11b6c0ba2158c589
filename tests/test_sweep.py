"""``bastion sweep``: grids, ranked results equal to one-by-one backtests, local processes
and a real Dask cluster on 127.0.0.1, workers that re-verify what they run, walk-forward
folds, and stopping with finished runs kept."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from bastion import ConfigError, Kernel
from bastion.audit import Checkpoints, verify
from bastion.interfaces import PluginContext
from bastion.plugins.sweep_tasks import (
    LocalPool,
    Sequential,
    SweepTask,
    WalkForward,
    bundle_strategy,
    drive,
    folds,
    parse_grid,
    parse_objective,
    parse_walk_forward,
    run_task,
)

from .conftest import CLI, REPO, WS, one_error_line

SOURCE = "synthetic:300"
GRID = ("--grid", "fast=5:15:5", "--grid", "slow=20,40")


@pytest.fixture
def sma_ws(ws: WS) -> WS:
    """A workspace holding the bundled SMA crossover, signed by a trusted test key."""
    ws.write("sma_cross.py", (REPO / "strategies" / "sma_cross.py").read_bytes())
    ws.sign("sma_cross.py")
    return ws


def _store_runs(ws: WS) -> dict[str, Any]:
    data_dir = ws.workspace.data_dir
    if not (data_dir / "bastion.db").exists():
        return {}
    store = Kernel().open_store("sqlite", PluginContext("development", data_dir))
    try:
        return {row.run_id: row for row in store.list_runs()}
    finally:
        store.close()


def _audit_ok(ws: WS) -> bool:
    data_dir = ws.workspace.data_dir
    store = Kernel().open_store("sqlite", PluginContext("development", data_dir))
    try:
        return verify(store, Checkpoints(data_dir)).ok
    finally:
        store.close()


def _sweep(cli: CLI, ws: WS, *args: str) -> dict[str, Any]:
    result = cli("sweep", "sma_cross", "--home", ws.home, "--source", SOURCE, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _by_params(results: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], Any]:
    return {tuple(sorted(r["params"].items())): r["metrics"] for r in results}


def _task(ws: WS, **changes: Any) -> SweepTask:
    bundle = bundle_strategy(ws.gate(), "sma_cross")
    task = SweepTask(
        sweep_id="test",
        index=1,
        bundle=bundle,
        params=("fast=5", "slow=20"),
        source=SOURCE,
        broker="sim",
        storage="sqlite",
        cash="100000",
        start=None,
        end=None,
        symbols=(),
        environment="development",
        data_dir=str(ws.workspace.ensure_data_dir()),
    )
    return attrs.evolve(task, **changes)


# -- grids and objectives ---------------------------------------------------------


def test_grid_ranges_are_inclusive_and_lists_keep_their_order() -> None:
    """FROM:TO:STEP includes TO when the step lands on it, decimals stay exact, and a
    comma list runs each value once in the order given."""
    assert parse_grid("fast=5:20:5").values == ("5", "10", "15", "20")
    assert parse_grid("fast=5:21:5").values == ("5", "10", "15", "20")
    assert parse_grid("k=0.1:0.5:0.1").values == ("0.1", "0.2", "0.3", "0.4", "0.5")
    assert parse_grid("slow=60,20,30,20").values == ("60", "20", "30")
    assert parse_grid(" x = 3:3:1").name == "x"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("fast", "NAME=FROM:TO:STEP"),
        ("fast=", "NAME=FROM:TO:STEP"),
        ("fast=5:20", "FROM:TO:STEP with all three"),
        ("fast=5:20:0", "step must be above 0"),
        ("fast=20:5:5", "write fast=5:20:5"),
        ("fast=a:20:5", "'a' is not a number"),
        ("fast=5,,10", "empty value"),
        ("fast=1:1000000:1", "at most"),
        ("9x=1,2", "not a parameter name"),
    ],
)
def test_bad_grids_say_what_to_write(text: str, needle: str) -> None:
    """Each malformed --grid is a one-line ConfigError that names the value and says
    what to write instead."""
    with pytest.raises(ConfigError) as caught:
        parse_grid(text)
    message = str(caught.value)
    assert needle in message and "\n" not in message


def test_objectives_know_their_direction() -> None:
    """Drawdown and volatility rank lowest first, returns and Sharpe highest first;
    max:/min: choose a direction; an unknown metric is refused."""
    assert parse_objective("sharpe").maximise
    assert not parse_objective("max_drawdown").maximise
    assert parse_objective("max:max_drawdown").maximise
    assert not parse_objective("min:trades").maximise
    with pytest.raises(ConfigError, match="not a metric"):
        parse_objective("sharp")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--grid", "fats=5,10"), ("no parameter 'fats'", "fast")),
        (("--grid", "fast=5:10:2.5"), ("'7.5' is not a whole number",)),
        (("--grid", "fast=5,10", "--grid", "fast=6"), ("given twice",)),
        (("--grid", "fast=5,10", "--param", "fast=3"), ("swept by --grid",)),
        (("--grid", "fast=5,10", "--objective", "nope"), ("not a metric",)),
        (("--grid", "fast=5,10", "--walk-forward", "250"), ("TRAIN:TEST",)),
        (("--grid", "fast=5,10", "--walk-forward", "10:3m"), ("both windows",)),
        (("--grid", "fast=5,10", "--walk-forward", "5000:100"), ("too few for one fold",)),
        (("--grid", "fast=5,10", "--workers", "0"), ("--workers 0",)),
        (("--grid", "fast=5,10", "--cluster", "localhost"), ("tcp://",)),
        ((), ("at least one --grid",)),
    ],
)
def test_bad_sweeps_exit_2_with_one_line_and_store_nothing(
    cli: CLI, sma_ws: WS, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    """A bad grid, parameter, objective or window is one line on stderr, exit 2, before
    any run is stored (never a traceback)."""
    result = cli("sweep", "sma_cross", "--home", sma_ws.home, "--source", SOURCE, *args)
    assert result.exit_code == 2, result.output
    one_error_line(result.stderr, *needles)
    assert _store_runs(sma_ws) == {}
    assert not (sma_ws.workspace.data_dir / "reports").exists()


# -- results equal one-by-one backtests ------------------------------------------------


def test_sweep_on_local_processes_equals_backtests_one_by_one(cli: CLI, sma_ws: WS) -> None:
    """Six combinations on two local worker processes: each is a completed stored run
    whose metrics equal 'bastion backtest --param' of the same combination, the table is
    ranked by the objective, the audit log verifies, and the report is written."""
    swept = _sweep(cli, sma_ws, *GRID, "--workers", "2", "--objective", "total_return")
    assert swept["completed"] == swept["runs"] == 6 and not swept["interrupted"], [
        (r["status"], r["error"]) for r in swept["results"] if r["status"] != "completed"
    ]
    values = [r["objective"] for r in swept["results"]]
    assert values == sorted(values, reverse=True)
    stored = _store_runs(sma_ws)
    assert {r["run_id"] for r in swept["results"]} <= set(stored)
    assert all(stored[r["run_id"]].status == "completed" for r in swept["results"])
    for row in swept["results"]:
        params = [f"--param={k}={v}" for k, v in row["params"].items()]
        one = cli(
            "backtest", "sma_cross", "--home", sma_ws.home, "--source", SOURCE, *params,
            "--json", "--no-report",
        )  # fmt: skip
        assert one.exit_code == 0, one.output
        assert json.loads(one.stdout)["strategies"][0]["metrics"] == row["metrics"]
    assert _audit_ok(sma_ws)
    report = Path(swept["report"])
    assert report.is_file() and (report.parent / "objective.png").is_file()


def test_an_in_process_sweep_equals_the_sandboxed_one_and_is_development_only(
    cli: CLI, sma_ws: WS
) -> None:
    """--in-process runs each combination inside its worker process (trusted code, one
    core a run instead of two): the same metrics as the sandboxed sweep, the note said
    on stderr, each stored run in-process; paper refuses it in one line, storing nothing."""
    inside = cli(
        "sweep", "sma_cross", "--home", sma_ws.home, "--source", SOURCE, *GRID,
        "--workers", "2", "--in-process", "--no-report", "--json",
    )  # fmt: skip
    assert inside.exit_code == 0, inside.output
    assert "--in-process: strategy code runs inside the kernel" in inside.stderr
    sandboxed = _sweep(cli, sma_ws, *GRID, "--workers", "1", "--no-report")
    results = json.loads(inside.stdout)["results"]
    assert all(r["status"] == "completed" for r in results), [
        (r["status"], r["error"]) for r in results if r["status"] != "completed"
    ]
    assert _by_params(results) == _by_params(sandboxed["results"])
    stored = _store_runs(sma_ws)
    before = len(stored)
    paper = cli(
        "sweep", "sma_cross", "--home", sma_ws.home, "--env", "paper", "--source", SOURCE,
        *GRID, "--in-process", "--no-report",
    )  # fmt: skip
    assert paper.exit_code == 2
    assert "--in-process" in paper.stderr and "refuses it" in paper.stderr
    assert len(_store_runs(sma_ws)) == before


# -- a real Dask cluster -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[str]:
    """A local Dask distributed cluster (two worker processes) on 127.0.0.1."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        host="127.0.0.1",
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    ) as cluster:
        yield cluster.scheduler_address


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sweep_on_a_dask_cluster_equals_the_sequential_sweep(
    cli: CLI, sma_ws: WS, dask_cluster: str
) -> None:
    """The same grid on a real Dask cluster and one run after the other in this process
    gives the same metrics for every combination, every run stored as completed."""
    on_cluster = _sweep(cli, sma_ws, *GRID, "--cluster", dask_cluster, "--no-report")
    sequential = _sweep(cli, sma_ws, *GRID, "--workers", "1", "--no-report")
    assert "Dask cluster" in on_cluster["workers"]
    assert on_cluster["completed"] == sequential["completed"] == 6
    assert _by_params(on_cluster["results"]) == _by_params(sequential["results"])
    assert [r["params"] for r in on_cluster["results"]] == [
        r["params"] for r in sequential["results"]
    ]
    stored = _store_runs(sma_ws)
    assert all(stored[r["run_id"]].status == "completed" for r in on_cluster["results"])
    assert _audit_ok(sma_ws)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_dask_worker_refuses_tampered_bytes(sma_ws: WS, dask_cluster: str) -> None:
    """A task whose strategy bytes changed after the client verified them is refused by
    the Dask worker that receives it (the Gate's hash check), and nothing is stored."""
    distributed = pytest.importorskip("distributed")
    task = _task(sma_ws)
    tampered = attrs.evolve(
        task, bundle=attrs.evolve(task.bundle, source=task.bundle.source + b"\nX = 1\n")
    )
    with distributed.Client(dask_cluster, set_as_default=False) as client:
        result = client.submit(run_task, tampered.to_wire(), pure=False).result()
    assert result["status"] == "refused"
    assert "hash-mismatch" in result["error"]
    assert _store_runs(sma_ws) == {}


# -- workers re-verify ---------------------------------------------------------------------


def test_workers_refuse_tampered_tasks(sma_ws: WS, tmp_path: Path) -> None:
    """run_task admits only through the Gate: changed bytes, a signature from an untrusted
    key, a hash other than the one the client verified, or another Bastion version are
    refused before any run is stored; the untouched task completes."""
    task = _task(sma_ws)
    flipped = bytearray(task.bundle.source)
    flipped[-2] ^= 1
    other = WS(home=tmp_path / "other", keys_dir=tmp_path / "other-keys")
    (other.home / "strategies").mkdir(parents=True)
    (other.home / "signatures").mkdir()
    other.write("sma_cross.py", task.bundle.source + b"\n# changed\n")
    other.sign("sma_cross.py")
    forged = bundle_strategy(other.gate(), "sma_cross")
    cases = {
        # the bytes changed after the client verified them
        "hash-mismatch": attrs.evolve(task.bundle, source=bytes(flipped)),
        # files signed by a key this workspace does not trust
        "is not trusted": attrs.evolve(forged, keys=task.bundle.keys, revoked=None),
        # a whole forged bundle with its own keys, claiming the client's hash
        "verified SHA-256": attrs.evolve(forged, sha256=task.bundle.sha256),
    }
    for needle, bundle in cases.items():
        result = run_task(attrs.evolve(task, bundle=bundle).to_wire())
        assert result["status"] == "refused", (needle, result)
        assert needle in result["error"], (needle, result)
    old = run_task(attrs.evolve(task, version="0.0.1").to_wire())
    assert old["status"] == "refused" and "same version" in old["error"]
    assert _store_runs(sma_ws) == {}
    good = run_task(task.to_wire())
    assert good["status"] == "completed"
    assert _store_runs(sma_ws)[good["run_id"]].status == "completed"


# -- walk-forward --------------------------------------------------------------------------


def _days(n: int) -> list[datetime]:
    start = datetime(2024, 1, 1, 21, tzinfo=UTC)
    return [start + timedelta(days=i) for i in range(n)]


def test_walk_forward_windows_in_bars_roll_by_the_test_window() -> None:
    """In bars: each test window starts right after its train window, never overlaps it,
    folds roll forward by the test length, and the last test window runs to the end."""
    times = _days(100)
    out = folds(times, parse_walk_forward("40:25"))
    assert [(f.train_bars, f.test_bars) for f in out] == [(40, 25), (40, 25), (40, 10)]
    for fold in out:
        assert fold.train_end < fold.test_start
        assert times.index(fold.test_start) == times.index(fold.train_end) + 1
    assert out[1].train_start == times[25]
    assert out[-1].test_end == times[-1]
    assert folds(times, parse_walk_forward("100:10")) == []


def test_walk_forward_windows_in_calendar_months() -> None:
    """In calendar units: 2m:1m over a year of days gives train windows of two months
    and test windows of the month after, without overlap."""
    times = _days(366)
    spec = parse_walk_forward("2m:1m")
    assert isinstance(spec, WalkForward) and spec.train.unit == "months"
    out = folds(times, spec)
    assert len(out) == 10
    first = out[0]
    assert first.train_start == times[0] and first.train_end == datetime(
        2024, 2, 29, 21, tzinfo=UTC
    )
    assert first.test_start == datetime(2024, 3, 1, 21, tzinfo=UTC)
    assert first.test_end == datetime(2024, 3, 31, 21, tzinfo=UTC)
    for a, b in itertools.pairwise(out):
        assert a.test_end < b.test_start and a.train_end < a.test_start


def test_walk_forward_picks_the_best_train_params_and_tests_them_after(
    cli: CLI, sma_ws: WS
) -> None:
    """Each fold's chosen parameters are the best train-window run's (by the objective,
    train results only), its test run is stored over exactly the test window, and the
    stitched out-of-sample return compounds the folds' test returns."""
    swept = _sweep(
        cli, sma_ws, "--grid", "fast=5,10", "--grid", "slow=20,40",
        "--walk-forward", "120:60", "--workers", "1", "--no-report",
    )  # fmt: skip
    wf = swept["walk_forward"]
    assert len(wf["folds"]) == 3
    store = Kernel().open_store("sqlite", PluginContext("development", sma_ws.workspace.data_dir))
    try:
        product = 1.0
        for fold in wf["folds"]:
            train = [r for r in swept["results"] if r["fold"] == fold["fold"]]
            assert len(train) == 4
            scored = [r for r in train if r["objective"] is not None]
            best = max(scored, key=lambda r: r["objective"])
            assert fold["best_params"] == best["params"]
            config = store.load_run(fold["test_run_id"]).info.config
            assert config["from"] == fold["test"][0] and config["to"] == fold["test"][1]
            assert config["params"]["sma_cross.py"]["fast"] == int(best["params"]["fast"])
            for row in train:
                train_config = store.load_run(row["run_id"]).info.config
                assert train_config["to"] == fold["train"][1] < fold["test"][0]
            product *= 1 + fold["test_metrics"]["total_return"]
    finally:
        store.close()
    assert wf["stitched"]["metrics"]["total_return"] == pytest.approx(product - 1, rel=1e-9)
    assert swept["completed"] == swept["runs"] == 3 * 4 + 3


# -- stopping --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop event", "Ctrl-C"])
def test_stopping_keeps_finished_runs(sma_ws: WS, how: str) -> None:
    """A stop event (or Ctrl-C) after the first result ends the sweep: nothing more
    starts, the finished run stays stored as completed, and the audit log verifies."""
    base = _task(sma_ws)
    tasks = [attrs.evolve(base, index=i, params=(f"fast={i + 4}",)) for i in range(1, 5)]
    stop = threading.Event()

    def on_result(result: dict[str, Any]) -> list[SweepTask]:
        if how == "Ctrl-C":
            raise KeyboardInterrupt
        stop.set()
        return []

    outcome = drive(Sequential(stop), tasks, on_result, stop)
    assert outcome.interrupted
    assert [r["status"] for r in outcome.results] == ["completed"]
    runs = _store_runs(sma_ws)
    assert list(runs) == [outcome.results[0]["run_id"]]
    assert runs[outcome.results[0]["run_id"]].status == "completed"
    assert _audit_ok(sma_ws)


def test_stopping_a_local_pool_leaves_no_run_running(sma_ws: WS) -> None:
    """Stopping a sweep on two local processes keeps what finished: no task starts after
    the stop, every stored run is completed or failed (never left running), and the
    audit log verifies."""
    base = _task(sma_ws)
    tasks = [attrs.evolve(base, index=i, params=(f"fast={i + 4}",)) for i in range(1, 9)]
    stop = threading.Event()
    runner = LocalPool(2)
    try:
        outcome = drive(runner, tasks, lambda result: stop.set() or [], stop)
    finally:
        runner.close()
    assert outcome.interrupted
    completed = [r for r in outcome.results if r["status"] == "completed"]
    assert 1 <= len(completed) < 8
    runs = _store_runs(sma_ws)
    assert {r["run_id"] for r in completed} <= set(runs)
    assert {row.status for row in runs.values()} <= {"completed", "failed"}
    assert len(runs) < 8
    assert _audit_ok(sma_ws)
