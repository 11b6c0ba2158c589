"""Every hook is documented, and the reference page is generated from those docstrings."""

from __future__ import annotations

import inspect

import pytest

from bastion import hookspecs
from bastion._reference import hook_markdown, hook_reference

from .conftest import REPO

ROWS = hook_reference()


def test_module_holds_only_specs() -> None:
    """hookspecs.py holds specifications only: every function in it is a hook spec."""
    for name, func in inspect.getmembers(hookspecs, inspect.isfunction):
        if func.__module__ != hookspecs.__name__:
            continue
        assert hasattr(func, "bastion_spec") or hasattr(func, "bastion.strategy_spec"), name


def test_both_projects_have_hooks() -> None:
    projects = {row["project"] for row in ROWS}
    assert projects == {"bastion", "bastion.strategy"}
    strategy_hooks = {r["name"] for r in ROWS if r["project"] == "bastion.strategy"}
    assert {"on_start", "on_bar", "on_fill", "on_stop"} <= strategy_hooks


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['project']}:{r['name']}" for r in ROWS])
def test_every_hook_is_documented(row: dict) -> None:  # type: ignore[type-arg]
    """Each docstring says when the hook is called, what it returns, and every argument."""
    doc = row["doc"]
    assert doc, f"{row['name']} has no docstring"
    assert "Called" in doc, f"{row['name']}: say when it is called"
    assert "Return" in doc or "return" in doc, f"{row['name']}: say what it returns"
    for argument in row["arguments"]:
        assert f":param {argument}:" in doc, f"{row['name']}: document argument {argument!r}"
    if row["firstresult"]:
        assert "firstresult" in doc, f"{row['name']}: say that the first result wins"


def test_reference_page_is_current() -> None:
    """docs/reference/hooks.md is exactly what 'bastion hooks --markdown' generates."""
    page = (REPO / "docs" / "reference" / "hooks.md").read_text()
    assert page == hook_markdown(ROWS), (
        "docs/reference/hooks.md is stale: run "
        "'.venv/bin/bastion hooks --markdown > docs/reference/hooks.md'"
    )
