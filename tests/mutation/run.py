"""Mutation testing of the money path with cosmic-ray (not part of the test suite).

    python -m pip install -e '.[dev,mutation]'
    python tests/mutation/run.py [--only portfolio|metrics|sim] [--work DIR]

For each target below it mutates the module (in place, one mutant at a time, which is
why it must run in a clone nobody else is using), runs the target's tests against each
mutant, and prints the score and every surviving mutant.  The operators are cut to the
ones that can change a number: arithmetic swaps among + - * /, comparisons among
< <= > >= == !=, number, boolean, unary, loop and condition mutations; bit operations
(``|`` in annotations), powers and ``is`` comparisons (of enums: equivalent) are left
out.  Functions that only validate input or
parse options are left out too (``SKIP``).  Results are in
docs/explanation/verification.md.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTEST = f"{sys.executable} -m pytest -q -x -p no:cacheprovider --hypothesis-seed=0"

TARGETS = {
    "portfolio": ("core/_portfolio.py", "tests/test_portfolio.py tests/test_ledger_oracle.py"),
    "metrics": ("core/_metrics.py", "tests/test_metrics.py"),
    "sim": (
        "plugins/sim.py",
        "tests/test_sim.py tests/test_engine_properties.py tests/test_engine.py -k 'not sandboxed'",
    ),
}
SKIP = {
    "metrics": {"_validated", "_validated_slowly", "_not_before", "_finite_decimal",
                "TradeRecord", "metrics_from_columns", "downsample", "downsample_columns", None},
    "sim": {"parse", "SimOptions", "parse_commission", None},
    "portfolio": {None},
}  # fmt: skip
KEEP_BINARY = {"Add", "Sub", "Mul", "Div"}
KEEP_COMPARE = {"Lt", "LtE", "Gt", "GtE", "Eq", "NotEq"}


def _config(name: str, module: str, tests: str, work: Path) -> Path:
    path = work / f"cr-{name}.toml"
    path.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        "timeout = 300.0\n"
        "excluded-modules = []\n"
        # Each target's pytest keeps its own temporary directory: concurrent runs
        # would otherwise clean up each other's (and fail for the wrong reason).
        f'test-command = "{PYTEST} --basetemp={work / ("tmp-" + name)} {tests}"\n\n'
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    return path


def _filter(name: str, session: Path) -> int:
    conn = sqlite3.connect(session)
    drop = []
    for job, operator, definition in conn.execute(
        "SELECT job_id, operator_name, definition_name FROM mutation_specs"
    ):
        binary = re.match(r"core/ReplaceBinaryOperator_(\w+?)_(\w+)$", operator)
        compare = re.match(r"core/ReplaceComparisonOperator_(\w+?)_(\w+)$", operator)
        if (
            (binary and not {binary.group(1), binary.group(2)} <= KEEP_BINARY)
            or (compare and not {compare.group(1), compare.group(2)} <= KEEP_COMPARE)
            or definition in SKIP[name]
        ):
            drop.append((job,))
    conn.executemany("DELETE FROM mutation_specs WHERE job_id = ?", drop)
    conn.executemany("DELETE FROM work_items WHERE job_id = ?", drop)
    conn.commit()
    (left,) = conn.execute("SELECT count(*) FROM work_items").fetchone()
    conn.close()
    return int(left)


def _report(name: str, session: Path) -> None:
    conn = sqlite3.connect(session)
    outcomes = dict(
        conn.execute("SELECT test_outcome, count(*) FROM work_results GROUP BY test_outcome")
    )
    killed, survived = outcomes.get("KILLED", 0), outcomes.get("SURVIVED", 0)
    total = killed + survived + outcomes.get("INCOMPETENT", 0)
    score = killed / total if total else 0.0
    print(f"## {name}: {killed} of {total} mutants killed ({score:.1%}); {survived} survived")
    for row, operator, diff in conn.execute(
        "SELECT m.start_pos_row, m.operator_name, r.diff FROM work_results r "
        "JOIN mutation_specs m USING (job_id) WHERE r.test_outcome = 'SURVIVED' "
        "ORDER BY m.start_pos_row"
    ):
        changed = [
            line[1:].strip()
            for line in diff.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        print(f"- line {row}, {operator.removeprefix('core/')}: `" + "` -> `".join(changed) + "`")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(TARGETS))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for name, (module, tests) in TARGETS.items():
        if args.only and name != args.only:
            continue
        session = args.work / f"cr-{name}.sqlite"
        if not args.report_only:
            config = _config(name, module, tests, args.work)
            session.unlink(missing_ok=True)
            subprocess.run(["cosmic-ray", "init", str(config), str(session)], cwd=ROOT, check=True)
            print(f"{name}: {_filter(name, session)} mutants", flush=True)
            subprocess.run(["cosmic-ray", "exec", str(config), str(session)], cwd=ROOT, check=True)
            subprocess.run(["git", "checkout", "--", module], cwd=ROOT, check=True)
        _report(name, session)


if __name__ == "__main__":
    main()
