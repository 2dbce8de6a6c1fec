"""The simulator serves reasoning models, flex processing and prompt caching as OpenAI does."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam as MessageParam

from engine.simulator import SimSettings, Simulator, run_simulator
from engine.simulator.counting import UsageCounter
from engine.simulator.promptcache import PromptCache
from engine.simulator.replies import ReplyWriter
from engine.simulator.request import SimRequest, parse_request

FAST = SimSettings(ttft_s=0.0, per_token_s=0.0, seed=3)
USER: list[MessageParam] = [{"role": "user", "content": "Target language: French\nSay hello."}]


def client(sim: Simulator) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)


async def create(sim: Simulator, **kwargs: Any) -> Any:
    """One chat completion through the official client, closed afterwards."""
    async with client(sim) as c:
        return await c.chat.completions.create(**kwargs)


async def refused(sim: Simulator, **kwargs: Any) -> dict[str, Any]:
    """The error object of a request the simulator must refuse with 400."""
    with pytest.raises(openai.BadRequestError) as info:
        await create(sim, **kwargs)
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict)
    return body


@pytest.mark.anyio
async def test_max_tokens_on_a_reasoning_model_is_refused_as_openai_does() -> None:
    """gpt-5-mini answers max_tokens with OpenAI's unsupported_parameter 400, word for word."""
    async with run_simulator(FAST) as sim:
        error = await refused(sim, model="gpt-5-mini", messages=USER, max_tokens=64)
    assert error == {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "unsupported_parameter",
    }


@pytest.mark.anyio
async def test_temperature_other_than_default_is_an_unsupported_value() -> None:
    """o3 refuses temperature 0.7 (unsupported_value) and accepts the default 1."""
    async with run_simulator(FAST) as sim:
        error = await refused(
            sim, model="o3", messages=USER, temperature=0.7, max_completion_tokens=4000
        )
        ok = await create(sim, model="o3", messages=USER, temperature=1, max_completion_tokens=4000)
    assert error["code"] == "unsupported_value"
    assert error["param"] == "temperature"
    assert error["message"] == (
        "Unsupported value: 'temperature' does not support 0.7 with this model. "
        "Only the default (1) value is supported."
    )
    assert ok.choices[0].message.content


@pytest.mark.anyio
async def test_reasoning_effort_is_checked_against_the_model() -> None:
    """An effort the model lacks is an unsupported_value listing the others; a non-reasoning
    model refuses the parameter itself."""
    async with run_simulator(FAST) as sim:
        bad_value = await refused(
            sim,
            model="gpt-5-mini",
            messages=USER,
            reasoning_effort="xhigh",
            max_completion_tokens=4000,
        )
        not_reasoning = await refused(
            sim, model="gpt-4o", messages=USER, reasoning_effort="low", max_tokens=100
        )
    assert bad_value["param"] == "reasoning_effort"
    assert bad_value["code"] == "unsupported_value"
    assert "'minimal', 'low', 'medium', and 'high'" in bad_value["message"]
    assert not_reasoning["code"] == "unsupported_parameter"
    assert not_reasoning["param"] == "reasoning_effort"


@pytest.mark.anyio
async def test_reasoning_tokens_are_drawn_by_effort_and_spent_inside_the_cap() -> None:
    """Reasoning tokens are reported apart, counted in completion_tokens, and grow with effort."""
    async with run_simulator(FAST) as sim:
        spent: dict[str, list[int]] = {"low": [], "high": []}
        for effort in spent:
            for i in range(12):
                msgs: list[MessageParam] = [{"role": "user", "content": f"Question {i}?"}]
                reply = await create(
                    sim,
                    model="gpt-5-mini",
                    messages=msgs,
                    reasoning_effort=effort,  # type: ignore[arg-type]
                    max_completion_tokens=20_000,
                )
                usage = reply.usage
                assert usage is not None and usage.completion_tokens_details is not None
                reasoning = usage.completion_tokens_details.reasoning_tokens or 0
                visible = UsageCounter().count("gpt-5-mini", reply.choices[0].message.content or "")
                assert usage.completion_tokens == visible + reasoning
                spent[effort].append(reasoning)
    assert all(64 <= r <= 512 for r in spent["low"])
    assert all(768 <= r <= 4096 for r in spent["high"])


@pytest.mark.anyio
async def test_reasoning_that_fills_the_cap_leaves_an_empty_length_reply_billed_whole() -> None:
    """With a cap below the reasoning, the reply is empty, ends "length", and bills the cap."""
    async with run_simulator(FAST) as sim:
        reply = await create(
            sim, model="o4-mini", messages=USER, reasoning_effort="high", max_completion_tokens=256
        )
    usage = reply.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert reply.choices[0].message.content == ""
    assert reply.choices[0].finish_reason == "length"
    assert usage.completion_tokens == 256
    assert usage.completion_tokens_details.reasoning_tokens == 256


@pytest.mark.anyio
async def test_service_tier_is_echoed_and_flex_is_only_for_models_that_offer_it() -> None:
    """The tier asked for comes back in the response; flex on gpt-4o is an unsupported value."""
    async with run_simulator(FAST) as sim:
        flex = await create(
            sim, model="gpt-5-mini", messages=USER, service_tier="flex", max_completion_tokens=4000
        )
        plain = await create(sim, model="gpt-5-mini", messages=USER, max_completion_tokens=4000)
        error = await refused(
            sim, model="gpt-4o", messages=USER, service_tier="flex", max_tokens=100
        )
    assert flex.service_tier == "flex"
    assert plain.service_tier == "default"
    assert (error["param"], error["code"]) == ("service_tier", "unsupported_value")


@pytest.mark.anyio
async def test_flex_capacity_shortage_is_a_429_resource_unavailable_at_the_set_rate() -> None:
    """With flex_unavailable = 0.5 about half the flex tries get 429 resource_unavailable,
    counted apart from rate limits; default-tier requests never do."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, seed=5, flex_unavailable=0.5)
    refusals = 0
    async with run_simulator(settings) as sim:
        for i in range(60):
            msgs: list[MessageParam] = [{"role": "user", "content": f"Item {i}"}]
            try:
                await create(
                    sim,
                    model="gpt-5-nano",
                    messages=msgs,
                    service_tier="flex",
                    max_completion_tokens=4000,
                )
            except openai.RateLimitError as exc:
                assert isinstance(exc.body, dict)
                assert exc.body["code"] == "resource_unavailable"
                assert "Resource Unavailable" in exc.body["message"]
                refusals += 1
        for i in range(10):
            msgs = [{"role": "user", "content": f"Other {i}"}]
            await create(sim, model="gpt-5-nano", messages=msgs, max_completion_tokens=4000)
        stats = sim.stats()
    assert 15 <= refusals <= 45
    assert stats["flex_unavailable"] == refusals
    assert stats["rate_limited"] == {"requests": 0, "tokens": 0}


def _request(body: dict[str, Any]) -> SimRequest:
    parsed = parse_request(orjson.dumps(body))
    assert isinstance(parsed, SimRequest)
    return parsed


def test_flex_answers_slower_by_the_set_factor() -> None:
    """The same reply under flex takes flex_slowdown times as long."""
    settings = SimSettings(ttft_s=0.2, per_token_s=0.01, jitter=0.0, flex_slowdown=3.0)
    writer = ReplyWriter(settings, UsageCounter())
    req = _request({"model": "gpt-5-mini", "messages": [{"role": "user", "content": "Hi"}]})
    normal = writer.write(req, 4000, 0, None, reasoning=100)
    slow = writer.write(req, 4000, 0, None, reasoning=100, slowdown=3.0)
    assert slow.content == normal.content
    assert slow.total_s == pytest.approx(3.0 * normal.total_s)
    assert normal.ttft_s == pytest.approx(0.2 + 0.01 * 100)  # reasoning comes before the reply


@pytest.mark.anyio
async def test_a_repeated_prefix_is_reported_as_cached_tokens() -> None:
    """A second turn that resends the first one's messages reports them cached (steps of 128
    from the minimum); a prompt never seen reports none."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, seed=1, cache_min_tokens=256)
    system = "You are a careful assistant. " * 60  # ~360 tokens
    first: list[MessageParam] = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Target language: German\nExplain tides."},
    ]
    async with run_simulator(settings) as sim:
        one = await create(
            sim, model="gpt-4o", messages=first, max_tokens=200, prompt_cache_key="conv-1"
        )
        second: list[MessageParam] = [
            *first,
            {"role": "assistant", "content": one.choices[0].message.content or ""},
            {"role": "user", "content": "And why twice a day?"},
        ]
        two = await create(
            sim, model="gpt-4o", messages=second, max_tokens=200, prompt_cache_key="conv-1"
        )
        stats = sim.stats()
    assert one.usage is not None and one.usage.prompt_tokens_details is not None
    assert two.usage is not None and two.usage.prompt_tokens_details is not None
    assert one.usage.prompt_tokens_details.cached_tokens == 0
    cached = two.usage.prompt_tokens_details.cached_tokens or 0
    counter = UsageCounter()
    shared = sum(counter.message_tokens("gpt-4o", [(m["role"], str(m["content"])) for m in first]))
    assert 256 <= cached <= shared
    assert (cached - 256) % 128 == 0 and shared - cached < 128
    assert stats["tokens_used"]["cached"] == cached  # type: ignore[index]


def test_prompt_cache_forgets_nothing_it_should_keep_and_needs_the_minimum() -> None:
    """Below the minimum nothing is cached; the longest seen prefix counts."""
    cache = PromptCache(min_tokens=100)
    msgs = [("system", "s"), ("user", "u1"), ("assistant", "a1"), ("user", "u2")]
    assert cache.lookup_and_store("m", msgs[:2], [60, 30]) == 0
    assert cache.lookup_and_store("m", msgs, [60, 30, 200, 10]) == 0  # 90 < 100
    assert cache.lookup_and_store("m", msgs, [60, 30, 200, 10]) == 100 + 128 * 1  # 300 → 228
    assert cache.lookup_and_store("other", msgs, [60, 30, 200, 10]) == 0


def test_prompt_cache_holds_at_most_its_bound_and_keeps_a_live_conversation() -> None:
    """Past its bound the cache forgets the prefixes unused longest, never a live history."""
    cache = PromptCache(min_tokens=100, max_prefixes=50)
    live = [("system", "s"), ("user", "u0")]
    cache.lookup_and_store("m", live, [60, 60])
    for turn in range(1, 40):
        # Many finished conversations pass between two turns of the live one.
        for other in range(10):
            msgs = [("system", f"other {turn} {other}"), ("user", "x"), ("assistant", "y")]
            cache.lookup_and_store("m", msgs, [60, 60, 60])
            assert len(cache) <= 50
        live += [("assistant", f"a{turn}"), ("user", f"u{turn}")]
        # Its history so far (all but the two new messages) is still a hit.
        assert cache.lookup_and_store("m", live, [60] * len(live)) == 100 + 128 * (
            (60 * (len(live) - 2) - 100) // 128
        )
    assert len(cache) == 50


@pytest.mark.anyio
async def test_a_server_can_refuse_max_completion_tokens_like_an_older_one() -> None:
    """refuse_params makes the simulator answer as a server that only knows max_tokens."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, refuse_params=("max_completion_tokens",))
    async with run_simulator(settings) as sim:
        error = await refused(sim, model="llama", messages=USER, max_completion_tokens=50)
        ok = await create(sim, model="llama", messages=USER, max_tokens=50)
    assert error["param"] == "max_completion_tokens"
    assert error["code"] == "unsupported_parameter"
    assert "Use 'max_tokens' instead." in error["message"]
    assert ok.choices[0].message.content


@pytest.mark.anyio
async def test_stream_carries_tier_and_usage_details() -> None:
    """A streamed flex reply names its tier in every chunk and its reasoning in the usage."""
    async with run_simulator(FAST) as sim, client(sim) as c:
        stream = await c.chat.completions.create(
            model="gpt-5-mini",
            messages=USER,
            max_completion_tokens=4000,
            service_tier="flex",
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert {c.service_tier for c in chunks} == {"flex"}
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert (usage.completion_tokens_details.reasoning_tokens or 0) > 0
