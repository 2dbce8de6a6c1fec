"""OpenAI-style rate limits as continuous token buckets, pure and driven by an injectable clock.

A limit of L per minute is a bucket holding ``L * bucket_seconds / 60`` that refills at ``L / 60``
per second and starts full. Admission is all-or-nothing across the request and token buckets:
a rejected request costs nothing, an admitted one is charged in full (no refund later).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.clock import Clock
from engine.headers import format_duration

__all__ = ["Admission", "BucketState", "RateLimits", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class BucketState:
    """One bucket as a response reports it: the per-minute limit, what is left, time to full."""

    kind: str  # "requests" | "tokens"
    limit_per_minute: int
    remaining: float
    reset_s: float

    def headers(self) -> dict[str, str]:
        """The three ``x-ratelimit-*`` headers OpenAI sends for this bucket."""
        return {
            f"x-ratelimit-limit-{self.kind}": str(self.limit_per_minute),
            f"x-ratelimit-remaining-{self.kind}": str(max(0, math.floor(self.remaining))),
            f"x-ratelimit-reset-{self.kind}": format_duration(self.reset_s),
        }


class TokenBucket:
    """A continuous bucket of ``limit * bucket_seconds / 60`` refilling at ``limit / 60`` per s."""

    __slots__ = ("_clock", "_level", "_updated", "capacity", "kind", "limit_per_minute", "rate")

    def __init__(self, kind: str, limit_per_minute: int, bucket_seconds: float, clock: Clock):
        if limit_per_minute < 1 or bucket_seconds <= 0:
            raise ValueError(
                f"{kind} bucket needs limit >= 1 and bucket_seconds > 0, "
                f"got {limit_per_minute} and {bucket_seconds}"
            )
        self.kind = kind
        self.limit_per_minute = limit_per_minute
        self.capacity = limit_per_minute * bucket_seconds / 60.0
        self.rate = limit_per_minute / 60.0
        self._clock = clock
        self._level = self.capacity
        self._updated = clock.now()

    def level(self) -> float:
        """The bucket's content now, after refilling for the time that passed."""
        now = self._clock.now()
        if now > self._updated:
            self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
            self._updated = now
        return self._level

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0 if it fits now; inf if it exceeds the capacity)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level()) / self.rate)

    def take(self, amount: float) -> None:
        """Charge ``amount`` unconditionally (the caller checked ``wait_for`` first)."""
        self._level = self.level() - amount

    def state(self) -> BucketState:
        level = self.level()
        reset = max(0.0, (self.capacity - level) / self.rate)
        return BucketState(self.kind, self.limit_per_minute, level, reset)


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one request: admitted or not, which bucket refused, and the bucket states."""

    admitted: bool
    buckets: tuple[BucketState, ...]
    refused_by: str | None = None  # "requests" | "tokens"
    retry_after_s: float = 0.0  # inf when the request can never fit (larger than the bucket)
    requested: int = 0  # the amount the refusing bucket was asked for

    def headers(self) -> dict[str, str]:
        """``x-ratelimit-*`` for every configured bucket, plus retry-after on a refusal."""
        out: dict[str, str] = {}
        for bucket in self.buckets:
            out.update(bucket.headers())
        if not self.admitted and math.isfinite(self.retry_after_s):
            # Round up: a client that waits exactly this long must find room.
            out["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
            out["retry-after-ms"] = str(max(1, math.ceil(self.retry_after_s * 1000)))
        return out


class RateLimits:
    """The requests-per-minute and tokens-per-minute buckets of one key (either may be absent)."""

    __slots__ = ("requests", "tokens")

    def __init__(
        self, rpm: int | None, tpm: int | None, bucket_seconds: float, clock: Clock
    ) -> None:
        self.requests = (
            TokenBucket("requests", rpm, bucket_seconds, clock) if rpm is not None else None
        )
        self.tokens = TokenBucket("tokens", tpm, bucket_seconds, clock) if tpm is not None else None

    @property
    def enabled(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def _states(self) -> tuple[BucketState, ...]:
        return tuple(b.state() for b in (self.requests, self.tokens) if b is not None)

    def admit(self, token_charge: int) -> Admission:
        """Charge one request and ``token_charge`` tokens if both fit; otherwise charge nothing."""
        # The requests bucket is checked first, so when both are short the 429 says "requests",
        # which is what a client should wait for first (it refills one whole request quickest).
        for bucket, amount in ((self.requests, 1), (self.tokens, token_charge)):
            if bucket is None:
                continue
            wait = bucket.wait_for(amount)
            if wait > 0.0:
                return Admission(False, self._states(), bucket.kind, wait, amount)
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(token_charge)
        return Admission(True, self._states())
