"""The token-aware rate limiter: FIFO waiters on requests/min and tokens/min, woken by one timer.

The arithmetic (levels, refill, header corrections, the 429 pause, the rate factor) is the pure
``engine._bucket.LimiterCore``; this module is its async shell. ``acquire`` raises
OversizeRequest at once for a request larger than the token bucket.

Why not aiolimiter's AsyncLimiter, whose single-timer design this copies: it orders waiters by
amount, so a large request starves behind a stream of small ones (m2l needs FIFO); it has one
bucket, and m2l must take a request and its tokens from two buckets atomically; it cannot refund
a charge the server never admitted, correct its level from ``x-ratelimit-*`` headers, learn a
capacity or a lower limit, or pause everyone on a 429.
"""

from __future__ import annotations

import asyncio
import math

from engine._bucket import BucketStats, LimiterCore, LimiterStats, Permit
from engine.clock import Clock, MonotonicClock
from engine.config import LimitsConfig
from engine.errors import OversizeRequest
from engine.headers import RateLimitSnapshot

__all__ = ["BucketStats", "LimiterStats", "Permit", "RateLimiter"]


class RateLimiter:
    """Admits requests in arrival order as the modelled provider buckets allow; use one per loop.

    Every permit from ``acquire`` must be handed back once through ``complete``, ``rejected``
    or ``release``; it holds an in-flight slot until then (a second hand-back is a no-op).
    """

    __slots__ = ("_clock", "_core", "_loop", "_timer", "_waiters")

    def __init__(self, limits: LimitsConfig, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._core = LimiterCore(limits, self._clock)
        self._waiters: dict[int, asyncio.Future[Permit]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def limits(self) -> LimitsConfig:
        return self._core.limits

    @property
    def queued(self) -> int:
        """Requests waiting for their turn now (cheap: no statistics are built)."""
        return len(self._waiters)

    async def acquire(self, tokens: int) -> Permit:
        """Wait for this request's turn and charge it; raises OversizeRequest if it never fits."""
        loop = self._loop = asyncio.get_running_loop()
        ticket = self._core.enqueue(tokens)
        if not self._waiters:
            # Nobody is queued ahead: when the buckets allow it, grant at once, with no future
            # and no timer (the common case below the limits, where this is the hot path).
            for granted, outcome in self._core.poll():
                # With no waiters, the queue held only this ticket.
                assert granted == ticket
                if isinstance(outcome, OversizeRequest):
                    raise outcome
                return outcome
        fut: asyncio.Future[Permit] = loop.create_future()
        self._waiters[ticket] = fut
        self._wake()
        try:
            # A future granted by the _wake above is already done: no suspension, no race.
            return await fut
        except asyncio.CancelledError:
            self._abandon(ticket, fut)
            raise

    def try_acquire(self, tokens: int) -> Permit | float:
        """Charge a request now if nobody is queued and the buckets allow it; otherwise the
        clock time it could go (``math.inf``: only after a permit comes back). Raises
        OversizeRequest for a request larger than the token bucket.

        For a caller that keeps its own line of waiters across several limiters
        (engine.endpoints): nothing is queued here and no timer is armed.
        """
        if self._waiters:
            return math.inf
        ticket = self._core.enqueue(tokens)
        for _, outcome in self._core.poll():
            # Nobody else is queued: the only outcome is this ticket's.
            if isinstance(outcome, OversizeRequest):
                raise outcome
            return outcome
        at = self._core.ready_at()
        self._core.cancel(ticket)
        return math.inf if at is None else at

    def sent(self, permit: Permit) -> None:
        """The granted request goes to the server now; call it when the send is later than the
        grant (a durable reservation between them), so its headers are read as of the send."""
        self._core.sent(permit)

    def complete(
        self, permit: Permit, *, snapshot: RateLimitSnapshot, used_tokens: int | None
    ) -> None:
        """The request succeeded: learn from its headers and free its slot."""
        self._core.complete(permit, snapshot=snapshot, used_tokens=used_tokens)
        if self._waiters:  # with nobody queued there is nothing to grant and no timer to arm
            self._wake()

    def rejected(
        self, permit: Permit, *, snapshot: RateLimitSnapshot | None, retry_after: float | None
    ) -> None:
        """The server answered 429: refund the charge, pause everyone until its reset, slow down."""
        self._core.rejected(permit, snapshot=snapshot, retry_after=retry_after)
        if self._waiters:
            self._wake()

    def release(self, permit: Permit, *, admitted: bool) -> None:
        """Any other failure; ``admitted=False`` (never reached the server) refunds the charge."""
        self._core.release(permit, admitted=admitted)
        if self._waiters:
            self._wake()

    def set_share(self, share: float) -> None:
        """Use ``share`` of every limit from now on (a shard's lease); raises ValueError for a
        share outside (0, 1]."""
        self._core.set_share(share)
        if self._waiters:
            self._wake()

    def statistics(self) -> LimiterStats:
        return self._core.statistics()

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<RateLimiter queued={s.queued} in_flight={s.in_flight} "
            f"rate_factor={s.rate_factor:.2f} paused_until={s.paused_until}>"
        )

    # --- the shell --------------------------------------------------------------------------

    def _abandon(self, ticket: int, fut: asyncio.Future[Permit]) -> None:
        if self._waiters.pop(ticket, None) is not None:
            self._core.cancel(ticket)
        elif fut.done() and not fut.cancelled() and fut.exception() is None:
            # Granted, but the task was cancelled before it resumed: the permit would leak.
            self._core.release(fut.result(), admitted=False)
        # The head may have left, or capacity come back: let the next waiter be judged.
        self._wake()

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _wake(self) -> None:
        """Settle every waiter whose turn has come, then arm one timer for the next head."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while True:
            returned = False
            for ticket, outcome in self._core.poll():
                fut = self._waiters.pop(ticket, None)
                if fut is None or fut.done():
                    # Its task was cancelled while the future waited: give the permit back.
                    if isinstance(outcome, Permit):
                        self._core.release(outcome, admitted=False)
                        returned = True
                    continue
                if isinstance(outcome, OversizeRequest):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)
            if not returned:
                break
        at = self._core.ready_at()
        if at is not None and self._loop is not None:
            # Delays are taken from the injected clock and laid onto the loop's own timeline.
            delay = max(0.0, at - self._clock.now())
            self._timer = self._loop.call_at(self._loop.time() + delay, self._on_timer)
