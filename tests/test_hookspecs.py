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


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['project']}:{r['name']}" for r in ROWS])
def test_every_hook_is_typed(row: dict) -> None:  # type: ignore[type-arg]
    """Every argument and the return of every hookspec is annotated with a real type
    (no ``Any``), and the annotations resolve to the public model and interface types."""
    func = getattr(hookspecs, row["name"])
    signature = inspect.signature(func)
    for param in signature.parameters.values():
        assert param.annotation is not param.empty, f"{row['name']}({param.name}) is untyped"
        assert "Any" not in str(param.annotation), f"{row['name']}({param.name}): Any"
    assert signature.return_annotation is not signature.empty
    assert "Any" not in str(signature.return_annotation)
    import typing

    import bastion.hookspecs as module

    names = vars(module).copy()
    names.update(_type_names())
    typing.get_type_hints(func, globalns=names)  # every annotation resolves


def _type_names() -> dict[str, object]:
    from collections.abc import Callable as factory

    import click

    from bastion import Environment, Kernel, Refusal, StrategyInfo
    from bastion.interfaces import Broker, Offer, PluginContext, Source, Store
    from bastion.models import Bar, Fill, Order, OrderIntent
    from bastion.strategy import StrategyContext

    return {
        "click": click,
        "Environment": Environment,
        "Kernel": Kernel,
        "Refusal": Refusal,
        "StrategyInfo": StrategyInfo,
        "Broker": Broker,
        "Offer": Offer,
        "PluginContext": PluginContext,
        "Source": Source,
        "Store": Store,
        "Bar": Bar,
        "Fill": Fill,
        "Order": Order,
        "OrderIntent": OrderIntent,
        "StrategyContext": StrategyContext,
        "BrokerFactory": factory[[str, PluginContext], Broker],
        "SourceFactory": factory[[str, PluginContext], Source],
        "StoreFactory": factory[[str, PluginContext], Store],
    }
