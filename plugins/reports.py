"""Run reports: a rich summary table for the terminal, and a self-contained HTML report.

:func:`summary_table` gives one row per strategy of a run.  :func:`render_report`
writes ``equity.png`` (equity curves above, drawdowns below) and ``report.html``
(that chart embedded as a data URI, the metrics, the run's configuration and,
for every strategy, the SHA-256 of the exact code and the key that signed it).
The HTML has no external assets and no JavaScript, so it can be archived or
mailed as one file.  Both files are written atomically.

Data matplotlib cannot draw (equity that is not finite or near the float
limit, timestamps at the edge of the calendar) never costs the report: the
chart is left out, the page says "chart not drawn: <reason>" instead, and a
``report_chart_not_drawn`` warning is logged.

Both consume :class:`bastion.interfaces.RunData` as a store's ``load_run``
returns it; metric keys are those of :func:`bastion.metrics.compute_metrics`
(any extra keys a store keeps are shown too, missing ones as "—").
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from bastion import __version__
from bastion.files import atomic_write_many
from bastion.interfaces import RunData, StrategyRunData
from bastion.log import get_logger
from bastion.metrics import RoundTrip, downsample, drawdown_series, round_trips
from bastion.trust import is_example_key

if TYPE_CHECKING:
    from matplotlib.artist import Artist

__all__ = [
    "HTML_NAME",
    "PNG_NAME",
    "render_report",
    "report_data",
    "strategy_summary",
    "summary_table",
]

PNG_NAME = "equity.png"
HTML_NAME = "report.html"
DASH = "—"
_PLOT_POINTS = 4000  # per strategy and panel; the figure is ~1200 px wide
_DPI = 110

MetricValue = float | int | None

# --------------------------------------------------------------------------- formatting


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _percent(value: object) -> str:
    number = _number(value)
    return DASH if number is None else f"{number * 100:,.2f}"


def _ratio(value: object) -> str:
    number = _number(value)
    return DASH if number is None else f"{number:.2f}"


def _count(value: object) -> str:
    number = _number(value)
    return DASH if number is None else f"{int(number):,}"


def _money(value: object) -> str:
    number = _number(value)
    return DASH if number is None else f"{number:,.2f}"


def _days(value: object) -> str:
    """Whole days from one day on (842, not 842.0); a fraction below it (0.25)."""
    number = _number(value)
    if number is None:
        return DASH
    return f"{number:,.0f}" if abs(number) >= 1 else f"{number:.2f}"


def _generic(value: object) -> str:
    number = _number(value)
    return DASH if number is None else f"{number:.6g}"


def _amount(value: Decimal | None) -> str:
    """Money: thousands separated, two decimals, a minus sign when negative."""
    return DASH if value is None else f"{value:,.2f}"


def _price_text(value: Decimal | None) -> str:
    """A price: two decimals, up to four when it has them (1.1235, not 1.123456789)."""
    if value is None:
        return DASH
    rounded = value.quantize(Decimal("0.0001"))
    text = f"{rounded:,.4f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def _quantity(value: Decimal) -> str:
    """A share count as it is: 10, 0.5, 1,250 (never 10.000 or 1E+1)."""
    normal = value.normalize()
    if normal == normal.to_integral_value():
        return f"{int(normal):,}"
    return f"{normal:,f}"


def _span(value: timedelta) -> str:
    """A holding time: 12d 3h, 4h 20m, 35m, 20s."""
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days:,}d {hours}h" if hours else f"{days:,}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


@attrs.frozen
class _Column:
    key: str
    label: str
    fmt: Callable[[object], str]


# Every metric compute_metrics produces, in the order reports show them.
_METRICS: tuple[_Column, ...] = (
    _Column("total_return", "Return %", _percent),
    _Column("cagr", "CAGR %", _percent),
    _Column("sharpe", "Sharpe", _ratio),
    _Column("volatility", "Volatility %", _percent),
    _Column("max_drawdown", "Max DD %", _percent),
    _Column("max_drawdown_duration_days", "Max DD days", _days),
    _Column("trades", "Trades", _count),
    _Column("win_rate", "Win %", _percent),
    _Column("exposure", "Exposure %", _percent),
    _Column("start_equity", "Start equity", _money),
    _Column("end_equity", "End equity", _money),
    _Column("benchmark_return", "Buy & hold %", _percent),
    _Column("excess_return", "Excess %", _percent),
    _Column("beta", "Beta", _ratio),
    _Column("correlation", "Correlation", _ratio),
)
_BY_KEY = {column.key: column for column in _METRICS}
_SUMMARY_KEYS = (
    "total_return",
    "cagr",
    "sharpe",
    "max_drawdown",
    "trades",
    "win_rate",
    "exposure",
    "end_equity",
)


def _metric(metrics: Mapping[str, MetricValue], key: str) -> str:
    return _BY_KEY[key].fmt(metrics.get(key))


def _signer_short(strategy: StrategyRunData) -> str:
    """The signer's key id (16 hex digits, as minisign prints it), or why there is none."""
    signer = strategy.record.signer
    if signer is None:
        return "unsigned"
    short = signer if len(signer) <= 16 else signer[:16] + "…"
    return f"{short} (example key)" if is_example_key(signer) else short


# --------------------------------------------------------------------------- terminal table


# Dropped one by one, in this order, until the table fits the terminal.
_NARROWING = ("signer", "exposure", "cagr", "win_rate", "sharpe", "trades", "max_drawdown")


def summary_table(run: RunData, width: int | None = None) -> Table:
    """One row per strategy: return, CAGR, Sharpe, drawdown, trades, win rate, exposure, equity.

    Percentages are in percent; undefined values show as "—".  Strategy names
    and other stored text are shown literally (never read as rich markup).  With
    ``width`` (the terminal's), columns are dropped (signer, exposure, CAGR, win rate,
    Sharpe, trades, drawdown, in that order) until the table fits, and long names wrap:
    a value is never cut short or blanked.
    """
    keys = list(_SUMMARY_KEYS)
    signer = True
    narrowing = list(_NARROWING)
    while True:
        table = _summary(run, keys, signer)
        if width is None or not narrowing or _width(table) <= width:
            return table
        drop = narrowing.pop(0)
        if drop == "signer":
            signer = False
        else:
            keys.remove(drop)


def _width(table: Table) -> int:
    console = Console(width=10_000, file=io.StringIO())
    return Measurement.get(console, console.options, table).maximum


def _summary(run: RunData, keys: Sequence[str], with_signer: bool) -> Table:
    caption = Text(f"run {run.row.run_id} · {run.info.environment} · {run.row.status}", style="dim")
    table = Table(title=Text(f"Bastion {run.row.kind} results"), caption=caption)
    table.add_column("Strategy", overflow="fold", min_width=8)
    if with_signer:
        table.add_column("Signer", no_wrap=True)
    for key in keys:
        table.add_column(_BY_KEY[key].label, justify="right", no_wrap=True)
    for strategy in run.strategies:
        name = Text(strategy.record.name)
        if strategy.quarantined:
            name.append(" quarantined", style="bold red")
        cells: list[Text] = [name]
        if with_signer:
            cells.append(
                Text(
                    _signer_short(strategy),
                    style="yellow" if strategy.record.signer is None else "",
                )
            )
        for key in keys:
            cell = Text(_metric(strategy.metrics, key))
            value = _number(strategy.metrics.get(key))
            if key == "total_return" and value is not None and value != 0:
                cell.stylize("green" if value > 0 else "red")
            cells.append(cell)
        table.add_row(*cells)
    if not run.strategies:
        table.add_row(Text("no strategies", style="dim"), *[""] * (len(keys) + with_signer))
    return table


# --------------------------------------------------------------------------- chart


def _plain_label(text: str) -> str:
    r"""Matplotlib reads ``$...$`` as mathematics; show a strategy's name literally."""
    return text.replace("$", r"\$")


def render_chart(run: RunData) -> bytes:
    """The PNG: equity curves of every strategy above, drawdowns in percent below.

    Each series is down-sampled (keeping every bucket's minimum and maximum, so
    drawdowns stay visible); drawdowns are computed before down-sampling.
    """
    # matplotlib is imported here, when a chart is drawn: a run that draws none
    # (``--no-report``, ``--json``) does not pay its start-up time.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import StrMethodFormatter

    figure = Figure(figsize=(11, 7), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    equity_axes, drawdown_axes = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    figure.suptitle(
        f"Bastion {run.row.kind} {run.row.run_id} · {run.info.environment} · {run.row.status}",
        fontsize=13,
        fontweight="bold",
    )
    handles: list[Artist] = []
    labels: list[str] = []
    plotted = False
    for index, strategy in enumerate(run.strategies):
        color = f"C{index % 10}"
        label = _plain_label(strategy.record.name)
        if not strategy.equity:
            handles.append(Line2D([], [], color=color, linestyle=":", linewidth=1.5))
            labels.append(f"{label} (no data)")
            continue
        points = downsample(list(strategy.equity), _PLOT_POINTS)
        times = [ts for ts, _ in points]
        (line,) = equity_axes.plot(
            times, [value for _, value in points], color=color, linewidth=1.3
        )
        drawdowns = downsample(drawdown_series(strategy.equity), _PLOT_POINTS)
        dd_times = [ts for ts, _ in drawdowns]
        dd_percent = [value * 100 for _, value in drawdowns]
        drawdown_axes.fill_between(dd_times, dd_percent, 0.0, color=color, alpha=0.2, linewidth=0)
        drawdown_axes.plot(dd_times, dd_percent, color=color, linewidth=0.9)
        handles.append(line)
        labels.append(label + (" (quarantined)" if strategy.quarantined else ""))
        plotted = True

    benchmark = [(ts, v) for ts, v in run.benchmark if math.isfinite(v)]
    if plotted and len(benchmark) == len(run.benchmark) and benchmark:
        points = downsample(benchmark, _PLOT_POINTS)
        (line,) = equity_axes.plot(
            [ts for ts, _ in points],
            [value for _, value in points],
            color="0.45",
            linestyle="--",
            linewidth=1.1,
        )
        handles.append(line)
        labels.append("buy & hold, equal weights")
    equity_axes.set_title("Equity", loc="left", fontsize=11)
    equity_axes.set_ylabel("Equity")
    equity_axes.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    drawdown_axes.set_title("Drawdown from running peak", loc="left", fontsize=11)
    drawdown_axes.set_ylabel("Drawdown (%)")
    drawdown_axes.yaxis.set_major_formatter(StrMethodFormatter("{x:.0f}%"))
    for axes in (equity_axes, drawdown_axes):
        axes.grid(True, alpha=0.3)
        axes.margins(x=0.01)
    if plotted:
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]  # untyped in matplotlib
        drawdown_axes.xaxis.set_major_locator(locator)
        drawdown_axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        drawdown_axes.set_xlabel("Date (UTC)")
        drawdown_axes.set_ylim(top=0.5)
    else:
        for axes in (equity_axes, drawdown_axes):
            axes.text(
                0.5,
                0.5,
                "no data",
                transform=axes.transAxes,
                ha="center",
                va="center",
                fontsize=14,
                color="0.4",
            )
            axes.set_yticks([])
            axes.set_xticks([])
    if handles:
        equity_axes.legend(handles, labels, loc="upper left", fontsize=9, framealpha=0.85)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": f"Bastion {__version__}"})
    return buffer.getvalue()


# What drawing extreme data raises: matplotlib's date range check and numpy's
# ``arange: cannot compute length`` are ValueErrors; float overflow in the axis
# arithmetic is an ArithmeticError, or a RuntimeWarning that _chart_or_reason
# turns into an error.
_CHART_ERRORS: tuple[type[Exception], ...] = (ValueError, ArithmeticError, RuntimeWarning)
_REASON_CHARS = 300


def _unchartable(run: RunData) -> str | None:
    """Why the chart cannot be drawn, if a cheap look at the data already tells."""
    for strategy in run.strategies:
        for ts, value in strategy.equity:
            if not math.isfinite(value):
                return (
                    f"strategy {strategy.record.name} has a non-finite equity value "
                    f"({value!r} at {ts.isoformat()})"
                )
    return None


def _chart_or_reason(run: RunData) -> tuple[bytes | None, str | None]:
    """The chart's PNG, or ``None`` and a short reason why it could not be drawn.

    Only the drawing is guarded: errors matplotlib (or the drawdown and
    down-sampling helpers) raise on data they cannot handle.  Numeric
    RuntimeWarnings (overflow in the axis arithmetic) count as failures too:
    a chart drawn through them would be wrong.
    """
    reason = _unchartable(run)
    if reason is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                return render_chart(run), None
        except _CHART_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
    if len(reason) > _REASON_CHARS:
        reason = reason[: _REASON_CHARS - 1] + "…"
    get_logger().warning("report_chart_not_drawn", run_id=run.row.run_id, reason=reason)
    return None, reason


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1250px; padding: 0 1rem; color: #1d232a; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem;
     margin-top: 2rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
table { border-collapse: collapse; margin: .3rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left;
         vertical-align: top; }
th { background: #f3f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { width: 13rem; }
code, .hash { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
              font-size: .88rem; word-break: break-all; }
img.chart { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
.note { background: #fff8c5; border: 1px solid #d4a72c; padding: .4rem .7rem; }
.bad { color: #b42318; font-weight: 600; }
.good { color: #1a7f37; }
.muted { color: #57606a; }
footer { margin-top: 2.5rem; font-size: .85rem; color: #57606a; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(value: datetime | None) -> str:
    return DASH if value is None else value.isoformat(sep=" ")


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _kv_table(rows: Sequence[tuple[str, str]], css_class: str = "kv") -> str:
    """Rows of ``(label, html)``; the label is escaped here, the value must already be."""
    body = "".join(f"<tr><th>{_e(label)}</th><td>{value}</td></tr>" for label, value in rows)
    return f'<table class="{css_class}">{body}</table>'


def _mode(sandbox: object) -> str:
    """How strategy code ran: the reader of an approval report must see an in-process run."""
    if sandbox == "sandboxed":
        return "sandboxed (one locked-down worker process per strategy)"
    if sandbox == "in-process":
        return (
            '<span class="bad">in-process: ran inside the kernel, unsandboxed '
            "(trusted backtest mode)</span>"
        )
    return '<span class="muted">not recorded</span>'


def _run_section(run: RunData) -> str:
    row, info = run.row, run.info
    status = _e(row.status)
    if row.status != "completed":
        status = f'<span class="bad">{status}</span>'
    rows = [
        ("Run id", f"<code>{_e(row.run_id)}</code>"),
        ("Kind", _e(row.kind)),
        ("Environment", _e(info.environment)),
        ("Status", status),
        ("Strategy code", _mode(info.config.get("sandbox"))),
        ("Bastion version", _e(info.bastion_version)),
        ("Started", _e(_when(info.started))),
        ("Finished", _e(_when(row.finished))),
    ]
    if row.finished is not None:
        rows.append(("Duration", _e(row.finished - info.started)))
    if row.error:
        rows.append(("Error", f'<span class="bad">{_e(row.error)}</span>'))
    config = (
        _kv_table([(str(key), _e(_json(info.config[key]))) for key in sorted(info.config)])
        if info.config
        else '<p class="muted">No configuration recorded.</p>'
    )
    return f"<section><h2>Run</h2>{_kv_table(rows)}<h3>Configuration</h3>{config}</section>"


def _summary_section(run: RunData) -> str:
    header = "".join(f"<th>{_e(column.label)}</th>" for column in _METRICS)
    body = []
    for strategy in run.strategies:
        cells = "".join(
            f'<td class="num">{_e(column.fmt(strategy.metrics.get(column.key)))}</td>'
            for column in _METRICS
        )
        name = _e(strategy.record.name)
        if strategy.quarantined:
            name += ' <span class="bad">quarantined</span>'
        signer = _e(_signer_short(strategy))
        body.append(f"<tr><th>{name}</th><td><code>{signer}</code></td>{cells}</tr>")
    if not body:
        return '<section><h2>Summary</h2><p class="note">This run has no strategies.</p></section>'
    return (
        "<section><h2>Summary</h2>"
        f"<table><tr><th>Strategy</th><th>Signer</th>{header}</tr>{''.join(body)}</table>"
        '<p class="muted">Percentages are in percent; "—" marks a value that is undefined '
        "for this run (for example a Sharpe ratio with fewer than two returns).</p></section>"
    )


def _strategy_section(strategy: StrategyRunData) -> str:
    record = strategy.record
    parts = [f"<section><h2>Strategy {_e(record.name)}</h2>"]
    if strategy.quarantined:
        parts.append(f'<p class="note bad">Quarantined: {_e(strategy.quarantined)}</p>')
    if not strategy.equity:
        parts.append(
            '<p class="note">No data: this strategy recorded no equity points, '
            "so it has no curve in the chart.</p>"
        )
    if record.signer is None:
        signer = '<span class="bad">unsigned (admitted in development only)</span>'
    else:
        signer = f"<code>{_e(record.signer)}</code>"
        if is_example_key(record.signer):
            signer += ' <span class="muted">(the bundled example key: not for live)</span>'
    code_rows = [
        ("File", f"<code>{_e(record.name)}</code>"),
        ("SHA-256", f'<span class="hash">{_e(record.sha256)}</span>'),
        ("Signer key id", signer),
        ("Signer name", _e(record.signer_name or DASH)),
        (
            "Whitelist version",
            _e(DASH if record.whitelist_version is None else record.whitelist_version),
        ),
        ("Unsigned", '<span class="bad">yes</span>' if record.unsigned else "no"),
        ("Parameters", f"<code>{_e(_json(dict(record.params)))}</code>"),
    ]
    parts.append(f"<h3>Code</h3>{_kv_table(code_rows)}")

    metric_rows = [
        (column.label, f"{_e(column.fmt(strategy.metrics.get(column.key)))}") for column in _METRICS
    ]
    metric_rows += [
        (key, _e(_generic(strategy.metrics[key])))
        for key in sorted(strategy.metrics)
        if key not in _BY_KEY
    ]
    metric_rows += [
        ("Orders", _e(f"{strategy.orders:,}")),
        ("Fills", _e(f"{strategy.fills:,}")),
        ("Rejected orders", _e(f"{strategy.rejected:,}")),
        *([("Latest rejection", _e(strategy.last_rejection))] if strategy.last_rejection else []),
        ("Equity points", _e(f"{len(strategy.equity):,}")),
    ]
    parts.append(f"<h3>Metrics</h3>{_kv_table(metric_rows)}")

    parts.append(_periods_part(strategy))
    parts.append(_positions_part(strategy))
    parts.append(_trades_part(strategy))
    parts.append(_costs_part(strategy))
    parts.append(_rejections_part(strategy))
    parts.append("</section>")
    return "".join(parts)


MAX_ROWS = 1000  # closed trades or rejections shown in the page (all are in --json)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _heat(value: float | None) -> str:
    """A cell's background: green for gains, red for losses, stronger up to 10 %."""
    if value is None or not math.isfinite(value) or value == 0:
        return ""
    alpha = 0.12 + 0.5 * min(abs(value) / 0.10, 1.0)
    rgb = "26,127,55" if value > 0 else "180,35,24"
    return f' style="background: rgba({rgb},{alpha:.2f})"'


def _periods_part(strategy: StrategyRunData) -> str:
    periods = strategy.period_returns
    years = sorted(p for p in periods if len(p) == 4)
    if not years:
        return ""
    rows = []
    for year in years:
        cells = []
        for number in range(1, 13):
            key = f"{year}-{number:02d}"
            value = periods.get(key)
            shown = _percent(value) if key in periods else ""
            cells.append(f"<td class='num'{_heat(value)}>{_e(shown)}</td>")
        total = periods[year]
        cells.append(f"<td class='num'{_heat(total)}><b>{_e(_percent(total))}</b></td>")
        rows.append(f"<tr><th>{_e(year)}</th>{''.join(cells)}</tr>")
    header = "".join(f"<th>{m}</th>" for m in _MONTHS)
    return (
        "<h3>Monthly and yearly returns (%)</h3>"
        f"<table><tr><th></th>{header}<th>Year</th></tr>{''.join(rows)}</table>"
        '<p class="muted">Calendar periods in UTC, from the full equity curve; a month '
        "without bars is empty.</p>"
    )


def _positions_part(strategy: StrategyRunData) -> str:
    held = [p for p in strategy.positions if p.quantity]
    realised = [p for p in strategy.positions if not p.quantity]
    if not held:
        body = '<p class="muted">None (flat).</p>'
    else:
        rows = "".join(
            f"<tr><td><code>{_e(p.symbol)}</code></td>"
            f"<td class='num'>{_e(_quantity(p.quantity))}</td>"
            f"<td class='num'>{_e(_price_text(p.avg_price))}</td>"
            f"<td class='num'>{_e(_price_text(p.mark))}</td>"
            f"<td class='num'>{_e(_amount(p.unrealized))}</td>"
            f"<td class='num'>{_e(_amount(p.realized))}</td></tr>"
            for p in held
        )
        body = (
            "<table><tr><th>Symbol</th><th>Quantity</th><th>Average price</th>"
            "<th>Last price</th><th>Unrealised P&amp;L</th><th>Realised P&amp;L</th></tr>"
            f"{rows}</table>"
        )
    if realised:
        closed = ", ".join(f"{p.symbol} {_amount(p.realized)}" for p in realised)
        body += f'<p class="muted">Closed out, realised P&amp;L: {_e(closed)}.</p>'
    return f"<h3>Open positions at the end</h3>{body}"


def _trades_part(strategy: StrategyRunData) -> str:
    trips = round_trips(strategy.executions)
    if not trips:
        return '<h3>Closed trades</h3><p class="muted">No round trip was closed.</p>'
    rows = "".join(
        "<tr>"
        f"<td><code>{_e(t.symbol)}</code></td><td>{_e(t.side)}</td>"
        f"<td>{_e(_when(t.opened))}</td><td>{_e(_when(t.closed))}</td>"
        f"<td class='num'>{_e(_span(t.holding))}</td>"
        f"<td class='num'>{_e(_quantity(t.quantity))}</td>"
        f"<td class='num'>{_e(_price_text(t.entry_price))}</td>"
        f"<td class='num'>{_e(_price_text(t.exit_price))}</td>"
        f"<td class='num {'good' if t.pnl > 0 else 'bad' if t.pnl < 0 else ''}'>"
        f"{_e(_amount(t.pnl))}</td>"
        f"<td class='num'>{_e(_percent(float(t.return_fraction)))}</td>"
        f"<td class='num'>{_e(_amount(t.commission))}</td>"
        "</tr>"
        for t in trips[:MAX_ROWS]
    )
    more = (
        f'<p class="muted">The first {MAX_ROWS:,} of {len(trips):,} trades; '
        "'bastion report RUN_ID --json' lists them all.</p>"
        if len(trips) > MAX_ROWS
        else ""
    )
    return (
        f"<h3>Closed trades ({len(trips):,})</h3>"
        "<table><tr><th>Symbol</th><th>Side</th><th>Opened</th><th>Closed</th>"
        "<th>Held</th><th>Quantity</th><th>Entry</th><th>Exit</th><th>P&amp;L</th>"
        f"<th>Return %</th><th>Commission</th></tr>{rows}</table>{more}"
        '<p class="muted">P&amp;L is net of the trade\'s commissions; entry and exit are '
        "average prices; quantity is the largest position held; return is P&amp;L over "
        "that position at the entry price.</p>"
    )


@attrs.frozen
class _Costs:
    commission: Decimal  # paid over the run
    traded_value: Decimal  # quantity times price, summed over every fill
    turnover: float | None  # traded value over the start equity

    @classmethod
    def of(cls, strategy: StrategyRunData) -> _Costs:
        traded = sum((f.quantity * f.price for f in strategy.executions), Decimal(0))
        start = _number(strategy.metrics.get("start_equity"))
        return cls(
            commission=sum((f.commission for f in strategy.executions), Decimal(0)),
            traded_value=traded,
            turnover=float(traded) / start if start else None,
        )


def _costs_part(strategy: StrategyRunData) -> str:
    costs = _Costs.of(strategy)
    rows = [
        ("Commission paid", _e(_amount(costs.commission))),
        ("Value traded", _e(_amount(costs.traded_value))),
        ("Turnover (value traded / start equity)", _e(_ratio(costs.turnover)) + " times"),
    ]
    return (
        f"<h3>Costs and turnover</h3>{_kv_table(rows)}"
        '<p class="muted">Slippage is in the fill prices, not a separate charge.</p>'
    )


def _rejections_part(strategy: StrategyRunData) -> str:
    if not strategy.rejections:
        return '<h3>Rejected orders</h3><p class="muted">None.</p>'
    rows = "".join(
        f"<tr><td>{_e(_when(r.created))}</td><td><code>{_e(r.symbol)}</code></td>"
        f"<td>{_e(r.side)}</td><td class='num'>{_e(_quantity(r.quantity))}</td>"
        f"<td>{_e(r.reason or DASH)}</td></tr>"
        for r in strategy.rejections[:MAX_ROWS]
    )
    more = (
        f'<p class="muted">The first {MAX_ROWS:,} of {len(strategy.rejections):,}.</p>'
        if len(strategy.rejections) > MAX_ROWS
        else ""
    )
    return (
        f"<h3>Rejected orders ({len(strategy.rejections):,})</h3>"
        "<table><tr><th>Asked at</th><th>Symbol</th><th>Side</th><th>Quantity</th>"
        f"<th>Reason</th></tr>{rows}</table>{more}"
    )


def _trip_json(trip: RoundTrip) -> dict[str, Any]:
    return {
        "symbol": trip.symbol,
        "side": trip.side,
        "opened": trip.opened.isoformat(),
        "closed": trip.closed.isoformat(),
        "holding_seconds": trip.holding.total_seconds(),
        "quantity": str(trip.quantity),
        "entry_price": str(trip.entry_price),
        "exit_price": str(trip.exit_price),
        "pnl": str(trip.pnl),
        "return": float(trip.return_fraction),
        "commission": str(trip.commission),
    }


def report_data(run: RunData) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data (``bastion report --json``):
    exact decimals as strings, times in ISO 8601."""
    return {
        "run_id": run.row.run_id,
        "kind": run.row.kind,
        "environment": run.info.environment,
        "status": run.row.status,
        "started": run.info.started.isoformat(),
        "finished": run.row.finished.isoformat() if run.row.finished else None,
        "config": dict(run.info.config),
        "benchmark": [[ts.isoformat(), value] for ts, value in run.benchmark],
        "strategies": [_strategy_json(s) for s in run.strategies],
    }


def strategy_summary(strategy: StrategyRunData) -> dict[str, Any]:
    """One strategy's identity and totals as JSON-ready data (``bastion backtest --json``
    and, with everything else the report shows, ``bastion report --json``)."""
    return {
        "name": strategy.record.name,
        "sha256": strategy.record.sha256,
        "signer": strategy.record.signer,
        "params": dict(strategy.record.params),
        "metrics": dict(strategy.metrics),
        "orders": strategy.orders,
        "fills": strategy.fills,
        "rejected": strategy.rejected,
        "last_rejection": strategy.last_rejection,
        "quarantined": strategy.quarantined,
    }


def _strategy_json(strategy: StrategyRunData) -> dict[str, Any]:
    costs = _Costs.of(strategy)
    return {
        **strategy_summary(strategy),
        "open_positions": [
            {
                "symbol": p.symbol,
                "quantity": str(p.quantity),
                "avg_price": str(p.avg_price),
                "mark": None if p.mark is None else str(p.mark),
                "unrealized": None if p.unrealized is None else str(p.unrealized),
                "realized": str(p.realized),
            }
            for p in strategy.positions
            if p.quantity
        ],
        "period_returns": dict(strategy.period_returns),
        "closed_trades": [_trip_json(t) for t in round_trips(strategy.executions)],
        "costs": {
            "commission": str(costs.commission),
            "traded_value": str(costs.traded_value),
            "turnover": costs.turnover,
        },
        "rejected_orders": [
            {
                "created": r.created.isoformat(),
                "symbol": r.symbol,
                "side": r.side,
                "quantity": str(r.quantity),
                "reason": r.reason,
            }
            for r in strategy.rejections
        ],
    }


def _chart_section(run: RunData, png: bytes | None, chart_note: str | None) -> str:
    names = ", ".join(strategy.record.name for strategy in run.strategies) or "no strategies"
    if png is None:
        reason = chart_note or "no image"
        return (
            "<section><h2>Equity and drawdown</h2>"
            f'<p class="note bad">chart not drawn: {_e(reason)}</p></section>'
        )
    image = base64.b64encode(png).decode("ascii")
    return (
        "<section><h2>Equity and drawdown</h2>"
        f'<img class="chart" src="data:image/png;base64,{image}" '
        f'alt="{_e("Equity curve and drawdown of each strategy: " + names)}"></section>'
    )


def render_html(run: RunData, png: bytes | None, chart_note: str | None = None) -> str:
    """The report page, with ``png`` embedded as a data URI; every stored text is escaped.

    With ``png`` ``None`` the page has no image but says "chart not drawn:
    ``chart_note``" where the chart would be.
    """
    title = f"Bastion {run.row.kind} report — {run.row.run_id}"
    names = ", ".join(strategy.record.name for strategy in run.strategies) or "no strategies"
    generated = datetime.now(UTC).replace(microsecond=0).isoformat(sep=" ")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f'<p class="muted">{_e(run.info.environment)} · {_e(run.row.status)} · '
        f"{_e(names)}</p>"
        f"{_chart_section(run, png, chart_note)}"
        f"{_summary_section(run)}{_run_section(run)}"
        f"{''.join(_strategy_section(strategy) for strategy in run.strategies)}"
        f"<footer>Produced by Bastion {_e(__version__)} at {_e(generated)}. "
        "Each strategy is identified by the SHA-256 of the exact file that ran and the "
        "key id that signed it.</footer>"
        "</body></html>\n"
    )


def render_report(run: RunData, out_dir: Path) -> Path:
    """Write ``out_dir/equity.png`` and ``out_dir/report.html``; return the HTML's path.

    ``out_dir`` is created if missing.  Both files are written to temporary
    names first and renamed into place only when both are complete, so a crash
    never leaves a half-written report (an older report stays as it was).

    If the chart cannot be drawn (see :func:`_chart_or_reason`) only
    ``report.html`` is written, saying why in place of the chart, and an older
    ``equity.png`` in ``out_dir`` is removed so it cannot pass for this run's.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    png, chart_note = _chart_or_reason(run)
    page = render_html(run, png) if png is not None else render_html(run, None, chart_note)
    html_path = out_dir / HTML_NAME
    files = [(html_path, page.encode("utf-8"))]
    if png is not None:
        files.insert(0, (out_dir / PNG_NAME, png))
    atomic_write_many(files)
    if png is None:
        (out_dir / PNG_NAME).unlink(missing_ok=True)
    return html_path
