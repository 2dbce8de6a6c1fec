"""Engine events: what the dispatcher and the scheduler report to progress displays and logs.

Events are small frozen values pushed to hooks synchronously on the event loop; a hook must be
cheap (aggregate counters, never I/O) because it runs on the hot path. Displays read their own
aggregates on their own timer, so the engine never waits for a screen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

__all__ = [
    "BatchUpdate",
    "BudgetUpdate",
    "ConversationFinished",
    "ConversationStarted",
    "EndpointOut",
    "Event",
    "EventHook",
    "Hooks",
    "OutputRejected",
    "ParameterAdapted",
    "RateLimitHit",
    "RequestDone",
    "RequestFailed",
    "RequestRetried",
    "RequestSent",
    "RunFinished",
    "RunStarted",
    "RunStopping",
    "ShardsUpdate",
    "StepDone",
]


@dataclass(frozen=True, slots=True)
class RunStarted:
    """A run began (or resumed): totals known at the start."""

    run: str
    conversations_total: int
    conversations_done: int  # finished in earlier sessions of this run (done, failed or filtered)
    rpm: float | None
    tpm: float | None
    budget_usd: float | None
    t: float
    provider: str = ""  # "embedded simulator", or the base_url's host
    model: str = ""
    simulated: bool = False  # money figures are what the model would cost, nothing was paid
    # Several endpoints ([[providers]]): (name, model) each, in the configured order.
    endpoints: tuple[tuple[str, str], ...] = ()
    unit: str = "conversations"  # what the run counts: "requests" for `m2l requests`


@dataclass(frozen=True, slots=True)
class RequestSent:
    """A request passed the concurrency gate and the limiter and went out."""

    key: str
    kind: str  # step kind: "evolve" | "answer" | "follow_up"
    prompt_tokens: int
    max_tokens: int
    t: float
    queued_s: float = 0.0  # waited inside m2l (concurrency gate and rate limiter) before it went
    concurrency: int | None = None  # the concurrency limit when it went (None: no gate)
    endpoint: str = ""  # the endpoint it went to (its [[providers]] name, or "provider")


@dataclass(frozen=True, slots=True)
class RequestDone:
    """A request came back with a usable reply."""

    key: str
    kind: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost_usd: float
    t: float
    reasoning_tokens: int = 0  # hidden, part of completion_tokens
    cached_tokens: int = 0  # part of prompt_tokens
    reasoning_usd: float = 0.0  # the part of cost_usd paid for reasoning
    cache_saved_usd: float = 0.0  # what the prompt cache took off cost_usd
    endpoint: str = ""


@dataclass(frozen=True, slots=True)
class RequestRetried:
    """A transient failure; the request will be sent again after ``delay_s``."""

    key: str
    error_class: str
    message: str
    attempt: int
    delay_s: float
    t: float
    endpoint: str = ""


@dataclass(frozen=True, slots=True)
class RateLimitHit:
    """The provider answered 429; dispatch to that endpoint pauses for ``pause_s``."""

    key: str
    limit_kind: str | None
    pause_s: float
    t: float
    endpoint: str = ""


@dataclass(frozen=True, slots=True)
class ShardsUpdate:
    """A sharded run's shards (``m2l run --ray``), as the driver sees them: by shard number,
    conversations finished and planned, restarts after a dead process, and the share of the
    rate limits its lease holds (percent)."""

    finished: tuple[int, ...]
    total: tuple[int, ...]
    restarts: tuple[int, ...]
    share_pct: tuple[int, ...]
    t: float


@dataclass(frozen=True, slots=True)
class EndpointOut:
    """One of several endpoints failed in a way no retry fixes (a 401 on its key, a deployment
    that is gone): it takes no more requests; the run goes on while another is left."""

    endpoint: str
    message: str
    left: int  # endpoints still taking requests
    t: float


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A request gave up (permanent error, attempts or patience exhausted, or fatal)."""

    key: str
    error_class: str
    message: str
    t: float
    endpoint: str = ""  # where its last attempt went ("": it was never sent)


@dataclass(frozen=True, slots=True)
class ParameterAdapted:
    """The server refused a parameter m2l chose by itself; from now on ``now`` goes out instead
    (the other name of the token cap, or "not sent"). Happens at most once per parameter."""

    param: str
    now: str
    message: str
    t: float


@dataclass(frozen=True, slots=True)
class ConversationStarted:
    """A conversation became active."""

    conv_id: int
    language: str
    task: str
    t: float


@dataclass(frozen=True, slots=True)
class StepDone:
    """A conversation step's result is durable; ``kind`` is the step that finished."""

    conv_id: int
    kind: str
    language: str
    t: float


@dataclass(frozen=True, slots=True)
class OutputRejected:
    """A step's output was thrown away (a failed check or a truncated reply) and is stored."""

    conv_id: int
    kind: str
    language: str
    reason: str
    cost_usd: float
    t: float


@dataclass(frozen=True, slots=True)
class ConversationFinished:
    """A conversation reached a final state: ``done``, ``failed`` or ``filtered``."""

    conv_id: int
    status: str
    reason: str | None
    language: str
    task: str
    turns: int
    t: float


@dataclass(frozen=True, slots=True)
class BudgetUpdate:
    """Money so far: settled spend, open reservations, the cap and the projected total."""

    spent_usd: float
    reserved_usd: float
    cap_usd: float | None
    projected_usd: float | None
    t: float


@dataclass(frozen=True, slots=True)
class BatchUpdate:
    """Batch mode: the open batches as last polled, and the lines waiting to go out."""

    open_batches: int
    by_status: tuple[tuple[str, int], ...]  # provider status → open batches in it
    requests_done: int  # lines of open batches answered so far
    requests_total: int
    oldest_age_s: float | None  # seconds since the oldest open batch was created
    waiting: int  # lines not in a batch yet
    batches_created: int  # by this session
    t: float


@dataclass(frozen=True, slots=True)
class RunStopping:
    """A stop was asked for (Ctrl-C, SIGTERM): nothing new starts, in-flight steps may finish."""

    reason: str
    grace_s: float
    t: float


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run stopped: ``finished``, ``interrupted``, ``budget_exhausted`` or ``failed``."""

    status: str
    message: str
    t: float


Event = (
    RunStarted
    | RequestSent
    | RequestDone
    | RequestRetried
    | RateLimitHit
    | RequestFailed
    | EndpointOut
    | ParameterAdapted
    | ConversationStarted
    | StepDone
    | OutputRejected
    | ConversationFinished
    | BudgetUpdate
    | BatchUpdate
    | ShardsUpdate
    | RunStopping
    | RunFinished
)


class EventHook(Protocol):
    """Receives every event, synchronously, on the event loop. Must not block or raise."""

    def on_event(self, event: Event) -> None: ...


class Hooks:
    """Fan-out to several hooks; a hook that raises is dropped (and logged), never fatal."""

    __slots__ = ("_hooks",)

    def __init__(self, hooks: Iterable[EventHook] = ()) -> None:
        self._hooks: list[EventHook] = list(hooks)

    def add(self, hook: EventHook) -> None:
        self._hooks.append(hook)

    def on_event(self, event: Event) -> None:
        for hook in tuple(self._hooks):
            try:
                hook.on_event(event)
            except Exception:  # a broken display must not take the run down with it
                log.exception("progress hook %r failed and was removed", hook)
                self._hooks.remove(hook)
