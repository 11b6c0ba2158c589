"""Plugin discovery: built-ins, third-party entry points, strategies, and their errors."""

from __future__ import annotations

import importlib
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

import bastion
from bastion import BUILTIN_PLUGINS, ConfigError, Kernel, PluginError
from bastion.interfaces import PluginContext

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

        class Acme:
            margin = None

            def __init__(self, spec):
                self.spec = spec

        @hookimpl
        def register_brokers():
            return {"acme": lambda spec, context: Acme(spec)}

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
    context = PluginContext("development", REPO)
    assert kernel.open_broker("acme:x=1", context).spec == "x=1"  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    assert kernel.check_order("bad", None, "development", now) == "acme says no"  # type: ignore[arg-type]
    assert kernel.check_order("ok", None, "development", now) is None  # type: ignore[arg-type]


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
    veto = Kernel().check_order("x", None, "paper", datetime.now(UTC))  # type: ignore[arg-type]
    assert veto is not None and "ZeroDivisionError" in veto
    assert "'bastion-crash'" in veto


def test_raising_observer_is_reported_and_the_rest_still_run(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin that raises in an observer hook is named (plugin and hook) once on stderr
    and in ``kernel.failures``; the kernel and the other plugins' hooks carry on."""
    _install_dist(
        site,
        "bastion-boom",
        "boom_plugin",
        """
        from bastion import hookimpl

        @hookimpl
        def order_event(order, status):
            raise RuntimeError("observer bug")
    """,
    )
    _install_dist(
        site,
        "bastion-calm",
        "calm_plugin",
        """
        from bastion import hookimpl
        SEEN = []

        @hookimpl
        def order_event(order, status, reason):
            SEEN.append((order, status, reason))
    """,
    )
    kernel = Kernel()
    notify = kernel.notifier("order_event")
    assert notify is not None
    notify(order="o1", status="submitted", reason=None)
    notify(order="o2", status="filled", reason=None)
    assert importlib.import_module("calm_plugin").SEEN == [
        ("o1", "submitted", None),
        ("o2", "filled", None),
    ]
    err = capsys.readouterr().err
    assert err.count("plugin 'bastion-boom' failed in hook order_event") == 1
    assert "RuntimeError: observer bug" in err and "BASTION_DISABLE_PLUGINS=bastion-boom" in err
    assert [(f.plugin, f.hook) for f in kernel.failures] == [("bastion-boom", "order_event")] * 2


def test_raising_registration_leaves_out_only_that_plugin(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``register_brokers`` raising, or returning something other than offers, is reported;
    every other broker is still offered."""
    _install_dist(
        site,
        "bastion-badreg",
        "badreg_plugin",
        """
        from bastion import hookimpl

        @hookimpl
        def register_brokers():
            raise OSError("cannot reach the licence server")

        @hookimpl
        def register_sources():
            return ["not an offer"]
    """,
    )
    kernel = Kernel()
    assert "sim" in kernel.brokers()
    assert "csv" in kernel.sources()
    err = capsys.readouterr().err
    assert "plugin 'bastion-badreg' failed in hook register_brokers" in err
    assert "plugin 'bastion-badreg' failed in hook register_sources" in err
    assert "not bastion.interfaces.Offer" in err


def test_offer_limited_to_environments(site: Path) -> None:
    """An offer naming its environments is refused elsewhere with a one-line error."""
    _install_dist(
        site,
        "bastion-livebroker",
        "livebroker_plugin",
        """
        from bastion import hookimpl
        from bastion.interfaces import Offer

        @hookimpl
        def register_brokers():
            return [Offer("prime", lambda spec, context: Prime(spec, context.environment),
                          description="a prime broker", environments={"paper", "live"})]

        class Prime:
            margin = None

            def __init__(self, spec, environment):
                self.made = ("prime", spec, environment)
    """,
    )
    kernel = Kernel()
    offer = kernel.brokers()["prime"]
    assert offer.description == "a prime broker" and offer.environments == {"paper", "live"}
    made = kernel.open_broker("prime:fast", PluginContext("paper", REPO))
    assert made.made == ("prime", "fast", "paper")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="'prime' is not offered in the development environment"):
        kernel.open_broker("prime", PluginContext("development", REPO))
    with pytest.raises(ConfigError, match="unknown broker 'nope'; available: ibkr, prime, sim"):
        kernel.open_broker("nope", PluginContext("paper", REPO))


def test_a_broker_without_a_margin_policy_attribute_is_refused(site: Path) -> None:
    """A broker written for the old protocol (``maintenance_margin``/``margin_call()``,
    no ``margin``) is refused at open in one line naming it and what to set, and closed,
    rather than running without margin calls."""
    _install_dist(
        site,
        "bastion-oldbroker",
        "oldbroker_plugin",
        """
        from bastion import hookimpl
        from bastion.interfaces import Offer

        CLOSED = []

        class Old:
            maintenance_margin = 0.25

            def margin_call(self, strategy, account, ts):
                return []

            def close(self):
                CLOSED.append(True)

        @hookimpl
        def register_brokers():
            return [Offer("old", lambda spec, context: Old(), description="old protocol")]
    """,
    )
    with pytest.raises(ConfigError, match="broker 'old' has no 'margin' attribute") as err:
        Kernel().open_broker("old", PluginContext("development", REPO))
    assert "\n" not in str(err.value)
    import oldbroker_plugin  # type: ignore[import-not-found]

    assert oldbroker_plugin.CLOSED == [True]


def test_disabled_by_config(site: Path) -> None:
    """``Kernel(disable=...)`` (bastion.toml's ``[plugins] disable``) blocks a plugin that
    would otherwise fail to import."""
    _install_dist(site, "bastion-broken", "broken_plugin3", "raise ImportError('x')\n")
    with pytest.raises(PluginError):
        Kernel()
    assert "bastion-broken" not in {p.name for p in Kernel(disable=["bastion-broken"]).plugins()}


def test_plugin_for_another_api_major_is_refused(site: Path) -> None:
    """A plugin declaring ``BASTION_API`` of another major version is refused at load,
    naming both versions; one declaring this major loads."""
    _install_dist(site, "bastion-old", "old_plugin", "BASTION_API = 0\n")
    with pytest.raises(PluginError, match=r"'bastion-old'.*API 0, this Bastion offers 1\."):
        Kernel()


def test_plugin_for_this_api_major_loads(site: Path) -> None:
    _install_dist(site, "bastion-new", "new_plugin", f"BASTION_API = {bastion.API_VERSION!r}\n")
    assert "bastion-new" in {p.name for p in Kernel().plugins()}


def test_hook_wrappers_are_refused_on_kernel_hooks(site: Path) -> None:
    """A wrapper on an isolated hook could swallow other plugins' calls: refused at load."""
    _install_dist(
        site,
        "bastion-wrap",
        "wrap_plugin",
        """
        from bastion import hookimpl

        @hookimpl(wrapper=True)
        def check_order(intent):
            return (yield)
    """,
    )
    with pytest.raises(PluginError, match=r"'bastion-wrap'.*check_order as a hook wrapper"):
        Kernel()


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


def test_register_is_public_and_checks_like_discovery() -> None:
    """Kernel.register adds a plugin with the checks an installed one gets: it is listed
    as 'registered', a hook with a wrong argument is refused with pluggy's reason and
    leaves nothing registered, and a taken name is refused."""
    import types

    from bastion import hookimpl

    kernel = Kernel(entry_points=False)
    good = types.SimpleNamespace()

    @hookimpl
    def startup() -> None:
        return None

    good.startup = startup
    kernel.register(good, "extra", source="tests", version="0.1")
    [row] = [p for p in kernel.plugins() if p.name == "extra"]
    assert (row.origin, row.source, row.version) == ("registered", "tests", "0.1")
    with pytest.raises(PluginError, match="name 'extra'"):
        kernel.register(types.SimpleNamespace(), "extra")

    bad = types.SimpleNamespace()

    @hookimpl
    def check_order(intent: object, nonsense: object) -> None:
        return None

    bad.check_order = check_order
    with pytest.raises(PluginError, match=r"plugin 'bad'.*nonsense"):
        kernel.register(bad, "bad")
    assert kernel.pm.get_plugin("bad") is None
