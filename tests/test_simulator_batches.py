"""The simulator's Files and Batch API as the official OpenAI client sees it, on a fake clock."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import openai
import orjson
import pytest

from engine.app.sim import add_sim_parser, settings_from_args
from engine.clock import FakeClock
from engine.errors import ConfigError
from engine.simulator import SimSettings, Simulator, run_simulator

FAST = SimSettings(ttft_s=0.0, per_token_s=0.0, seed=3, batch_delay_s=10.0)
MODEL = "gpt-4o-sim"


def body(i: int, model: str = MODEL) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Question {i}?\nTarget language: German"}],
        "max_tokens": 60,
        "seed": i,
    }


def jsonl(n: int, *, url: str = "/v1/chat/completions", start: int = 0) -> bytes:
    return b"\n".join(
        orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": url, "body": body(i)})
        for i in range(start, start + n)
    )


@asynccontextmanager
async def served(
    settings: SimSettings = FAST, base: str = "/v1", **kwargs: Any
) -> AsyncIterator[tuple[Simulator, FakeClock, openai.AsyncOpenAI]]:
    clock = FakeClock(100.0)
    async with run_simulator(settings, clock=clock) as sim:
        url = sim.base_url.removesuffix("/v1") + base
        client = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0, **kwargs)
        try:
            yield sim, clock, client
        finally:
            await client.close()


async def submit(client: openai.AsyncOpenAI, data: bytes, **kwargs: Any) -> str:
    file = await client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id,
        endpoint=kwargs.pop("endpoint", "/v1/chat/completions"),
        completion_window="24h",
        **kwargs,
    )
    return batch.id


async def lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [orjson.loads(line) for line in content.content.splitlines() if line]


@pytest.mark.anyio
async def test_batch_moves_through_its_statuses_with_the_clock() -> None:
    """validating → in_progress (counts grow) → finalizing → completed, one output per line."""
    async with served() as (_sim, clock, client):
        batch_id = await submit(client, jsonl(20), metadata={"m2l_run": "r1", "m2l_sub": "7"})
        seen = [(await client.batches.retrieve(batch_id)).status]
        clock.advance(2.0)  # 20 % of the delay: in progress, 1/8 of the lines answered
        mid = await client.batches.retrieve(batch_id)
        assert mid.status == "in_progress"
        assert mid.request_counts is not None
        assert 0 < mid.request_counts.completed < 20 and mid.request_counts.total == 20
        clock.advance(7.5)
        seen.append(mid.status)
        seen.append((await client.batches.retrieve(batch_id)).status)
        clock.advance(0.5)
        done = await client.batches.retrieve(batch_id)
        seen.append(done.status)
        assert seen == ["validating", "in_progress", "finalizing", "completed"]
        assert done.metadata == {"m2l_run": "r1", "m2l_sub": "7"}
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (20, 0)
        assert done.error_file_id is None
        out = await lines(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in out) == sorted(f"c{i}" for i in range(20))
        assert all(line["error"] is None and line["response"]["status_code"] == 200 for line in out)
        assert done.completed_at is not None and done.in_progress_at is not None


@pytest.mark.anyio
async def test_a_line_is_answered_as_the_online_endpoint_answers_the_same_body() -> None:
    """The batch reply body equals the chat completions reply (all but the creation time)."""
    async with served() as (_sim, clock, client):
        batch_id = await submit(client, jsonl(3))
        clock.advance(10.0)
        done = await client.batches.retrieve(batch_id)
        out = {line["custom_id"]: line["response"]["body"] for line in await lines(
            client, done.output_file_id
        )}  # fmt: skip
        for i in range(3):
            online = await client.chat.completions.create(**body(i))
            offline = out[f"c{i}"]
            assert offline["choices"][0]["message"]["content"] == online.choices[0].message.content
            assert offline["usage"]["completion_tokens"] == online.usage.completion_tokens
            assert offline["id"] == online.id


@pytest.mark.anyio
async def test_failed_lines_go_to_the_error_file_and_a_resubmission_can_succeed() -> None:
    """With a line failure rate, failures are 500 responses in the error file; a retry differs."""
    settings = replace(FAST, batch_line_failure_rate=0.5)
    async with served(settings) as (_sim, clock, client):
        batch_id = await submit(client, jsonl(40))
        clock.advance(10.0)
        done = await client.batches.retrieve(batch_id)
        failed = await lines(client, done.error_file_id)
        ok = await lines(client, done.output_file_id)
        assert done.request_counts is not None
        assert done.request_counts.failed == len(failed) > 0
        assert len(ok) + len(failed) == 40
        assert all(line["response"]["status_code"] == 500 for line in failed)
        assert all(line["response"]["body"]["error"]["type"] == "server_error" for line in failed)
        retry_ids = {line["custom_id"] for line in failed}
        retry = b"\n".join(
            orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                          "body": body(i)})
            for i in range(40) if f"c{i}" in retry_ids
        )  # fmt: skip
        again = await submit(client, retry)
        clock.advance(10.0)
        second = await client.batches.retrieve(again)
        assert second.request_counts is not None
        assert second.request_counts.completed > 0  # a fresh draw per resubmission


@pytest.mark.anyio
async def test_an_expired_batch_keeps_what_was_answered_and_lists_the_rest() -> None:
    """Expiry: answered lines in the output file, the others batch_expired in the error file."""
    settings = replace(FAST, batch_expire_s=5.0)
    async with served(settings) as (_sim, clock, client):
        batch_id = await submit(client, jsonl(16))
        clock.advance(6.0)
        done = await client.batches.retrieve(batch_id)
        assert done.status == "expired" and done.expired_at is not None
        ok = await lines(client, done.output_file_id)
        expired = await lines(client, done.error_file_id)
        assert 0 < len(ok) < 16 and len(ok) + len(expired) == 16
        assert {line["error"]["code"] for line in expired} == {"batch_expired"}
        assert all(line["response"] is None for line in expired)


@pytest.mark.anyio
async def test_cancel_goes_through_cancelling_and_a_finished_batch_cannot_be_cancelled() -> None:
    """cancel → cancelling → cancelled with partial results; cancelling a completed one is 409."""
    async with served() as (_sim, clock, client):
        batch_id = await submit(client, jsonl(16))
        clock.advance(5.0)
        cancelling = await client.batches.cancel(batch_id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        clock.advance(1.0)
        cancelled = await client.batches.retrieve(batch_id)
        assert cancelled.status == "cancelled"
        rest = await lines(client, cancelled.error_file_id)
        ok = await lines(client, cancelled.output_file_id)
        assert len(ok) + len(rest) == 16 and {x["error"]["code"] for x in rest} == {
            "batch_cancelled"
        }
        other = await submit(client, jsonl(2))
        clock.advance(10.0)
        assert (await client.batches.retrieve(other)).status == "completed"
        with pytest.raises(openai.ConflictError):
            await client.batches.cancel(other)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "code", "line"),
    [
        (jsonl(2) + b"\n" + jsonl(1), "duplicate_custom_id", 3),
        (jsonl(1) + b"\n{not json", "invalid_json_line", 2),
        (
            jsonl(1)
            + b"\n"
            + orjson.dumps(
                {
                    "custom_id": "x",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body(9, model="other-model"),
                }
            ),
            "mismatched_model",
            2,
        ),
        (jsonl(1, url="/v1/embeddings"), "mismatched_url", 1),
    ],
)
async def test_an_invalid_input_file_fails_the_batch_naming_the_line(
    data: bytes, code: str, line: int
) -> None:
    """Validation errors fail the whole batch with OpenAI's errors list (code and line)."""
    async with served() as (_sim, _clock, client):
        batch_id = await submit(client, data)
        failed = await client.batches.retrieve(batch_id)
        assert failed.status == "failed" and failed.failed_at is not None
        assert failed.errors is not None and failed.errors.data
        assert (failed.errors.data[0].code, failed.errors.data[0].line) == (code, line)


@pytest.mark.anyio
async def test_requests_openai_refuses_get_its_errors() -> None:
    """A wrong window, an unknown file and a wrong purpose are 400/404 as from OpenAI."""
    async with served() as (_sim, _clock, client):
        file = await client.files.create(file=("in.jsonl", jsonl(1)), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="completion_window"):
            await client.batches.create(
                input_file_id=file.id,
                endpoint="/v1/chat/completions",
                completion_window="1h",  # type: ignore[arg-type]
            )
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(
                input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
            )
        with pytest.raises(openai.BadRequestError, match="purpose"):
            await client.files.create(file=("in.jsonl", jsonl(1)), purpose="fine-tune")
        assert (await client.files.retrieve(file.id)).bytes == len(jsonl(1))
        assert (await client.files.delete(file.id)).deleted
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(file.id)


@pytest.mark.anyio
async def test_list_is_newest_first_and_pages_with_after() -> None:
    """GET /batches lists newest first; the SDK's auto-pagination walks every page."""
    async with served() as (_sim, _clock, client):
        ids = [await submit(client, jsonl(1, start=i)) for i in range(5)]
        page = await client.batches.list(limit=2)
        assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
        assert [b.id async for b in client.batches.list(limit=2)] == ids[::-1]


@pytest.mark.anyio
async def test_azure_paths_query_and_endpoint_name_work() -> None:
    """Azure's shape: /openai/... with an api-version query and the endpoint without /v1."""
    async with served(base="/openai", default_query={"api-version": "2024-10-21"}) as (
        _sim,
        clock,
        client,
    ):
        batch_id = await submit(
            client, jsonl(2, url="/chat/completions"), endpoint="/chat/completions"
        )
        clock.advance(10.0)
        done = await client.batches.retrieve(batch_id)
        assert done.status == "completed" and len(await lines(client, done.output_file_id)) == 2


def test_batch_settings_are_checked() -> None:
    """Out-of-range batch settings are refused with the field's name."""
    with pytest.raises(ConfigError, match="batch_expire_s"):
        SimSettings(batch_expire_s=0)
    with pytest.raises(ConfigError, match="batch_line_failure_rate"):
        SimSettings(batch_line_failure_rate=1.5)
    with pytest.raises(ConfigError, match="batch_delay_s"):
        SimSettings(batch_delay_s=-1)


def test_sim_command_sets_the_batch_behaviour() -> None:
    """`m2l sim --batch-delay/--batch-expire/--batch-line-failure-rate` reach SimSettings."""
    parser = argparse.ArgumentParser(prog="m2l")
    add_sim_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["sim", "--batch-delay", "0.5", "--batch-expire", "3", "--batch-line-failure-rate", "0.1"]
    )
    settings = settings_from_args(args, {})
    assert (settings.batch_delay_s, settings.batch_expire_s) == (0.5, 3.0)
    assert settings.batch_line_failure_rate == 0.1
    assert settings_from_args(parser.parse_args(["sim"]), {}).batch_expire_s is None
