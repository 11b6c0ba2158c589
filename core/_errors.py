"""Exceptions that carry a one-line message meant for the person at the terminal."""

from __future__ import annotations

__all__ = [
    "BastionError",
    "ConfigError",
    "FormatError",
    "PluginError",
    "TrustError",
    "one_line",
    "printable",
]


class BastionError(Exception):
    """A problem the user can fix.

    The message is a single line that names the file or value at fault and says
    what to do. The CLI prints it without a traceback and exits non-zero.
    """

    exit_code = 1


class ConfigError(BastionError):
    """A bad command-line value, environment variable or configuration file."""

    exit_code = 2


class FormatError(BastionError):
    """A file Bastion reads (key, signature, manifest) is malformed."""


class TrustError(BastionError):
    """A signing or trust-store operation was refused."""


class PluginError(BastionError):
    """A plugin failed to load or registered something invalid."""


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """``text`` with control characters (terminal escapes, newlines, C1 codes) written
    as ``\\xNN``: what strategy code says can be printed and stored as one safe line."""
    return text.translate(_CONTROL)


def one_line(message: str) -> str:
    """Fold a multi-line message (pluggy's validation errors) into one line."""
    return "; ".join(line.strip() for line in message.strip().splitlines() if line.strip())
