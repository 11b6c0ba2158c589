"""docs/extend/ shows every hook at work, its code parses, the example package's code it
quotes is the package's, and its links lead somewhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from bastion import hookspecs

from .conftest import REPO

EXTEND = REPO / "docs" / "extend"
PAGES = sorted(EXTEND.glob("*.md"))
PACKAGE = REPO / "docs" / "examples" / "bastion-market-hours"

_BLOCK = re.compile(
    r"^(?P<marker><!--\s*example:\s*(?P<path>\S+)\s*-->\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$",
    re.M | re.S,
)
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _hook_names() -> list[str]:
    """Every hook specified in bastion.hookspecs, kernel and strategy hooks alike."""
    return sorted(
        name
        for name, obj in vars(hookspecs).items()
        if callable(obj) and (hasattr(obj, "bastion_spec") or hasattr(obj, "bastion.strategy_spec"))
    )


def _blocks(lang: str) -> list[tuple[Path, str, str | None]]:
    return [
        (page, m["body"], m["path"])
        for page in PAGES
        for m in _BLOCK.finditer(page.read_text())
        if m["lang"] == lang
    ]


def test_the_hook_list_is_complete() -> None:
    """The check below sees all 17 hooks (12 kernel, 5 strategy): a marker renamed
    would otherwise make it pass on nothing."""
    names = _hook_names()
    assert len(names) == 17, names
    assert {"check_order", "startup", "on_bar"} <= set(names)


@pytest.mark.parametrize("hook", _hook_names())
def test_every_hook_has_a_worked_example(hook: str) -> None:
    """Each hook in bastion.hookspecs is implemented (``def HOOK(``) in a python block
    of some page in docs/extend/: a new hook without an example fails here."""
    pattern = re.compile(rf"^\s*def {hook}\(", re.M)
    found = [page.name for page, body, _ in _blocks("python") if pattern.search(body)]
    assert found, f"no python block in docs/extend/ implements {hook}(); add a worked example"


def test_python_examples_parse() -> None:
    """Every python block in docs/extend/ is valid Python (a typo in a worked example
    would be copied by readers)."""
    blocks = _blocks("python")
    assert len(blocks) >= 10
    for page, body, _ in blocks:
        try:
            ast.parse(body)
        except SyntaxError as exc:
            pytest.fail(f"{page.relative_to(REPO)}: a python block does not parse: {exc}")


def test_quoted_package_code_is_the_packages() -> None:
    """A block marked ``<!-- example: PATH -->`` is quoted verbatim from the example
    package's file PATH, so the page cannot drift from the code the suite installs."""
    quoted = [(page, body, path) for page in PAGES for _, body, path in _all(page) if path]
    assert len(quoted) >= 2
    for page, body, path in quoted:
        source = (PACKAGE / path).read_text()
        assert body in source, f"{page.relative_to(REPO)}: the block from {path} differs from it"


def _all(page: Path) -> list[tuple[str, str, str | None]]:
    return [(m["lang"], m["body"], m["path"]) for m in _BLOCK.finditer(page.read_text())]


@pytest.mark.parametrize(
    "page",
    [*PAGES, PACKAGE / "README.md", REPO / "docs" / "index.md"],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_relative_links_lead_to_files(page: Path) -> None:
    """Every relative link of the extension pages (and of the pages linking to them)
    names a file that exists."""
    text = re.sub(r"^```.*?^```$", "", page.read_text(), flags=re.M | re.S)
    for m in _LINK.finditer(text):
        target = m["target"].split("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: broken link {target}"


def test_the_api_reference_links_to_the_versioning_page() -> None:
    """docs/reference/api.md promises what the version number means on
    extend/versioning.md: that page exists and states the promises."""
    assert "(../extend/versioning.md)" in (REPO / "docs/reference/api.md").read_text()
    text = (EXTEND / "versioning.md").read_text()
    for needle in ("API_VERSION", "BASTION_API", "__all__", "bastion._", "Deprecation"):
        assert needle in text, needle
