"""docs/examples/bastion-market-hours, the example third-party plugin of docs/extend/,
installed with pip into a throw-away virtual environment: Bastion finds it, runs its
risk check and its source in a backtest, its own tests pass, it can be disabled, and
uninstalled it is gone.

One environment is shared by the tests of this module (installing is the slow part);
the uninstall test comes last and leaves it without the plugin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

import attrs
import pytest

from .conftest import REPO

PACKAGE = REPO / "docs" / "examples" / "bastion-market-hours"


@attrs.frozen
class Venv:
    """A virtual environment holding the installed example, a copy of its sources and
    a workspace with the repository's signed example strategies."""

    root: Path
    python: Path
    site: Path
    package: Path
    home: Path

    def run(
        self, *args: str | Path, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MARKET_HOURS_")}
        environment.update(env or {})
        return subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            cwd=cwd or self.root,
            env=environment,
            timeout=300,
        )

    def bastion(self, *args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-m", "bastion", *args, **kwargs)  # type: ignore[arg-type]

    def plugins(self, **kwargs: object) -> list[dict[str, object]]:
        listed = self.bastion("plugins", "--json", "--no-strategies", **kwargs)
        assert listed.returncode == 0, listed.stderr
        rows: list[dict[str, object]] = json.loads(listed.stdout)
        return rows


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("example-plugin")
    # A copy: building in place would leave build/ and *.egg-info in docs/examples.
    package = root / "bastion-market-hours"
    shutil.copytree(
        PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    home = root / "workspace"
    for folder in ("strategies", "signatures"):
        shutil.copytree(REPO / folder, home / folder)
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root / "venv")],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    python = root / "venv" / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # This environment's packages (Bastion, pytest, pip, setuptools) are visible from the
    # new one, which installs into its own site-packages; no network is needed.
    ours = sysconfig.get_paths()["purelib"]
    (site / "_bastion_test_parent.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    env = Venv(root, python, site, package, home)
    installed = env.run(python, "-m", "pip", "install", "--quiet", "--no-deps", package)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return env


def test_bastion_plugins_lists_the_installed_package(venv: Venv) -> None:
    """'bastion plugins --json' shows the entry point market_hours with its distribution,
    module, version 0.1.0 and exactly the two hooks it implements."""
    (row,) = [p for p in venv.plugins() if p["name"] == "market_hours"]
    assert row == {
        "name": "market_hours",
        "origin": "entry point",
        "source": "bastion-market-hours (bastion_market_hours)",
        "version": "0.1.0",
        "hooks": ["check_order", "register_sources"],
    }


def test_a_backtest_on_its_source_records_its_vetoes(venv: Venv) -> None:
    """A backtest of a signed example strategy over '--source hours:...' runs on the
    plugin's bars, and the plugin's risk check judges each order by its bar's time and
    values its market orders at the last close: the orders answering a day's last bar
    (16:00 New York, the close) are vetoed as made while the market is closed, and with
    the notional limit lowered the rest are vetoed as over it.  The stored rejections
    carry its reasons, in the summary and in 'bastion report --json'."""
    closed = "market_hours: the market is closed at "
    free = venv.bastion(
        "backtest", "sma_cross", "--source", "hours:AAA,BBB,days=15", "--home", venv.home,
        "--json", "--no-report",
    )  # fmt: skip
    assert free.returncode == 0, free.stdout + free.stderr
    (traded,) = json.loads(free.stdout)["strategies"]
    assert traded["fills"] > 0 and 0 < traded["rejected"] < traded["orders"]
    assert traded["last_rejection"].startswith(closed)
    assert " 16:00 EST (open 09:30-16:00 America/New_York" in traded["last_rejection"]

    ran = venv.bastion(
        "backtest", "sma_cross", "--source", "hours:AAA,BBB,days=15", "--home", venv.home,
        "--json", "--no-report",
        env={"MARKET_HOURS_MAX_NOTIONAL": "10000"},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    summary = json.loads(ran.stdout)
    (strategy,) = summary["strategies"]
    assert strategy["fills"] == 0 and strategy["rejected"] == strategy["orders"] > 0
    assert strategy["last_rejection"].startswith("market_hours: ")
    report = venv.bastion("report", summary["run_id"], "--json", "--home", venv.home)
    assert report.returncode == 0, report.stdout + report.stderr
    (stored,) = json.loads(report.stdout)["strategies"]
    assert stored["rejected"] == strategy["rejected"]
    reasons = [r["reason"] for r in stored["rejected_orders"]]
    assert len(reasons) == strategy["rejected"]
    over = [r for r in reasons if not r.startswith(closed)]
    assert over and len(over) < len(reasons)  # both kinds of veto
    assert all(
        r.startswith("market_hours: notional ")
        and " at the last price " in r  # sma_cross sends market orders
        and r.endswith(" is over the limit of 10,000.00")
        for r in over
    )


def test_the_packages_own_tests_pass(venv: Venv) -> None:
    """The package's tests (bastion.testing's SourceConformance and bastion_run, the
    risk check alone, through the kernel and in backtests) pass under pytest in that
    environment."""
    tests = venv.run(venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=venv.package)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    last = tests.stdout.strip().splitlines()[-1]
    assert last.startswith("50 passed"), tests.stdout  # none skipped, none left uncollected


def test_bastion_disable_plugins_hides_it(venv: Venv) -> None:
    """BASTION_DISABLE_PLUGINS=market_hours leaves it unloaded: not listed, and its
    source is unknown (the error names the sources there are)."""
    off = {"BASTION_DISABLE_PLUGINS": "market_hours"}
    assert "market_hours" not in [p["name"] for p in venv.plugins(env=off)]
    ran = venv.bastion(
        "backtest", "sma_cross", "--source", "hours:AAA", "--home", venv.home, env=off
    )
    assert ran.returncode == 2
    assert "unknown source 'hours'" in ran.stderr


def test_uninstalled_it_is_gone(venv: Venv) -> None:
    """'pip uninstall -y bastion-market-hours' removes it (last: the environment is
    left without it) and 'bastion plugins' no longer lists it."""
    removed = venv.run(venv.python, "-m", "pip", "uninstall", "-y", "bastion-market-hours")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "market_hours" not in [p["name"] for p in venv.plugins()]
    assert not list(venv.site.glob("bastion_market_hours*"))
