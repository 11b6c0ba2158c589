"""The trust store and the whitelist manifest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bastion import FormatError, TrustError
from bastion._trust import (
    TrustStore,
    Whitelist,
    check_trusted_comment,
    load_whitelist,
    strategy_trusted_comment,
)

from .conftest import WS


def test_add_writes_minisign_pub_named_by_key_id(ws: WS) -> None:
    key = ws.key("alice")
    store = TrustStore.load(ws.signatures)
    assert set(store.keys) == {key.id}
    assert store.keys[key.id].name == "alice"
    assert (ws.signatures / "keys" / f"{key.id}.pub").exists()


def test_revoke_records_and_forbids_re_adding(ws: WS) -> None:
    """A revoked key leaves the trust list, is recorded, and cannot be trusted again."""
    key = ws.key("alice")
    TrustStore.load(ws.signatures).revoke(key.id, "leaked", datetime.now(UTC))
    store = TrustStore.load(ws.signatures)
    assert key.id not in store.keys and store.revoked[key.id]["reason"] == "leaked"
    with pytest.raises(TrustError, match="revoked"):
        store.add(ws.keys_dir / "alice.pub")


def test_revoke_malformed(ws: WS) -> None:
    with pytest.raises(TrustError, match="16 hex digits"):
        TrustStore.load(ws.signatures).revoke("xyz", "", datetime.now(UTC))


def test_revoke_in_advance(ws: WS) -> None:
    """A leaked key can be revoked before anyone trusts it; then it can never be added."""
    leaked = ws.key("leaked", trust=False)
    TrustStore.load(ws.signatures).revoke(leaked.id, "leaked", datetime.now(UTC))
    with pytest.raises(TrustError, match="revoked"):
        TrustStore.load(ws.signatures).add(ws.keys_dir / "leaked.pub")
    with pytest.raises(TrustError, match="already revoked"):
        TrustStore.load(ws.signatures).revoke(leaked.id, "", datetime.now(UTC))


def test_corrupt_trusted_key_file(ws: WS) -> None:
    key = ws.key()
    path = ws.signatures / "keys" / f"{key.id}.pub"
    path.write_text("untrusted comment: x\nAAAA\n")
    with pytest.raises(FormatError, match=str(path)):
        TrustStore.load(ws.signatures)


def test_misnamed_trusted_key_file(ws: WS) -> None:
    key = ws.key()
    path = ws.signatures / "keys" / f"{key.id}.pub"
    path.rename(ws.signatures / "keys" / "someone.pub")
    with pytest.raises(FormatError, match=f"must be named {key.id}.pub"):
        TrustStore.load(ws.signatures)


def test_corrupt_revocation_list(ws: WS) -> None:
    (ws.signatures / "revoked.json").write_text("{not json")
    with pytest.raises(FormatError, match=r"revoked\.json"):
        TrustStore.load(ws.signatures)


def test_whitelist_versions_only_go_up(signed_ws: WS) -> None:
    ws = signed_ws
    for expected in (2, 3):
        ws.sign("good.py")
        loaded = load_whitelist(ws.signatures, TrustStore.load(ws.signatures), datetime.now(UTC))
        assert isinstance(loaded, Whitelist) and loaded.version == expected


def test_version_continues_after_manifest_removed(signed_ws: WS) -> None:
    """Deleting the manifest does not restart versions below what this machine accepted."""
    ws = signed_ws
    ws.sign("good.py")
    assert ws.status("good.py").ok  # version 2 recorded
    (ws.signatures / "whitelist.json").unlink()
    (ws.signatures / "whitelist.json.minisig").unlink()
    ws.sign("good.py")
    doc = json.loads((ws.signatures / "whitelist.json").read_bytes())
    assert doc["version"] == 3


def test_malformed_manifest_is_invalid_not_a_crash(signed_ws: WS) -> None:
    """A manifest that is not JSON (even correctly signed) is refused with a reason."""
    ws = signed_ws
    from bastion._trust import write_whitelist

    key = ws.key()
    write_whitelist(
        ws.signatures, {}, key, version=5, now=datetime.now(UTC), valid_for=timedelta(1)
    )
    (ws.signatures / "whitelist.json").write_text("[]")
    loaded = load_whitelist(ws.signatures, TrustStore.load(ws.signatures), datetime.now(UTC))
    assert not isinstance(loaded, Whitelist) and loaded.status == "whitelist-invalid"


def test_expired_whitelist_entries_carry_over_on_resign(ws: WS) -> None:
    """Re-signing after expiry keeps the approved entries and renews the expiry."""
    ws.write("a.py")
    ws.write("b.py")
    ws.sign("a.py", "b.py", valid_for=timedelta(days=1), now=datetime.now(UTC) - timedelta(days=3))
    assert ws.status("a.py").value == "whitelist-expired"
    ws.sign("a.py")
    assert ws.status("b.py").ok


@pytest.mark.parametrize(
    ("comment", "reason"),
    [
        ("bastion-strategy file:b.py sha256:{d} signed:2026-01-01T00:00:00Z key:{k}", "made for"),
        ("bastion-strategy file:a.py sha256:{x} signed:2026-01-01T00:00:00Z key:{k}", "vouches"),
        ("bastion-strategy file:a.py sha256:{d} signed:2999-01-01T00:00:00Z key:{k}", "future"),
        ("bastion-strategy file:a.py sha256:{d} signed:yesterday key:{k}", "not a valid time"),
        (
            "bastion-strategy file:a.py sha256:{d} signed:2026-01-01T00:00:00Z "
            "key:0000000000000000",
            "names key",
        ),
        ("bastion-strategy file:a.py sha256:{d} key:{k}", "expected"),
        (
            "bastion-strategy file:a.py sha256:{d} signed:2026-01-01T00:00:00Z key:{k} extra:1",
            "expected",
        ),
        ("something else", "not a bastion-strategy"),
    ],
)
def test_every_trusted_comment_field_is_checked(comment: str, reason: str) -> None:
    d, x, k = "a" * 64, "b" * 64, "ABCDEF0123456789"
    with pytest.raises(ValueError, match=reason):
        check_trusted_comment(
            comment.format(d=d, x=x, k=k),
            name="a.py",
            digest=d,
            key_id=k,
            now=datetime(2026, 6, 1, tzinfo=UTC),
        )


def test_trusted_comment_round_trip() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    text = strategy_trusted_comment("a.py", "a" * 64, now, "ABCDEF0123456789")
    assert (
        check_trusted_comment(
            text, name="a.py", digest="a" * 64, key_id="ABCDEF0123456789", now=now
        )
        == now
    )


def test_sign_refuses_untrusted_key(ws: WS) -> None:
    from bastion._signing import sign_strategies

    ws.write("ok.py")
    with pytest.raises(TrustError, match="not trusted"):
        sign_strategies(ws.workspace, ws.key("stranger", trust=False), ["ok.py"])
    assert not (ws.signatures / "whitelist.json").exists()


def test_sign_refuses_revoked_key_and_bad_files(ws: WS) -> None:
    from bastion._signing import sign_strategies

    key = ws.key()
    with pytest.raises(TrustError, match="no such strategy"):
        sign_strategies(ws.workspace, key, ["missing.py"])
    ws.write("bad.py", "def (:\n")
    with pytest.raises(TrustError, match="line 1"):
        sign_strategies(ws.workspace, key, ["bad.py"])
    assert not (ws.signatures / "whitelist.json").exists()  # nothing half-written
    TrustStore.load(ws.signatures).revoke(key.id, "", datetime.now(UTC))
    ws.write("ok.py")
    with pytest.raises(TrustError, match="revoked"):
        sign_strategies(ws.workspace, key, ["ok.py"])


def test_sign_is_all_or_nothing(ws: WS) -> None:
    """If one named file is bad, no signature and no whitelist is written."""
    from bastion._signing import sign_strategies

    ws.write("ok.py")
    with pytest.raises(TrustError):
        sign_strategies(ws.workspace, ws.key(), ["ok.py", "missing.py"])
    assert not list(ws.signatures.glob("*.minisig"))
