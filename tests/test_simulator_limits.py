"""The simulator's OpenAI-style rate limits: pure token buckets and the 429s the server sends."""

from __future__ import annotations

import asyncio
import math

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from engine.clock import FakeClock
from engine.headers import RateLimitSnapshot, parse_duration
from engine.simulator import RateLimits, SimSettings, Simulator, TokenBucket, run_simulator

MODEL = "gpt-4o-sim"


def test_bucket_starts_full_and_refills_continuously() -> None:
    """A 60/min bucket holds 60, refills one per second, and never exceeds its capacity."""
    clock = FakeClock()
    bucket = TokenBucket("requests", 60, 60.0, clock)
    assert bucket.capacity == 60
    assert bucket.level() == 60
    bucket.take(60)
    assert bucket.level() == 0
    clock.advance(2.5)
    assert bucket.level() == pytest.approx(2.5)
    clock.advance(1000)
    assert bucket.level() == 60


def test_wait_for_is_time_until_the_amount_fits() -> None:
    """wait_for says how long until an amount fits; more than the capacity never fits."""
    clock = FakeClock()
    bucket = TokenBucket("tokens", 6000, 60.0, clock)  # refills 100 per second
    bucket.take(6000)
    assert bucket.wait_for(250) == pytest.approx(2.5)
    clock.advance(2.5)
    assert bucket.wait_for(250) == 0.0
    assert bucket.wait_for(6001) == math.inf


def test_bucket_seconds_one_models_per_second_enforcement() -> None:
    """--bucket-seconds 1: capacity = limit/60, refill = limit/60 per second, so bursts fail."""
    clock = FakeClock()
    limits = RateLimits(rpm=600, tpm=None, bucket_seconds=1.0, clock=clock)
    assert limits.requests is not None
    assert limits.requests.capacity == pytest.approx(10)
    assert limits.requests.rate == pytest.approx(10)
    verdicts = [limits.admit(0).admitted for _ in range(11)]
    assert verdicts == [True] * 10 + [False]
    clock.advance(0.1)  # one more request's worth
    assert limits.admit(0).admitted
    assert not limits.admit(0).admitted
    # The same limit with a full-minute bucket takes a burst of 600.
    minute = RateLimits(rpm=600, tpm=None, bucket_seconds=60.0, clock=clock)
    assert sum(minute.admit(0).admitted for _ in range(601)) == 600


def test_refusal_is_free_and_admission_charges_in_full() -> None:
    """A refused request charges neither bucket; an admitted one pays 1 request + its tokens."""
    clock = FakeClock()
    limits = RateLimits(rpm=100, tpm=1000, bucket_seconds=60.0, clock=clock)
    assert limits.requests is not None and limits.tokens is not None
    assert limits.admit(900).admitted
    refused = limits.admit(200)
    assert not refused.admitted
    assert refused.refused_by == "tokens"
    assert refused.requested == 200
    assert limits.requests.level() == 99  # the refused request did not cost a request
    assert limits.tokens.level() == 100
    assert refused.retry_after_s == pytest.approx(100 / (1000 / 60))


def test_requests_bucket_is_reported_first_when_both_are_short() -> None:
    """When both buckets are short the refusal names requests, checked first."""
    clock = FakeClock()
    limits = RateLimits(rpm=1, tpm=10, bucket_seconds=60.0, clock=clock)
    assert limits.admit(10).admitted
    assert limits.admit(10).refused_by == "requests"


def test_request_larger_than_the_bucket_can_never_be_admitted() -> None:
    """A charge above the token capacity is refused with an infinite wait and no retry-after."""
    limits = RateLimits(rpm=None, tpm=1000, bucket_seconds=60.0, clock=FakeClock())
    verdict = limits.admit(1001)
    assert not verdict.admitted
    assert verdict.retry_after_s == math.inf
    assert "retry-after" not in verdict.headers()


def test_headers_use_openai_formats() -> None:
    """Headers give per-minute limits, floored remaining, Go-style resets and retry-after."""
    clock = FakeClock()
    limits = RateLimits(rpm=60, tpm=60_000, bucket_seconds=60.0, clock=clock)
    ok = limits.admit(30_000).headers()
    assert ok["x-ratelimit-limit-requests"] == "60"
    assert ok["x-ratelimit-remaining-requests"] == "59"
    assert ok["x-ratelimit-reset-requests"] == "1s"
    assert ok["x-ratelimit-limit-tokens"] == "60000"
    assert ok["x-ratelimit-remaining-tokens"] == "30000"
    assert ok["x-ratelimit-reset-tokens"] == "30s"
    assert "retry-after" not in ok
    clock.advance(0.25)
    refused = limits.admit(40_000)
    headers = refused.headers()
    # 29_750 missing tokens at 1000/s
    assert headers["retry-after-ms"] == "9750"
    assert headers["retry-after"] == "10"
    assert headers["x-ratelimit-remaining-tokens"] == "30250"
    assert headers["x-ratelimit-reset-tokens"] == "29.75s"
    assert headers["x-ratelimit-reset-requests"] == "750ms"
    snapshot = RateLimitSnapshot.from_headers(headers)
    assert snapshot.limit_tokens == 60_000
    assert snapshot.reset_tokens_s == pytest.approx(29.75)


def limited(**kwargs: object) -> SimSettings:
    return SimSettings(ttft_s=0.0, per_token_s=0.0, **kwargs)  # type: ignore[arg-type]


async def post(
    session: aiohttp.ClientSession, sim: Simulator, text: str, max_tokens: int
) -> tuple[int, CIMultiDict[str], bytes]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }
    async with session.post(sim.base_url + "/chat/completions", data=orjson.dumps(body)) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


@pytest.mark.anyio
async def test_server_429_has_openai_body_and_headers_and_refills() -> None:
    """Over the TPM limit the server answers OpenAI's 429; after the wait it admits again."""
    clock = FakeClock(100.0)
    async with (
        run_simulator(limited(tpm=1200, rpm=100), clock=clock) as sim,
        aiohttp.ClientSession() as session,
    ):
        first = await post(session, sim, "hello", 1000)
        second = await post(session, sim, "hello again", 1000)
        clock.advance(60.0)
        third = await post(session, sim, "hello again", 1000)
        stats = sim.stats()
    status, headers, _ = first
    assert status == 200
    charged = 1200 - int(headers["x-ratelimit-remaining-tokens"])
    assert 1000 < charged < 1020  # max_tokens + the prompt's tokens
    assert headers["x-ratelimit-limit-tokens"] == "1200"
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "99"

    status, headers, raw = second
    assert status == 429
    error = orjson.loads(raw)["error"]
    assert error["type"] == "tokens"
    assert error["code"] == "rate_limit_exceeded"
    assert error["param"] is None
    assert error["message"].startswith(f"Rate limit reached for {MODEL} in organization")
    assert "on tokens per min (TPM): Limit 1200" in error["message"]
    wait = float(headers["retry-after-ms"]) / 1000
    assert wait == pytest.approx((1000 + 12 - (1200 - charged)) / 20, abs=0.5)
    assert int(headers["retry-after"]) == math.ceil(wait)
    assert headers["x-ratelimit-remaining-requests"] == "99"  # the 429 was free
    reset = parse_duration(headers["x-ratelimit-reset-tokens"])
    assert reset == pytest.approx(charged / 20, abs=0.01)

    assert third[0] == 200
    assert stats["rate_limited"] == {"requests": 0, "tokens": 1}
    assert stats["admitted"] == 2
    assert stats["by_status"] == {"200": 2, "429": 1}
    assert stats["first_admission_s"] == 100.0
    assert stats["last_admission_s"] == 160.0


@pytest.mark.anyio
async def test_server_rpm_429_names_requests() -> None:
    """Past the RPM bucket the 429's type is "requests" and its message names RPM."""
    clock = FakeClock()
    async with (
        run_simulator(limited(rpm=2), clock=clock) as sim,
        aiohttp.ClientSession() as session,
    ):
        statuses = [(await post(session, sim, f"q{i}", 10))[0] for i in range(2)]
        status, headers, raw = await post(session, sim, "q3", 10)
    assert statuses == [200, 200]
    assert status == 429
    error = orjson.loads(raw)["error"]
    assert error["type"] == "requests"
    assert "requests per min (RPM): Limit 2, Used 2, Requested 1" in error["message"]
    assert headers["retry-after"] == "30"
    assert "x-ratelimit-limit-tokens" not in headers


@pytest.mark.anyio
async def test_request_too_large_for_the_bucket_says_so() -> None:
    """A request whose charge exceeds the whole TPM bucket gets 429 "Request too large"."""
    async with (
        run_simulator(limited(tpm=500), clock=FakeClock()) as sim,
        aiohttp.ClientSession() as session,
    ):
        status, headers, raw = await post(session, sim, "hello", 600)
    assert status == 429
    assert orjson.loads(raw)["error"]["message"].startswith(f"Request too large for {MODEL}")
    assert "retry-after" not in headers


@pytest.mark.anyio
async def test_default_max_tokens_is_charged_when_absent() -> None:
    """A request without max_tokens is charged prompt + default_max_tokens."""
    clock = FakeClock()
    async with (
        run_simulator(limited(tpm=100_000, default_max_tokens=4000), clock=clock) as sim,
        aiohttp.ClientSession() as session,
    ):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(sim.base_url + "/chat/completions", data=orjson.dumps(body)) as r:
            remaining = int(r.headers["x-ratelimit-remaining-tokens"])
        stats = sim.stats()
    prompt = 100_000 - 4000 - remaining
    assert 0 < prompt < 20
    assert stats["tokens_charged"] == 4000 + prompt


@pytest.mark.anyio
async def test_real_time_refill_with_a_tiny_bucket() -> None:
    """With a real clock a 0.1 s bucket refuses a burst and admits again after a short wait."""
    async with (
        run_simulator(limited(rpm=600, bucket_seconds=0.1)) as sim,
        aiohttp.ClientSession() as session,
    ):
        assert (await post(session, sim, "a", 5))[0] == 200
        status, headers, _ = await post(session, sim, "b", 5)
        if status == 429:  # unless this noisy machine already took 0.1 s between the two
            await asyncio.sleep(int(headers["retry-after-ms"]) / 1000 + 0.02)
        assert (await post(session, sim, "c", 5))[0] == 200
