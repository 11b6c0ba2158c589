"""The benchmark harness's trade-agreement check (tests/benchmarks/agreement.py).

Nothing here is timed: these tests pin how the harness decides that two
frameworks traded the same, so a disagreement it prints is a real one and an
agreement it claims cannot hide one.
"""

from __future__ import annotations

import importlib.util
from decimal import Decimal
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    path = Path(__file__).parent / "benchmarks" / "agreement.py"
    spec = importlib.util.spec_from_file_location("bench_agreement", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


agreement = _load()


def test_per_bar_merges_fills_of_one_bar_at_their_volume_weighted_price() -> None:
    """Partial fills on one bar become one execution (summed quantity, VWAP); bars
    come out in order, and fills that net to nothing on a bar leave nothing."""
    merged = agreement.per_bar(
        [(5, 60, 10.0), (2, -100, 9.5), (5, 40, 10.5), (7, 100, 1.0), (7, -100, 1.0)]
    )
    assert merged == [
        agreement.Execution(2, Decimal(-100), Decimal("9.5")),
        agreement.Execution(5, Decimal(100), Decimal("10.2")),
    ]


def test_floats_are_read_as_their_repr() -> None:
    """A float price is the decimal it prints as, not its binary expansion."""
    assert agreement.to_decimal(0.1) == Decimal("0.1")
    assert agreement.to_decimal(Decimal("388.27")) == Decimal("388.27")


def test_same_trades_agree_and_a_sub_cent_difference_is_reported_not_failed() -> None:
    """Prices equal to the cent agree; the largest raw difference is still shown."""
    ours = agreement.per_bar([(30, 100, Decimal("388.2672436619148")), (60, -100, 388.5)])
    theirs = agreement.per_bar([(30, 100.0, 388.2672436619149), (60, -100.0, 388.5)])
    check = agreement.compare(ours, theirs)
    assert check["agree"] is True
    assert check["matched"] == 2
    assert check["examples"] == []
    assert Decimal(check["max_price_difference"]) == Decimal("1E-13")


def test_every_kind_of_disagreement_is_counted_and_shown() -> None:
    """A missing trade on either side, a different quantity and a price a cent
    off each count once, and the first ones are spelled out bar by bar."""
    ours = agreement.per_bar([(1, 100, 10.0), (2, -100, 11.0), (3, 100, 12.0), (4, -100, 13.0)])
    theirs = agreement.per_bar([(2, -100, 11.0), (3, 50, 12.0), (4, -100, 13.01), (9, 100, 1.0)])
    check = agreement.compare(ours, theirs)
    assert check["agree"] is False
    assert check["matched"] == 1
    assert (check["only_reference"], check["only_other"]) == (1, 1)
    assert check["quantity_differs"] == 1
    assert check["price_differs_to_the_cent"] == 1
    assert check["examples"] == [
        "bar 1: +100 @ 10.0 vs nothing",
        "bar 3: +100 @ 12.0 vs +50 @ 12.0",
        "bar 4: -100 @ 13.0 vs -100 @ 13.01",
        "bar 9: nothing vs +100 @ 1.0",
    ]


def test_rounding_to_the_cent_is_half_even() -> None:
    """Prices are compared after rounding each to the cent (half to even), so two
    prices either side of a half cent can disagree although a hair apart; the
    harness prints such a case rather than widening the tolerance."""
    assert agreement.cents(Decimal("1.005")) == Decimal("1.00")
    assert agreement.cents(Decimal("1.0051")) == Decimal("1.01")
