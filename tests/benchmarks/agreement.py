"""Do two frameworks trade the same?  The benchmark's trade-agreement check.

Every framework's executions are reduced to one :class:`Execution` per bar (the
index of the bar whose open filled it, the signed quantity, the price) and
:func:`compare` lines them up bar by bar: the same position changes on the same
bars, at the same price to the cent.  Nothing here is timed and nothing imports
a framework, so ``tests/test_bench_harness.py`` can pin it.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, NamedTuple

CENT = Decimal("0.01")


class Execution(NamedTuple):
    """What one framework did on one bar: bought (> 0) or sold (< 0) ``quantity`` at
    ``price`` (the volume-weighted price when several fills share the bar)."""

    bar: int
    quantity: Decimal
    price: Decimal


def to_decimal(value: object) -> Decimal:
    """A float as the decimal its ``repr`` shows (0.1 -> 0.1, not 0.1000000000000000055...)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def per_bar(fills: Iterable[tuple[int, object, object]]) -> list[Execution]:
    """Merge ``(bar, signed quantity, price)`` fills into one :class:`Execution` per
    bar, in bar order; fills that net to zero on a bar leave nothing."""
    quantities: dict[int, Decimal] = {}
    notional: dict[int, Decimal] = {}
    volume: dict[int, Decimal] = {}
    for bar, quantity, price in fills:
        q, p = to_decimal(quantity), to_decimal(price)
        quantities[bar] = quantities.get(bar, Decimal(0)) + q
        notional[bar] = notional.get(bar, Decimal(0)) + abs(q) * p
        volume[bar] = volume.get(bar, Decimal(0)) + abs(q)
    return [
        Execution(bar, quantities[bar], notional[bar] / volume[bar])
        for bar in sorted(quantities)
        if quantities[bar] != 0
    ]


def cents(price: Decimal) -> Decimal:
    return price.quantize(CENT, rounding=ROUND_HALF_EVEN)


def compare(
    reference: list[Execution], other: list[Execution], *, examples: int = 5
) -> dict[str, Any]:
    """Line ``other`` up against ``reference`` bar by bar.

    ``agree`` is true when both traded on exactly the same bars, the same signed
    quantities, at prices equal once rounded to the cent.  Otherwise the counts
    say how they differ and ``examples`` lists the first few disagreements
    (never hidden: the harness prints them).  ``max_price_difference`` is the
    largest absolute price difference on bars where both traded, before rounding.
    """
    mine = {e.bar: e for e in reference}
    theirs = {e.bar: e for e in other}
    only_reference = sorted(mine.keys() - theirs.keys())
    only_other = sorted(theirs.keys() - mine.keys())
    quantity_differs: list[int] = []
    price_differs: list[int] = []
    largest = Decimal(0)
    for bar in sorted(mine.keys() & theirs.keys()):
        a, b = mine[bar], theirs[bar]
        largest = max(largest, abs(a.price - b.price))
        if a.quantity != b.quantity:
            quantity_differs.append(bar)
        elif cents(a.price) != cents(b.price):
            price_differs.append(bar)
    disagreements = sorted(only_reference + only_other + quantity_differs + price_differs)

    def show(bar: int) -> str:
        a, b = mine.get(bar), theirs.get(bar)
        left = f"{a.quantity:+} @ {a.price}" if a else "nothing"
        right = f"{b.quantity:+} @ {b.price}" if b else "nothing"
        return f"bar {bar}: {left} vs {right}"

    return {
        "agree": not disagreements,
        "reference_executions": len(reference),
        "other_executions": len(other),
        "matched": len(mine.keys() & theirs.keys()) - len(quantity_differs) - len(price_differs),
        "only_reference": len(only_reference),
        "only_other": len(only_other),
        "quantity_differs": len(quantity_differs),
        "price_differs_to_the_cent": len(price_differs),
        "max_price_difference": str(largest),
        "examples": [show(bar) for bar in disagreements[:examples]],
    }
