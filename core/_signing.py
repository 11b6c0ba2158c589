"""``bastion sign``: detached signatures plus a re-signed whitelist, all or nothing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs

from ._errors import TrustError, printable
from ._keys import SigningKey
from ._loader import bidi_controls, read_strategy
from ._minisign import sign
from ._module import SourceProblem, compile_source
from ._trust import (
    STRATEGY_NAME_RE,
    TrustStore,
    Whitelist,
    WhitelistState,
    load_whitelist,
    read_manifest_version,
    sha256_hex,
    strategy_trusted_comment,
    write_whitelist,
)
from ._workspace import Workspace

__all__ = ["SignResult", "sign_strategies"]

DEFAULT_VALIDITY = timedelta(days=90)


@attrs.frozen
class SignResult:
    """What :func:`sign_strategies` did: each file signed with its SHA-256, and the
    whitelist version and expiry it wrote."""

    signed: tuple[tuple[str, str], ...]  # (file name, sha256)
    whitelist_version: int
    expires: datetime


def _strategy_path(workspace: Workspace, spec: str) -> Path:
    candidate = Path(spec)
    if len(candidate.parts) == 1:
        name = spec if spec.endswith(".py") else f"{spec}.py"
        candidate = workspace.strategies / name
    path = Path(os.path.abspath(candidate))
    if path.parent.resolve() != workspace.strategies.resolve():
        raise TrustError(f"{spec}: only files directly in {workspace.strategies} can be signed")
    if not STRATEGY_NAME_RE.match(path.name):
        raise TrustError(
            f"{printable(spec)}: a strategy file name must be a plain identifier ending in .py"
        )
    if not path.exists() and not path.is_symlink():
        raise TrustError(f"{spec}: no such strategy file in {workspace.strategies}")
    return path


def _strategy_bytes(path: Path) -> bytes:
    """The file's bytes, refused as 'verify' would refuse them: what cannot be loaded
    is never signed."""
    data = read_strategy(path)
    if isinstance(data, tuple):
        status, reason = data
        raise TrustError(f"{path}: {reason} ({status}); 'bastion verify' would never load it")
    hidden = bidi_controls(data)
    if hidden is not None:
        raise TrustError(f"{path}: {hidden}")
    return data


def sign_strategies(
    workspace: Workspace,
    key: SigningKey,
    files: Sequence[str],
    *,
    valid_for: timedelta = DEFAULT_VALIDITY,
    replace_whitelist: bool = False,
    now: datetime | None = None,
) -> SignResult:
    """Sign each file, approve its SHA-256 in the whitelist and re-sign the whitelist.

    Every input is checked before anything is written; then all signatures and
    the manifest are replaced together.
    """
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    if not files:
        raise TrustError("name at least one strategy file to sign")
    if valid_for <= timedelta(0):
        raise TrustError("the whitelist validity must be positive")
    trust = TrustStore.load(workspace.signatures)
    if key.id in trust.revoked:
        raise TrustError(f"key {key.id} ({key.path}) is revoked; sign with another key")
    if key.id not in trust.keys:
        # Signing would replace the whitelist with one nothing here can verify.
        raise TrustError(
            f"key {key.id} ({key.path}) is not trusted in {trust.keys_dir}; an operator must "
            f"first run 'bastion trust add {key.path.with_suffix('.pub')}'"
        )

    staged: list[tuple[Path, bytes]] = []
    signed: list[tuple[str, str]] = []
    for spec in files:
        path = _strategy_path(workspace, spec)
        data = _strategy_bytes(path)
        try:
            compile_source(data, str(path))  # syntax only; nothing runs
        except SourceProblem as exc:
            raise TrustError(f"{path}: {exc}; fix it before signing") from None
        digest = sha256_hex(data)
        sig = sign(
            key.private,
            data,
            trusted_comment=strategy_trusted_comment(path.name, digest, now, key.id),
            untrusted_comment=f"bastion strategy signature, key {key.id} ({key.name})",
        )
        staged.append((workspace.signatures / f"{path.name}.minisig", sig.encode()))
        signed.append((path.name, digest))

    # The entries of the current whitelist carry over, but only if it verifies
    # (an expired one still does) and is not older than what was seen here.
    state = WhitelistState(workspace.data_dir / "whitelist-state.json")
    highest, _ = state.read()
    current = load_whitelist(workspace.signatures, trust, datetime.min.replace(tzinfo=UTC))
    problem = current.reason if not isinstance(current, Whitelist) else None
    if isinstance(current, Whitelist) and (rollback := state.check(current)) is not None:
        problem = rollback.reason
    entries: dict[str, str] = {}
    if isinstance(current, Whitelist) and problem is None:
        entries = dict(current.strategies)
    elif getattr(current, "status", None) != "whitelist-missing" and not replace_whitelist:
        raise TrustError(
            f"the current whitelist cannot be trusted ({problem}); refusing to build on it. "
            "Restore it, or pass --replace-whitelist to start a new one holding only these files"
        )
    version = max(read_manifest_version(workspace.signatures), highest) + 1
    entries.update(dict(signed))
    write_whitelist(
        workspace.signatures,
        entries,
        key,
        version=version,
        now=now,
        valid_for=valid_for,
        extra_files=staged,
    )
    return SignResult(
        signed=tuple(signed),
        whitelist_version=version,
        expires=now + valid_for,
    )
