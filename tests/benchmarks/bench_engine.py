"""Bars per second: Bastion's engine (in-process and sandboxed) vs a bare Python loop vs
backtrader (and vectorbt), the whole ``bastion backtest`` command vs the engine, the
cost of an order round trip and the command's peak memory, in one run.

    .venv/bin/pip install -e '.[bench]'      # backtrader (optional)
    .venv/bin/pip install vectorbt           # optional, heavy (numba, scipy, pandas...)
    .venv/bin/python tests/benchmarks/bench_engine.py [--bars 200000] [--repeat 3]
        [--split] [--command] [--rss [--rss-20m]] [--compare] [--all] [--json]

All of them process the same synthetic bars (``synthetic:N,seed=7,interval=1m``:
1 symbol, seeded, generated before any timing) with the same SMA(10)/SMA(30)
crossover holding 100 shares while fast > slow:

* ``engine``: the signed example ``strategies/sma_cross.py``, admitted through
  the real door, run in-process by the engine with the ``sim`` broker and the
  ``sqlite`` store (orders, fills, equity curve and results are written);
* ``sandboxed``: the same, with the strategy in its locked-down worker process
  (the default of ``bastion backtest``); its fills must equal the in-process
  ones;
* ``N_strategies`` (``--strategies``, default 4): N identical copies of the
  strategy at once, in-process (run in turn) and sandboxed (N workers, which
  run in parallel on the machine's cores);
* ``bare_loop``: the same running-sum SMA arithmetic and position switching,
  in a plain ``for`` loop over the same Bar objects, no kernel at all;
* ``backtrader``: ``bt.ind.SMA`` crossover with ``order_target_size``, on the
  same prices exported once to columns (skipped with a note if backtrader is
  not installed; ``--no-backtrader`` skips it);
* ``vectorbt`` (``--compare``, when installed): the same crossover, vectorised,
  on the same exported columns.

Admission (workers starting, locking down, loading) is not timed; each figure
is the best of ``--repeat`` runs.

**µs per order round trip** is always measured: the engine is run again at
``quantity=0`` (all of the strategy's arithmetic and ``ctx`` calls, no orders),
both ways; the full run minus that one, divided by the number of fills.

``--split`` adds where the engine's time goes, in µs per bar: also a strategy
that does nothing (``noop.py``, signed in the throwaway workspace with a
throwaway key and admitted through the same door).  The sandboxed no-op minus
the in-process no-op is the hand-off's cost per bar.

``--compare`` checks that backtrader and vectorbt trade exactly like the engine
(same bars, same signed quantities, same prices to the cent; see
``agreement.py``) and prints a table of bars/s with the ratios.  Disagreements
are printed, not hidden; the engine's own two hosts must agree exactly.

``--command`` times the real ``bastion backtest sma_cross.py --source
synthetic:N,seed=7,interval=1m …`` in a subprocess, from exec to exit, three
ways (sandboxed with the report, sandboxed ``--no-report``, ``--in-process
--no-report``), and sets its bars/s against the engine's own on the same bars.
The command generates its bars as it goes; the harness times that generation
separately, and ``bastion --version`` as the start-up, to say where the
difference goes.

``--rss`` runs ``bastion backtest … --no-report`` (sandboxed, as users run it)
at 200k and 2M bars (``--rss-20m``: also 20M, minutes), each in its own
subprocess that streams its bars from the ``synthetic:`` spec, and reports its
peak resident memory (``ru_maxrss`` from ``wait4``: the largest process of its
tree).  A child past ``--rss-cap-mb`` is killed and reported as such.

Prints the exact command line, then tables; ``--json`` prints one JSON object
with every figure instead.  Not part of the test suite (no timed assertions
there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import agreement
import frameworks
from frameworks import FAST, QUANTITY, SLOW

from bastion import Gate, Kernel, Strategy, Workspace
from bastion._engine import Engine, EngineConfig
from bastion._host import in_process
from bastion._keys import generate_key
from bastion._sandbox import SandboxConfig
from bastion._sandbox import sandboxed as sandboxed_launcher
from bastion._signing import sign_strategies
from bastion._trust import TrustStore
from bastion.interfaces import RunInfo, StrategyRecord
from bastion.models import Bar
from bastion.plugins.sim import SimBroker
from bastion.plugins.sqlite_store import SQLiteStore
from bastion.plugins.synthetic import SyntheticSource

REPO = Path(__file__).resolve().parents[2]
BROKER = "commission=none,slippage=0,participation=1"
CASH = 10**7


def source_spec(n: int) -> str:
    # Intraday spacing so 200k bars stay in a realistic date range.
    return f"{n},symbols=1,seed=7,interval=1m"


def make_bars(n: int) -> list[Bar]:
    return list(SyntheticSource.open(source_spec(n)).bars())


NOOP_STRATEGY = """from bastion import strategy


@strategy.hook
def on_bar(ctx, bar):
    pass
"""


def workspace_copy(home: Path) -> None:
    shutil.copytree(REPO / "strategies", home / "strategies")
    shutil.copytree(REPO / "signatures", home / "signatures")


class EngineRun:
    """One timed engine run: seconds, the first strategy's fill count and (when
    asked for) its executions as ``(bar index, signed quantity, price)``."""

    def __init__(self, seconds: float, fills: int, executions: list[Any] | None) -> None:
        self.seconds, self.fills, self.executions = seconds, fills, executions

    def __lt__(self, other: EngineRun) -> bool:
        return self.seconds < other.seconds


def bench_engine(
    bars: list[Bar],
    name: str = "sma_cross.py",
    quantity: int = QUANTITY,
    *,
    sandboxed: bool = False,
    copies: int = 1,
    executions: bool = False,
) -> EngineRun:
    """Time the engine over ``bars`` (admission excluded).  ``copies`` > 1 runs that
    many identical strategies at once (copies of ``name`` under other names, signed
    with a throwaway key).  ``executions`` reads the first strategy's fills back from
    the store after the clock stops."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        workspace_copy(home)
        workspace = Workspace(home)
        names = [name]
        if name == "noop.py":
            (home / "strategies" / name).write_text(NOOP_STRATEGY)
        if copies > 1:
            source = (home / "strategies" / name).read_bytes()
            names = [f"{name.removesuffix('.py')}_{i}.py" for i in range(copies)]
            for copy in names:
                (home / "strategies" / copy).write_bytes(source)
        if names != ["sma_cross.py"]:
            key = generate_key("bench", home / "keys")
            TrustStore.load(home / "signatures").add(home / "keys" / "bench.pub")
            sign_strategies(workspace, key, names)
        kernel = Kernel(entry_points=False)
        launcher = sandboxed_launcher(SandboxConfig()) if sandboxed else in_process
        strategies = Gate(workspace).admit_many([home / "strategies" / n for n in names], launcher)
        admitted = [s for s in strategies if isinstance(s, Strategy)]
        assert len(admitted) == len(names), strategies
        store = SQLiteStore.open(workspace.ensure_data_dir())
        run_id = "bench"
        store.begin_run(
            RunInfo(run_id, "backtest", "development", datetime.now(UTC), "bench", {}),
            [
                StrategyRecord(
                    s.name, s.info.sha256, s.info.signer, None, None, False, dict(s.params)
                )
                for s in admitted
            ],
        )
        runs = []
        for strategy in admitted:
            params = dict(strategy.params)
            if name == "sma_cross.py":
                params.update(fast=FAST, slow=SLOW, quantity=quantity)
            runs.append((strategy, params))
        engine = Engine(
            kernel,
            SimBroker.open(BROKER),
            store,
            runs,
            EngineConfig(
                run_id=run_id,
                environment="development",
                cash=Decimal(CASH),
                symbols=frozenset({bars[0].symbol}),
            ),
        )
        started = time.perf_counter()
        result = engine.run(bars)
        store.finish_run(run_id, "completed", None)
        elapsed = time.perf_counter() - started
        fills = None
        if executions:
            index = {bar.ts: i for i, bar in enumerate(bars)}
            fills = [
                (
                    index[fill.ts],
                    fill.quantity if fill.side.value == "buy" else -fill.quantity,
                    fill.price,
                )
                for fill in store.load_run(run_id).strategies[0].executions
            ]
        store.close()
        return EngineRun(elapsed, result.strategies[0].fills, fills)


# ---------------------------------------------------------------- subprocesses


def bastion_argv() -> list[str]:
    script = Path(sys.executable).parent / "bastion"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bastion"]


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}


# The child is started by this small helper, not by the harness: on Linux a process
# inherits, in ru_maxrss, the resident size of the process it was forked from (at
# fork and again at exec), so a child of the harness, which holds the bars, would
# report at least the harness's own size.  The helper is a bare interpreter.
WAIT4_HELPER = """
import json, os, signal, subprocess, sys, threading, time
out, cap_kb, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
started = time.perf_counter()
child = subprocess.Popen(argv, start_new_session=True)
killed = []
def watch():
    path = f"/proc/{child.pid}/status"
    while True:
        time.sleep(0.25)
        try:
            text = open(path).read()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("VmRSS:") and cap_kb and int(line.split()[1]) > cap_kb:
                killed.append(True)
                os.killpg(child.pid, signal.SIGKILL)
                return
threading.Thread(target=watch, daemon=True).start()
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - started
child.returncode = os.waitstatus_to_exitcode(status)
with open(out, "w") as f:
    json.dump({"seconds": seconds, "max_rss_kb": usage.ru_maxrss, "exit": child.returncode,
               "killed_over_cap": bool(killed)}, f)
"""


def run_child(argv: list[str], cwd: Path, cap_mb: int | None = None) -> dict[str, Any]:
    """Run ``argv`` to its exit through :data:`WAIT4_HELPER`: its wall time from exec
    to exit, its peak RSS (``wait4``: the largest process among it and the children
    it waited for), its exit status, stdout and stderr.  Past ``cap_mb`` of RSS
    (polled every 0.25 s) its process group is killed."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rusage.json"
        done = subprocess.run(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                WAIT4_HELPER,
                str(result),
                str((cap_mb or 0) * 1024),
                *argv,
            ],
            cwd=cwd,
            env=child_env(),
            capture_output=True,
            check=False,
        )
        if not result.exists():
            raise SystemExit(f"the wait4 helper failed: {done.stderr.decode()[-2000:]}")
        usage = json.loads(result.read_text())
    return {
        "seconds": usage["seconds"],
        "max_rss_mb": round(usage["max_rss_kb"] / 1024, 1),  # Linux: kilobytes
        "exit": usage["exit"],
        "killed_over_cap": usage["killed_over_cap"],
        "stdout": done.stdout.decode(errors="replace"),
        "stderr": done.stderr.decode(errors="replace")[-2000:],
    }


def backtest_argv(home: Path, n: int, *, report: bool, in_process_host: bool) -> list[str]:
    argv = [
        *bastion_argv(),
        "backtest",
        "sma_cross.py",
        "--home",
        str(home),
        "--source",
        f"synthetic:{source_spec(n)}",
        "--cash",
        str(CASH),
        "--broker",
        f"sim:{BROKER}",
        "--param",
        f"fast={FAST}",
        "--param",
        f"slow={SLOW}",
        "--param",
        f"quantity={QUANTITY}",
        "--json",
    ]
    if not report:
        argv.append("--no-report")
    if in_process_host:
        argv.append("--in-process")
    return argv


def command_run(
    n: int, *, report: bool, in_process_host: bool, cap_mb: int | None
) -> dict[str, Any]:
    """One real ``bastion backtest`` in a fresh workspace; its fills from ``--json``."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        workspace_copy(home)
        argv = backtest_argv(home, n, report=report, in_process_host=in_process_host)
        outcome = run_child(argv, home, cap_mb)
        outcome["argv"] = shlex.join(["bastion", *argv[len(bastion_argv()) :]]).replace(
            str(home), "WORKSPACE"
        )
        if outcome["exit"] == 0:
            summary = json.loads(outcome["stdout"])
            outcome["fills"] = summary["strategies"][0]["fills"]
        else:
            outcome["fills"] = None
        del outcome["stdout"]
        if outcome["exit"] == 0:
            del outcome["stderr"]
        return outcome


def time_startup(repeat: int) -> dict[str, float]:
    """``bastion --version``: interpreter, imports and the CLI, nothing run."""
    runs = [run_child([*bastion_argv(), "--version"], REPO) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    return {"seconds": round(best["seconds"], 3), "max_rss_mb": best["max_rss_mb"]}


def time_source(n: int, repeat: int) -> float:
    """Seconds to generate (and drop) the command's bars, as its source does."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _bar in SyntheticSource.open(source_spec(n)).bars():
            pass
        best = min(best, time.perf_counter() - started)
    return best


# ---------------------------------------------------------------- output


def git_head() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    changed = git("status", "--porcelain", "--", "core", "plugins", "strategies")
    return {
        "commit": git("rev-parse", "--short=10", "HEAD"),
        "subject": git("log", "-1", "--format=%s")[:100],
        "uncommitted_changes_in_core_or_plugins": bool(changed),
    }


def fmt(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    # The command line itself was printed first, before the runs (main).
    head = report["code"]
    console.print(
        f"commit {head['commit']}"
        + (
            " + uncommitted changes in core/plugins"
            if head["uncommitted_changes_in_core_or_plugins"]
            else ""
        )
        + f"; Python {report['python']} on {report['cpus']} CPUs ({report['machine']}); "
        f"{report['bars']:,} bars ({report['source']}); best of {report['repeat']}",
        markup=False,
    )
    speed = Table(title="bars per second")
    for column in ("", "bars/s", "relative"):
        speed.add_column(column, justify="right" if column == "bars/s" else "left")
    bt = report.get("backtrader_bars_per_s")
    speed.add_row(
        "bare Python loop",
        fmt(report["bare_loop_bars_per_s"]),
        f"{report['engine_vs_bare_loop_slowdown']}x the engine (in-process)",
    )
    speed.add_row(
        "engine, in-process, 1 strategy",
        fmt(report["engine_bars_per_s"]),
        f"{report['engine_vs_backtrader']}x backtrader" if bt else "—",
    )
    if "sandboxed_bars_per_s" in report:
        speed.add_row(
            "engine, sandboxed, 1 strategy",
            fmt(report["sandboxed_bars_per_s"]),
            f"{report['sandboxed_vs_in_process']} of in-process"
            + (f"; {report['sandboxed_vs_backtrader']}x backtrader" if bt else ""),
        )
    for key, value in report.items():
        if key.endswith("_strategies") and isinstance(value, dict):
            count = key.split("_")[0]
            speed.add_row(
                f"engine, in-process, {count} strategies", fmt(value["in_process_bars_per_s"]), "—"
            )
            speed.add_row(
                f"engine, sandboxed, {count} strategies",
                fmt(value["sandboxed_bars_per_s"]),
                f"{value['sandboxed_vs_in_process']} of in-process",
            )
    if bt:
        speed.add_row(f"backtrader {report['backtrader_version']}", fmt(bt), "—")
    elif "backtrader" in report:
        speed.add_row("backtrader", "—", report["backtrader"])
    vb = report.get("vectorbt_bars_per_s")
    if vb:
        speed.add_row(
            f"vectorbt {report['vectorbt_version']} (vectorised)",
            fmt(vb),
            f"{report['vectorbt_vs_engine']}x the engine",
        )
    elif "vectorbt" in report:
        speed.add_row("vectorbt", "—", report["vectorbt"])
    console.print(speed)

    orders = report["order_round_trip"]
    trips = Table(title=f"µs per order round trip ({orders['round_trips']:,} fills)")
    for column in ("", "in-process", "sandboxed"):
        trips.add_column(column, justify="left" if not column else "right")
    trips.add_row(
        "engine, full (µs/bar)",
        fmt(orders["in_process"]["full_us_per_bar"], 2),
        fmt(orders.get("sandboxed", {}).get("full_us_per_bar"), 2),
    )
    trips.add_row(
        "engine at quantity=0 (µs/bar)",
        fmt(orders["in_process"]["without_orders_us_per_bar"], 2),
        fmt(orders.get("sandboxed", {}).get("without_orders_us_per_bar"), 2),
    )

    def per_trip(host: str) -> str:
        figures = orders.get(host)
        if figures is None:
            return "—"
        if "noise" in figures:
            return f"noise ({figures['us_per_round_trip']:,.1f}: machine too busy)"
        return fmt(figures["us_per_round_trip"], 1)

    trips.add_row("[b]µs per order round trip[/b]", per_trip("in_process"), per_trip("sandboxed"))
    trips.add_row(
        "share of the full run",
        f"{orders['in_process']['share_of_run']:.0%}",
        f"{orders['sandboxed']['share_of_run']:.0%}" if "sandboxed" in orders else "—",
    )
    console.print(trips)

    if "split_us_per_bar" in report:
        split = Table(title="where the engine's time goes, µs per bar")
        split.add_column("part")
        split.add_column("in-process", justify="right")
        split.add_column("sandboxed", justify="right")
        a, b = report["split_us_per_bar"], report.get("split_sandboxed_us_per_bar", {})
        split.add_row("bare loop", fmt(a["bare_loop"], 2), "")
        split.add_row(
            "engine, no-op strategy",
            fmt(a["engine_noop_strategy"], 2),
            fmt(b.get("engine_noop_strategy"), 2),
        )
        split.add_row("— of which the hand-off", "", fmt(b.get("hand_off_per_bar"), 2))
        split.add_row(
            "+ the SMA strategy through ctx",
            fmt(a["strategy_through_ctx"], 2),
            fmt(b.get("strategy_through_ctx"), 2),
        )
        split.add_row("+ the order round trips", fmt(a["orders"], 2), fmt(b.get("orders"), 2))
        split.add_row("full", fmt(a["engine_full"], 2), fmt(b.get("engine_full"), 2))
        console.print(split)

    if "command" in report:
        command = report["command"]
        table = Table(title=f"whole command vs engine, {report['bars']:,} bars (target ≥ 0.8)")
        for column in (
            "bastion backtest …",
            "wall s",
            "bars/s",
            "engine bars/s",
            "ratio",
            "peak RSS MB",
        ):
            table.add_column(column, justify="left" if column.startswith("bastion") else "right")
        for name, row in command["runs"].items():
            table.add_row(
                name,
                fmt(row["seconds"], 2),
                fmt(row["bars_per_s"]),
                fmt(row["engine_bars_per_s"]),
                f"{row['vs_engine']:.2f}",
                fmt(row["max_rss_mb"], 1),
            )
        console.print(table)
        parts = command["where_the_time_goes_s"]
        console.print(
            "  start-up (bastion --version) "
            f"{parts['startup']:.2f} s; generating the bars {parts['source']:.2f} s; "
            f"engine in-process {parts['engine_in_process']:.2f} s, sandboxed "
            f"{parts['engine_sandboxed']:.2f} s",
            markup=False,
        )
        console.print(f"  e.g. $ {command['example']}", markup=False, soft_wrap=True)

    if "rss" in report:
        table = Table(
            title="peak RSS of bastion backtest --no-report (sandboxed), own subprocess each"
        )
        for column in ("bars", "peak RSS MB", "wall s", "bars/s", "fills"):
            table.add_column(column, justify="right")
        for row in report["rss"]["runs"]:
            table.add_row(
                fmt(row["bars"]),
                fmt(row["max_rss_mb"], 1)
                + (" (killed: over the cap)" if row["killed_over_cap"] else ""),
                fmt(row["seconds"], 1),
                fmt(row["bars_per_s"]),
                fmt(row["fills"]),
            )
        console.print(table)
        console.print(
            f"  bastion --version alone: {report['rss']['startup_max_rss_mb']} MB; "
            f"growth: {report['rss']['bytes_per_bar']}",
            markup=False,
        )

    if "agreement" in report:
        table = Table(
            title="do the trades agree with the engine's? (bar, signed quantity, price to the cent)"
        )
        for column in ("", "executions", "agree", "disagreements"):
            table.add_column(column)
        for name, check in report["agreement"].items():
            table.add_row(
                name,
                f"{check['other_executions']:,} vs {check['reference_executions']:,}",
                "yes" if check["agree"] else "[b]NO[/b]",
                "; ".join(check["examples"])
                or f"none (max price difference {check['max_price_difference']})",
            )
        console.print(table)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-backtrader", action="store_true")
    parser.add_argument(
        "--split", action="store_true", help="also time a no-op strategy (where the time goes)"
    )
    parser.add_argument(
        "--no-sandbox", action="store_true", help="skip the sandboxed runs (in-process only)"
    )
    parser.add_argument(
        "--strategies",
        type=int,
        default=4,
        help="also run this many copies at once, both ways (0: skip) [default: 4]",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="backtrader and vectorbt (if installed) on the same bars; check their trades",
    )
    parser.add_argument(
        "--command", action="store_true", help="time the whole bastion backtest command"
    )
    parser.add_argument(
        "--rss", action="store_true", help="peak RSS of the command at 200k and 2M bars"
    )
    parser.add_argument("--rss-20m", action="store_true", help="with --rss: also 20M bars")
    parser.add_argument(
        "--rss-cap-mb", type=int, default=8000, help="kill an RSS child past this [8000]"
    )
    parser.add_argument(
        "--all", action="store_true", help="--split --compare --command --rss (not --rss-20m)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object, no tables")
    args = parser.parse_args(argv)
    if args.all:
        args.split = args.compare = args.command = args.rss = True
    if args.rss_20m:
        args.rss = True
    if args.bars < SLOW + 1 or args.repeat < 1:
        parser.error("--bars must exceed the slow window and --repeat be >= 1")
    shown = argv if argv is not None else sys.argv[1:]
    command_line = shlex.join([".venv/bin/python", "tests/benchmarks/bench_engine.py", *shown])
    if not args.json:
        print(f"$ {command_line}", flush=True)

    def log(text: str) -> None:
        print(f"  … {text}", file=sys.stderr, flush=True)

    bars = make_bars(args.bars)
    n = len(bars)
    per_bar = 1e6 / n
    repeat = args.repeat

    def best(**kwargs: Any) -> EngineRun:
        return min(bench_engine(bars, **kwargs) for _ in range(repeat))

    log("engine, in-process")
    engine = best(executions=True)
    bare = min(frameworks.bare_loop(bars) for _ in range(repeat))
    report: dict[str, Any] = {
        "command_line": command_line,
        "code": git_head(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "bars": n,
        "source": f"synthetic:{source_spec(args.bars)}",
        "repeat": repeat,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "engine_bars_per_s": round(n / engine.seconds),
        "engine_fills": engine.fills,
        "bare_loop_bars_per_s": round(n / bare[0]),
        "bare_loop_switches": bare[1],
        "engine_vs_bare_loop_slowdown": round(engine.seconds / bare[0], 2),
    }
    boxed: EngineRun | None = None
    if not args.no_sandbox:
        log("engine, sandboxed")
        boxed = best(sandboxed=True, executions=True)
        if boxed.executions != engine.executions:
            raise SystemExit("sandboxed and in-process fills differ")
        report["sandboxed_bars_per_s"] = round(n / boxed.seconds)
        report["sandboxed_vs_in_process"] = round(engine.seconds / boxed.seconds, 3)
        if args.strategies > 1:
            log(f"{args.strategies} strategies, both ways")
            many_in = best(copies=args.strategies)
            many_boxed = best(copies=args.strategies, sandboxed=True)
            report[f"{args.strategies}_strategies"] = {
                "in_process_bars_per_s": round(n / many_in.seconds),
                "sandboxed_bars_per_s": round(n / many_boxed.seconds),
                "sandboxed_vs_in_process": round(many_in.seconds / many_boxed.seconds, 3),
            }

    # µs per order round trip: the full run minus the same strategy at quantity=0.
    log("engine at quantity=0 (order round trips)")
    quiet = best(quantity=0)
    trips = max(engine.fills, 1)
    orders: dict[str, Any] = {
        "round_trips": engine.fills,
        "how": "(full run - same strategy at quantity=0) / fills",
        "in_process": {
            "full_us_per_bar": round(engine.seconds * per_bar, 3),
            "without_orders_us_per_bar": round(quiet.seconds * per_bar, 3),
            "us_per_round_trip": round((engine.seconds - quiet.seconds) * 1e6 / trips, 1),
            "share_of_run": round((engine.seconds - quiet.seconds) / engine.seconds, 3),
        },
    }
    boxed_quiet: EngineRun | None = None
    if boxed is not None:
        boxed_quiet = best(quantity=0, sandboxed=True)
        orders["sandboxed"] = {
            "full_us_per_bar": round(boxed.seconds * per_bar, 3),
            "without_orders_us_per_bar": round(boxed_quiet.seconds * per_bar, 3),
            "us_per_round_trip": round((boxed.seconds - boxed_quiet.seconds) * 1e6 / trips, 1),
            "share_of_run": round((boxed.seconds - boxed_quiet.seconds) / boxed.seconds, 3),
        }
    for host in ("in_process", "sandboxed"):
        if host in orders and orders[host]["us_per_round_trip"] <= 0:
            # The run without orders was the slower one: the machine's load, not a cost.
            orders[host]["noise"] = "the quantity=0 run was slower than the full run"
    report["order_round_trip"] = orders

    if args.split:
        log("no-op strategy (split)")
        noop = best(name="noop.py")
        report["split_us_per_bar"] = {
            "bare_loop": round(bare[0] * per_bar, 3),
            "engine_noop_strategy": round(noop.seconds * per_bar, 3),
            "engine_sma_without_orders": round(quiet.seconds * per_bar, 3),
            "engine_full": round(engine.seconds * per_bar, 3),
            "strategy_through_ctx": round((quiet.seconds - noop.seconds) * per_bar, 3),
            "orders": round((engine.seconds - quiet.seconds) * per_bar, 3),
            "us_per_order_round_trip": orders["in_process"]["us_per_round_trip"],
        }
        if boxed is not None and boxed_quiet is not None:
            boxed_noop = best(name="noop.py", sandboxed=True)
            report["split_sandboxed_us_per_bar"] = {
                "engine_noop_strategy": round(boxed_noop.seconds * per_bar, 3),
                "hand_off_per_bar": round((boxed_noop.seconds - noop.seconds) * per_bar, 3),
                "engine_sma_without_orders": round(boxed_quiet.seconds * per_bar, 3),
                "engine_full": round(boxed.seconds * per_bar, 3),
                "strategy_through_ctx": round(
                    (boxed_quiet.seconds - boxed_noop.seconds) * per_bar, 3
                ),
                "orders": round((boxed.seconds - boxed_quiet.seconds) * per_bar, 3),
                "us_per_order_round_trip": orders["sandboxed"]["us_per_round_trip"],
            }

    reference = agreement.per_bar(engine.executions or [])
    checks: dict[str, Any] = {}
    if boxed is not None:
        checks["engine, sandboxed"] = agreement.compare(
            reference, agreement.per_bar(boxed.executions or [])
        )
    exported = frameworks.export(bars) if (args.compare or not args.no_backtrader) else None
    if exported is not None and (args.compare or not args.no_backtrader):
        log("backtrader")
        runs = [frameworks.backtrader_run(exported) for _ in range(repeat)]
        outcome = runs[0] if isinstance(runs[0], str) else min(runs, key=lambda r: r[0])  # type: ignore[index]
        if isinstance(outcome, str):
            report["backtrader"] = outcome
        else:
            seconds, fills, version = outcome
            report["backtrader_version"] = version
            report["backtrader_bars_per_s"] = round(n / seconds)
            report["backtrader_orders"] = len(fills)
            report["engine_vs_backtrader"] = round(seconds / engine.seconds, 1)
            if boxed is not None:
                report["sandboxed_vs_backtrader"] = round(seconds / boxed.seconds, 1)
            checks[f"backtrader {version}"] = agreement.compare(reference, agreement.per_bar(fills))
    if args.compare and exported is not None:
        log("vectorbt")
        vb = frameworks.vectorbt_run(exported, repeat)
        if isinstance(vb, str):
            report["vectorbt"] = vb
        else:
            seconds, fills, version = vb
            report["vectorbt_version"] = version
            report["vectorbt_bars_per_s"] = round(n / seconds)
            report["vectorbt_vs_engine"] = round(engine.seconds / seconds, 1)
            checks[f"vectorbt {version}"] = agreement.compare(reference, agreement.per_bar(fills))
        report["engine_vs_bare_loop"] = round(bare[0] / engine.seconds, 3)
        report["nautilus_trader"] = (
            "not run: its wheel pins pandas < 3 (vectorbt's pandas 3 here), and a "
            "backtest needs venue, instrument and bar-type set-up; see performance.md"
        )
    if checks:
        report["agreement"] = checks

    if args.command:
        log("the whole command")
        source_s = time_source(args.bars, repeat)
        startup = time_startup(repeat)
        modes = {
            "sandboxed, with the report (as users run it)": (True, False, boxed),
            "sandboxed, --no-report": (False, False, boxed),
            "--in-process --no-report": (False, True, engine),
        }
        rows: dict[str, Any] = {}
        example = ""
        for name, (with_report, host_in_process, matching) in modes.items():
            if matching is None:
                continue
            outcomes = [
                command_run(
                    args.bars, report=with_report, in_process_host=host_in_process, cap_mb=None
                )
                for _ in range(repeat)
            ]
            fastest = min(outcomes, key=lambda r: r["seconds"])
            if fastest["exit"] != 0:
                rows[name] = {"failed": fastest}
                continue
            if fastest["fills"] != engine.fills:
                raise SystemExit(
                    f"{name}: the command made {fastest['fills']} fills, the engine {engine.fills}"
                )
            example = example or fastest["argv"]
            rows[name] = {
                "seconds": round(fastest["seconds"], 3),
                "bars_per_s": round(n / fastest["seconds"]),
                "engine_bars_per_s": round(n / matching.seconds),
                "vs_engine": round(matching.seconds / fastest["seconds"], 3),
                "max_rss_mb": fastest["max_rss_mb"],
            }
        report["command"] = {
            "runs": rows,
            "example": example,
            "where_the_time_goes_s": {
                "startup": startup["seconds"],
                "source": round(source_s, 3),
                "engine_in_process": round(engine.seconds, 3),
                "engine_sandboxed": round(boxed.seconds, 3) if boxed else None,
            },
        }

    if args.rss:
        sizes = [200_000, 2_000_000] + ([20_000_000] if args.rss_20m else [])
        startup = time_startup(1)
        runs_rss = []
        for size in sizes:
            log(f"peak RSS at {size:,} bars")
            outcome = command_run(size, report=False, in_process_host=False, cap_mb=args.rss_cap_mb)
            runs_rss.append(
                {
                    "bars": size,
                    "max_rss_mb": outcome["max_rss_mb"],
                    "seconds": round(outcome["seconds"], 1),
                    "bars_per_s": round(size / outcome["seconds"]),
                    "fills": outcome["fills"],
                    "exit": outcome["exit"],
                    "killed_over_cap": outcome["killed_over_cap"],
                    "argv": outcome["argv"],
                    **({"stderr": outcome["stderr"]} if outcome["exit"] else {}),
                }
            )
        growth = []
        for a, b in itertools.pairwise(runs_rss):
            per = (b["max_rss_mb"] - a["max_rss_mb"]) * 2**20 / (b["bars"] - a["bars"])
            growth.append(f"{per:.1f} bytes/bar from {a['bars']:,} to {b['bars']:,}")
        report["rss"] = {
            "runs": runs_rss,
            "startup_max_rss_mb": startup["max_rss_mb"],
            "bytes_per_bar": "; ".join(growth) or "—",
            "children_max_rss_mb_all": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
            ),
        }

    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print_tables(report)


if __name__ == "__main__":
    main()
