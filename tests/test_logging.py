"""Logging: JSON lines in a rotating, owner-only file per environment, or nowhere."""

from __future__ import annotations

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


def test_events_are_json_lines_in_an_owner_only_file(tmp_path: Path) -> None:
    """Events are written as one sorted-key JSON object per line, with level and UTC time,
    to logs/bastion.jsonl, created mode 0600 in a 0700 folder."""
    target = _logging.configure_logging(tmp_path / "logs")
    assert target == tmp_path / "logs" / "bastion.jsonl"
    _logging.get_logger(run_id="r1").warning("margin_call", strategy="s.py", ratio=0.2)
    record = json.loads(target.read_text(encoding="utf-8").splitlines()[-1])
    assert record["event"] == "margin_call"
    assert record["level"] == "warning"
    assert (record["run_id"], record["strategy"], record["ratio"]) == ("r1", "s.py", 0.2)
    assert record["timestamp"].endswith("Z")
    assert mode(target) == 0o600
    assert mode(tmp_path / "logs") == 0o700


def test_rotated_files_are_owner_only_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the file reaches its size limit it is rotated by the standard handler, and the
    new file is again created mode 0600."""
    monkeypatch.setattr(_logging, "MAX_BYTES", 300)
    target = _logging.configure_logging(tmp_path / "logs")
    assert target is not None
    log = _logging.get_logger()
    for n in range(20):
        log.info("filler", n=n, text="x" * 40)
    rotated = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert "bastion.jsonl.1" in rotated
    for name in rotated:
        assert mode(tmp_path / "logs" / name) == 0o600, name


def test_unconfigured_logging_goes_nowhere(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a workspace, events are dropped, never printed (they would corrupt --json)."""
    _logging.configure_logging(None)
    _logging.get_logger().error("nothing_to_see")
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    handlers = logging.getLogger(_logging.LOGGER_NAME).handlers
    assert [type(h) for h in handlers] == [logging.NullHandler]
