"""``bastion.strategy``: the API a strategy file sees, and what importing it costs."""

from __future__ import annotations

import json
import subprocess
import sys

import pluggy

from bastion import hookspecs, strategy


def test_hook_marker_is_the_one_pluggy_reads() -> None:
    """``@strategy.hook`` (bare or with ``specname``) marks exactly like pluggy's own
    ``HookimplMarker("bastion.strategy")``, so the kernel's manager validates the file."""
    reference = pluggy.HookimplMarker(strategy.PROJECT)

    def a(ctx, bar):  # type: ignore[no-untyped-def]
        pass

    def b(ctx, bar):  # type: ignore[no-untyped-def]
        pass

    def c(ctx):  # type: ignore[no-untyped-def]
        pass

    assert getattr(strategy.hook(a), strategy.MARKER) == getattr(reference(b), strategy.MARKER)
    strategy.hook(specname="on_start")(c)
    assert getattr(c, strategy.MARKER)["specname"] == "on_start"

    class Plugin:
        on_bar = staticmethod(a)
        renamed = staticmethod(c)

    manager = pluggy.PluginManager(strategy.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(Plugin)
    manager.check_pending()
    assert [i.function for i in manager.hook.on_bar.get_hookimpls()] == [a]
    assert [i.function for i in manager.hook.on_start.get_hookimpls()] == [c]


def test_what_a_strategy_imports_loads_neither_kernel_nor_pluggy_nor_crypto() -> None:
    """``import bastion.strategy`` and ``bastion.models`` (what a worker needs) pull in no
    kernel module, no pluggy and no cryptography; ``bastion``'s public names still
    resolve on first use."""
    code = (
        "import json, sys\n"
        "import bastion.strategy, bastion.models\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pluggy', 'cryptography', 'structlog', 'click', 'rich', 'sqlite_utils', 'matplotlib')"
        " or m in ('bastion._kernel', 'bastion._loader', 'bastion._engine', 'bastion.cli'))\n"
        "import bastion\n"
        "resolved = [bastion.Kernel.__name__, bastion.Gate.__name__,\n"
        "            type(bastion.hookimpl).__name__]\n"
        "print(json.dumps([heavy, resolved]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    heavy, resolved = json.loads(out)
    assert heavy == []
    assert resolved == ["Kernel", "Gate", "HookimplMarker"]


def test_unknown_attribute_of_bastion_is_an_attribute_error() -> None:
    """The lazy ``bastion`` module still says plainly when a name does not exist."""
    import bastion

    try:
        bastion.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
    assert set(bastion.__all__) <= set(dir(bastion))
