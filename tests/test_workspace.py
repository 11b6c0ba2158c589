"""The workspace: where strategies, signatures and per-environment data live."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bastion import Workspace
from bastion._environment import Environment


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_paths_are_under_home_and_per_environment(tmp_path: Path) -> None:
    """strategies/ and signatures/ are in home; data is in .bastion/<environment>/."""
    ws = Workspace(tmp_path, Environment.PAPER)
    assert ws.strategies == tmp_path.resolve() / "strategies"
    assert ws.signatures == tmp_path.resolve() / "signatures"
    assert ws.data_dir == tmp_path.resolve() / ".bastion" / "paper"
    assert ws.logs_dir == ws.data_dir / "logs"


def test_data_dir_is_created_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ensure_data_dir creates .bastion and .bastion/<env> mode 0700 whatever the umask: the
    store, logs and reports in them are nobody else's business."""
    monkeypatch.delenv("BASTION_DATA_DIR", raising=False)
    ws = Workspace(tmp_path)
    assert ws.ensure_data_dir() == ws.data_dir
    assert mode(tmp_path / ".bastion") == 0o700
    assert mode(ws.data_dir) == 0o700


def test_existing_data_dir_is_left_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data folder the user already made (with their own permissions) is not changed."""
    monkeypatch.delenv("BASTION_DATA_DIR", raising=False)
    ws = Workspace(tmp_path)
    ws.data_dir.mkdir(parents=True)
    ws.data_dir.chmod(0o750)
    ws.ensure_data_dir()
    assert mode(ws.data_dir) == 0o750


def test_data_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BASTION_DATA_DIR moves the data (still one folder per environment), created 0700."""
    monkeypatch.setenv("BASTION_DATA_DIR", str(tmp_path / "elsewhere" / "data"))
    ws = Workspace(tmp_path / "home", Environment.LIVE)
    assert ws.ensure_data_dir() == (tmp_path / "elsewhere" / "data" / "live").resolve()
    assert mode(tmp_path / "elsewhere") == 0o700
    assert mode(ws.data_dir) == 0o700
