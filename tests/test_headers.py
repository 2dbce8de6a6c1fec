"""OpenAI's rate-limit headers: durations both ways and tolerant parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.headers import RateLimitSnapshot, format_duration, parse_duration, parse_retry_after


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("7", 7.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """OpenAI's Go-style durations and bare numbers parse to seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1s junk", "m"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    """Anything that is not a duration is None, never an exception."""
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (360, "6m0s"), (1.5, "1.5s"), (3723.5, "1h2m3.5s"), (59.9996, "1m0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Seconds format the way OpenAI writes them."""
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=90_000, allow_nan=False))
def test_duration_round_trip(seconds: float) -> None:
    """Formatting then parsing loses at most a millisecond."""
    parsed = parse_duration(format_duration(seconds))
    assert parsed is not None
    assert abs(parsed - seconds) <= 0.0011


def test_snapshot_from_headers() -> None:
    """All six x-ratelimit headers are read; absent or garbled ones become None."""
    snap = RateLimitSnapshot.from_headers(
        {
            "x-ratelimit-limit-requests": "1200",
            "x-ratelimit-limit-tokens": "300000",
            "x-ratelimit-remaining-requests": "1199",
            "x-ratelimit-remaining-tokens": "299500",
            "x-ratelimit-reset-requests": "50ms",
            "x-ratelimit-reset-tokens": "garbage",
        }
    )
    assert (snap.limit_requests, snap.limit_tokens) == (1200, 300000)
    assert (snap.remaining_requests, snap.remaining_tokens) == (1199, 299500)
    assert snap.reset_requests_s == pytest.approx(0.05)
    assert snap.reset_tokens_s is None
    assert not snap.empty
    assert RateLimitSnapshot.from_headers({}).empty


def test_retry_after_prefers_milliseconds() -> None:
    """retry-after-ms wins over retry-after; an HTTP date falls back to None."""
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert parse_retry_after({}) is None
