"""bastion.models: the margin policy (the value types themselves are exercised
everywhere they cross the kernel)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bastion.models import AccountSnapshot, MarginPolicy, Side


def snapshot(positions: dict[str, str]) -> AccountSnapshot:
    held = {s: Decimal(q) for s, q in positions.items()}
    return AccountSnapshot(Decimal(0), Decimal(0), held, {}, Decimal(0), Decimal(0))


@pytest.mark.parametrize("maintenance", [0, 1, -0.1, 1.5, float("nan"), "0.25", None])
def test_maintenance_must_be_a_fraction(maintenance: object) -> None:
    """A maintenance level outside (0, 1), or not a number, is refused at construction."""
    with pytest.raises(ValueError, match="maintenance must be a fraction"):
        MarginPolicy(maintenance)  # type: ignore[arg-type]


def test_breached_below_maintenance_times_gross_only() -> None:
    """Equity strictly below maintenance x gross exposure is a breach; at it is not; a
    flat account (no gross exposure) never is, however poor."""
    policy = MarginPolicy(0.25)
    assert policy.breached(24.99, 100.0)
    assert not policy.breached(25.0, 100.0)
    assert not policy.breached(-1_000.0, 0.0)


def test_liquidation_closes_every_position_by_symbol() -> None:
    """One market order per non-zero position, sorted by symbol, on the opposite side for
    the whole (fractional) quantity, tagged margin-call; zero positions are skipped."""
    intents = MarginPolicy(0.3).liquidation(snapshot({"B": "100", "A": "-2.5", "Z": "0"}))
    assert [(i.symbol, i.side, i.quantity, i.type.value, i.tag) for i in intents] == [
        ("A", Side.BUY, Decimal("2.5"), "market", "margin-call"),
        ("B", Side.SELL, Decimal(100), "market", "margin-call"),
    ]
    assert MarginPolicy(0.3).liquidation(snapshot({})) == ()
