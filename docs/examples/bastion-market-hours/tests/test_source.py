"""The ``hours`` source keeps the Source contract, and its bars keep to the session."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from bastion import ConfigError, Kernel
from bastion.interfaces import PluginContext
from bastion.testing import SourceConformance

from bastion_market_hours import settings
from bastion_market_hours.source import HoursSource

NEW_YORK = ZoneInfo("America/New_York")


class TestHoursSource(SourceConformance):
    """Every test of bastion.testing.SourceConformance, against a three-symbol source."""

    def make_source(self):
        return HoursSource.open("AAA,BBB,CCC,days=3,minutes=60")


def test_bars_are_inside_the_session_only():
    """Every bar closes on a weekday after the open and no later than the close, New
    York time, in winter and in summer (daylight saving moves the bars in UTC)."""
    for start in ("2024-01-02", "2024-07-01"):
        source = HoursSource.open(f"AAA,days=10,start={start}")
        times = [b.ts.astimezone(NEW_YORK) for b in source.bars()]
        assert len(times) == 10 * 13  # 30-minute bars, 09:30 to 16:00
        assert all(t.weekday() < 5 for t in times)
        assert {(t.hour, t.minute) for t in times} == {
            (h, m) for h in range(10, 16) for m in (0, 30)
        } | {(16, 0)}
    summer = next(HoursSource.open("AAA,start=2024-07-01").bars())
    assert summer.ts == datetime(2024, 7, 1, 14, 0, tzinfo=UTC)  # 10:00 EDT


def test_the_same_options_give_the_same_bars():
    """Seeded: the same spec gives the same prices; a symbol's prices do not depend on
    which other symbols were asked for; another seed gives other prices."""
    one = list(HoursSource.open("AAA,BBB,days=2").bars(["AAA"]))
    assert one == list(HoursSource.open("AAA,BBB,days=2").bars(["AAA"]))
    assert one == list(HoursSource.open("AAA,days=2").bars())
    assert one != list(HoursSource.open("AAA,days=2,seed=2").bars())


def test_the_session_comes_from_the_settings(monkeypatch):
    """MARKET_HOURS_SESSION and MARKET_HOURS_ZONE move the bars with the session."""
    monkeypatch.setenv(settings.SESSION_VAR, "08:00-12:00")
    monkeypatch.setenv(settings.ZONE_VAR, "Europe/London")
    source = HoursSource.open("AAA,days=1,minutes=60")
    assert [b.ts.hour for b in source.bars()] == [9, 10, 11, 12]  # GMT = UTC in January


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("aapl", "is not a symbol"),
        ("AAA,days=0", "days='0' is not a whole number"),
        ("AAA,minutes=x", "minutes='x' is not a whole number"),
        ("AAA,start=soon", "start='soon' is not a date"),
        ("AAA,speed=2", "unknown option 'speed'"),
    ],
)
def test_a_bad_spec_is_one_line_naming_it(spec, needle):
    """A bad symbol or option stops the run before it starts: a one-line ConfigError."""
    with pytest.raises(ConfigError, match=needle) as caught:
        HoursSource.open(spec)
    assert "\n" not in str(caught.value)


def test_bastion_opens_the_source_by_name(tmp_path):
    """The kernel finds the offer 'hours' through the installed entry point and calls
    its factory as factory(spec, context)."""
    source = Kernel().open_source("hours:AAA,days=1", PluginContext("development", tmp_path))
    assert source.symbols() == ("AAA",)
    assert source.count() == 13
