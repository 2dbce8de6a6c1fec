"""The dispatcher: one call, ``await dispatcher.complete(request, kind=...)``, that a conversation
makes for each step. It strings together, in this order: budget reservation (durable), the rate
limiter, the HTTP client, the retry policy, and settlement; and it reports every event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from engine.chat import ChatRequest, ChatResult, Delivery, Usage, cost_parts
from engine.concurrency import ConcurrencyGate, Flight
from engine.config import RetryConfig
from engine.errors import (
    CapacityUnavailable,
    ConnectFailed,
    OversizeRequest,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
    UnsupportedParameter,
)
from engine.events import (
    EventHook,
    Hooks,
    ParameterAdapted,
    RateLimitHit,
    RequestDone,
    RequestFailed,
    RequestRetried,
    RequestSent,
)
from engine.headers import RateLimitSnapshot
from engine.health import RunHealth
from engine.limiter import RateLimiter
from engine.requestshape import Adapted
from engine.retry import GiveUp, RateLimitWait, Retry, decide

__all__ = [
    "Accounting",
    "Adapter",
    "Completer",
    "Dispatcher",
    "NullAccounting",
    "TicketT",
    "is_overload",
]

# Statuses by which a server (or the proxy in front of it) says it is past its capacity.
_OVERLOAD_STATUSES = frozenset({503, 504, 529})


def is_overload(error: RequestError) -> bool:
    """Whether an error says the server is past its capacity: a timeout, or 503/504/529."""
    if isinstance(error, RequestTimeout):
        return True
    return isinstance(error, ServerError) and error.status in _OVERLOAD_STATUSES


log = logging.getLogger(__name__)
# Errors that never reach the model: nothing is billed and the limiter gets its charge back.
_NOT_ADMITTED = (RateLimited, ConnectFailed, CapacityUnavailable, UnsupportedParameter)


class Adapter(Protocol):
    """Adapts requests to a refused parameter (engine.requestshape.RequestShape)."""

    def adapt(self, error: UnsupportedParameter) -> Adapted | None: ...

    def explain(self, error: UnsupportedParameter) -> str: ...


class Completer(Protocol):
    """Anything that completes chat requests (the HTTP client, or a fake in tests)."""

    async def complete(
        self, request: ChatRequest, *, delivery: Delivery | None = None
    ) -> ChatResult: ...


# What an Accounting's ``reserve`` hands back to identify one attempt; the dispatcher only passes
# it on to ``settle`` or ``release``, so each accounting chooses its own ticket type.
TicketT = TypeVar("TicketT")


class Accounting(Protocol[TicketT]):
    """Records each attempt durably and guards the budget (the state store implements it)."""

    async def reserve(self, request: ChatRequest, attempt: int) -> TicketT:
        """Durably reserve the attempt's worst-case cost before it is sent; BudgetExhausted."""
        ...

    def settle(self, ticket: TicketT, result: ChatResult) -> float:
        """Record the real usage; returns the attempt's cost in USD."""
        ...

    def release(self, ticket: TicketT, error: RequestError | None, *, admitted: bool) -> None:
        """The attempt failed. ``admitted=False``: the provider never took it, it cost nothing."""
        ...


class NullAccounting:
    """Records nothing and never refuses: for benchmarks and peer comparisons."""

    async def reserve(self, request: ChatRequest, attempt: int) -> None:
        return None

    def settle(self, ticket: None, result: ChatResult) -> float:
        return 0.0

    def release(self, ticket: None, error: RequestError | None, *, admitted: bool) -> None:
        return None


class Dispatcher:
    """Sends requests through the concurrency gate, the limiter and the client, retrying as the
    policy says. Without a gate, only the limiter's own in-flight cap applies."""

    def __init__(
        self,
        client: Completer,
        limiter: RateLimiter,
        *,
        gate: ConcurrencyGate | None = None,
        policy: RetryConfig | None = None,
        accounting: Accounting[Any] | None = None,
        hooks: EventHook | None = None,
        rng: random.Random | None = None,
        health: RunHealth | None = None,
        adapter: Adapter | None = None,
        flex_fallback_after_s: float | None = None,
        price: Callable[[Usage], float] | None = None,
    ) -> None:
        self._flex_fallback_after_s = flex_fallback_after_s  # None: flex never falls back
        self._price = price  # the run's CostModel.actual: splits a reply's cost for displays
        self._client = client
        self._adapter = adapter
        self._limiter = limiter
        self._gate = gate
        self._policy = policy or RetryConfig()
        # Any: the dispatcher never looks inside a ticket, it hands it back to its accounting.
        self._accounting: Accounting[Any] = accounting or NullAccounting()
        self._hooks: EventHook = hooks or Hooks()
        self._rng = rng or random.Random()
        self._health = health or RunHealth(self._policy)

    @property
    def health(self) -> RunHealth:
        """The run-level watch this dispatcher reports to (the scheduler reports to it too)."""
        return self._health

    async def complete(self, request: ChatRequest, *, kind: str = "") -> ChatResult:
        """The reply to ``request``; raises PermanentRequestError, FatalRunError or the error
        that exhausted the attempts, and BudgetExhausted when a cap would be passed."""
        tries = transient = rate_limited = unreached = unavailable = 0
        first_unavailable = 0.0
        emit, key = self._hooks.on_event, request.key
        while True:
            tries += 1
            outcome = await self._attempt(request, kind, tries)
            if isinstance(outcome, ChatResult):
                self._health.reply_ok()
                return outcome
            error = outcome
            if isinstance(error, UnsupportedParameter):
                if self._adapted(error):
                    continue  # sent again at once: a refusal m2l caused is no attempt
                error = UnsupportedParameter(
                    self._explain(error), param=error.param, code=error.code, status=error.status
                )
            fatal = self._health.request_failed(error)
            if fatal is not None:
                emit(RequestFailed(key, fatal.error_class, str(fatal), _now()))
                raise fatal
            if isinstance(error, RateLimited):
                rate_limited += 1
            elif isinstance(error, ConnectFailed):
                unreached += 1
            elif isinstance(error, CapacityUnavailable):
                unavailable += 1
                first_unavailable = first_unavailable or _now()
                request = self._fallback(request, first_unavailable)
            else:
                transient += 1
            # A request whose only failures were 429s or unreached servers has used none of
            # its attempts yet; decide() numbers attempts from 1.
            decision = decide(
                self._policy,
                error,
                attempt=max(transient, 1),
                rate_limited=rate_limited,
                unreached=unreached,
                rng=self._rng,
                unavailable=unavailable,
            )
            if isinstance(decision, Retry):
                emit(
                    RequestRetried(
                        key, error.error_class, str(error), tries, decision.delay_s, _now()
                    )
                )
                if decision.delay_s > 0:
                    await asyncio.sleep(decision.delay_s)
            elif isinstance(decision, RateLimitWait):
                # The limiter has already paused every sender until the reset: just queue again.
                limit_kind = error.limit_kind if isinstance(error, RateLimited) else None
                emit(RateLimitHit(key, limit_kind, decision.delay_s or 0.0, _now()))
            else:
                assert isinstance(decision, GiveUp)
                emit(RequestFailed(key, decision.error.error_class, str(decision.error), _now()))
                raise decision.error from None

    async def _attempt(
        self, request: ChatRequest, kind: str, tries: int
    ) -> ChatResult | RequestError:
        """One try: acquire, reserve, send, then settle or release; the error is returned.

        The reservation is made durable only once the gate and the limiter let the request
        go: a request waiting in their queues holds nothing on record, so a kill leaves at most
        the attempts that were about to be sent, or in flight, of unknown outcome.
        """
        queued_at = _now()
        flight: Flight | None = None
        try:
            # The gate first: a request waiting for a slot at the server holds no rate quota.
            if self._gate is not None:
                flight = await self._gate.acquire()
            permit = await self._limiter.acquire(request.charge)
        except BaseException as exc:
            # Never sent (oversize, or cancelled while queued): nothing was reserved.
            self._land(flight, None)
            if isinstance(exc, OversizeRequest):
                self._hooks.on_event(RequestFailed(request.key, exc.error_class, str(exc), _now()))
            raise
        try:
            ticket = await self._accounting.reserve(request, tries)
        except BaseException:
            # A cap refused it, or cancelled while logging: it never went out.
            self._land(flight, None)
            self._limiter.release(permit, admitted=False)
            raise
        if flight is not None and self._gate is not None:
            flight = self._gate.sent(flight)
        sent_at = _now()
        self._hooks.on_event(
            RequestSent(
                request.key,
                kind,
                request.prompt_tokens,
                request.max_tokens,
                sent_at,
                queued_s=sent_at - queued_at,
                concurrency=self._gate.limit if self._gate is not None else None,
            )
        )
        delivery = Delivery()
        try:
            result = await self._client.complete(request, delivery=delivery)
        except RequestError as exc:
            self._land(flight, exc)
            # A 429 or a refused parameter never reached the model, and a request that never
            # reached the wire (no connection, or a timeout while connecting) never left this
            # machine: none was charged.
            admitted = delivery.written and not isinstance(exc, _NOT_ADMITTED)
            if isinstance(exc, RateLimited):
                snap = exc.ratelimit if isinstance(exc.ratelimit, RateLimitSnapshot) else None
                self._limiter.rejected(permit, snapshot=snap, retry_after=exc.retry_after)
            else:
                self._limiter.release(permit, admitted=admitted)
            self._accounting.release(ticket, exc, admitted=admitted)
            return exc
        except BaseException:
            # Cancelled mid-flight: once written, the provider may have taken it, so it stays
            # charged (its outcome is unknown); cancelled while connecting, it cost nothing.
            self._land(flight, None)
            self._limiter.release(permit, admitted=delivery.written)
            self._accounting.release(ticket, None, admitted=delivery.written)
            raise
        if flight is not None and self._gate is not None:
            self._gate.succeeded(flight, result.usage.completion_tokens)
        self._limiter.complete(
            permit, snapshot=result.ratelimit, used_tokens=result.usage.total_tokens
        )
        cost = self._accounting.settle(ticket, result)
        usage = result.usage
        reasoning_usd, saved = (
            (0.0, 0.0) if self._price is None else cost_parts(self._price, usage, cost)
        )
        self._hooks.on_event(
            RequestDone(
                request.key,
                kind,
                usage.prompt_tokens,
                usage.completion_tokens,
                result.latency_s,
                cost,
                _now(),
                usage.reasoning_tokens,
                usage.cached_tokens,
                reasoning_usd,
                saved,
            )
        )
        return replace(result, cost_usd=cost)

    def _land(self, flight: Flight | None, error: RequestError | None) -> None:
        """Hand a gate slot back: an overload cuts the limit, anything else just frees it."""
        if flight is None or self._gate is None:
            return
        if error is not None and is_overload(error):
            self._gate.overloaded(flight)
        else:
            self._gate.finished(flight)

    def _adapted(self, error: UnsupportedParameter) -> bool:
        """Whether the request may go again after the adapter changed what it sends."""
        if self._adapter is None:
            return False
        adapted = self._adapter.adapt(error)
        if adapted is None:
            return False
        if adapted.note is not None:
            log.warning("%s", adapted.note)
            self._hooks.on_event(ParameterAdapted(adapted.param, adapted.now, adapted.note, _now()))
        return True

    def _explain(self, error: UnsupportedParameter) -> str:
        if self._adapter is None:
            return f"the server refuses the parameter {error.param!r} on every request: {error}"
        return self._adapter.explain(error)

    def _fallback(self, request: ChatRequest, since: float) -> ChatRequest:
        """The request at the default tier once flex has been unavailable long enough."""
        after = self._flex_fallback_after_s
        if after is None or request.service_tier == "default" or _now() - since < after:
            return request
        return dataclasses.replace(request, service_tier="default")

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    @property
    def gate(self) -> ConcurrencyGate | None:
        return self._gate


def _now() -> float:
    return time.monotonic()
