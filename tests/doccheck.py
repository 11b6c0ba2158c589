"""Run the commands quoted in README.md and docs/ and compare their output with the text.

Every ```console block is a transcript: ``$ command`` lines (a trailing ``\\`` continues
a command) followed by the output the command prints. The blocks of one document run in
order in one bash session (so ``cd``, ``export`` and files carry over), with the
repository's virtual environment on ``PATH``, ``COLUMNS=140``, a throw-away ``HOME``,
and stdout and stderr merged as a terminal shows them.

What may differ between the text and a real run, and nothing else:

* run ids and key ids: the first real value seen for a quoted one stands for it from
  then on (later commands that quote the id get the real one, and the same quoted id
  must always be the same real id);
* wall-clock times (``2026-12-06T02:30:08Z``), elapsed seconds (``in 0.21s``);
* a line that is ``...`` (indented or not) stands for any number of lines.

Directives are HTML comments at the start of a line, invisible on the rendered page:

* ``<!-- doccheck: skip REASON -->`` before a block: the block is not run (say why);
* ``<!-- doccheck: file PATH -->`` before any fenced block: write its text to PATH;
* ``<!-- doccheck: run COMMAND -->``: run a set-up command the reader does not see
  (it must exit 0; ``$REPO`` is the repository);
* ``<!-- doccheck: after DOC -->`` at the top: the document continues DOC's session;
* ``<!-- doccheck: vary REGEX -->``: from here on, text matching REGEX may differ (a
  digest over something that holds a time, say);
* ``<!-- doccheck: probe COMMAND -->``: run a command the reader does not see, whose
  output only backs figures quoted in the prose (next paragraph).

Figures quoted in a checked page's prose (amounts with two decimals, 10.00 and up, such
as an end equity) must each appear in some real output of that page's session: a
figure no command printed is an error.

Paths under ``/tmp/`` that a document uses are removed before its session and after
it, under a lock, so the quoted paths are the real ones (table widths depend on them).

Run ``python tests/doccheck.py [--update] [DOC...]`` to check (or rewrite the quoted
output of) documents by hand; tests/test_docs.py runs the check in the suite.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parent.parent
ELLIPSIS = "..."
COMMAND_TIMEOUT = 120.0

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>```+)(?P<lang>[\w-]*)[^\n]*\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.M | re.S,
)
#: A directive starts its line (so prose can quote one in backticks).
_DIRECTIVE = re.compile(
    r"^[ \t]*<!--\s*doccheck:\s*(?P<verb>\w[\w-]*)\s*(?P<arg>.*?)\s*-->", re.S | re.M
)
_TMP_ROOT = re.compile(r"(?<![\w.-])/tmp/[\w.-]+")
#: Values that name something a run created: mapped from quoted to real, consistently.
_VARIABLES = {
    "run id": re.compile(r"\b\d{8}T\d{6}-[0-9a-f]{6}\b"),
    "key id": re.compile(r"\b[0-9A-F]{16}\b"),
}
#: Values that change with the clock: any value of the same shape matches.
_WILDCARDS = (
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"), "<time>"),
    (re.compile(r"\bin \d+(\.\d+)?s\b"), "in <seconds>"),
    (re.compile(r'"(seconds|bars_per_second)": \d+(\.\d+)?'), r'"\1": <measured>'),
)


@attrs.frozen
class Command:
    """One ``$`` line of a console block, with the output quoted under it."""

    line: int
    text: str
    expected: tuple[str, ...]


@attrs.frozen
class Step:
    """What a document asks the session to do, in order."""

    kind: str  # "commands" | "file" | "run" | "probe" | "vary"
    line: int
    commands: tuple[Command, ...] = ()
    path: str = ""
    text: str = ""
    #: Offsets of the block body in the document, and its indentation (for --update).
    span: tuple[int, int] = (0, 0)
    indent: str = ""


@attrs.frozen
class Doc:
    path: Path
    after: str | None
    steps: tuple[Step, ...]
    skipped: tuple[tuple[int, str], ...]
    #: Amounts quoted in the prose (outside code blocks and comments), with their line.
    figures: tuple[tuple[int, str], ...] = ()


_FIGURE = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})*\.\d{2}(?![\d,]|\.\d)")
_COMMENT = re.compile(r"<!--.*?-->", re.S)


def _prose_figures(text: str) -> tuple[tuple[int, str], ...]:
    blank = lambda m: re.sub(r"[^\n]", " ", m[0])  # noqa: E731 - keep line numbers
    prose = _COMMENT.sub(blank, _FENCE.sub(blank, text))
    return tuple(
        (_line_of(prose, m.start()), m[0])
        for m in _FIGURE.finditer(prose)
        if float(m[0].replace(",", "")) >= 10
    )


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def parse_transcript(body: str, first_line: int) -> tuple[Command, ...]:
    """Split a console block into commands and the output quoted under each."""
    commands: list[Command] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines) and not lines[i].startswith("$ "):
        if lines[i].strip():
            raise ValueError(f"line {first_line + i}: output before the first '$ ' command")
        i += 1
    while i < len(lines):
        start = i
        text = lines[i][2:]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text + "\n" + lines[i]
        i += 1
        output: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i].rstrip())
            i += 1
        while output and not output[-1]:
            output.pop()
        commands.append(Command(first_line + start, text, tuple(output)))
    return tuple(commands)


def parse(path: Path) -> Doc:
    """Read one markdown document's console blocks and doccheck directives, in order."""
    text = path.read_text(encoding="utf-8")
    events: list[tuple[int, str, re.Match[str]]] = []
    events += [(m.start(), "fence", m) for m in _FENCE.finditer(text)]
    fenced = [(m.start(), m.end()) for m in _FENCE.finditer(text)]
    for m in _DIRECTIVE.finditer(text):
        if not any(a <= m.start() < b for a, b in fenced):
            events.append((m.start(), "directive", m))
    events.sort(key=lambda e: e[0])
    steps: list[Step] = []
    skipped: list[tuple[int, str]] = []
    after: str | None = None
    pending: tuple[str, str] | None = None  # a skip or file directive waiting for its block
    for offset, kind, m in events:
        line = _line_of(text, offset)
        if kind == "directive":
            verb, arg = m["verb"], m["arg"]
            if verb == "after":
                after = arg
            elif verb in ("vary", "probe"):
                steps.append(Step(verb, line, text=arg))
            elif verb == "run":  # a long set-up may be wrapped over several lines
                steps.append(Step("run", line, text=" ".join(s.strip() for s in arg.splitlines())))
            elif verb in ("skip", "file"):
                if not arg:
                    raise ValueError(f"{path}:{line}: 'doccheck: {verb}' needs a reason or a path")
                pending = (verb, arg)
            else:
                raise ValueError(f"{path}:{line}: unknown directive 'doccheck: {verb}'")
            continue
        body_start = m.start("body")
        indent = m["indent"]
        body = "".join(line.removeprefix(indent) for line in m["body"].splitlines(keepends=True))
        if pending is not None:
            verb, arg = pending
            pending = None
            if verb == "skip":
                skipped.append((line, arg))
            else:
                steps.append(Step("file", line, path=arg, text=body))
            continue
        if m["lang"] != "console":
            continue
        commands = parse_transcript(body, _line_of(text, body_start))
        span = (body_start, m.end("body"))
        steps.append(Step("commands", line, commands, span=span, indent=indent))
    if pending is not None:
        raise ValueError(f"{path}: 'doccheck: {pending[0]}' is not followed by a block")
    return Doc(path, after, tuple(steps), tuple(skipped), _prose_figures(text))


class Mismatch(AssertionError):
    """A quoted output that is not what the command prints."""


class Bindings:
    """Quoted run and key ids and the real ones they stand for."""

    def __init__(self) -> None:
        self.real: dict[str, str] = {}
        self.vary: list[re.Pattern[str]] = []

    def command(self, text: str) -> str:
        """The command with every quoted id already seen replaced by its real value."""
        for pattern in _VARIABLES.values():
            text = pattern.sub(lambda m: self.real.get(m[0], m[0]), text)
        return text

    def quoted(self, lines: list[str]) -> list[str]:
        """Real lines with every bound id put back the way the text quotes it (for --update)."""
        back = {real: quoted for quoted, real in self.real.items()}
        out = []
        for line in lines:
            for pattern in _VARIABLES.values():
                line = pattern.sub(lambda m: back.get(m[0], m[0]), line)
            out.append(line)
        return out

    def match(self, expected: list[str], actual: list[str]) -> bool:
        """Whether the quoted lines match the real ones (binding new ids as it goes)."""
        return _match(self, self._wild(expected), self._wild(actual))

    def _wild(self, lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            for pattern, placeholder in _WILDCARDS:
                line = pattern.sub(placeholder, line)
            for pattern in self.vary:
                line = pattern.sub("<varies>", line)
            out.append(line)
        return out


def _match(bindings: Bindings, expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    if expected[0].strip() == ELLIPSIS:
        return any(_match(bindings, expected[1:], actual[i:]) for i in range(len(actual) + 1))
    if not actual:
        return False
    saved = dict(bindings.real)
    if _line_matches(bindings, expected[0], actual[0]) and _match(
        bindings, expected[1:], actual[1:]
    ):
        return True
    bindings.real = saved
    return False


def _line_matches(bindings: Bindings, quoted: str, real: str) -> bool:
    """Compare one line; each quoted id must be (or become) bound to the real id in its place."""
    for pattern in _VARIABLES.values():
        q_ids, r_ids = pattern.findall(quoted), pattern.findall(real)
        if len(q_ids) != len(r_ids):
            return False
        for q, r in zip(q_ids, r_ids, strict=True):
            bound = bindings.real.get(q)
            if bound is None:
                if r in bindings.real.values() and q != r:
                    return False
                bindings.real[q] = r
            elif bound != r:
                return False
        quoted = pattern.sub("<id>", quoted)
        real = pattern.sub("<id>", real)
    return quoted == real


class Shell:
    """One bash process; commands run one at a time with their output captured."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        self.marker = f"__doccheck_{os.getpid()}_{time.monotonic_ns()}__"
        self.buffer = b""
        self.run("exec 2>&1")

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """Run one command; return its exit status and its output (stdout and stderr)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        script = (
            f"{{ {command}\n}} </dev/null; __doccheck_status=$?\n"
            f"printf '\\n%s %d\\n' {self.marker} $__doccheck_status\n"
            "(exit $__doccheck_status)\n"  # so that a quoted 'echo $?' sees the command's status
        )
        self.proc.stdin.write(script.encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        pattern = re.compile(rb"\n" + re.escape(self.marker.encode()) + rb" (\d+)\n")
        while not (m := pattern.search(self.buffer)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise Mismatch(f"command did not finish within {timeout:.0f}s: {command}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise Mismatch(f"the shell exited while running: {command}")
                self.buffer += chunk
        output, self.buffer = self.buffer[: m.start()], self.buffer[m.end() :]
        return int(m[1]), output.decode("utf-8", "replace")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def chain(doc: Path) -> list[Doc]:
    """The document and the ones it continues, first one first."""
    docs = [parse(doc)]
    while docs[0].after:
        docs.insert(0, parse(REPO / "docs" / docs[0].after))
    return docs


@contextmanager
def _scratch(docs: list[Doc]) -> Iterator[Path]:
    """A throw-away HOME, with the /tmp paths the documents use cleared before and after."""
    roots = set()
    for d in docs:
        for step in d.steps:
            for cmd in step.commands:
                roots.update(_TMP_ROOT.findall(cmd.text))
            roots.update(_TMP_ROOT.findall(step.text))
            roots.update(_TMP_ROOT.findall(step.path))
    paths = sorted(Path(r) for r in roots)
    lock_path = Path(tempfile.gettempdir()) / "bastion-doccheck.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        home = Path(tempfile.mkdtemp(prefix="doccheck-home-"))
        try:
            for p in paths:
                shutil.rmtree(p, ignore_errors=True)
            yield home
        finally:
            for p in [*paths, home]:
                shutil.rmtree(p, ignore_errors=True)


def _environment(home: Path) -> dict[str, str]:
    venv_bin = Path(sys.executable).parent
    keep = ("LANG", "LC_ALL", "TERM", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        PATH=f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        COLUMNS="140",
        LINES="50",
        REPO=str(REPO),
        PYTHONDONTWRITEBYTECODE="1",
        NO_COLOR="1",
    )
    env.setdefault("LANG", "C.UTF-8")
    return env


def check(doc_path: Path, update: bool = False) -> list[str]:
    """Run a document's session; return one message per quoted output that differs."""
    docs = chain(doc_path)
    target = docs[-1]
    problems: list[str] = []
    edits: list[tuple[tuple[int, int], str]] = []
    with _scratch(docs) as home:
        shell = Shell(home, _environment(home))  # never the repository: documents write files
        bindings = Bindings()
        printed: list[str] = []
        try:
            for d in docs:
                rel = d.path.relative_to(REPO)
                for step in d.steps:
                    where = f"{rel}:{step.line}"
                    if step.kind == "vary":
                        bindings.vary.append(re.compile(step.text))
                    elif step.kind in ("run", "probe"):
                        status, out = shell.run(step.text)
                        if status:
                            what = f"{where}: {step.kind} '{step.text}'"
                            raise Mismatch(f"{what} exited {status}:\n{out}")
                        if step.kind == "probe" and d is target:
                            printed.append(out)
                    elif step.kind == "file":
                        status, out = shell.run(
                            f"mkdir -p \"$(dirname '{step.path}')\" && "
                            f"cat > '{step.path}' <<'__DOCCHECK_EOF__'\n{step.text}__DOCCHECK_EOF__"
                        )
                        if status:
                            raise Mismatch(f"{where}: cannot write {step.path}: {out}")
                    else:
                        block: list[str] = []
                        for cmd in step.commands:
                            status, out = shell.run(bindings.command(cmd.text))
                            if d is target:
                                printed.append(out)
                            real = [line.rstrip() for line in out.splitlines()]
                            while real and not real[-1]:
                                real.pop()
                            block.append("$ " + cmd.text)
                            if bindings.match(list(cmd.expected), real):
                                block.extend(cmd.expected)
                                continue
                            if not cmd.expected and status == 0:
                                continue  # a command quoted without its output
                            block.extend(bindings.quoted(real))
                            if d is target:
                                problems.append(_describe(rel, cmd, real, status))
                        if update and d is target:
                            lines = [step.indent + b if b else b for b in block]
                            edits.append((step.span, "\n".join(lines) + "\n"))
        finally:
            shell.close()
    if any(s.kind == "commands" for s in target.steps):
        everything = "\n".join(printed)
        rel = target.path.relative_to(REPO)
        problems += [
            f"{rel}:{line}: the figure {figure} is quoted in the text but no command printed it"
            for line, figure in target.figures
            if figure not in everything
        ]
    if update and edits:
        text = target.path.read_text(encoding="utf-8")
        for (start, end), new in sorted(edits, reverse=True):
            text = text[:start] + new + text[end:]
        target.path.write_text(text, encoding="utf-8")
    return problems


def _describe(rel: Path, cmd: Command, real: list[str], status: int) -> str:
    if not cmd.expected:
        return f"{rel}:{cmd.line}: '$ {cmd.text}' exited {status}:\n" + "\n".join(real)
    diff = difflib.unified_diff(list(cmd.expected), real, "quoted", "real", lineterm="", n=2)
    return f"{rel}:{cmd.line}: '$ {cmd.text}' printed something else:\n" + "\n".join(diff)


def documents() -> list[Path]:
    """README.md and every page under docs/ that quotes a command."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    return [p for p in pages if any(s.kind != "file" for s in parse(p).steps)]


def main(argv: list[str]) -> int:
    update = "--update" in argv
    names = [a for a in argv if a != "--update"]
    paths = [Path(n).resolve() for n in names] or documents()
    failed = 0
    for path in paths:
        try:
            problems = check(path, update=update)
        except Mismatch as exc:
            problems = [str(exc)]
        status = "updated" if update else ("ok" if not problems else f"{len(problems)} differ")
        print(f"{path.relative_to(REPO)}: {status}")
        for p in problems:
            print(p, end="\n\n")
        failed += bool(problems)
    return 1 if failed and not update else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
