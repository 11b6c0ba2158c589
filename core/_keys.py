"""Private signing keys: create, write (mode 0600) and load.  Never printed.

A private key file is PKCS#8 PEM (optionally passphrase-encrypted) preceded by
a few ``#`` header lines naming the key; ``cryptography`` reads past them.
The matching public key is written in minisign's format next to it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._errors import FormatError, TrustError
from ._minisign import PublicKey

__all__ = [
    "EXAMPLE_KEY_IDS",
    "SigningKey",
    "generate_key",
    "is_example_key",
    "load_signing_key",
    "resolve_key_path",
]

# The bundled example key (signatures/example/).  Its private half is public
# knowledge: it may sign strategies for backtests and paper trading only, and
# live trading refuses anything it signed.
EXAMPLE_KEY_IDS = frozenset({"BEE19B3C7A6706B7"})

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PASSPHRASE_ENV = "BASTION_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret


def is_example_key(key_id: str) -> bool:
    """Whether ``key_id`` is the bundled example key (public: never for live trading)."""
    return key_id in EXAMPLE_KEY_IDS


@attrs.frozen
class SigningKey:
    """A loaded private key.  ``repr`` never shows key material."""

    name: str
    public: PublicKey
    path: Path
    _private: Ed25519PrivateKey = attrs.field(repr=False)

    @property
    def id(self) -> str:
        return self.public.id

    @property
    def private(self) -> Ed25519PrivateKey:
        return self._private


def _header(name: str, public: PublicKey) -> bytes:
    return (
        "# Bastion Ed25519 signing key -- PRIVATE: keep this file secret, never commit it\n"
        f"# name: {name}\n"
        f"# key id: {public.id}\n"
    ).encode()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_key(name: str, directory: Path, passphrase: bytes | None = None) -> SigningKey:
    """Create ``NAME.key`` (0600) and ``NAME.pub`` in ``directory``; refuse to overwrite."""
    if not NAME_RE.match(name):
        raise TrustError(
            f"key name {name!r} is not allowed; use letters, digits, '.', '_' or '-' (max 64)"
        )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (key_path, pub_path):
        if path.exists() or path.is_symlink():
            raise TrustError(f"{path} already exists; choose another name or move the old key away")
    private = Ed25519PrivateKey.generate()
    public = PublicKey.from_private(private)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _write_new(key_path, _header(name, public) + pem, 0o600)
    try:
        _write_new(pub_path, public.encode(f"bastion public key {name} {public.id}"), 0o644)
    except OSError:
        key_path.unlink(missing_ok=True)
        raise
    return SigningKey(name=name, public=public, path=key_path, private=private)


def resolve_key_path(key: str, keys_dir: Path) -> Path:
    """``--key`` takes a path to a ``.key`` file or the name of a key in ``keys_dir``."""
    candidate = Path(key).expanduser()
    if candidate.suffix == ".key" or os.sep in key or candidate.exists():
        return candidate
    return keys_dir / f"{key}.key"


def load_signing_key(path: Path, passphrase: bytes | None = None) -> SigningKey:
    """Load a private key written by :func:`generate_key`; errors name the file."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise TrustError(
            f"{path}: no such key file; create one with 'bastion keys new NAME'"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise TrustError(f"{path}: not a regular file (symlinks are refused for private keys)")
    data = path.read_bytes()
    if b"PRIVATE KEY-----" not in data:
        raise FormatError(f"{path}: not a Bastion private key (no PEM private key block)")
    if passphrase is None and b"ENCRYPTED PRIVATE KEY" in data:
        env = os.environ.get(PASSPHRASE_ENV)
        if env is None:
            raise TrustError(
                f"{path}: the key is encrypted; set {PASSPHRASE_ENV} to its passphrase"
            )
        passphrase = env.encode()
    try:
        private = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError):
        raise FormatError(
            f"{path}: cannot read the private key (corrupt file or wrong passphrase)"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise FormatError(f"{path}: not an Ed25519 key; create one with 'bastion keys new NAME'")
    public = PublicKey.from_private(private)
    if st.st_mode & 0o077 and not is_example_key(public.id):
        raise TrustError(
            f"{path}: private key is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run 'chmod 600 {path}'"
        )
    name = path.stem
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("# name: "):
            name = line.removeprefix("# name: ").strip() or name
            break
    return SigningKey(name=name, public=public, path=path, private=private)
