"""The endpoints a run sends to, and how a request picks one.

An endpoint is one place requests can go (a key, a deployment, a server): its client, its own
rate limiter and concurrency gate, and its own health watch. ``EndpointPool`` hands each request
a ``Lease`` on one endpoint. With one endpoint it simply waits for that endpoint's gate and then
its limiter, as a single-provider run always did. With several, requests wait in one line, first
come first served across all endpoints: the request at the head goes to the first endpoint that
can take it (gate slot free, buckets allow it), and when several can, to the one with the least
load for its weight; when none can, one timer is armed for the earliest time a limiter would
allow it, and every request coming back wakes the line too. An endpoint that fails in a way no
retry fixes is taken out; the pool fails only when none is left.

The pool never awaits anything but its waiters' futures; the decision of which endpoint comes
first is the pure ``preference``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine._adaptive import Flight
from engine._bucket import Permit
from engine.chat import ChatRequest, ChatResult, Delivery
from engine.clock import Clock, MonotonicClock
from engine.concurrency import ConcurrencyGate
from engine.errors import FatalRunError, OversizeRequest, UnsupportedParameter
from engine.events import EndpointOut, EventHook, Hooks
from engine.health import RunHealth
from engine.limiter import RateLimiter
from engine.requestshape import Adapted

__all__ = [
    "Adapter",
    "Completer",
    "Endpoint",
    "EndpointPool",
    "EndpointStats",
    "Lease",
    "preference",
]

log = logging.getLogger(__name__)


class Completer(Protocol):
    """Anything that completes chat requests (the HTTP client, or a fake in tests)."""

    async def complete(
        self, request: ChatRequest, *, delivery: Delivery | None = None
    ) -> ChatResult: ...


class Adapter(Protocol):
    """Adapts requests to a refused parameter (engine.requestshape.RequestShape)."""

    def adapt(self, error: UnsupportedParameter) -> Adapted | None: ...

    def explain(self, error: UnsupportedParameter) -> str: ...


@dataclass(eq=False, slots=True)
class Endpoint:
    """One place requests go, with everything that paces and watches it."""

    name: str  # its [[providers]] name, or "provider"
    model: str  # the model (or deployment) its requests name
    client: Completer
    limiter: RateLimiter
    gate: ConcurrencyGate | None = None
    health: RunHealth = field(default_factory=RunHealth)
    adapter: Adapter | None = None
    weight: float = 1.0
    out: str | None = None  # why it takes no more requests (None: it does)
    sent: int = 0  # requests it was given (leases)
    # Where its settings are ("providers[1]"): messages about it name "provider.KEY", meaning
    # that entry's KEY.
    setting: str = ""


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """One endpoint's figures for displays."""

    name: str
    model: str
    weight: float
    sent: int
    in_flight: int
    queued: int
    concurrency: int | None
    rate_limited: int
    out: str | None


@dataclass(eq=False, slots=True)
class Lease:
    """The right to send one request to ``endpoint`` now: its gate slot and its limiter permit.

    Hand both back through the endpoint (``land`` for the slot, the limiter's ``complete``,
    ``rejected`` or ``release`` for the permit), then tell the pool with ``EndpointPool.landed``.
    """

    endpoint: Endpoint
    flight: Flight | None
    permit: Permit

    def sent(self) -> None:
        """The request goes to the server now: its latency is counted from here, and the
        limiter reads its rate-limit headers as of now rather than of the grant."""
        self.endpoint.limiter.sent(self.permit)
        gate = self.endpoint.gate
        if self.flight is not None and gate is not None:
            self.flight = gate.sent(self.flight)

    def land(self, *, overload: bool = False, completion_tokens: int | None = None) -> None:
        """Hand the gate slot back: a reply (with its tokens) is a latency sample, an overload
        cuts the limit, anything else just frees the slot."""
        flight, gate = self.flight, self.endpoint.gate
        if flight is None or gate is None:
            return
        self.flight = None
        if completion_tokens is not None:
            gate.succeeded(flight, completion_tokens)
        elif overload:
            gate.overloaded(flight)
        else:
            gate.finished(flight)


def preference(loads: Sequence[tuple[int, float]]) -> list[int]:
    """Indexes of endpoints, given ``(in_flight, weight)`` each, in the order to try them: the
    least loaded for its weight first, so that endpoints which can all take requests share them
    in proportion to their weights; ties keep the configured order."""
    return sorted(range(len(loads)), key=lambda i: ((loads[i][0] + 1) / loads[i][1], i))


class EndpointPool:
    """Leases on a run's endpoints, first come first served; see the module docstring."""

    __slots__ = ("_clock", "_endpoints", "_hooks", "_loop", "_rate_bound", "_timer", "_waiters")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        clock: Clock | None = None,
        hooks: EventHook | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("a pool needs at least one endpoint")
        self._endpoints = tuple(endpoints)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._hooks: EventHook = hooks or Hooks()
        # One line for all endpoints (several only): (future, tokens) in arrival order.
        self._waiters: deque[tuple[asyncio.Future[Lease], int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Whether the line waits for a rate limit (True) or only for concurrency slots.
        self._rate_bound = False

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    @property
    def several(self) -> bool:
        """Whether the run has more than one endpoint (one that fails is then taken out)."""
        return len(self._endpoints) > 1

    @property
    def live(self) -> list[Endpoint]:
        return [e for e in self._endpoints if e.out is None]

    @property
    def queued(self) -> int:
        """Requests waiting for a rate limit to allow them (not those waiting only for a
        concurrency slot, as with one endpoint: the scheduler keeps its conversations coming
        while the gates probe for more)."""
        if not self.several:
            return self._endpoints[0].limiter.queued
        return len(self._waiters) if self._rate_bound else 0

    async def acquire(self, tokens: int) -> Lease:
        """Wait for an endpoint that can take a request charging ``tokens``, and take it.

        Raises OversizeRequest when no endpoint's token bucket can ever hold it, and the
        FatalRunError that took the last endpoint out when none is left.
        """
        if not self.several:
            return await self._acquire_one(self._endpoints[0], tokens)
        if not self._waiters:
            placed = self._place(tokens)
            if isinstance(placed, Lease):
                return placed
        loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Lease] = loop.create_future()
        entry = (fut, tokens)
        self._waiters.append(entry)
        self._wake()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Granted, but cancelled before it resumed: the lease would leak.
                self.give_back(fut.result())
            elif entry in self._waiters:
                self._waiters.remove(entry)
            self._wake()
            raise

    def give_back(self, lease: Lease) -> None:
        """A lease that was never used (cancelled, or a cap refused it): free it, uncharged."""
        lease.land()
        lease.endpoint.limiter.release(lease.permit, admitted=False)
        self.landed()

    def landed(self) -> None:
        """A lease was handed back: capacity may be free for the line's head."""
        if self._waiters:
            self._wake()

    def take_out(self, endpoint: Endpoint, error: FatalRunError) -> FatalRunError | None:
        """Take ``endpoint`` out for ``error``; None while another endpoint is left, else the
        error that stops the run (naming every endpoint and why it is out)."""
        if endpoint.out is None:
            endpoint.out = str(error)
            left = len(self.live)
            where = f" ({endpoint.setting})" if endpoint.setting else ""
            log.warning(
                "endpoint %r%s is out of this run (%d left): %s", endpoint.name, where, left, error
            )
            self._hooks.on_event(EndpointOut(endpoint.name, str(error), left, _now()))
        if self.live:
            self._wake()
            return None
        final = self._none_left()
        while self._waiters:
            fut, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(final)
        return final

    def statistics(self) -> list[EndpointStats]:
        out = []
        for e in self._endpoints:
            stats = e.limiter.statistics()
            gate = e.gate
            out.append(
                EndpointStats(
                    e.name,
                    e.model,
                    e.weight,
                    e.sent,
                    gate.in_flight if gate is not None else stats.in_flight,
                    stats.queued + (gate.queued if gate is not None else 0),
                    gate.limit if gate is not None else None,
                    stats.rate_limited,
                    e.out,
                )
            )
        return out

    # --- the shell --------------------------------------------------------------------------

    async def _acquire_one(self, endpoint: Endpoint, tokens: int) -> Lease:
        """One endpoint: its gate first (a request waiting for a slot holds no rate quota),
        then its limiter, each with its own line of waiters."""
        if endpoint.out is not None:
            raise self._none_left()
        gate = endpoint.gate
        flight = await gate.acquire() if gate is not None else None
        try:
            permit = await endpoint.limiter.acquire(tokens)
        except BaseException:
            if flight is not None and gate is not None:
                gate.finished(flight)
            raise
        endpoint.sent += 1
        return Lease(endpoint, flight, permit)

    def _place(self, tokens: int) -> Lease | float:
        """A lease on the endpoint that can take the request now, or the clock time the
        earliest one could (``math.inf``: only once a request comes back). Raises
        OversizeRequest when no live endpoint could ever take it."""
        live = self.live
        if not live:
            raise self._none_left()
        loads = [(e.gate.in_flight if e.gate is not None else 0, e.weight) for e in live]
        soonest = math.inf
        oversize: OversizeRequest | None = None
        fits = False
        for i in preference(loads):
            endpoint = live[i]
            gate = endpoint.gate
            if gate is not None and not gate.can_send:
                fits = True  # whether it fits is the limiter's to say; assume so until then
                continue
            try:
                outcome = endpoint.limiter.try_acquire(tokens)
            except OversizeRequest as exc:
                oversize = exc
                continue
            fits = True
            if isinstance(outcome, Permit):
                flight = gate.try_acquire() if gate is not None else None
                endpoint.sent += 1
                return Lease(endpoint, flight, outcome)
            soonest = min(soonest, outcome)
        if not fits and oversize is not None:
            raise oversize
        return soonest

    def _wake(self) -> None:
        """Give the line's head its lease while endpoints can take it; then arm one timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        soonest = math.inf
        while self._waiters:
            fut, tokens = self._waiters[0]
            if fut.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            try:
                placed = self._place(tokens)
            except (OversizeRequest, FatalRunError) as exc:
                self._waiters.popleft()
                fut.set_exception(exc)
                continue
            if isinstance(placed, Lease):
                self._waiters.popleft()
                fut.set_result(placed)
                continue
            soonest = placed
            break
        self._rate_bound = math.isfinite(soonest)
        if self._waiters and math.isfinite(soonest) and self._loop is not None:
            # Delays are taken from the injected clock and laid onto the loop's own timeline.
            delay = max(0.0, soonest - self._clock.now())
            self._timer = self._loop.call_at(self._loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _none_left(self) -> FatalRunError:
        reasons = "; ".join(
            f"{e.name}{f' ({e.setting})' if e.setting else ''}: {e.out}" for e in self._endpoints
        )
        if not self.several:
            return FatalRunError(reasons)
        return FatalRunError(
            f"every endpoint is out of this run, so nothing more can be sent ({reasons}). "
            "Fix what each message names, then run the same command again to resume"
        )


def _now() -> float:
    return time.monotonic()
