"""The simulator's HTTP API as the official OpenAI client and a raw HTTP client see it."""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from multidict import CIMultiDict
from openai.types.chat import ChatCompletionMessageParam as MessageParam

from engine.app.sim import add_sim_parser, is_loopback, run_sim, settings_from_args
from engine.chat import REPLY_PRIMING_TOKENS
from engine.errors import ConfigError, StateError
from engine.simulator import FaultRates, SimSettings, Simulator, run_simulator
from engine.tokens import TokenCounter

FAST = SimSettings(ttft_s=0.0, per_token_s=0.0, seed=7)
MODEL = "gpt-4o-sim"


def messages(user: str, system: str = "You are a helpful assistant.") -> list[MessageParam]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def expected_prompt_tokens(msgs: list[MessageParam], model: str = MODEL) -> int:
    """OpenAI's count, from engine.tokens: per message framing + role + content, plus priming."""
    counter = TokenCounter(model)
    return REPLY_PRIMING_TOKENS + sum(
        counter.message(m["role"], str(m.get("content"))).tokens for m in msgs
    )


def client(sim: Simulator, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0, **kwargs)


async def post(sim: Simulator, body: object, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            sim.base_url + "/chat/completions",
            data=body if isinstance(body, bytes) else orjson.dumps(body),
            headers={"Content-Type": "application/json", **headers},
        ) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


@pytest.mark.anyio
async def test_base_url_is_loopback_v1_on_a_picked_port() -> None:
    """run_simulator yields a started server whose base URL is http://127.0.0.1:<port>/v1."""
    async with run_simulator(FAST) as sim:
        assert sim.base_url.startswith("http://127.0.0.1:")
        assert sim.base_url.endswith("/v1")
        assert sim.port > 0


def test_base_url_before_start_raises() -> None:
    """Asking an unstarted simulator for its URL is a StateError, not a wrong URL."""
    with pytest.raises(StateError, match="not started"):
        _ = Simulator(FAST).base_url


@pytest.mark.anyio
async def test_taken_port_is_a_config_error() -> None:
    """A second simulator on the same port fails with a ConfigError naming the port."""
    async with run_simulator(FAST) as sim:
        taken = SimSettings(port=sim.port)
        with pytest.raises(ConfigError, match=str(sim.port)):
            async with run_simulator(taken):
                pass


@pytest.mark.anyio
async def test_openai_client_completion_has_exact_usage() -> None:
    """A non-streaming completion via openai.AsyncOpenAI reports tiktoken-exact usage."""
    msgs = messages("Explain why the sky is blue.\nTarget language: English")
    async with run_simulator(FAST) as sim, client(sim) as oai:
        result = await oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=300)
    assert result.object == "chat.completion"
    assert result.id.startswith("chatcmpl-")
    assert result.model == MODEL
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert result.usage is not None
    assert result.usage.prompt_tokens == expected_prompt_tokens(msgs)
    completion = TokenCounter(MODEL).count(choice.message.content)
    assert result.usage.completion_tokens == completion
    assert result.usage.total_tokens == result.usage.prompt_tokens + completion
    assert FAST.min_completion_tokens - 8 <= completion <= FAST.max_completion_tokens + 8


@pytest.mark.anyio
async def test_usage_follows_the_models_encoding() -> None:
    """A gpt-4 (cl100k) request is counted with cl100k, not the default o200k encoding."""
    msgs = messages("Écris un poème sur la mer, s'il te plaît. Target language: fr")
    async with run_simulator(FAST) as sim, client(sim) as oai:
        result = await oai.chat.completions.create(model="gpt-4", messages=msgs, max_tokens=50)
    assert result.usage is not None
    assert result.usage.prompt_tokens == expected_prompt_tokens(msgs, "gpt-4")
    content = result.choices[0].message.content or ""
    assert result.usage.completion_tokens == TokenCounter("gpt-4").count(content)


@pytest.mark.anyio
async def test_max_tokens_caps_the_reply_with_finish_reason_length() -> None:
    """A reply longer than max_tokens is cut to at most max_tokens with finish_reason length."""
    settings = SimSettings(ttft_s=0, per_token_s=0, min_completion_tokens=200)
    async with run_simulator(settings) as sim, client(sim) as oai:
        result = await oai.chat.completions.create(
            model=MODEL,
            messages=messages("Tell me a long story."),
            max_completion_tokens=17,
        )
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert 10 <= result.usage.completion_tokens <= 17


@pytest.mark.anyio
async def test_streaming_chunks_reassemble_and_end_with_usage() -> None:
    """stream=True sends role, content deltas, finish_reason, then a usage chunk and [DONE]."""
    msgs = messages("Describe your city.\nTarget language: German")
    async with run_simulator(FAST) as sim, client(sim) as oai:
        plain = await oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=200)
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=msgs,
            max_tokens=200,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == plain.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    assert text == plain.choices[0].message.content
    assert len(chunks) > 3
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert last.usage.prompt_tokens == expected_prompt_tokens(msgs)
    assert last.usage.completion_tokens == TokenCounter(MODEL).count(text)


@pytest.mark.anyio
async def test_streaming_without_include_usage_sends_no_usage() -> None:
    """Without stream_options.include_usage no chunk carries usage, as with OpenAI."""
    async with run_simulator(FAST) as sim, client(sim) as oai:
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=messages("Hi"),
            max_tokens=40,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


@pytest.mark.anyio
async def test_models_endpoint_lists_configured_models() -> None:
    """GET /v1/models lists the main model and the extra ones, OpenAI-shaped."""
    settings = SimSettings(model="gpt-4o-sim", models=("gpt-4o-mini-sim", "gpt-4o-sim"))
    async with run_simulator(settings) as sim, client(sim) as oai:
        page = await oai.models.list()
        one = await oai.models.retrieve("gpt-4o-mini-sim")
    assert [m.id for m in page.data] == ["gpt-4o-sim", "gpt-4o-mini-sim"]
    assert all(m.object == "model" for m in page.data)
    assert one.id == "gpt-4o-mini-sim"


@pytest.mark.anyio
async def test_any_model_is_accepted_by_default() -> None:
    """Requests for a model the simulator does not list are answered unless 404s are asked for."""
    async with run_simulator(FAST) as sim, client(sim) as oai:
        result = await oai.chat.completions.create(
            model="my-local-llama",
            messages=messages("Hi"),
            max_tokens=30,
        )
    assert result.model == "my-local-llama"


@pytest.mark.anyio
async def test_unknown_model_gets_openai_404_when_enabled() -> None:
    """With unknown_models_404 an unlisted model gets 404 model_not_found, as OpenAI answers."""
    settings = SimSettings(ttft_s=0, per_token_s=0, unknown_models_404=True)
    async with run_simulator(settings) as sim, client(sim) as oai:
        with pytest.raises(openai.NotFoundError) as caught:
            await oai.chat.completions.create(model="gpt-9", messages=messages("Hi"))
        status, _, raw = await post(sim, {"model": "gpt-9", "messages": messages("Hi")})
    assert caught.value.status_code == 404
    assert status == 404
    error = orjson.loads(raw)["error"]
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "gpt-9" in error["message"]


@pytest.mark.anyio
async def test_required_api_key_gives_401_without_echoing_keys() -> None:
    """With require_api_key, a wrong or missing key is a 401 whose body never shows a key."""
    secret = "sk-sim-right-key"
    settings = SimSettings(ttft_s=0, per_token_s=0, require_api_key=secret)
    assert secret not in repr(settings)
    async with run_simulator(settings) as sim:
        missing_status, _, missing = await post(sim, {"model": MODEL, "messages": messages("Hi")})
        wrong_status, _, wrong = await post(
            sim,
            {"model": MODEL, "messages": messages("Hi")},
            Authorization="Bearer sk-wrong-key",
        )
        ok_status, _, _ = await post(
            sim, {"model": MODEL, "messages": messages("Hi")}, Authorization=f"Bearer {secret}"
        )
        async with openai.AsyncOpenAI(
            base_url=sim.base_url, api_key="sk-wrong-key", max_retries=0
        ) as oai:
            with pytest.raises(openai.AuthenticationError):
                await oai.chat.completions.create(model=MODEL, messages=messages("Hi"))
    assert (missing_status, wrong_status, ok_status) == (401, 401, 200)
    assert orjson.loads(wrong)["error"]["code"] == "invalid_api_key"
    assert orjson.loads(missing)["error"]["type"] == "invalid_request_error"
    assert b"sk-wrong-key" not in wrong
    assert secret.encode() not in wrong + missing


@pytest.mark.anyio
async def test_context_length_exceeded_is_openais_exact_400() -> None:
    """prompt + max_tokens beyond the window gives OpenAI's exact context_length_exceeded body."""
    settings = SimSettings(ttft_s=0, per_token_s=0, context_window=100)
    msgs = messages("word " * 60)
    prompt = expected_prompt_tokens(msgs)
    async with run_simulator(settings) as sim:
        status, _, raw = await post(sim, {"model": MODEL, "messages": msgs, "max_tokens": 50})
        fits_status, _, _ = await post(
            sim, {"model": MODEL, "messages": msgs, "max_tokens": 100 - prompt}
        )
        stats = sim.stats()
    assert status == 400
    assert orjson.loads(raw) == {
        "error": {
            "message": (
                "This model's maximum context length is 100 tokens. However, you requested "
                f"{prompt + 50} tokens ({prompt} in the messages, 50 in the completion). "
                "Please reduce the length of the messages or completion."
            ),
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    assert fits_status == 200
    assert stats["rejected"] == {"context_length_exceeded": 1}
    assert stats["admitted"] == 1


@pytest.mark.anyio
async def test_invalid_bodies_get_openai_400s() -> None:
    """Bodies OpenAI refuses (bad JSON, no messages, max_tokens 0) get 400 invalid_request_error."""
    async with run_simulator(FAST) as sim:
        results = [
            await post(sim, b"{not json"),
            await post(sim, {"model": MODEL}),
            await post(sim, {"model": MODEL, "messages": []}),
            await post(sim, {"model": MODEL, "messages": messages("Hi"), "max_tokens": 0}),
            await post(sim, {"messages": messages("Hi")}),
        ]
    codes = []
    for status, _, raw in results:
        assert status == 400
        error = orjson.loads(raw)["error"]
        assert error["type"] == "invalid_request_error"
        codes.append(error["code"])
    assert codes == [
        None,
        "missing_required_parameter",
        "empty_array",
        "integer_below_min_value",
        None,
    ]


@pytest.mark.anyio
async def test_no_limits_means_no_ratelimit_headers() -> None:
    """With no rpm/tpm configured the responses carry no x-ratelimit headers, like vLLM."""
    async with run_simulator(FAST) as sim:
        status, headers, _ = await post(sim, {"model": MODEL, "messages": messages("Hi")})
    assert status == 200
    assert not [h for h in headers if h.lower().startswith("x-ratelimit")]


@pytest.mark.anyio
async def test_identical_bodies_get_identical_replies_across_instances() -> None:
    """Two servers with one seed answer an identical body identically; another seed differs."""
    body = {
        "model": MODEL,
        "messages": messages("Tell me about rivers.\nTarget language: Swahili"),
        "max_tokens": 400,
        "temperature": 0.9,
    }
    replies = []
    for settings in (FAST, SimSettings(ttft_s=0, per_token_s=0, seed=7, jitter=0.5), FAST):
        async with run_simulator(settings) as sim:
            # Unrelated traffic first: arrival order must not change the reply.
            await post(sim, {"model": MODEL, "messages": messages("Something else")})
            _, _, raw = await post(sim, body)
            replies.append(orjson.loads(raw))
    async with run_simulator(SimSettings(ttft_s=0, per_token_s=0, seed=8)) as sim:
        _, _, raw = await post(sim, body)
        other = orjson.loads(raw)
    contents = [r["choices"][0]["message"]["content"] for r in replies]
    assert contents[0] == contents[1] == contents[2]
    assert replies[0]["usage"] == replies[1]["usage"]
    assert replies[0]["id"] == replies[2]["id"]
    assert other["choices"][0]["message"]["content"] != contents[0]


@pytest.mark.anyio
async def test_request_seed_and_max_tokens_are_part_of_the_key() -> None:
    """A different `seed` field or max_tokens in the body gives a different reply."""
    base = {"model": MODEL, "messages": messages("Tell me about rivers."), "max_tokens": 400}
    async with run_simulator(FAST) as sim:
        contents = set()
        for extra in ({}, {"seed": 1}, {"max_tokens": 399}):
            _, _, raw = await post(sim, {**base, **extra})
            contents.add(orjson.loads(raw)["choices"][0]["message"]["content"])
    assert len(contents) == 3


@pytest.mark.anyio
async def test_json_mode_returns_parseable_json() -> None:
    """response_format json_object, json_schema or the word JSON all give parseable JSON."""
    schema: dict[str, object] = {
        "type": "object",
        "properties": {
            "instruction": {"type": "string"},
            "difficulty": {"type": "integer", "minimum": 1, "maximum": 5},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "kind": {"enum": ["qa", "summary"]},
        },
        "required": ["instruction", "difficulty", "tags", "kind"],
    }
    rewrite = "Make it harder. Return only the new instruction.\nTarget language: Korean"
    async with run_simulator(FAST) as sim, client(sim) as oai:
        as_object = await oai.chat.completions.create(
            model=MODEL,
            messages=messages("List three facts."),
            response_format={"type": "json_object"},
        )
        as_schema = await oai.chat.completions.create(
            model=MODEL,
            messages=messages(rewrite),
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "evolved", "schema": schema},
            },
        )
        by_word = await oai.chat.completions.create(
            model=MODEL,
            messages=messages('Answer in JSON like {"answer": "...", "confidence": "..."}.'),
        )
    assert isinstance(orjson.loads(as_object.choices[0].message.content or ""), dict)
    filled = orjson.loads(as_schema.choices[0].message.content or "")
    assert set(filled) == {"instruction", "difficulty", "tags", "kind"}
    assert 1 <= filled["difficulty"] <= 5
    assert 1 <= len(filled["tags"]) <= 2
    assert filled["kind"] in ("qa", "summary")
    assert any("\uac00" <= ch <= "\ud7a3" for ch in filled["instruction"])  # Hangul syllables
    assert set(orjson.loads(by_word.choices[0].message.content or "")) == {"answer", "confidence"}


@pytest.mark.anyio
async def test_stats_count_and_reset() -> None:
    """GET /stats counts admissions, tokens and statuses; POST /stats/reset zeroes them."""
    async with run_simulator(FAST) as sim:
        for i in range(3):
            await post(sim, {"model": MODEL, "messages": messages(f"Hi {i}"), "max_tokens": 100})
        await post(sim, {"model": MODEL})
        async with aiohttp.ClientSession() as session:
            root = sim.base_url.removesuffix("/v1")
            async with session.get(root + "/stats") as response:
                over_http = await response.json()
            async with session.post(root + "/stats/reset") as response:
                after_reset = await response.json()
    assert over_http["requests"] == 4
    assert over_http["admitted"] == 3
    assert over_http["by_status"] == {"200": 3, "400": 1}
    prompt = over_http["tokens_used"]["prompt"]
    assert over_http["tokens_charged"] == prompt + 300
    assert over_http["tokens_used"]["completion"] > 0
    assert over_http["first_admission_s"] <= over_http["last_admission_s"] <= over_http["now_s"]
    assert after_reset["requests"] == 0
    assert after_reset["admitted"] == 0
    assert after_reset["first_admission_s"] is None


def parse_sim_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="m2l")
    add_sim_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sim", *argv])


def test_sim_command_options_become_settings() -> None:
    """`m2l sim` options map onto SimSettings, fault rates and limits included."""
    args = parse_sim_args(
        "--port", "0", "--rpm", "500", "--tpm", "30000", "--bucket-seconds", "1",
        "--ttft", "0", "--per-token", "0.001", "--fault-server-error", "0.1",
        "--fault-wrong-language", "0.02", "--context-window", "8192", "--also-model", "b",
        "--require-api-key-env", "SIM_KEY",
    )  # fmt: skip
    assert args.func is run_sim
    settings = settings_from_args(args, {"SIM_KEY": "sk-local"})
    assert (settings.rpm, settings.tpm, settings.bucket_seconds) == (500, 30000, 1.0)
    assert settings.faults == FaultRates(server_error=0.1, wrong_language=0.02)
    assert settings.context_window == 8192
    assert settings.listed_models == (MODEL, "b")
    assert settings.require_api_key == "sk-local"


def test_sim_command_refuses_remote_hosts_and_bad_values() -> None:
    """A non-loopback --host needs --allow-remote; bad rates and unset key variables exit 2."""
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(ConfigError, match="--allow-remote"):
        settings_from_args(parse_sim_args("--host", "0.0.0.0"), {})
    assert settings_from_args(parse_sim_args("--host", "0.0.0.0", "--allow-remote"), {})
    with pytest.raises(ConfigError, match="SIM_KEY"):
        settings_from_args(parse_sim_args("--require-api-key-env", "SIM_KEY"), {})
    assert run_sim(parse_sim_args("--fault-hang", "1.5")) == 2
