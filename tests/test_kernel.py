"""Plugin discovery: built-ins, third-party entry points, strategies, and their errors."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

import bastion
from bastion import BUILTIN_PLUGINS, Kernel, PluginError

from .conftest import REPO, WS


def _install_dist(
    root: Path, dist: str, module: str, source: str, entry: str | None = None
) -> None:
    """A minimal installed distribution on sys.path: a module plus its dist-info."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[bastion]\n{entry or dist} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return root


def test_builtins_register_through_hooks() -> None:
    """Every built-in is registered like a third-party plugin and implements real hooks."""
    kernel = Kernel(entry_points=False)
    rows = {p.name: p for p in kernel.plugins()}
    for name in BUILTIN_PLUGINS:
        assert rows[name].origin == "built-in"
        assert rows[name].hooks
    assert "register_commands" in rows["bastion.plugins.signing"].hooks


def test_third_party_entry_point_is_discovered(site: Path) -> None:
    """A package exposing the 'bastion' entry-point group is found and its hooks called."""
    _install_dist(
        site,
        "bastion-acme",
        "acme_plugin",
        """
        from bastion import hookimpl

        @hookimpl
        def register_brokers():
            return {"acme": lambda **kw: "acme-broker"}

        @hookimpl
        def check_order(intent):
            return "acme says no" if intent == "bad" else None
    """,
    )
    kernel = Kernel()
    rows = {p.name: p for p in kernel.plugins()}
    assert rows["bastion-acme"].origin == "entry point"
    assert "bastion-acme" in rows["bastion-acme"].source
    assert rows["bastion-acme"].version == "1.2.3"
    assert rows["bastion-acme"].hooks == ("check_order", "register_brokers")
    assert kernel.brokers()["acme"]() == "acme-broker"
    assert kernel.check_order("bad", None, "development") == "acme says no"  # type: ignore[arg-type]
    assert kernel.check_order("ok", None, "development") is None  # type: ignore[arg-type]


def test_plugin_with_unknown_hook_is_a_clear_error(site: Path) -> None:
    """A misspelt hook in a plugin names the plugin, its origin, and what to check."""
    _install_dist(
        site,
        "bastion-typo",
        "typo_plugin",
        """
        from bastion import hookimpl

        @hookimpl
        def register_broker():
            return {}
    """,
    )
    with pytest.raises(PluginError) as info:
        Kernel()
    message = str(info.value)
    assert "bastion-typo" in message and "register_broker" in message and "hooks.md" in message


def test_plugin_with_wrong_arguments(site: Path) -> None:
    _install_dist(
        site,
        "bastion-args",
        "args_plugin",
        """
        from bastion import hookimpl

        @hookimpl
        def check_order(intent, portfolio):
            return None
    """,
    )
    with pytest.raises(PluginError, match="portfolio"):
        Kernel()


def test_plugin_that_fails_to_import(site: Path) -> None:
    _install_dist(site, "bastion-broken", "broken_plugin", "raise ImportError('no libfoo')\n")
    with pytest.raises(PluginError, match=r"failed to import.*no libfoo.*BASTION_DISABLE_PLUGINS"):
        Kernel()


def test_plugin_can_be_disabled(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_dist(site, "bastion-broken", "broken_plugin2", "raise ImportError('x')\n")
    monkeypatch.setenv("BASTION_DISABLE_PLUGINS", "bastion-broken")
    assert "bastion-broken" not in {p.name for p in Kernel().plugins()}


def test_duplicate_broker_names_are_an_error(site: Path) -> None:
    for n in (1, 2):
        _install_dist(
            site,
            f"bastion-dup{n}",
            f"dup{n}_plugin",
            """
            from bastion import hookimpl

            @hookimpl
            def register_brokers():
                return {"same": object}
        """,
        )
    with pytest.raises(
        PluginError, match="'bastion-dup1' and 'bastion-dup2' both offer a broker named 'same'"
    ):
        Kernel().brokers()


def test_crashing_risk_check_vetoes(site: Path) -> None:
    """A risk plugin that raises does not let the order through."""
    _install_dist(
        site,
        "bastion-crash",
        "crash_plugin",
        """
        from bastion import hookimpl

        @hookimpl
        def check_order(intent):
            raise ZeroDivisionError("oops")
    """,
    )
    veto = Kernel().check_order("x", None, "paper")  # type: ignore[arg-type]
    assert veto is not None and "ZeroDivisionError" in veto


def test_strategies_listed_as_plugins(signed_ws: WS) -> None:
    kernel = Kernel(entry_points=False)
    outcome = signed_ws.admit("good.py")
    kernel.strategy_loaded(outcome)  # type: ignore[arg-type]
    rows = {p.name: p for p in kernel.plugins()}
    assert rows["strategy:good.py"].origin == "strategy file"
    assert rows["strategy:good.py"].hooks == ("on_bar",)


def test_no_second_copy_of_the_package(signed_ws: WS) -> None:
    """After every plugin and a strategy are loaded, nothing was imported as core/plugins.

    The folders are mapped to bastion / bastion.plugins; importing them by folder
    name would create a second copy of every module (two markers, two managers).
    """
    kernel = Kernel()
    kernel.strategy_loaded(signed_ws.admit("good.py"))  # type: ignore[arg-type]
    bad = [
        m for m in sys.modules if m in ("core", "plugins") or m.startswith(("core.", "plugins."))
    ]
    assert bad == []
    assert Path(bastion.__file__).parent == REPO / "core"
    assert Path(importlib.import_module("bastion.plugins").__file__).parent == REPO / "plugins"
