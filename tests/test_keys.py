"""Private keys: written 0600, never printed, refused when corrupt or world-readable."""

from __future__ import annotations

import stat

import pytest

from bastion import FormatError, TrustError
from bastion._keys import generate_key, load_signing_key, resolve_key_path


def test_new_key_is_0600_and_reloads(tmp_path) -> None:
    """The private key is created mode 0600 and loads back to the same public key."""
    key = generate_key("alice", tmp_path)
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    assert (tmp_path / "alice.pub").exists()
    again = load_signing_key(key.path)
    assert again.public == key.public and again.name == "alice"


def test_repr_never_shows_key_material(tmp_path) -> None:
    key = generate_key("alice", tmp_path)
    assert "_private" not in repr(key) and "PRIVATE" not in repr(key)


def test_existing_key_is_not_overwritten(tmp_path) -> None:
    generate_key("alice", tmp_path)
    before = (tmp_path / "alice.key").read_bytes()
    with pytest.raises(TrustError, match="already exists"):
        generate_key("alice", tmp_path)
    assert (tmp_path / "alice.key").read_bytes() == before


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "x" * 65, "-dash"])
def test_bad_key_names(tmp_path, name: str) -> None:
    with pytest.raises(TrustError, match="not allowed"):
        generate_key(name, tmp_path)


def test_world_readable_key_refused(tmp_path) -> None:
    key = generate_key("alice", tmp_path)
    key.path.chmod(0o644)
    with pytest.raises(TrustError, match="chmod 600"):
        load_signing_key(key.path)


def test_corrupt_key_file(tmp_path) -> None:
    """A damaged key file is a one-line error naming the file."""
    key = generate_key("alice", tmp_path)
    data = key.path.read_bytes()
    key.path.write_bytes(data[: len(data) // 2] + b"garbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(FormatError, match=str(key.path)):
        load_signing_key(key.path)
    key.path.write_bytes(b"hello")
    with pytest.raises(FormatError, match="not a Bastion private key"):
        load_signing_key(key.path)


def test_missing_key_file(tmp_path) -> None:
    with pytest.raises(TrustError, match="bastion keys new"):
        load_signing_key(tmp_path / "nope.key")


def test_passphrase_protected_key(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An encrypted key needs BASTION_KEY_PASSPHRASE; a wrong one is a clear error."""
    key = generate_key("alice", tmp_path, passphrase=b"correct horse")
    with pytest.raises(TrustError, match="BASTION_KEY_PASSPHRASE"):
        load_signing_key(key.path)
    monkeypatch.setenv("BASTION_KEY_PASSPHRASE", "wrong")
    with pytest.raises(FormatError, match="wrong passphrase"):
        load_signing_key(key.path)
    monkeypatch.setenv("BASTION_KEY_PASSPHRASE", "correct horse")
    assert load_signing_key(key.path).public == key.public


def test_resolve_key_path(tmp_path) -> None:
    assert resolve_key_path("alice", tmp_path) == tmp_path / "alice.key"
    assert resolve_key_path("/x/bob.key", tmp_path).name == "bob.key"


def test_example_key_loads_despite_git_permissions() -> None:
    """The committed example key is checked out 0644 by git and still loads."""
    from .conftest import REPO

    key = load_signing_key(REPO / "signatures" / "example" / "bastion-example.key")
    from bastion._keys import EXAMPLE_KEY_IDS

    assert key.id in EXAMPLE_KEY_IDS
