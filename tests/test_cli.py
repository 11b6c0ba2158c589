"""The bastion command: exit codes, one-line errors for bad input, --json, --home."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from bastion import Kernel

from .conftest import CLI, GOOD_STRATEGY, REPO, WS, one_error_line

# ------------------------------------------------------------------ keys / trust / sign


def test_full_signing_flow(cli: CLI, ws: WS) -> None:
    """keys new -> trust add -> sign -> verify, entirely through the CLI."""
    home, keys = ws.home, ws.keys_dir
    r = cli("keys", "new", "carol", "--dir", keys)
    assert r.exit_code == 0, r.output
    assert "PRIVATE KEY" not in r.output and "BEGIN" not in r.output
    assert stat.S_IMODE((keys / "carol.key").stat().st_mode) == 0o600
    assert cli("trust", "add", keys / "carol.pub", "--home", home).exit_code == 0
    ws.write("mine.py")
    r = cli("sign", "mine.py", "--key", keys / "carol.key", "--home", home)
    assert r.exit_code == 0, r.output
    assert "whitelist version 1" in r.output
    r = cli("verify", "--home", home)
    assert r.exit_code == 0, r.output
    assert "mine.py: ok" in r.output


def test_key_by_name_from_keys_dir(cli: CLI, ws: WS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_KEYS_DIR", str(ws.keys_dir))
    assert cli("keys", "new", "dave").exit_code == 0
    cli("trust", "add", ws.keys_dir / "dave.pub", "--home", ws.home)
    ws.write("mine.py")
    assert cli("sign", "mine.py", "--key", "dave", "--home", ws.home).exit_code == 0


def test_signing_with_untrusted_key_is_refused(cli: CLI, signed_ws: WS) -> None:
    """An untrusted key cannot re-sign the whitelist (it would lock every strategy out)."""
    ws = signed_ws
    before = (ws.signatures / "whitelist.json").read_bytes()
    cli("keys", "new", "erin", "--dir", ws.keys_dir)
    ws.write("mine.py")
    r = cli("sign", "mine.py", "--key", ws.keys_dir / "erin.key", "--home", ws.home)
    assert r.exit_code == 1
    one_error_line(r.stderr, "not trusted", "bastion trust add")
    assert (ws.signatures / "whitelist.json").read_bytes() == before
    assert not (ws.signatures / "mine.py.minisig").exists()


def test_trust_list_and_revoke(cli: CLI, signed_ws: WS) -> None:
    ws = signed_ws
    kid = ws.key().id
    r = cli("trust", "list", "--json", "--home", ws.home)
    assert [row["key_id"] for row in json.loads(r.stdout)] == [kid]
    r = cli("trust", "revoke", kid.lower(), "--reason", "leaked", "--home", ws.home)
    assert r.exit_code == 0, r.output
    rows = json.loads(cli("trust", "list", "--json", "--home", ws.home).stdout)
    assert rows[0]["status"] == "revoked" and rows[0]["reason"] == "leaked"
    r = cli("verify", "--home", ws.home)
    assert r.exit_code == 1 and "revoked" in r.stderr


def test_trust_list_orders_keys_by_status_then_name(cli: CLI, signed_ws: WS) -> None:
    """Keys are listed trusted first, then by name: random ids must not shuffle the list."""
    ws = signed_ws
    for name in ("zed", "Bob", "amy"):
        ws.key(name)
    bob = next(
        r["key_id"]
        for r in json.loads(cli("trust", "list", "--json", "--home", ws.home).stdout)
        if r["name"] == "Bob"
    )
    assert cli("trust", "revoke", bob, "--home", ws.home).exit_code == 0
    rows = json.loads(cli("trust", "list", "--json", "--home", ws.home).stdout)
    assert [(r["status"], r["name"]) for r in rows] == [
        ("trusted", "alice"),
        ("trusted", "amy"),
        ("trusted", "zed"),
        ("revoked", "Bob"),
    ]


# ------------------------------------------------------------------ verify / strategies


def test_verify_exit_codes_and_one_line_per_refusal(cli: CLI, signed_ws: WS) -> None:
    """verify exits 0 only if every file passes; each refused file gets one line."""
    ws = signed_ws
    ws.write("unsigned.py")
    ws.write("good.py", GOOD_STRATEGY + "# tampered\n")
    r = cli("verify", "--home", ws.home)
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    assert any("good.py: hash-mismatch:" in line for line in lines)
    assert any("unsigned.py: unsigned:" in line for line in lines)
    assert lines[-1] == "2 of 2 strategy files refused"
    r = cli("verify", "good", "--home", ws.home)
    assert r.exit_code == 1


def test_verify_named_file(cli: CLI, signed_ws: WS) -> None:
    signed_ws.write("unsigned.py")
    assert cli("verify", "good.py", "--home", signed_ws.home).exit_code == 0
    assert cli("verify", "unsigned", "--home", signed_ws.home).exit_code == 1
    r = cli("verify", "missing.py", "--home", signed_ws.home)
    assert r.exit_code == 1 and "missing.py: unreadable: no such file" in r.stderr


def test_verify_empty_folder_fails(cli: CLI, ws: WS) -> None:
    r = cli("verify", "--home", ws.home)
    assert r.exit_code == 1 and "no strategy files" in r.stderr


def test_strategies_json_lists_every_status(cli: CLI, signed_ws: WS) -> None:
    ws = signed_ws
    ws.write("unsigned.py")
    ws.write("bad-name.py")
    r = cli("strategies", "--json", "--home", ws.home)
    assert r.exit_code == 0
    rows = {row["file"]: row for row in json.loads(r.stdout)}
    assert rows["good.py"]["status"] == "loaded-ok"
    assert rows["good.py"]["hooks"] == ["on_bar"]
    assert rows["unsigned.py"]["status"] == "unsigned"
    assert rows["bad-name.py"]["status"] == "bad-name"


def test_strategies_table(cli: CLI, signed_ws: WS) -> None:
    r = cli("strategies", "--home", signed_ws.home)
    assert r.exit_code == 0 and "loaded-ok" in r.stdout


# ------------------------------------------------------------------ unsigned policy


def test_allow_unsigned_in_development_is_loud(cli: CLI, ws: WS) -> None:
    ws.write("plain.py")
    r = cli("strategies", "--json", "--allow-unsigned", "--home", ws.home)
    assert r.exit_code == 0
    assert json.loads(r.stdout)[0]["status"] == "loaded-unsigned"
    assert r.stderr.count("WARNING") == 1  # loud, once
    log = (ws.home / ".bastion" / "development" / "logs" / "system.jsonl").read_text()
    assert "unsigned_strategy_loaded" in log


@pytest.mark.parametrize("env", ["paper", "live"])
def test_allow_unsigned_refused_outside_development(cli: CLI, ws: WS, env: str) -> None:
    ws.write("plain.py")
    r = cli("strategies", "--allow-unsigned", "--env", env, "--home", ws.home)
    assert r.exit_code == 2
    one_error_line(r.stderr, "only in development", env)


def test_allow_unsigned_env_var(cli: CLI, ws: WS, monkeypatch: pytest.MonkeyPatch) -> None:
    ws.write("plain.py")
    monkeypatch.setenv("BASTION_ALLOW_UNSIGNED", "1")
    r = cli("strategies", "--json", "--home", ws.home)
    assert json.loads(r.stdout)[0]["status"] == "loaded-unsigned"
    assert cli("verify", "--home", ws.home).exit_code == 1  # verify is always strict


def test_environments_keep_separate_state(cli: CLI, signed_ws: WS) -> None:
    ws = signed_ws
    cli("strategies", "--home", ws.home)
    cli("strategies", "--env", "paper", "--home", ws.home)
    assert (ws.home / ".bastion" / "development" / "whitelist-state.json").exists()
    assert (ws.home / ".bastion" / "paper" / "whitelist-state.json").exists()


# ------------------------------------------------------------------ bad input never crashes


def test_malformed_manifest(cli: CLI, signed_ws: WS) -> None:
    (signed_ws.signatures / "whitelist.json").write_text("{ this is not json")
    r = cli("verify", "--home", signed_ws.home)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "whitelist-invalid" in r.stderr


def test_corrupt_key_file_on_sign(cli: CLI, ws: WS) -> None:
    ws.keys_dir.mkdir()
    bad = ws.keys_dir / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    bad.chmod(0o600)
    ws.write("a.py")
    r = cli("sign", "a.py", "--key", bad, "--home", ws.home)
    assert r.exit_code == 1
    one_error_line(r.stderr, str(bad))


def test_corrupt_trusted_public_key(cli: CLI, signed_ws: WS) -> None:
    pub = next((signed_ws.signatures / "keys").glob("*.pub"))
    pub.write_text("garbage\n")
    r = cli("verify", "--home", signed_ws.home)
    assert r.exit_code == 1
    one_error_line(r.stderr, str(pub))


def test_trust_add_garbage(cli: CLI, ws: WS, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_bytes(b"\x00\x01")
    r = cli("trust", "add", junk, "--home", ws.home)
    assert r.exit_code == 1
    one_error_line(r.stderr, str(junk))
    r = cli("trust", "add", tmp_path / "missing.pub", "--home", ws.home)
    one_error_line(r.stderr, "missing.pub")


@pytest.mark.parametrize("damage", ["truncate", "garble", "empty"])
def test_damaged_signature_file(cli: CLI, signed_ws: WS, damage: str) -> None:
    sig = signed_ws.signatures / "good.py.minisig"
    data = sig.read_bytes()
    sig.write_bytes(
        {"truncate": data[:40], "garble": data.replace(b"R", b"*"), "empty": b""}[damage]
    )
    r = cli("verify", "--home", signed_ws.home)
    assert r.exit_code == 1
    assert "good.py: bad-signature:" in r.stderr and "good.py.minisig" in r.stderr


def test_syntax_error_strategy(cli: CLI, ws: WS) -> None:
    ws.write("broken.py", "def on_bar(:\n")
    r = cli("sign", "broken.py", "--key", ws.keys_dir / "alice.key", "--home", ws.home)
    ws.key()  # create it after, the first call must fail on the missing key
    assert r.exit_code == 1
    one_error_line(r.stderr)
    r = cli("sign", "broken.py", "--key", ws.keys_dir / "alice.key", "--home", ws.home)
    assert r.exit_code == 1
    one_error_line(r.stderr, "broken.py", "line 1")
    r = cli("strategies", "--json", "--allow-unsigned", "--home", ws.home)
    assert json.loads(r.stdout)[0]["status"] == "syntax-error"


def test_missing_home(cli: CLI, tmp_path: Path) -> None:
    r = cli("verify", "--home", tmp_path / "nope")
    assert r.exit_code == 2
    one_error_line(r.stderr, "--home", "no such directory")


def test_bad_env_value(cli: CLI, ws: WS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_ENV", "production")
    r = cli("strategies", "--home", ws.home)
    assert r.exit_code == 2
    one_error_line(r.stderr, "BASTION_ENV", "production")


def test_sign_outside_strategies(cli: CLI, ws: WS, tmp_path: Path) -> None:
    ws.key()
    outside = tmp_path / "x.py"
    outside.write_text(GOOD_STRATEGY)
    r = cli("sign", outside, "--key", ws.keys_dir / "alice.key", "--home", ws.home)
    assert r.exit_code == 1
    one_error_line(r.stderr, "only files directly in")


# ------------------------------------------------------------------ plugins / hooks


def test_plugins_json(cli: CLI, signed_ws: WS) -> None:
    r = cli("plugins", "--json", "--home", signed_ws.home)
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["bastion.plugins.signing"]["origin"] == "built-in"
    assert rows["strategy:good.py"]["origin"] == "strategy file"
    assert rows["strategy:good.py"]["hooks"] == ["on_bar"]


def test_plugins_table(cli: CLI, signed_ws: WS) -> None:
    r = cli("plugins", "--home", signed_ws.home)
    assert r.exit_code == 0 and "built-in" in r.stdout


def test_hooks_json(cli: CLI) -> None:
    rows = json.loads(cli("hooks", "--json").stdout)
    names = {(r["project"], r["name"]) for r in rows}
    assert ("bastion", "check_order") in names and ("bastion.strategy", "on_bar") in names


# ------------------------------------------------------------------ the bundled examples


def test_bundled_examples_verify(cli: CLI, tmp_path: Path) -> None:
    """The examples shipped in the repository are signed, whitelisted and load."""
    home = tmp_path / "clone"
    shutil.copytree(REPO / "strategies", home / "strategies")
    shutil.copytree(REPO / "signatures", home / "signatures")
    r = cli("verify", "--home", home)
    assert r.exit_code == 0, r.output
    rows = json.loads(cli("strategies", "--json", "--home", home).stdout)
    assert len(rows) >= 2 and all(row["status"] == "loaded-ok" for row in rows)


def test_bundled_examples_refused_in_live(cli: CLI, tmp_path: Path) -> None:
    """Live trading refuses whatever the example key signed."""
    home = tmp_path / "clone"
    shutil.copytree(REPO / "strategies", home / "strategies")
    shutil.copytree(REPO / "signatures", home / "signatures")
    r = cli("verify", "--env", "live", "--home", home)
    assert r.exit_code == 1
    assert r.stderr.count("example-key-refused") >= 2


def test_every_command_is_in_the_cli_reference(cli: CLI) -> None:
    """Each top-level command (built-in plugins' too) has its own section in
    docs/reference/cli.md, so a new command cannot ship undocumented."""
    from bastion.cli import build_cli

    reference = (REPO / "docs" / "reference" / "cli.md").read_text()
    group = build_cli(cli.kernel)
    assert len(group.commands) > 10
    missing = [name for name in group.commands if f"## `bastion {name}" not in reference]
    assert missing == []


def test_sign_refuses_what_verify_would_never_load(cli: CLI, ws: WS) -> None:
    """'bastion sign' refuses a FIFO (without waiting on it), a file over the size limit
    and a file with a bidirectional control character, each in one line naming the file;
    nothing is written."""
    key = ws.key()
    os.mkfifo(ws.strategies / "pipe.py")
    ws.write("huge.py", "x = 1\n" + "#" * (1024 * 1024) + "\n")
    ws.write("bidi.py", 'x = "\u202e"\n')
    for name, needle in [
        ("pipe", "a FIFO (named pipe), not a regular file"),
        ("huge", "larger than 1048576 bytes"),
        ("bidi", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    ]:
        r = cli("sign", name, "--key", key.path, "--home", ws.home)
        assert r.exit_code != 0
        one_error_line(r.stderr, f"{name}.py", needle)
    assert sorted(p.name for p in ws.signatures.iterdir()) == ["keys"]


def test_strategies_lists_ignored_entries_and_escapes_names(cli: CLI, ws: WS) -> None:
    """'bastion strategies' shows stray entries as ignored, and a file name with a
    control character written out."""
    ws.write("good.py")
    (ws.strategies / "__pycache__").mkdir()
    ws.write("bad\x1bname.py")
    rows = json.loads(cli("strategies", "--json", "--home", ws.home).stdout)
    assert {r["file"]: r["status"] for r in rows}["__pycache__"] == "ignored"
    table = cli("strategies", "--home", ws.home).stdout
    assert "bad\\x1bname.py" in table and "\x1b" not in table.replace("\x1b[", "")


def _sections(reference: str) -> dict[str, str]:
    """cli.md's ``## `bastion X` `` sections by command path (the heading's first words)."""
    import re

    sections: dict[str, str] = {}
    parts = re.split(r"^## ", reference, flags=re.M)
    for part in parts[1:]:
        heading, _, body = part.partition("\n")
        found = re.match(r"`(bastion(?: [a-z-]+)*)", heading)
        if found:
            sections[found.group(1)] = body
    return sections


def test_every_command_and_option_is_in_the_cli_reference() -> None:
    """Every command and subcommand the built-ins offer has its own section in
    docs/reference/cli.md, and every option it takes (but --help and the workspace
    options, documented once) is named in that section: the hand-written reference
    cannot fall behind the command line."""
    from bastion._reference import command_reference
    from bastion.cli import build_cli

    reference = (REPO / "docs" / "reference" / "cli.md").read_text()
    sections = _sections(reference)
    shared = {"--help", "--home", "--env", "--allow-unsigned"}
    missing = []
    for row in command_reference(build_cli(Kernel(entry_points=False))):
        body = sections.get(row["command"])
        if body is None:
            missing.append(row["command"])
            continue
        for option in row["options"]:
            names = [
                w.split("[")[0].strip(",") for w in option["option"].split() if w.startswith("--")
            ]
            for name in (n.split("/")[0] for n in names):
                if name not in shared and name not in body:
                    missing.append(f"{row['command']} {name}")
    assert missing == []


def test_commands_page_is_generated_from_the_command_line() -> None:
    """docs/reference/commands.md is exactly what 'bastion commands --markdown' prints
    for the built-in commands, so the help reference is the help itself."""
    from bastion._reference import command_markdown, command_reference
    from bastion.cli import build_cli

    page = (REPO / "docs" / "reference" / "commands.md").read_text()
    assert page == command_markdown(command_reference(build_cli(Kernel(entry_points=False)))), (
        "docs/reference/commands.md is stale: run "
        "'.venv/bin/bastion commands --markdown > docs/reference/commands.md'"
    )
