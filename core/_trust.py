"""Trust data in ``signatures/``: trusted keys, revocations, the signed whitelist.

Layout of a workspace's ``signatures/`` folder::

    signatures/
      keys/<KEYID>.pub          trusted public keys (minisign format)
      revoked.json              revoked key ids, with time and reason
      whitelist.json            approved ``name -> SHA-256``, version, expiry
      whitelist.json.minisig    the manifest's detached signature
      <name>.py.minisig         one detached signature per strategy file

Every ``.minisig`` and ``.pub`` here is readable by the standard ``minisign``
tool.  Bastion additionally checks every trusted-comment field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs

from ._errors import FormatError, TrustError
from ._fsutil import atomic_write, atomic_write_many
from ._keys import SigningKey, is_example_key
from ._minisign import PublicKey, Signature, SignatureCheckFailed, key_id_hex, sign, verify

__all__ = [
    "STRATEGY_NAME_RE",
    "KeyProblem",
    "TrustStore",
    "TrustedKey",
    "Whitelist",
    "WhitelistProblem",
    "WhitelistState",
    "check_trusted_comment",
    "format_time",
    "load_whitelist",
    "parse_time",
    "sha256_hex",
    "strategy_trusted_comment",
    "write_whitelist",
]

WHITELIST_FILE = "whitelist.json"
WHITELIST_FORMAT = "bastion-whitelist/1"
STRATEGY_TAG = "bastion-strategy"
WHITELIST_TAG = "bastion-whitelist"
STRATEGY_NAME_RE = re.compile(r"^(?!__)[A-Za-z_][A-Za-z0-9_]{0,99}\.py$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
KEY_ID_RE = re.compile(r"^[0-9A-F]{16}$")
# A signature time this far in the future means a wrong clock or a forged comment.
CLOCK_SKEW = timedelta(minutes=5)


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 lowercase hex digits (how strategies are named)."""
    return hashlib.sha256(data).hexdigest()


def format_time(moment: datetime) -> str:
    """``moment`` as UTC ``YYYY-MM-DDTHH:MM:SSZ``, as signatures and listings show it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ``; raises ``ValueError`` otherwise."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# --------------------------------------------------------------------------
# Trusted comments
# --------------------------------------------------------------------------


def strategy_trusted_comment(name: str, digest: str, signed: datetime, key_id: str) -> str:
    return f"{STRATEGY_TAG} file:{name} sha256:{digest} signed:{format_time(signed)} key:{key_id}"


def _whitelist_trusted_comment(version: int, digest: str, expires: datetime) -> str:
    return (
        f"{WHITELIST_TAG} file:{WHITELIST_FILE} version:{version} sha256:{digest} "
        f"expires:{format_time(expires)}"
    )


def _parse_fields(comment: str, tag: str, keys: tuple[str, ...]) -> dict[str, str]:
    """Split ``TAG k1:v1 k2:v2`` into a dict; exactly ``keys``, in order, each once."""
    parts = comment.split(" ")
    if parts[0] != tag:
        raise ValueError(f"the trusted comment is not a {tag} comment")
    fields: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition(":")
        if not sep or not value or key in fields:
            raise ValueError(f"malformed trusted comment field {part!r}")
        fields[key] = value
    if tuple(fields) != keys:
        raise ValueError(
            f"trusted comment has fields {', '.join(fields) or 'none'}; expected {', '.join(keys)}"
        )
    return fields


def check_trusted_comment(
    comment: str, *, name: str, digest: str, key_id: str, now: datetime
) -> datetime:
    """Check every field of a strategy signature's trusted comment; return the signing time.

    Raises ``ValueError`` with a one-line reason when any field disagrees.
    """
    fields = _parse_fields(comment, STRATEGY_TAG, ("file", "sha256", "signed", "key"))
    if fields["file"] != name:
        raise ValueError(f"the signature was made for {fields['file']!r}, not {name!r}")
    if fields["sha256"] != digest:
        raise ValueError(
            f"the signature vouches for SHA-256 {fields['sha256'][:12]}..., the file is "
            f"{digest[:12]}..."
        )
    if fields["key"] != key_id:
        raise ValueError(f"the comment names key {fields['key']}, the signature key {key_id}")
    try:
        signed = parse_time(fields["signed"])
    except ValueError:
        raise ValueError(f"signing time {fields['signed']!r} is not a valid time") from None
    if signed > now + CLOCK_SKEW:
        raise ValueError(f"signing time {fields['signed']} is in the future; check the clocks")
    return signed


# --------------------------------------------------------------------------
# Trusted keys and revocations
# --------------------------------------------------------------------------


@attrs.frozen
class TrustedKey:
    """A public key this workspace trusts: the key, its name and its file."""

    public: PublicKey
    name: str
    path: Path

    @property
    def id(self) -> str:
        return self.public.id

    @property
    def example(self) -> bool:
        """True for the bundled example key: never valid for live trading."""
        return is_example_key(self.id)


@attrs.frozen
class KeyProblem:
    """Why a key id cannot vouch for anything: ``status`` is unknown-key or revoked-key."""

    status: str
    reason: str


@attrs.frozen
class TrustStore:
    """The workspace's trusted keys (``signatures/trusted/``) and revoked key ids."""

    directory: Path
    keys: Mapping[str, TrustedKey]
    revoked: Mapping[str, Mapping[str, str]]

    @property
    def keys_dir(self) -> Path:
        return self.directory / "keys"

    @property
    def revoked_file(self) -> Path:
        return self.directory / "revoked.json"

    @classmethod
    def load(cls, directory: Path) -> TrustStore:
        """Read ``keys/*.pub`` and ``revoked.json``; a damaged file is a one-line FormatError."""
        keys: dict[str, TrustedKey] = {}
        keys_dir = directory / "keys"
        if keys_dir.is_dir():
            for path in sorted(keys_dir.glob("*.pub")):
                if path.is_symlink() or not path.is_file():
                    raise FormatError(f"{path}: trusted keys must be regular files, not links")
                public = PublicKey.parse(path.read_bytes(), str(path))
                if path.stem != public.id:
                    raise FormatError(
                        f"{path}: holds key {public.id}; a trusted key file must be named "
                        f"{public.id}.pub (use 'bastion trust add')"
                    )
                comment = path.read_text("utf-8").split("\n", 1)[0]
                name = _name_from_comment(comment) or public.id
                keys[public.id] = TrustedKey(public=public, name=name, path=path)
        revoked = _load_revoked(directory / "revoked.json")
        return cls(directory=directory, keys=keys, revoked=revoked)

    def lookup(self, key_id: bytes) -> TrustedKey | KeyProblem:
        kid = key_id_hex(key_id)
        if kid in self.revoked:
            info = self.revoked[kid]
            return KeyProblem(
                "revoked-key",
                f"key {kid} was revoked on {info.get('revoked', '?')}"
                + (f" ({info['reason']})" if info.get("reason") else "")
                + "; re-sign with a trusted key",
            )
        key = self.keys.get(kid)
        if key is None:
            return KeyProblem(
                "unknown-key",
                f"key {kid} is not trusted in {self.keys_dir}; "
                "an operator can add it with 'bastion trust add KEY.pub'",
            )
        return key

    # -- changes ---------------------------------------------------------------

    def add(self, pub_path: Path) -> TrustedKey:
        try:
            data = pub_path.read_bytes()
        except OSError as exc:
            raise TrustError(f"{pub_path}: cannot read public key ({exc.strerror})") from None
        public = PublicKey.parse(data, str(pub_path))
        if public.id in self.revoked:
            raise TrustError(
                f"{pub_path}: key {public.id} was revoked; a revoked key cannot be trusted again"
            )
        comment = data.decode("utf-8", "replace").split("\n", 1)[0]
        name = _name_from_comment(comment) or pub_path.stem
        target = self.keys_dir / f"{public.id}.pub"
        atomic_write(target, public.encode(f"bastion public key {name} {public.id}"))
        return TrustedKey(public=public, name=name, path=target)

    def revoke(self, key_id: str, reason: str, now: datetime) -> None:
        kid = key_id.strip().upper()
        if not KEY_ID_RE.match(kid):
            raise TrustError(f"{key_id!r} is not a key id; key ids are 16 hex digits")
        if kid in self.revoked:
            raise TrustError(f"key {kid} is already revoked")
        # A key need not be trusted here to be revoked: a leaked key can be
        # refused in advance, so that 'trust add' can never bring it in.
        known = self.keys.get(kid)
        entry = {
            "revoked": format_time(now),
            "reason": reason,
            "name": known.name if known else "",
            "public_key": known.public.base64() if known else "",
        }
        revoked = {**{k: dict(v) for k, v in self.revoked.items()}, kid: entry}
        # The revocation is recorded first; only then does the key file go.
        atomic_write(self.revoked_file, _dump_json({"revoked": revoked}))
        if known is not None:
            known.path.unlink()


def _name_from_comment(comment: str) -> str | None:
    match = re.match(r"^untrusted comment: bastion public key (\S+) [0-9A-F]{16}$", comment)
    return match.group(1) if match else None


def _load_revoked(path: Path) -> dict[str, dict[str, str]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(raw)
        revoked = data["revoked"]
        if not isinstance(revoked, dict):
            raise TypeError
        out: dict[str, dict[str, str]] = {}
        for kid, info in revoked.items():
            if not KEY_ID_RE.match(kid) or not isinstance(info, dict):
                raise TypeError
            out[kid] = {str(k): str(v) for k, v in info.items()}
        return out
    except (ValueError, KeyError, TypeError):
        raise FormatError(
            f"{path}: not a valid revocation list; restore it from version control"
        ) from None


def _dump_json(data: object) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


# --------------------------------------------------------------------------
# The whitelist manifest
# --------------------------------------------------------------------------


@attrs.frozen
class Whitelist:
    version: int
    issued: datetime
    expires: datetime
    strategies: Mapping[str, str]
    sha256: str
    signer: TrustedKey

    def expired(self, now: datetime) -> bool:
        return now >= self.expires


@attrs.frozen
class WhitelistProblem:
    """The manifest cannot be used: status is whitelist-missing/-invalid/-expired/-rollback."""

    status: str
    reason: str
    version: int | None = None


def _parse_manifest(data: bytes, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{source} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != WHITELIST_FORMAT:
        raise ValueError(f"{source} is not a {WHITELIST_FORMAT} manifest")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{source}: 'version' must be a positive integer")
    try:
        doc["issued"] = parse_time(doc["issued"])
        doc["expires"] = parse_time(doc["expires"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{source}: 'issued' and 'expires' must be times like 2026-01-31T00:00:00Z"
        ) from None
    entries = doc.get("strategies")
    if not isinstance(entries, dict):
        raise ValueError(f"{source}: 'strategies' must map file names to SHA-256 digests")
    for name, digest in entries.items():
        if (
            not STRATEGY_NAME_RE.match(name)
            or not isinstance(digest, str)
            or not SHA256_RE.match(digest)
        ):
            raise ValueError(f"{source}: entry {name!r} is not 'name.py': '<64 hex digits>'")
    return doc


def load_whitelist(
    directory: Path, trust: TrustStore, now: datetime
) -> Whitelist | WhitelistProblem:
    """Verify and parse ``whitelist.json``; never raises for a bad manifest."""
    path = directory / WHITELIST_FILE
    sig_path = directory / (WHITELIST_FILE + ".minisig")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return WhitelistProblem(
            "whitelist-missing", f"{path} does not exist; sign a strategy with 'bastion sign'"
        )
    try:
        sig = Signature.parse(sig_path.read_bytes(), str(sig_path))
    except FileNotFoundError:
        return WhitelistProblem(
            "whitelist-invalid", f"{sig_path} is missing; the whitelist is unsigned"
        )
    except FormatError as exc:
        return WhitelistProblem("whitelist-invalid", str(exc))
    key = trust.lookup(sig.key_id)
    if isinstance(key, KeyProblem):
        return WhitelistProblem("whitelist-invalid", f"whitelist signature: {key.reason}")
    try:
        verify(key.public, sig, data)
    except SignatureCheckFailed as exc:
        return WhitelistProblem("whitelist-invalid", f"{path}: {exc.reason}")
    try:
        doc = _parse_manifest(data, str(path))
        fields = _parse_fields(
            sig.trusted_comment, WHITELIST_TAG, ("file", "version", "sha256", "expires")
        )
        digest = sha256_hex(data)
        if (
            fields["file"] != WHITELIST_FILE
            or fields["version"] != str(doc["version"])
            or fields["sha256"] != digest
            or fields["expires"] != format_time(doc["expires"])
        ):
            raise ValueError("the signature's trusted comment does not describe this manifest")
    except ValueError as exc:
        return WhitelistProblem("whitelist-invalid", f"{path}: {exc}")
    whitelist = Whitelist(
        version=doc["version"],
        issued=doc["issued"],
        expires=doc["expires"],
        strategies=dict(doc["strategies"]),
        sha256=digest,
        signer=key,
    )
    if whitelist.expired(now):
        return WhitelistProblem(
            "whitelist-expired",
            f"whitelist version {whitelist.version} expired on {format_time(whitelist.expires)}; "
            "an operator must re-sign it ('bastion sign')",
            version=whitelist.version,
        )
    return whitelist


def write_whitelist(
    directory: Path,
    entries: Mapping[str, str],
    key: SigningKey,
    *,
    version: int,
    now: datetime,
    valid_for: timedelta,
    extra_files: list[tuple[Path, bytes]] | None = None,
) -> None:
    """Write the manifest and its signature (and ``extra_files``) all or nothing."""
    expires = parse_time(format_time(now + valid_for))  # whole seconds, as written
    doc: dict[str, object] = {
        "format": WHITELIST_FORMAT,
        "version": version,
        "issued": format_time(now),
        "expires": format_time(expires),
        "strategies": dict(sorted(entries.items())),
    }
    data = _dump_json(doc)
    sig = sign(
        key.private,
        data,
        trusted_comment=_whitelist_trusted_comment(version, sha256_hex(data), expires),
        untrusted_comment=f"bastion whitelist version {version}, signed by key {key.id}",
    )
    atomic_write_many(
        [
            *(extra_files or []),
            (directory / WHITELIST_FILE, data),
            (directory / (WHITELIST_FILE + ".minisig"), sig.encode()),
        ]
    )


def read_manifest_version(directory: Path) -> int:
    """The version number in ``whitelist.json`` even if it does not verify (0 if none)."""
    try:
        doc = json.loads((directory / WHITELIST_FILE).read_bytes())
        version = doc.get("version", 0) if isinstance(doc, dict) else 0
        return version if isinstance(version, int) and not isinstance(version, bool) else 0
    except (OSError, ValueError):
        return 0


# --------------------------------------------------------------------------
# Rollback protection
# --------------------------------------------------------------------------


@attrs.frozen
class WhitelistState:
    """The highest whitelist version this environment has accepted.

    Kept in the environment's data directory (outside ``signatures/``), so
    whoever can write ``signatures/`` cannot reset it.
    """

    path: Path

    def read(self) -> tuple[int, str | None]:
        try:
            doc = json.loads(self.path.read_bytes())
            return int(doc["highest_version"]), str(doc["sha256"])
        except FileNotFoundError:
            return 0, None
        except (ValueError, KeyError, TypeError):
            raise FormatError(
                f"{self.path}: whitelist state is damaged; it guards against rollback, so "
                "restore it from backup (or delete it only if you know why it broke)"
            ) from None

    def check(self, whitelist: Whitelist) -> WhitelistProblem | None:
        highest, digest = self.read()
        if whitelist.version < highest:
            return WhitelistProblem(
                "whitelist-rollback",
                f"whitelist version {whitelist.version} is older than version {highest} "
                "already accepted here; restore the newer whitelist",
                version=whitelist.version,
            )
        if whitelist.version == highest and digest is not None and digest != whitelist.sha256:
            return WhitelistProblem(
                "whitelist-rollback",
                f"whitelist version {highest} was already accepted here with different "
                "contents; a re-issued whitelist needs a higher version",
                version=whitelist.version,
            )
        return None

    def record(self, whitelist: Whitelist) -> None:
        highest, _ = self.read()
        if whitelist.version > highest:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(
                self.path,
                _dump_json({"highest_version": whitelist.version, "sha256": whitelist.sha256}),
                mode=0o600,
            )
