"""Reading a batch's output and error files: one outcome per ``custom_id``.

Pure. A line of either file is ``{"id", "custom_id", "response": {"status_code", "request_id",
"body"} | null, "error": {"code", "message"} | null}``; a line m2l cannot read is skipped (its
request then counts as unanswered and goes out again), never raised.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

__all__ = ["LineOutcome", "read_result_file"]


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """One answered line: an HTTP status and body, or a batch-level error code and message."""

    custom_id: str
    status: int | None
    body: bytes | None
    code: str | None = None
    message: str | None = None


def read_result_file(raw: bytes) -> dict[str, LineOutcome]:
    """The outcomes in one output or error file, by custom_id (a later line wins a repeat)."""
    out: dict[str, LineOutcome] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
            continue
        custom_id = obj["custom_id"]
        response = obj.get("response")
        error = obj.get("error")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            body = response.get("body")
            out[custom_id] = LineOutcome(
                custom_id,
                response["status_code"],
                orjson.dumps(body) if body is not None else b"",
            )
        elif isinstance(error, dict):
            out[custom_id] = LineOutcome(
                custom_id,
                None,
                None,
                str(error.get("code") or "error"),
                str(error.get("message") or ""),
            )
    return out
