"""Keys, signatures and the whitelist: what the signing commands are built from.

Strategy code only ever enters through :class:`bastion.Gate`; these are the
tools to produce and inspect what that door checks (minisign keys and
signatures, the trusted keys of a workspace, the signed whitelist).

Public API (see docs/reference/api.md).
"""

from __future__ import annotations

from ._keys import SigningKey, generate_key, is_example_key, load_signing_key, resolve_key_path
from ._signing import SignResult, sign_strategies
from ._trust import TrustedKey, TrustStore, format_time, parse_time, sha256_hex

__all__ = [
    "SignResult",
    "SigningKey",
    "TrustStore",
    "TrustedKey",
    "format_time",
    "generate_key",
    "is_example_key",
    "load_signing_key",
    "parse_time",
    "resolve_key_path",
    "sha256_hex",
    "sign_strategies",
]
