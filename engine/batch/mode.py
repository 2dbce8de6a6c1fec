"""Batch mode put together for one run: the SDK client, the completer and its accounting.

``open_batch_mode`` builds them around the run's writer, batcher and online client, finds the
batches an earlier session left open, and returns what the dispatcher needs (a Completer and
an Accounting). Raises StateError when the store cannot be read, and FatalRunError when the
provider refuses the key while open batches are looked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.batch.accounting import BatchAccounting, Recount, RoutedCosts
from engine.batch.api import BatchAPI, OpenAIBatchAPI
from engine.batch.completer import BatchCompleter, OnlineClient
from engine.batch.planner import FileLimits, SubmitPolicy
from engine.config import BatchConfig, ProviderConfig, Secret
from engine.events import EventHook
from state import batchstore as bs
from state.batcher import JournalBatcher
from state.requestlog import CostModel, Guard, RequestLog
from state.writer import GroupCommitWriter

__all__ = ["BatchMode", "StoreJournal", "cancel_open_batches", "open_batch_mode"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreJournal:
    """The batch store's writes through the run's batcher (after the rows of their flush), reads
    through its writer."""

    def __init__(self, writer: GroupCommitWriter, batcher: JournalBatcher) -> None:
        self._writer = writer
        self._batcher = batcher

    async def write(self, op: Callable[[Any], None]) -> None:
        await asyncio.shield(self._batcher.op(op))

    def write_later(self, op: Callable[[Any], None]) -> None:
        self._batcher.op(op).add_done_callback(_log_failure)

    async def read(self, fn: Callable[[Any], T]) -> T:
        return await self._writer.run(fn)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not update the batch store: %s", future.exception())


@dataclass(frozen=True, slots=True)
class BatchMode:
    completer: BatchCompleter
    accounting: BatchAccounting


def make_api(provider: ProviderConfig, base_url: str, api_key: Secret | None) -> OpenAIBatchAPI:
    return OpenAIBatchAPI(
        base_url=base_url,
        api_key=api_key,
        # The key's own header (api_key_header, Azure's api-key) beside the SDK's Bearer one.
        headers={
            **provider.headers,
            **(provider.key_headers(base_url, api_key) if api_key else {}),
        },
        query=provider.query,
        timeout_s=provider.total_timeout_s or 120.0,
    )


@contextlib.asynccontextmanager
async def open_batch_mode(
    settings: BatchConfig,
    *,
    provider: ProviderConfig,
    base_url: str,
    api_key: Secret | None,
    online: OnlineClient,
    writer: GroupCommitWriter,
    batcher: JournalBatcher,
    model: str,
    next_request_id: int,
    batch_costs: CostModel,
    online_costs: CostModel,
    guard: Guard | None,
    unfinished: int,
    recount: Recount | None = None,
    hooks: EventHook,
    api: BatchAPI | None = None,
) -> AsyncIterator[BatchMode]:
    """Batch mode for the duration of the block; on exit the loops stop, batches keep running."""
    owned = make_api(provider, base_url, api_key) if api is None else None
    completer = BatchCompleter(
        api if api is not None else owned,  # type: ignore[arg-type]
        online,
        StoreJournal(writer, batcher),
        policy=SubmitPolicy(settings.max_lines, settings.linger_s, settings.quiet_s),
        limits=FileLimits(settings.max_lines, settings.max_bytes),
        poll_min_s=settings.poll_min_s,
        poll_max_s=settings.poll_max_s,
        finish_online_below=settings.finish_online_below,
        hooks=hooks,
    )
    costs = RoutedCosts(online_costs, batch_costs)
    request_log = RequestLog(
        batcher, model=model, next_request_id=next_request_id, costs=costs, guard=guard
    )
    accounting = BatchAccounting(request_log, costs, completer, batcher, recount)
    try:
        await completer.start(unfinished)
        accounting.release_abandoned()
        yield BatchMode(completer, accounting)
    finally:
        await completer.close()
        if owned is not None:
            await owned.aclose()


async def cancel_open_batches(api: BatchAPI, writer: GroupCommitWriter) -> list[tuple[str, str]]:
    """Cancel every batch of the run still open on the provider: ``(batch id, status)`` each.

    The submissions stay open in the store: the next ``m2l run`` collects what the batches
    finished and sends the rest again. Raises a RequestError when the provider refuses.
    """
    await writer.run(bs.ensure_tables)
    tag = await writer.run(bs.run_tag)
    subs = await writer.run(bs.open_submissions)
    out = []
    for sub in subs:
        batch_id = sub.batch_id
        if batch_id is None and sub.state == "uploaded":
            since = int(sub.created_at.replace(tzinfo=dt.UTC).timestamp()) - 600
            found = await api.find({"m2l_run": tag, "m2l_submission": str(sub.sub_id)}, since=since)
            if found is not None:
                batch_id = found.id
                await writer.run(bs.batch_created(sub.sub_id, found.id, found.status))
        if batch_id is None:
            continue
        info = await api.retrieve(batch_id)
        if not info.final:
            info = await api.cancel(batch_id)
        out.append((batch_id, info.status))
    return out


def describe(by_status: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {status or 'not created'}" for status, n in sorted(by_status.items()))
