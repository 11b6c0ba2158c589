"""Reports: the terminal table and the self-contained HTML + PNG, rendered from RunData alone."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from rich.console import Console

from bastion._metrics import compute_metrics
from bastion.interfaces import RunData, RunInfo, RunRow, StrategyRecord, StrategyRunData
from bastion.models import Position
from bastion.plugins.reports import render_report, summary_table

T0 = datetime(2022, 1, 3, 21, tzinfo=UTC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def strategy(name: str, sha: str, drift: float, *, points: int = 300) -> StrategyRunData:
    equity = [
        (T0 + timedelta(days=i), 100_000 * (1 + drift * i + 0.02 * math.sin(i / 9)))
        for i in range(points)
    ]
    return StrategyRunData(
        record=StrategyRecord(name, sha, "ABCDEF0123456789", "alice", 3, False, {"fast": 10}),
        metrics=compute_metrics(equity, [], points // 2, points, 100_000.0) if equity else {},
        equity=equity,
        positions=[Position("AAA", Decimal(10), Decimal("101.5"), Decimal("12.25"))],
        orders=12,
        fills=11,
        quarantined=None,
    )


def run_data(*strategies: StrategyRunData) -> RunData:
    row = RunRow(
        "20240101T000000-abc123",
        "backtest",
        "development",
        "completed",
        T0,
        T0 + timedelta(minutes=1),
        tuple(s.record.name for s in strategies),
        None,
    )
    info = RunInfo(
        row.run_id,
        "backtest",
        "development",
        T0,
        "0.1.0",
        {"source": "csv:sample", "cash": "100000"},
    )
    return RunData(row=row, info=info, strategies=list(strategies))


def test_report_files_trace_results_to_code(tmp_path: Path) -> None:
    """The HTML names each strategy's SHA-256 and signer, embeds the chart, and the PNG is real."""
    run = run_data(strategy("up.py", "a" * 64, 0.001), strategy("down.py", "b" * 64, -0.0005))
    html_path = render_report(run, tmp_path / "out")
    png = (tmp_path / "out" / "equity.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    page = html_path.read_text()
    for needle in (
        "a" * 64,
        "b" * 64,
        "ABCDEF0123456789",
        "up.py",
        "down.py",
        "data:image/png;base64,",
        run.row.run_id,
    ):
        assert needle in page
    assert "<script" not in page.lower()


def test_text_is_escaped(tmp_path: Path) -> None:
    """A hostile strategy name cannot inject markup into the report."""
    run = run_data(strategy("<script>alert(1)</script>.py", "c" * 64, 0.0))
    page = render_report(run, tmp_path).read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page


def test_strategy_without_equity_still_renders(tmp_path: Path) -> None:
    run = run_data(strategy("empty.py", "d" * 64, 0.0, points=0))
    assert render_report(run, tmp_path).exists()


def test_rerender_replaces_files_whole(tmp_path: Path) -> None:
    run = run_data(strategy("up.py", "a" * 64, 0.001))
    render_report(run, tmp_path)
    render_report(run, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["equity.png", "report.html"]


def test_summary_table_lists_every_strategy() -> None:
    run = run_data(strategy("up.py", "a" * 64, 0.001), strategy("down.py", "b" * 64, -0.0005))
    console = Console(record=True, width=200)
    console.print(summary_table(run))
    text = console.export_text()
    assert "up.py" in text and "down.py" in text and "ABCDEF0123456789" in text
