"""The scheduler: keeps up to ``max_active`` conversations moving, oldest first, until the run is
finished, stopped, out of budget, or hits a fatal error.

Conversations come from the store in batches (those a previous session left half-done first),
so memory stays flat however many are pending. A new conversation is admitted only while the
limiter's queue is short: concurrency follows what the provider accepts, not a fixed guess, and
started conversations finish before new ones begin. With adaptive max_tokens, a step kind's
first tries wait while it learns (``engine.maxtokens.LengthLearner.warmup``): only the replies
it still needs go out at the configured cap, the rest follow with learned ones.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.config import GenerationConfig
from engine.conversation import (
    Conversation,
    Done,
    Outcome,
    Prompter,
    Status,
    StepRules,
    Validator,
    apply,
    next_request,
    step_kind,
)
from engine.dispatcher import Dispatcher
from engine.errors import BudgetExhausted, FatalRunError, RequestError, StateError
from engine.events import (
    ConversationFinished,
    ConversationStarted,
    EventHook,
    Hooks,
    OutputRejected,
    StepDone,
)
from engine.health import fix_hint
from engine.limiter import RateLimiter
from engine.maxtokens import Warmup

__all__ = [
    "Admission",
    "ConversationStore",
    "RunResult",
    "RunStatus",
    "Scheduler",
    "StopControl",
    "judge_finished",
]


class Warmups(Protocol):
    """Whether a step kind's first try may go out while its caps are learned."""

    def warmup(self, kind: str, probing: int) -> Warmup: ...


class RunStatus(enum.Enum):
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    BUDGET_EXHAUSTED = "budget_exhausted"
    FAILED = "failed"


class ConversationStore(Protocol):
    """What the scheduler needs from the state store."""

    async def load(self, statuses: Sequence[str], after: int, limit: int) -> list[Conversation]: ...

    async def record_step(self, conv: Conversation) -> None: ...

    async def mark_final(self, conv: Conversation) -> None: ...

    async def record_rejection(
        self,
        conv: Conversation,
        *,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost: float,
    ) -> None:
        """Store the output ``conv.rejected`` describes with the step's try count, durably;
        when that output ended the conversation (``conv.status`` is final), its end too, in
        the same commit: a kill between them would have the last try paid for again."""
        ...

    async def mark_active(self, conv: Conversation) -> None: ...

    async def flush(self) -> None:
        """Commit every write made so far (a store may gather writes to commit them together)."""
        ...


class Admission(Protocol):
    """Decides whether a new conversation may start (the budget's projection implements it)."""

    def admit(self, conv: Conversation) -> bool: ...

    @property
    def refused(self) -> str | None:
        """Why the last ``admit`` said no (names the cap), or None."""
        ...


class _AdmitAll:
    refused = None

    def admit(self, conv: Conversation) -> bool:
        return True


class StopControl:
    """Ctrl-C handling: the first request stops admitting and lets in-flight steps finish for a
    grace period; the second (or the end of the grace period) cancels what is still running."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None

    def bind(self, wake: asyncio.Event) -> None:
        self._wake = wake

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request(self, reason: str = "interrupted") -> None:
        if self.requested:
            self.cancel_now()
            return
        self.requested = True
        self.reason = reason
        self.stopping.set()
        if self._wake is not None:
            self._wake.set()

    def cancel_now(self) -> None:
        self.requested = True
        self.stopping.set()
        for task in tuple(self._tasks):
            task.cancel()


@dataclass(frozen=True, slots=True)
class RunResult:
    status: RunStatus
    message: str


def judge_finished(
    result: RunResult,
    counts: Mapping[str, int],
    failures: Mapping[str, int] | None = None,
    max_failed_share: float = 1.0,
) -> RunResult:
    """A run that "finished" with too many of its conversations failed has failed.

    ``counts`` are the run's conversations by status, over every session; ``failures`` its
    failed conversations by reason family (engine.reasons), to name the commonest. Not one
    conversation done always fails the run; otherwise more than ``max_failed_share`` of the
    final ones failed does (1: never). The done ones are kept and exported either way.
    """
    if result.status is not RunStatus.FINISHED:
        return result
    done = counts.get("done", 0)
    lost = sum(n for status, n in counts.items() if status != "done")
    failed = counts.get("failed", 0)
    top = max((failures or {}).items(), key=lambda item: (item[1], item[0]), default=None)
    why = ""
    if top is not None:
        why = f"; the commonest reason ({top[1]:,}): {top[0]}: {fix_hint(top[0])}"
    if done == 0 and lost > 0:
        return RunResult(
            RunStatus.FAILED,
            f"every conversation failed ({lost} of {lost}){why}. `m2l stats RUN_DIR` lists "
            "the reasons. Fix the cause, then run the same command with --retry-failed",
        )
    final = done + lost
    if failed == 0 or failed / final <= max_failed_share:
        return result
    return RunResult(
        RunStatus.FAILED,
        f"{failed:,} of {final:,} conversations failed ({failed / final:.0%}){why}. The "
        f"{done:,} done are kept and exported; `m2l stats RUN_DIR` lists the reasons. Fix the "
        "cause, then run the same command with --retry-failed (run.max_failed_share, now "
        f"{max_failed_share:g}, is the share of failed conversations above which a run counts "
        "as failed; 1 turns this off)",
    )


class Scheduler:
    """Drives conversations through the dispatcher and records every step durably."""

    def __init__(
        self,
        *,
        store: ConversationStore,
        dispatcher: Dispatcher,
        prompter: Prompter,
        validator: Validator,
        generation: GenerationConfig,
        max_active: int,
        stop: StopControl,
        admission: Admission | None = None,
        rules: StepRules | None = None,
        hooks: EventHook | None = None,
        queue_low_water: int = 8,
        batch_size: int = 256,
        ready: asyncio.Future[None] | None = None,
        warmups: Warmups | None = None,
    ) -> None:
        """``warmups``: adaptive max_tokens' learner, which holds a step kind's first tries
        back while the replies already out will teach it enough."""
        self._store = store
        self._dispatcher = dispatcher
        self._prompter = prompter
        self._validator = validator
        self._generation = generation
        self._rules = rules or StepRules(generation.max_regenerations)
        self._max_active = max_active
        self._stop = stop
        self._admission: Admission = admission or _AdmitAll()
        self._hooks: EventHook = hooks or Hooks()
        self._low_water = queue_low_water
        self._batch = max(batch_size, 16)
        self._active = 0
        self._room = asyncio.Event()
        self._budget_hit: str | None = None
        self._fatal: Exception | None = None
        # Resolved once validation can run (the language model loads in a thread while the run
        # sets up): requests go out once it is; its error stops the run.
        self._ready = ready
        self._warmups = warmups
        self._probing: dict[str, int] = {}  # step kind -> first tries out at the configured cap

    @property
    def warmups(self) -> Warmups | None:
        return self._warmups

    @property
    def limiter(self) -> RateLimiter:
        return self._dispatcher.limiter

    @property
    def rate_bound(self) -> bool:
        """Whether requests are waiting now for a rate limit to let them go."""
        return self._dispatcher.queued > 0

    @property
    def limiters(self) -> list[RateLimiter]:
        """Every endpoint's rate limiter (a sharded run's lease applies to each)."""
        return self._dispatcher.limiters

    async def run(self, *, grace_s: float) -> RunResult:
        """Run until every conversation is final, or the run stops; a stop is not an error."""
        self._stop.bind(self._room)
        watcher = asyncio.create_task(self._watch_stop(grace_s))
        try:
            async with asyncio.TaskGroup() as group:
                async for conv in self._source():
                    if not await self._wait_for_room():
                        break
                    if conv.status is Status.PENDING and not await self._admit(conv):
                        break
                    self._active += 1
                    self._stop.track(group.create_task(self._drive(conv)))
        finally:
            watcher.cancel()
        try:
            # Writes nobody awaits (attempts settled or released at the end) are committed
            # before the run reports its end and the store is closed.
            await self._store.flush()
        except StateError as exc:
            if self._fatal is None:
                self._fatal = exc
        if self._fatal is not None:
            return RunResult(RunStatus.FAILED, str(self._fatal))
        if self._budget_hit is not None:
            return RunResult(RunStatus.BUDGET_EXHAUSTED, self._budget_hit)
        if self._stop.requested:
            return RunResult(RunStatus.INTERRUPTED, self._stop.reason)
        return RunResult(RunStatus.FINISHED, "every conversation is done, failed or filtered")

    async def _watch_stop(self, grace_s: float) -> None:
        """After a stop request, give in-flight steps ``grace_s`` seconds, then cancel them."""
        await self._stop.stopping.wait()
        # The loop's own clock, the one wait_for's timeout runs on (a test's virtual one too).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._active > 0 and loop.time() < deadline:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), timeout=deadline - loop.time())
            except TimeoutError:
                break
        if self._active > 0:
            self._stop.cancel_now()

    async def _source(self) -> AsyncIterator[Conversation]:
        """Conversations to run: half-done ones from an earlier session first, then pending."""
        for statuses in (("active",), ("pending",)):
            after = 0
            while not self._stopped():
                batch = await self._store.load(statuses, after, self._batch)
                if not batch:
                    break
                for conv in batch:
                    yield conv
                after = batch[-1].plan.conv_id

    def _stopped(self) -> bool:
        return self._stop.requested or self._budget_hit is not None or self._fatal is not None

    async def _until_ready(self) -> None:
        """Wait for what validation needs; raises the error that kept it from loading."""
        ready = self._ready
        assert ready is not None
        if not ready.done():
            await asyncio.shield(ready)  # a cancelled conversation must not cancel the load
        ready.result()

    async def _wait_for_room(self) -> bool:
        """Wait until another conversation may start; False when the run is stopping."""
        dispatcher = self._dispatcher
        while not self._stopped():
            if self._active < self._max_active and dispatcher.queued <= self._low_water:
                return True
            self._room.clear()
            await self._room.wait()
        return False

    async def _admit(self, conv: Conversation) -> bool:
        """Whether a new conversation may start under the budget's projection.

        A refusal while others are active only waits: their steps teach the projection what
        steps really cost, and finishing them frees what they reserved. The run stops for the
        budget only when the projection refuses with nothing left running.
        """
        while not self._admission.admit(conv):
            if self._active == 0 or self._stopped():
                if not self._stopped():
                    self._budget_hit = (
                        self._admission.refused
                        or "the projected cost of a new conversation does not fit"
                    )
                return False
            self._room.clear()
            await self._room.wait()
        return True

    async def _warm_up(self, conv: Conversation) -> str | None:
        """Wait while the step kind of ``conv``'s next step learns its caps and the replies of
        the probes already out are enough; returns the step kind when this try goes out as a
        probe ("" when it is none), None when the run stopped meanwhile."""
        warmups = self._warmups
        # Only a step's first room takes a learned cap; a grown one is never held back.
        if warmups is None or conv.room > 0 or conv.next_step >= conv.plan.steps:
            return ""
        if conv.status.final:
            return ""
        kind = step_kind(conv.next_step).value
        while not self._stopped():
            state = warmups.warmup(kind, self._probing.get(kind, 0))
            if state is Warmup.LEARNED:
                return ""
            if state is Warmup.PROBE:
                self._probing[kind] = self._probing.get(kind, 0) + 1
                return kind
            # Every step that finishes (a probe's reply counted, or a probe failed) sets it.
            self._room.clear()
            await self._room.wait()
        return None

    def _probe_done(self, kind: str) -> None:
        if kind:
            self._probing[kind] -= 1
            self._room.set()

    async def _drive(self, conv: Conversation) -> None:
        """Advance one conversation step by step until it is final or the run stops."""
        emit = self._hooks.on_event
        plan = conv.plan
        try:
            if conv.status is Status.PENDING:
                conv = Conversation(plan, conv.steps, Status.ACTIVE, conv.regenerations)
                await self._store.mark_active(conv)
            # Resumed conversations count as started too, so displays see them as active.
            emit(ConversationStarted(plan.conv_id, plan.language, plan.task, time.monotonic()))
            while not self._stopped():
                if self._ready is not None:
                    # Sent only once its reply can be judged: a reply that waited for the model
                    # would be paid but not stored if the process were killed meanwhile, and
                    # every restart (which loads the model again) would pay for it again.
                    await self._until_ready()
                # Its cap is decided when it is rendered: while its step kind learns, wait.
                probe = await self._warm_up(conv)
                if probe is None:
                    break
                nxt = next_request(conv, self._prompter, temperature=self._generation.temperature)
                if isinstance(nxt, Done):
                    self._probe_done(probe)
                    break
                request, rendered = nxt
                kind = step_kind(conv.next_step)
                result = None
                try:
                    result = await self._dispatcher.complete(request, kind=kind.value)
                    outcome = Outcome(
                        result.content, result.finish_reason, max_tokens=request.max_tokens
                    )
                    self._prompter.observe(
                        conv, kind, request.max_tokens, result.usage.completion_tokens
                    )
                except FatalRunError:
                    raise
                except RequestError as exc:
                    # Permanent for this request, or its retries (or 429 patience) are used
                    # up: this conversation fails with the reason; the run goes on.
                    outcome = Outcome(None, error=f"{exc.error_class}: {exc}")
                finally:
                    # Its reply (if any) is counted: the steps waiting for it may look again.
                    self._probe_done(probe)
                new = apply(
                    conv,
                    rendered,
                    outcome,
                    prompter=self._prompter,
                    validator=self._validator,
                    rules=self._rules,
                )
                if new.rejected is not None:
                    # Submitted in the same loop pass as the attempt's settlement, so both
                    # commit together: the try count on disk never lags the paid replies. A
                    # last try's rejection carries the conversation's end with it.
                    usage = result.usage if result is not None else None
                    await self._store.record_rejection(
                        new,
                        prompt_tokens=usage.prompt_tokens if usage else None,
                        completion_tokens=usage.completion_tokens if usage else None,
                        cost=result.cost_usd if result is not None else 0.0,
                    )
                    emit(
                        OutputRejected(
                            plan.conv_id,
                            kind.value,
                            plan.language,
                            new.rejected.reason,
                            result.cost_usd if result is not None else 0.0,
                            time.monotonic(),
                        )
                    )
                if len(new.steps) > len(conv.steps):
                    await self._store.record_step(new)  # durable before we move on
                    emit(StepDone(plan.conv_id, kind.value, plan.language, time.monotonic()))
                elif new.status.final and new.rejected is None:
                    await self._store.mark_final(new)
                conv = new
                self._room.set()  # a step finished: the limiter's queue may have room now
            if conv.status.final:
                emit(
                    ConversationFinished(
                        plan.conv_id,
                        conv.status.value,
                        conv.reason,
                        plan.language,
                        plan.task,
                        len(conv.steps) // 2,
                        time.monotonic(),
                    )
                )
                verdict = self._dispatcher.health.conversation_finished(
                    conv.status is Status.DONE, conv.reason
                )
                if verdict is not None:
                    raise verdict
        except BudgetExhausted as exc:
            # Leave the conversation active: a resume with a higher cap continues it.
            self._budget_hit = str(exc)
        except (FatalRunError, StateError) as exc:
            # Nothing else can succeed either: stop everyone now, keep what is committed.
            if self._fatal is None:
                self._fatal = exc
            self._stop.cancel_now()
        finally:
            self._active -= 1
            self._room.set()
