"""``bastion new strategy`` and ``bastion new plugin``: templates that load, sign, install
and pass their own tests; refusals that write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from bastion import Kernel
from bastion._trust import STRATEGY_NAME_RE
from bastion.interfaces import PluginContext
from bastion.plugins import scaffold
from bastion.testing import run_strategy

from .conftest import CLI, WS, one_error_line


def test_the_name_rule_is_the_gates() -> None:
    """The command checks names with the verification gate's own rule (a copy: the
    rule is not public), so it never writes a file the gate would refuse by name."""
    assert scaffold.STRATEGY_NAME_RE.pattern == STRATEGY_NAME_RE.pattern


# --------------------------------------------------------------------------- new strategy


def test_a_new_strategy_loads_unsigned_then_signs_and_verifies(cli: CLI, ws: WS) -> None:
    """The template is admitted unsigned in development, backtests, and once signed
    passes 'bastion verify' (strict: no --allow-unsigned)."""
    r = cli("new", "strategy", "momentum", "--home", ws.home)
    assert r.exit_code == 0, r.output
    path = ws.strategies / "momentum.py"
    assert r.stdout.splitlines()[0] == f"wrote {path}"
    assert "bastion sign momentum.py --key KEY" in r.stdout
    listed = cli("strategies", "--allow-unsigned", "--json", "--home", ws.home)
    assert [(s["file"], s["status"]) for s in json.loads(listed.stdout)] == [
        ("momentum.py", "loaded-unsigned")
    ]
    backtest = cli(
        "backtest", "momentum", "--allow-unsigned", "--no-report", "--json", "--home", ws.home
    )
    assert backtest.exit_code == 0, backtest.output
    (summary,) = json.loads(backtest.stdout)["strategies"]
    assert summary["quarantined"] is None
    assert summary["orders"] > 0
    signed = cli("sign", "momentum.py", "--key", ws.key().path, "--home", ws.home)
    assert signed.exit_code == 0, signed.output
    verified = cli("verify", "momentum", "--home", ws.home)
    assert verified.exit_code == 0, verified.output
    assert "momentum.py: ok" in verified.stdout


def test_the_template_trades_every_hook_in_a_sandbox(cli: CLI, ws: WS) -> None:
    """Run through bastion.testing over two symbols, the template's hooks all work:
    it buys and sells, logs its fills, and logs once more at the end."""
    cli("new", "strategy", "template", "--home", ws.home)
    source = Kernel(entry_points=False).open_source(
        "synthetic:150,symbols=2", PluginContext("development", ws.home)
    )
    result = run_strategy(ws.strategies / "template.py", source.bars(), params={"lookback": 5})
    assert result.quarantined is None and result.sandbox == "sandboxed"
    assert {o.side for o in result.orders} == {"buy", "sell"}
    assert {o.symbol for o in result.orders} == {"SYN0", "SYN1"}
    events = [r["event"] for r in result.logs]
    assert events.count("filled") == len(result.fills) > 0
    assert events[-1] == "stopped"


def test_home_comes_from_the_option_the_variable_or_the_current_folder(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file goes into the workspace's strategies/ (created if missing): --home, else
    BASTION_HOME, else the current folder."""
    for folder in ("opt", "var", "cwd"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert cli("new", "strategy", "a", "--home", tmp_path / "opt").exit_code == 0
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "var"))
    assert cli("new", "strategy", "b").exit_code == 0
    monkeypatch.delenv("BASTION_HOME")
    assert cli("new", "strategy", "c.py").exit_code == 0
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.py"))
    assert found == ["cwd/strategies/c.py", "opt/strategies/a.py", "var/strategies/b.py"]


@pytest.mark.parametrize("name", ["9lives", "__init__", "my-strategy", "a/b", "x" * 101, "é"])
def test_an_invalid_strategy_name_is_refused(cli: CLI, ws: WS, name: str) -> None:
    """A name the gate would refuse is one line naming it and the rule, exit 2, and
    nothing is written."""
    r = cli("new", "strategy", name, "--home", ws.home)
    assert r.exit_code == 2
    one_error_line(r.stderr, repr(name), "is not a strategy name", "plain identifier")
    assert list(ws.strategies.iterdir()) == []


def test_an_existing_file_is_never_overwritten(cli: CLI, ws: WS) -> None:
    """A file (or a link) of that name is left as it is: one line naming it and what to
    do, exit 2."""
    ws.write("mine.py", "# my work\n")
    (ws.strategies / "link.py").symlink_to(ws.home / "nowhere.py")
    for name, path in (("mine", "mine.py"), ("link.py", "link.py")):
        r = cli("new", "strategy", name, "--home", ws.home)
        assert r.exit_code == 2
        one_error_line(r.stderr, str(ws.strategies / path), "already exists", "choose another")
    assert (ws.strategies / "mine.py").read_text() == "# my work\n"
    assert not (ws.home / "nowhere.py").exists()


# --------------------------------------------------------------------------- new plugin


def test_a_new_plugin_package_has_its_parts(cli: CLI, tmp_path: Path) -> None:
    """The package: pyproject.toml with the ``bastion`` entry point naming the module,
    a README, the hooks, a source, and tests wired to bastion.testing."""
    r = cli("new", "plugin", "acme-risk", "--dir", tmp_path / "pkg")
    assert r.exit_code == 0, r.output
    package = tmp_path / "pkg"
    files = sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file())
    assert files == sorted(scaffold.plugin_files("acme-risk"))
    project = tomllib.loads((package / "pyproject.toml").read_text())
    assert project["project"]["name"] == "acme-risk"
    assert project["project"]["entry-points"]["bastion"] == {"acme_risk": "acme_risk.plugin"}
    plugin = (package / "src" / "acme_risk" / "plugin.py").read_text()
    assert "def check_order(" in plugin and "BASTION_API = 1" in plugin
    assert "SourceConformance" in (package / "tests" / "test_source.py").read_text()
    assert "bastion_run" in (package / "tests" / "test_plugin.py").read_text()
    for path in package.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")


def test_the_package_folder_defaults_to_the_name(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --dir the package is ./NAME; an existing empty folder may be used."""
    monkeypatch.chdir(tmp_path)
    assert cli("new", "plugin", "risky").exit_code == 0
    assert (tmp_path / "risky" / "src" / "risky" / "plugin.py").is_file()
    (tmp_path / "empty").mkdir()
    assert cli("new", "plugin", "other", "--dir", "empty").exit_code == 0
    assert (tmp_path / "empty" / "pyproject.toml").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["Acme"], "is not a plugin name"),
        (["acme--risk"], "is not a plugin name"),
        (["class"], "is not a plugin name"),
        (["bastion"], "is not a plugin name"),
        (["taken"], "already exists and is not empty"),
        (["ok", "--dir", "file.txt"], "is a file"),
        (["ok", "--dir", "missing/ok"], "does not exist"),
    ],
)
def test_a_plugin_that_cannot_be_written_writes_nothing(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str
) -> None:
    """A bad name, a non-empty folder, a file or a missing parent is one line saying
    so, exit 2, and the folder is left exactly as it was."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    (tmp_path / "file.txt").write_text("mine")
    before = sorted(tmp_path.rglob("*"))
    r = cli("new", "plugin", *args)
    assert r.exit_code == 2
    one_error_line(r.stderr, needle)
    assert sorted(tmp_path.rglob("*")) == before


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_a_scaffolded_plugin_installs_passes_its_own_tests_and_uninstalls(
    cli: CLI, tmp_path: Path
) -> None:
    """Installed with pip into a throw-away virtual environment (which sees this one's
    packages), the package is a Bastion plugin with its version, and its own tests
    (the risk check in a sandboxed backtest, the source conformance suite) pass under
    pytest; uninstalled, it is gone."""
    package = tmp_path / "acme-risk"
    assert cli("new", "plugin", "acme-risk", "--dir", package).exit_code == 0
    venv = tmp_path / "venv"
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(
        _run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).stdout.strip()
    )
    # This environment's packages (Bastion, pytest, pip) are visible from the new one,
    # which installs into its own site-packages.
    ours = sysconfig.get_paths()["purelib"]
    (site / "_bastion_test_parent.pth").write_text(f"import site; site.addsitedir({ours!r})\n")

    installed = _run(python, "-m", "pip", "install", "--quiet", "--no-deps", package)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    plugins = _run(python, "-m", "bastion", "plugins", "--json", "--no-strategies", cwd=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    (row,) = [p for p in json.loads(plugins.stdout) if p["name"] == "acme_risk"]
    assert (row["origin"], row["version"]) == ("entry point", "0.1.0")
    assert {"check_order", "register_sources"} <= set(row["hooks"])

    tests = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=package)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    last = tests.stdout.strip().splitlines()[-1]
    assert last.startswith("14 passed"), tests.stdout

    removed = _run(python, "-m", "pip", "uninstall", "--yes", "acme-risk")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    after = _run(python, "-m", "bastion", "plugins", "--json", "--no-strategies", cwd=tmp_path)
    assert "acme_risk" not in [p["name"] for p in json.loads(after.stdout)]
    assert not list(site.glob("acme_risk*"))
    assert os.listdir(package / "src" / "acme_risk")  # the sources are left alone
