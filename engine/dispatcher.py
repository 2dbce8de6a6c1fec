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
from engine.concurrency import ConcurrencyGate
from engine.config import RetryConfig
from engine.endpoints import Adapter, Completer, Endpoint, EndpointPool
from engine.errors import (
    CapacityUnavailable,
    ConnectFailed,
    FatalRunError,
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


# What an Accounting's ``reserve`` hands back to identify one attempt; the dispatcher only passes
# it on to ``settle`` or ``release``, so each accounting chooses its own ticket type.
TicketT = TypeVar("TicketT")


class Accounting(Protocol[TicketT]):
    """Records each attempt durably and guards the budget (the state store implements it)."""

    async def reserve(
        self, request: ChatRequest, attempt: int, *, endpoint: str = "", model: str = ""
    ) -> TicketT:
        """Durably reserve the attempt's worst-case cost before it is sent, recording the
        endpoint and model it goes to; raises BudgetExhausted."""
        ...

    def settle(self, ticket: TicketT, result: ChatResult) -> float:
        """Record the real usage; returns the attempt's cost in USD."""
        ...

    def release(self, ticket: TicketT, error: RequestError | None, *, admitted: bool) -> None:
        """The attempt failed. ``admitted=False``: the provider never took it, it cost nothing."""
        ...


class NullAccounting:
    """Records nothing and never refuses: for benchmarks and peer comparisons."""

    async def reserve(
        self, request: ChatRequest, attempt: int, *, endpoint: str = "", model: str = ""
    ) -> None:
        return None

    def settle(self, ticket: None, result: ChatResult) -> float:
        return 0.0

    def release(self, ticket: None, error: RequestError | None, *, admitted: bool) -> None:
        return None


class Dispatcher:
    """Sends requests through an endpoint's concurrency gate, limiter and client, retrying as
    the policy says. Without a gate, only the limiter's own in-flight cap applies.

    ``Dispatcher(client, limiter, ...)`` sends to one endpoint; ``Dispatcher.over(pool, ...)``
    to several (engine.endpoints), where an endpoint that fails for good is taken out and its
    requests go to the others.
    """

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
        endpoint: str = "provider",
        model: str = "",
    ) -> None:
        policy = policy or RetryConfig()
        health = health or RunHealth(policy)
        # One endpoint: its health watch is the run's, as it always was.
        one = Endpoint(endpoint, model, client, limiter, gate, health, adapter)
        self._setup(
            EndpointPool([one], hooks=hooks),
            policy=policy,
            accounting=accounting,
            hooks=hooks,
            rng=rng,
            health=health,
            flex_fallback_after_s=flex_fallback_after_s,
            price=price,
        )

    @classmethod
    def over(
        cls,
        pool: EndpointPool,
        *,
        policy: RetryConfig | None = None,
        accounting: Accounting[Any] | None = None,
        hooks: EventHook | None = None,
        rng: random.Random | None = None,
        health: RunHealth | None = None,
        flex_fallback_after_s: float | None = None,
        price: Callable[[Usage], float] | None = None,
    ) -> Dispatcher:
        """A dispatcher over the pool's endpoints; ``health`` watches the run's conversations
        (each endpoint watches its own requests)."""
        self = cls.__new__(cls)
        self._setup(
            pool,
            policy=policy or RetryConfig(),
            accounting=accounting,
            hooks=hooks,
            rng=rng,
            health=health,
            flex_fallback_after_s=flex_fallback_after_s,
            price=price,
        )
        return self

    def _setup(
        self,
        pool: EndpointPool,
        *,
        policy: RetryConfig,
        accounting: Accounting[Any] | None,
        hooks: EventHook | None,
        rng: random.Random | None,
        health: RunHealth | None,
        flex_fallback_after_s: float | None,
        price: Callable[[Usage], float] | None,
    ) -> None:
        self._pool = pool
        self._flex_fallback_after_s = flex_fallback_after_s  # None: flex never falls back
        self._price = price  # the run's CostModel.actual: splits a reply's cost for displays
        self._policy = policy
        # Any: the dispatcher never looks inside a ticket, it hands it back to its accounting.
        self._accounting: Accounting[Any] = accounting or NullAccounting()
        self._hooks: EventHook = hooks or Hooks()
        self._rng = rng or random.Random()
        self._health = health or RunHealth(self._policy)

    @property
    def health(self) -> RunHealth:
        """The run-level watch this dispatcher reports to (the scheduler reports to it too)."""
        return self._health

    @property
    def pool(self) -> EndpointPool:
        return self._pool

    @property
    def queued(self) -> int:
        """Requests waiting inside m2l for an endpoint (its gate or its limiter)."""
        return self._pool.queued

    async def complete(self, request: ChatRequest, *, kind: str = "") -> ChatResult:
        """The reply to ``request``; raises PermanentRequestError, FatalRunError or the error
        that exhausted the attempts, and BudgetExhausted when a cap would be passed."""
        tries = transient = rate_limited = unreached = unavailable = 0
        first_unavailable = 0.0
        emit, key = self._hooks.on_event, request.key
        while True:
            tries += 1
            outcome, endpoint = await self._attempt(request, kind, tries)
            if isinstance(outcome, ChatResult):
                endpoint.health.reply_ok()
                return outcome
            error = outcome
            if isinstance(error, UnsupportedParameter):
                if self._adapted(endpoint, error):
                    continue  # sent again at once: a refusal m2l caused is no attempt
                error = UnsupportedParameter(
                    self._explain(endpoint, error),
                    param=error.param,
                    code=error.code,
                    status=error.status,
                )
            fatal = endpoint.health.request_failed(error)
            if self._pool.several:
                gone = fatal or (error if isinstance(error, FatalRunError) else None)
                if gone is not None:
                    # This endpoint is done for; the request goes to another, if one is left.
                    fatal = self._pool.take_out(endpoint, gone)
                    if fatal is None:
                        emit(
                            RequestRetried(
                                key,
                                gone.error_class,
                                f"endpoint {endpoint.name!r} is out, sent to another: {gone}",
                                tries,
                                0.0,
                                _now(),
                                endpoint.name,
                            )
                        )
                        continue
            if fatal is not None:
                emit(RequestFailed(key, fatal.error_class, str(fatal), _now(), endpoint.name))
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
                        key,
                        error.error_class,
                        str(error),
                        tries,
                        decision.delay_s,
                        _now(),
                        endpoint.name,
                    )
                )
                if decision.delay_s > 0:
                    await asyncio.sleep(decision.delay_s)
            elif isinstance(decision, RateLimitWait):
                # The limiter has already paused its endpoint until the reset: queue again.
                limit_kind = error.limit_kind if isinstance(error, RateLimited) else None
                emit(
                    RateLimitHit(
                        key, limit_kind, decision.delay_s or 0.0, _now(), endpoint=endpoint.name
                    )
                )
            else:
                assert isinstance(decision, GiveUp)
                failed = decision.error
                emit(RequestFailed(key, failed.error_class, str(failed), _now(), endpoint.name))
                raise failed from None

    async def _attempt(
        self, request: ChatRequest, kind: str, tries: int
    ) -> tuple[ChatResult | RequestError, Endpoint]:
        """One try: acquire, reserve, send, then settle or release; the error is returned,
        with the endpoint the try went to.

        The reservation is made durable only once an endpoint's gate and limiter let the
        request go: a request waiting in their queues holds nothing on record, so a kill leaves
        at most the attempts that were about to be sent, or in flight, of unknown outcome.
        """
        queued_at = _now()
        pool = self._pool
        try:
            # A request waiting for a slot at the server holds no rate quota (engine.endpoints).
            lease = await pool.acquire(request.charge)
        except OversizeRequest as exc:
            # Never sent: nothing was reserved.
            self._hooks.on_event(RequestFailed(request.key, exc.error_class, str(exc), _now()))
            raise
        endpoint, limiter = lease.endpoint, lease.endpoint.limiter
        try:
            ticket = await self._accounting.reserve(
                request, tries, endpoint=endpoint.name, model=endpoint.model
            )
        except BaseException:
            # A cap refused it, or cancelled while logging: it never went out.
            pool.give_back(lease)
            raise
        lease.sent()
        sent_at = _now()
        gate = endpoint.gate
        self._hooks.on_event(
            RequestSent(
                request.key,
                kind,
                request.prompt_tokens,
                request.max_tokens,
                sent_at,
                queued_s=sent_at - queued_at,
                concurrency=gate.limit if gate is not None else None,
                endpoint=endpoint.name,
            )
        )
        delivery = Delivery()
        try:
            result = await endpoint.client.complete(request, delivery=delivery)
        except RequestError as exc:
            lease.land(overload=is_overload(exc))
            # A 429 or a refused parameter never reached the model, and a request that never
            # reached the wire (no connection, or a timeout while connecting) never left this
            # machine: none was charged.
            admitted = delivery.written and not isinstance(exc, _NOT_ADMITTED)
            if isinstance(exc, RateLimited):
                snap = exc.ratelimit if isinstance(exc.ratelimit, RateLimitSnapshot) else None
                limiter.rejected(lease.permit, snapshot=snap, retry_after=exc.retry_after)
            else:
                limiter.release(lease.permit, admitted=admitted)
            pool.landed()
            self._accounting.release(ticket, exc, admitted=admitted)
            return exc, endpoint
        except BaseException:
            # Cancelled mid-flight: once written, the provider may have taken it, so it stays
            # charged (its outcome is unknown); cancelled while connecting, it cost nothing.
            lease.land()
            limiter.release(lease.permit, admitted=delivery.written)
            pool.landed()
            self._accounting.release(ticket, None, admitted=delivery.written)
            raise
        usage = result.usage
        lease.land(completion_tokens=usage.completion_tokens)
        limiter.complete(lease.permit, snapshot=result.ratelimit, used_tokens=usage.total_tokens)
        pool.landed()
        cost = self._accounting.settle(ticket, result)
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
                endpoint.name,
            )
        )
        return replace(result, cost_usd=cost), endpoint

    def _adapted(self, endpoint: Endpoint, error: UnsupportedParameter) -> bool:
        """Whether the request may go again after the adapter changed what it sends."""
        adapter = endpoint.adapter
        if adapter is None:
            return False
        adapted = adapter.adapt(error)
        if adapted is None:
            return False
        if adapted.note is not None:
            log.warning("%s", adapted.note)
            self._hooks.on_event(ParameterAdapted(adapted.param, adapted.now, adapted.note, _now()))
        return True

    def _explain(self, endpoint: Endpoint, error: UnsupportedParameter) -> str:
        if endpoint.adapter is None:
            return f"the server refuses the parameter {error.param!r} on every request: {error}"
        return endpoint.adapter.explain(error)

    def _fallback(self, request: ChatRequest, since: float) -> ChatRequest:
        """The request at the default tier once flex has been unavailable long enough."""
        after = self._flex_fallback_after_s
        if after is None or request.service_tier == "default" or _now() - since < after:
            return request
        return dataclasses.replace(request, service_tier="default")

    @property
    def limiter(self) -> RateLimiter:
        """The (first) endpoint's rate limiter."""
        return self._pool.endpoints[0].limiter

    @property
    def limiters(self) -> list[RateLimiter]:
        """Every endpoint's rate limiter."""
        return [endpoint.limiter for endpoint in self._pool.endpoints]

    @property
    def gate(self) -> ConcurrencyGate | None:
        """The (first) endpoint's concurrency gate."""
        return self._pool.endpoints[0].gate


def _now() -> float:
    return time.monotonic()
