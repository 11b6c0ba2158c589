"""The plugin's settings, from environment variables (read afresh at every use).

Bastion has no settings section for third-party plugins, so this one reads its own
variables.  A value that cannot be read is a ``ValueError`` naming the variable: in
``check_order`` that vetoes the order (Bastion fails closed on a raising risk check);
in the source's factory it stops the run before it starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_NOTIONAL_VAR = "MARKET_HOURS_MAX_NOTIONAL"
SESSION_VAR = "MARKET_HOURS_SESSION"
ZONE_VAR = "MARKET_HOURS_ZONE"

DEFAULTS = {
    MAX_NOTIONAL_VAR: "50000",
    SESSION_VAR: "09:30-16:00",
    ZONE_VAR: "America/New_York",
}

_SESSION_RE = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")


@dataclass(frozen=True)
class Session:
    """A trading session: weekdays (Monday to Friday) from ``open`` (inclusive) to
    ``close`` (exclusive), local time in ``zone``.  Exchange holidays are not known."""

    open: time
    close: time
    zone: ZoneInfo

    def is_open(self, moment: datetime) -> bool:
        """Whether the market is open at ``moment`` (an aware datetime)."""
        local = moment.astimezone(self.zone)
        return local.weekday() < 5 and self.open <= local.time() < self.close

    def describe(self) -> str:
        return f"{self.open:%H:%M}-{self.close:%H:%M} {self.zone.key}, Monday to Friday"


@dataclass(frozen=True)
class Limits:
    """What ``check_order`` enforces."""

    max_notional: Decimal
    session: Session


def _value(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip() or DEFAULTS[name]


def _amount(env: Mapping[str, str], name: str) -> Decimal:
    text = _value(env, name).replace("_", "").replace(",", "")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        amount = Decimal(-1)
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"{name}={_value(env, name)!r} is not a positive amount")
    return amount


def session(env: Mapping[str, str] | None = None) -> Session:
    """The session ``MARKET_HOURS_SESSION`` (``HH:MM-HH:MM``) and ``MARKET_HOURS_ZONE``
    name (default 09:30-16:00 America/New_York, the NYSE's regular hours)."""
    env = os.environ if env is None else env
    text = _value(env, SESSION_VAR)
    m = _SESSION_RE.match(text)
    try:
        if m is None:
            raise ValueError
        start = time(int(m[1]), int(m[2]))
        end = time(int(m[3]), int(m[4]))
    except ValueError:
        raise ValueError(f"{SESSION_VAR}={text!r} is not a session like 09:30-16:00") from None
    if start >= end:
        raise ValueError(f"{SESSION_VAR}={text!r}: the open must come before the close")
    zone_name = _value(env, ZONE_VAR)
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{ZONE_VAR}={zone_name!r} is not a time zone like America/New_York"
        ) from None
    return Session(start, end, zone)


def limits(env: Mapping[str, str] | None = None) -> Limits:
    """Every setting, from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    return Limits(
        max_notional=_amount(env, MAX_NOTIONAL_VAR),
        session=session(env),
    )
