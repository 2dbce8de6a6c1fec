"""The run store as the scheduler sees it: async methods over the group-commit writer."""

from __future__ import annotations

from collections.abc import Sequence

from engine.conversation import Conversation
from state import journal
from state.writer import GroupCommitWriter

__all__ = ["RunStore"]


class RunStore:
    """Loads conversations and records their steps; every write goes through the one writer."""

    __slots__ = ("writer",)

    def __init__(self, writer: GroupCommitWriter) -> None:
        self.writer = writer

    async def load(self, statuses: Sequence[str], after: int, limit: int) -> list[Conversation]:
        def op(conn: journal.Conn) -> list[Conversation]:
            return journal.load_conversations(conn, statuses=statuses, after=after, limit=limit)

        return await self.writer.run(op)

    async def record_step(self, conv: Conversation) -> None:
        await self.writer.run(journal.record_step(conv))

    async def mark_final(self, conv: Conversation) -> None:
        await self.writer.run(journal.mark_final(conv))

    async def mark_active(self, conv: Conversation) -> None:
        # Not awaited for durability: a conversation still 'pending' after a crash is simply
        # started again from its committed steps (it has none yet).
        self.writer.submit(journal.mark_active([conv.plan.conv_id]))
