"""Today's OpenAI models through the client and dispatcher, against the simulator: the token cap's
name, what reasoning models refuse, reasoning effort, flex processing and prompt cache keys."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.capabilities import CapabilityOverride, load_capabilities
from engine.chat import ChatRequest, ChatResult
from engine.client import ChatClient
from engine.config import (
    Config,
    GenerationConfig,
    LimitsConfig,
    ProviderConfig,
    RetryConfig,
    RunConfig,
    SeedsConfig,
    StepEfforts,
    StepTokens,
)
from engine.dispatcher import Dispatcher
from engine.errors import CapacityUnavailable, ConfigError, RequestError, UnsupportedParameter
from engine.events import Event, ParameterAdapted, RateLimitHit, RequestRetried
from engine.limiter import RateLimiter
from engine.modelprofile import model_profile
from engine.requestshape import RequestShape, ShapeSettings
from engine.simulator import SimSettings, run_simulator
from engine.tokens import TokenCounter

pytestmark = pytest.mark.anyio

TABLE = load_capabilities()
COUNTER = TokenCounter("gpt-5-mini")
FAST = SimSettings(ttft_s=0.0, per_token_s=0.0, jitter=0.0, seed=11)


def request(step: int = 1, conv: int = 7, *, max_tokens: int = 6000) -> ChatRequest:
    text = f"Target language: Swahili\nExplain rain, please ({conv})."
    return ChatRequest(
        (COUNTER.message("user", text),),
        max_tokens=max_tokens,
        key=f"{conv}:{step}",
        seed=conv,
    )


def shape_for(
    model: str,
    *,
    openai_like: bool = False,
    efforts: StepEfforts | None = None,
    **kw: Any,
) -> RequestShape:
    config = make_config(model, efforts=efforts, **kw)
    settings = ShapeSettings.from_config(
        config.provider, model_profile(config), run_name="t", openai_like=openai_like
    )
    return RequestShape(settings)


def make_config(
    model: str, *, efforts: StepEfforts | None = None, tokens: StepTokens | None = None, **kw: Any
) -> Config:
    return Config(
        run=RunConfig("t"),
        seeds=SeedsConfig(file=Path("seeds.jsonl")),
        provider=ProviderConfig(model=model, **kw),
        generation=GenerationConfig(
            max_tokens=tokens or StepTokens(), reasoning_effort=efforts or StepEfforts()
        ),
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class Ledger:
    """Accounting that records what was settled and released, to check what gets billed."""

    def __init__(self) -> None:
        self.settled: list[ChatResult] = []
        self.released: list[tuple[str | None, bool]] = []

    async def reserve(
        self, request: ChatRequest, attempt: int, *, endpoint: str = "", model: str = ""
    ) -> object:
        return attempt

    def settle(self, ticket: object, result: ChatResult) -> float:
        self.settled.append(result)
        return 0.0

    def release(self, ticket: object, error: RequestError | None, *, admitted: bool) -> None:
        self.released.append((error.error_class if error else None, admitted))


@asynccontextmanager
async def dispatcher(
    settings: SimSettings,
    shape: RequestShape,
    *,
    policy: RetryConfig | None = None,
    fallback_after_s: float | None = None,
) -> AsyncIterator[tuple[Dispatcher, Recorder, Ledger, RateLimiter]]:
    provider = ProviderConfig(model=shape.settings.model, read_timeout_s=5.0)
    recorder, ledger = Recorder(), Ledger()
    limiter = RateLimiter(LimitsConfig())
    async with (
        run_simulator(settings) as sim,
        ChatClient(provider, base_url=sim.base_url, api_key=None, shape=shape) as client,
    ):
        yield (
            Dispatcher(
                client,
                limiter,
                policy=policy or RetryConfig(backoff=False),
                accounting=ledger,
                hooks=recorder,
                rng=random.Random(1),
                adapter=shape,
                flex_fallback_after_s=fallback_after_s,
            ),
            recorder,
            ledger,
            limiter,
        )


def test_body_for_a_reasoning_model_omits_what_it_refuses() -> None:
    """gpt-5-mini: max_completion_tokens, no temperature, effort per step, tier and cache key."""
    shape = shape_for(
        "gpt-5-mini",
        openai_like=True,
        reasoning_effort="medium",
        service_tier="flex",
        efforts=StepEfforts(evolve="low", follow_up="minimal"),
    )
    evolve, answer, follow_up = (shape.body(request(step)) for step in (0, 1, 2))
    assert evolve["max_completion_tokens"] == 6000 and "max_tokens" not in evolve
    assert "temperature" not in evolve
    assert (evolve["reasoning_effort"], answer["reasoning_effort"]) == ("low", "medium")
    assert follow_up["reasoning_effort"] == "minimal"
    assert evolve["service_tier"] == "flex"
    assert evolve["prompt_cache_key"] == answer["prompt_cache_key"]  # one per conversation
    assert shape.body(request(1, conv=8))["prompt_cache_key"] != answer["prompt_cache_key"]


def test_body_for_a_chat_model_on_another_server_is_the_classic_one() -> None:
    """gpt-4o behind a non-OpenAI base URL: max_tokens, temperature, no effort, no cache key."""
    body = shape_for("gpt-4o").body(request())
    assert body["max_tokens"] == 6000 and body["temperature"] == 0.7
    assert "reasoning_effort" not in body and "prompt_cache_key" not in body
    assert "service_tier" not in body


def test_reasoning_room_is_added_per_step_up_to_the_models_maximum() -> None:
    """Each step's cap grows by the room of its effort, never past max_output."""
    tokens = StepTokens(evolve=256, answer=1024, follow_up=200)
    profile = model_profile(
        make_config(
            "gpt-5-mini", efforts=StepEfforts(evolve="minimal"), tokens=tokens,
            reasoning_effort="high",
        )
    )  # fmt: skip
    assert profile.step_tokens.evolve == 256 + TABLE.room("minimal")
    assert profile.step_tokens.answer == 1024 + TABLE.room("high")
    assert profile.reply_tokens == tokens
    small = make_config(
        "gpt-5-mini", capabilities={"gpt-5-mini": CapabilityOverride(max_output=3000)}
    )
    assert model_profile(small).step_tokens.answer == 3000
    assert model_profile(make_config("gpt-4o")).step_tokens == StepTokens()


@pytest.mark.parametrize(
    ("model", "kw", "match"),
    [
        ("gpt-4o", {"reasoning_effort": "low"}, "not a reasoning model"),
        ("o3", {"reasoning_effort": "minimal"}, "takes: low, medium, high"),
        ("gpt-4o", {"service_tier": "flex"}, "does not offer flex"),
    ],
)
def test_settings_a_model_cannot_take_are_refused_at_load(
    model: str, kw: dict[str, Any], match: str
) -> None:
    """An effort for a non-reasoning model, an effort the model lacks, flex where it is not
    offered: each is a ConfigError naming the key, before anything is sent."""
    with pytest.raises(ConfigError, match=match):
        model_profile(make_config(model, **kw))


async def test_a_400_naming_max_tokens_switches_once_and_is_not_billed() -> None:
    """A server that refuses max_tokens: 20 concurrent requests all succeed, the cap's name
    switches once (one event, one line), and the refused tries are released unbilled."""
    shape = shape_for("llama-3-8b", capabilities={"llama-3-8b": CapabilityOverride()})
    assert shape.token_param == "max_tokens"  # auto, not OpenAI: the classic name first
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, seed=2, refuse_params=("max_tokens",))
    async with dispatcher(settings, shape) as (disp, recorder, ledger, _):
        results = await asyncio.gather(
            *(disp.complete(request(1, conv=i, max_tokens=80)) for i in range(20))
        )
    assert all(r.content for r in results)
    assert shape.token_param == "max_completion_tokens"
    adapted = recorder.of(ParameterAdapted)
    assert [(e.param, e.now) for e in adapted] == [("max_tokens", "max_completion_tokens")]
    assert "provider.max_tokens_param" in adapted[0].message
    assert ledger.released and all(not billed for _, billed in ledger.released)
    assert not recorder.of(RequestRetried)  # a switch is not a failed attempt
    assert shape.adapted == {"max_tokens": "max_completion_tokens"}


async def test_a_reasoning_model_served_as_openai_does_just_works() -> None:
    """gpt-5-mini against the simulator: no 400, reasoning tokens reported apart."""
    shape = shape_for("gpt-5-mini", openai_like=True, reasoning_effort="low")
    async with dispatcher(FAST, shape) as (disp, recorder, _ledger, _):
        result = await disp.complete(request())
    assert result.content
    assert 64 <= result.usage.reasoning_tokens <= 512
    assert result.usage.completion_tokens > result.usage.reasoning_tokens
    assert result.usage.service_tier == "default"
    assert not recorder.of(ParameterAdapted)


async def test_a_refused_parameter_the_user_chose_stops_with_its_config_key() -> None:
    """An explicit max_tokens_param the server refuses is fatal at once, naming the key."""
    shape = shape_for("gpt-5-mini", max_tokens_param="max_tokens")
    async with dispatcher(FAST, shape) as (disp, _, ledger, _):
        with pytest.raises(UnsupportedParameter) as info:
            await disp.complete(request())
    assert info.value.param == "max_tokens"
    assert "provider.max_tokens_param" in str(info.value)
    assert len(ledger.released) == 1  # no retries of a request that cannot succeed


@pytest.mark.parametrize(
    ("kw", "param", "key"),
    [
        (
            {"capabilities": {"o3": CapabilityOverride(temperature=True)}},
            "temperature",
            "generation.temperature",
        ),
        (
            {
                "reasoning_effort": "xhigh",
                "capabilities": {"o3": CapabilityOverride(efforts=("xhigh",))},
            },
            "reasoning_effort",
            "provider.reasoning_effort",
        ),
        (
            {
                "model": "gpt-4o",
                "service_tier": "flex",
                "capabilities": {"gpt-4o": CapabilityOverride(flex=True)},
            },
            "service_tier",
            "provider.service_tier",
        ),
    ],
)
async def test_every_refusal_a_run_would_meet_names_the_parameter_and_key(
    kw: dict[str, Any], param: str, key: str
) -> None:
    """A temperature, an effort or a service tier the model refuses is fatal, naming the
    parameter and its config key."""
    shape = shape_for(kw.pop("model", "o3"), openai_like=True, **kw)
    async with dispatcher(FAST, shape) as (disp, _, _, _):
        with pytest.raises(UnsupportedParameter) as info:
            await disp.complete(request())
    assert info.value.param == param
    assert key in str(info.value) and repr(param) in str(info.value)


async def test_flex_capacity_refusals_are_retried_unbilled_and_never_pause_the_limiter() -> None:
    """With half of flex tries refused, every request succeeds at flex; no 429 reaches the
    limiter as a rate limit and no refused try is billed."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, seed=4, flex_unavailable=0.5)
    shape = shape_for("gpt-5-nano", openai_like=True, service_tier="flex")
    async with dispatcher(settings, shape) as (disp, recorder, ledger, _):
        results = await asyncio.gather(*(disp.complete(request(1, conv=i)) for i in range(16)))
    assert {r.usage.service_tier for r in results} == {"flex"}
    retried = recorder.of(RequestRetried)
    assert retried and {e.error_class for e in retried} == {"capacity_unavailable"}
    assert not recorder.of(RateLimitHit)
    assert all(not billed for _, billed in ledger.released)
    assert len(ledger.settled) == 16


async def test_flex_falls_back_to_the_default_tier_after_the_set_time() -> None:
    """flex_fallback_after_s = 0: after one refusal the request goes out at the default tier."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, flex_unavailable=1.0)
    shape = shape_for("gpt-5-nano", openai_like=True, service_tier="flex")
    async with dispatcher(settings, shape, fallback_after_s=0.0) as (disp, _, ledger, _):
        result = await disp.complete(request())
    assert result.usage.service_tier == "default"
    assert ledger.released == [("capacity_unavailable", False)]


async def test_flex_without_fallback_gives_up_after_its_patience() -> None:
    """Flex never available and no fallback: the request gives up with CapacityUnavailable."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, flex_unavailable=1.0)
    shape = shape_for("gpt-5-nano", openai_like=True, service_tier="flex")
    policy = RetryConfig(backoff=False, rate_limit_patience=3)
    async with dispatcher(settings, shape, policy=policy) as (disp, _, ledger, _):
        with pytest.raises(CapacityUnavailable):
            await disp.complete(request())
    assert len(ledger.released) == 3 and not ledger.settled


def test_flex_waits_15_minutes_for_a_reply_unless_told_otherwise() -> None:
    """The read timeout is 900 s under flex, 120 s otherwise, and a set value wins."""
    assert ProviderConfig(service_tier="flex").read_timeout == 900.0
    assert ProviderConfig(service_tier="flex").total_timeout >= 900.0
    assert ProviderConfig().read_timeout == 120.0
    assert ProviderConfig(service_tier="flex", read_timeout_s=30.0).read_timeout == 30.0


async def test_a_server_refusing_prompt_cache_key_loses_it_once() -> None:
    """prompt_cache_key under auto is dropped at the first 400 naming it; nothing fails."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, refuse_params=("prompt_cache_key",))
    shape = shape_for("gpt-4o", openai_like=True)
    async with dispatcher(settings, shape) as (disp, recorder, _, _):
        results = await asyncio.gather(*(disp.complete(request(1, conv=i)) for i in range(5)))
    assert all(r.content for r in results)
    assert [e.param for e in recorder.of(ParameterAdapted)] == ["prompt_cache_key"]
    assert "prompt_cache_key" not in shape.body(request())


async def test_cached_tokens_of_a_conversations_next_turn_are_parsed() -> None:
    """The second request of a conversation reports its cached prefix in Usage."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, cache_min_tokens=128)
    shape = shape_for("gpt-4o", openai_like=True)
    system = COUNTER.message("system", "You answer in Swahili, carefully. " * 30)
    first = ChatRequest((system, COUNTER.message("user", "Habari?")), max_tokens=50, key="1:1")
    async with dispatcher(settings, shape) as (disp, _, _, _):
        one = await disp.complete(first)
        reply = COUNTER.message("assistant", one.content)
        again = ChatRequest(
            (*first.messages, reply, COUNTER.message("user", "Na kesho?")), max_tokens=50, key="1:3"
        )
        two = await disp.complete(again)
    assert one.usage.cached_tokens == 0
    assert two.usage.cached_tokens >= 128
