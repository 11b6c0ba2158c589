"""bastion._landlock: the ctypes Landlock binding the sandboxed worker locks itself with.

``restrict_self`` is irreversible, so every test that enforces a ruleset does so in a
child ``python -I`` process that imports the module, sets no_new_privs, restricts itself
to paths under ``tmp_path``, tries things, and prints a JSON verdict per attempt:
``"ok"`` or ``"<ExceptionClass>(<ERRNO>)"``.  Tests that run in-process replace the
module's ``_syscall`` with a fake, so nothing is ever enforced on the pytest process.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion import _landlock
from bastion._landlock import LandlockError, LandlockResult, abi_version, restrict_self


def _kernel_abi() -> int:
    """Ask the kernel directly (independently of the module under test)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result: int = libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))
    return max(result, 0)


def _lsm_lists_landlock() -> bool:
    try:
        return "landlock" in Path("/sys/kernel/security/lsm").read_text().split(",")
    except OSError:  # securityfs not mounted (as in many VMs and containers)
        return False


KERNEL_ABI = _kernel_abi()
needs_landlock = pytest.mark.skipif(
    KERNEL_ABI == 0,
    reason="the kernel has no Landlock (landlock_create_ruleset: ENOSYS/EOPNOTSUPP)",
)
FULL_FS = (1 << 16) - 1  # every filesystem right up to IOCTL_DEV (ABI 5)

# Runs in the child before the test's own code.  Everything the child needs after
# restricting itself is imported first: once restricted it cannot read the stdlib.
PRELUDE = """\
import ctypes, errno, json, os, socket, subprocess, sys
from bastion import _landlock

ARGS = json.loads(sys.argv[1])
OUT = {}

def attempt(name, fn):
    try:
        fn()
    except OSError as exc:
        OUT[name] = f"{type(exc).__name__}({errno.errorcode.get(exc.errno, exc.errno)})"
    else:
        OUT[name] = "ok"

def read(path):
    with open(path, "rb") as f:
        f.read()

def tcp_connect(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(("127.0.0.1", port))

def unix_connect(address):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(address)

def result_dict(r):
    return {"abi": r.abi, "fs_rights": r.fs_rights, "net": r.net, "scoped": r.scoped,
            "readable": list(r.readable)}
"""

RESTRICT = """\
if ctypes.CDLL(None).prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    raise SystemExit("prctl(PR_SET_NO_NEW_PRIVS) failed")
OUT["result"] = result_dict(_landlock.restrict_self(ARGS["readable"]))
"""

DENIED_FS = "PermissionError(EACCES)"  # filesystem and TCP denials
DENIED_SCOPE = "PermissionError(EPERM)"  # signal and abstract unix socket denials


def run_child(body: str, restrict: bool = True, **args: Any) -> dict[str, Any]:
    """Run PRELUDE (+ RESTRICT) + body in a fresh isolated interpreter; return OUT."""
    code = PRELUDE + (RESTRICT if restrict else "") + body + "\nprint(json.dumps(OUT))\n"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, str]:
    """A readable dir with a file and a subdir, and an outside dir with a secret."""
    ro = tmp_path / "ro"
    (ro / "sub").mkdir(parents=True)
    (ro / "data.txt").write_text("inside\n")
    (ro / "sub" / "deep.txt").write_text("deeper\n")
    (ro / "sub" / "empty").mkdir()
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text("secret\n")
    return {"ro": str(ro), "out": str(out), "tmp": str(tmp_path)}


@pytest.fixture
def tcp_listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 (only), opened by the test; yields its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield srv.getsockname()[1]


@pytest.fixture
def abstract_listener() -> Iterator[str]:
    """An abstract unix socket listener opened by the test; yields its name."""
    name = f"\0bastion-landlock-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(name)
        srv.listen(8)
        yield name


# --- ABI probing ------------------------------------------------------------------


def test_abi_version_is_positive_here() -> None:
    """abi_version() reports the kernel's Landlock ABI (7 on this machine and CI).

    Skips only when the kernel itself says Landlock is unavailable and the LSM list does
    not name it; a broken abi_version() on a Landlock kernel fails instead.
    """
    abi = abi_version()
    if abi == 0 and KERNEL_ABI == 0 and not _lsm_lists_landlock():
        pytest.skip("Landlock is not available on this kernel (ABI 0, not in the LSM list)")
    assert abi > 0
    assert abi == KERNEL_ABI


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EOPNOTSUPP])
def test_unavailable_landlock_is_abi_0_and_restrict_self_raises(
    monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """ENOSYS / EOPNOTSUPP from the version probe mean ABI 0 (no exception from
    abi_version), and restrict_self raises a one-line LandlockError naming the errno."""
    calls: list[int] = []

    def fake(number: int, *args: int) -> int:
        calls.append(number)
        return -err

    monkeypatch.setattr(_landlock, "_syscall", fake)
    assert abi_version() == 0
    with pytest.raises(LandlockError) as info:
        restrict_self([])
    assert info.value.errno == err
    message = str(info.value)
    assert "\n" not in message
    assert "unavailable" in message
    assert errno.errorcode[err] in message
    assert calls == [444, 444]  # only ever the version probe


# --- layouts and per-ABI choices (no kernel involved) ---------------------------------


def test_path_beneath_attr_is_packed_to_12_bytes() -> None:
    """struct landlock_path_beneath_attr is __packed__: u64 then s32, no padding."""
    rule = _landlock._PathBeneathAttr(allowed_access=0x0123_4567_89AB_CDEF, parent_fd=-5)
    assert ctypes.sizeof(_landlock._PathBeneathAttr) == 12
    assert bytes(rule) == struct.pack("=Qi", 0x0123_4567_89AB_CDEF, -5)


def test_ruleset_attr_layout() -> None:
    """struct landlock_ruleset_attr is three u64s in UAPI order: fs, net, scoped."""
    attr = _landlock._RulesetAttr(handled_access_fs=1, handled_access_net=2, scoped=3)
    assert ctypes.sizeof(_landlock._RulesetAttr) == 24
    assert bytes(attr) == struct.pack("=QQQ", 1, 2, 3)


@pytest.mark.parametrize(
    ("abi", "size", "fs", "net", "scoped"),
    [
        (1, 8, 0x1FFF, 0, 0),
        (2, 8, 0x3FFF, 0, 0),
        (3, 8, 0x7FFF, 0, 0),
        (4, 16, 0x7FFF, 0b11, 0),
        (5, 16, 0xFFFF, 0b11, 0),
        (6, 24, 0xFFFF, 0b11, 0b11),
        (7, 24, 0xFFFF, 0b11, 0b11),
        (8, 24, 0xFFFF, 0b11, 0b11),
    ],
)
def test_ruleset_size_and_rights_per_abi(
    abi: int, size: int, fs: int, net: int, scoped: int
) -> None:
    """Each ABI gets exactly the attr bytes it knows (8/16/24) and every right it knows:
    REFER from 2, TRUNCATE from 3, TCP bind+connect from 4, IOCTL_DEV from 5, both scopes
    from 6; later ABIs add nothing handled."""
    assert _landlock._ruleset_attr_size(abi) == size
    assert _landlock._handled(abi) == (fs, net, scoped)


# --- error handling and fd hygiene, with a fake kernel ----------------------------------


class FakeKernel:
    """Stands in for _syscall: reports ABI 7, hands out a real fd as the ruleset."""

    def __init__(self, fail: int | None = None, err: int = errno.EINVAL) -> None:
        self.fail, self.err = fail, err
        self.ruleset_fd = -1
        self.calls: list[int] = []

    def __call__(self, number: int, *args: int) -> int:
        self.calls.append(number)
        if number == 444 and args == (0, 0, 1):
            return 7
        if number == self.fail:
            return -self.err
        if number == 444:
            self.ruleset_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            return self.ruleset_fd
        return 0


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("fail", "err", "words"),
    [
        (444, errno.EINVAL, ["landlock_create_ruleset", "EINVAL"]),
        (445, errno.EINVAL, ["landlock_add_rule", "EINVAL"]),
        (446, errno.EPERM, ["landlock_restrict_self", "EPERM", "PR_SET_NO_NEW_PRIVS"]),
        (446, errno.E2BIG, ["landlock_restrict_self", "E2BIG", "16"]),
    ],
)
def test_syscall_failures_raise_one_line_error_and_close_the_ruleset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fail: int, err: int, words: list[str]
) -> None:
    """Any failing syscall raises LandlockError(errno) whose one-line message names the
    call and the errno symbol (with a hint where one helps); the ruleset fd is closed."""
    kernel = FakeKernel(fail, err)
    monkeypatch.setattr(_landlock, "_syscall", kernel)
    with pytest.raises(LandlockError) as info:
        restrict_self([tmp_path])
    assert isinstance(info.value, OSError)
    assert info.value.errno == err
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    if fail != 444:
        assert not _is_open(kernel.ruleset_fd)


def test_success_returns_frozen_result_and_closes_the_ruleset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On success restrict_self returns a frozen LandlockResult (ABI 7: full fs mask,
    net, scopes, existing paths only), the ruleset fd is closed and no O_PATH fd leaks."""
    kernel = FakeKernel()
    monkeypatch.setattr(_landlock, "_syscall", kernel)
    before = set(os.listdir("/proc/self/fd"))
    result = restrict_self([tmp_path, tmp_path / "missing"])
    assert set(os.listdir("/proc/self/fd")) == before
    assert not _is_open(kernel.ruleset_fd)
    assert kernel.calls == [444, 444, 445, 446]
    assert result == LandlockResult(
        abi=7, fs_rights=0xFFFF, net=True, scoped=True, readable=(str(tmp_path),)
    )
    field = "abi"
    with pytest.raises(AttributeError):  # attrs.exceptions.FrozenInstanceError
        setattr(result, field, 1)


@pytest.mark.parametrize("bad", ["/srv/data", b"/srv/data", Path("/srv/data"), [b"/srv"]])
def test_a_lone_path_or_bytes_path_is_a_type_error(
    monkeypatch: pytest.MonkeyPatch, bad: Any
) -> None:
    """restrict_self("/srv/data") must not iterate the string (granting "/" for the
    first letter): a lone path, or a bytes path, is a TypeError before any syscall."""
    kernel = FakeKernel()
    monkeypatch.setattr(_landlock, "_syscall", kernel)
    with pytest.raises(TypeError):
        restrict_self(bad)
    assert kernel.calls == []


# --- enforcement, in child processes ----------------------------------------------


@needs_landlock
def test_result_fields(tree: dict[str, str]) -> None:
    """LandlockResult reports the kernel ABI, the full fs mask for it, net and scope
    flags per ABI, and exactly the readable paths that existed, in order."""
    ro, missing = tree["ro"], os.path.join(tree["tmp"], "missing")
    out = run_child("", readable=[missing, ro, ro + "/data.txt"])
    assert out["result"] == {
        "abi": KERNEL_ABI,
        "fs_rights": _landlock._handled(KERNEL_ABI)[0],
        "net": KERNEL_ABI >= 4,
        "scoped": KERNEL_ABI >= 6,
        "readable": [ro, ro + "/data.txt"],
    }
    if KERNEL_ABI >= 5:
        assert out["result"]["fs_rights"] == FULL_FS


@needs_landlock
def test_reads_and_listing_beneath_readable_dir_work(tree: dict[str, str]) -> None:
    """Files beneath a readable dir (at any depth) can be read; the dir and its
    subdirectories can be listed."""
    ro = tree["ro"]
    out = run_child(
        """
ro = ARGS["readable"][0]
attempt("read", lambda: read(ro + "/data.txt"))
attempt("read_deep", lambda: read(ro + "/sub/deep.txt"))
attempt("list", lambda: OUT.__setitem__("listing", sorted(os.listdir(ro))))
attempt("list_sub", lambda: os.listdir(ro + "/sub"))
""",
        readable=[ro],
    )
    assert out["read"] == out["read_deep"] == out["list"] == out["list_sub"] == "ok"
    assert out["listing"] == ["data.txt", "sub"]


@needs_landlock
def test_reading_or_listing_outside_is_denied(tree: dict[str, str]) -> None:
    """Reading a file outside the readable paths, or listing a dir outside them (even
    the readable dir's parent), fails with PermissionError."""
    out = run_child(
        """
attempt("read_out", lambda: read(ARGS["out"] + "/secret.txt"))
attempt("list_out", lambda: os.listdir(ARGS["out"]))
attempt("list_parent", lambda: os.listdir(ARGS["tmp"]))
attempt("read_etc", lambda: read("/etc/passwd"))
""",
        readable=[tree["ro"]],
        out=tree["out"],
        tmp=tree["tmp"],
    )
    assert out["read_out"] == out["list_out"] == out["list_parent"] == DENIED_FS
    assert out["read_etc"] == DENIED_FS


CHANGES = (
    "write", "append", "create", "mkfifo", "mkdir", "symlink", "unlink", "rmdir", "rename",
    "rename_sub", "link", "truncate",
)  # fmt: skip


@needs_landlock
def test_nothing_can_be_changed_inside_the_readable_dir(tree: dict[str, str]) -> None:
    """Inside the readable dir, opening for write or append, creating a file, fifo, dir
    or symlink, removing, renaming, hard-linking and truncating all fail."""
    out = run_child(
        """
ro = ARGS["readable"][0]
f = ro + "/data.txt"
attempt("write", lambda: open(f, "wb").close())
attempt("append", lambda: open(f, "ab").close())
attempt("create", lambda: open(ro + "/new.txt", "xb").close())
attempt("mkfifo", lambda: os.mkfifo(ro + "/fifo"))
attempt("mkdir", lambda: os.mkdir(ro + "/newdir"))
attempt("symlink", lambda: os.symlink(f, ro + "/link"))
attempt("unlink", lambda: os.unlink(f))
attempt("rmdir", lambda: os.rmdir(ro + "/sub/empty"))
attempt("rename", lambda: os.rename(f, ro + "/renamed.txt"))
attempt("rename_sub", lambda: os.rename(f, ro + "/sub/data.txt"))
attempt("link", lambda: os.link(f, ro + "/hard.txt"))
attempt("truncate", lambda: os.truncate(f, 0))
""",
        readable=[tree["ro"]],
    )
    verdicts = {name: verdict for name, verdict in out.items() if name != "result"}
    assert verdicts == dict.fromkeys(CHANGES, DENIED_FS)
    ro = Path(tree["ro"])
    assert (ro / "data.txt").read_text() == "inside\n"
    assert sorted(p.name for p in ro.iterdir()) == ["data.txt", "sub"]
    assert (ro / "sub" / "empty").is_dir()


@needs_landlock
def test_writing_anywhere_else_is_denied(tree: dict[str, str]) -> None:
    """Outside the readable paths nothing can be written or created either: not in a
    dir under /tmp, not an existing file there, not /tmp itself."""
    target = os.path.join(tree["tmp"], f"landlock-probe-{os.urandom(4).hex()}")
    out = run_child(
        """
attempt("create_tmp", lambda: open(ARGS["target"], "xb").close())
attempt("append_out", lambda: open(ARGS["out"] + "/secret.txt", "ab").close())
attempt("mkdir_out", lambda: os.mkdir(ARGS["out"] + "/d"))
attempt("unlink_out", lambda: os.unlink(ARGS["out"] + "/secret.txt"))
""",
        readable=[tree["ro"]],
        out=tree["out"],
        target=target,
    )
    assert out["create_tmp"] == out["append_out"] == DENIED_FS
    assert out["mkdir_out"] == out["unlink_out"] == DENIED_FS
    assert not os.path.exists(target)
    assert Path(tree["out"], "secret.txt").read_text() == "secret\n"


@needs_landlock
def test_nothing_can_be_executed(tree: dict[str, str]) -> None:
    """execve is denied everywhere, including the interpreter itself."""
    out = run_child(
        """
attempt("exec", lambda: subprocess.run([sys.executable, "-c", "pass"], close_fds=False))
""",
        readable=[tree["ro"]],
    )
    assert out["exec"] == DENIED_FS


@needs_landlock
def test_a_readable_file_grants_that_file_only(tree: dict[str, str]) -> None:
    """A file in `readable` is ruled with the file rights only (no EINVAL): it can be
    read, but its siblings cannot, and its directory cannot be listed."""
    ro = tree["ro"]
    out = run_child(
        """
attempt("read", lambda: read(ARGS["ro"] + "/data.txt"))
attempt("read_sibling", lambda: read(ARGS["ro"] + "/sub/deep.txt"))
attempt("list_dir", lambda: os.listdir(ARGS["ro"]))
""",
        readable=[ro + "/data.txt"],
        ro=ro,
    )
    assert out["result"]["readable"] == [ro + "/data.txt"]
    assert out["read"] == "ok"
    assert out["read_sibling"] == out["list_dir"] == DENIED_FS


@needs_landlock
def test_nonexistent_readable_path_is_skipped(tree: dict[str, str]) -> None:
    """Paths that do not exist (or run through a file) are skipped, not errors; the
    existing ones still work."""
    missing = os.path.join(tree["tmp"], "missing")
    through_file = tree["ro"] + "/data.txt/x"
    out = run_child(
        """
attempt("read", lambda: read(ARGS["readable"][-1] + "/data.txt"))
""",
        readable=[missing, through_file, tree["ro"]],
    )
    assert out["result"]["readable"] == [tree["ro"]]
    assert out["read"] == "ok"


@needs_landlock
def test_tcp_connect_and_bind_are_denied(tcp_listener: int) -> None:
    """After restrict_self (ABI >= 4) a TCP connect to a listener on 127.0.0.1 fails
    with PermissionError, while the same connect succeeds in an unrestricted child;
    binding a TCP socket (even to port 0) is denied too."""
    body = """
attempt("connect", lambda: tcp_connect(ARGS["port"]))
attempt("bind", lambda: socket.socket().bind(("127.0.0.1", 0)))
"""
    free = run_child(body, restrict=False, port=tcp_listener)
    assert free == {"connect": "ok", "bind": "ok"}
    if KERNEL_ABI < 4:
        pytest.skip(f"Landlock ABI {KERNEL_ABI} < 4 cannot restrict TCP")
    locked = run_child(body, readable=[], port=tcp_listener)
    assert locked["connect"] == locked["bind"] == DENIED_FS


@needs_landlock
def test_signals_outside_the_domain_are_denied() -> None:
    """With ABI >= 6, os.kill(parent, 0) (signal 0 sends nothing but is permission
    checked) fails with PermissionError; signalling itself still works."""
    body = """
attempt("ppid_matches", lambda: None if os.getppid() == ARGS["parent"] else 1 / 0)
attempt("kill_parent", lambda: os.kill(ARGS["parent"], 0))
attempt("kill_self", lambda: os.kill(os.getpid(), 0))
"""
    free = run_child(body, restrict=False, parent=os.getpid())
    assert free == {"ppid_matches": "ok", "kill_parent": "ok", "kill_self": "ok"}
    if KERNEL_ABI < 6:
        pytest.skip(f"Landlock ABI {KERNEL_ABI} < 6 cannot scope signals")
    locked = run_child(body, readable=[], parent=os.getpid())
    assert locked["kill_parent"] == DENIED_SCOPE
    assert locked["ppid_matches"] == locked["kill_self"] == "ok"


@needs_landlock
def test_abstract_unix_sockets_outside_the_domain_are_denied(abstract_listener: str) -> None:
    """With ABI >= 6, connecting to an abstract unix socket the test (outside the domain)
    listens on fails with PermissionError; unrestricted, it succeeds."""
    body = 'attempt("connect", lambda: unix_connect(ARGS["name"]))\n'
    free = run_child(body, restrict=False, name=abstract_listener)
    assert free == {"connect": "ok"}
    if KERNEL_ABI < 6:
        pytest.skip(f"Landlock ABI {KERNEL_ABI} < 6 cannot scope abstract unix sockets")
    locked = run_child(body, readable=[], name=abstract_listener)
    assert locked["connect"] == DENIED_SCOPE


@needs_landlock
def test_restrictions_are_inherited_by_forked_children(tree: dict[str, str]) -> None:
    """A child forked after restrict_self is in the same domain: it is denied what the
    parent is denied, and may signal the parent (same domain)."""
    out = run_child(
        """
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    attempt("child_read_out", lambda: read(ARGS["out"] + "/secret.txt"))
    attempt("child_kill_parent", lambda: os.kill(os.getppid(), 0))
    os.write(w, json.dumps(OUT).encode())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
OUT.update(json.loads(os.read(r, 65536)))
""",
        readable=[tree["ro"]],
        out=tree["out"],
    )
    assert out["child_read_out"] == DENIED_FS
    assert out["child_kill_parent"] == "ok"


@needs_landlock
@pytest.mark.parametrize("abi", range(1, 8))
def test_best_effort_on_older_abis(abi: int, tree: dict[str, str], tcp_listener: int) -> None:
    """The ruleset built for each older ABI is accepted by the kernel (attr size and
    masks) and enforces just what that ABI can: fs always, TRUNCATE from 3, TCP from 4,
    signal scoping from 6."""
    if abi > KERNEL_ABI:
        pytest.skip(f"the kernel's Landlock ABI is {KERNEL_ABI}")
    out = run_child(
        """
if ctypes.CDLL(None).prctl(38, 1, 0, 0, 0) != 0:
    raise SystemExit("prctl failed")
OUT["result"] = result_dict(_landlock._enforce(ARGS["abi"], [ARGS["ro"]]))
attempt("read", lambda: read(ARGS["ro"] + "/data.txt"))
attempt("read_out", lambda: read(ARGS["out"] + "/secret.txt"))
attempt("write", lambda: open(ARGS["ro"] + "/data.txt", "ab").close())
attempt("truncate", lambda: os.truncate(ARGS["ro"] + "/sub/deep.txt", 0))
attempt("connect", lambda: tcp_connect(ARGS["port"]))
attempt("kill_parent", lambda: os.kill(os.getppid(), 0))
""",
        restrict=False,
        abi=abi,
        ro=tree["ro"],
        out=tree["out"],
        port=tcp_listener,
    )
    assert out["result"]["abi"] == abi
    assert out["result"]["net"] == (abi >= 4)
    assert out["result"]["scoped"] == (abi >= 6)
    assert out["read"] == "ok"
    assert out["read_out"] == out["write"] == DENIED_FS
    assert out["truncate"] == (DENIED_FS if abi >= 3 else "ok")
    assert out["connect"] == (DENIED_FS if abi >= 4 else "ok")
    assert out["kill_parent"] == (DENIED_SCOPE if abi >= 6 else "ok")


def _no_new_privs_already_set() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("NoNewPrivs:"):
            return line.split()[1] == "1"
    return False


# Run as root, the child drops to nobody (uid/gid 65534), which clears its capabilities.
DROP_PRIVILEGES = """
if os.getuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
for line in open("/proc/self/status"):
    if line.startswith("CapEff:"):
        caps = int(line.split()[1], 16)
        OUT["cap_sys_admin"] = bool(caps & (1 << 21))
        OUT["cap_dac"] = bool(caps & 0b110)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
"""


@needs_landlock
@pytest.mark.skipif(
    _no_new_privs_already_set(), reason="no_new_privs is already set on the test process"
)
def test_without_no_new_privs_an_unprivileged_caller_is_refused() -> None:
    """Without PR_SET_NO_NEW_PRIVS (and without CAP_SYS_ADMIN) restrict_self raises
    LandlockError(EPERM) with a hint; after setting it, the same call succeeds.  Run as
    root, the child first drops to nobody, so the check is real rather than skipped."""
    out = run_child(
        DROP_PRIVILEGES
        + """
try:
    _landlock.restrict_self([])
except _landlock.LandlockError as exc:
    OUT["error"] = [exc.errno, str(exc)]
ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)
OUT["result"] = result_dict(_landlock.restrict_self([]))
""",
        restrict=False,
    )
    if out["cap_sys_admin"]:
        pytest.skip("the child keeps CAP_SYS_ADMIN, which makes the call legal")
    err, message = out["error"]
    assert err == errno.EPERM
    assert "landlock_restrict_self" in message
    assert "EPERM" in message
    assert "PR_SET_NO_NEW_PRIVS" in message
    assert out["result"]["abi"] == KERNEL_ABI


@needs_landlock
def test_an_existing_but_unreachable_path_is_an_error(tmp_path: Path) -> None:
    """Only missing paths are skipped: a readable path the caller may not even open
    with O_PATH (here: beneath a mode-000 dir, as nobody when run as root) raises LandlockError
    (EACCES) naming it, and nothing is enforced."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    tmp_path.chmod(0o000)
    try:
        out = run_child(
            DROP_PRIVILEGES
            + """
ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)
try:
    _landlock.restrict_self(ARGS["readable"])
except _landlock.LandlockError as exc:
    OUT["error"] = [exc.errno, str(exc)]
attempt("read_etc", lambda: read("/etc/hostname"))
""",
            restrict=False,
            readable=[str(hidden)],
        )
    finally:
        tmp_path.chmod(0o700)
    if out["cap_dac"]:
        pytest.skip("the child can search any directory (CAP_DAC_*), so nothing is unreachable")
    err, message = out["error"]
    assert err == errno.EACCES
    assert str(hidden) in message
    assert "EACCES" in message
    assert out["read_etc"] in ("ok", "FileNotFoundError(ENOENT)")  # not restricted


# --- documented gaps: what Landlock ABI <= 7 does not cover ------------------------


@needs_landlock
def test_known_gaps_metadata_udp_and_pathname_unix_sockets(tree: dict[str, str]) -> None:
    """Pins what Landlock (ABI <= 7) leaves open, so nobody assumes otherwise: stat of
    any path, chmod/utime (also chown, xattrs) of files in reach, UDP sends, and
    connecting to a pathname unix socket are NOT restricted.  The worker must not rely
    on Landlock for these (seccomp, dropped privileges)."""
    sock_path = os.path.join(tree["out"], "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(sock_path)
        srv.listen(8)
        out = run_child(
            """
attempt("stat_out", lambda: os.stat(ARGS["out"] + "/secret.txt"))
attempt("utime_in", lambda: os.utime(ARGS["readable"][0] + "/data.txt"))
attempt("chmod_in", lambda: os.chmod(ARGS["readable"][0] + "/data.txt", 0o644))
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
    b"x", ("127.0.0.1", 9)))
attempt("unix_path", lambda: unix_connect(ARGS["sock"]))
""",
            readable=[tree["ro"]],
            out=tree["out"],
            sock=sock_path,
        )
    assert out["stat_out"] == out["utime_in"] == out["chmod_in"] == out["udp"] == "ok"
    assert out["unix_path"] == "ok"
