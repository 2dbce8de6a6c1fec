"""Injected faults: deterministic per seed and body, at their rates, as clients see them."""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from dataclasses import replace

import aiohttp
import openai
import orjson
import pytest

from engine.errors import ConfigError
from engine.simulator import (
    FAULT_KINDS,
    FaultRates,
    SimSettings,
    Simulator,
    body_key,
    draw_fault,
    find_language,
    run_simulator,
)

MODEL = "gpt-4o-sim"
MIXED = FaultRates(
    server_error=0.05,
    unavailable=0.03,
    reset=0.02,
    hang=0.01,
    truncated=0.04,
    wrong_language=0.06,
    repetition=0.08,
)


def keys(n: int) -> list[bytes]:
    return [body_key(MODEL, [("user", f"question {i}")], 100, None) for i in range(n)]


def test_each_fault_appears_at_its_rate() -> None:
    """Over 2,000 draws each kind's count is within 5 binomial sigmas of rate x 2,000."""
    n = 2000
    counts = Counter(draw_fault(11, key, 0, MIXED) for key in keys(n))
    for kind, rate in MIXED.as_dict().items():
        sigma = math.sqrt(n * rate * (1 - rate))
        assert abs(counts[kind] - n * rate) <= 5 * sigma, (kind, counts[kind])
        assert counts[kind] > 0
    clean = 1 - MIXED.total
    assert abs(counts[None] - n * clean) <= 5 * math.sqrt(n * clean * (1 - clean))


def test_fault_draws_are_deterministic_for_a_seed() -> None:
    """The same seed gives the same fault sequence; another seed gives a different one."""
    sample = keys(300)
    first = [draw_fault(3, key, attempt, MIXED) for key in sample for attempt in range(3)]
    again = [draw_fault(3, key, attempt, MIXED) for key in sample for attempt in range(3)]
    other = [draw_fault(4, key, attempt, MIXED) for key in sample for attempt in range(3)]
    assert first == again
    assert first != other


def test_a_retry_gets_a_fresh_draw() -> None:
    """Attempt numbers draw independently: a faulted request usually succeeds on retry."""
    heavy = FaultRates(server_error=0.5)
    sample = keys(400)
    firsts = [draw_fault(0, key, 0, heavy) for key in sample]
    seconds = [draw_fault(0, key, 1, heavy) for key in sample]
    both = sum(a is not None and b is not None for a, b in zip(firsts, seconds, strict=True))
    assert firsts != seconds
    assert abs(both - 100) <= 5 * math.sqrt(400 * 0.25 * 0.75)


def test_no_fault_rates_means_no_faults() -> None:
    """With all rates zero no draw is a fault."""
    assert {draw_fault(0, key, 0, FaultRates()) for key in keys(200)} == {None}


def test_fault_rates_are_validated() -> None:
    """Rates outside [0, 1] or summing past 1 are ConfigErrors naming the problem."""
    with pytest.raises(ConfigError, match="reset"):
        FaultRates(reset=1.5)
    with pytest.raises(ConfigError, match="add up"):
        FaultRates(server_error=0.6, unavailable=0.6)
    assert set(FAULT_KINDS) == set(MIXED.as_dict())


def only(kind: str, **kwargs: object) -> SimSettings:
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, faults=FaultRates(**{kind: 1.0}))
    return replace(settings, **kwargs)  # type: ignore[arg-type]


def body(text: str = "Tell me about the sea.", **extra: object) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}], **extra})


async def post(sim: Simulator, data: bytes, client_timeout: float = 10.0) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=client_timeout)) as session,
        session.post(sim.base_url + "/chat/completions", data=data) as response,
    ):
        return response.status, await response.read()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [("server_error", 500, "server_error"), ("unavailable", 503, "server_error")],
)
async def test_http_error_faults_have_openai_bodies(
    kind: str, status: int, error_type: str
) -> None:
    """server_error and unavailable faults answer 500 / 503 with OpenAI's error body."""
    async with run_simulator(only(kind, rpm=100)) as sim:
        async with (
            aiohttp.ClientSession() as session,
            session.post(sim.base_url + "/chat/completions", data=body()) as response,
        ):
            got_status = response.status
            headers = response.headers.copy()
            payload = orjson.loads(await response.read())
        stats = sim.stats()
    assert got_status == status
    assert payload["error"]["type"] == error_type
    assert payload["error"]["message"]
    assert headers["x-ratelimit-remaining-requests"] == "99"  # a faulted request is charged
    assert stats["faults"] == {kind: 1}
    assert stats["by_status"] == {str(status): 1}


@pytest.mark.anyio
async def test_openai_client_sees_server_errors_as_internal_server_error() -> None:
    """The official client raises InternalServerError for the 500 fault."""
    async with (
        run_simulator(only("server_error")) as sim,
        openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0) as oai,
    ):
        with pytest.raises(openai.InternalServerError):
            await oai.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_reset_drops_the_connection_mid_body(stream: bool) -> None:
    """The reset fault sends a 200 and part of the body, then the connection is gone."""
    async with run_simulator(only("reset")) as sim:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                sim.base_url + "/chat/completions", data=body(stream=stream, max_tokens=300)
            ) as response,
        ):
            assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                await response.read()
        stats = sim.stats()
    assert stats["faults"] == {"reset": 1}
    assert stats["tokens_used"]["total"] == 0 and stats["tokens_used"]["prompt"] == 0


@pytest.mark.anyio
async def test_truncated_body_is_cut_json() -> None:
    """The truncated fault answers 200 with a JSON body cut short, which does not parse."""
    async with run_simulator(only("truncated")) as sim:
        status, raw = await post(sim, body())
    assert status == 200
    assert raw.startswith(b'{"id":"chatcmpl-')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)


@pytest.mark.anyio
async def test_truncated_stream_has_a_cut_event() -> None:
    """In a stream the truncated fault makes one data line unparseable JSON."""
    async with run_simulator(only("truncated")) as sim:
        status, raw = await post(sim, body(stream=True, max_tokens=200))
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert status == 200
    broken = 0
    for event in events[:-1]:
        try:
            orjson.loads(event)
        except orjson.JSONDecodeError:
            broken += 1
    assert broken == 1
    assert events[-1] == b"[DONE]"


@pytest.mark.anyio
async def test_hang_outlasts_a_client_timeout() -> None:
    """The hang fault sends nothing for hang_s, so a shorter client timeout fires."""
    async with run_simulator(only("hang", hang_s=30.0)) as sim:
        with pytest.raises(TimeoutError):
            await post(sim, body(), client_timeout=0.3)
        assert sim.stats()["faults"] == {"hang": 1}


@pytest.mark.anyio
async def test_hang_then_answers() -> None:
    """After hang_s the hung request is answered normally."""
    async with run_simulator(only("hang", hang_s=0.05)) as sim:
        status, raw = await post(sim, body())
    assert status == 200
    assert orjson.loads(raw)["choices"][0]["message"]["content"]


def words_of(text: str) -> set[str]:
    """The whitespace-separated words of ``text`` with punctuation stripped."""
    stripped = (
        "".join(c for c in w if not unicodedata.category(c).startswith("P")) for w in text.split()
    )
    return {w for w in stripped if w}


@pytest.mark.anyio
async def test_wrong_language_replies_in_another_language() -> None:
    """The wrong_language fault answers in a language other than the one asked for."""
    asked = "Target language: Hindi\nExplain photosynthesis."
    hindi = find_language("Hindi")
    assert hindi is not None
    async with run_simulator(SimSettings(ttft_s=0.0, per_token_s=0.0)) as sim:
        _, raw = await post(sim, body(asked))
    clean = orjson.loads(raw)["choices"][0]["message"]["content"]
    assert words_of(clean) <= hindi.vocabulary
    async with run_simulator(only("wrong_language")) as sim:
        replies = [await post(sim, body(asked, seed=i)) for i in range(6)]
        assert sim.stats()["faults"] == {"wrong_language": 6}
    for status, raw in replies:
        content = orjson.loads(raw)["choices"][0]["message"]["content"]
        assert status == 200
        assert not words_of(content) <= hindi.vocabulary


@pytest.mark.anyio
async def test_repetition_repeats_one_phrase() -> None:
    """The repetition fault answers with one sentence said again and again."""
    async with run_simulator(only("repetition")) as sim:
        status, raw = await post(sim, body("Target language: French\nDescribe Paris."))
    content = orjson.loads(raw)["choices"][0]["message"]["content"]
    sentences = [s.strip() for s in content.split(".") if s.strip()]
    assert status == 200
    assert len(sentences) >= 3
    assert len(set(sentences)) == 1


async def outcome(sim: Simulator, data: bytes) -> tuple[object, str]:
    """What a client makes of one request: status (or "reset") and content or error type."""
    try:
        status, raw = await post(sim, data)
    except aiohttp.ClientError:
        return "reset", ""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return status, "malformed"
    if status == 200:
        return status, str(payload["choices"][0]["message"]["content"])
    return status, str(payload["error"]["type"])


@pytest.mark.anyio
async def test_fault_sequence_is_reproducible_across_servers() -> None:
    """Two servers with one seed fault the same requests the same way, retries included."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, seed=5, hang_s=0.0, faults=MIXED)
    runs = []
    for _ in range(2):
        async with run_simulator(settings) as sim:
            outcomes = []
            for i in range(40):
                for _attempt in range(2):  # the same body twice: a retry
                    outcomes.append(await outcome(sim, body(f"Question {i}")))
            runs.append((outcomes, sim.stats()["faults"]))
    assert runs[0] == runs[1]
    assert runs[0][1]  # some faults did happen
    assert len({o for o in runs[0][0] if o[1] in ("malformed", "server_error")}) > 0


@pytest.mark.anyio
async def test_clean_retry_after_a_fault_gets_the_normal_reply() -> None:
    """A retried body that draws no fault gets the same content as without faults."""
    faulty = SimSettings(ttft_s=0.0, per_token_s=0.0, faults=FaultRates(server_error=0.5))
    clean = SimSettings(ttft_s=0.0, per_token_s=0.0)
    async with run_simulator(clean) as sim:
        _, expected = await post(sim, body("Once more"))
    async with run_simulator(faulty) as sim:
        for _attempt in range(20):
            status, raw = await post(sim, body("Once more"))
            if status == 200:
                break
    assert status == 200
    content = orjson.loads(raw)["choices"][0]["message"]["content"]
    assert content == orjson.loads(expected)["choices"][0]["message"]["content"]
