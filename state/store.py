"""The run store as the scheduler sees it: async methods over the run's journal batcher."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from engine.config import StoreConfig
from engine.records import Conversation
from state import journal
from state.batcher import JournalBatcher
from state.schema import release_cache
from state.writer import GroupCommitWriter

__all__ = ["RunStore"]


class RunStore:
    """Loads conversations and records their steps; every write goes through the one writer."""

    __slots__ = ("batcher", "store", "writer")

    def __init__(
        self, writer: GroupCommitWriter, batcher: JournalBatcher, store: StoreConfig | None = None
    ) -> None:
        self.writer = writer
        self.batcher = batcher  # shared with the request log, so their rows commit together
        self.store = store or StoreConfig()

    async def load(self, statuses: Sequence[str], after: int, limit: int) -> list[Conversation]:
        def op(conn: journal.Conn) -> list[Conversation]:
            # A run never reads back what it wrote, yet DuckDB would cache all of it up to
            # memory_limit: released at each batch, the process stays the same size from the
            # first batch to the last (bench/scale.py measures it).
            release_cache(conn, self.store)
            return journal.load_conversations(conn, statuses=statuses, after=after, limit=limit)

        return await self.writer.run(op)

    async def record_step(self, conv: Conversation) -> None:
        await asyncio.shield(self.batcher.step(conv))

    async def record_rejection(
        self,
        conv: Conversation,
        *,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost: float,
    ) -> None:
        op = journal.record_rejection(
            conv, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost
        )
        await asyncio.shield(self.batcher.op(op))

    async def mark_final(self, conv: Conversation) -> None:
        await asyncio.shield(self.batcher.op(journal.mark_final(conv)))

    async def mark_active(self, conv: Conversation) -> None:
        # Not awaited for durability: a conversation still 'pending' after a crash is simply
        # started again from its committed steps (it has none yet).
        self.batcher.active(conv.plan.conv_id)

    async def flush(self) -> None:
        """Commit every write gathered so far; raises StateError if the writer cannot."""
        await self.batcher.flush()
