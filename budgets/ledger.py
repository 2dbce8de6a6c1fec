"""The budget ledger: reserve a request's worst case before it is sent, settle it at its real cost.

Pure arithmetic on whole nano-dollars, tokens and requests; no I/O, no clock. The invariant it
keeps is ``spent + reserved <= cap`` for every capped quantity at every moment; ``reserve``
raises BudgetExhausted rather than break it. After a crash the ledger starts from the request
log (``spend_from_log``, the request log's own spend query), where every attempt whose outcome
is unknown counts as spent, so the cap holds across crashes too.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from budgets.prices import NANO_PER_USD, from_nano, to_nano
from engine.config import BudgetConfig
from engine.errors import BudgetExhausted
from engine.formats import usd
from state.requestlog import Ticket, spend_by, spend_total

__all__ = [
    "ZERO",
    "Ledger",
    "Spend",
    "spend_by_conversation",
    "spend_from_log",
]


@dataclass(frozen=True, slots=True)
class Spend:
    """An amount in the ledger's units: nano-dollars, tokens and requests."""

    nano: int = 0
    tokens: int = 0
    requests: int = 0

    @property
    def usd(self) -> float:
        return from_nano(self.nano)

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            self.nano + other.nano, self.tokens + other.tokens, self.requests + other.requests
        )

    def __sub__(self, other: Spend) -> Spend:
        return Spend(
            self.nano - other.nano, self.tokens - other.tokens, self.requests - other.requests
        )


ZERO = Spend()


class Ledger:
    """The Guard the request log calls: keeps settled + reserved within every cap."""

    __slots__ = ("_cap_nano", "_caps", "_lease", "_open", "_reserved", "_spent")

    def __init__(self, caps: BudgetConfig, start: Spend = ZERO) -> None:
        self._caps = caps  # checked when the config was loaded (each cap above 0, or None)
        self._cap_nano = None if caps.usd is None else to_nano(caps.usd)
        self._spent = start
        self._reserved = ZERO
        self._open: dict[int, Spend] = {}
        # A shard of a sharded run spends under its lease of the caps (engine.lease): reserves
        # within ``allowance``, plans admissions within ``outlook``. None: the caps themselves.
        self._lease: tuple[Spend, Spend] | None = None

    def __repr__(self) -> str:
        return (
            f"<Ledger spent {usd(self._spent.usd)} reserved {usd(self._reserved.usd)} "
            f"cap {self._caps.usd!r} open {len(self._open)}>"
        )

    @property
    def caps(self) -> BudgetConfig:
        return self._caps

    @property
    def spent(self) -> Spend:
        """Settled costs plus attempts that may have been billed (outcome unknown included)."""
        return self._spent

    @property
    def reserved(self) -> Spend:
        """Worst cases held by attempts not yet settled or released."""
        return self._reserved

    def committed(self) -> Spend:
        return self._spent + self._reserved

    def set_lease(self, allowance: Spend, outlook: Spend) -> None:
        """Spend under a shard's lease of the caps from now on: ``reserve`` keeps committed
        within ``allowance`` and admission plans within ``outlook`` (quantities without a cap
        are ignored). An allowance below what is committed only stops new reservations."""
        self._lease = (allowance, outlook)

    def _limits(self, *, reserving: bool) -> tuple[int | None, int | None, int | None]:
        caps = (self._cap_nano, self._caps.tokens, self._caps.requests)
        if self._lease is None:
            return caps
        lease = self._lease[0] if reserving else self._lease[1]
        return (
            _within(caps[0], lease.nano),
            _within(caps[1], lease.tokens),
            _within(caps[2], lease.requests),
        )

    def shortfall(self, extra: Spend, *, count_reserved: bool = True) -> str | None:
        """Which cap ``extra`` more would pass (a message), or None if it fits under every cap.

        ``count_reserved`` (a reservation) checks committed spend against the caps, or a shard's
        allowance; without it (admission's plan) spend is checked against the caps or outlook.
        """
        base = self.committed() if count_reserved else self._spent
        total = base + extra
        cap_nano, cap_tokens, cap_requests = self._limits(reserving=count_reserved)
        if cap_nano is not None and total.nano > cap_nano:
            left = max(cap_nano - base.nano, 0)
            return (
                f"budget.usd cap of {usd(self._caps.usd)} reached: {usd(from_nano(extra.nano))} "
                f"more does not fit in the {usd(from_nano(left))} left "
                f"({usd(self._spent.usd)} spent, {usd(self._reserved.usd)} held by requests "
                "in flight)"
            )
        if cap_tokens is not None and total.tokens > cap_tokens:
            return (
                f"budget.tokens cap of {self._caps.tokens} reached: {extra.tokens} more tokens "
                f"do not fit ({self._spent.tokens} used, {self._reserved.tokens} held in flight)"
            )
        if cap_requests is not None and total.requests > cap_requests:
            return (
                f"budget.requests cap of {self._caps.requests} reached "
                f"({self._spent.requests} made, {self._reserved.requests} in flight)"
            )
        return None

    def reserve(self, ticket: Ticket) -> None:
        """Hold the ticket's worst case; raises BudgetExhausted when it would pass a cap."""
        if ticket.request_id in self._open:
            raise ValueError(f"request {ticket.request_id} is already reserved")
        need = Spend(to_nano(ticket.reserved_usd), ticket.reserved_tokens, 1)
        problem = self.shortfall(need)
        if problem is not None:
            raise BudgetExhausted(
                f"{problem}; raise the cap in the config and resume with `m2l run CONFIG --force`"
            )
        self._open[ticket.request_id] = need
        self._reserved += need

    def settle(self, ticket: Ticket, usd: float, tokens: int) -> None:
        """Replace the ticket's reservation by its real cost (which may, rarely, be higher)."""
        self._take(ticket)
        self._spent += Spend(to_nano(usd), tokens, 1)

    def release(self, ticket: Ticket, *, admitted: bool, billed: bool = True) -> None:
        """The attempt failed: free if never admitted or surely unbilled (``billed`` False, from
        its error class), else at its worst case."""
        held = self._take(ticket)
        if not admitted:
            return
        if billed:
            self._spent += held
        else:
            self._spent += Spend(0, 0, 1)

    def recount(self, before: Spend, after: Spend) -> None:
        """An attempt an earlier session left unknown, counted in the start at ``before`` (its
        worst case), has an outcome: count ``after`` instead (its real cost; nothing if it was
        never sent). Only the log's own accounting of that outcome may be passed here."""
        self._spent = self._spent - before + after

    def _take(self, ticket: Ticket) -> Spend:
        try:
            held = self._open.pop(ticket.request_id)
        except KeyError:
            raise ValueError(f"request {ticket.request_id} holds no reservation") from None
        self._reserved -= held
        return held


def _within(cap: int | None, lease: int) -> int | None:
    return None if cap is None else min(cap, lease)


def spend_from_log(conn: duckdb.DuckDBPyConnection) -> Spend:
    """What the request log says has been spent (``state.requestlog.spend_total``): settled
    costs, rows left reserved by a crash and admitted failures that may have been billed."""
    return Spend(*spend_total(conn, per_usd=NANO_PER_USD))


def spend_by_conversation(conn: duckdb.DuckDBPyConnection) -> dict[int, Spend]:
    """The same accounting as ``spend_from_log``, per conversation (rows with a conv_id)."""
    return {c: Spend(*row) for c, row in spend_by(conn, "conv_id", per_usd=NANO_PER_USD).items()}
