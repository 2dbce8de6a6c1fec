"""The simulator's Files and Batch API: uploaded files, batches and their life cycle, in memory.

A batch moves validating → in_progress → finalizing → completed over ``batch_delay_s`` of the
simulator's clock (10 % validating, 80 % in progress, 10 % finalizing), or fails validation,
expires (``batch_expire_s``) or is cancelled (cancelling for ``batch_cancel_s``). Lines are
answered as time passes, each by the same function that answers the online endpoint, so a line's
reply body is the one ``POST /v1/chat/completions`` gives for the same body. State only advances
when a batch is looked at (retrieve, list, cancel): no timers. Nothing here raises; refusals come
back as ``wire.ApiError``.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

import orjson

from engine.clock import Clock
from engine.simulator import wire
from engine.simulator.faults import uniform

__all__ = [
    "BATCH_ENDPOINTS",
    "BATCH_STATUSES",
    "MAX_FILE_BYTES",
    "MAX_REQUESTS_PER_FILE",
    "OPEN_STATUSES",
    "BatchBook",
    "BatchTiming",
    "LineAnswer",
]

BATCH_STATUSES: Final = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
OPEN_STATUSES: Final = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
# OpenAI's per-file limits for a batch input file.
MAX_REQUESTS_PER_FILE: Final = 50_000
MAX_FILE_BYTES: Final = 200 * 1024 * 1024
COMPLETION_WINDOW_S: Final = 24 * 3600
# Azure OpenAI names the endpoint without the version prefix; both mean chat completions.
BATCH_ENDPOINTS: Final = frozenset({"/v1/chat/completions", "/chat/completions"})
_METADATA_KEYS: Final = 16
_METADATA_KEY_CHARS: Final = 64
_METADATA_VALUE_CHARS: Final = 512
_VALIDATING: Final = 0.1  # fractions of the processing delay spent in each phase
_FINALIZING: Final = 0.9


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """What the online endpoint would answer a body with: HTTP status and JSON body."""

    status: int
    body: bytes
    request_id: str


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """How long simulated batches take, and which lines fail."""

    delay_s: float = 2.0  # create → completed
    expire_s: float | None = None  # None: never expires; else expires this long after create
    expire_count: int | None = None  # at most this many batches expire (None: no limit)
    cancel_s: float = 0.2  # cancelling → cancelled
    line_failure_rate: float = 0.0  # share of lines answered 500 in the error file
    seed: int = 0


@dataclass(slots=True)
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def entry(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass(slots=True)
class _Line:
    custom_id: str
    body: bytes  # the request body, re-encoded


@dataclass(slots=True)
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    created_at: int  # unix seconds
    t0: float  # simulator clock at creation
    lines: list[_Line]
    errors: list[dict[str, Any]]
    total: int = 0
    status: str = "validating"
    done: int = 0  # lines answered so far (in file order)
    completed: int = 0
    failed: int = 0
    output: list[bytes] = field(default_factory=list)
    error_lines: list[bytes] = field(default_factory=list)
    stamps: dict[str, int] = field(default_factory=dict)  # "<status>_at" -> unix seconds
    cancel_t: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


class BatchBook:
    """Every file and batch of one simulator; ``answer`` replies to one request body."""

    def __init__(
        self,
        timing: BatchTiming,
        clock: Clock,
        wall: Callable[[], float],
        answer: Callable[[bytes, int], LineAnswer],
    ) -> None:
        self._timing = timing
        self._clock = clock
        self._wall = wall
        self._answer = answer
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}  # in creation order
        self._seq = 0
        self._seen: Counter[bytes] = Counter()  # batch answers per body, for failure draws
        self._expired = 0  # batches that expired (BatchTiming.expire_count bounds them)
        self.lines_answered = 0

    # --- files ----------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._seq += 1
        digest = hashlib.blake2b(f"{self._timing.seed}:{self._seq}".encode(), digest_size=12)
        # OpenAI's shapes: "file-..." and "batch_...".
        return f"{prefix}{'-' if prefix == 'file' else '_'}{digest.hexdigest()}"

    def upload(self, filename: str, purpose: str, data: bytes) -> dict[str, Any] | wire.ApiError:
        """Store an uploaded file; OpenAI's 400 for a wrong purpose or a file too large."""
        if purpose != "batch":
            return wire.bad_request(
                f"The m2l simulator stores batch input files only; got purpose '{purpose}'.",
                param="purpose",
                code="invalid_value",
            )
        if len(data) > MAX_FILE_BYTES:
            return wire.bad_request(
                f"File is too large: {len(data)} bytes; the maximum for a batch file is "
                f"{MAX_FILE_BYTES} bytes.",
                param="file",
                code="file_too_large",
            )
        return self._store(filename, purpose, data).entry()

    def _store(self, filename: str, purpose: str, data: bytes) -> _File:
        file = _File(self._new_id("file"), filename, purpose, data, int(self._wall()))
        self._files[file.id] = file
        return file

    def file(self, file_id: str) -> dict[str, Any] | wire.ApiError:
        found = self._files.get(file_id)
        return found.entry() if found is not None else _no_file(file_id)

    def content(self, file_id: str) -> bytes | wire.ApiError:
        found = self._files.get(file_id)
        return found.data if found is not None else _no_file(file_id)

    def delete(self, file_id: str) -> dict[str, Any] | wire.ApiError:
        if self._files.pop(file_id, None) is None:
            return _no_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # --- batches --------------------------------------------------------------------------------

    def create(self, body: Mapping[str, Any]) -> dict[str, Any] | wire.ApiError:
        """Create a batch from an uploaded file; OpenAI's 400/404 for a body it would refuse."""
        file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        metadata = body.get("metadata")
        if not isinstance(file_id, str) or not file_id:
            return wire.bad_request(
                "Missing required parameter: 'input_file_id'.",
                param="input_file_id",
                code="missing_required_parameter",
            )
        if endpoint not in BATCH_ENDPOINTS:
            return wire.bad_request(
                f"Invalid value for 'endpoint': the m2l simulator batches "
                f"{sorted(BATCH_ENDPOINTS)} only; got {endpoint!r}.",
                param="endpoint",
                code="invalid_value",
            )
        if window != "24h":
            return wire.bad_request(
                f"Invalid value for 'completion_window': expected '24h', got {window!r}.",
                param="completion_window",
                code="invalid_value",
            )
        if (problem := _metadata_problem(metadata)) is not None:
            return wire.bad_request(problem, param="metadata", code="invalid_value")
        source = self._files.get(file_id)
        if source is None:
            return _no_file(file_id)
        lines, errors = _parse_input(source.data, str(endpoint))
        batch = _Batch(
            id=self._new_id("batch"),
            input_file_id=file_id,
            endpoint=str(endpoint),
            metadata=dict(metadata) if isinstance(metadata, dict) else None,
            created_at=int(self._wall()),
            t0=self._clock.now(),
            lines=lines,
            errors=errors,
            total=len(lines),
        )
        self._batches[batch.id] = batch
        return self._entry(batch)

    def retrieve(self, batch_id: str) -> dict[str, Any] | wire.ApiError:
        batch = self._batches.get(batch_id)
        if batch is None:
            return _no_batch(batch_id)
        self._advance(batch)
        return self._entry(batch)

    def list(self, after: str | None, limit: int) -> dict[str, Any]:
        """Batches newest first, ``limit`` of them after the batch ``after`` (OpenAI's cursor)."""
        ordered = list(reversed(self._batches.values()))
        if after is not None:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        page = ordered[: max(1, min(limit, 100))]
        for batch in page:
            self._advance(batch)
        data = [self._entry(b) for b in page]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(ordered) > len(page),
        }

    def cancel(self, batch_id: str) -> dict[str, Any] | wire.ApiError:
        batch = self._batches.get(batch_id)
        if batch is None:
            return _no_batch(batch_id)
        self._advance(batch)
        if batch.status not in ("validating", "in_progress", "finalizing"):
            if batch.status in ("cancelling", "cancelled"):
                return self._entry(batch)
            return wire.ApiError(
                409,
                f"Cannot cancel a batch with status '{batch.status}'.",
                "invalid_request_error",
                "invalid_request",
            )
        batch.status = "cancelling"
        batch.cancel_t = self._clock.now()
        batch.stamps["cancelling_at"] = self._unix(batch, batch.cancel_t)
        return self._entry(batch)

    def set_delay(self, delay_s: float) -> None:
        """Batches take ``delay_s`` from now on, open ones included (a provider's queue that
        speeds up or slows down); raises ValueError for a negative delay."""
        if delay_s < 0:
            raise ValueError(f"batch delay must be >= 0, got {delay_s}")
        self._timing = replace(self._timing, delay_s=delay_s)

    def counts(self) -> dict[str, int]:
        """Batches by status (as last seen), for /stats."""
        out: Counter[str] = Counter(b.status for b in self._batches.values())
        return {status: out[status] for status in BATCH_STATUSES if out[status]}

    # --- life cycle -----------------------------------------------------------------------------

    def _unix(self, batch: _Batch, t: float) -> int:
        return batch.created_at + int(t - batch.t0)

    def _advance(self, batch: _Batch) -> None:
        """Bring the batch up to the simulator's clock: answer lines, change status."""
        if batch.status in ("failed", "completed", "expired", "cancelled"):
            return
        now = self._clock.now()
        timing = self._timing
        delay = max(timing.delay_s, 1e-9)
        if batch.status == "validating":
            if now - batch.t0 < _VALIDATING * delay and not batch.errors:
                return
            if batch.errors:
                batch.status = "failed"
                batch.stamps["failed_at"] = self._unix(batch, now)
                return
            batch.status = "in_progress"
            batch.stamps["in_progress_at"] = self._unix(batch, batch.t0 + _VALIDATING * delay)
        if batch.status == "cancelling":
            assert batch.cancel_t is not None
            self._answer_until(batch, batch.cancel_t)
            if now - batch.cancel_t >= timing.cancel_s:
                self._close(batch, "cancelled", batch.cancel_t + timing.cancel_s)
            return
        expire_at = None if timing.expire_s is None else batch.t0 + timing.expire_s
        if timing.expire_count is not None and self._expired >= timing.expire_count:
            expire_at = None
        if expire_at is not None and now >= expire_at and now - batch.t0 < delay:
            self._expired += 1
            self._answer_until(batch, expire_at)
            self._close(batch, "expired", expire_at)
            return
        self._answer_until(batch, now)
        if batch.status == "in_progress" and now - batch.t0 >= _FINALIZING * delay:
            batch.status = "finalizing"
            batch.stamps["finalizing_at"] = self._unix(batch, batch.t0 + _FINALIZING * delay)
        if now - batch.t0 >= delay:
            self._close(batch, "completed", batch.t0 + delay)

    def _answer_until(self, batch: _Batch, t: float) -> None:
        """Answer the lines due by clock time ``t`` (all of them once in_progress has ended)."""
        delay = max(self._timing.delay_s, 1e-9)
        share = (t - batch.t0 - _VALIDATING * delay) / ((_FINALIZING - _VALIDATING) * delay)
        due = len(batch.lines) if share >= 1 else max(0, math.floor(share * len(batch.lines)))
        while batch.done < due:
            self._answer_line(batch, batch.lines[batch.done])
            batch.done += 1

    def _answer_line(self, batch: _Batch, line: _Line) -> None:
        key = hashlib.blake2b(line.body, digest_size=16).digest()
        rate = self._timing.line_failure_rate
        n = 0
        if rate > 0:
            n = self._seen[key]
            self._seen[key] = n + 1
        self.lines_answered += 1
        line_id = (
            "batch_req_"
            + hashlib.blake2b(f"{batch.id}:{line.custom_id}".encode(), digest_size=12).hexdigest()
        )
        if rate > 0 and uniform(self._timing.seed, b"m2l-sim-batchfail", key, n) < rate:
            error = wire.server_error()
            answer = LineAnswer(error.status, error.body(), "req_" + line_id[10:])
        else:
            answer = self._answer(line.body, n)
        record = (
            b'{"id":"' + line_id.encode() + b'","custom_id":' + orjson.dumps(line.custom_id)
            + b',"response":{"status_code":' + str(answer.status).encode()
            + b',"request_id":"' + answer.request_id.encode() + b'","body":' + answer.body
            + b'},"error":null}'
        )  # fmt: skip
        if answer.status == 200:
            batch.completed += 1
            batch.output.append(record)
        else:
            batch.failed += 1
            batch.error_lines.append(record)

    def _close(self, batch: _Batch, status: str, t: float) -> None:
        """End the batch: unanswered lines go to the error file, output files are written."""
        if status in ("expired", "cancelled"):
            code = "batch_expired" if status == "expired" else "batch_cancelled"
            message = (
                "This request could not be executed before the completion window expired."
                if status == "expired"
                else "This request was not executed because the batch was cancelled."
            )
            for line in batch.lines[batch.done :]:
                batch.error_lines.append(
                    orjson.dumps(
                        {
                            "id": "batch_req_" + hashlib.blake2b(
                                f"{batch.id}:{line.custom_id}".encode(), digest_size=12
                            ).hexdigest(),
                            "custom_id": line.custom_id,
                            "response": None,
                            "error": {"code": code, "message": message},
                        }
                    )
                )  # fmt: skip
                batch.failed += 1
        else:
            batch.stamps.setdefault("finalizing_at", self._unix(batch, t))
        if batch.output:
            out = self._store(f"{batch.id}_output.jsonl", "batch_output", _jsonl(batch.output))
            batch.output_file_id = out.id
        if batch.error_lines:
            err = self._store(f"{batch.id}_error.jsonl", "batch_output", _jsonl(batch.error_lines))
            batch.error_file_id = err.id
        batch.output, batch.error_lines = [], []
        batch.lines = []  # the input file keeps the requests; the batch needs them no more
        batch.status = status
        batch.stamps[f"{status}_at"] = self._unix(batch, t)

    def _entry(self, batch: _Batch) -> dict[str, Any]:
        stamps = batch.stamps
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "in_progress_at": stamps.get("in_progress_at"),
            "expires_at": batch.created_at + COMPLETION_WINDOW_S,
            "finalizing_at": stamps.get("finalizing_at"),
            "completed_at": stamps.get("completed_at"),
            "failed_at": stamps.get("failed_at"),
            "expired_at": stamps.get("expired_at"),
            "cancelling_at": stamps.get("cancelling_at"),
            "cancelled_at": stamps.get("cancelled_at"),
            "request_counts": {
                "total": batch.total,
                "completed": batch.completed,
                "failed": batch.failed,
            },
            "metadata": batch.metadata,
        }


def _jsonl(records: list[bytes]) -> bytes:
    return b"\n".join(records) + b"\n"


def _no_file(file_id: str) -> wire.ApiError:
    return wire.ApiError(
        404, f"No such File object: {file_id}", "invalid_request_error", "not_found", param="id"
    )


def _no_batch(batch_id: str) -> wire.ApiError:
    return wire.ApiError(
        404, f"No batch found with id '{batch_id}'.", "invalid_request_error", "not_found"
    )


def _metadata_problem(metadata: object) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "Invalid type for 'metadata': expected an object."
    if len(metadata) > _METADATA_KEYS:
        return f"Invalid 'metadata': at most {_METADATA_KEYS} keys, got {len(metadata)}."
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY_CHARS:
            return f"Invalid 'metadata': key {key[:20]!r}... is over {_METADATA_KEY_CHARS} chars."
        if not isinstance(value, str) or len(value) > _METADATA_VALUE_CHARS:
            return f"Invalid 'metadata.{key}': expected a string of at most 512 characters."
    return None


def _parse_input(data: bytes, endpoint: str) -> tuple[list[_Line], list[dict[str, Any]]]:
    """The file's request lines, or the validation errors that fail the batch (OpenAI's codes)."""
    lines: list[_Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()

    def fail(code: str, message: str, number: int, param: str | None = None) -> None:
        if len(errors) < 100:
            errors.append({"code": code, "message": message, "param": param, "line": number})

    raw_lines = [raw for raw in data.split(b"\n") if raw.strip()]
    if not raw_lines:
        fail("empty_file", "The input file contains no requests.", 0)
    if len(raw_lines) > MAX_REQUESTS_PER_FILE:
        fail(
            "too_many_requests",
            f"The input file has {len(raw_lines)} requests; the limit is {MAX_REQUESTS_PER_FILE}.",
            0,
        )
        return [], errors
    for number, raw in enumerate(raw_lines, start=1):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            fail("invalid_json_line", "This line is not parseable as valid JSON.", number)
            continue
        if not isinstance(obj, dict):
            fail("invalid_json_line", "This line is not a JSON object.", number)
            continue
        custom_id = obj.get("custom_id")
        body = obj.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            fail("missing_required_parameter", "Missing 'custom_id'.", number, "custom_id")
            continue
        if custom_id in seen:
            fail(
                "duplicate_custom_id",
                f"The custom_id '{custom_id}' appears more than once in the file.",
                number,
                "custom_id",
            )
            continue
        seen.add(custom_id)
        if obj.get("method") != "POST":
            fail("invalid_method", "The method must be 'POST'.", number, "method")
            continue
        if obj.get("url") != endpoint and obj.get("url") not in BATCH_ENDPOINTS:
            fail(
                "mismatched_url",
                f"The url must match the batch's endpoint '{endpoint}'.",
                number,
                "url",
            )
            continue
        if not isinstance(body, dict):
            fail("invalid_body", "The body must be a JSON object.", number, "body")
            continue
        model = body.get("model")
        if isinstance(model, str):
            models.add(model)
        if len(models) > 1:
            fail(
                "mismatched_model",
                "All requests in a batch input file must use the same model.",
                number,
                "body.model",
            )
            continue
        lines.append(_Line(custom_id, orjson.dumps(body)))
    return (lines if not errors else []), errors
