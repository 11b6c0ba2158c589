"""bastion backtest / runs / report / audit verify, end to end through the real CLI.

Every test drives the click command in-process (the ``cli`` fixture) against a
throw-away workspace, and reads the SQLite store directly with :mod:`sqlite3`
where the claim is about what was (or was not) stored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from bastion import Gate, Kernel, Workspace
from bastion._backtest import BacktestRequest, parse_date, prepare_backtest
from bastion._core import Commands, EngineCore
from bastion._engine import Engine

from .conftest import CLI, REPO, WS, one_error_line

EXAMPLE_KEY_ID = "BEE19B3C7A6706B7"
EXAMPLES = ("mean_reversion.py", "sma_cross.py")
METRIC_KEYS = {"total_return", "cagr", "sharpe", "max_drawdown", "trades", "win_rate", "exposure"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A short stretch of the bundled sample: enough bars for both examples to trade.
SHORT = ("--from", "2021-01-04", "--to", "2021-06-30")

BUYER = """\
from bastion import strategy

PARAMS = {"quantity": 1}


@strategy.hook
def on_bar(ctx, bar):
    if ctx.position(bar.symbol) == 0:
        ctx.order(bar.symbol, ctx.params["quantity"])
"""

EXPLODER = """\
from bastion import strategy

PARAMS = {}


@strategy.hook
def on_start(ctx):
    ctx.state["bars"] = 0


@strategy.hook
def on_bar(ctx, bar):
    ctx.state["bars"] += 1
    if ctx.state["bars"] == 1:
        ctx.order(bar.symbol, 1)
    if ctx.state["bars"] == 50:
        raise ValueError("kaboom on bar fifty")
"""


# ------------------------------------------------------------------------------ helpers


def db_path(home: Path, env: str = "development") -> Path:
    return home / ".bastion" / env / "bastion.db"


def connect(home: Path, env: str = "development") -> sqlite3.Connection:
    path = db_path(home, env)
    assert path.exists(), f"no store at {path}"
    return sqlite3.connect(path)


def store_counts(home: Path, env: str = "development") -> dict[str, int] | None:
    """Row counts of every table a run writes, or None when there is no store at all."""
    if not db_path(home, env).exists():
        return None
    conn = connect(home, env)
    try:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("runs", "run_strategies", "orders", "fills", "equity", "audit")
        }
    finally:
        conn.close()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def backtest(cli: CLI, home: Path, *args: str | Path) -> Result:
    return cli("backtest", "--home", home, *args)


def backtest_json(cli: CLI, home: Path, *args: str | Path) -> dict[str, Any]:
    """Run a backtest that must succeed; return its --json summary."""
    r = backtest(cli, home, "--json", "--no-report", *args)
    assert r.exit_code == 0, r.output + r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def runs_json(cli: CLI, home: Path, *args: str) -> list[dict[str, Any]]:
    r = cli("runs", "--json", "--home", home, *args)
    assert r.exit_code == 0, r.stderr
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


def by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in summary["strategies"]}


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A workspace holding a copy of the repository's signed example strategies."""
    home = tmp_path / "examples"
    shutil.copytree(REPO / "strategies", home / "strategies")
    shutil.copytree(REPO / "signatures", home / "signatures")
    return home


# ------------------------------------------------------------------------------ 1. happy path


def test_backtest_examples_end_to_end(cli: CLI, examples: Path) -> None:
    """backtest --json on the bundled sample stores a completed run naming each strategy's
    SHA-256 and the example signer; runs lists it, report (by id or unique prefix) writes
    report.html and a real PNG under .bastion/development/reports/RUN_ID/, and the audit
    log verifies."""
    home = examples
    summary = backtest_json(cli, home, "--source", "csv:sample")
    run_id = summary["run_id"]
    assert run_id and summary["bars"] > 0
    assert summary["report"] is None  # --no-report
    assert Path(summary["store"]) == db_path(home)
    strategies = by_name(summary)
    assert sorted(strategies) == sorted(EXAMPLES)
    for name, s in strategies.items():
        assert s["sha256"] == sha256_of(home / "strategies" / name)
        assert s["signer"] == EXAMPLE_KEY_ID
        assert s["quarantined"] is None
        assert set(s["metrics"]) >= METRIC_KEYS, sorted(s["metrics"])
        assert s["orders"] > 0 and s["fills"] > 0  # the sample is long enough to trade

    rows = runs_json(cli, home)
    assert [(r["run_id"], r["status"], r["kind"]) for r in rows] == [
        (run_id, "completed", "backtest")
    ]
    assert sorted(rows[0]["strategies"]) == sorted(EXAMPLES)
    assert rows[0]["error"] is None and rows[0]["finished"] is not None

    reports = home / ".bastion" / "development" / "reports" / run_id
    assert not reports.exists()
    for ref in (run_id, run_id[:-2]):
        shutil.rmtree(reports, ignore_errors=True)
        r = cli("report", ref, "--home", home)
        assert r.exit_code == 0, r.stderr
        html = reports / "report.html"
        png = reports / "equity.png"
        assert html.is_file() and png.is_file(), ref
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert run_id in html.read_text(encoding="utf-8")
        assert str(html) in r.stdout

    r = cli("audit", "verify", "--home", home)
    assert r.exit_code == 0, r.stderr
    assert "intact" in r.stdout


def test_backtest_with_report_writes_it_to_out(cli: CLI, examples: Path, tmp_path: Path) -> None:
    """Without --no-report the backtest itself renders the report, into --out when given,
    and the JSON summary points at the HTML file."""
    out = tmp_path / "my-report"
    r = backtest(cli, examples, "sma_cross", "--json", "--out", out, *SHORT)
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert Path(summary["report"]) == out / "report.html"
    assert (out / "report.html").is_file()
    assert (out / "equity.png").read_bytes()[:8] == PNG_SIGNATURE


def test_report_errors_are_one_line(cli: CLI, examples: Path) -> None:
    """report with an unknown run id, or a prefix shared by two runs, is a one-line error."""
    first = backtest_json(cli, examples, "sma_cross", *SHORT)["run_id"]
    second = backtest_json(cli, examples, "sma_cross", *SHORT)["run_id"]
    r = cli("report", "no-such-run", "--home", examples)
    assert r.exit_code != 0
    one_error_line(r.stderr, "no-such-run", "bastion runs")
    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)
    r = cli("report", first[:common], "--home", examples)
    assert r.exit_code != 0
    one_error_line(r.stderr, "ambiguous")
    assert not (examples / ".bastion" / "development" / "reports").exists()


def test_human_output_names_the_run_and_the_mode(cli: CLI, examples: Path) -> None:
    """Without --json the backtest prints the summary and the run id on stdout, with the
    mode: sandboxed by default; --in-process also says so on stderr, on every run."""
    r = backtest(cli, examples, "sma_cross", "--no-report", *SHORT)
    assert r.exit_code == 0, r.stderr
    [row] = runs_json(cli, examples)
    assert f"run {row['run_id']}:" in r.stdout and "(sandboxed)" in r.stdout
    assert "sma_cross.py" in r.stdout
    assert "in-process" not in r.stderr and "Traceback" not in r.stderr
    for extra in ((), ("--json",)):
        r = backtest(cli, examples, "sma_cross", "--no-report", "--in-process", *extra, *SHORT)
        assert r.exit_code == 0, r.stderr
        assert "--in-process: strategy code runs inside the kernel's own process" in r.stderr
        assert "(in-process)" in r.stdout or json.loads(r.stdout)["sandbox"] == "in-process"


def test_dates_are_inclusive_and_symbols_and_cash_apply(cli: CLI, examples: Path) -> None:
    """--from/--to are inclusive days, --symbols narrows the bars, --cash accepts thousands
    separators and is each strategy's starting equity."""
    week = ("--from", "2021-01-04", "--to", "2021-01-08")
    assert backtest_json(cli, examples, "sma_cross", *week)["bars"] == 5 * 5
    one_day = ("--from", "2021-01-05", "--to", "2021-01-05")
    assert backtest_json(cli, examples, "sma_cross", *one_day)["bars"] == 5
    summary = backtest_json(
        cli, examples, "sma_cross", *week, "--symbols", "ALPHA, ECHO", "--cash", "1,000,000"
    )
    assert summary["bars"] == 2 * 5
    assert by_name(summary)["sma_cross.py"]["metrics"]["start_equity"] == 1_000_000


def test_same_strategy_named_twice(cli: CLI, examples: Path) -> None:
    """Naming a strategy twice either runs it once or is a one-line error that stores nothing."""
    r = backtest(cli, examples, "sma_cross", "sma_cross.py", "--json", "--no-report", *SHORT)
    if r.exit_code == 0:
        assert [s["name"] for s in json.loads(r.stdout)["strategies"]] == ["sma_cross.py"]
    else:
        one_error_line(r.stderr, "sma_cross")
        assert store_counts(examples) is None


def test_backtest_out_is_a_file(cli: CLI, examples: Path, tmp_path: Path) -> None:
    """--out naming an existing file is a one-line error before anything is run or stored."""
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    r = backtest(cli, examples, "sma_cross", "--json", "--out", taken, *SHORT)
    assert r.exit_code != 0
    one_error_line(r.stderr, str(taken))
    assert store_counts(examples) is None
    assert taken.read_text() == "not a folder"


def test_report_out_is_a_file(cli: CLI, examples: Path, tmp_path: Path) -> None:
    """report --out naming an existing file is a one-line error; the file is untouched."""
    run_id = backtest_json(cli, examples, "sma_cross", *SHORT)["run_id"]
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    r = cli("report", run_id, "--out", taken, "--home", examples)
    assert r.exit_code != 0
    one_error_line(r.stderr, str(taken))
    assert taken.read_text() == "not a folder"


# ------------------------------------------------------------------------------ 2. provenance


def test_every_order_and_fill_names_strategy_hash_and_signer(cli: CLI, examples: Path) -> None:
    """Each stored order and fill row carries its strategy's SHA-256 and signer key id, and
    every order has a client order id; the counts agree with the summary."""
    summary = backtest_json(cli, examples, "--source", "csv:sample", *SHORT)
    run_id = summary["run_id"]
    hashes = {name: sha256_of(examples / "strategies" / name) for name in EXAMPLES}
    conn = connect(examples)
    try:
        orders = conn.execute(
            "SELECT client_order_id, strategy, strategy_sha256, signer FROM orders "
            "WHERE run_id = ?",
            (run_id,),
        ).fetchall()
        fills = conn.execute(
            "SELECT f.client_order_id, f.strategy, f.strategy_sha256, f.signer, o.strategy "
            "FROM fills f LEFT JOIN orders o USING (client_order_id) WHERE f.run_id = ?",
            (run_id,),
        ).fetchall()
        strategy_rows = conn.execute(
            "SELECT name, sha256, signer, unsigned FROM run_strategies WHERE run_id = ?",
            (run_id,),
        ).fetchall()
    finally:
        conn.close()
    assert orders and fills
    for client_order_id, strategy, sha, signer in orders:
        assert isinstance(client_order_id, str) and client_order_id.strip()
        assert sha == hashes[strategy] and signer == EXAMPLE_KEY_ID
    assert len({row[0] for row in orders}) == len(orders)
    for client_order_id, strategy, sha, signer, order_strategy in fills:
        assert order_strategy == strategy, client_order_id  # the fill's order exists
        assert sha == hashes[strategy] and signer == EXAMPLE_KEY_ID
    assert sorted(strategy_rows) == sorted((n, h, EXAMPLE_KEY_ID, 0) for n, h in hashes.items())
    for name, s in by_name(summary).items():
        assert s["orders"] == sum(1 for row in orders if row[1] == name)
        assert s["fills"] == sum(1 for row in fills if row[1] == name)


# ------------------------------------------------------------------------------ 3. bad input

HEADER_ONLY = "date,open,high,low,close,volume\n"
GOOD_ROW = "2021-01-04,10,11,9,10.5,1000\n"
BAD_ROW = "2021-01-05,10,eleven,9,10.5,1000\n"


def _data_files(home: Path) -> None:
    data = home / "data"
    data.mkdir()
    (data / "header.csv").write_text(HEADER_ONLY)
    (data / "nothing.csv").write_text("")
    (data / "malformed.csv").write_text(HEADER_ONLY + GOOD_ROW + BAD_ROW)


BAD_INPUTS = [
    pytest.param(["nope"], ["unknown strategy 'nope'", "nope.py"], id="unknown-strategy"),
    pytest.param(
        ["--source", "csv:{home}/data/header.csv"],
        ["header.csv", "no bars"],
        id="csv-header-only",
    ),
    pytest.param(
        ["--source", "csv:{home}/data/nothing.csv"],
        ["nothing.csv", "empty"],
        id="csv-empty-file",
    ),
    pytest.param(
        ["--source", "csv:{home}/data/malformed.csv"],
        ["malformed.csv:3", "high", "eleven"],
        id="csv-malformed-row",
    ),
    pytest.param(
        ["--source", "csv:{home}/data/missing.csv"],
        ["missing.csv", "does not exist"],
        id="csv-gone",
    ),
    pytest.param(["--symbols", "ALPHA,ZZZ"], ["'ZZZ'", "ALPHA, BRAVO"], id="missing-symbol"),
    pytest.param(["--cash", "-5"], ["--cash", "positive"], id="negative-cash"),
    pytest.param(["--cash", "0"], ["--cash", "positive"], id="zero-cash"),
    pytest.param(["--cash", "lots"], ["--cash", "'lots'", "not a number"], id="cash-not-number"),
    pytest.param(["--cash", "nan"], ["--cash"], id="cash-nan"),
    pytest.param(["--cash", "inf"], ["--cash"], id="cash-inf"),
    pytest.param(["--cash", "1e400"], ["--cash 1e400", "between"], id="cash-overflows-a-float"),
    pytest.param(["--cash", "1e-30"], ["--cash 1e-30", "between 0.01"], id="cash-dust"),
    pytest.param(["--from", ""], ["--from is empty"], id="empty-from"),
    pytest.param(
        ["--to", "9999-12-31T23:59:59-05:00"], ["--to", "out of range"], id="to-beyond-utc"
    ),
    pytest.param(["--symbols", " , "], ["--symbols is empty"], id="empty-symbols"),
    pytest.param(["--out", "{home}/rep"], ["--out", "--no-report"], id="out-without-report"),
    pytest.param(["--param", "entry=nan"], ["--param", "'nan'", "finite"], id="param-nan"),
    pytest.param(["--param", "entry=inf"], ["--param", "'inf'", "finite"], id="param-inf"),
    pytest.param(
        ["--from", "2022-06-01", "--to", "2022-01-01"], ["--from", "--to"], id="from-after-to"
    ),
    pytest.param(["--from", "2022-02-30"], ["--from", "2022-02-30"], id="bad-date"),
    pytest.param(
        ["--from", "2030-01-01", "--to", "2030-02-01"],
        ["no bars", "2030-01-01", "2030-02-01"],
        id="range-without-bars",
    ),
    pytest.param(["--from", "2030-01-01"], ["no bars"], id="open-range-without-bars"),
    pytest.param(["--broker", "nope"], ["unknown broker 'nope'", "sim"], id="unknown-broker"),
    pytest.param(["--source", "nope:x"], ["unknown source 'nope'", "csv"], id="unknown-source"),
    pytest.param(["--storage", "nope"], ["unknown storage 'nope'", "sqlite"], id="unknown-storage"),
    pytest.param(
        ["--broker", "sim:slippage=abc"], ["slippage", "'abc'", "not a number"], id="bad-slippage"
    ),
    pytest.param(["--broker", "sim:bogus=1"], ["bogus"], id="unknown-broker-option"),
    pytest.param(["--source", "synthetic:abc"], ["synthetic", "'abc'"], id="bad-synthetic"),
    pytest.param(["--source", "csv:"], ["csv source needs a path"], id="csv-without-path"),
    pytest.param(["--param", "nope=1"], ["--param", "'nope'"], id="unknown-param"),
    pytest.param(["--param", "fast=abc"], ["--param", "fast", "'abc'"], id="param-wrong-type"),
    pytest.param(
        ["--param", "sma_cross.slow=2.5"], ["--param", "slow", "'2.5'"], id="param-float-for-int"
    ),
    pytest.param(
        ["--param", "nosuch.fast=1"], ["--param", "'nosuch'"], id="param-unknown-strategy"
    ),
    pytest.param(["--param", "fast"], ["--param", "KEY=VALUE"], id="param-without-value"),
]


@pytest.mark.parametrize(("args", "needles"), BAD_INPUTS)
def test_bad_input_is_one_line_and_stores_nothing(
    cli: CLI, examples: Path, args: list[str], needles: list[str]
) -> None:
    """Every bad backtest input is refused before the run is recorded: one line on stderr,
    no traceback, a non-zero exit, and no store is created."""
    _data_files(examples)
    r = backtest(cli, examples, "--json", "--no-report", *(a.format(home=examples) for a in args))
    assert r.exit_code != 0
    one_error_line(r.stderr, "bastion: error:", *needles)
    assert r.stdout == ""
    assert store_counts(examples) is None


def test_bad_input_leaves_existing_store_unchanged(cli: CLI, examples: Path) -> None:
    """With runs already stored, refused backtests add no run, strategy, order or audit rows."""
    _data_files(examples)
    backtest_json(cli, examples, "--source", "synthetic:60")
    before = store_counts(examples)
    assert before is not None and before["runs"] == 1
    for args, _needles in (p.values for p in BAD_INPUTS):
        r = backtest(
            cli, examples, "--json", "--no-report", *(a.format(home=examples) for a in args)
        )
        assert r.exit_code != 0, args
        assert store_counts(examples) == before, args


def test_strategy_edited_after_signing_is_refused(cli: CLI, examples: Path) -> None:
    """A named strategy whose bytes no longer match the whitelist is refused by name with the
    status hash-mismatch, and nothing is stored."""
    path = examples / "strategies" / "sma_cross.py"
    path.write_bytes(path.read_bytes() + b"\n# edited after signing\n")
    r = backtest(cli, examples, "sma_cross", "--json", "--no-report", *SHORT)
    assert r.exit_code != 0
    one_error_line(r.stderr, "sma_cross.py", "not verified", "hash-mismatch")
    assert store_counts(examples) is None


def test_unnamed_run_skips_refused_strategy_and_records_it(cli: CLI, examples: Path) -> None:
    """Without names, a refused file is skipped (one 'skipped' line naming why), the verified
    one runs, and the refusal is kept in the audit log of that run."""
    path = examples / "strategies" / "sma_cross.py"
    path.write_bytes(path.read_bytes() + b"\n# edited after signing\n")
    r = backtest(cli, examples, "--json", "--no-report", *SHORT)
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert list(by_name(summary)) == ["mean_reversion.py"]
    skipped = [line for line in r.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "sma_cross.py" in skipped[0] and "hash-mismatch" in skipped[0]
    conn = connect(examples)
    try:
        refused = [
            json.loads(payload)
            for (payload,) in conn.execute(
                "SELECT payload FROM audit WHERE event = 'strategy_refused'"
            )
        ]
    finally:
        conn.close()
    assert [(p["run_id"], p["file"], p["status"]) for p in refused] == [
        (summary["run_id"], "sma_cross.py", "hash-mismatch")
    ]


# ------------------------------------------------------------------------------ 4. failed runs


@pytest.mark.parametrize(
    ("exc", "exit_code", "error"),
    [
        pytest.param(
            RuntimeError("engine exploded"), None, "RuntimeError: engine exploded", id="error"
        ),
        pytest.param(KeyboardInterrupt(), 1, "interrupted", id="ctrl-c"),
    ],
)
def test_run_failing_after_start_is_marked_failed(
    cli: CLI,
    examples: Path,
    monkeypatch: pytest.MonkeyPatch,
    exc: BaseException,
    exit_code: int | None,
    error: str,
) -> None:
    """A run that breaks once it is recorded ends as 'failed' with the reason, never stays
    'running'; the audit log stays intact."""

    def explode(self: Engine, bars: object) -> object:
        raise exc

    monkeypatch.setattr(Engine, "run", explode)
    if exit_code is None:
        with pytest.raises(type(exc), match=str(exc)):
            backtest(cli, examples, "sma_cross", "--json", "--no-report", *SHORT)
    else:  # click turns Ctrl-C into "Aborted!" and exit code 1
        assert backtest(cli, examples, "sma_cross", "--no-report", *SHORT).exit_code == exit_code
    monkeypatch.undo()
    rows = runs_json(cli, examples)
    assert len(rows) == 1
    assert rows[0]["status"] == "failed"
    assert error in rows[0]["error"]
    assert rows[0]["finished"] is not None
    assert rows[0]["strategies"] == ["sma_cross.py"]
    r = cli("audit", "verify", "--home", examples)
    assert r.exit_code == 0, r.stderr


def test_run_failing_half_way_keeps_its_orders(
    cli: CLI, examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails after trading is marked failed, its orders stay stored, the audit log
    still verifies, and its report can still be rendered from the store."""
    original = EngineCore.stop

    def stop_then_fail(self: EngineCore) -> Commands:
        yield from original(self)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(EngineCore, "stop", stop_then_fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        backtest(cli, examples, "sma_cross", "--json", "--no-report", *SHORT)
    monkeypatch.undo()
    [row] = runs_json(cli, examples)
    assert row["status"] == "failed" and "disk on fire" in row["error"]
    counts = store_counts(examples)
    assert counts is not None and counts["orders"] > 0
    assert cli("audit", "verify", "--home", examples).exit_code == 0
    r = cli("report", row["run_id"], "--home", examples)
    assert r.exit_code == 0, r.stderr


# ------------------------------------------------------------------------------ 5. quarantine


def test_strategy_raising_in_on_bar_is_quarantined_others_finish(cli: CLI, signed_ws: WS) -> None:
    """A strategy that raises in on_bar is quarantined with the exception text while the other
    strategies of the same run carry on to the last bar; the run completes."""
    ws = signed_ws
    ws.write("buyer.py", BUYER)
    ws.write("exploder.py", EXPLODER)
    ws.sign("buyer.py", "exploder.py")
    summary = backtest_json(cli, ws.home, "--source", "synthetic:300")
    assert summary["bars"] == 300
    strategies = by_name(summary)
    assert sorted(strategies) == ["buyer.py", "exploder.py", "good.py"]
    bad = strategies["exploder.py"]["quarantined"]
    assert bad is not None and "kaboom on bar fifty" in bad and "on_bar" in bad
    assert strategies["buyer.py"]["quarantined"] is None
    assert strategies["good.py"]["quarantined"] is None
    assert strategies["buyer.py"]["fills"] >= 1
    assert all(s["signer"] == ws.key().id for s in strategies.values())
    [row] = runs_json(cli, ws.home)
    assert row["status"] == "completed" and row["error"] is None
    conn = connect(ws.home)
    try:
        events = [
            json.loads(p)
            for (p,) in conn.execute(
                "SELECT payload FROM audit WHERE event = 'strategy_quarantined'"
            )
        ]
        stored = conn.execute(
            "SELECT name, quarantined FROM run_strategies WHERE run_id = ? ORDER BY name",
            (summary["run_id"],),
        ).fetchall()
    finally:
        conn.close()
    assert [(e["strategy"], e["hook"]) for e in events] == [("exploder.py", "on_bar")]
    assert stored[0][0] == "buyer.py" and stored[0][1] is None
    assert stored[1][0] == "exploder.py" and "kaboom on bar fifty" in stored[1][1]


def test_quarantine_is_reported_in_human_output(cli: CLI, signed_ws: WS) -> None:
    """Without --json the quarantine is said on stderr, naming the strategy and the reason."""
    ws = signed_ws
    ws.write("exploder.py", EXPLODER)
    ws.sign("exploder.py")
    r = backtest(cli, ws.home, "--no-report", "--source", "synthetic:100")
    assert r.exit_code == 0, r.stderr
    assert any(
        "exploder.py" in line and "quarantined" in line and "kaboom" in line
        for line in r.stderr.splitlines()
    ), r.stderr


def test_a_run_whose_every_strategy_was_quarantined_exits_non_zero(cli: CLI, signed_ws: WS) -> None:
    """When no strategy ran to the end the run is stored as completed, but the command
    exits 1 and says why: its figures describe no strategy (with --json too, after the
    JSON)."""
    ws = signed_ws
    ws.write("exploder.py", EXPLODER)
    ws.sign("exploder.py")
    r = backtest(cli, ws.home, "exploder", "--no-report", "--source", "synthetic:100")
    assert r.exit_code == 1
    assert "every strategy of run" in r.stderr and "was quarantined" in r.stderr
    r = backtest(cli, ws.home, "exploder", "--json", "--no-report", "--source", "synthetic:100")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["strategies"][0]["quarantined"]


GREEDY = """\
from bastion import strategy

PARAMS = {}


@strategy.hook
def on_bar(ctx, bar):
    if ctx.position(bar.symbol) == 0 and ctx.pending(bar.symbol) == 0:
        ctx.order(bar.symbol, 10_000_000)
"""


def test_rejected_orders_are_counted_and_explained(cli: CLI, signed_ws: WS) -> None:
    """A strategy whose every order is refused trades nothing, and the run says so: --json
    gives the count and the latest reason, the human output says it on stderr (after a
    backtest and after `bastion report`), and the HTML report lists it."""
    ws = signed_ws
    ws.write("greedy.py", GREEDY)
    ws.sign("greedy.py")
    data = backtest_json(cli, ws.home, "greedy.py", "--source", "synthetic:40")
    (entry,) = data["strategies"]
    assert entry["orders"] == 40 and entry["fills"] == 0
    assert entry["rejected"] == 40
    assert entry["last_rejection"].startswith("insufficient buying power")

    r = cli("report", "--home", ws.home, data["run_id"])
    assert r.exit_code == 0, r.stderr
    (note,) = [line for line in r.stderr.splitlines() if "rejected" in line]
    assert note.startswith("greedy.py: 40 of 40 orders rejected; the latest because: insufficient")
    report = ws.home / ".bastion" / "development" / "reports" / data["run_id"] / "report.html"
    html = report.read_text()
    assert "Rejected orders" in html and "insufficient buying power" in html

    r = backtest(cli, ws.home, "--no-report", "good.py", "--source", "synthetic:40")
    assert r.exit_code == 0, r.stderr
    assert "rejected" not in r.stderr  # nothing said when nothing was refused


# ------------------------------------------------------------------------------ 6. parameters


def test_param_overrides_on_the_command_line(cli: CLI, examples: Path) -> None:
    """--param KEY=VALUE sets it in every strategy that has it, STRATEGY.KEY=VALUE in one;
    values are coerced to the default's type and stored with the run."""
    summary = backtest_json(
        cli, examples, "--param", "fast=5", "--param", "sma_cross.slow=20", *SHORT
    )
    strategies = by_name(summary)
    assert strategies["sma_cross.py"]["params"] == {"fast": 5, "slow": 20, "quantity": 100}
    assert strategies["mean_reversion.py"]["params"] == {"window": 20, "entry": 2.0, "quantity": 50}
    summary = backtest_json(cli, examples, "--param", "quantity=7", "--param", "entry=1.5", *SHORT)
    strategies = by_name(summary)
    assert strategies["sma_cross.py"]["params"]["quantity"] == 7
    assert strategies["mean_reversion.py"]["params"] == {"window": 20, "entry": 1.5, "quantity": 7}


def test_param_with_the_strategy_file_name(cli: CLI, examples: Path) -> None:
    """--param NAME.py.KEY=VALUE either works or its error does not deny that NAME.py runs."""
    r = backtest(cli, examples, "--json", "--no-report", "--param", "sma_cross.py.fast=5", *SHORT)
    if r.exit_code == 0:
        assert by_name(json.loads(r.stdout))["sma_cross.py"]["params"]["fast"] == 5
    else:
        one_error_line(r.stderr, "--param")
        assert "no strategy 'sma_cross.py' in this run" not in r.stderr


def test_params_from_bastion_toml_and_cli_wins(cli: CLI, examples: Path) -> None:
    """[params.NAME] in bastion.toml overrides the file's PARAMS; --param beats bastion.toml."""
    (examples / "bastion.toml").write_text("[params.sma_cross]\nfast = 7\n")
    summary = backtest_json(cli, examples, "sma_cross", *SHORT)
    assert by_name(summary)["sma_cross.py"]["params"] == {"fast": 7, "slow": 30, "quantity": 100}
    summary = backtest_json(cli, examples, "sma_cross", "--param", "fast=5", *SHORT)
    assert by_name(summary)["sma_cross.py"]["params"]["fast"] == 5
    summary = backtest_json(cli, examples, "sma_cross", "--param", "sma_cross.fast=4", *SHORT)
    assert by_name(summary)["sma_cross.py"]["params"]["fast"] == 4


def test_strategy_specific_param_wins_whatever_the_order(cli: CLI, examples: Path) -> None:
    """--param STRATEGY.KEY=V is more specific than --param KEY=V and wins in either order."""
    for args in (
        ("--param", "sma_cross.fast=7", "--param", "fast=5"),
        ("--param", "fast=5", "--param", "sma_cross.fast=7"),
    ):
        summary = backtest_json(cli, examples, "sma_cross", *args, *SHORT)
        assert by_name(summary)["sma_cross.py"]["params"]["fast"] == 7, args


def test_unreadable_bastion_toml_is_one_line(cli: CLI, examples: Path) -> None:
    """A bastion.toml that cannot be read (here a folder of that name; a file without read
    permission takes the same path) is a one-line error naming it, for any command."""
    (examples / "bastion.toml").mkdir()
    for command in (["backtest", "--no-report", *SHORT], ["runs"]):
        r = cli(command[0], "--home", examples, *command[1:])
        assert r.exit_code != 0, command
        one_error_line(r.stderr, "bastion: error: cannot read", "bastion.toml")
    assert store_counts(examples) is None


def test_unwritable_data_folder_is_one_line(
    cli: CLI, examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data folder the system refuses to create (permissions; simulated, since CI runs as
    root) is a one-line error naming the folder, not a traceback."""
    real_mkdir = Path.mkdir

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.name in (".bastion", "development", "logs"):
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    r = backtest(cli, examples, "--no-report", *SHORT)
    assert r.exit_code != 0
    one_error_line(r.stderr, "bastion: error: cannot use", ".bastion", "Permission denied")


@pytest.mark.parametrize(
    ("toml", "needles"),
    [
        pytest.param("[params.sma_cross]\nfasst = 7\n", ["bastion.toml", "'fasst'"], id="unknown"),
        pytest.param("[params.sma_cross]\nfast = 'x'\n", ["bastion.toml", "fast"], id="type"),
        pytest.param("[params]\nsma_cross = 3\n", ["bastion.toml", "params.sma_cross"], id="shape"),
        pytest.param("[params\n", ["bastion.toml", "TOML"], id="syntax"),
        pytest.param(
            "[limits.development]\nmax_order_quantity = nan\n",
            ["bastion.toml", "limits.development.max_order_quantity", "positive"],
            id="limit-nan",
        ),
        pytest.param(
            "[limits.development]\nmax_order_notional = -1\n",
            ["bastion.toml", "limits.development.max_order_notional = -1", "positive"],
            id="limit-negative",
        ),
        pytest.param(
            "[limits.development]\nmax_order_quantity = 'ten'\n",
            ["bastion.toml", "max_order_quantity = 'ten'"],
            id="limit-text",
        ),
    ],
)
def test_bad_params_in_bastion_toml(
    cli: CLI, examples: Path, toml: str, needles: list[str]
) -> None:
    """A wrong [params] or [limits.ENV] table in bastion.toml is a one-line error naming the
    file and the key; no run."""
    (examples / "bastion.toml").write_text(toml)
    r = backtest(cli, examples, "sma_cross", "--json", "--no-report", *SHORT)
    assert r.exit_code != 0
    one_error_line(r.stderr, *needles)
    assert store_counts(examples) is None


# ------------------------------------------------------------------------------ 7. unsigned


def test_allow_unsigned_in_development_runs_and_is_recorded(cli: CLI, ws: WS) -> None:
    """--allow-unsigned in development runs an unsigned file loudly (WARNING on stderr) and the
    stored strategy row says unsigned, with no signer."""
    ws.write("plain.py", BUYER)
    r = backtest(
        cli, ws.home, "--allow-unsigned", "--json", "--no-report", "--source", "synthetic:50"
    )
    assert r.exit_code == 0, r.stderr
    assert "WARNING" in r.stderr
    summary = json.loads(r.stdout)
    [strategy] = summary["strategies"]
    assert strategy["name"] == "plain.py"
    assert strategy["signer"] is None
    assert strategy["sha256"] == sha256_of(ws.strategies / "plain.py")
    conn = connect(ws.home)
    try:
        row = conn.execute(
            "SELECT unsigned, signer FROM run_strategies WHERE run_id = ?", (summary["run_id"],)
        ).fetchone()
        order_signers = {s for (s,) in conn.execute("SELECT DISTINCT signer FROM orders")}
    finally:
        conn.close()
    assert row == (1, None)
    assert order_signers == {None}


def test_unsigned_refused_without_the_flag(cli: CLI, ws: WS) -> None:
    """Without --allow-unsigned an unsigned file is refused (named: 'unsigned'), nothing stored."""
    ws.write("plain.py", BUYER)
    r = backtest(cli, ws.home, "plain", "--json", "--no-report", "--source", "synthetic:50")
    assert r.exit_code != 0
    one_error_line(r.stderr, "plain.py", "unsigned")
    r = backtest(cli, ws.home, "--json", "--no-report", "--source", "synthetic:50")
    assert r.exit_code != 0
    one_error_line(r.stderr, "no verified strategy")
    assert store_counts(ws.home) is None


@pytest.mark.parametrize("env", ["paper", "live"])
def test_allow_unsigned_refused_outside_development(cli: CLI, ws: WS, env: str) -> None:
    """--allow-unsigned with --env paper (or live) is refused with exit 2; nothing is stored."""
    ws.write("plain.py", BUYER)
    r = backtest(
        cli,
        ws.home,
        "--allow-unsigned",
        "--env",
        env,
        "--json",
        "--no-report",
        "--source",
        "synthetic:50",
    )
    assert r.exit_code == 2
    one_error_line(r.stderr, "only in development", env)
    assert store_counts(ws.home, env) is None


# ------------------------------------------------------------------------------ 8. no store yet


@pytest.mark.parametrize(
    "command", [["runs"], ["runs", "--json"], ["report", "x"], ["audit", "verify"]]
)
def test_commands_before_any_backtest(cli: CLI, ws: WS, command: list[str]) -> None:
    """runs / report / audit verify before any backtest: one line telling you to run a
    backtest first, a non-zero exit, and no empty store is created."""
    r = cli(*command, "--home", ws.home)
    assert r.exit_code != 0
    one_error_line(r.stderr, "bastion backtest", "first")
    assert r.stdout == ""
    assert not db_path(ws.home).exists()


def test_runs_lists_newest_first(cli: CLI, examples: Path) -> None:
    """runs --json lists every run newest first, each with its own strategies."""
    first = backtest_json(cli, examples, "sma_cross", *SHORT)["run_id"]
    second = backtest_json(cli, examples, "mean_reversion", *SHORT)["run_id"]
    rows = runs_json(cli, examples)
    assert [(r["run_id"], r["strategies"]) for r in rows] == [
        (second, ["mean_reversion.py"]),
        (first, ["sma_cross.py"]),
    ]
    r = cli("runs", "--home", examples)
    assert r.exit_code == 0 and "completed" in r.stdout


def test_runs_table_shows_whole_run_ids_at_80_columns(
    cli: CLI, examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 80 columns each run id appears whole on one line of the runs table."""
    from bastion.cli import console

    run_id = backtest_json(cli, examples, "sma_cross", *SHORT)["run_id"]
    monkeypatch.setattr(console, "_width", 80)  # what a pipe or a standard terminal gets
    r = cli("runs", "--home", examples)
    assert r.exit_code == 0
    assert run_id in r.stdout, r.stdout


def test_corrupt_store_is_a_one_line_error_and_is_kept(cli: CLI, examples: Path) -> None:
    """A bastion.db that is not SQLite makes runs, report, audit verify and backtest fail with
    one line naming the file; the file is not overwritten."""
    path = db_path(examples)
    path.parent.mkdir(parents=True)
    junk = b"this is not an SQLite database " * 8
    path.write_bytes(junk)
    for args in (
        ["runs"],
        ["report", "x"],
        ["audit", "verify"],
        ["backtest", "sma_cross", "--json", "--no-report", *SHORT],
    ):
        r = cli(*args, "--home", examples)
        assert r.exit_code != 0, args
        one_error_line(r.stderr, str(path), "not a usable SQLite database")
    assert path.read_bytes() == junk


# ------------------------------------------------------------------------------ 9. tampering


@pytest.mark.parametrize(
    ("statements", "broken"),
    [
        pytest.param(
            [
                "DROP TRIGGER audit_no_update",
                "UPDATE audit SET payload = replace(payload, 'sma_cross', 'evil_cross') "
                "WHERE id = 1",
            ],
            1,
            id="payload-changed",
        ),
        pytest.param(
            [
                "DROP TRIGGER audit_no_delete",
                "DELETE FROM audit WHERE id = (SELECT max(id) FROM audit)",
            ],
            None,
            id="last-record-cut",
        ),
        pytest.param(
            ["UPDATE fills SET price = '0.01' WHERE id = (SELECT min(id) FROM fills)"],
            None,
            id="fill-changed",
        ),
    ],
)
def test_audit_verify_detects_tampering(
    cli: CLI, examples: Path, statements: list[str], broken: int | None
) -> None:
    """After the store is edited behind Bastion's back, audit verify exits 1 and names the
    first broken record on stderr."""
    backtest_json(cli, examples, "sma_cross", *SHORT)
    assert cli("audit", "verify", "--home", examples).exit_code == 0
    conn = connect(examples)
    try:
        total = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
        for sql in statements:
            assert conn.execute(sql).rowcount != 0 or sql.startswith("DROP"), sql
        conn.commit()
    finally:
        conn.close()
    r = cli("audit", "verify", "--home", examples)
    assert r.exit_code == 1
    one_error_line(r.stderr, "BROKEN", "record")
    expected = broken if broken is not None else total
    assert f"record {expected}" in r.stderr, r.stderr


def test_audit_log_cannot_be_edited_with_triggers_in_place(cli: CLI, examples: Path) -> None:
    """While its triggers stand, the audit table refuses UPDATE and DELETE outright."""
    backtest_json(cli, examples, "sma_cross", *SHORT)
    conn = connect(examples)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET payload = '{}' WHERE id = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit WHERE id = 1")
    finally:
        conn.close()
    assert cli("audit", "verify", "--home", examples).exit_code == 0


def test_aggregate_view_adds_up_the_strategies(cli: CLI, examples: Path) -> None:
    """The JSON carries the aggregate of all strategies' portfolios, and it adds up."""
    r = cli("backtest", "--json", "--no-report", "--from", "2022-01-01", "--home", examples)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    ends = [s["metrics"]["end_equity"] for s in data["strategies"]]
    assert data["aggregate"]["strategies"] == len(ends) == 2
    assert data["aggregate"]["end_equity"] == pytest.approx(sum(ends), abs=0.01)
    assert data["aggregate"]["start_equity"] == pytest.approx(200_000)
    assert data["sandbox"] == "sandboxed"


def test_the_progress_total_is_known_when_the_source_can_count(examples: Path) -> None:
    """A prepared backtest knows how many bars it will run when its source can count them
    (the progress bar then shows a total and the time left), and None when it cannot."""
    kernel = Kernel(entry_points=False)
    gate = Gate(Workspace(examples))
    sample = prepare_backtest(kernel, gate, BacktestRequest(), "development")
    assert sample.total == 3900  # 5 symbols x 780 days of the bundled sample
    result, store = sample.run()
    store.close()
    assert result.bars == 3900
    short = prepare_backtest(
        kernel, gate, BacktestRequest(source="synthetic:300,symbols=2"), "development"
    )
    short.close()  # not run: its workers are stopped
    assert short.total == 600
    dated = BacktestRequest(source="synthetic:300", start=parse_date("2000-02-01", "--from"))
    prepared = prepare_backtest(kernel, gate, dated, "development")
    prepared.close()
    assert prepared.total is None


def test_audit_verify_detects_a_run_added_behind_bastions_back(cli: CLI, examples: Path) -> None:
    """A runs row (with its strategies) inserted directly into the database, which no
    run_started record vouches for, makes audit verify fail naming that run."""
    backtest_json(cli, examples, "sma_cross", *SHORT)
    conn = connect(examples)
    try:
        conn.execute(
            "INSERT INTO runs SELECT '20991231T000000-fake01', kind, environment, status, "
            "started, finished, bastion_version, config, error, pid FROM runs"
        )
        conn.commit()
    finally:
        conn.close()
    r = cli("audit", "verify", "--home", examples)
    assert r.exit_code == 1
    one_error_line(r.stderr, "audit log BROKEN: run 20991231T000000-fake01", "outside Bastion")


@pytest.mark.parametrize(
    "toml",
    [
        "[limits]\ndevelopment = 5\n",
        '[limits]\ndevelopment = "max_order_quantity = 1"\n',
        'limits = "none"\n',
    ],
)
def test_limits_that_are_not_tables_are_refused(cli: CLI, examples: Path, toml: str) -> None:
    """[limits] and [limits.ENV] must be tables: anything else is a one-line error naming
    the file (a string used to crash, and "1" to run with no limits at all)."""
    (examples / "bastion.toml").write_text(toml)
    r = backtest(cli, examples, "sma_cross", "--json", "--no-report", *SHORT)
    assert r.exit_code == 2
    one_error_line(r.stderr, "bastion.toml", "must be a table")
    assert store_counts(examples) is None


def test_a_full_disk_is_one_line_naming_the_file(
    cli: CLI, examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write the disk refuses (no space: the error carries no file name of its own) is a
    one-line error naming the file being written, not a traceback."""
    data = backtest_json(cli, examples, "sma_cross", *SHORT)

    def full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bastion._fsutil.os.write", full)
    r = cli("report", "--home", examples, data["run_id"])
    assert r.exit_code == 1
    one_error_line(r.stderr, "bastion: error: cannot use", "No space left on device")
    assert not list((examples / ".bastion").rglob("*.tmp"))  # nothing half-written
