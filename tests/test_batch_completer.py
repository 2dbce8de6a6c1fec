"""The batch completer against a scripted Batch API: expired and partly answered batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import orjson
import pytest

from engine.batch.api import BatchInfo
from engine.batch.completer import BatchCompleter, Route
from engine.batch.planner import FileLimits, SubmitPolicy
from engine.chat import ChatRequest, ChatResult, Delivery, Message, Usage
from engine.errors import RequestError, ServerError
from engine.headers import RateLimitSnapshot
from state import batchstore as bs
from state.schema import open_store

T = TypeVar("T")
pytestmark = pytest.mark.anyio


class StoreJournal:
    """The completer's journal on a real DuckDB file, written at once."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn

    async def write(self, op: Callable[[Any], None]) -> None:
        op(self.conn)

    def write_later(self, op: Callable[[Any], None]) -> None:
        op(self.conn)

    async def read(self, fn: Callable[[Any], T]) -> T:
        return fn(self.conn)


class Client:
    """Bodies as m2l sends them; replies read as the online client reads them (simplified)."""

    async def complete(
        self, request: ChatRequest, *, delivery: Delivery | None = None
    ) -> ChatResult:
        raise AssertionError("nothing goes online here")

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        return request.body("m")

    def read_reply(self, status: int, raw: bytes, latency: float = 0.0) -> ChatResult:
        if status != 200:
            raise ServerError(f"HTTP {status}")
        body = orjson.loads(raw)
        return ChatResult(
            body["text"], "stop", Usage(10, 5), "m", RateLimitSnapshot.from_headers({}), latency
        )


class ScriptedAPI:
    """Each created batch ends at once with the next scripted status; an expired batch answers
    its first ``answered`` lines and lists the rest as batch_expired (or not at all)."""

    endpoint = "/v1/chat/completions"

    def __init__(self, script: list[tuple[str, int, bool]]) -> None:
        self.script = script
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, BatchInfo] = {}
        self.lines: list[list[str]] = []

    async def upload(self, filename: str, data: bytes) -> str:
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = data
        return file_id

    async def create(self, file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        status, answered, list_rest = self.script.pop(0)
        ids = [orjson.loads(line)["custom_id"] for line in self.files[file_id].splitlines()]
        self.lines.append(ids)
        out = [
            {"custom_id": c, "response": {"status_code": 200, "body": {"text": f"re {c}"}}}
            for c in ids[:answered]
        ]
        err = [
            {"custom_id": c, "response": None, "error": {"code": f"batch_{status}", "message": ""}}
            for c in ids[answered:]
        ]
        out_id, err_id = f"file-out-{len(self.batches)}", f"file-err-{len(self.batches)}"
        self.files[out_id] = b"\n".join(orjson.dumps(x) for x in out)
        self.files[err_id] = b"\n".join(orjson.dumps(x) for x in err)
        info = BatchInfo(
            f"batch_{len(self.batches)}", status, out_id, err_id if list_rest else None,
            len(ids), answered, len(ids) - answered, 0, dict(metadata), None,
        )  # fmt: skip
        self.batches[info.id] = info
        return BatchInfo(info.id, "validating", None, None, len(ids), 0, 0, 0, {}, None)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return self.batches[batch_id]

    async def cancel(self, batch_id: str) -> BatchInfo:
        return self.batches[batch_id]

    async def content(self, file_id: str) -> bytes:
        return self.files[file_id]

    async def delete_file(self, file_id: str) -> None:
        self.files.pop(file_id, None)

    async def find(self, metadata: Mapping[str, str], *, since: int) -> BatchInfo | None:
        return None


def request(conv: int) -> ChatRequest:
    return ChatRequest((Message("user", f"q{conv}", 5),), max_tokens=16, key=f"{conv}:0")


async def ask(
    completer: BatchCompleter, convs: range, first_id: int
) -> list[ChatResult | RequestError]:
    """One attempt per conversation, each with its own request id, as the dispatcher makes."""
    for i, conv in enumerate(convs):
        completer.routes[f"{conv}:0"] = Route(False, first_id + i)

    async def one(conv: int) -> ChatResult | RequestError:
        try:
            return await completer.complete(request(conv))
        except RequestError as exc:
            return exc

    return list(await asyncio.gather(*(one(c) for c in convs)))


@pytest.mark.parametrize("list_rest", [True, False], ids=["listed", "missing"])
async def test_lines_an_expired_batch_did_not_answer_fail_and_go_out_again(
    tmp_path: Path, list_rest: bool
) -> None:
    """Answered lines of an expired batch are kept; the others (listed as batch_expired in the
    error file, or in neither file) fail as not billed and their next attempt joins a new batch."""
    conn = open_store(tmp_path / "state.duckdb", create=True)
    api = ScriptedAPI([("expired", 2, list_rest), ("completed", 2, True)])
    completer = BatchCompleter(
        api,
        Client(),
        StoreJournal(conn),
        policy=SubmitPolicy(batch_lines=100, linger_s=1.0, quiet_s=0.01),
        limits=FileLimits(),
        poll_min_s=0.01,
        poll_max_s=0.05,
    )
    await completer.start(unfinished=4)
    try:
        first = await asyncio.wait_for(ask(completer, range(4), 1), 10)
        assert [r.content for r in first if isinstance(r, ChatResult)] == ["re 0:0:1", "re 1:0:2"]
        failed = [r for r in first if isinstance(r, RequestError)]
        assert len(failed) == 2 and all(isinstance(r, ServerError) for r in failed)
        assert not failed[0].billed
        if list_rest:
            assert "batch_expired" in str(failed[0])
        second = await asyncio.wait_for(ask(completer, range(2, 4), 5), 10)
        assert [r.content for r in second if isinstance(r, ChatResult)] == ["re 2:0:5", "re 3:0:6"]
    finally:
        await completer.close()
    assert api.lines == [["0:0:1", "1:0:2", "2:0:3", "3:0:4"], ["2:0:5", "3:0:6"]]
    assert [s.batch_id for s in bs.open_submissions(conn)] == ["batch_0", "batch_1"]
    assert completer.batches_created == 2 and completer.lines_sent == 6
