"""Run reports: the terminal summary table, the PNG chart and the self-contained HTML page."""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import structlog.testing
from rich.console import Console

from bastion._logging import get_logger
from bastion._metrics import TradeRecord, compute_metrics
from bastion.interfaces import RunData, RunInfo, RunRow, StrategyRecord, StrategyRunData
from bastion.models import Position
from bastion.plugins import reports
from bastion.plugins.reports import render_report, summary_table

T0 = datetime(2023, 1, 2, 21, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHA_A = "a1" * 32
SHA_B = "b2" * 32
SIGNER_A = "0123456789ABCDEF"
SIGNER_B = "FEDCBA9876543210"


def curve(
    n: int, drift: float, wobble: float, start: float = 10_000.0
) -> list[tuple[datetime, float]]:
    """A deterministic, wiggly daily equity curve."""
    return [
        (T0 + timedelta(days=i), start * (1 + drift * i) * (1 + wobble * math.sin(i / 7)))
        for i in range(n)
    ]


def strategy(
    name: str,
    sha256: str,
    signer: str | None,
    equity: Sequence[tuple[datetime, float]],
    quarantined: str | None = None,
) -> StrategyRunData:
    trades = [
        TradeRecord("AAPL", T0, T0 + timedelta(days=3), Decimal("12.50")),
        TradeRecord("AAPL", T0, T0 + timedelta(days=9), Decimal("-4.00")),
    ]
    record = StrategyRecord(
        name=name,
        sha256=sha256,
        signer=signer,
        signer_name=None if signer is None else "alice",
        whitelist_version=None if signer is None else 7,
        unsigned=signer is None,
        params={"fast": 10, "slow": 30},
    )
    return StrategyRunData(
        record=record,
        metrics=compute_metrics(equity, trades, len(equity) // 2, len(equity), 10_000.0),
        equity=equity,
        positions=[Position("AAPL", Decimal("5"), Decimal("151.20"), Decimal("8.50"))],
        orders=4,
        fills=4,
        quarantined=quarantined,
    )


def run_data(
    strategies: Sequence[StrategyRunData], config: dict[str, object] | None = None
) -> RunData:
    names = tuple(s.record.name for s in strategies)
    return RunData(
        row=RunRow(
            run_id="run-0001",
            kind="backtest",
            environment="development",
            status="completed",
            started=T0,
            finished=T0 + timedelta(minutes=2),
            strategies=names,
            error=None,
        ),
        info=RunInfo(
            run_id="run-0001",
            kind="backtest",
            environment="development",
            started=T0,
            bastion_version="9.9.9-test",
            config=config if config is not None else {"source": "csv:data", "cash": 10_000},
        ),
        strategies=list(strategies),
    )


@pytest.fixture
def two_strategies() -> RunData:
    return run_data(
        [
            strategy("sma_cross.py", SHA_A, SIGNER_A, curve(300, 0.001, 0.03)),
            strategy("mean_revert.py", SHA_B, SIGNER_B, curve(300, -0.0005, 0.05)),
        ]
    )


def png_size(data: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", data[16:24])  # IHDR follows the signature
    return int(width), int(height)


# --------------------------------------------------------------------------- files


def test_render_writes_a_png_and_returns_the_html_path(
    two_strategies: RunData, tmp_path: Path
) -> None:
    """equity.png is a real PNG of about 11 x 7 inches at 110 dpi; the HTML path is returned."""
    html_path = render_report(two_strategies, tmp_path)
    assert html_path == tmp_path / "report.html"
    png = (tmp_path / "equity.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert 20_000 < len(png) < 2_000_000
    width, height = png_size(png)
    assert 1000 <= width <= 1400 and 600 <= height <= 900


def test_render_creates_a_missing_directory_and_leaves_no_temp_files(
    two_strategies: RunData, tmp_path: Path
) -> None:
    """out_dir is created (with parents) and holds exactly the two report files afterwards."""
    out = tmp_path / "a" / "b" / "report"
    render_report(two_strategies, out)
    assert sorted(p.name for p in out.iterdir()) == ["equity.png", "report.html"]


def test_a_failed_render_keeps_the_previous_report(
    two_strategies: RunData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If rendering fails midway, the old report files stay intact and no partial file appears."""
    render_report(two_strategies, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(run: RunData, png: bytes) -> str:
        raise RuntimeError("crash while rendering")

    monkeypatch.setattr(reports, "render_html", boom)
    with pytest.raises(RuntimeError, match="crash"):
        render_report(two_strategies, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --------------------------------------------------------------------------- HTML content


def test_html_traces_each_strategy_to_its_code_and_signer(
    two_strategies: RunData, tmp_path: Path
) -> None:
    """Each strategy's full SHA-256, signer key id and name appear, with the run's identity."""
    page = render_report(two_strategies, tmp_path).read_text(encoding="utf-8")
    for sha, signer, name in [
        (SHA_A, SIGNER_A, "sma_cross.py"),
        (SHA_B, SIGNER_B, "mean_revert.py"),
    ]:
        assert sha in page
        assert signer in page
        assert name in page
    assert "run-0001" in page
    assert "development" in page
    assert "9.9.9-test" in page
    assert "csv:data" in page  # the configuration table


def test_html_shows_the_metrics(two_strategies: RunData, tmp_path: Path) -> None:
    """Return, drawdown, Sharpe, trades and end equity of each strategy appear as formatted."""
    page = render_report(two_strategies, tmp_path).read_text(encoding="utf-8")
    for item in two_strategies.strategies:
        m = item.metrics
        assert isinstance(m["total_return"], float)
        assert isinstance(m["max_drawdown"], float)
        assert isinstance(m["sharpe"], float)
        assert isinstance(m["end_equity"], float)
        assert f">{m['total_return'] * 100:,.2f}<" in page
        assert f">{m['max_drawdown'] * 100:,.2f}<" in page
        assert f">{m['sharpe']:.2f}<" in page
        assert f">{m['end_equity']:,.2f}<" in page
    assert ">50.00<" in page  # win rate: one of two trades won
    for label in ("Return %", "CAGR %", "Sharpe", "Max DD %", "Win %", "Exposure %"):
        assert label in page


def test_html_embeds_the_chart_and_is_self_contained(
    two_strategies: RunData, tmp_path: Path
) -> None:
    """The PNG is inlined as a base64 data URI; the page loads nothing and runs no script."""
    page = render_report(two_strategies, tmp_path).read_text(encoding="utf-8")
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match is not None
    assert base64.b64decode(match.group(1)) == (tmp_path / "equity.png").read_bytes()
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "@import" not in page and "url(" not in page


def test_html_escapes_stored_text(tmp_path: Path) -> None:
    """Strategy names, parameters, config and errors are escaped: no markup gets through."""
    evil = "<script>alert(1)</script>.py"
    item = strategy(evil, SHA_A, SIGNER_A, curve(30, 0.001, 0.01), quarantined="<b>hung</b>")
    run = run_data([item], config={"note": "<img src=x onerror=alert(1)>"})
    run = RunData(
        row=RunRow(
            run_id=run.row.run_id,
            kind=run.row.kind,
            environment=run.row.environment,
            status="failed",
            started=run.row.started,
            finished=None,
            strategies=run.row.strategies,
            error='boom "quoted" <i>x</i>',
        ),
        info=run.info,
        strategies=run.strategies,
    )
    page = render_report(run, tmp_path).read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.py" in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>hung</b>" not in page and "&lt;b&gt;hung&lt;/b&gt;" in page
    assert "<i>x</i>" not in page and "&lt;i&gt;x&lt;/i&gt;" in page


def test_html_marks_unsigned_and_quarantined_strategies(tmp_path: Path) -> None:
    """An unsigned strategy says so where the signer would be; a quarantine shows its reason."""
    item = strategy(
        "dev.py", SHA_A, None, curve(30, 0.0, 0.01), quarantined="exceeded 2 s deadline"
    )
    page = render_report(run_data([item]), tmp_path).read_text(encoding="utf-8")
    assert "unsigned (admitted in development only)" in page
    assert "Quarantined: exceeded 2 s deadline" in page


def test_strategy_without_equity_still_renders(tmp_path: Path) -> None:
    """A strategy with no equity points gets a 'no data' note; the others are charted normally."""
    run = run_data(
        [
            strategy("sma_cross.py", SHA_A, SIGNER_A, curve(300, 0.001, 0.03)),
            strategy("silent.py", SHA_B, SIGNER_B, []),
        ]
    )
    page = render_report(run, tmp_path).read_text(encoding="utf-8")
    assert "No data: this strategy recorded no equity points" in page
    assert SHA_B in page
    assert (tmp_path / "equity.png").read_bytes().startswith(PNG_SIGNATURE)


def test_run_without_any_data_still_renders(tmp_path: Path) -> None:
    """A run whose only strategy has no equity, or with no strategies at all, still renders."""
    render_report(run_data([strategy("silent.py", SHA_A, SIGNER_A, [])]), tmp_path / "one")
    assert (tmp_path / "one" / "equity.png").read_bytes().startswith(PNG_SIGNATURE)
    page = render_report(run_data([]), tmp_path / "none").read_text(encoding="utf-8")
    assert "This run has no strategies." in page


def test_chart_shows_names_with_mathtext_characters_literally(tmp_path: Path) -> None:
    """A '$' in a strategy name is not parsed as matplotlib mathtext (which could fail)."""
    item = strategy("$weird$_{name}$.py", SHA_A, SIGNER_A, curve(30, 0.001, 0.01))
    page = render_report(run_data([item]), tmp_path).read_text(encoding="utf-8")
    assert "$weird$_{name}$.py" in page


def test_long_series_are_downsampled_for_the_chart(tmp_path: Path) -> None:
    """100 000 points render quickly into a normal-sized PNG (the chart is down-sampled)."""
    points = [
        (T0 + timedelta(minutes=i), 10_000.0 + 50 * math.sin(i / 500)) for i in range(100_000)
    ]
    render_report(run_data([strategy("fast.py", SHA_A, SIGNER_A, points)]), tmp_path)
    assert len((tmp_path / "equity.png").read_bytes()) < 2_000_000


# --------------------------------------------------------------------------- extreme data


def bare(name: str, equity: Sequence[tuple[datetime, float]]) -> StrategyRunData:
    """A strategy with the given equity and no metrics (compute_metrics refuses non-finite)."""
    item = strategy(name, SHA_A, SIGNER_A, [])
    return StrategyRunData(
        record=item.record,
        metrics={},
        equity=equity,
        positions=[],
        orders=0,
        fills=0,
        quarantined=None,
    )


def assert_report_without_chart(run: RunData, out: Path, reason: str) -> str:
    """render_report returns the HTML path, writes no PNG, notes why and logs a warning."""
    get_logger()  # configure logging first, or that would replace capture_logs' set-up
    with structlog.testing.capture_logs() as logs:
        html_path = render_report(run, out)
    assert html_path == out / "report.html"
    page = html_path.read_text(encoding="utf-8")
    assert "chart not drawn: " in page
    assert reason in page
    assert "data:image/png" not in page
    assert not (out / "equity.png").exists()
    warned = [e for e in logs if e["event"] == "report_chart_not_drawn"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert warned[0]["run_id"] == run.row.run_id and reason in warned[0]["reason"]
    return page


def test_a_date_at_the_end_of_the_calendar_skips_the_chart_not_the_report(
    tmp_path: Path,
) -> None:
    """One equity point on 9999-12-31 (matplotlib cannot place the axis margin past year
    9999) leaves the chart out with a note; the rest of the report is written as usual."""
    points = [(datetime(9999, 12, 31, tzinfo=UTC), 10_000.0)]
    run = run_data([strategy("sma_cross.py", SHA_A, SIGNER_A, points)])
    page = assert_report_without_chart(run, tmp_path, "between year 0001 and 9999")
    assert SHA_A in page and "run-0001" in page
    assert ">10,000.00<" in page  # the metrics are still there


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([1e308, 1e308], "ValueError: arange: cannot compute length"),
        ([1e308, -1e308, 1e308], "RuntimeWarning: overflow encountered"),
    ],
    ids=["flat-at-1e308", "swinging-across-1e308"],
)
def test_equity_near_the_float_limit_skips_the_chart_not_the_report(
    values: list[float], reason: str, tmp_path: Path
) -> None:
    """Equity of +-1e308 (numpy cannot size the axis ticks, or the axis arithmetic
    overflows) leaves the chart out with a note naming the error instead of raising."""
    points = [(T0 + timedelta(days=i), value) for i, value in enumerate(values)]
    run = run_data([bare("huge.py", points)])
    page = assert_report_without_chart(run, tmp_path, reason)
    assert "huge.py" in page and SHA_A in page


def test_non_finite_equity_skips_the_chart_before_drawing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored equity that is NaN or infinite is caught by a pre-check: matplotlib is never
    asked to draw it, and the note names the strategy."""

    def never(run: RunData) -> bytes:
        raise AssertionError("render_chart must not be called")

    monkeypatch.setattr(reports, "render_chart", never)
    run = run_data(
        [
            bare("fine.py", curve(10, 0.001, 0.01)),
            bare("broken.py", [(T0, 10_000.0), (T0 + timedelta(days=1), math.inf)]),
        ]
    )
    assert_report_without_chart(run, tmp_path, "strategy broken.py has a non-finite equity value")


def test_a_skipped_chart_removes_an_older_png(two_strategies: RunData, tmp_path: Path) -> None:
    """Re-rendering into a folder that holds an earlier chart does not leave that chart
    beside a report that says its chart was not drawn."""
    render_report(two_strategies, tmp_path)
    assert (tmp_path / "equity.png").exists()
    run = run_data([bare("huge.py", [(T0, 1e308)])])
    assert_report_without_chart(run, tmp_path, "cannot compute length")


def test_unexpected_chart_errors_still_propagate(
    two_strategies: RunData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only data errors are absorbed: a bug in the chart code (here a TypeError) still
    raises, and no report is written."""

    def bug(run: RunData) -> bytes:
        raise TypeError("a bug")

    monkeypatch.setattr(reports, "render_chart", bug)
    with pytest.raises(TypeError, match="a bug"):
        render_report(two_strategies, tmp_path)
    assert not (tmp_path / "report.html").exists()


# --------------------------------------------------------------------------- terminal table


def table_text(run: RunData) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(summary_table(run))
    return console.export_text()


def test_summary_table_has_a_row_per_strategy(two_strategies: RunData) -> None:
    """The table names each strategy and signer, shows formatted metrics and a run caption."""
    text = table_text(two_strategies)
    assert "sma_cross.py" in text and "mean_revert.py" in text
    assert SIGNER_A in text and SIGNER_B in text
    first = two_strategies.strategies[0].metrics
    assert isinstance(first["total_return"], float)
    assert f"{first['total_return'] * 100:,.2f}" in text
    assert "run-0001" in text and "development" in text and "completed" in text
    for header in ("Return %", "CAGR %", "Sharpe", "Max DD %", "Trades", "Win %", "Exposure %"):
        assert header in text


def test_summary_table_shows_none_as_a_dash_and_names_literally() -> None:
    """Undefined metrics print as '—'; rich markup in a name is shown, not interpreted."""
    item = strategy("[bold]tricky[/bold].py", SHA_A, None, [])
    text = table_text(run_data([item]))
    assert "[bold]tricky[/bold].py" in text
    assert "—" in text  # CAGR and Sharpe of an empty series
    assert "unsigned" in text


def test_summary_table_marks_quarantine() -> None:
    """A quarantined strategy is flagged in its row."""
    item = strategy("hangs.py", SHA_A, SIGNER_A, curve(10, 0.0, 0.01), quarantined="deadline")
    assert "hangs.py quarantined" in table_text(run_data([item]))


def test_missing_metrics_show_as_dashes(tmp_path: Path) -> None:
    """A store that kept no metrics for a strategy still yields a table and a report, with '—'."""
    item = strategy("bare.py", SHA_A, SIGNER_A, curve(20, 0.0, 0.01))
    bare = StrategyRunData(
        record=item.record,
        metrics={},
        equity=item.equity,
        positions=[],
        orders=0,
        fills=0,
        quarantined=None,
    )
    run = run_data([bare])
    row = next(line for line in table_text(run).splitlines() if "bare.py" in line)
    assert row.count("—") == 8  # every metric column
    page = render_report(run, tmp_path).read_text(encoding="utf-8")
    assert "<tr><th>Return %</th><td>—</td></tr>" in page
    assert "None (flat)." in page


# --------------------------------------------------------------------------- what a trader reads


def traded(name: str = "trader.py") -> StrategyRunData:
    """A strategy with one closed long trade, one open position and one rejection."""
    from bastion.interfaces import RejectedOrder
    from bastion.models import Fill

    fills = [
        Fill("o1", "AAPL", "buy", 10, "100", "1", T0),
        Fill("o2", "AAPL", "sell", 10, "112.5", "1", T0 + timedelta(days=3, hours=4)),
        Fill("o3", "MSFT", "buy", "2.5", "300.125", "1.5", T0 + timedelta(days=4)),
    ]
    base = strategy(name, SHA_A, SIGNER_A, curve(30, 0.001, 0.01))
    return attrs.evolve(
        base,
        positions=[
            Position("AAPL", Decimal(0), Decimal(0), Decimal(125)),
            Position("MSFT", Decimal("2.5"), Decimal("300.125"), Decimal(0), Decimal("310.5")),
        ],
        executions=fills,
        rejections=[
            RejectedOrder(T0 + timedelta(days=1), "AAPL", "buy", Decimal(1000), "too big <b>")
        ],
        fills=3,
    )


def test_the_report_lists_trades_open_positions_costs_and_rejections(tmp_path: Path) -> None:
    """The HTML shows each closed trade (prices, quantity, P&L net of commissions,
    return, holding time), open positions with their last price and unrealised P&L,
    commission and turnover, and every rejected order with its reason (escaped)."""
    page = render_report(run_data([traded()]), tmp_path).read_text()
    text = re.sub(r"<[^>]+>", " ", page)
    assert "Closed trades (1)" in text
    for shown in ("3d 4h", "100.00", "112.50", "123.00", "12.30"):  # P&L 125 - 2, 123/1000
        assert shown in text, shown
    assert "310.50" in text and "25.94" in text  # unrealised 2.5 * (310.5 - 300.125)
    assert "<th>Commission paid</th><td>3.50</td>" in page
    assert "too big &lt;b&gt;" in page and "Rejected orders (1)" in text
    days = re.search(r"<th>Max DD days</th><td>([^<]*)</td>", page)
    assert days is not None and re.fullmatch(r"[\d,]+|\d\.\d\d|—", days.group(1)), days


def test_report_data_is_exact_and_complete() -> None:
    """report_data (bastion report --json) carries every closed trade and open position
    with exact decimals, the costs, and the rejections."""
    data = reports.report_data(run_data([traded()]))
    [entry] = data["strategies"]
    [trade] = entry["closed_trades"]
    prices = (trade["pnl"], trade["entry_price"], trade["exit_price"])
    assert tuple(map(Decimal, prices)) == (123, 100, Decimal("112.5"))
    assert trade["holding_seconds"] == timedelta(days=3, hours=4).total_seconds()
    [held] = entry["open_positions"]
    assert (held["symbol"], held["mark"]) == ("MSFT", "310.5")
    assert Decimal(held["unrealized"]) == Decimal("25.9375")
    assert Decimal(entry["costs"]["commission"]) == Decimal("3.5")
    assert entry["rejected_orders"][0]["reason"] == "too big <b>"


def test_days_and_money_read_the_way_traders_write_them() -> None:
    """842 days, not 842.0; a fraction of a day stays a fraction; prices keep up to four
    decimals and at least two; quantities are never written in exponent form."""
    assert reports._days(842.0) == "842" and reports._days(0.25) == "0.25"
    assert reports._price_text(Decimal("1.123456789")) == "1.1235"
    assert reports._price_text(Decimal(100)) == "100.00"
    assert (
        reports._quantity(Decimal("1E+1")) == "10" and reports._quantity(Decimal("0.50")) == "0.5"
    )
    assert reports._amount(Decimal("16751.0800")) == "16,751.08"


@pytest.mark.parametrize("width", [80, 60, 45])
def test_the_summary_fits_the_terminal_by_dropping_columns_not_blanking_them(
    two_strategies: RunData, width: int
) -> None:
    """In a narrow terminal whole columns go (signer first); what stays is complete:
    every value printed in full, the table no wider than the terminal."""
    table = summary_table(two_strategies, width=width)
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    first = two_strategies.strategies[0].metrics
    assert f"{first['total_return'] * 100:,.2f}" in text  # Return % always stays
    assert f"{first['end_equity']:,.2f}" in text
    assert "Sharpe" not in text or width >= 80


def test_monthly_returns_and_the_benchmark_are_shown(tmp_path: Path) -> None:
    """The page has a year-by-month table of returns (gains green, losses red, empty
    months blank) and the metrics against buy-and-hold; the chart draws the benchmark;
    --json carries both."""
    base = traded()
    item = attrs.evolve(
        base,
        period_returns={"2023": 0.05, "2023-01": 0.02, "2023-02": -0.01},
        metrics={**base.metrics, "benchmark_return": 0.031, "beta": 0.8},
    )
    run = attrs.evolve(
        run_data([item]),
        benchmark=[(ts, 10_000.0 + i) for i, (ts, _) in enumerate(curve(30, 0, 0))],
    )
    page = render_report(run, tmp_path).read_text()
    text = re.sub(r"<[^>]+>", " ", page)
    assert "Monthly and yearly returns" in text
    assert re.search(r"2023\s+2\.00\s+-1\.00\s+5\.00", text)
    assert "rgba(26,127,55" in page and "rgba(180,35,24" in page
    assert "Buy &amp; hold %" in page and "3.10" in text and "0.80" in text
    assert (tmp_path / "equity.png").stat().st_size > 0
    data = reports.report_data(run)
    assert data["benchmark"][0][1] == 10_000.0
    assert data["strategies"][0]["period_returns"]["2023-02"] == -0.01
