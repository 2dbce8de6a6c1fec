"""The one money and duration formatter every command prints with (engine.formats)."""

from __future__ import annotations

import math

import pytest

from engine.formats import ago, duration, usd


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (0.0, "$0.00"),
        (1234.567, "$1,234.57"),
        (1.0, "$1.00"),
        (0.12, "$0.12"),
        (0.1, "$0.10"),
        (0.3142, "$0.3142"),
        (0.123456, "$0.1235"),
        (0.004217, "$0.004217"),
        (0.0000001, "$0.0000001"),
        (0.999996, "$1.00"),
        (-0.5, "-$0.50"),
        (None, "-"),
        (math.inf, "-"),
    ],
)
def test_usd_keeps_cents_and_four_significant_digits_below_a_dollar(
    amount: float | None, text: str
) -> None:
    """Cents from $1 up; below, four significant digits, so a small run never shows $0.00."""
    assert usd(amount) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05"), (90_061, "1d 1:01:01"), (None, "-")],
)
def test_duration_is_a_clock(seconds: float | None, text: str) -> None:
    """Durations read H:MM:SS, with days in front past 24 h."""
    assert duration(seconds) == text


def test_ago_reads_at_a_glance() -> None:
    """Seconds up to two minutes, then minutes, then the clock."""
    assert [ago(s) for s in (12, 60, 119, 300, 7384, -1)] == [
        "12 s ago",
        "60 s ago",
        "119 s ago",
        "5 min ago",
        "2:03:04 ago",
        "-",
    ]
