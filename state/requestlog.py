"""The request log: every attempt is logged before it is sent and settled after.

This is the dispatcher's Accounting: ``reserve`` commits the attempt's row (status 'reserved')
before the request goes out, so after a crash every attempt whose outcome is unknown is on
record; ``settle`` and ``release`` update it in the next flush. Rows go through the writer's
``JournalBatcher`` (state/batcher.py), shared with the run store, so many attempts are logged by
one statement. Prices and caps plug in through ``CostModel`` and ``Guard`` (the budget's ledger).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

import duckdb

from engine.chat import ChatRequest, ChatResult, Usage
from engine.errors import RequestError
from engine.records import parse_request_key
from state import journal
from state.batcher import JournalBatcher

__all__ = ["CostModel", "FreeCosts", "Guard", "RequestLog", "Ticket"]

log = logging.getLogger(__name__)


class CostModel(Protocol):
    """Prices requests in USD."""

    def worst_case(self, request: ChatRequest) -> float: ...

    def actual(self, usage: Usage) -> float: ...


class Guard(Protocol):
    """Keeps settled + reserved within the caps (the budget ledger implements it)."""

    def reserve(self, ticket: Ticket) -> None:
        """Raises BudgetExhausted when the ticket would pass a cap."""
        ...

    def settle(self, ticket: Ticket, usd: float, tokens: int) -> None: ...

    def release(self, ticket: Ticket, *, admitted: bool, error_class: str | None = None) -> None:
        """The attempt failed; ``error_class`` says how (some failures are never billed)."""
        ...


class FreeCosts:
    """The CostModel of an unpriced model with no USD cap: every request costs nothing."""

    def worst_case(self, request: ChatRequest) -> float:
        return 0.0

    def actual(self, usage: Usage) -> float:
        return 0.0


@dataclass(frozen=True, slots=True)
class Ticket:
    """One attempt: its id in the request log and what it reserved."""

    request_id: int
    reserved_usd: float
    reserved_tokens: int


class RequestLog:
    """The dispatcher's Accounting, backed by the run's request table."""

    def __init__(
        self,
        batcher: JournalBatcher,
        *,
        model: str,
        next_request_id: int,
        costs: CostModel | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._batcher = batcher
        self._model = model
        self._next_id = next_request_id
        self._costs: CostModel = costs or FreeCosts()
        self._guard = guard

    @staticmethod
    def next_id(conn: duckdb.DuckDBPyConnection) -> int:
        row = conn.execute("SELECT coalesce(max(request_id), 0) + 1 FROM requests").fetchone()
        return int(row[0]) if row else 1

    async def reserve(self, request: ChatRequest, attempt: int) -> Ticket:
        ticket = Ticket(self._next_id, self._costs.worst_case(request), request.charge)
        self._next_id += 1
        if self._guard is not None:
            self._guard.reserve(ticket)
        conv_id, step = parse_request_key(request.key) or (None, None)
        row = journal.RequestRow(
            ticket.request_id,
            conv_id,
            step,
            attempt,
            request.prompt_tokens,
            request.max_tokens,
            ticket.reserved_usd,
            self._model,
        )
        try:
            await asyncio.shield(self._batcher.reserved(row))
        except BaseException:
            # Not sent: give the reservation back. Cancelled while the shielded insert was
            # under way, the row may still be written, so it is closed as never sent, too.
            if self._guard is not None:
                self._guard.release(ticket, admitted=False)
            self._submit(
                journal.FinishedRow(
                    ticket.request_id, status="rejected", cost_usd=0.0, error_class="cancelled"
                )
            )
            raise
        return ticket

    def settle(self, ticket: Ticket, result: ChatResult) -> float:
        usage = result.usage
        cost = self._costs.actual(usage)
        if self._guard is not None:
            self._guard.settle(ticket, cost, usage.total_tokens)
        self._submit(
            journal.FinishedRow(
                ticket.request_id,
                status="ok",
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                latency_ms=result.latency_s * 1000.0,
                cost_usd=cost,
            )
        )
        return cost

    def release(self, ticket: Ticket, error: RequestError | None, *, admitted: bool) -> None:
        if self._guard is not None:
            error_class = error.error_class if error is not None else None
            self._guard.release(ticket, admitted=admitted, error_class=error_class)
        if error is None and admitted:
            # Cancelled mid-flight: the row stays 'reserved' (outcome unknown, counted as spent).
            return
        self._submit(
            journal.FinishedRow(
                ticket.request_id,
                status="error" if admitted else "rejected",
                cost_usd=None if admitted else 0.0,
                error_class=error.error_class if error is not None else "cancelled",
                error=str(error)[:500] if error is not None else None,
            )
        )

    def _submit(self, row: journal.FinishedRow) -> None:
        self._batcher.finished(row).add_done_callback(_log_failure)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not update the request log: %s", future.exception())
