"""The installed entry point, run as a real process (as a user runs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # cwd is a temp folder, never the repository: 'python -m' puts cwd on sys.path.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_verify_examples_as_a_process(tmp_path: Path) -> None:
    """'bastion verify' in a copy of the repository's examples exits 0."""
    shutil.copytree(REPO / "strategies", tmp_path / "strategies")
    shutil.copytree(REPO / "signatures", tmp_path / "signatures")
    done = run("verify", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sma_cross.py: ok" in done.stdout
    assert not list(tmp_path.rglob("__pycache__"))


def test_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    done = run("verify", "--home", str(tmp_path / "missing"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("bastion: error: --home")


def test_broken_plugin_at_startup_is_one_line(tmp_path: Path) -> None:
    """A third-party plugin that fails to import stops the kernel with a one-line reason."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "bad_plugin.py").write_text("raise RuntimeError('needs libfoo')\n")
    info = site / "bastion_bad-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bastion-bad\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bastion]\nbad = bad_plugin\n")
    done = run("plugins", cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "'bad'" in done.stderr and "needs libfoo" in done.stderr
    done = run(
        "plugins",
        "--json",
        "--no-strategies",
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "BASTION_DISABLE_PLUGINS": "bad"},
    )
    assert done.returncode == 0, done.stderr
    # The same through the workspace's bastion.toml, found through --home.
    home = tmp_path / "ws"
    home.mkdir()
    (home / "bastion.toml").write_text('[plugins]\ndisable = ["bad"]\n')
    done = run("plugins", "--home", str(home), cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    assert "'bad'" not in done.stdout


def test_bad_plugins_table_is_one_line(tmp_path: Path) -> None:
    """A malformed ``[plugins] disable`` names the file and the key, exit 2, no traceback."""
    (tmp_path / "bastion.toml").write_text('[plugins]\ndisable = "bad"\n')
    done = run("plugins", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0
    assert "bastion.toml: plugins.disable must be a list" in done.stderr
