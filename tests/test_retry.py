"""The retry policy: every error class to its outcome, backoff bounds, patience, refusals."""

from __future__ import annotations

import random

import pytest

from engine.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionLost,
    ConnectionRefused,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    ModelNotFound,
    OversizeRequest,
    PermissionDenied,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
    ServerUnreachable,
)
from engine.retry import (
    GiveUp,
    RateLimitWait,
    Retry,
    RetryConfig,
    backoff_delay,
    decide,
)

POLICY = RetryConfig()

CASES: list[tuple[RequestError, type[Retry | RateLimitWait | GiveUp]]] = [
    (ServerError("502 bad gateway", status=502), Retry),
    (RequestTimeout("read timed out after 60 s"), Retry),
    (ConnectionLost("connection reset by peer"), Retry),
    (MalformedResponse("body ended mid-JSON"), Retry),
    (ConnectionRefused("nothing listens at 127.0.0.1:9"), Retry),
    (RateLimited("429 tokens", retry_after=1.5, limit_kind="tokens"), RateLimitWait),
    (ContextLengthExceeded("prompt + max_tokens > 8192", status=400), GiveUp),
    (ContentFiltered("content_filter", status=400), GiveUp),
    (OversizeRequest("charge larger than the bucket"), GiveUp),
    (AuthenticationFailed("bad key", status=401), GiveUp),
    (PermissionDenied("no access to model", status=403), GiveUp),
    (ModelNotFound("no such model", status=404), GiveUp),
    (ServerUnreachable("refused 5 times"), GiveUp),
    (RequestError("something m2l has no name for", status=418), GiveUp),
]


@pytest.mark.parametrize(("error", "outcome"), CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_each_error_class_gets_its_outcome(
    error: RequestError, outcome: type[Retry | RateLimitWait | GiveUp]
) -> None:
    """Transient errors retry, 429 waits on the limiter, permanent and fatal ones give up."""
    decision = decide(POLICY, error, attempt=1, rate_limited=1, unreached=1, rng=random.Random(1))
    assert type(decision) is outcome
    if isinstance(decision, GiveUp):
        assert decision.error is error


def test_exhausted_attempts_give_up_with_the_original_error() -> None:
    """After max_attempts transient failures the caller gets the very error of the last one."""
    error = ServerError("503", status=503)
    rng = random.Random(1)
    assert isinstance(decide(POLICY, error, attempt=5, rate_limited=0, rng=rng), Retry)
    decision = decide(POLICY, error, attempt=6, rate_limited=0, rng=rng)
    assert decision == GiveUp(error)
    assert isinstance(decision, GiveUp) and decision.error is error


def test_an_unreached_server_never_spends_attempts_and_backs_off() -> None:
    """A failed connection retries whatever the attempt count, waiting at least half the cap."""
    error = ConnectionRefused("nothing listens at 127.0.0.1:9")
    rng = random.Random(5)
    for unreached in (1, 4, 40):
        decision = decide(POLICY, error, attempt=6, rate_limited=0, unreached=unreached, rng=rng)
        cap = min(POLICY.max_delay_s, POLICY.base_delay_s * 2 ** (unreached - 1))
        assert isinstance(decision, Retry) and cap / 2 <= decision.delay_s <= cap
    with pytest.raises(ValueError):
        decide(POLICY, error, attempt=0, rate_limited=0, unreached=0, rng=rng)


def test_rate_limits_do_not_spend_transient_attempts() -> None:
    """A 429 waits on the limiter whether it came first or after every transient attempt."""
    error = RateLimited("429", retry_after=None)
    for attempt in (0, 6):
        decision = decide(POLICY, error, attempt=attempt, rate_limited=3, rng=random.Random(1))
        assert decision == RateLimitWait(None)


def test_rate_limit_patience_exhausted_gives_up_with_rate_limited() -> None:
    """The 50th 429 of one request gives up with that RateLimited; the 49th still waits."""
    error = RateLimited("429", retry_after=2.0)
    rng = random.Random(1)
    assert decide(POLICY, error, attempt=1, rate_limited=49, rng=rng) == RateLimitWait(2.0)
    decision = decide(POLICY, error, attempt=1, rate_limited=50, rng=rng)
    assert isinstance(decision, GiveUp) and decision.error is error


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    """A server's Retry-After is waited at least, even beyond max_delay_s."""
    rng = random.Random(3)
    for retry_after in (7.5, 100.0):
        error = ServerError("503", status=503, retry_after=retry_after)
        decision = decide(POLICY, error, attempt=1, rate_limited=0, rng=rng)
        assert isinstance(decision, Retry)
        assert decision.delay_s >= retry_after
        assert decision.delay_s <= max(retry_after, POLICY.base_delay_s)


def test_full_jitter_stays_within_the_exponential_cap() -> None:
    """Delays spread over [0, min(max, base x 2^(attempt-1))] and never leave it."""
    rng = random.Random(11)
    for attempt in range(1, 12):
        cap = min(POLICY.max_delay_s, POLICY.base_delay_s * 2 ** (attempt - 1))
        delays = [backoff_delay(POLICY, attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert min(delays) < 0.25 * cap and max(delays) > 0.75 * cap  # jittered, not fixed


def test_huge_attempt_numbers_stay_capped() -> None:
    """An absurd attempt number neither overflows nor exceeds max_delay_s."""
    assert backoff_delay(POLICY, 10_000, random.Random(1)) <= POLICY.max_delay_s


def test_testing_switch_removes_every_wait() -> None:
    """backoff=False makes every retry immediate, Retry-After included."""
    policy = RetryConfig(backoff=False)
    error = ServerError("503", status=503, retry_after=30.0)
    assert decide(policy, error, attempt=3, rate_limited=0, rng=random.Random(1)) == Retry(0.0)


def test_impossible_counts_and_policies_are_refused() -> None:
    """An uncounted failure is a programming error; a policy with no attempts is a ConfigError."""
    rng = random.Random(1)
    with pytest.raises(ValueError):
        decide(POLICY, ServerError("x"), attempt=0, rate_limited=0, rng=rng)
    with pytest.raises(ValueError):
        decide(POLICY, RateLimited("429"), attempt=1, rate_limited=0, rng=rng)
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryConfig(max_attempts=0)
    with pytest.raises(ConfigError, match="max_delay_s"):
        RetryConfig(base_delay_s=5.0, max_delay_s=1.0)
