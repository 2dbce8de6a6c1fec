"""The journal batcher: a run's small writes gathered on the event loop, committed in flushes.

A step, an attempt logged, an attempt settled, a conversation started: each would be one DuckDB
statement and one commit if written alone, at ~0.7 ms of CPU each. The batcher hands the writer
one op per flush, which writes each kind of row with one statement. Flushes are at most
``linger_s`` apart (``busy_linger_s`` while the run says waiting costs nothing, see
``pace_by``); the first write after a quiet spell flushes at once. Awaiting a write still
returns only once it is committed, so a step is durable before its conversation advances.
Raises StateError (engine.errors) as the writer does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from engine.errors import StateError
from engine.records import Conversation
from state import journal, requestlog
from state.writer import GroupCommitWriter

__all__ = ["BUSY_LINGER_S", "LINGER_S", "JournalBatcher", "flush_delay"]

# A DuckDB statement costs ~0.7 ms of CPU and a commit ~0.5 ms whatever they hold, so under
# load the writer should commit many rows at a time rather than as soon as it can: 50 ms
# between flushes keeps checkpointing a small share of a step's CPU (bench/conversations.py)
# and adds at most that much to a step that waits for its commit.
LINGER_S: Final = 0.05

# While requests queue at the rate limiter, a flush that waits longer delays nothing that
# matters: the limiter, not the store, sets the pace, and the requests a flush holds back are
# sent as soon as it commits, still before the limiter would have let the next ones go. A flush
# costs ~5 ms of CPU whatever it holds (four statements and a commit), so at 35 replies/s under
# a TPM limit, flushing every 50 ms cost 3 ms of CPU per reply (bench/runcpu.py); every 250 ms
# holds five times as many rows per flush.
BUSY_LINGER_S: Final = 0.25


def flush_delay(last: float, now: float, linger_s: float) -> float:
    """Seconds until the next flush may start: ``linger_s`` after the last one, 0 if past."""
    return max(0.0, last + linger_s - now)


def _never() -> bool:
    return False


class _Group:
    """The rows of one flush, written by one op in a fixed order (inserts before updates)."""

    __slots__ = ("active", "extra", "finished", "future", "reserved", "steps")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.active: list[int] = []
        self.reserved: list[requestlog.RequestRow] = []
        self.finished: list[requestlog.FinishedRow] = []
        self.steps: list[Conversation] = []
        self.extra: list[Callable[[journal.Conn], None]] = []

    def __call__(self, conn: journal.Conn) -> None:
        # Runs on the writer thread; the group is sealed by then, so a rerun writes the same rows.
        journal.write_active(conn, self.active)
        requestlog.write_attempts(conn, self.reserved, self.finished)
        journal.write_steps(conn, self.steps)
        for op in self.extra:
            op(conn)


class JournalBatcher:
    """Gathers a run's journal writes on the event loop and commits them in flushes.

    Each method returns a future resolved once the write is committed (or failed with the
    writer's StateError); awaiting it with ``asyncio.shield`` leaves the other writers of the
    same flush alone if the caller is cancelled.
    """

    __slots__ = (
        "__weakref__", "_busy", "_busy_linger_s", "_full", "_group", "_handle", "_last",
        "_linger_s", "_writer",
    )  # fmt: skip

    def __init__(
        self,
        writer: GroupCommitWriter,
        *,
        linger_s: float = LINGER_S,
        busy_linger_s: float = BUSY_LINGER_S,
    ) -> None:
        self._writer = writer
        self._linger_s = linger_s
        self._busy_linger_s = max(busy_linger_s, linger_s)
        self._busy: Callable[[], bool] = _never
        self._full: Callable[[int], bool] | None = None
        self._group: _Group | None = None
        self._handle: asyncio.Handle | None = None
        self._last = float("-inf")  # loop time of the last flush

    def pace_by(self, busy: Callable[[], bool]) -> None:
        """Flush at most every ``busy_linger_s`` while ``busy()`` is true (asked when a flush's
        first write arrives): the run passes "requests are queued at the rate limiter"."""
        self._busy = busy

    def flush_when(self, full: Callable[[int], bool]) -> None:
        """Flush without waiting out the linger once ``full(attempts reserved in the flush)``:
        m2l requests passes "they fill half the concurrency gate" (each waits for the flush)."""
        self._full = full

    def active(self, conv_id: int) -> asyncio.Future[None]:
        group = self._current()
        group.active.append(conv_id)
        return group.future

    def reserved(self, row: requestlog.RequestRow) -> asyncio.Future[None]:
        group = self._current()
        group.reserved.append(row)
        handle, full = self._handle, self._full
        # Only a flush still waiting out its linger (a TimerHandle) is moved up, and only once.
        if full is not None and type(handle) is asyncio.TimerHandle and full(len(group.reserved)):
            handle.cancel()
            self._handle = asyncio.get_running_loop().call_soon(self._flush)
        return group.future

    def finished(self, row: requestlog.FinishedRow) -> asyncio.Future[None]:
        group = self._current()
        group.finished.append(row)
        return group.future

    def step(self, conv: Conversation) -> asyncio.Future[None]:
        group = self._current()
        group.steps.append(conv)
        return group.future

    def op(self, op: Callable[[journal.Conn], None]) -> asyncio.Future[None]:
        """Any other write, run after the rows of its flush."""
        group = self._current()
        group.extra.append(op)
        return group.future

    def gathering(self) -> asyncio.Future[None] | None:
        """The future of the flush still gathering writes (what the next write would return),
        or None when none is open: a caller may keep adding to an op it registered in it."""
        return self._group.future if self._group is not None else None

    async def flush(self) -> None:
        """Hand over what is gathered now and return once everything before is committed.

        Raises StateError if the writer is closed or broken.
        """
        if self._handle is not None:
            self._handle.cancel()
        self._flush()
        await self._writer.flush()

    def _current(self) -> _Group:
        if self._group is not None:
            return self._group
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        future.add_done_callback(_retrieve)
        self._group = _Group(future)
        linger = self._busy_linger_s if self._busy() else self._linger_s
        delay = flush_delay(self._last, loop.time(), linger)
        # call_soon even when idle: writes made in the same loop pass share the flush.
        if delay > 0:
            self._handle = loop.call_later(delay, self._flush)
        else:
            self._handle = loop.call_soon(self._flush)
        return self._group

    def _flush(self) -> None:
        group, self._group, self._handle = self._group, None, None
        if group is None:
            return
        self._last = asyncio.get_running_loop().time()
        try:
            committed = self._writer.submit(group)
        except StateError as exc:
            group.future.set_exception(exc)
            return
        committed.add_done_callback(lambda done: _pass_on(done, group.future))


def _pass_on(done: asyncio.Future[None], future: asyncio.Future[None]) -> None:
    if future.done():
        return
    if done.cancelled():
        future.cancel()
    elif (exc := done.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(None)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a flush's error as seen: its writers hear of it (or log it) through their own
    futures; a flush nobody awaits (only fire-and-forget writes) must not warn at exit."""
    if not future.cancelled():
        future.exception()
