"""The pure parts of ``m2l requests``: a request line read and counted, result lines, and the
order in which finished results reach the output file."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from engine.chat import ChatResult, Usage
from engine.errors import ContextLengthExceeded
from engine.headers import RateLimitSnapshot
from engine.requestfile import IMAGE_TOKENS, LineError, error_line, ok_line, parse_line
from engine.requestjob import scan_input
from engine.tokens import TokenCounter
from state.journal import read_meta
from state.requestjob import (
    META_OUT_BYTES,
    META_OUT_LINES,
    Chunk,
    LineRow,
    OutputFile,
    OutputOrder,
    ResultBatch,
    line_counts,
    record_end,
)
from state.schema import open_store

COUNTER = TokenCounter("gpt-4o-mini")


def parse(obj: object, **kw: object) -> object:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return parse_line(
        raw,
        index=int(kw.get("index", 0)),  # type: ignore[call-overload]
        line_no=int(kw.get("line_no", 1)),  # type: ignore[call-overload]
        default_model=str(kw.get("model", "gpt-4o-mini")),
        default_max_tokens=int(kw.get("max_tokens", 100)),  # type: ignore[call-overload]
        counters=lambda _m: COUNTER,
    )


def test_body_goes_as_written_with_model_and_cap_filled_in_and_metadata_taken_out() -> None:
    """A body without model and cap gets the defaults; metadata is passed through, not sent."""
    line = parse(
        {"messages": [{"role": "user", "content": "Bonjour"}], "metadata": {"id": 7}, "seed": 3},
        index=4,
        line_no=6,
    )
    assert line.index == 4 and line.line_no == 6
    assert line.passthrough == {"metadata": {"id": 7}}
    body = line.request.body("ignored")
    assert body == {
        "messages": [{"role": "user", "content": "Bonjour"}],
        "seed": 3,
        "model": "gpt-4o-mini",
        "max_tokens": 100,
    }
    assert line.request.key == "4:0"
    # Charged as OpenAI counts it: 3 framing + role + content per message, 3 to prime the reply.
    expected = 3 + 3 + COUNTER.count("user") + COUNTER.count("Bonjour")
    assert line.request.prompt_tokens == expected
    assert line.request.charge == expected + 100


def test_cap_and_n_charge_every_choice_and_the_body_cap_is_kept() -> None:
    """max_completion_tokens and n: the charge reserves n replies of the body's cap."""
    line = parse(
        {
            "model": "o3-mini",
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 40,
            "n": 3,
        }
    )
    assert line.request.max_tokens == 120
    assert "max_tokens" not in line.request.body("m")


def test_a_repeated_system_message_is_counted_the_same_and_the_check_pass_reads_it(
    tmp_path: Path,
) -> None:
    """A system message shared by every line is charged alike on each (counted once and kept);
    the whole-file check accepts such lines."""
    system = {"role": "system", "content": "You answer in French, briefly."}
    lines = [
        parse({"messages": [system, {"role": "user", "content": f"question {i}"}]})
        for i in range(3)
    ]
    expected = 3 + 3 + COUNTER.count("system") + COUNTER.count(system["content"])
    for i, line in enumerate(lines):
        user = 3 + COUNTER.count("user") + COUNTER.count(f"question {i}")
        assert line.request.prompt_tokens == expected + user
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"messages": [system]}) + b"\n" for _ in range(3)))
    scan = scan_input(src, default_model="gpt-4o-mini")
    assert scan.lines == 3 and dict(scan.models) == {"gpt-4o-mini": 1}


def test_batch_api_line_passes_its_custom_id_through() -> None:
    """A Batch API line sends its body and gives the custom_id back with the result."""
    line = parse(
        {
            "custom_id": "req-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        }
    )
    assert line.passthrough == {"custom_id": "req-1"}
    assert line.model == "gpt-4o"


def test_images_tools_and_parts_count_toward_the_charge() -> None:
    """Image parts, text parts and tool definitions are all charged, never counted as nothing."""
    plain = parse({"messages": [{"role": "user", "content": "look"}]})
    rich = parse(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:..."}},
                    ],
                }
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather"}}],
        }
    )
    assert rich.request.prompt_tokens > plain.request.prompt_tokens + IMAGE_TOKENS


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (orjson.dumps({"model": "gpt-4o"}), "no messages"),
        (orjson.dumps({"messages": []}), "no messages"),
        (orjson.dumps({"messages": ["hi"]}), "messages[0] must be an object"),
        (orjson.dumps({"messages": [{"content": "hi"}]}), "messages[0] has no role"),
        (orjson.dumps({"messages": [{"role": "user"}]}), "messages[0] has no content"),
        (orjson.dumps({"messages": [{"role": "user", "content": "a"}], "model": 3}), "model"),
        (
            orjson.dumps({"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}),
            "max_tokens must be a whole number",
        ),
        (
            orjson.dumps({"messages": [{"role": "user", "content": "a"}], "stream": True}),
            "stream",
        ),
        (
            orjson.dumps({"messages": [{"role": "user", "content": "a"}], "n": "2"}),
            "n must be",
        ),
        (
            orjson.dumps({"custom_id": "a", "url": "/v1/embeddings", "body": {}}),
            "only /v1/chat/completions",
        ),
    ],
)
def test_a_bad_line_is_refused_with_what_is_wrong(line: bytes, says: str) -> None:
    """Each malformed line gets a LineError saying what is wrong, never another exception."""
    with pytest.raises(LineError, match=re.escape(says)):
        parse(line)


def _result(cost: float) -> ChatResult:
    return ChatResult(
        "Salut",
        "stop",
        Usage(5, 2),
        "gpt-4o-mini",
        RateLimitSnapshot.from_headers({}),
        0.1,
        cost_usd=cost,
        response={"id": "x", "choices": [{"message": {"content": "Salut"}}]},
    )


def test_result_lines_carry_the_line_number_passthrough_and_reply_or_error() -> None:
    """An answered line holds the whole reply; a failed one its error class, status, message."""
    line = parse({"messages": [{"role": "user", "content": "a"}], "metadata": [1]}, line_no=9)
    ok = orjson.loads(ok_line(line, _result(0.25)))
    assert ok == {
        "line": 9,
        "metadata": [1],
        "response": {"id": "x", "choices": [{"message": {"content": "Salut"}}]},
        "error": None,
        "cost_usd": 0.25,
    }
    bad = orjson.loads(error_line(line, ContextLengthExceeded("too long", status=400)))
    assert bad["response"] is None
    assert bad["error"] == {
        "class": "context_length_exceeded",
        "status": 400,
        "message": "too long",
    }


def test_output_order_hands_out_contiguous_prefixes_only() -> None:
    """Results that finish out of order are held until every earlier line has finished."""
    order = OutputOrder(written=0, cap_bytes=1000)
    order.finish(1, b"b")
    order.finish(2, b"c")
    assert order.take() is None
    order.finish(0, b"a")
    chunk = order.take()
    assert chunk is not None and chunk.start == 0 and chunk.texts == (b"a", b"b", b"c")
    assert chunk.stop == 3 and order.written == 3 and order.waiting == 0
    with pytest.raises(ValueError, match="finished twice"):
        order.finish(1, b"again")


def test_output_order_spills_past_its_memory_cap_and_resumes_from_stored_lines() -> None:
    """Past the cap a result is left to the store (None); a resume starts after the file."""
    order = OutputOrder(written=5, stored=[3, 6, 8], cap_bytes=4)
    order.finish(7, b"abc")
    order.finish(9, b"defg")  # would pass the cap: read back from the store later
    order.finish(5, b"x")
    chunk = order.take()
    assert chunk is not None
    assert chunk.start == 5 and chunk.texts == (b"x", None, b"abc", None, None)
    assert order.written == 10


def test_a_result_batch_stores_its_rows_and_appends_its_lines_once_even_when_rerun(
    tmp_path: Path,
) -> None:
    """A flush's results and the file lines they free, gathered in several adds, write the
    rows and the bytes once, record the file's end, and a rerun of the op changes nothing."""
    conn = open_store(tmp_path / "state.duckdb", create=True)
    out = tmp_path / "out.jsonl"
    out_file = OutputFile(out, lines=0, size=0)
    try:
        batch = ResultBatch(out_file)
        batch.add(LineRow(1, True, b'{"b":1}'), None)  # ahead of line 0: held back
        batch.add(LineRow(0, False, b'{"a":0}'), Chunk(0, (b'{"a":0}', b'{"b":1}')))
        batch.add(LineRow(2, True, b'{"c":2}'), Chunk(2, (b'{"c":2}',)))
        for _ in range(2):  # the writer reruns a transaction's ops after a later op failed
            conn.execute("BEGIN")
            batch(conn)
            conn.execute("ROLLBACK" if _ == 0 else "COMMIT")
    finally:
        out_file.close()
    assert out.read_bytes() == b'{"a":0}\n{"b":1}\n{"c":2}\n'
    assert line_counts(conn) == (2, 1)
    meta = read_meta(conn)
    assert (meta[META_OUT_LINES], meta[META_OUT_BYTES]) == ("3", str(len(out.read_bytes())))
    record_end(conn, lines=4, size=99)  # the two keys exist: updated in place
    assert (read_meta(conn)[META_OUT_LINES], read_meta(conn)[META_OUT_BYTES]) == ("4", "99")
