"""OpenAI's rate-limit headers: parse them from responses, and format them (for the simulator).

OpenAI sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are durations in
Go's format (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``). Servers that send none (vLLM, llama.cpp)
give a snapshot of Nones, and the limiter then relies on its configured limits alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RateLimitSnapshot", "format_duration", "parse_duration", "parse_retry_after"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float | None:
    """``"6m0s"`` → 360.0; a bare number is seconds; None when the text is not a duration."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def format_duration(seconds: float) -> str:
    """Seconds in OpenAI's format: 0.02 → "20ms", 360 → "6m0s", 1.5 → "1.5s"."""
    # Round to whole milliseconds first, so 59.9996 s becomes "1m0s", not "60s".
    millis = round(max(0.0, seconds) * 1000)
    if millis < 1000:
        return f"{millis}ms"
    minutes, secs = divmod(millis / 1000, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    sec_text = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (preferred, finer) or ``retry-after``."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None  # an HTTP date: rare from LLM providers; fall back to our own backoff
    return None


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RateLimitSnapshot:
    """What one response said about the key's limits; every field may be missing."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitSnapshot:
        """Read the ``x-ratelimit-*`` headers (any case); absent or garbled fields become None."""
        get = headers.get

        def dur(name: str) -> float | None:
            value = get(name)
            return parse_duration(value) if value is not None else None

        return cls(
            limit_requests=_int_or_none(get("x-ratelimit-limit-requests")),
            limit_tokens=_int_or_none(get("x-ratelimit-limit-tokens")),
            remaining_requests=_int_or_none(get("x-ratelimit-remaining-requests")),
            remaining_tokens=_int_or_none(get("x-ratelimit-remaining-tokens")),
            reset_requests_s=dur("x-ratelimit-reset-requests"),
            reset_tokens_s=dur("x-ratelimit-reset-tokens"),
        )

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__slots__)
