"""The door: every refusal status, the attacks the issue names, and what admission guarantees."""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion import Environment, Refusal, Status, Strategy
from bastion._sandbox import sandboxed
from bastion._trust import TrustStore

from .conftest import GOOD_STRATEGY, WS, one_error_line


def refusal(outcome: Strategy | Refusal) -> Refusal:
    assert isinstance(outcome, Refusal), f"expected a refusal, got {outcome!r}"
    return outcome


# ---------------------------------------------------------------- the happy path


def test_signed_whitelisted_strategy_is_admitted(signed_ws: WS, any_host: str) -> None:
    """A signed, whitelisted file by a trusted key loads, with its facts and hooks."""
    outcome = signed_ws.admit("good.py")
    assert isinstance(outcome, Strategy)
    assert outcome.info.status is Status.LOADED_OK
    assert outcome.info.signer == signed_ws.key().id
    assert outcome.info.whitelist_version == 1
    assert outcome.implemented_hooks() == ["on_bar"]
    assert dict(outcome.params) == {"n": 3}


def test_strategy_module_is_not_importable_by_others(signed_ws: WS) -> None:
    """An admitted strategy is never put in sys.modules, so nothing else can import it."""
    outcome = signed_ws.admit("good.py")
    assert isinstance(outcome, Strategy)
    assert outcome.host.module.__name__ not in sys.modules  # type: ignore[attr-defined]


# ---------------------------------------------------------------- one test per status


def test_unsigned(ws: WS) -> None:
    """A file with no detached signature is refused as unsigned."""
    ws.write("plain.py")
    r = refusal(ws.admit("plain.py"))
    assert r.status is Status.UNSIGNED
    assert "bastion sign plain.py" in r.reason


def test_not_whitelisted(signed_ws: WS) -> None:
    """A signature alone is not enough: the name must be in the whitelist."""
    ws = signed_ws
    ws.write("other.py")
    ws.sign("other.py")
    doc = json.loads((ws.signatures / "whitelist.json").read_bytes())
    # Re-issue a whitelist without other.py through the real signing path.
    (ws.signatures / "whitelist.json").unlink()
    (ws.signatures / "whitelist.json.minisig").unlink()
    ws.sign("good.py")
    assert "other.py" in doc["strategies"]
    assert ws.status("other.py") is Status.NOT_WHITELISTED


def test_hash_mismatch_file_changed_after_signing(signed_ws: WS) -> None:
    """Editing a file after it was approved is refused before any of it runs."""
    ws = signed_ws
    ws.write("good.py", GOOD_STRATEGY + "\nraise SystemExit('must never run')\n")
    r = refusal(ws.admit("good.py"))
    assert r.status is Status.HASH_MISMATCH
    assert "changed after it was approved" in r.reason


def test_bad_signature(signed_ws: WS) -> None:
    """A signature whose bytes were altered does not verify."""
    sig = signed_ws.signatures / "good.py.minisig"
    lines = sig.read_text().splitlines(True)
    blob = bytearray(__import__("base64").b64decode(lines[1]))
    blob[-1] ^= 0x01
    lines[1] = __import__("base64").b64encode(bytes(blob)).decode() + "\n"
    sig.write_text("".join(lines))
    r = refusal(signed_ws.admit("good.py"))
    assert r.status is Status.BAD_SIGNATURE
    assert "does not match" in r.reason


def test_tampered_trusted_comment(signed_ws: WS) -> None:
    """Changing the trusted comment breaks the global signature."""
    sig = signed_ws.signatures / "good.py.minisig"
    text = sig.read_text().replace(
        "bastion-strategy file:good.py", "bastion-strategy file:good.py "
    )
    sig.write_text(text)
    r = refusal(signed_ws.admit("good.py"))
    assert r.status is Status.BAD_SIGNATURE
    assert "trusted comment was altered" in r.reason


def test_unknown_key_signature_by_untrusted_key(signed_ws: WS) -> None:
    """A valid signature made by a key the workspace does not trust is refused."""
    ws = signed_ws
    mallory = ws.key("mallory", trust=False)
    # Mallory writes her own whitelist (bastion sign would refuse her untrusted key).
    from bastion._signing import sign_strategies
    from bastion._trust import write_whitelist

    write_whitelist(
        ws.signatures,
        {"good.py": "0" * 64},
        mallory,
        version=9,
        now=datetime.now(UTC),
        valid_for=timedelta(days=1),
    )
    r = refusal(ws.admit("good.py"))
    # The whitelist itself is now signed by mallory: refused at the whitelist.
    assert r.status is Status.WHITELIST_INVALID
    assert mallory.id in r.reason
    # alice will not build on a whitelist she cannot verify unless told to replace it.
    from bastion import TrustError

    with pytest.raises(TrustError, match="cannot be trusted"):
        ws.sign("good.py")
    sign_strategies(ws.workspace, ws.key(), ["good.py"], replace_whitelist=True)
    assert ws.status("good.py") is Status.LOADED_OK
    # With a trusted whitelist but mallory's detached signature: unknown-key.
    from bastion._minisign import sign

    data = (ws.strategies / "good.py").read_bytes()
    from bastion._trust import sha256_hex, strategy_trusted_comment

    forged = sign(
        mallory.private,
        data,
        trusted_comment=strategy_trusted_comment(
            "good.py", sha256_hex(data), datetime.now(UTC), mallory.id
        ),
        untrusted_comment="x",
    )
    (ws.signatures / "good.py.minisig").write_bytes(forged.encode())
    r = refusal(ws.admit("good.py"))
    assert r.status is Status.UNKNOWN_KEY
    assert "bastion trust add" in r.reason


def test_revoked_key(signed_ws: WS) -> None:
    """After its key is revoked, nothing that key signed loads."""
    ws = signed_ws
    TrustStore.load(ws.signatures).revoke(ws.key().id, "laptop stolen", datetime.now(UTC))
    r = refusal(ws.admit("good.py"))
    # The whitelist was signed by the same key, so the whitelist goes first.
    assert r.status is Status.WHITELIST_INVALID
    assert "revoked" in r.reason


def test_revoked_key_on_strategy_signature(signed_ws: WS) -> None:
    """A strategy signed by a revoked key is refused as revoked-key even under a good whitelist."""
    ws = signed_ws
    bob = ws.key("bob")
    ws.sign("good.py", key=bob)  # bob signs the file...
    alice = ws.key()
    # ...then alice re-issues the whitelist (by signing another file) and bob is revoked.
    ws.write("other.py")
    ws.sign("other.py", key=alice)
    TrustStore.load(ws.signatures).revoke(bob.id, "left the firm", datetime.now(UTC))
    r = refusal(ws.admit("good.py"))
    assert r.status is Status.REVOKED_KEY
    assert "left the firm" in r.reason
    assert ws.status("other.py") is Status.LOADED_OK


def test_whitelist_expired(ws: WS) -> None:
    """An expired whitelist admits nothing."""
    ws.write("good.py")
    ws.sign("good.py", valid_for=timedelta(days=1), now=datetime.now(UTC) - timedelta(days=2))
    r = refusal(ws.admit("good.py"))
    assert r.status is Status.WHITELIST_EXPIRED
    assert "expired" in r.reason


def test_whitelist_rollback(signed_ws: WS) -> None:
    """An older whitelist version, after a newer one was seen, is refused."""
    ws = signed_ws
    old = {p.name: p.read_bytes() for p in ws.signatures.iterdir() if p.is_file()}
    ws.write("second.py")
    ws.sign("second.py")  # version 2
    assert ws.status("good.py") is Status.LOADED_OK  # version 2 seen and recorded
    for name, data in old.items():  # an attacker restores version 1
        (ws.signatures / name).write_bytes(data)
    r = refusal(ws.admit("good.py"))
    assert r.status is Status.WHITELIST_ROLLBACK
    assert "older than version 2" in r.reason


def test_whitelist_same_version_different_content_is_rollback(signed_ws: WS, tmp_path) -> None:
    """A version number already accepted cannot come back with other contents."""
    ws = signed_ws
    assert ws.status("good.py") is Status.LOADED_OK  # version 1 accepted
    # Another workspace issues its own version 1; its manifest is copied over ours.
    ws.write("evil.py")
    saved = (ws.strategies / "good.py").read_bytes()
    (ws.signatures / "whitelist.json").unlink()
    (ws.signatures / "whitelist.json.minisig").unlink()
    state = ws.workspace.data_dir / "whitelist-state.json"
    kept = state.read_bytes()
    state.unlink()
    ws.sign("evil.py")  # version 1 again, different contents
    state.write_bytes(kept)
    assert (ws.strategies / "good.py").read_bytes() == saved
    assert ws.status("evil.py") is Status.WHITELIST_ROLLBACK


def test_whitelist_missing(ws: WS) -> None:
    """A signature without any whitelist is refused."""
    ws.write("good.py")
    ws.sign("good.py")
    (ws.signatures / "whitelist.json").unlink()
    assert ws.status("good.py") is Status.WHITELIST_MISSING


def test_whitelist_tampered(signed_ws: WS) -> None:
    """Editing whitelist.json (e.g. to approve another hash) breaks its signature."""
    ws = signed_ws
    path = ws.signatures / "whitelist.json"
    doc = json.loads(path.read_bytes())
    doc["strategies"]["good.py"] = "0" * 64
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    r = refusal(ws.admit("good.py"))
    assert r.status is Status.WHITELIST_INVALID


def test_legacy_signature_refused(signed_ws: WS) -> None:
    """minisign still accepts legacy (non-prehashed) signatures; Bastion does not."""
    ws = signed_ws
    from bastion._minisign import ALG_LEGACY, Signature

    key = ws.key()
    data = (ws.strategies / "good.py").read_bytes()
    sig = Signature.parse((ws.signatures / "good.py.minisig").read_bytes(), "sig")
    legacy_sig = key.private.sign(data)
    legacy = Signature(
        algorithm=ALG_LEGACY,
        key_id=sig.key_id,
        signature=legacy_sig,
        trusted_comment=sig.trusted_comment,
        global_signature=key.private.sign(legacy_sig + sig.trusted_comment.encode()),
        untrusted_comment="legacy",
    )
    (ws.signatures / "good.py.minisig").write_bytes(legacy.encode())
    r = refusal(ws.admit("good.py"))
    assert r.status is Status.LEGACY_SIGNATURE


def test_swapped_file_under_another_name(signed_ws: WS) -> None:
    """A signed file copied, with its signature, over another whitelisted name is refused.

    Both files are signed and whitelisted; b.py's bytes and signature are put in
    place of a.py (and the whitelist entry is genuine for b's bytes under b's
    name only). The trusted comment's file name gives it away.
    """
    ws = signed_ws
    ws.write("a.py", GOOD_STRATEGY + "# a\n")
    ws.write("b.py", GOOD_STRATEGY + "# b\n")
    ws.sign("a.py", "b.py")
    # Approve b's hash under a's name too (an operator mistake), then swap.
    shutil.copyfile(ws.strategies / "b.py", ws.strategies / "a.py")
    shutil.copyfile(ws.signatures / "b.py.minisig", ws.signatures / "a.py.minisig")
    assert refusal(ws.admit("a.py")).status is Status.HASH_MISMATCH
    from bastion._signing import sign_strategies

    # Even when the whitelist approves those bytes under a.py, the signature names b.py.
    sign_strategies(ws.workspace, ws.key(), ["a.py"])
    shutil.copyfile(ws.signatures / "b.py.minisig", ws.signatures / "a.py.minisig")
    r = refusal(ws.admit("a.py"))
    assert r.status is Status.WRONG_FILE
    assert "made for 'b.py'" in r.reason


def test_symlinked_strategy_refused(signed_ws: WS, tmp_path) -> None:
    """A symbolic link in strategies/ is refused even if its target is signed."""
    ws = signed_ws
    outside = tmp_path / "elsewhere.py"
    outside.write_text(GOOD_STRATEGY)
    os.symlink(outside, ws.strategies / "linked.py")
    assert refusal(ws.admit("linked.py")).status is Status.SYMLINK
    os.symlink(ws.strategies / "good.py", ws.strategies / "alias.py")
    assert refusal(ws.admit("alias.py")).status is Status.SYMLINK


def test_file_outside_strategies_refused(signed_ws: WS, tmp_path) -> None:
    """Only files directly inside strategies/ may load."""
    ws = signed_ws
    (ws.strategies / "sub").mkdir()
    shutil.copy(ws.strategies / "good.py", ws.strategies / "sub" / "good.py")
    gate = ws.gate()
    assert refusal(gate.admit(ws.strategies / "sub" / "good.py")).status is Status.OUTSIDE
    assert refusal(gate.admit(tmp_path / "good.py")).status is Status.OUTSIDE


@pytest.mark.parametrize("name", ["my-strategy.py", "__init__.py", "1st.py", "a b.py"])
def test_bad_name_refused(ws: WS, name: str) -> None:
    """A file name must be a plain identifier ending in .py."""
    ws.write(name)
    assert ws.status(name) is Status.BAD_NAME


def test_syntax_error(ws: WS, any_host: str) -> None:
    """A file that does not compile is refused with its line number (unsigned dev load)."""
    ws.write("broken.py", "def on_bar(:\n")
    r = refusal(ws.admit("broken.py", allow_unsigned=True))
    assert r.status is Status.SYNTAX_ERROR
    assert "line 1" in r.reason


UNCOMPILABLE = {
    "deep-parentheses": "x = " + "(" * 300 + "1" + ")" * 300 + "\n",
    "deep-unary": "x = " + "-" * 500_000 + "1\n",
    "deep-blocks": "".join(" " * i + "if 1:\n" for i in range(150)) + " " * 150 + "pass\n",
    "deep-brackets": "x = " + "[" * 100_000 + "\n",
}


@pytest.mark.parametrize("source", UNCOMPILABLE.values(), ids=UNCOMPILABLE.keys())
def test_source_the_compiler_cannot_handle_is_one_line_everywhere(
    ws: WS, any_host: str, cli: Any, source: str
) -> None:
    """Nested too deep or too large for Python's compiler: the loader refuses it as a
    syntax error, and sign and verify say so in one line; never a RecursionError or
    MemoryError traceback."""
    ws.write("deep.py", source)
    r = refusal(ws.admit("deep.py", allow_unsigned=True))
    assert r.status is Status.SYNTAX_ERROR and "\n" not in r.reason
    ws.key()  # a trusted key to sign with
    result = cli("sign", "deep.py", "--key", ws.keys_dir / "alice.key", "--home", ws.home)
    assert result.exit_code != 0
    one_error_line(result.stderr, "deep.py")
    assert not (ws.signatures / "deep.py.minisig").exists()
    result = cli("verify", "deep.py", "--home", ws.home)
    assert result.exit_code != 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from bastion import strategy\n@strategy.hook\ndef on_bars(ctx, bar):\n    pass\n",
            "unknown hook 'on_bars'",
        ),
        (
            "from bastion import strategy\n@strategy.hook\n"
            "def on_bar(ctx, bar, extra):\n    pass\n",
            "extra",
        ),
        ("def on_bar(ctx, bar):\n    pass\n", "decorate it with @strategy.hook"),
        ("x = 1\n", "implements no strategy hook"),
        (
            "from bastion import strategy\nPARAMS = {'a': object()}\n@strategy.hook\n"
            "def on_bar(ctx, bar):\n    pass\n",
            "PARAMS",
        ),
    ],
    ids=["misspelt-hook", "wrong-arguments", "undecorated", "no-hooks", "bad-params"],
)
def test_bad_interface(ws: WS, source: str, expected: str, any_host: str) -> None:
    """Hook names and arguments are validated by pluggy against the strategy hookspecs."""
    ws.write("iface.py", source)
    ws.sign("iface.py")
    r = refusal(ws.admit("iface.py"))
    assert r.status is Status.BAD_INTERFACE
    assert expected in r.reason


def test_load_error(ws: WS, any_host: str) -> None:
    """A module body that raises is refused as load-error, naming the exception."""
    ws.write("boom.py", "raise RuntimeError('kaboom')\n")
    ws.sign("boom.py")
    r = refusal(ws.admit("boom.py"))
    assert r.status is Status.LOAD_ERROR
    assert "kaboom" in r.reason


def test_example_key_refused_for_live(signed_ws: WS, monkeypatch: pytest.MonkeyPatch) -> None:
    """In live, anything signed by the bundled example key is refused."""
    import bastion._keys as keys

    monkeypatch.setattr(keys, "EXAMPLE_KEY_IDS", frozenset({signed_ws.key().id}))
    assert signed_ws.status("good.py") is Status.LOADED_OK
    r = refusal(signed_ws.admit("good.py", refuse_example_key=True))
    assert r.status is Status.EXAMPLE_KEY and "whitelist is signed by the example key" in r.reason


def test_example_key_signature_under_own_whitelist_refused_for_live(
    signed_ws: WS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's own whitelist does not make an example-key signature valid live."""
    import bastion._keys as keys

    ws = signed_ws
    example, operator = ws.key(), ws.key("operator")
    monkeypatch.setattr(keys, "EXAMPLE_KEY_IDS", frozenset({example.id}))
    ws.write("other.py")
    ws.sign("other.py", key=operator)  # whitelist now signed by the operator; good.py by example
    r = refusal(ws.admit("good.py", refuse_example_key=True))
    assert r.status is Status.EXAMPLE_KEY and "signed by the example key" in r.reason
    assert ws.status("other.py", refuse_example_key=True) is Status.LOADED_OK


# ---------------------------------------------------------------- imports


def test_strategy_cannot_import_sibling(
    ws: WS, monkeypatch: pytest.MonkeyPatch, any_host: str
) -> None:
    """A signed strategy importing an (unsigned) sibling from strategies/ is refused.

    The sibling would be importable if strategies/ were on sys.path; it is put
    there on purpose to show the guard does not rely on sys.path.
    """
    ws.write("helper.py", "raise SystemExit('the sibling ran')\n")
    ws.write("uses_helper.py", "import helper\n" + GOOD_STRATEGY)
    ws.sign("uses_helper.py")
    monkeypatch.syspath_prepend(str(ws.strategies))
    r = refusal(ws.admit("uses_helper.py"))
    assert r.status is Status.FORBIDDEN_IMPORT
    assert "import helper" in r.reason
    assert "helper" not in sys.modules


@pytest.mark.parametrize(
    "statement",
    [
        "import os",
        "import socket",
        "from subprocess import run",
        "import strategies.helper",
        "from . import helper",
        "import importlib",
        "__import__('os')",
        "from random import _os",
        "from json import decoder",
    ],
)
def test_strategy_import_guard(ws: WS, statement: str, any_host: str) -> None:
    """Only bastion's strategy API and pure-computation stdlib modules can be imported."""
    ws.write("imp.py", statement + "\n" + GOOD_STRATEGY)
    ws.sign("imp.py")
    assert refusal(ws.admit("imp.py")).status is Status.FORBIDDEN_IMPORT


def test_allowed_imports_work(ws: WS, any_host: str) -> None:
    """Computation modules and the strategy API import normally."""
    ws.write(
        "calc.py",
        "import math, statistics\nfrom collections import deque\nfrom decimal import Decimal\n"
        "import bastion.strategy\nfrom bastion.strategy import hook\n" + GOOD_STRATEGY,
    )
    ws.sign("calc.py")
    assert ws.status("calc.py") is Status.LOADED_OK


def test_strategy_sees_a_restricted_bastion(ws: WS, any_host: str) -> None:
    """``import bastion`` gives a strategy only the strategy API, not the kernel."""
    ws.write(
        "peek.py",
        "import bastion\nassert not hasattr(bastion, 'Kernel')\n"
        "assert not hasattr(bastion, 'Gate')\n" + GOOD_STRATEGY,
    )
    ws.sign("peek.py")
    assert ws.status("peek.py") is Status.LOADED_OK


def test_open_is_not_available(ws: WS, any_host: str) -> None:
    """File and compiler built-ins are removed from a strategy's namespace."""
    ws.write("opener.py", "open('/etc/passwd')\n" + GOOD_STRATEGY)
    ws.sign("opener.py")
    r = refusal(ws.admit("opener.py"))
    assert r.status is Status.LOAD_ERROR
    assert "NameError" in r.reason


# ---------------------------------------------------------------- read once, no bytecode


def test_no_pycache_written(signed_ws: WS, any_host: str) -> None:
    """Admitting a strategy writes no __pycache__ anywhere in the workspace."""
    assert isinstance(signed_ws.admit("good.py"), Strategy)
    assert not list(signed_ws.home.rglob("__pycache__"))
    assert not list(signed_ws.home.rglob("*.pyc"))


def test_compiles_exactly_the_verified_bytes(
    signed_ws: WS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is read once; a swap after verification cannot change what runs."""
    ws = signed_ws
    gate = ws.gate()
    checked = gate.check(ws.strategies / "good.py")
    assert not isinstance(checked, Refusal)
    info, source = checked
    ws.write("good.py", "raise SystemExit('swapped after verification')\n")
    from bastion._host import LoadReport, in_process

    for launcher in (in_process, sandboxed()):
        host = launcher(info, source)
        try:
            report = host.load()
        finally:
            host.close()
        assert isinstance(report, LoadReport), report
        assert report.hooks == ("on_bar",)


def test_file_read_once(signed_ws: WS, monkeypatch: pytest.MonkeyPatch) -> None:
    """admit() opens the strategy file exactly once."""
    opened: list[str] = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    gate = signed_ws.gate()
    monkeypatch.setattr(os, "open", counting_open)
    outcome = gate.admit(signed_ws.strategies / "good.py")  # in a sandboxed worker
    assert isinstance(outcome, Strategy)
    outcome.close()
    assert [p for p in opened if p.endswith("good.py")] == [str(signed_ws.strategies / "good.py")]


# ---------------------------------------------------------------- unsigned policy


def test_unsigned_allowed_only_when_asked(ws: WS) -> None:
    """With allow_unsigned an unsigned file loads, marked unsigned; tampered files still don't."""
    ws.write("plain.py")
    outcome = ws.admit("plain.py", allow_unsigned=True)
    assert isinstance(outcome, Strategy)
    assert outcome.info.unsigned and outcome.info.status is Status.LOADED_UNSIGNED
    ws.write("signed.py")
    ws.sign("signed.py")
    ws.write("signed.py", GOOD_STRATEGY + "# edited\n")
    assert ws.status("signed.py", allow_unsigned=True) is Status.HASH_MISMATCH


# ---------------------------------------------------------------- property


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_is_refused(signed_ws: WS, data: st.DataObject) -> None:
    """Changing any one byte of a signed file, to any other value, is refused."""
    path = signed_ws.strategies / "good.py"
    original = path.read_bytes()
    index = data.draw(st.integers(0, len(original) - 1), label="index")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != original[index]), label="value")
    changed = bytearray(original)
    changed[index] = value
    path.write_bytes(bytes(changed))
    try:
        outcome = signed_ws.admit("good.py")
        assert isinstance(outcome, Refusal)
        assert outcome.status is Status.HASH_MISMATCH
    finally:
        path.write_bytes(original)


def test_environment_default_is_development(ws: WS) -> None:
    assert ws.workspace.environment is Environment.DEVELOPMENT


@pytest.mark.parametrize("exc", ["SystemExit(0)", "GeneratorExit()", "BaseException('x')"])
def test_module_body_cannot_stop_the_kernel(ws: WS, exc: str, any_host: str) -> None:
    """A verified strategy raising SystemExit (or any BaseException) is refused, not obeyed."""
    ws.write("quitter.py", f"raise {exc}\n")
    ws.sign("quitter.py")
    assert refusal(ws.admit("quitter.py")).status is Status.LOAD_ERROR


def test_a_fifo_or_a_directory_named_like_a_strategy_is_refused_not_waited_on(ws: WS) -> None:
    """A FIFO in strategies/ would block a plain open() for ever, and a directory named
    x.py cannot be read: each is refused at once, naming what it is."""
    os.mkfifo(ws.strategies / "fifo.py")
    (ws.strategies / "folder.py").mkdir()
    assert refusal(ws.admit("fifo.py")).reason == "a FIFO (named pipe), not a regular file"
    assert refusal(ws.admit("folder.py")).reason == "a directory, not a regular file"
    assert ws.status("fifo.py") is Status.UNREADABLE


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f", "\u061c"])
def test_bidirectional_control_characters_are_refused_even_when_signed(ws: WS, char: str) -> None:
    """Trojan Source: a bidi control character makes code display differently from what
    runs.  A file holding one is refused with its line and code point, even when its
    signature is otherwise valid (signed before the rule, or by hand)."""
    ws.write("tricky.py", GOOD_STRATEGY)
    ws.sign("tricky.py")
    ws.write("tricky.py", GOOD_STRATEGY + f"# ok {char} done\n")
    lines = GOOD_STRATEGY.count("\n") + 1
    r = refusal(ws.admit("tricky.py"))
    assert r.status is Status.BIDI_CONTROL
    assert r.reason.startswith(f"line {lines} holds U+{ord(char):04X} (")


def test_a_name_with_a_newline_stays_on_one_line(ws: WS) -> None:
    """A control character in a file name is written out, so a refusal is one line."""
    ws.write("evil\nname.py")
    r = refusal(ws.admit("evil\nname.py"))
    assert r.status is Status.BAD_NAME
    assert "\n" not in r.line() and "evil\\x0aname.py" in r.line()


def test_unexpected_entries_are_listed_as_ignored(ws: WS) -> None:
    """What strategies/ holds besides candidates (bytecode, caches, notes, hidden files)
    is listed, with why it is never loaded."""
    ws.write("good.py")
    (ws.strategies / "__pycache__").mkdir()
    (ws.strategies / "old.pyc").write_bytes(b"\x00")
    (ws.strategies / "notes.txt").write_text("x")
    (ws.strategies / ".hidden.py").write_text("x")
    ignored = {path.name: why for path, why in ws.gate().ignored()}
    assert set(ignored) == {"__pycache__", "old.pyc", "notes.txt", ".hidden.py"}
    assert "bytecode" in ignored["old.pyc"] and "cache" in ignored["__pycache__"]
