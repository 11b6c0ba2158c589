"""minisign's file formats: public keys and detached signatures.

Bastion writes public keys and signatures that the standard ``minisign -V``
tool verifies.  Only what Bastion needs is implemented, and parsing is strict:

* public key: ``untrusted comment: ...`` then base64(``"Ed"`` + key id (8) +
  Ed25519 public key (32));
* signature: ``untrusted comment: ...``, base64(algorithm (2) + key id (8) +
  Ed25519 signature (64)), ``trusted comment: ...``, base64(global signature
  (64) over signature + trusted comment bytes).

Signatures are always *prehashed* (algorithm ``"ED"``: the signed message is
BLAKE2b-512 of the file).  The legacy algorithm ``"Ed"`` (signs the raw file)
is recognised only to be refused: minisign still accepts it, Bastion does not.

The Ed25519 arithmetic is done by ``cryptography``; nothing here is hand-made
cryptography, only the byte layout around it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._errors import FormatError

__all__ = [
    "ALG_LEGACY",
    "ALG_PREHASHED",
    "PublicKey",
    "Signature",
    "SignatureCheckFailed",
    "derive_key_id",
    "key_id_hex",
    "sign",
    "verify",
]

PK_ALG = b"Ed"
ALG_PREHASHED = b"ED"
ALG_LEGACY = b"Ed"
KEY_ID_LEN = 8
UNTRUSTED_PREFIX = "untrusted comment: "
TRUSTED_PREFIX = "trusted comment: "
# minisign's own limits (src/minisign.h): longer comments make it refuse the file.
MAX_UNTRUSTED_COMMENT = 1024 - len(UNTRUSTED_PREFIX) - 2
MAX_TRUSTED_COMMENT = 8192 - len(TRUSTED_PREFIX) - 2


def derive_key_id(public_key: bytes) -> bytes:
    """A key id derived from the public key: the first 8 bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:KEY_ID_LEN]


def key_id_hex(key_id: bytes) -> str:
    """Render a key id the way minisign prints it (little-endian u64, upper hex)."""
    return f"{int.from_bytes(key_id, 'little'):016X}"


def _b64decode(text: str, source: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{source}: {what} is not valid base64; the file is damaged") from None


def _check_comment(text: str, limit: int, source: str, what: str) -> str:
    if len(text.encode("utf-8")) > limit:
        raise FormatError(f"{source}: {what} is longer than minisign allows ({limit} bytes)")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise FormatError(f"{source}: {what} contains control characters")
    return text


def _lines(data: bytes, source: str, expected: int, what: str) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{source}: not a {what} (not UTF-8 text)") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if len(lines) != expected:
        raise FormatError(
            f"{source}: not a {what} (expected {expected} lines, found {len(lines)}); "
            "the file is truncated or damaged"
        )
    return lines


@attrs.frozen
class PublicKey:
    """An Ed25519 public key with its minisign key id."""

    key: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))
    key_id: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))

    def __attrs_post_init__(self) -> None:
        if len(self.key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        if len(self.key_id) != KEY_ID_LEN:
            raise ValueError("a key id is 8 bytes")

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> PublicKey:
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(key=raw, key_id=derive_key_id(raw))

    @property
    def id(self) -> str:
        """The key id as minisign prints it."""
        return key_id_hex(self.key_id)

    def base64(self) -> str:
        """The one-line form minisign accepts with ``-P``."""
        return base64.b64encode(PK_ALG + self.key_id + self.key).decode("ascii")

    def encode(self, comment: str | None = None) -> bytes:
        comment = comment or f"minisign public key {self.id}"
        _check_comment(comment, MAX_UNTRUSTED_COMMENT, "public key", "untrusted comment")
        return f"{UNTRUSTED_PREFIX}{comment}\n{self.base64()}\n".encode()

    @classmethod
    def parse(cls, data: bytes, source: str) -> PublicKey:
        """Parse a minisign public-key file; ``source`` names it in errors."""
        first, blob_line = _lines(data, source, 2, "minisign public key")
        if not first.startswith(UNTRUSTED_PREFIX):
            raise FormatError(f"{source}: not a minisign public key (no untrusted comment line)")
        blob = _b64decode(blob_line, source, "the public key")
        if len(blob) != 2 + KEY_ID_LEN + 32 or blob[:2] != PK_ALG:
            raise FormatError(f"{source}: not an Ed25519 minisign public key")
        key_id, key = blob[2 : 2 + KEY_ID_LEN], blob[2 + KEY_ID_LEN :]
        if derive_key_id(key) != key_id:
            raise FormatError(
                f"{source}: key id {key_id_hex(key_id)} is not derived from this public key; "
                "Bastion only accepts keys it created (bastion keys new)"
            )
        return cls(key=key, key_id=key_id)

    def _verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.key)


@attrs.frozen
class Signature:
    """A parsed minisign detached signature."""

    algorithm: bytes
    key_id: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes
    untrusted_comment: str = ""

    def encode(self) -> bytes:
        blob = base64.b64encode(self.algorithm + self.key_id + self.signature).decode()
        glob = base64.b64encode(self.global_signature).decode()
        return (
            f"{UNTRUSTED_PREFIX}{self.untrusted_comment}\n{blob}\n"
            f"{TRUSTED_PREFIX}{self.trusted_comment}\n{glob}\n"
        ).encode()

    @classmethod
    def parse(cls, data: bytes, source: str) -> Signature:
        """Parse a ``.minisig`` file; ``source`` names it in errors."""
        first, blob_line, trusted, glob_line = _lines(data, source, 4, "minisign signature")
        if not first.startswith(UNTRUSTED_PREFIX):
            raise FormatError(f"{source}: not a minisign signature (no untrusted comment line)")
        if not trusted.startswith(TRUSTED_PREFIX):
            raise FormatError(f"{source}: not a minisign signature (no trusted comment line)")
        blob = _b64decode(blob_line, source, "the signature")
        if len(blob) != 2 + KEY_ID_LEN + 64:
            raise FormatError(f"{source}: the signature has the wrong length; the file is damaged")
        glob = _b64decode(glob_line, source, "the global signature")
        if len(glob) != 64:
            raise FormatError(f"{source}: the global signature has the wrong length")
        return cls(
            algorithm=blob[:2],
            key_id=blob[2 : 2 + KEY_ID_LEN],
            signature=blob[2 + KEY_ID_LEN :],
            trusted_comment=_check_comment(
                trusted[len(TRUSTED_PREFIX) :], MAX_TRUSTED_COMMENT, source, "trusted comment"
            ),
            global_signature=glob,
            untrusted_comment=first[len(UNTRUSTED_PREFIX) :],
        )


def _prehash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=64).digest()


def sign(
    private: Ed25519PrivateKey,
    data: bytes,
    *,
    trusted_comment: str,
    untrusted_comment: str,
) -> Signature:
    """Sign ``data`` in minisign's prehashed format."""
    _check_comment(trusted_comment, MAX_TRUSTED_COMMENT, "signature", "trusted comment")
    _check_comment(untrusted_comment, MAX_UNTRUSTED_COMMENT, "signature", "untrusted comment")
    public = PublicKey.from_private(private)
    signature = private.sign(_prehash(data))
    global_signature = private.sign(signature + trusted_comment.encode("utf-8"))
    return Signature(
        algorithm=ALG_PREHASHED,
        key_id=public.key_id,
        signature=signature,
        trusted_comment=trusted_comment,
        global_signature=global_signature,
        untrusted_comment=untrusted_comment,
    )


class SignatureCheckFailed(Exception):
    """Raised by :func:`verify`; ``reason`` is a short phrase for a refusal message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def verify(public: PublicKey, sig: Signature, data: bytes) -> None:
    """Check ``sig`` over ``data`` and over its trusted comment, or raise.

    Legacy (non-prehashed) signatures are refused even though minisign accepts them.
    """
    if sig.algorithm == ALG_LEGACY:
        raise SignatureCheckFailed(
            "legacy (non-prehashed) minisign signature; Bastion accepts only prehashed ones"
        )
    if sig.algorithm != ALG_PREHASHED:
        raise SignatureCheckFailed(f"unknown signature algorithm {sig.algorithm!r}")
    if sig.key_id != public.key_id:
        raise SignatureCheckFailed(f"signed by key {key_id_hex(sig.key_id)}, not {public.id}")
    verifier = public._verifier()
    try:
        verifier.verify(sig.signature, _prehash(data))
    except InvalidSignature:
        raise SignatureCheckFailed("the signature does not match the file's contents") from None
    try:
        verifier.verify(sig.global_signature, sig.signature + sig.trusted_comment.encode("utf-8"))
    except InvalidSignature:
        raise SignatureCheckFailed("the trusted comment was altered after signing") from None
