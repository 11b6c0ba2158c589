"""The public plugin API: what it lists exists, is documented, and is all a built-in uses."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import bastion
from bastion._reference import PUBLIC_MODULES, api_markdown, api_reference

from .conftest import REPO

# Built-in plugins, and the example third-party package, may use only the public API.
PLUGIN_FILES = sorted((REPO / "plugins").rglob("*.py")) + sorted(
    (REPO / "docs" / "examples").rglob("*.py")
)


def _imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """``(line, module, names)`` for each import of a ``bastion`` module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bastion":
                    found.append((node.lineno, alias.name, ()))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "bastion"
        ):
            found.append((node.lineno, node.module, tuple(a.name for a in node.names)))
    return found


def _is_plugin_module(module: str) -> bool:
    return module == "bastion.plugins" or module.startswith("bastion.plugins.")


def test_walker_sees_private_imports(tmp_path: Path) -> None:
    """The check below would catch each way of reaching a private module or name."""
    sample = tmp_path / "p.py"
    sample.write_text(
        "import bastion._kernel\nfrom bastion._trust import x\nfrom bastion import _keys\n"
        "from bastion.cli import build_cli\n"
        "def f():\n    from bastion._logging import get_logger\n"
    )
    problems = [p for line, module, names in _imports(sample) for p in _problems(module, names)]
    assert len(problems) == 5, problems


def _problems(module: str, names: tuple[str, ...]) -> list[str]:
    if _is_plugin_module(module):
        return []  # one built-in plugin using another (reports) is a plugin's public API
    if module not in PUBLIC_MODULES:
        return [f"imports {module}, which is not a public module"]
    listed = set(getattr(importlib.import_module(module), "__all__", ()))
    out = []
    for name in names:
        if f"{module}.{name}" in PUBLIC_MODULES or _is_plugin_module(f"{module}.{name}"):
            continue
        if name not in listed:
            out.append(f"imports {name} from {module}, which its __all__ does not list")
    return out


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_use_only_the_public_api(path: Path) -> None:
    """No built-in plugin imports a ``bastion._*`` module or an unlisted name: an outside
    package could not rely on it, so neither may the built-ins."""
    problems = [
        f"{path.relative_to(REPO)}:{line}: {problem}"
        for line, module, names in _imports(path)
        for problem in _problems(module, names)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_modules_list_what_they_offer(module_name: str) -> None:
    """Each public module has a docstring and an ``__all__`` whose every name exists and
    (except constants) carries a docstring."""
    module = importlib.import_module(module_name)
    assert (module.__doc__ or "").strip(), f"{module_name} has no docstring"
    listed = getattr(module, "__all__", None)
    assert listed, f"{module_name} has no __all__"
    for name in listed:
        obj = getattr(module, name)
        if callable(obj) and not isinstance(obj, type(bastion.hookimpl)):
            assert (getattr(obj, "__doc__", None) or "").strip(), f"{module_name}.{name}: no doc"


def test_api_reference_page_is_current() -> None:
    """docs/reference/api.md is exactly what ``bastion api --markdown`` generates."""
    page = (REPO / "docs" / "reference" / "api.md").read_text()
    assert page == api_markdown(api_reference()), (
        "docs/reference/api.md is stale: run "
        "'.venv/bin/bastion api --markdown > docs/reference/api.md'"
    )


def test_api_version_is_major_minor() -> None:
    """``bastion.API_VERSION`` is ``MAJOR.MINOR`` (what a plugin's ``BASTION_API`` names)."""
    major, minor = bastion.API_VERSION.split(".")
    assert major.isdigit() and minor.isdigit()
