"""The dispatcher: one call, ``await dispatcher.complete(request, kind=...)``, that a conversation
makes for each step. It strings together, in this order: budget reservation (durable), the rate
limiter, the HTTP client, the retry policy, and settlement; and it reports every event.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Protocol, TypeVar

from engine.chat import ChatRequest, ChatResult, Delivery
from engine.concurrency import ConcurrencyGate, Flight
from engine.config import RetryConfig
from engine.errors import (
    ConnectFailed,
    OversizeRequest,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
)
from engine.events import (
    EventHook,
    Hooks,
    RateLimitHit,
    RequestDone,
    RequestFailed,
    RequestRetried,
    RequestSent,
)
from engine.headers import RateLimitSnapshot
from engine.health import HealthPolicy, RunHealth
from engine.limiter import RateLimiter
from engine.retry import GiveUp, RateLimitWait, Retry, decide

__all__ = ["Accounting", "Completer", "Dispatcher", "NullAccounting", "TicketT", "is_overload"]

# Statuses by which a server (or the proxy in front of it) says it is past its capacity.
_OVERLOAD_STATUSES = frozenset({503, 504, 529})


def is_overload(error: RequestError) -> bool:
    """Whether an error says the server is past its capacity: a timeout, or 503/504/529."""
    if isinstance(error, RequestTimeout):
        return True
    return isinstance(error, ServerError) and error.status in _OVERLOAD_STATUSES


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
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._gate = gate
        self._policy = policy or RetryConfig()
        # Any: the dispatcher never looks inside a ticket, it hands it back to its accounting.
        self._accounting: Accounting[Any] = accounting or NullAccounting()
        self._hooks: EventHook = hooks or Hooks()
        self._rng = rng or random.Random()
        self._health = health or RunHealth(
            HealthPolicy(refused_before_fatal=self._policy.refused_before_fatal)
        )

    @property
    def health(self) -> RunHealth:
        """The run-level watch this dispatcher reports to (the scheduler reports to it too)."""
        return self._health

    async def complete(self, request: ChatRequest, *, kind: str = "") -> ChatResult:
        """The reply to ``request``; raises PermanentRequestError, FatalRunError or the error
        that exhausted the attempts, and BudgetExhausted when a cap would be passed."""
        tries = transient = rate_limited = unreached = 0
        emit, key = self._hooks.on_event, request.key
        while True:
            tries += 1
            outcome = await self._attempt(request, kind, tries)
            if isinstance(outcome, ChatResult):
                self._health.reply_ok()
                return outcome
            error = outcome
            fatal = self._health.request_failed(error)
            if fatal is not None:
                emit(RequestFailed(key, fatal.error_class, str(fatal), _now()))
                raise fatal
            if isinstance(error, RateLimited):
                rate_limited += 1
            elif isinstance(error, ConnectFailed):
                unreached += 1
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
        """One try: reserve, acquire, send, then settle or release; the error is returned."""
        ticket = await self._accounting.reserve(request, tries)
        queued_at = _now()
        flight: Flight | None = None
        try:
            # The gate first: a request waiting for a slot at the server holds no rate quota.
            if self._gate is not None:
                flight = await self._gate.acquire()
            permit = await self._limiter.acquire(request.charge)
        except BaseException as exc:
            # Never sent (oversize, or cancelled while queued): it cost nothing.
            self._land(flight, None)
            self._accounting.release(
                ticket, exc if isinstance(exc, RequestError) else None, admitted=False
            )
            if isinstance(exc, OversizeRequest):
                self._hooks.on_event(RequestFailed(request.key, exc.error_class, str(exc), _now()))
            raise
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
            # A 429 never reached the model, and a request that never reached the wire (no
            # connection, or a timeout while connecting) never left this machine: neither
            # was charged.
            admitted = delivery.written and not isinstance(exc, RateLimited | ConnectFailed)
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
        self._hooks.on_event(
            RequestDone(
                request.key,
                kind,
                usage.prompt_tokens,
                usage.completion_tokens,
                result.latency_s,
                cost,
                _now(),
            )
        )
        return result

    def _land(self, flight: Flight | None, error: RequestError | None) -> None:
        """Hand a gate slot back: an overload cuts the limit, anything else just frees it."""
        if flight is None or self._gate is None:
            return
        if error is not None and is_overload(error):
            self._gate.overloaded(flight)
        else:
            self._gate.finished(flight)

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    @property
    def gate(self) -> ConcurrencyGate | None:
        return self._gate


def _now() -> float:
    return time.monotonic()
