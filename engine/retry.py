"""Retry policy: what each request error means, how long to wait, and when to give up.

Every failure is one of four kinds, decided here and nowhere else:

- **transient** — ``ServerError`` (5xx), ``RequestTimeout``, ``ConnectionLost`` (reset or
  truncated body), ``MalformedResponse``: the same request may well succeed, so it is retried
  after an exponential backoff with full jitter (a ``Retry-After`` the server sent is the
  floor), up to ``max_attempts`` attempts in all; after the last one the caller gets the
  original error.
- **server not reached** — ``ConnectFailed`` (refused, connect timeout, no DNS): the request
  never left the machine, so it is not one of its attempts; it is sent again after a backoff
  until the server answers. How long the run waits for the server is the run's decision
  (``engine.health.RunHealth``, ``retry.unreachable_s``), not the request's.
- **rate limited** — ``RateLimited`` (HTTP 429): not the request's fault and not one of its
  attempts; the limiter pauses all dispatch until the reset the server names, and the request
  queues again. After ``rate_limit_patience`` 429s the request gives up with ``RateLimited``.
- **capacity unavailable** — ``CapacityUnavailable`` (flex processing's 429 "resource
  unavailable"): not a rate limit (the limiter is not told) and not one of the request's
  attempts; retried with backoff up to ``rate_limit_patience`` times (the dispatcher may send it
  at the default tier after ``flex_fallback_after_s``).
- **permanent for the request** — ``ContextLengthExceeded``, ``ContentFiltered``,
  ``OversizeRequest`` (and any ``RequestError`` of no other kind): retrying cannot help, so the
  conversation fails at once with the typed error and its reason.
- **fatal for the run** — ``AuthenticationFailed`` (401), ``PermissionDenied`` (403),
  ``ModelNotFound`` (404), ``ServerUnreachable``: nothing will succeed until the user fixes
  something, so there is no retry and the run stops.

These are pure functions and one small counter; the async loop that applies them lives in the
dispatcher. The policy is the run's ``RetryConfig`` as loaded; ``RetryConfig(backoff=False)``
removes every wait, for tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.config import RetryConfig
from engine.errors import (
    CapacityUnavailable,
    ConnectFailed,
    RateLimited,
    RequestError,
    TransientError,
)

__all__ = [
    "GiveUp",
    "RateLimitWait",
    "Retry",
    "backoff_delay",
    "decide",
]


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the request again after ``delay_s`` seconds."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class RateLimitWait:
    """Report the 429 to the limiter (it pauses everyone), queue again; ``delay_s``: Retry-After."""

    delay_s: float | None


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop trying: raise ``error``, the original one (a FatalRunError stops the run)."""

    error: RequestError


def backoff_delay(
    policy: RetryConfig, attempt: int, rng: random.Random, retry_after: float | None = None
) -> float:
    """Full-jitter exponential backoff after failed attempt ``attempt`` (1-based), capped.

    A server's ``retry_after`` is a floor, honoured even above ``max_delay_s``: the server knows
    when it will be back. Raises ValueError for an attempt below 1.
    """
    if attempt < 1:
        raise ValueError(f"attempts are numbered from 1, got {attempt}")
    if not policy.backoff:
        return 0.0
    # The exponent is clamped so that a huge attempt number cannot overflow a float.
    cap = min(policy.max_delay_s, policy.base_delay_s * 2.0 ** min(attempt - 1, 60))
    # Full jitter (uniform on [0, cap]) spreads retries of a burst that failed together.
    delay = rng.uniform(0.0, cap)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def decide(
    policy: RetryConfig,
    error: RequestError,
    *,
    attempt: int,
    rate_limited: int,
    rng: random.Random,
    unreached: int = 0,
    unavailable: int = 0,
) -> Retry | RateLimitWait | GiveUp:
    """What to do after ``error``.

    ``attempt`` counts this request's attempts that did not end in a 429, an unreached server
    or a flex capacity refusal, this one included (so 1 after a first transient failure, and 0
    when a 429 came first); ``rate_limited`` counts its 429s, ``unreached`` its failed
    connections, ``unavailable`` its flex capacity refusals, this one included. Raises
    ValueError for counts that cannot be.
    """
    if attempt < 0 or rate_limited < 0 or unreached < 0 or unavailable < 0:
        raise ValueError(
            f"attempt, rate_limited, unreached and unavailable count up from 0; got {attempt}, "
            f"{rate_limited}, {unreached}, {unavailable}"
        )
    if isinstance(error, CapacityUnavailable):
        if unavailable < 1:
            raise ValueError("a capacity refusal must be counted in unavailable before deciding")
        if unavailable >= policy.rate_limit_patience:
            return GiveUp(error)
        return Retry(backoff_delay(policy, unavailable, rng, error.retry_after))
    if isinstance(error, ConnectFailed):
        if unreached < 1:
            raise ValueError("a failed connection must be counted in unreached before deciding")
        # Equal jitter: at least half the backoff, so hundreds of waiting requests do not
        # hammer a restarting server with near-zero delays.
        delay = backoff_delay(policy, unreached, rng)
        cap = min(policy.max_delay_s, policy.base_delay_s * 2.0 ** min(unreached - 1, 60))
        return Retry(max(delay, cap / 2) if policy.backoff else 0.0)
    if isinstance(error, RateLimited):
        if rate_limited < 1:
            raise ValueError("a 429 must be counted in rate_limited before deciding on it")
        if rate_limited >= policy.rate_limit_patience:
            return GiveUp(error)
        return RateLimitWait(error.retry_after)
    if isinstance(error, TransientError):
        if attempt < 1:
            raise ValueError("a failed attempt must be counted in attempt before deciding on it")
        if attempt >= policy.max_attempts:
            return GiveUp(error)
        return Retry(backoff_delay(policy, attempt, rng, error.retry_after))
    # Permanent for the request, fatal for the run, or an error of no known kind: retrying
    # the same bytes cannot change the answer.
    return GiveUp(error)
