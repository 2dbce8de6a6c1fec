"""The simulator's HTTP shell on aiohttp.web: routes, rate-limit admission, latency and faults.

Decisions (parsing, limits, fault draws, reply text) live in the pure modules beside this one;
this module only orders them and performs the I/O. ``Simulator.start`` raises ConfigError when
the address cannot be bound; ``base_url`` raises StateError before the server has started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web

from engine.clock import Clock, MonotonicClock
from engine.errors import ConfigError, StateError
from engine.simsettings import SimSettings
from engine.simulator import wire
from engine.simulator.batches import MAX_FILE_BYTES, BatchBook, BatchTiming, LineAnswer
from engine.simulator.buckets import Admission, RateLimits
from engine.simulator.capacity import QueueFull, SlotModel, Slots
from engine.simulator.counting import UsageCounter
from engine.simulator.faults import draw_fault, uniform
from engine.simulator.languages import LANGUAGES
from engine.simulator.promptcache import PromptCache
from engine.simulator.reasoning import check_params, reasoning_tokens
from engine.simulator.replies import Reply, ReplyWriter
from engine.simulator.request import SimRequest, parse_request
from engine.simulator.stats import SimStats
from engine.simulator.text import composer_for

__all__ = ["Simulator", "run_simulator"]

# A 128k-token prompt is ~0.5 MB; a batch input file may be 200 MB (plus multipart framing).
_MAX_BODY = MAX_FILE_BYTES + 1024 * 1024
_SHUTDOWN_S = 0.25  # in-flight replies are cut after this on stop: it is a simulator
_STREAM_PIECE = re.compile(r"\S+\s*|\s+")
_WORDS_PER_CHUNK = 4  # spaced scripts: a stream chunk carries a few words (~ a few tokens)
_CHARS_PER_CHUNK = 6  # Chinese and Japanese: a few characters


class Simulator:
    """An OpenAI-compatible chat completions server with limits, latency and faults."""

    def __init__(self, settings: SimSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.limits = RateLimits(settings.rpm, settings.tpm, settings.bucket_seconds, self.clock)
        self._counter = UsageCounter()
        self._writer = ReplyWriter(settings, self._counter)
        self._stats = SimStats()
        self._seen: Counter[bytes] = Counter()  # admissions per body key, for fault draws
        self._faulty = settings.faults.total > 0
        self._flex_seen: Counter[bytes] = Counter()  # flex tries per body key, for 429 draws
        self._cache = PromptCache(settings.cache_min_tokens)
        self._listed = frozenset(settings.listed_models)
        self._slots: Slots | None = None
        if settings.slots is not None:
            model = SlotModel(
                self.clock,
                slots=settings.slots,
                slowdown=settings.batch_slowdown,
                queue_limit=settings.queue_limit,
            )
            self._slots = Slots(model, self.clock)
        self._queue_full = 0
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self.app = web.Application(client_max_size=_MAX_BODY)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/v1/models/{model}", self._model)
        self.batches = BatchBook(
            BatchTiming(
                delay_s=settings.batch_delay_s,
                expire_s=settings.batch_expire_s,
                expire_count=settings.batch_expire_count,
                cancel_s=settings.batch_cancel_s,
                line_failure_rate=settings.batch_line_failure_rate,
                seed=settings.seed,
            ),
            self.clock,
            time.time,
            self._answer_line,
        )
        # Azure OpenAI serves the same API under /openai/...; both prefixes are routed.
        for prefix in ("/v1", "/openai"):
            self.app.router.add_post(f"{prefix}/files", self._upload)
            self.app.router.add_get(f"{prefix}/files/{{file_id}}", self._file)
            self.app.router.add_get(f"{prefix}/files/{{file_id}}/content", self._file_content)
            self.app.router.add_delete(f"{prefix}/files/{{file_id}}", self._delete_file)
            self.app.router.add_post(f"{prefix}/batches", self._create_batch)
            self.app.router.add_get(f"{prefix}/batches", self._list_batches)
            self.app.router.add_get(f"{prefix}/batches/{{batch_id}}", self._batch)
            self.app.router.add_post(f"{prefix}/batches/{{batch_id}}/cancel", self._cancel_batch)
        self.app.router.add_post("/openai/chat/completions", self._chat)
        self.app.router.add_get("/stats", self._get_stats)
        self.app.router.add_post("/stats/reset", self._reset_stats)

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, once started."""
        if self._base_url is None:
            raise StateError("the simulator has not started yet; use `async with run_simulator()`")
        return self._base_url

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/", 1)[0])

    async def start(self) -> str:
        """Bind and serve; returns the base URL. Raises ConfigError if the port is taken."""
        self._warm()
        # handler_cancellation: a client that hangs up (e.g. on a "hang" fault) frees its handler.
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_S
        )
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the simulator cannot listen on {self.settings.host}:{self.settings.port} "
                f"({exc.strerror or exc}); choose another --port (0 picks a free one)"
            ) from exc
        self._runner = runner
        host, port = runner.addresses[0][:2]
        host = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{host}:{port}/v1"
        return self._base_url

    def _warm(self) -> None:
        """Load the tokenizer and every language's composer before the first request."""
        # Done lazily, the first request stalls the loop ~0.5 s (more on a busy machine) and each
        # new language ~10 ms: a burst queued behind that is admitted late, after its bucket
        # wasted that refill, and clients whose model of the limits is exact get 429s.
        encoding = self._counter.encoding(self.settings.model).name
        for lang in LANGUAGES:
            composer_for(lang, encoding)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- stats ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """Counters since start or the last reset (see SimStats.as_dict), slots and batches."""
        out = self._stats.as_dict(self.clock.now())
        if self._slots is not None:
            out["slots"] = {
                "slots": self.settings.slots,
                "busy": self._slots.model.busy,
                "queued": self._slots.model.queued,
                "queue_full": self._queue_full,
            }
        out["batch_lines_answered"] = self.batches.lines_answered
        out["batches"] = self.batches.counts()
        return out

    def reset_stats(self) -> None:
        """Zero the counters and forget the prompt cache (so a benchmark starts cold)."""
        self._stats.reset()
        self._cache.clear()
        self._queue_full = 0

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    # --- models ---------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        return web.Response(
            body=wire.model_list(self.settings.listed_models), content_type="application/json"
        )

    async def _model(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        model = request.match_info["model"]
        if self.settings.unknown_models_404 and model not in self._listed:
            return self._error(wire.model_not_found(model), {})
        return web.Response(
            body=orjson.dumps(wire.model_entry(model)), content_type="application/json"
        )

    # --- files and batches ----------------------------------------------------------------------

    def _json(self, value: dict[str, Any] | wire.ApiError) -> web.Response:
        if isinstance(value, wire.ApiError):
            return self._error(value, {})
        return web.Response(body=orjson.dumps(value), content_type="application/json")

    async def _upload(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        purpose, filename, data = "", "upload.jsonl", b""
        try:
            form = await request.post()
        except ValueError:
            form = None
        if form is not None:
            purpose = str(form.get("purpose", ""))
            field = form.get("file")
            if isinstance(field, web.FileField):
                filename, data = field.filename, field.file.read()
            elif isinstance(field, str | bytes):
                data = field.encode() if isinstance(field, str) else field
        if not purpose or not data:
            return self._error(
                wire.bad_request(
                    "An upload needs multipart fields 'purpose' and 'file'.",
                    param="file" if purpose else "purpose",
                    code="missing_required_parameter",
                ),
                {},
            )
        return self._json(self.batches.upload(filename, purpose, data))

    async def _file(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        return self._json(self.batches.file(request.match_info["file_id"]))

    async def _file_content(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        data = self.batches.content(request.match_info["file_id"])
        if isinstance(data, wire.ApiError):
            return self._error(data, {})
        return web.Response(body=data, content_type="application/octet-stream")

    async def _delete_file(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        return self._json(self.batches.delete(request.match_info["file_id"]))

    async def _create_batch(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return self._error(wire.bad_request("The request body must be a JSON object."), {})
        return self._json(self.batches.create(body))

    async def _list_batches(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        raw_limit = request.query.get("limit", "20")
        limit = int(raw_limit) if raw_limit.isdigit() else 20
        return self._json(self.batches.list(request.query.get("after"), limit))

    async def _batch(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        return self._json(self.batches.retrieve(request.match_info["batch_id"]))

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        return self._json(self.batches.cancel(request.match_info["batch_id"]))

    def _answer_line(self, raw: bytes, attempt: int) -> LineAnswer:
        """A batch line's answer: what the online endpoint answers this body, minus latency,
        rate limits and faults (batch lines fail through the batch's own failure rate)."""
        parsed = parse_request(raw)
        if isinstance(parsed, wire.ApiError):
            return LineAnswer(parsed.status, parsed.body(), _request_id(raw))
        checked = self._precheck(parsed)
        if isinstance(checked, wire.ApiError):
            return LineAnswer(checked.status, checked.body(), _request_id(raw))
        prompt_tokens, max_tokens, _charge = checked
        # Attempt 0 whatever the resubmission: the reply equals the online endpoint's.
        reply = self._writer.write(
            parsed, max_tokens, 0, None, reasoning=reasoning_tokens(self.settings, parsed, 0)
        )
        cached = self._cached_tokens(parsed)
        body = wire.completion(
            reply.completion_id,
            int(time.time()),
            parsed.model,
            reply.content,
            reply.finish_reason,
            prompt_tokens,
            reply.completion_tokens,
            cached_tokens=cached,
            reasoning_tokens=reply.reasoning_tokens,
        )
        self._count_usage(prompt_tokens, cached, reply)
        return LineAnswer(200, body, "req_" + reply.completion_id[9:])

    # --- chat completions -----------------------------------------------------------------------

    def _auth_error(self, request: web.Request) -> wire.ApiError | None:
        expected = self.settings.require_api_key
        if expected is None:
            return None
        header = request.headers.get("Authorization", "")
        if not header:
            return wire.missing_api_key()
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), expected):
            return wire.invalid_api_key()
        return None

    def _error(self, error: wire.ApiError, headers: Mapping[str, str]) -> web.Response:
        self._stats.by_status[error.status] += 1
        if error.kind == "flex_unavailable":
            self._stats.flex_unavailable += 1
        elif error.status == 429:
            self._stats.rate_limited[error.type] += 1
        elif error.status < 500:
            self._stats.rejected[error.kind] += 1
        return web.Response(
            status=error.status,
            body=error.body(),
            headers=headers,
            content_type="application/json",
        )

    def _precheck(self, req: SimRequest) -> tuple[int, int, int] | wire.ApiError:
        """(prompt tokens, max_tokens, TPM charge), or the 404/400 OpenAI answers first."""
        s = self.settings
        if s.unknown_models_404 and req.model not in self._listed:
            return wire.model_not_found(req.model)
        if (refused := check_params(s, req)) is not None:
            return refused
        prompt = self._counter.prompt_tokens(req.model, req.messages)
        if req.max_tokens is not None:
            if prompt + req.max_tokens > s.context_window:
                return wire.context_length_error(s.context_window, prompt, req.max_tokens)
            return prompt, req.max_tokens, prompt + req.max_tokens
        if prompt >= s.context_window:
            return wire.context_length_error(s.context_window, prompt, None)
        # No max_tokens: the reply may use the rest of the window; the charge uses the default.
        return (
            prompt,
            min(s.default_max_tokens, s.context_window - prompt),
            prompt + s.default_max_tokens,
        )

    def _refusal(self, req: SimRequest, admission: Admission) -> wire.ApiError:
        refused = admission.refused_by or "requests"
        bucket = self.limits.requests if refused == "requests" else self.limits.tokens
        assert bucket is not None  # a refusal names a configured bucket
        state = next(b for b in admission.buckets if b.kind == refused)
        used = max(0, round(bucket.capacity - state.remaining))
        return wire.rate_limit_error(
            refused,
            req.model,
            bucket.limit_per_minute,
            used,
            admission.requested,
            admission.retry_after_s,
            bucket.capacity,
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._stats.requests += 1
        self._stats.in_flight += 1
        try:
            return await self._answer(request)
        finally:
            self._stats.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if (error := self._auth_error(request)) is not None:
            return self._error(error, {})
        parsed = parse_request(await request.read())
        if isinstance(parsed, wire.ApiError):
            return self._error(parsed, {})
        checked = self._precheck(parsed)
        if isinstance(checked, wire.ApiError):
            return self._error(checked, {})
        prompt_tokens, max_tokens, charge = checked
        flex = parsed.service_tier == "flex"
        if flex and self._flex_refused(parsed):
            return self._error(wire.flex_unavailable_error(), {})
        tier = parsed.service_tier if parsed.service_tier in ("flex", "priority") else "default"

        headers: dict[str, str] = {}
        if self.limits.enabled:
            admission = self.limits.admit(charge)
            headers = admission.headers()
            if not admission.admitted:
                return self._error(self._refusal(parsed, admission), headers)
        self._stats.admit(self.clock.now(), charge)
        attempt = 0
        if self._faulty:
            # Only fault draws need the attempt number; without faults the table is not kept,
            # so a long fault-free run does not grow it by one entry per request.
            attempt = self._seen[parsed.key]
            self._seen[parsed.key] = attempt + 1
        fault = draw_fault(self.settings.seed, parsed.key, attempt, self.settings.faults)
        if fault is not None:
            self._stats.faults[fault] += 1
        if fault == "server_error":
            return self._error(wire.server_error(), headers)
        if fault == "unavailable":
            return self._error(wire.unavailable_error(), headers)

        reply = self._writer.write(
            parsed,
            max_tokens,
            attempt,
            fault,
            reasoning=reasoning_tokens(self.settings, parsed, attempt),
            slowdown=self.settings.flex_slowdown if flex else 1.0,
        )
        cached = self._cached_tokens(parsed)
        headers["x-request-id"] = "req_" + reply.completion_id[9:]
        if fault == "hang":
            await asyncio.sleep(self.settings.hang_s)
        if self._slots is not None:
            # The latency model's time is the work at one busy slot; the slots decide when it
            # is done (queue wait and batch slowdown included). A stream then goes out at once.
            try:
                await self._slots.run(reply.total_s)
            except QueueFull:
                self._queue_full += 1
                return self._error(wire.unavailable_error(), headers)
            reply = dataclasses.replace(reply, ttft_s=0.0, total_s=0.0)
        if parsed.stream:
            return await self._stream(
                request, parsed, reply, (prompt_tokens, cached), tier, headers, fault
            )

        if reply.total_s > 0:
            await asyncio.sleep(reply.total_s)
        body = wire.completion(
            reply.completion_id,
            int(time.time()),
            parsed.model,
            reply.content,
            reply.finish_reason,
            prompt_tokens,
            reply.completion_tokens,
            cached_tokens=cached,
            reasoning_tokens=reply.reasoning_tokens,
            service_tier=tier,
        )
        self._stats.by_status[200] += 1
        if fault == "reset":
            return await self._reset(request, body, headers)
        if fault == "truncated":
            # Cut inside the JSON: the status and length are right, the document is not.
            body = body[: max(1, len(body) // 2)]
        else:
            self._count_usage(prompt_tokens, cached, reply)
        return web.Response(body=body, headers=headers, content_type="application/json")

    def _flex_refused(self, req: SimRequest) -> bool:
        """Whether this flex try meets a capacity shortage (a fresh draw per try)."""
        rate = self.settings.flex_unavailable
        if rate <= 0.0:
            return False
        tries = self._flex_seen[req.key]
        self._flex_seen[req.key] = tries + 1
        return uniform(self.settings.seed, b"m2l-sim-flex", req.key, tries) < rate

    def _cached_tokens(self, req: SimRequest) -> int:
        tokens = self._counter.message_tokens(req.model, req.messages)
        return self._cache.lookup_and_store(req.model, req.messages, tokens)

    def _count_usage(self, prompt_tokens: int, cached: int, reply: Reply) -> None:
        self._stats.prompt_tokens += prompt_tokens
        self._stats.completion_tokens += reply.completion_tokens
        self._stats.cached_tokens += cached
        self._stats.reasoning_tokens += reply.reasoning_tokens

    async def _reset(
        self, request: web.Request, body: bytes, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        """Send the headers and half the body, then drop the connection."""
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "application/json"
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        _drop(request)
        return response  # aiohttp's write_eof then meets a closed transport and lets it be

    async def _stream(
        self,
        request: web.Request,
        req: SimRequest,
        reply: Reply,
        prompt: tuple[int, int],
        tier: str,
        headers: dict[str, str],
        fault: str | None,
    ) -> web.StreamResponse:
        """Server-sent events as OpenAI sends them: role, content pieces, finish, usage, DONE."""
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-cache"
        self._stats.by_status[200] += 1
        await response.prepare(request)
        created = int(time.time())
        with_usage = req.include_usage
        prompt_tokens, cached = prompt

        def event(delta: dict[str, object] | None, finish: str | None = None) -> bytes:
            return wire.sse(
                wire.chunk(
                    reply.completion_id, created, req.model, delta, finish,
                    with_usage_field=with_usage, service_tier=tier,
                )
            )  # fmt: skip

        if reply.ttft_s > 0:
            await asyncio.sleep(reply.ttft_s)
        await response.write(event({"role": "assistant", "content": "", "refusal": None}))
        pieces = _stream_pieces(reply.content, spaced=" " in reply.content)
        pause = (reply.total_s - reply.ttft_s) / max(1, len(pieces))
        half = len(pieces) // 2
        for i, piece in enumerate(pieces):
            if pause > 0:
                await asyncio.sleep(pause)
            if i == half and fault == "reset":
                _drop(request)
                return response
            if i == half and fault == "truncated":
                whole = event({"content": piece})
                await response.write(whole[: len(whole) // 2] + b"\n\n")
                continue
            await response.write(event({"content": piece}))
        await response.write(event({}, reply.finish_reason))
        if with_usage:
            usage = wire.usage(
                prompt_tokens, reply.completion_tokens, cached, reply.reasoning_tokens
            )
            final = wire.chunk(
                reply.completion_id, created, req.model, None,
                with_usage_field=True, usage_value=usage, service_tier=tier,
            )  # fmt: skip
            await response.write(wire.sse(final))
        await response.write(wire.sse(None))
        await response.write_eof()
        if fault not in ("reset", "truncated"):
            self._count_usage(prompt_tokens, cached, reply)
        return response


def _request_id(raw: bytes) -> str:
    return "req_" + hashlib.blake2b(raw, digest_size=12).hexdigest()


def _stream_pieces(content: str, *, spaced: bool) -> list[str]:
    """The content split into stream deltas: a few words (or characters) each."""
    if not content:
        return []
    if spaced:
        words = _STREAM_PIECE.findall(content)
        return [
            "".join(words[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(words), _WORDS_PER_CHUNK)
        ]
    return [content[i : i + _CHARS_PER_CHUNK] for i in range(0, len(content), _CHARS_PER_CHUNK)]


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()  # no FIN handshake, no flush of what is unsent: a reset, as in the wild


@asynccontextmanager
async def run_simulator(
    settings: SimSettings, *, clock: Clock | None = None
) -> AsyncIterator[Simulator]:
    """Serve a simulator for the duration of the block; ``sim.base_url`` ends with ``/v1``."""
    simulator = Simulator(settings, clock=clock)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()
