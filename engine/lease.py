"""Leases of one run's global rate limits and budget to its shards: the coordinator's decisions.

A sharded run (``m2l run --ray``) has one coordinator that owns the provider's limits and the
budget cap; each shard runs the ordinary engine under a lease from it:

- a *share* of every rate limit (requests and tokens per minute, configured or learned from
  headers), held for a short term and renewed well before it ends. Every unfinished shard is
  offered an equal share; a share only grows out of what no live lease holds, so the shares of
  live leases never add up to more than the whole limit, even while they change. A finished
  shard gives its share back at once; a dead one's lapses with its term, and the others take
  it at their next renewal.
- an *allowance* of each capped budget quantity (nano-dollars, tokens, requests): the total a
  shard may commit (spent plus reserved), raised in small grants as it spends, never past the
  cap in total. A grant is at most an equal part of what is left, so one shard cannot take the
  rest while others still need it. A finished shard gives back what it did not commit.

Pure: time comes from an injected Clock, nothing here awaits or does I/O, so tests drive it
with a FakeClock; the Ray actor in ``engine.app.raycoord`` is its thin shell. Raises
ValueError for a shard number out of range or a non-positive term.
"""

from __future__ import annotations

from dataclasses import dataclass

from budgets.ledger import ZERO, Spend
from budgets.prices import to_nano
from engine.clock import Clock
from engine.config import BudgetConfig

__all__ = ["DEFAULT_TERM_S", "GRANT_PARTS", "Lease", "LeaseBook", "LeaseStats"]

# A lease lasts this long; shards renew at a quarter of it, so a dead shard's share is idle for
# at most a term, and a live one never runs on an expired lease for lack of one late call.
DEFAULT_TERM_S = 2.0
# A grant tops a shard's uncommitted allowance up to this part of the cap per shard: small
# enough that at the cap little sits idle in one shard while another needs it, large enough
# that a shard asks a few times a second at most.
GRANT_PARTS = 16


@dataclass(frozen=True, slots=True)
class Lease:
    """What one shard may use until ``expires_at`` (clock time).

    ``allowance`` is cumulative (what the shard may have committed in total, per capped
    quantity; a quantity without a cap reads 0 and is not limited); ``outlook`` adds the part of
    what is left that this shard could still be granted, which its admission plans against.
    ``exhausted``: nothing is left to grant, so a refusal at the allowance is the cap's.
    """

    shard: int
    share: float
    allowance: Spend
    outlook: Spend
    expires_at: float
    exhausted: bool


@dataclass(frozen=True, slots=True)
class LeaseStats:
    """The coordinator's books, for the dashboard and tests."""

    shares: tuple[float, ...]  # of live leases, by shard (0 for none)
    allocated: Spend  # granted in total, committed or not
    left: Spend  # still to grant under the caps (0 for an uncapped quantity)
    finished: tuple[int, ...]
    renewals: int


class LeaseBook:
    """The coordinator's state: shares of the rate limits and allowances of the budget."""

    __slots__ = ("_allocated", "_caps", "_clock", "_expires", "_finished", "_renewals", "_shares",
                 "_term_s", "shards")  # fmt: skip

    def __init__(
        self, shards: int, caps: BudgetConfig, *, clock: Clock, term_s: float = DEFAULT_TERM_S
    ) -> None:
        if shards < 1:
            raise ValueError(f"a sharded run needs at least one shard, got {shards}")
        if term_s <= 0:
            raise ValueError(f"a lease term must be positive, got {term_s}")
        self.shards = shards
        self._clock = clock
        self._term_s = term_s
        self._caps = _CapVector(caps)
        self._shares = [0.0] * shards
        self._expires = [float("-inf")] * shards
        self._allocated = [ZERO] * shards
        self._finished: set[int] = set()
        self._renewals = 0

    # --- the shard's calls ----------------------------------------------------------------------

    def start(self, shard: int, committed: Spend) -> Lease:
        """A shard (re)starts with ``committed`` already in its request log: its allowance covers
        at least that (the log is the truth after a crash), and it is unfinished again."""
        self._check(shard)
        self._finished.discard(shard)
        self._allocated[shard] = _max(self._allocated[shard], committed)
        return self.renew(shard, committed)

    def renew(self, shard: int, committed: Spend, need: Spend = ZERO) -> Lease:
        """Renew a shard's lease: its share for another term, and a grant that tops its allowance
        up to ``committed + need``, or to a small part of the cap when that is more."""
        self._check(shard)
        now = self._clock.now()
        self._renewals += 1
        self._shares[shard] = self._share_for(shard, now)
        self._expires[shard] = now + self._term_s
        # A restarted shard's log may show more than it was granted (worst cases of attempts a
        # kill left open): what it committed is allocated, whatever the books said.
        self._allocated[shard] = _max(self._allocated[shard], committed)
        self._allocated[shard] = self._caps.grant(
            self._allocated[shard], committed, need, self._left(), self._unfinished()
        )
        return self._lease(shard)

    def finish(self, shard: int, committed: Spend) -> None:
        """The shard has no more work: its share and its uncommitted allowance go back."""
        self._check(shard)
        self._finished.add(shard)
        self._shares[shard] = 0.0
        self._expires[shard] = float("-inf")
        self._allocated[shard] = committed

    # --- reading ----------------------------------------------------------------------------------

    def stats(self) -> LeaseStats:
        now = self._clock.now()
        return LeaseStats(
            shares=tuple(s if self._expires[i] > now else 0.0 for i, s in enumerate(self._shares)),
            allocated=_sum(self._allocated),
            left=self._left(),
            finished=tuple(sorted(self._finished)),
            renewals=self._renewals,
        )

    # --- decisions --------------------------------------------------------------------------------

    def _share_for(self, shard: int, now: float) -> float:
        # Every unfinished shard is offered an equal part; a dead one keeps its claim (it will be
        # restarted), but its lapsed lease no longer holds anything.
        target = 1.0 / max(1, self._unfinished())
        held_by_others = sum(
            s for i, s in enumerate(self._shares) if i != shard and self._expires[i] > now
        )
        free = max(0.0, 1.0 - held_by_others)
        # Shrinking is always safe; growing takes only what no live lease holds.
        return min(target, free) if target > self._shares[shard] else target

    def _unfinished(self) -> int:
        return self.shards - len(self._finished)

    def _left(self) -> Spend:
        return self._caps.left(_sum(self._allocated))

    def _lease(self, shard: int) -> Lease:
        left = self._left()
        part = self._caps.part(left, max(1, self._unfinished()))
        return Lease(
            shard=shard,
            share=self._shares[shard],
            allowance=self._allocated[shard],
            outlook=self._allocated[shard] + part,
            expires_at=self._expires[shard],
            exhausted=self._caps.exhausted(left),
        )

    def _check(self, shard: int) -> None:
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard {shard} is not one of the run's {self.shards} shards")


class _CapVector:
    """The caps as a Spend, with None for a quantity that is not capped."""

    __slots__ = ("nano", "requests", "tokens")

    def __init__(self, caps: BudgetConfig) -> None:
        self.nano = None if caps.usd is None else to_nano(caps.usd)
        self.tokens = caps.tokens
        self.requests = caps.requests

    def _dims(self) -> tuple[int | None, int | None, int | None]:
        return (self.nano, self.tokens, self.requests)

    def left(self, allocated: Spend) -> Spend:
        values = [
            0 if cap is None else max(0, cap - used)
            for cap, used in zip(self._dims(), _tuple(allocated), strict=True)
        ]
        return Spend(*values)

    def part(self, left: Spend, shards: int) -> Spend:
        return Spend(*(v // shards for v in _tuple(left)))

    def exhausted(self, left: Spend) -> bool:
        """Whether some capped quantity has nothing left to grant."""
        return any(
            cap is not None and v <= 0 for cap, v in zip(self._dims(), _tuple(left), strict=True)
        )

    def grant(
        self, allocated: Spend, committed: Spend, need: Spend, left: Spend, unfinished: int
    ) -> Spend:
        """The shard's new allowance: its uncommitted part topped up to ``need`` or to a small
        part of the cap, whichever is more, by no more than an equal part of what is left."""
        out = []
        for cap, a, c, n, rest in zip(
            self._dims(), _tuple(allocated), _tuple(committed), _tuple(need), _tuple(left),
            strict=True,
        ):  # fmt: skip
            if cap is None:
                out.append(0)
                continue
            chunk = max(1, cap // (GRANT_PARTS * max(1, unfinished)))
            target = c + max(n, chunk)
            # The last shard standing may take all that is left; otherwise an equal part.
            most = rest if unfinished <= 1 else max(rest // unfinished, min(rest, 1))
            out.append(a + max(0, min(target - a, most)))
        return Spend(*out)


def _tuple(s: Spend) -> tuple[int, int, int]:
    return (s.nano, s.tokens, s.requests)


def _max(a: Spend, b: Spend) -> Spend:
    return Spend(max(a.nano, b.nano), max(a.tokens, b.tokens), max(a.requests, b.requests))


def _sum(items: list[Spend]) -> Spend:
    total = ZERO
    for s in items:
        total += s
    return total
