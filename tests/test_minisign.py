"""minisign's formats: round trips, strict parsing, and the real minisign binary."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion import FormatError
from bastion._minisign import (
    ALG_LEGACY,
    PublicKey,
    Signature,
    SignatureCheckFailed,
    derive_key_id,
    key_id_hex,
    sign,
    verify,
)

from .conftest import WS

MINISIGN = shutil.which("minisign")


def _pair() -> tuple[Ed25519PrivateKey, PublicKey]:
    private = Ed25519PrivateKey.generate()
    return private, PublicKey.from_private(private)


def test_key_id_is_derived_and_printed_like_minisign() -> None:
    """The key id is the first 8 bytes of SHA-256(public key), shown as minisign shows it."""
    _, public = _pair()
    assert public.key_id == derive_key_id(public.key)
    assert public.id == key_id_hex(public.key_id)
    assert public.id == f"{int.from_bytes(public.key_id, 'little'):016X}"


def test_public_key_round_trip() -> None:
    _, public = _pair()
    assert PublicKey.parse(public.encode(), "k.pub") == public


def test_signature_round_trip_and_verify() -> None:
    private, public = _pair()
    sig = sign(private, b"data", trusted_comment="tc", untrusted_comment="uc")
    parsed = Signature.parse(sig.encode(), "x.minisig")
    assert parsed == sig
    verify(public, parsed, b"data")
    with pytest.raises(SignatureCheckFailed, match="does not match"):
        verify(public, parsed, b"datA")


def test_legacy_signature_is_refused() -> None:
    """Algorithm 'Ed' (non-prehashed) is refused even when cryptographically valid."""
    private, public = _pair()
    raw = private.sign(b"data")
    legacy = Signature(ALG_LEGACY, public.key_id, raw, "tc", private.sign(raw + b"tc"), "uc")
    with pytest.raises(SignatureCheckFailed, match="legacy"):
        verify(public, Signature.parse(legacy.encode(), "l.minisig"), b"data")


def test_signature_by_other_key_is_refused() -> None:
    private, _ = _pair()
    _, other = _pair()
    sig = sign(private, b"d", trusted_comment="t", untrusted_comment="u")
    with pytest.raises(SignatureCheckFailed, match="signed by key"):
        verify(other, sig, b"d")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b"", "truncated"),
        (lambda b: b.replace(b"\ntrusted comment: ", b"\ntrusted: "), "no trusted comment"),
        (lambda b: b.replace(b"untrusted comment: ", b"comment: ", 1), "no untrusted comment"),
        (
            lambda b: b.split(b"\n")[0] + b"\n!!!notbase64!!!\n" + b"\n".join(b.split(b"\n")[2:]),
            "not valid base64",
        ),
        (lambda b: b"\xff\xfe" + b, "not UTF-8"),
    ],
    ids=["truncated", "empty", "no-trusted", "no-untrusted", "garbled", "binary"],
)
def test_damaged_signature_files_are_one_line_errors(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    """A truncated or garbled .minisig gives a FormatError naming the file."""
    private, _ = _pair()
    data = sign(private, b"d", trusted_comment="t", untrusted_comment="u").encode()
    with pytest.raises(FormatError, match=message) as info:
        Signature.parse(mutate(data), "signatures/x.py.minisig")
    assert str(info.value).startswith("signatures/x.py.minisig: ")
    assert "\n" not in str(info.value)


def test_short_signature_blob_refused() -> None:
    private, _ = _pair()
    sig = sign(private, b"d", trusted_comment="t", untrusted_comment="u")
    lines = sig.encode().decode().split("\n")
    lines[1] = base64.b64encode(base64.b64decode(lines[1])[:-1]).decode()
    with pytest.raises(FormatError, match="wrong length"):
        Signature.parse("\n".join(lines).encode(), "s")


def test_public_key_with_foreign_key_id_refused() -> None:
    """Keys whose id is not derived from the key (e.g. made by minisign -G) are refused."""
    _, public = _pair()
    blob = b"Ed" + b"\x00" * 8 + public.key
    text = f"untrusted comment: x\n{base64.b64encode(blob).decode()}\n".encode()
    with pytest.raises(FormatError, match="not derived"):
        PublicKey.parse(text, "k.pub")


def test_control_characters_in_trusted_comment_refused() -> None:
    private, _ = _pair()
    with pytest.raises(FormatError, match="control characters"):
        sign(private, b"d", trusted_comment="a\x1bb", untrusted_comment="u")


@pytest.mark.minisign
def test_real_minisign_verifies_bastion_output(signed_ws: WS) -> None:
    """The standard minisign tool accepts Bastion's strategy and whitelist signatures."""
    if MINISIGN is None:
        if os.environ.get("CI"):
            pytest.fail("minisign must be installed in CI (.ci/run installs it)")
        pytest.skip("minisign is not installed (apt-get install minisign)")
    ws = signed_ws
    pub = ws.signatures / "keys" / f"{ws.key().id}.pub"
    for target, sig in [
        (ws.strategies / "good.py", ws.signatures / "good.py.minisig"),
        (ws.signatures / "whitelist.json", ws.signatures / "whitelist.json.minisig"),
    ]:
        done = subprocess.run(
            [MINISIGN, "-V", "-p", str(pub), "-m", str(target), "-x", str(sig)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "bastion-" in done.stdout  # the trusted comment is shown
    (ws.strategies / "good.py").write_text("changed\n")
    done = subprocess.run(
        [
            MINISIGN,
            "-V",
            "-p",
            str(pub),
            "-m",
            str(ws.strategies / "good.py"),
            "-x",
            str(ws.signatures / "good.py.minisig"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
