"""Built-in plugin: ``bastion logs``, reading the environment's log streams.

Registered through ``register_commands`` like any third-party command.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from bastion import hookimpl
from bastion.cli import App, console, pass_app, workspace_options
from bastion.log import STREAMS, stream_file

BACKUPS = 5


def _files(logs_dir: Path, stream: str) -> list[Path]:
    """A stream's files, oldest first: ``NAME.jsonl.5.gz`` ... ``.1.gz``, then ``NAME.jsonl``."""
    current = stream_file(logs_dir, stream)
    rotated = [Path(f"{current}.{n}.gz") for n in range(BACKUPS, 0, -1)]
    return [p for p in (*rotated, current) if p.exists()]


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        yield from handle


def _parse(line: str, stream: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    record["stream"] = stream
    return record


def _wanted(record: dict[str, Any], order_id: str | None, run_id: str | None) -> bool:
    if order_id is not None and record.get("order_id") != order_id:
        return False
    return not (run_id is not None and not str(record.get("run_id", "")).startswith(run_id))


def _show(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(record, sort_keys=True, default=str))
        return
    head = (
        f"{record.get('timestamp', '-')} {record.get('level', '-')!s:7} "
        f"{record['stream']:8} {record.get('event', '-')}"
    )
    rest = " ".join(
        f"{key}={value}"
        for key, value in sorted(record.items())
        if key not in ("timestamp", "level", "stream", "event")
    )
    console.print(f"{head} {rest}".rstrip(), markup=False, highlight=False, soft_wrap=True)


@click.command("logs")
@workspace_options
@click.option(
    "--stream",
    type=click.Choice([*STREAMS, "all"]),
    default="all",
    show_default=True,
    help="Which stream: system, strategy, trades, or all of them merged by time.",
)
@click.option("--order", "order_id", default=None, help="Only the records of this order id.")
@click.option("--run", "run_id", default=None, help="Only the records of this run (or prefix).")
@click.option("-n", "--lines", type=click.IntRange(min=1), default=None, help="Only the last N.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records (Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_app
def logs_command(
    app: App,
    stream: str,
    order_id: str | None,
    run_id: str | None,
    lines: int | None,
    follow: bool,
    as_json: bool,
) -> None:
    """Show the environment's log records (rotated files included), oldest first.

    Each record gains 'stream'. --order follows one order from submission to fill in
    the trades stream (its client order id is the correlation id).
    """
    logs_dir = app.workspace.logs_dir
    streams = list(STREAMS) if stream == "all" else [stream]
    found: list[dict[str, Any]] = []
    for name in streams:
        for path in _files(logs_dir, name):
            for line in _lines(path):
                record = _parse(line, name)
                if record is not None and _wanted(record, order_id, run_id):
                    found.append(record)
    found.sort(key=lambda r: str(r.get("timestamp", "")))
    if lines is not None:
        found = found[-lines:]
    for record in found:
        _show(record, as_json)
    if follow:
        _follow(logs_dir, streams, order_id, run_id, as_json)


def _follow(
    logs_dir: Path, streams: list[str], order_id: str | None, run_id: str | None, as_json: bool
) -> None:
    """Print records appended from now on; a rotated file is picked up again."""
    positions: dict[str, tuple[int, int]] = {}  # stream -> (inode, offset)
    for name in streams:
        path = stream_file(logs_dir, name)
        if path.exists():
            st = path.stat()
            positions[name] = (st.st_ino, st.st_size)
    try:
        while True:
            for name in streams:
                path = stream_file(logs_dir, name)
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                inode, offset = positions.get(name, (st.st_ino, 0))
                if inode != st.st_ino or st.st_size < offset:
                    offset = 0  # rotated: the new file from its start
                if st.st_size > offset:
                    with path.open("r", encoding="utf-8", errors="replace") as handle:
                        handle.seek(offset)
                        chunk = handle.read()
                    complete, _, _ = chunk.rpartition("\n")
                    for line in complete.splitlines():
                        record = _parse(line, name)
                        if record is not None and _wanted(record, order_id, run_id):
                            _show(record, as_json)
                    offset += len(complete.encode("utf-8")) + (1 if complete else 0)
                positions[name] = (st.st_ino, offset)
            time.sleep(0.2)
    except KeyboardInterrupt:
        return


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(logs_command)
