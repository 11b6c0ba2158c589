"""Bars per second: Bastion's engine (in-process and sandboxed) vs a bare Python loop vs
backtrader, in one run.

    .venv/bin/pip install -e '.[bench]'      # backtrader (optional)
    .venv/bin/python tests/benchmarks/bench_engine.py [--bars 200000] [--repeat 3] [--split]

All of them process the same synthetic bars (1 symbol, seeded) with the same
SMA(10)/SMA(30) crossover holding 100 shares while fast > slow:

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
  same prices (skipped with a note if backtrader is not installed).

Bars are generated before timing, and admission (workers starting, locking
down, loading) is not timed; each figure is the best of ``--repeat`` runs.
Prints one JSON object.  Not part of the test suite (no timed assertions there).

``--split`` adds where the engine's time goes, in microseconds per bar, by
running it again on the same bars, both ways: with a strategy that does
nothing (``noop.py``, signed in the throwaway workspace with a throwaway key
and admitted through the same door) and with ``sma_cross.py`` at
``quantity=0`` (all of its arithmetic and ``ctx`` calls, no orders).  The
sandboxed no-op minus the in-process no-op is the hand-off's cost per bar.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import deque
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

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
FAST, SLOW, QUANTITY = 10, 30, 100


def make_bars(n: int) -> list[Bar]:
    # Intraday spacing so 200k bars stay in a realistic date range.
    return list(SyntheticSource.open(f"{n},symbols=1,seed=7,interval=1m").bars())


NOOP_STRATEGY = """from bastion import strategy


@strategy.hook
def on_bar(ctx, bar):
    pass
"""


def bench_engine(
    bars: list[Bar],
    name: str = "sma_cross.py",
    quantity: int = QUANTITY,
    *,
    sandboxed: bool = False,
    copies: int = 1,
) -> tuple[float, int]:
    """Seconds the engine takes over ``bars`` (admission excluded) and the fills of the
    first strategy.  ``copies`` > 1 runs that many identical strategies at once (copies
    of ``name`` under other names, signed with a throwaway key)."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        shutil.copytree(REPO / "strategies", home / "strategies")
        shutil.copytree(REPO / "signatures", home / "signatures")
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
            SimBroker.open("commission=none,slippage=0,participation=1"),
            store,
            runs,
            EngineConfig(
                run_id=run_id,
                environment="development",
                cash=Decimal(10**7),
                symbols=frozenset({bars[0].symbol}),
            ),
        )
        started = time.perf_counter()
        result = engine.run(bars)
        store.finish_run(run_id, "completed", None)
        elapsed = time.perf_counter() - started
        store.close()
        return elapsed, result.strategies[0].fills


def bench_bare(bars: list[Bar]) -> tuple[float, int]:
    started = time.perf_counter()
    closes: deque[float] = deque(maxlen=SLOW + 1)
    fast_sum = slow_sum = 0.0
    held = 0
    switches = 0
    for bar in bars:
        close = bar.close
        closes.append(close)
        fast_sum += close
        slow_sum += close
        n = len(closes)
        if n > FAST:
            fast_sum -= closes[-FAST - 1]
        if n > SLOW:
            slow_sum -= closes[0]
        if n < SLOW:
            continue
        if fast_sum * SLOW > slow_sum * FAST:
            if held <= 0:
                held = QUANTITY
                switches += 1
        elif held > 0:
            held = 0
            switches += 1
    return time.perf_counter() - started, switches


def bench_backtrader(bars: list[Bar]) -> tuple[float, int] | str:
    try:
        import backtrader as bt  # type: ignore[import-untyped]
    except ImportError:
        return "backtrader not installed: .venv/bin/pip install -e '.[bench]'"
    rows = [(b.ts.replace(tzinfo=None), b.open, b.high, b.low, b.close, b.volume) for b in bars]

    class Feed(bt.feeds.DataBase):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.i = 0

        def _load(self) -> bool:
            if self.i >= len(rows):
                return False
            ts, o, h, lo, c, v = rows[self.i]
            self.i += 1
            line = self.lines
            line.datetime[0] = bt.date2num(ts)
            line.open[0], line.high[0], line.low[0], line.close[0] = o, h, lo, c
            line.volume[0], line.openinterest[0] = v, 0
            return True

    trades = [0]

    class Cross(bt.Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            self.fast = bt.ind.SMA(period=FAST)
            self.slow = bt.ind.SMA(period=SLOW)

        def next(self) -> None:
            if self.fast[0] > self.slow[0]:
                if self.position.size <= 0:
                    self.order_target_size(target=QUANTITY)
                    trades[0] += 1
            elif self.position.size > 0:
                self.order_target_size(target=0)
                trades[0] += 1

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(Feed())
    cerebro.addstrategy(Cross)
    cerebro.broker.setcash(10**7)
    started = time.perf_counter()
    cerebro.run()
    return time.perf_counter() - started, trades[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-backtrader", action="store_true")
    parser.add_argument(
        "--split", action="store_true", help="also time a no-op strategy and one without orders"
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
    args = parser.parse_args(argv)
    if args.bars < SLOW + 1 or args.repeat < 1:
        parser.error("--bars must exceed the slow window and --repeat be >= 1")
    bars = make_bars(args.bars)
    per_bar = 1e6 / len(bars)

    def best(**kwargs: Any) -> tuple[float, int]:
        return min(bench_engine(bars, **kwargs) for _ in range(args.repeat))

    engine = best()
    bare = min(bench_bare(bars) for _ in range(args.repeat))
    report: dict[str, Any] = {
        "bars": len(bars),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "engine_bars_per_s": round(len(bars) / engine[0]),
        "engine_fills": engine[1],
        "bare_loop_bars_per_s": round(len(bars) / bare[0]),
        "bare_loop_switches": bare[1],
        "engine_vs_bare_loop_slowdown": round(engine[0] / bare[0], 2),
    }
    if not args.no_sandbox:
        boxed = best(sandboxed=True)
        assert boxed[1] == engine[1], "sandboxed and in-process fills differ"
        report["sandboxed_bars_per_s"] = round(len(bars) / boxed[0])
        report["sandboxed_vs_in_process"] = round(engine[0] / boxed[0], 3)
        if args.strategies > 1:
            many_in = best(copies=args.strategies)
            many_boxed = best(copies=args.strategies, sandboxed=True)
            report[f"{args.strategies}_strategies"] = {
                "in_process_bars_per_s": round(len(bars) / many_in[0]),
                "sandboxed_bars_per_s": round(len(bars) / many_boxed[0]),
                "sandboxed_vs_in_process": round(many_in[0] / many_boxed[0], 3),
            }
    if args.split:
        noop = best(name="noop.py")
        quiet = best(quantity=0)
        report["split_us_per_bar"] = {
            "bare_loop": round(bare[0] * per_bar, 3),
            "engine_noop_strategy": round(noop[0] * per_bar, 3),
            "engine_sma_without_orders": round(quiet[0] * per_bar, 3),
            "engine_full": round(engine[0] * per_bar, 3),
            "strategy_through_ctx": round((quiet[0] - noop[0]) * per_bar, 3),
            "orders": round((engine[0] - quiet[0]) * per_bar, 3),
            "us_per_order_round_trip": round((engine[0] - quiet[0]) * 1e6 / max(engine[1], 1), 1),
        }
        if not args.no_sandbox:
            boxed_noop = best(name="noop.py", sandboxed=True)
            boxed_quiet = best(quantity=0, sandboxed=True)
            report["split_sandboxed_us_per_bar"] = {
                "engine_noop_strategy": round(boxed_noop[0] * per_bar, 3),
                "hand_off_per_bar": round((boxed_noop[0] - noop[0]) * per_bar, 3),
                "engine_sma_without_orders": round(boxed_quiet[0] * per_bar, 3),
                "engine_full": round(boxed[0] * per_bar, 3),
                "strategy_through_ctx": round((boxed_quiet[0] - boxed_noop[0]) * per_bar, 3),
                "orders": round((boxed[0] - boxed_quiet[0]) * per_bar, 3),
                "us_per_order_round_trip": round(
                    (boxed[0] - boxed_quiet[0]) * 1e6 / max(boxed[1], 1), 1
                ),
            }
    if not args.no_backtrader:
        outcome = bench_backtrader(bars)
        if isinstance(outcome, str):
            report["backtrader"] = outcome
        else:
            report["backtrader_bars_per_s"] = round(len(bars) / outcome[0])
            report["backtrader_orders"] = outcome[1]
            report["engine_vs_backtrader_speedup"] = round(outcome[0] / engine[0], 1)
            if "sandboxed_bars_per_s" in report:
                report["sandboxed_vs_backtrader_speedup"] = round(outcome[0] / boxed[0], 1)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
