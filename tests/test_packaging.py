"""Bastion builds as a clean distribution: no packaging warnings, and the bundled data ships."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import REPO


def test_wheel_builds_without_warnings_and_ships_the_sample_data(tmp_path: Path) -> None:
    """`pip wheel .` warns about nothing, and the wheel holds the sample CSVs and py.typed.

    A folder setuptools sees as importable but is not listed as a package (as
    plugins/sample_data once was) makes every install print ~40 lines of warnings, and
    its files may silently be left out of the wheel.
    """
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path), "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    output = build.stdout + build.stderr
    for noise in ("Warning", "!!", "is absent from the `packages`"):
        assert noise not in output, output
    (wheel,) = tmp_path.glob("bastion_kernel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for symbol in ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO"):
        assert f"bastion/plugins/sample_data/{symbol}.csv" in names
    assert "bastion/plugins/sample_data/README.md" in names
    assert "bastion/py.typed" in names
    assert not any(n.startswith(("strategies/", "signatures/", "tests/")) for n in names)
