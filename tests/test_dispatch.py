"""The client and dispatcher against the simulator: each failure becomes the right error class
and outcome, retries recover, and nothing hangs past its timeout."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from engine.chat import ChatRequest, ChatResult, Usage
from engine.client import ChatClient
from engine.config import LimitsConfig, ProviderConfig, RetryConfig, Secret
from engine.dispatcher import Dispatcher
from engine.errors import (
    AuthenticationFailed,
    ConnectionLost,
    ContextLengthExceeded,
    MalformedResponse,
    ModelNotFound,
    OversizeRequest,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
)
from engine.events import Event
from engine.headers import RateLimitSnapshot
from engine.limiter import RateLimiter
from engine.simulator import FaultRates, SimSettings, run_simulator
from engine.tokens import TokenCounter

pytestmark = pytest.mark.anyio

COUNTER = TokenCounter("gpt-4o-mini")


def request(
    text: str = "Target language: French\nExplain rain.", *, max_tokens: int = 40
) -> ChatRequest:
    return ChatRequest((COUNTER.message("user", text),), max_tokens=max_tokens, key="1:1")


def provider(**kw: object) -> ProviderConfig:
    return ProviderConfig(model="gpt-4o-mini", read_timeout_s=1.0, total_timeout_s=5.0, **kw)  # type: ignore[arg-type]


# No limits and no in-flight cap: the limiter admits everything at once.
NO_LIMITS = LimitsConfig(max_inflight=None)


def quick(**faults: float) -> SimSettings:
    return SimSettings(
        ttft_s=0.0, per_token_s=0.0, jitter=0.0, hang_s=3.0, faults=FaultRates(**faults)
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("server_error", ServerError),
        ("unavailable", ServerError),
        ("reset", ConnectionLost),
        ("truncated", MalformedResponse),
        ("hang", RequestTimeout),
    ],
)
async def test_each_fault_becomes_its_error_class(fault: str, error: type[RequestError]) -> None:
    """Every injected fault reaches the caller as one m2l error class, in bounded time."""
    async with (
        run_simulator(quick(**{fault: 1.0})) as sim,
        ChatClient(provider(), base_url=sim.base_url, api_key=None) as client,
    ):
        started = time.monotonic()
        with pytest.raises(error):
            await client.complete(request())
        assert time.monotonic() - started < 3.0  # the hang is cut by read_timeout_s


async def test_context_length_is_permanent() -> None:
    """A prompt longer than the context window is a ContextLengthExceeded, not retried."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, context_window=50)
    recorder = Recorder()
    async with (
        run_simulator(settings) as sim,
        ChatClient(provider(), base_url=sim.base_url, api_key=None) as client,
    ):
        dispatcher = Dispatcher(client, RateLimiter(NO_LIMITS), hooks=recorder)
        with pytest.raises(ContextLengthExceeded):
            await dispatcher.complete(request("word " * 100, max_tokens=10))
    assert recorder.kinds() == ["RequestSent", "RequestFailed"]  # sent once, never retried


async def test_transient_faults_are_retried_to_success() -> None:
    """With half the requests failing transiently, every request still completes."""
    recorder = Recorder()
    async with (
        run_simulator(quick(server_error=0.2, reset=0.15, truncated=0.15)) as sim,
        ChatClient(provider(), base_url=sim.base_url, api_key=None) as client,
    ):
        dispatcher = Dispatcher(
            client,
            RateLimiter(NO_LIMITS),
            policy=RetryConfig(max_attempts=12, backoff=False),
            hooks=recorder,
            rng=random.Random(1),
        )
        for i in range(30):
            result = await dispatcher.complete(request(f"Target language: French\nQ{i}"))
            assert result.content
    kinds = recorder.kinds()
    assert kinds.count("RequestDone") == 30
    assert kinds.count("RequestRetried") > 0 and "RequestFailed" not in kinds


async def test_attempts_exhausted_raises_the_original_error() -> None:
    """When every attempt fails, the caller gets the last transient error itself."""
    async with (
        run_simulator(quick(server_error=1.0)) as sim,
        ChatClient(provider(), base_url=sim.base_url, api_key=None) as client,
    ):
        dispatcher = Dispatcher(
            client, RateLimiter(NO_LIMITS), policy=RetryConfig(max_attempts=3, backoff=False)
        )
        with pytest.raises(ServerError):
            await dispatcher.complete(request())
        assert sim.stats()["admitted"] == 3


async def test_wrong_key_is_authentication_failed() -> None:
    """A 401 is AuthenticationFailed, and the message names the key variable, not the key."""
    secret = "sk-wrong-" + "x" * 30
    async with (
        run_simulator(SimSettings(require_api_key="sk-right-" + "y" * 30)) as sim,
        ChatClient(provider(), base_url=sim.base_url, api_key=Secret(secret)) as client,
    ):
        with pytest.raises(AuthenticationFailed) as info:
            await client.complete(request())
    assert "OPENAI_API_KEY" in str(info.value) and secret not in str(info.value)


async def test_unknown_model_is_model_not_found() -> None:
    """A 404 for the model is ModelNotFound naming the model."""
    settings = SimSettings(models=("gpt-4o",), unknown_models_404=True)
    async with (
        run_simulator(settings) as sim,
        ChatClient(provider(), base_url=sim.base_url, api_key=None) as client,
    ):
        with pytest.raises(ModelNotFound, match="gpt-4o-mini"):
            await client.complete(request())


async def test_429_is_rate_limited_with_reset() -> None:
    """Over the simulator's limit the client sees RateLimited with a retry time and headers."""
    settings = SimSettings(rpm=60, bucket_seconds=1.0, ttft_s=0.0, per_token_s=0.0)
    async with (
        run_simulator(settings) as sim,
        ChatClient(provider(), base_url=sim.base_url, api_key=None) as client,
    ):
        await client.complete(request())  # a 1 s bucket of 60 rpm holds one request
        with pytest.raises(RateLimited) as info:
            await client.complete(request())
    assert info.value.limit_kind == "requests"
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 1.0


async def test_dispatcher_waits_out_429s_and_loses_nothing() -> None:
    """A client configured far above a per-second limit still completes every request.

    Against the real simulator's 429 bodies and headers; the waiting itself is checked on
    virtual time in test_scheduler.py, so this stays small.
    """
    settings = SimSettings(rpm=600, bucket_seconds=1.0, ttft_s=0.0, per_token_s=0.0)
    recorder = Recorder()
    async with (
        run_simulator(settings) as sim,
        ChatClient(provider(), base_url=sim.base_url, api_key=None) as client,
    ):
        dispatcher = Dispatcher(client, RateLimiter(LimitsConfig(rpm=6000)), hooks=recorder)
        results = await asyncio.gather(*(dispatcher.complete(request(f"Q{i}")) for i in range(12)))
    assert len(results) == 12 and all(r.content for r in results)
    assert "RateLimitHit" in recorder.kinds()  # the limit was really hit
    assert "RequestFailed" not in recorder.kinds()


async def test_oversize_request_fails_at_once() -> None:
    """A request larger than the whole token bucket is refused before it is sent."""
    async with (
        run_simulator(quick()) as sim,
        ChatClient(provider(), base_url=sim.base_url, api_key=None) as client,
    ):
        dispatcher = Dispatcher(client, RateLimiter(LimitsConfig(tpm=1000, initial_burst_s=60)))
        with pytest.raises(OversizeRequest):
            await dispatcher.complete(request(max_tokens=5000))
        assert sim.stats()["admitted"] == 0


class _Held:
    """A completer that answers only when the test says so."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def complete(self, request: ChatRequest, *, delivery: object = None) -> ChatResult:
        await self.go.wait()
        return ChatResult("ok", "stop", Usage(10, 2), "m", RateLimitSnapshot(), 0.01)


class _CountingAccounting:
    """Counts reservations made and open, records nothing."""

    def __init__(self) -> None:
        self.reserved = 0
        self.open = 0

    async def reserve(
        self, request: ChatRequest, attempt: int, *, endpoint: str = "", model: str = ""
    ) -> object:
        self.reserved += 1
        self.open += 1
        return None

    def settle(self, ticket: object, result: ChatResult) -> float:
        self.open -= 1
        return 0.0

    def release(self, ticket: object, error: RequestError | None, *, admitted: bool) -> None:
        self.open -= 1


async def test_requests_waiting_in_the_limiter_reserve_nothing() -> None:
    """Only attempts the limiter let go are reserved: a kill leaves no queue of reservations."""
    client, accounting = _Held(), _CountingAccounting()
    limiter = RateLimiter(LimitsConfig(rpm=None, tpm=None, max_inflight=2))
    dispatcher = Dispatcher(client, limiter, accounting=accounting)
    tasks = [asyncio.create_task(dispatcher.complete(request(f"Q{i}"))) for i in range(10)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert limiter.statistics().queued == 8
    assert accounting.reserved == 2  # the two in flight, not the eight queued
    client.go.set()
    await asyncio.gather(*tasks)
    assert accounting.reserved == 10 and accounting.open == 0
