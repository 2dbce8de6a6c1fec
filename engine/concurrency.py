"""The concurrency gate: how many requests are at the server at once, fixed or adaptive.

The decisions (the adaptive limit, the timeout guard) are the pure ``engine._adaptive``
core; this module is its async shell: first-come waiters as futures, woken when a request
comes back. The allowance only changes when a request lands, so no timer wakes waiters. One
timer does run while an adaptive gate has requests in flight: a lateness probe every 20 ms,
how late the event loop ran it, which the core takes out of the latency it measures (the
client's own lag is not the server's queue; a late timer is the one way to see it from
inside the loop). The dispatcher passes the gate before the rate limiter, so a request
waiting for a slot holds no rate-limit quota.
"""

from __future__ import annotations

import asyncio
from collections import deque

from engine._adaptive import AdaptiveSettings, ConcurrencyCore, ConcurrencyStats, Flight
from engine.clock import Clock, MonotonicClock

__all__ = ["AdaptiveSettings", "ConcurrencyGate", "ConcurrencyStats", "Flight"]

_PROBE_S = 0.02  # between lateness probes of the event loop, while requests are in flight


class ConcurrencyGate:
    """Admits requests first come, first served while fewer than the allowance are in flight.

    Every flight from ``acquire`` must be handed back once through ``succeeded``,
    ``overloaded`` or ``finished``.
    """

    __slots__ = ("_adaptive", "_core", "_due", "_probe", "_probe_loop", "_waiters")

    def __init__(
        self,
        *,
        fixed: int | None = None,
        timeout_s: float | None = None,
        settings: AdaptiveSettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``fixed=None`` adapts; ``timeout_s`` (the read timeout) arms the timeout guard."""
        self._core = ConcurrencyCore(
            clock if clock is not None else MonotonicClock(),
            fixed=fixed,
            timeout_s=timeout_s,
            settings=settings,
        )
        self._waiters: deque[asyncio.Future[Flight]] = deque()
        self._adaptive = fixed is None
        self._probe: asyncio.TimerHandle | None = None  # the pending lateness probe
        self._due = 0.0  # the loop time it is due at
        self._probe_loop: asyncio.AbstractEventLoop | None = None

    async def acquire(self) -> Flight:
        """Wait for a slot and take it."""
        if not self._waiters and self._core.can_send():
            return self._send()
        fut: asyncio.Future[Flight] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted, but the task was cancelled before it resumed: give the slot back.
                self._core.finished(fut.result())
            elif fut in self._waiters:  # a wake may have passed over it already
                self._waiters.remove(fut)
            self._wake()
            raise

    def try_acquire(self) -> Flight | None:
        """Take a slot now if one is free and nobody waits for it; None otherwise."""
        if not self._waiters and self._core.can_send():
            return self._send()
        return None

    @property
    def can_send(self) -> bool:
        """Whether ``try_acquire`` would take a slot now."""
        return not self._waiters and self._core.can_send()

    @property
    def in_flight(self) -> int:
        return self._core.in_flight

    def sent(self, flight: Flight) -> Flight:
        """The request goes to the server now: the flight to hand back from here on."""
        return self._core.sent(flight)

    def succeeded(self, flight: Flight, completion_tokens: int) -> None:
        """A usable reply came back: a latency sample."""
        self._core.succeeded(flight, completion_tokens)
        self._wake()

    def overloaded(self, flight: Flight) -> None:
        """A 503 or a timeout: the server is past its capacity."""
        self._core.overloaded(flight)
        self._wake()

    def finished(self, flight: Flight) -> None:
        """Any other outcome: the slot is free."""
        self._core.finished(flight)
        self._wake()

    def statistics(self) -> ConcurrencyStats:
        return self._core.statistics()

    @property
    def limit(self) -> int:
        """The concurrency limit now (the adaptive one, or the fixed cap)."""
        return self._core.limit

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _wake(self) -> None:
        while self._waiters and self._core.can_send():
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(self._send())

    def _send(self) -> Flight:
        flight = self._core.send()
        if self._adaptive:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop runs: nothing to probe
                return flight
            # A probe pending on another loop died with it (a gate reused by a second run).
            if self._probe is None or self._probe_loop is not loop:
                self._arm(loop)
        return flight

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + _PROBE_S
        self._probe = loop.call_at(self._due, self._probed, loop)
        self._probe_loop = loop

    def _probed(self, loop: asyncio.AbstractEventLoop) -> None:
        """The lateness probe ran: report how late, and probe again while requests fly."""
        self._probe = None
        self._core.loop_lag(loop.time() - self._due)
        if self._core.in_flight > 0:
            self._arm(loop)
