"""Logging: JSON lines in three rotating, gzip-compressed, owner-only streams per
environment, or nowhere."""

from __future__ import annotations

import gzip
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion import _logging


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    _logging.configure_logging(None)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_events_are_json_lines_in_owner_only_files_one_per_stream(tmp_path: Path) -> None:
    """Events are written as one sorted-key JSON object per line, with level and UTC time,
    to the file of their stream (system, strategy, trades), each created mode 0600 in a
    0700 folder."""
    logs = tmp_path / "logs"
    assert _logging.configure_logging(logs) == logs
    _logging.get_logger(run_id="r1").warning("plugin_loaded", plugin="p")
    _logging.get_logger("trades", run_id="r1").warning("margin_call", strategy="s.py", ratio=0.2)
    _logging.get_logger("strategy", run_id="r1").info("signal", strategy="s.py", z="1.5")
    [system] = records(logs / "system.jsonl")
    [trade] = records(logs / "trades.jsonl")
    [said] = records(logs / "strategy.jsonl")
    assert system["event"] == "plugin_loaded"
    assert trade["event"] == "margin_call" and trade["level"] == "warning"
    assert (trade["run_id"], trade["strategy"], trade["ratio"]) == ("r1", "s.py", 0.2)
    assert said["event"] == "signal"
    assert str(trade["timestamp"]).endswith("Z")
    for stream in _logging.STREAMS:
        assert mode(logs / f"{stream}.jsonl") == 0o600
    assert mode(logs) == 0o700


def test_rotated_files_are_gzip_compressed_and_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a stream reaches its size limit the standard handler rotates it; the old file
    becomes NAME.1.gz (readable with gzip), and every file is mode 0600."""
    monkeypatch.setattr(_logging, "MAX_BYTES", 300)
    logs = tmp_path / "logs"
    _logging.configure_logging(logs)
    log = _logging.get_logger("trades")
    for n in range(20):
        log.info("filler", n=n, text="x" * 40)
    names = sorted(p.name for p in logs.iterdir())
    assert "trades.jsonl.1.gz" in names and not any(n.endswith(".1") for n in names)
    old = gzip.decompress((logs / "trades.jsonl.1.gz").read_bytes()).decode()
    assert '"event": "filler"' in old
    for name in names:
        assert mode(logs / name) == 0o600, name


def test_development_logs_debug_paper_and_live_info(tmp_path: Path) -> None:
    """A DEBUG record is written in development, not in paper or live."""
    logs = tmp_path / "dev"
    _logging.configure_logging(logs, debug=True)
    _logging.get_logger().debug("detail")
    assert "detail" in (logs / "system.jsonl").read_text()
    logs = tmp_path / "paper"
    _logging.configure_logging(logs, debug=False)
    _logging.get_logger().debug("detail")
    _logging.get_logger().info("kept")
    text = (logs / "system.jsonl").read_text()
    assert "detail" not in text and "kept" in text


def test_an_unknown_stream_is_an_error() -> None:
    """get_logger names one of the three streams."""
    with pytest.raises(ValueError, match="streams are system, strategy, trades"):
        _logging.get_logger("audit")


def test_unconfigured_logging_goes_nowhere(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a workspace, events are dropped, never printed (they would corrupt --json)."""
    _logging.configure_logging(None)
    _logging.get_logger().error("nothing_to_see")
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    for stream in _logging.STREAMS:
        handlers = logging.getLogger(f"{_logging.LOGGER_NAME}.{stream}").handlers
        assert [type(h) for h in handlers] == [logging.NullHandler]
