"""The reference pages that are generated, not written: hooks (from the hookspec
docstrings) and the public API (from each public module's ``__all__`` and docstrings).

A test fails when docs/reference/hooks.md or docs/reference/api.md differs from
what these functions produce, so the reference cannot drift from the code.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from . import hookspecs

__all__ = ["PUBLIC_MODULES", "api_markdown", "api_reference", "hook_markdown", "hook_reference"]

#: Every module a plugin may import from.  Anything else under ``bastion`` (the
#: ``bastion._*`` modules, and names a public module does not list in ``__all__``)
#: may change in any release.
PUBLIC_MODULES: tuple[str, ...] = (
    "bastion",
    "bastion.hookspecs",
    "bastion.interfaces",
    "bastion.models",
    "bastion.strategy",
    "bastion.audit",
    "bastion.bars",
    "bastion.cli",
    "bastion.files",
    "bastion.log",
    "bastion.metrics",
    "bastion.runs",
    "bastion.storage",
    "bastion.trust",
    "bastion.testing",
)


def hook_reference() -> list[dict[str, Any]]:
    """Each hook in :mod:`bastion.hookspecs` with its project, arguments and docstring."""
    import inspect

    rows = []
    for name, func in inspect.getmembers(hookspecs, inspect.isfunction):
        for project in ("bastion", "bastion.strategy"):
            opts = getattr(func, f"{project}_spec", None)
            if opts is None:
                continue
            doc = inspect.getdoc(func) or ""
            rows.append(
                {
                    "project": project,
                    "name": name,
                    "arguments": list(inspect.signature(func).parameters),
                    "signature": _typed_signature(name, func),
                    "firstresult": bool(opts.get("firstresult")),
                    "summary": doc.splitlines()[0] if doc else "",
                    "doc": doc,
                    "line": inspect.getsourcelines(func)[1],
                }
            )
    return sorted(rows, key=lambda r: (r["project"] != "bastion", r["line"]))


_PROJECT_INTRO = {
    "bastion": (
        "Kernel hooks (project `bastion`)",
        "Implemented by built-in plugins and by packages in the `bastion` entry-point group, "
        "with `@bastion.hookimpl`.",
    ),
    "bastion.strategy": (
        "Strategy hooks (project `bastion.strategy`)",
        "Implemented by strategy files with `@strategy.hook` (`from bastion import strategy`). "
        "Names and arguments are validated when the file is admitted; a misspelt hook is "
        "refused as `bad-interface`.",
    ),
}


def hook_markdown(rows: list[dict[str, Any]]) -> str:
    """Render the hook reference page from the hookspec docstrings."""
    out = [
        "# Hook reference",
        "",
        "Generated from `bastion/hookspecs.py` (core/hookspecs.py) by "
        "`bastion hooks --markdown > docs/reference/hooks.md`. Do not edit by hand: "
        "a test fails when this page and the docstrings disagree.",
        "",
        "A hook implementation may accept any subset of the arguments, by name.",
        "",
    ]
    for project, (title, intro) in _PROJECT_INTRO.items():
        out += [f"## {title}", "", intro, ""]
        for row in (r for r in rows if r["project"] == project):
            out += [f"### `{row['name']}({', '.join(row['arguments'])})`", ""]
            out += ["```python", row["signature"], "```", ""]
            if row["firstresult"]:
                out += ["*firstresult*: the first non-`None` result ends the call.", ""]
            out += [row["doc"], ""]
    return "\n".join(out)


def _typed_signature(name: str, func: Any) -> str:
    """``def name(a: T, ...) -> R`` as written in hookspecs.py (annotations are text there)."""
    signature = inspect.signature(func)
    params = ", ".join(
        f"{p.name}: {p.annotation}" if p.annotation is not p.empty else p.name
        for p in signature.parameters.values()
    )
    returns = signature.return_annotation
    return f"def {name}({params}) -> {returns}"


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    paragraph = doc.split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def _kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    if inspect.ismodule(obj):
        return "module"
    if type(obj).__name__ == "FixtureFunctionDefinition":  # a pytest fixture (bastion.testing)
        return "pytest fixture"
    return "constant"


def _signature(name: str, obj: object) -> str:
    """``name(a, b=1, *, c)`` for a function: parameter names and defaults, no annotations."""
    if not inspect.isfunction(obj):
        return name
    parts: list[str] = []
    star = False
    for param in inspect.signature(obj).parameters.values():
        if param.kind is param.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text, star = f"*{text}", True
        elif param.kind is param.VAR_KEYWORD:
            text = f"**{text}"
        if param.default is not param.empty:
            text += f"={param.default!r}"
        parts.append(text)
    return f"{name}({', '.join(parts)})"


def api_reference() -> list[dict[str, Any]]:
    """Each public module with its summary and every name its ``__all__`` lists."""
    rows = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names = []
        for name in sorted(getattr(module, "__all__", ())):
            obj = getattr(module, name)
            if name == "hookimpl" or not (inspect.isclass(obj) or callable(obj)):
                summary = ""
            else:
                summary = _summary(obj)
            names.append(
                {
                    "name": name,
                    "kind": _kind(obj),
                    "signature": _signature(name, obj),
                    "summary": summary,
                }
            )
        rows.append({"module": module_name, "summary": _summary(module), "names": names})
    return rows


def api_markdown(rows: list[dict[str, Any]]) -> str:
    """Render docs/reference/api.md from :func:`api_reference`."""
    out = [
        "# Public API reference",
        "",
        "Generated by `bastion api --markdown > docs/reference/api.md` from each public "
        "module's `__all__` and docstrings. Do not edit by hand: a test fails when this "
        "page and the code disagree, and another when a built-in plugin imports anything "
        "not listed here. What the version number promises is in "
        "[Versioning and compatibility](../extend/versioning.md).",
        "",
    ]
    for row in rows:
        out += [f"## `{row['module']}`", "", row["summary"], ""]
        if not row["names"]:
            continue
        for item in row["names"]:
            line = f"- `{item['signature']}` ({item['kind']})"
            out.append(f"{line}: {item['summary']}" if item["summary"] else line)
        out.append("")
    return "\n".join(out)


def command_reference(group: Any) -> list[dict[str, Any]]:
    """Every command and subcommand of the click ``group`` (built-ins' and plugins'),
    in name order: its path, usage, help text and options, from click itself."""
    import click

    rows: list[dict[str, Any]] = []

    def walk(command: click.Command, path: list[str], parent: click.Context | None) -> None:
        # As click makes it (the group's context_settings: -h and --help), so the help
        # option each command caches is the one `bastion X --help` shows.
        ctx = click.Context(command, info_name=path[-1], parent=parent, **command.context_settings)
        if isinstance(command, click.Group):
            for name in sorted(command.list_commands(ctx)):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, [*path, name], ctx)
            if parent is not None:
                return
        if parent is None:
            return
        options = []
        for param in command.get_params(ctx):
            if not isinstance(param, click.Option) or param.hidden:
                continue
            record = param.get_help_record(ctx)
            if record is None:
                continue
            options.append({"option": record[0], "help": record[1]})
        rows.append(
            {
                "command": " ".join(path),
                "usage": " ".join(command.collect_usage_pieces(ctx)),
                "summary": command.get_short_help_str(limit=200),
                "help": inspect.cleandoc(command.help or ""),
                "options": options,
            }
        )

    walk(group, ["bastion"], None)
    return rows


def command_markdown(rows: list[dict[str, Any]]) -> str:
    """Render docs/reference/commands.md from :func:`command_reference`."""
    out = [
        "# Command help reference",
        "",
        "Generated by `bastion commands --markdown > docs/reference/commands.md` from the "
        "commands' own `--help` (the built-in plugins' commands included; no third-party "
        "plugin installed). Do not edit by "
        "hand: a test fails when this page and the command line disagree. Worked "
        "examples and what each option does in detail are in [the command line "
        "reference](cli.md).",
        "",
    ]
    for row in rows:
        out += [f"## `{row['command']}`", "", "```", f"{row['command']} {row['usage']}", "```", ""]
        if row["help"]:
            out += [row["help"], ""]
        if row["options"]:
            out += ["| Option | Help |", "|---|---|"]
            for option in row["options"]:
                text = " ".join(option["help"].split()).replace("|", "\\|")
                name = option["option"].replace("|", "\\|")
                out.append(f"| `{name}` | {text} |")
            out.append("")
    return "\n".join(out)
