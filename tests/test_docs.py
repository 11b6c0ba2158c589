"""The commands quoted in README.md and docs/ print what the text says they print.

tests/doccheck.py runs each document's console blocks in a bash session and compares;
`python tests/doccheck.py --update DOC` rewrites a document's quoted output from a real run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from . import doccheck
from .doccheck import REPO, Bindings, _prose_figures, parse, parse_transcript


@pytest.mark.parametrize("doc", doccheck.documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_output_is_real(doc: Path) -> None:
    """Every quoted command runs, and prints what is quoted (up to ids, times and `...`)."""
    problems = doccheck.check(doc)
    assert not problems, (
        f"{len(problems)} quoted outputs differ from a real run; fix the text or run "
        f"'python tests/doccheck.py --update {doc.relative_to(REPO)}' and review the diff:\n\n"
        + "\n\n".join(problems)
    )


def test_every_console_block_is_run_or_skipped_with_a_reason() -> None:
    """No console block is silently left out (an indented one was, once): each one on a
    page is run, or skipped with a reason, and every page that runs one is checked."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    checked = set(doccheck.documents())
    for page in pages:
        doc = parse(page)
        fences = re.findall(r"^[ \t]*```console[ \t]*$", page.read_text(), re.M)
        run = [s for s in doc.steps if s.kind == "commands"]
        assert len(fences) == len(run) + len(doc.skipped), page
        assert bool(run) == (page in checked), page
        for line, reason in doc.skipped:
            assert len(reason.split()) >= 3, f"{page}:{line}: say why the block is skipped"


def test_transcript_splits_commands_and_output() -> None:
    """`$ ` starts a command, a trailing backslash continues it, and the rest is its output."""
    commands = parse_transcript("$ echo a \\\n  b\na b\n\n$ true\n", 10)
    assert [(c.line, c.text, c.expected) for c in commands] == [
        (10, "echo a \\\n  b", ("a b",)),
        (14, "true", ()),
    ]
    with pytest.raises(ValueError, match="line 1: output before"):
        parse_transcript("stray\n$ true\n", 1)


def test_ids_bind_once_and_consistently() -> None:
    """A quoted run id stands for the first real one seen in its place, and only that one."""
    b = Bindings()
    assert b.match(["run 20261206T023008-b392f0 done"], ["run 20270101T000000-aaaaaa done"])
    assert b.command("bastion report 20261206T023008-b392f0") == (
        "bastion report 20270101T000000-aaaaaa"
    )
    assert not b.match(["run 20261206T023008-b392f0"], ["run 20270101T000000-bbbbbb"])
    # two quoted ids may not stand for one real id
    assert not b.match(["run 20261206T023008-cccccc"], ["run 20270101T000000-aaaaaa"])
    assert b.quoted(["key of 20270101T000000-aaaaaa"]) == ["key of 20261206T023008-b392f0"]


def test_times_and_durations_may_differ_and_nothing_else() -> None:
    """Clock values match any value of their shape; every other character must be equal."""
    b = Bindings()
    assert b.match(
        ["expires 2027-03-06T02:30:13Z", "3,900 bars in 0.21s"],
        ["expires 2027-03-07T11:00:59Z", "3,900 bars in 12.5s"],
    )
    assert not b.match(["3,900 bars in 0.21s"], ["3,901 bars in 0.21s"])
    assert not b.match(["end equity 95,846.43"], ["end equity 95,846.44"])
    assert not b.match(["a", "b"], ["a"])


def test_an_ellipsis_line_stands_for_any_lines() -> None:
    """`...` alone on a line (indented or not) matches zero or more lines, and nothing else does."""
    b = Bindings()
    assert b.match(["first", "  ...", "last"], ["first", "x", "y", "last"])
    assert b.match(["first", "...", "last"], ["first", "last"])
    assert not b.match(["first", "...", "last"], ["first", "x", "lost"])
    assert not b.match(["a...b"], ["a", "b"])


def test_prose_figures_are_the_amounts_outside_code_and_comments() -> None:
    """Amounts of 10.00 and up in the prose are checked; code blocks, comments and small
    numbers (a leverage of 0.50, Python 3.11) are not."""
    text = (
        "Ends at 95,846.43 (Python 3.11, leverage 0.50), costs 362.57.\n"
        "```console\n$ x\n111,145.26\n```\n"
        "<!-- doccheck: probe echo 12.34 -->\n"
        "version 1.2.34 and 10.00.\n"
    )
    assert _prose_figures(text) == ((1, "95,846.43"), (1, "362.57"), (7, "10.00"))
