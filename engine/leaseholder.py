"""A shard's side of a sharded run's leases: renews its lease and applies it to its limiter and
ledger; the async shell around ``engine.lease``'s decisions, which the coordinator makes.

The lease is renewed every quarter term, and at once when a reservation does not fit in the
allowance (``top_up``, awaited by the request log before it reserves), so the shard waits for a
grant rather than stop at a cap the run as a whole has not reached. Raises whatever the lessor
raises (the coordinator gone is the end of the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from budgets.ledger import ZERO, Ledger, Spend
from budgets.prices import to_nano
from engine.lease import DEFAULT_TERM_S, Lease
from engine.limiter import RateLimiter
from state.requestlog import Ticket

__all__ = ["LeaseHolder", "Lessor"]

log = logging.getLogger(__name__)

# Below this share a limiter would wait minutes for one request: a shard started while the
# others hold the whole limit waits for its renewal instead (a term at most).
_MIN_SHARE = 1e-3


class Lessor(Protocol):
    """The coordinator, as a shard calls it (a Ray actor handle behind it, or a LeaseBook)."""

    async def start(self, shard: int, committed: Spend) -> Lease: ...

    async def renew(self, shard: int, committed: Spend, need: Spend) -> Lease: ...

    async def finish(self, shard: int, committed: Spend) -> None: ...


class LeaseHolder:
    """Holds one shard's lease for the duration of its run (``async with``)."""

    def __init__(self, lessor: Lessor, shard: int, *, term_s: float = DEFAULT_TERM_S) -> None:
        self._lessor = lessor
        self._shard = shard
        self._every_s = term_s / 4
        self._limiters: list[RateLimiter] = []
        self._ledger: Ledger | None = None
        self._lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def lease(self) -> Lease | None:
        return self._lease

    def bind(self, limiters: Sequence[RateLimiter], ledger: Ledger | None) -> None:
        """The limiters (one per endpoint: each endpoint's limits are shared alike) and the
        ledger the lease applies to; set before ``async with``."""
        self._limiters = list(limiters)
        self._ledger = ledger

    async def __aenter__(self) -> LeaseHolder:
        self._apply(await self._lessor.start(self._shard, self._committed()))
        self._task = asyncio.create_task(self._renew_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # What this shard did not commit goes back to the others, with its share.
        await self._lessor.finish(self._shard, self._committed())

    async def top_up(self, ticket: Ticket) -> None:
        """Wait until the ledger can hold ``ticket``, or the coordinator has nothing left."""
        if self._ledger is None:
            return
        need = Spend(to_nano(ticket.reserved_usd), ticket.reserved_tokens, 1)
        while self._ledger.shortfall(need) is not None:
            lease = self._lease
            if lease is not None and lease.exhausted:
                return  # the caps themselves are reached: the ledger refuses, the run stops
            before = lease.allowance if lease is not None else ZERO
            async with self._lock:
                self._apply(
                    await self._lessor.renew(self._shard, self._committed(), self._extra(need))
                )
            after = self._lease.allowance if self._lease is not None else ZERO
            if after == before:
                # Nothing granted although something is left: the others hold it, a part each;
                # ask again once they may have given some back (a finished shard, a renewal).
                await asyncio.sleep(self._every_s)

    def _extra(self, need: Spend) -> Spend:
        """What to ask for beyond what is committed: this ticket and what is in flight."""
        if self._ledger is None:
            return need
        return need + self._ledger.reserved

    def _committed(self) -> Spend:
        return self._ledger.committed() if self._ledger is not None else ZERO

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            async with self._lock:
                self._apply(await self._lessor.renew(self._shard, self._committed(), ZERO))

    def _apply(self, lease: Lease) -> None:
        self._lease = lease
        for limiter in self._limiters:
            limiter.set_share(max(lease.share, _MIN_SHARE))
        if self._ledger is not None:
            self._ledger.set_lease(lease.allowance, lease.outlook)
