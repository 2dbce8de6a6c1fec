"""Batch mode's request log: each attempt reserved at the price of the way it goes, and lines an
earlier session sent settled on the row they were sent under.

``BatchAccounting`` wraps the online request log (state.requestlog.RequestLog). At ``reserve`` it
decides the attempt's route: a line an earlier session left in an open batch is claimed (no new
row, no second send), the run's tail goes online, everything else goes into a batch, and the
worst case is reserved at that route's price (``RoutedCosts``) before the line can join a batch,
so every batch's worst case is held before it is created and a line that would pass the cap
never joins one. ``release`` knows better than the dispatcher whether a line left the machine.
Raises what RequestLog raises (BudgetExhausted, StateError).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from budgets.ledger import ZERO, Spend
from budgets.prices import to_nano
from engine.batch.completer import BatchCompleter, Route
from engine.chat import ChatRequest, ChatResult, Usage
from engine.errors import RequestError
from state.batcher import JournalBatcher
from state.requestlog import (
    CANCELLED,
    AttemptStatus,
    CostModel,
    FinishedRow,
    RequestLog,
    Ticket,
    may_be_billed,
)

__all__ = ["AdoptedTicket", "BatchAccounting", "Recount", "RoutedCosts"]

log = logging.getLogger(__name__)


class RoutedCosts:
    """A CostModel that prices at the Batch API's rates or the online ones, as ``online`` says.

    Set ``online`` right before handing a request to the request log: the log prices it at once,
    before it awaits anything, so the flag cannot change under it.
    """

    __slots__ = ("batch", "online", "online_costs")

    def __init__(self, online_costs: CostModel, batch: CostModel) -> None:
        self.online_costs = online_costs
        self.batch = batch
        self.online = False

    def _model(self) -> CostModel:
        return self.online_costs if self.online else self.batch

    def worst_case(self, request: ChatRequest) -> float:
        return self._model().worst_case(request)

    def actual(self, usage: Usage) -> float:
        return self._model().actual(usage)


class Recount(Protocol):
    """The budget's side of an earlier session's attempt settling (BudgetAdmission.recount)."""

    def recount(self, before: Spend, after: Spend, *, reported: Spend = ZERO) -> None: ...


@dataclass(frozen=True, slots=True)
class AdoptedTicket:
    """An attempt an earlier session logged and sent; its row is settled when its line is in."""

    request_id: int


class BatchAccounting:
    """The dispatcher's Accounting in batch mode."""

    def __init__(
        self,
        log: RequestLog,
        costs: RoutedCosts,
        completer: BatchCompleter,
        batcher: JournalBatcher,
        recount: Recount | None = None,
    ) -> None:
        self._log = log
        self._costs = costs
        self._completer = completer
        self._batcher = batcher
        self._recounter = recount  # the budget, which started from the log's spend
        self._online_ids: set[int] = set()

    def release_abandoned(self) -> None:
        """Log the attempts of submissions no batch was made from (found on resume) as never
        sent, so they hold no money in later sessions."""
        for request_id in self._completer.abandoned_attempts():
            self._write(
                FinishedRow(
                    request_id, status=AttemptStatus.REJECTED, cost_usd=0.0, error_class=CANCELLED
                )
            )
            self._recount(request_id, ZERO)  # never sent: the log counts nothing for it

    async def reserve(
        self, request: ChatRequest, attempt: int, *, endpoint: str = "", model: str = ""
    ) -> Ticket | AdoptedTicket:
        adopted = self._completer.claim(request.key)
        if adopted is not None:
            return AdoptedTicket(adopted)
        online = self._completer.tail()
        self._costs.online = online
        ticket = await self._log.reserve(request, attempt, endpoint=endpoint, model=model)
        self._completer.routes[request.key] = Route(online, ticket.request_id)
        if online:
            self._online_ids.add(ticket.request_id)
        return ticket

    def settle(self, ticket: object, result: ChatResult) -> float:
        if isinstance(ticket, AdoptedTicket):
            # Reserved by an earlier session: the ledger counted it as spent at its worst case
            # when this session began, so only the row learns the real cost.
            cost = self._costs.batch.actual(result.usage)
            usage = result.usage
            self._write(
                FinishedRow(
                    ticket.request_id,
                    status=AttemptStatus.OK,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    cached_tokens=usage.cached_tokens,
                    latency_ms=result.latency_s * 1000.0,
                    cost_usd=cost,
                )
            )
            done = Spend(to_nano(cost), usage.total_tokens, 1)
            self._recount(ticket.request_id, done, reported=done)  # RequestDone reports it
            self._completer.settled(ticket.request_id)
            return cost
        assert isinstance(ticket, Ticket)
        self._costs.online = ticket.request_id in self._online_ids
        cost = self._log.settle(ticket, result)
        self._done(ticket.request_id)
        return cost

    def release(self, ticket: object, error: RequestError | None, *, admitted: bool) -> None:
        if isinstance(ticket, AdoptedTicket):
            if error is None and admitted:
                return  # stopped while its batch runs: the row stays reserved for a resume
            error_class = error.error_class if error is not None else CANCELLED
            self._write(
                FinishedRow(
                    ticket.request_id,
                    status=AttemptStatus.ERROR,
                    error_class=error_class,
                    error=str(error)[:500] if error is not None else None,
                )
            )
            if not may_be_billed(error_class):  # else the log keeps it at its worst case
                self._recount(ticket.request_id, Spend(0, 0, 1))
            self._completer.settled(ticket.request_id)
            return
        assert isinstance(ticket, Ticket)
        online = ticket.request_id in self._online_ids
        if not online and not self._completer.was_sent(ticket.request_id):
            admitted = False  # it never joined a recorded submission: it left nothing behind
        self._costs.online = online
        self._log.release(ticket, error, admitted=admitted)
        if error is not None or not admitted:
            self._done(ticket.request_id)

    def _recount(self, request_id: int, after: Spend, *, reported: Spend = ZERO) -> None:
        """Trade the worst case an earlier session's attempt held for what the log now counts
        for it, so a resumed session's budget is not held at the worst case all along."""
        held = self._completer.carried(request_id)
        if held is not None and self._recounter is not None:
            self._recounter.recount(Spend(held[0], held[1], 1), after, reported=reported)

    def _done(self, request_id: int) -> None:
        self._online_ids.discard(request_id)
        self._completer.settled(request_id)

    def _write(self, row: FinishedRow) -> None:
        self._batcher.finished(row).add_done_callback(_log_failure)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not update the request log: %s", future.exception())
