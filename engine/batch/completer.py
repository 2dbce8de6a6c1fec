"""Batch mode's async shell: steps go out as Batch API lines and come back as replies.

``BatchCompleter.complete(request)`` is what the dispatcher calls for every attempt, as it calls
the HTTP client online: the request joins the lines waiting to go out, and the call returns when
its batch has answered it (or raises the error its line got, which the dispatcher's retry policy
handles as online). So validation, regeneration and the conversation state machine are the
online ones, and a conversation's next step joins the next batch as soon as its result is in.

Two loops run beside the conversations: the submitter turns waiting lines into input files
(planner.split_files), records each submission with its lines before the upload, the file id
after it and the batch id after the create call; the poller polls open batches with backoff and
hands out results. A resumed run first finds the batches an earlier session left open (by the
store, and by batch metadata for a batch created just before a kill) and lets the conversations
whose step they carry claim them: such a step is never sent again while its batch may complete.
Raises nothing itself; what a line got is raised to the dispatcher as a RequestError.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from engine.batch.api import BatchAPI, BatchGone, BatchInfo
from engine.batch.planner import FileLimits, SubmitPolicy, poll_delay, split_files, tail_active
from engine.batch.results import LineOutcome, read_result_file
from engine.chat import ChatRequest, ChatResult, Delivery
from engine.errors import (
    FatalRunError,
    OversizeRequest,
    RequestError,
    ServerError,
)
from engine.events import BatchUpdate, ConversationFinished, EventHook, Hooks
from state import batchstore as bs
from state.requestlog import parse_request_key

__all__ = ["BatchCompleter", "BatchJournal", "OnlineClient", "Route"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# A call to the Files/Batch API that fails transiently is tried this many times, waiting
# 1, 2, 4, ... seconds in between, before the lines it carried are handed back as failed.
_API_TRIES = 5
# How far back (seconds) a batch created just before a kill is looked for, before the
# submission's own creation time (clocks of client and provider differ a little).
_FIND_SLACK_S = 600


class OnlineClient(Protocol):
    """The online client (engine.client.ChatClient): the tail goes through it, and it reads
    batch replies exactly as it reads online ones."""

    async def complete(
        self, request: ChatRequest, *, delivery: Delivery | None = None
    ) -> ChatResult: ...

    def request_body(self, request: ChatRequest) -> dict[str, Any]: ...

    def read_reply(self, status: int, raw: bytes, latency: float = 0.0) -> ChatResult: ...


class BatchJournal(Protocol):
    """Durable writes and reads of the batch store (the run's writer implements it)."""

    async def write(self, op: Callable[[Any], None]) -> None:
        """Returns once ``op`` is committed; raises StateError."""
        ...

    def write_later(self, op: Callable[[Any], None]) -> None: ...

    async def read(self, fn: Callable[[Any], T]) -> T: ...


@dataclass(slots=True)
class Route:
    """Which way one step's current attempt goes, decided when its cost was reserved."""

    online: bool
    request_id: int
    adopted: bool = False  # a line an earlier session sent, claimed by its conversation


@dataclass(slots=True)
class _Slot:
    """One line in flight: its attempt and the future its conversation awaits."""

    key: str
    request_id: int
    custom_id: str
    sub_id: int
    future: asyncio.Future[ChatResult]


@dataclass(slots=True)
class _Waiting:
    request: ChatRequest
    request_id: int
    future: asyncio.Future[ChatResult]
    joined: float
    delivery: Delivery | None = None


@dataclass(slots=True)
class _Open:
    """A created batch being polled."""

    sub_id: int
    batch_id: str
    slots: dict[str, _Slot]  # by custom_id
    created: float  # loop-clock seconds when it was created (or found again)
    next_poll: float
    info: BatchInfo | None = None
    unsettled: set[int] = field(default_factory=set)


def _retrieved(future: asyncio.Future[ChatResult]) -> None:
    # A line's outcome may never be awaited (its run stopped first): mark errors as seen.
    if not future.cancelled():
        future.exception()


class BatchCompleter:
    """The Completer of batch mode (and an EventHook counting finished conversations)."""

    def __init__(
        self,
        api: BatchAPI,
        online: OnlineClient,
        journal: BatchJournal,
        *,
        policy: SubmitPolicy,
        limits: FileLimits,
        poll_min_s: float,
        poll_max_s: float,
        finish_online_below: int = 0,
        hooks: EventHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._api = api
        self._online = online
        self._journal = journal
        self._policy = policy
        self._limits = limits
        self._poll_min = poll_min_s
        self._poll_max = poll_max_s
        self._tail_below = finish_online_below
        self._hooks: EventHook = hooks or Hooks()
        self._clock = clock
        self._sleep = sleep
        self.routes: dict[str, Route] = {}
        self._waiting: list[_Waiting] = []
        self._newest = 0.0
        self._open: dict[int, _Open] = {}
        self._by_request: dict[int, tuple[_Open | None, _Slot]] = {}
        self._adoptable: dict[str, _Slot] = {}
        self._sent: set[int] = set()  # attempts in a recorded submission: may have been run
        self._collected: dict[int, set[int]] = {}  # sub_id → attempts not settled yet
        self._tag = ""
        self._next_sub = 1
        self._unfinished = 0
        self._wake_submit = asyncio.Event()
        self._wake_poll = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._fatal: RequestError | None = None
        self._abandoned: list[int] = []
        # Worst cases (nano-dollars, tokens) an earlier session's lines hold in the budget the
        # run started from, by request id: the ledger trades them for the real outcome.
        self._carried: dict[int, tuple[int, int]] = {}
        self.batches_created = 0
        self.lines_sent = 0

    # --- set-up ---------------------------------------------------------------------------------

    async def start(self, unfinished: int) -> None:
        """Find the batches an earlier session left open, then start submitting and polling.

        ``unfinished`` is the number of conversations not final yet (for the online tail).
        Raises StateError if the store cannot be read or written, and a FatalRunError when
        the provider refuses the key.
        """
        self._unfinished = unfinished
        await self._journal.write(bs.ensure_tables)
        self._tag = await self._journal.read(bs.run_tag)
        self._next_sub = await self._journal.read(bs.next_submission_id)
        await self._resume()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._submitter(), name="m2l-batch-submitter"),
            loop.create_task(self._poller(), name="m2l-batch-poller"),
        ]
        self._emit()

    async def close(self) -> None:
        """Stop the loops; batches stay on the provider, and lines nobody claimed stay reserved
        in the request log for the next session to claim."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for item in self._waiting:
            item.future.cancel()
        self._waiting = []

    @property
    def run_tag(self) -> str:
        return self._tag

    # --- the dispatcher's side --------------------------------------------------------------------

    def claim(self, key: str) -> int | None:
        """The attempt (request id) of an earlier session's open line for this step, once."""
        slot = self._adoptable.pop(key, None)
        if slot is None:
            return None
        self.routes[key] = Route(online=False, request_id=slot.request_id, adopted=True)
        return slot.request_id

    def tail(self) -> bool:
        """Whether new attempts go online now (the run's last conversations)."""
        return tail_active(self._unfinished, self._tail_below)

    def was_sent(self, request_id: int) -> bool:
        """Whether this attempt is in a recorded submission (its outcome may be unknown)."""
        return request_id in self._sent

    def settled(self, request_id: int) -> None:
        """The attempt's outcome is in the request log; a batch whose lines are all settled is
        marked collected."""
        self._sent.discard(request_id)
        entry = self._by_request.pop(request_id, None)
        if entry is None:
            return
        slot = entry[1]
        left = self._collected.get(slot.sub_id)
        if left is None:
            return
        left.discard(request_id)
        if not left:
            del self._collected[slot.sub_id]
            self._journal.write_later(bs.submission_closed(slot.sub_id, "collected"))

    async def complete(
        self, request: ChatRequest, *, delivery: Delivery | None = None
    ) -> ChatResult:
        """The reply to ``request`` by the way its reservation chose; raises its RequestError.

        ``delivery.written`` stays False while the line waits for a batch: a line dropped
        before its submission is recorded never left the machine.
        """
        if self._fatal is not None:
            raise self._fatal
        route = self.routes.get(request.key)
        if route is None:
            raise RuntimeError(f"{request.key}: complete() before its cost was reserved")
        if route.online:
            return await self._online.complete(request, delivery=delivery)
        if route.adopted:
            entry = self._by_request.get(route.request_id)
            if entry is None:
                raise RuntimeError(f"{request.key}: claimed line {route.request_id} is unknown")
            return await asyncio.shield(entry[1].future)
        future: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        now = self._clock()
        if delivery is not None:
            delivery.written = False
        self._waiting.append(_Waiting(request, route.request_id, future, now, delivery))
        self._newest = now
        self._wake_submit.set()
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # Stopping: a line not handed to a submission yet is dropped (never sent).
            self._waiting = [w for w in self._waiting if w.future is not future]
            raise

    def on_event(self, event: object) -> None:
        if isinstance(event, ConversationFinished):
            was = self.tail()
            self._unfinished -= 1
            if self.tail() and not was:
                self._wake_submit.set()  # what waits goes out now, not after a linger

    # --- submitting -----------------------------------------------------------------------------

    async def _submitter(self) -> None:
        policy = self._policy
        while True:
            now = self._clock()
            if self._waiting:
                oldest = self._waiting[0].joined
                if self.tail() or policy.due(len(self._waiting), oldest, self._newest, now):
                    take = self._waiting[: policy.batch_lines]
                    del self._waiting[: len(take)]
                    await self._submit(take)
                    continue
                timeout: float | None = max(0.0, policy.wake_at(oldest, self._newest) - now)
            else:
                timeout = None
            self._wake_submit.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_submit.wait(), timeout)

    async def _submit(self, items: list[_Waiting]) -> None:
        """Write the items as input files and create a batch from each."""
        endpoint = self._api.endpoint
        lines: list[tuple[_Waiting, str, bytes]] = []
        for item in items:
            if item.future.done():
                continue
            custom_id = f"{item.request.key}:{item.request_id}"
            body = self._online.request_body(item.request)
            # The Batch API has its own price; a service tier means nothing in a batch.
            body.pop("service_tier", None)
            line = orjson.dumps(
                {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}
            )
            if len(line) + 1 > self._limits.max_bytes:
                item.future.set_exception(
                    OversizeRequest(
                        f"request {item.request.key} is {len(line)} bytes as a batch line, more "
                        f"than a batch input file may hold ({self._limits.max_bytes} bytes)"
                    )
                )
                continue
            lines.append((item, custom_id, line))
        files = split_files(lines, [len(x[2]) for x in lines], self._limits)
        for chunk in files:
            await self._submit_file(chunk)

    async def _submit_file(self, chunk: list[tuple[_Waiting, str, bytes]]) -> None:
        sub_id = self._next_sub
        self._next_sub += 1
        data = b"\n".join(line for _, _, line in chunk) + b"\n"
        rows = []
        for item, custom_id, _ in chunk:
            conv_id, step = parse_request_key(item.request.key) or (-1, -1)
            rows.append(bs.LineRow(sub_id, custom_id, conv_id, step, item.request_id))
        # Durable before anything leaves: after a kill, these lines are known to be maybe sent.
        await self._journal.write(bs.submission_planned(sub_id, rows, len(data)))
        ids = {item.request_id for item, _, _ in chunk}
        self._sent |= ids
        for item, _, _ in chunk:
            if item.delivery is not None:
                item.delivery.written = True  # on record as maybe sent from here on
        created_unix = int(time.time())
        try:
            file_id = await self._with_retries(
                lambda: self._api.upload(f"m2l-{self._tag}-{sub_id}.jsonl", data)
            )
            await self._journal.write(bs.file_uploaded(sub_id, file_id))
            info = await self._create(sub_id, file_id, created_unix)
        except RequestError as exc:
            if isinstance(exc, FatalRunError):
                self._fatal = exc
            self._sent -= ids
            self._journal.write_later(bs.submission_closed(sub_id, "abandoned", error=str(exc)))
            error = (
                exc
                if isinstance(exc, FatalRunError)
                else ServerError(f"the batch could not be submitted: {exc}")
            )
            for item, _, _ in chunk:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        await self._journal.write(bs.batch_created(sub_id, info.id, info.status))
        self.batches_created += 1
        self.lines_sent += len(chunk)
        slots = {
            custom_id: _Slot(item.request.key, item.request_id, custom_id, sub_id, item.future)
            for item, custom_id, _ in chunk
        }
        self._track(sub_id, info.id, slots.values(), info)

    async def _create(self, sub_id: int, file_id: str, since: int) -> BatchInfo:
        """Create the batch; after a failure that may hide a created batch (a timeout, a 5xx),
        look for it by its metadata before creating it again, so it never exists twice."""
        metadata = {"m2l_run": self._tag, "m2l_submission": str(sub_id)}
        delay = 1.0
        for attempt in range(_API_TRIES):
            try:
                return await self._api.create(file_id, metadata)
            except ServerError:
                if attempt == _API_TRIES - 1:
                    raise
            await self._sleep(delay)
            delay *= 2
            with contextlib.suppress(ServerError):
                found = await self._api.find(metadata, since=since - _FIND_SLACK_S)
                if found is not None:
                    return found
        raise AssertionError("unreachable")

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> T:
        delay = 1.0
        for attempt in range(_API_TRIES):
            try:
                return await call()
            except ServerError:
                if attempt == _API_TRIES - 1:
                    raise
            await self._sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _track(
        self, sub_id: int, batch_id: str, slots: Iterable[_Slot], info: BatchInfo | None
    ) -> None:
        now = self._clock()
        entry = _Open(sub_id, batch_id, {}, now, now + self._poll_min, info)
        for slot in slots:
            entry.slots[slot.custom_id] = slot
            self._by_request[slot.request_id] = (entry, slot)
        self._open[sub_id] = entry
        self._wake_poll.set()
        self._emit()

    # --- polling --------------------------------------------------------------------------------

    async def _poller(self) -> None:
        while True:
            if not self._open:
                self._wake_poll.clear()
                await self._wake_poll.wait()
                continue
            now = self._clock()
            due = min(entry.next_poll for entry in self._open.values())
            if due > now:
                self._wake_poll.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_poll.wait(), due - now)
                continue
            for entry in [e for e in self._open.values() if e.next_poll <= now]:
                await self._poll(entry)
            self._emit()

    async def _poll(self, entry: _Open) -> None:
        try:
            info = await self._api.retrieve(entry.batch_id)
        except BatchGone as exc:
            # It can never complete: its lines go out again (none of them was answered).
            self._fail_all(entry, ServerError(f"batch {entry.batch_id} is gone: {exc}"))
            self._journal.write_later(
                bs.submission_closed(entry.sub_id, "abandoned", error=str(exc))
            )
            return
        except FatalRunError as exc:
            self._fatal = exc
            self._fail_all(entry, exc)
            return
        except RequestError as exc:
            log.warning("polling batch %s failed, will poll again: %s", entry.batch_id, exc)
            entry.next_poll = self._clock() + self._poll_min
            return
        entry.info = info
        self._journal.write_later(
            bs.batch_seen(entry.sub_id, info.status, info.completed, info.failed)
        )
        if info.final:
            await self._collect(entry, info)
            return
        age = self._clock() - entry.created
        entry.next_poll = self._clock() + poll_delay(
            age, min_s=self._poll_min, max_s=self._poll_max
        )

    async def _collect(self, entry: _Open, info: BatchInfo) -> None:
        """Hand each line its outcome; a line with none goes out again in a later batch."""
        outcomes: dict[str, LineOutcome] = {}
        try:
            for file_id in (info.error_file_id, info.output_file_id):
                if file_id:
                    raw = await self._with_retries(functools.partial(self._api.content, file_id))
                    # An output file may hold 50,000 lines: parse it off the event loop.
                    outcomes.update(await asyncio.to_thread(read_result_file, raw))
        except RequestError as exc:
            log.warning("results of batch %s could not be read yet: %s", entry.batch_id, exc)
            entry.next_poll = self._clock() + self._poll_max
            return
        del self._open[entry.sub_id]
        unsettled = {slot.request_id for slot in entry.slots.values()}
        self._collected[entry.sub_id] = unsettled
        waited = self._clock() - entry.created  # a line's latency is its batch's
        for slot in entry.slots.values():
            self._deliver(slot, outcomes.get(slot.custom_id), info, waited)
        if not unsettled:
            self._journal.write_later(bs.submission_closed(entry.sub_id, "collected"))

    def _deliver(
        self, slot: _Slot, outcome: LineOutcome | None, info: BatchInfo, waited: float
    ) -> None:
        if slot.future.done():
            return
        if outcome is None:
            why = f": {info.errors}" if info.errors else ""
            slot.future.set_exception(
                ServerError(
                    f"batch {info.id} ended {info.status} without answering this request{why}"
                )
            )
        elif outcome.status is None:
            slot.future.set_exception(
                ServerError(f"batch {info.id} {info.status}: {outcome.code}: {outcome.message}")
            )
        else:
            try:
                slot.future.set_result(
                    self._online.read_reply(outcome.status, outcome.body or b"", waited)
                )
            except RequestError as exc:
                slot.future.set_exception(exc)

    def _fail_all(self, entry: _Open, error: RequestError) -> None:
        self._open.pop(entry.sub_id, None)
        for slot in entry.slots.values():
            if not slot.future.done():
                slot.future.set_exception(error)

    # --- resuming -------------------------------------------------------------------------------

    async def _resume(self) -> None:
        """Adopt the open submissions of earlier sessions (see the module docstring)."""
        subs = await self._journal.read(bs.open_submissions)
        if not subs:
            return
        lines = await self._journal.read(lambda c: bs.open_lines(c, [s.sub_id for s in subs]))
        by_sub: dict[int, list[bs.LineRow]] = {}
        for line in lines:
            by_sub.setdefault(line.sub_id, []).append(line)
        for sub in subs:
            batch_id = sub.batch_id
            if batch_id is None and sub.state == "uploaded":
                since = int(sub.created_at.replace(tzinfo=dt.UTC).timestamp()) - _FIND_SLACK_S
                found = await self._api.find(
                    {"m2l_run": self._tag, "m2l_submission": str(sub.sub_id)}, since=since
                )
                if found is not None:
                    batch_id = found.id
                    await self._journal.write(bs.batch_created(sub.sub_id, found.id, found.status))
            mine = by_sub.get(sub.sub_id, [])
            self._carried.update({ln.request_id: (ln.held_nano, ln.held_tokens) for ln in mine})
            if batch_id is None:
                # No batch was made from it: its lines were never run; they go out again.
                await self._journal.write(
                    bs.submission_closed(sub.sub_id, "abandoned", error="no batch was created")
                )
                self._abandoned.extend(line.request_id for line in mine)
                continue
            if not mine:
                await self._journal.write(bs.submission_closed(sub.sub_id, "collected"))
                continue
            loop = asyncio.get_running_loop()
            slots = []
            for line in mine:
                future: asyncio.Future[ChatResult] = loop.create_future()
                future.add_done_callback(_retrieved)
                key = f"{line.conv_id}:{line.step}"
                slot = _Slot(key, line.request_id, line.custom_id, sub.sub_id, future)
                slots.append(slot)
                self._adoptable[key] = slot
                self._sent.add(line.request_id)
            self._track(sub.sub_id, batch_id, slots, None)

    def abandoned_attempts(self) -> list[int]:
        """Attempts of submissions no batch was made from, found on resume (never sent)."""
        return list(self._abandoned)

    def carried(self, request_id: int) -> tuple[int, int] | None:
        """The worst case (nano-dollars, tokens) an earlier session's attempt held when this
        session started, once; None for an attempt of this session."""
        return self._carried.pop(request_id, None)

    # --- progress -------------------------------------------------------------------------------

    def _emit(self) -> None:
        by_status: dict[str, int] = {}
        done = total = 0
        for entry in self._open.values():
            status = entry.info.status if entry.info is not None else "validating"
            by_status[status] = by_status.get(status, 0) + 1
            if entry.info is not None:
                done += entry.info.completed + entry.info.failed
                total += entry.info.total
            else:
                total += len(entry.slots)
        oldest = min((e.created for e in self._open.values()), default=None)
        now = self._clock()
        self._hooks.on_event(
            BatchUpdate(
                open_batches=len(self._open),
                by_status=tuple(sorted(by_status.items())),
                requests_done=done,
                requests_total=total,
                oldest_age_s=None if oldest is None else now - oldest,
                waiting=len(self._waiting),
                batches_created=self.batches_created,
                t=now,
            )
        )
