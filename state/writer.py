"""One writer thread that owns the run's DuckDB connection and commits queued ops in groups.

The event loop never touches DuckDB: callers submit ops (functions of the connection) to a
queue and await a future that resolves once the op's transaction has committed. Ops queued
while a transaction is being written join the next one, so an idle store answers in one
commit and a busy store commits many ops at once. Raises StateError (engine.errors) when the
file cannot be opened, when the writer is closed, and when a commit fails (the writer is then
broken for good: every pending and later op fails with the same StateError).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeAlias, TypeVar, cast

import duckdb

from engine.config import StoreConfig
from engine.errors import StateError
from state.schema import open_store, table_for_error

__all__ = ["GroupCommitWriter", "Op", "WriterStats"]

T = TypeVar("T")

Op: TypeAlias = Callable[[duckdb.DuckDBPyConnection], T]
"""Runs on the writer thread inside its batch's transaction; reruns if its batch is retried."""

# A transaction stops taking more ops once its work has lasted this long, so one commit never
# delays the ops behind it by much more than this.
MAX_BATCH_SECONDS: Final = 0.05


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of the writer: mean_commit_ms is the mean time of one batch, BEGIN to COMMIT."""

    queued: int
    ops_committed: int
    batches: int
    last_batch_ops: int
    mean_commit_ms: float
    broken: str | None


@dataclass(slots=True)
class _Pending:
    """One submitted op and the future its caller awaits."""

    op: Op[Any]
    future: asyncio.Future[Any]
    settled: bool = False  # set on the writer thread; future.done() may only be read on the loop


class _Close:
    """The queue item that tells the writer thread to close the connection and stop."""


_CLOSE: Final = _Close()


class _WriteFailed(Exception):
    """BEGIN, COMMIT or ROLLBACK failed: the file can no longer be written."""


# (future, True, result) or (future, False, exception): what the loop sets on the future.
_Outcome: TypeAlias = tuple[asyncio.Future[Any], bool, Any]

# The same DuckDB file opened twice in one process shares one database instance, so its lock
# does not stop a second writer here; this set does.
_open_paths: set[Path] = set()
_open_paths_lock = threading.Lock()


class GroupCommitWriter:
    """Serialise every write to one DuckDB file on one thread, committing queued ops together.

    Use it as ``async with GroupCommitWriter(path) as writer: await writer.run(op)``.
    submit() and run() must be called from the event loop that opened the writer.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_batch_ops: int = 512,
        noop: bool = False,
        create: bool = True,
        max_batch_seconds: float = MAX_BATCH_SECONDS,
        store: StoreConfig | None = None,
    ) -> None:
        if max_batch_ops < 1:
            raise ValueError(f"max_batch_ops must be at least 1, got {max_batch_ops}")
        self._path = path
        self._max_batch_ops = max_batch_ops
        self._max_batch_seconds = max_batch_seconds
        self._noop = noop
        self._create = create
        self._store = store
        self._queue: queue.SimpleQueue[_Pending | _Close] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._opened = False
        self._closing = False
        self._broken: str | None = None
        # Written by the writer thread, read by the loop; plain ints are safe under the GIL
        # and a snapshot that is one batch stale is fine for statistics.
        self._submitted = 0
        self._settled = 0
        self._ops_committed = 0
        self._batches = 0
        self._last_batch_ops = 0
        self._commit_seconds = 0.0

    def __repr__(self) -> str:
        state = "broken" if self._broken else "closed" if self._closing else "open"
        return f"<GroupCommitWriter {self._path} {state}>"

    async def __aenter__(self) -> GroupCommitWriter:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open (or create) the state file on a new writer thread.

        Raises StateError if the file is held by another process or writer, is damaged, has
        another schema version, or (with create=False) does not exist.
        """
        if self._opened or self._closing:
            raise StateError(f"the state writer for {self._path} was opened before; make a new one")
        self._loop = asyncio.get_running_loop()
        self._opened = True
        if self._noop:
            return
        key = self._path.absolute()
        with _open_paths_lock:
            if key in _open_paths:
                self._closing = True
                raise StateError(
                    f"run directory {self._path.parent} is already open in this m2l process; "
                    "close its other state writer first"
                )
            _open_paths.add(key)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._stopped = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(ready, key), name=f"m2l-state-writer:{self._path}", daemon=True
        )
        # Daemon: durability comes from each COMMIT, not from the thread's exit, and a writer
        # someone forgot to close must not hang the interpreter at exit.
        self._thread.start()
        try:
            await asyncio.shield(ready)
        except BaseException:
            self._closing = True
            self._queue.put(_CLOSE)  # if cancelled while opening, the thread closes the file
            raise

    def submit(self, op: Op[T]) -> asyncio.Future[T]:
        """Queue op for the next transaction and return a future resolved after its commit.

        Never blocks. Raises StateError at once if the writer is not open, closed or broken.
        """
        if self._broken is not None:
            raise StateError(self._broken)
        if self._closing:
            raise StateError(
                f"the state writer for {self._path} is closed; submit before closing it"
            )
        if not self._opened or self._loop is None:
            raise StateError(
                f"the state writer for {self._path} is not open; use it inside `async with`"
            )
        future: asyncio.Future[T] = self._loop.create_future()
        self._submitted += 1
        if self._noop:
            self._settled += 1
            self._ops_committed += 1
            future.set_result(cast(T, None))
            return future
        self._queue.put(_Pending(op, future))
        return future

    async def run(self, op: Op[T]) -> T:
        """Run op in the writer's next transaction and return its result once committed.

        Cancelling the awaiting task does not skip the op: it is committed anyway. Raises
        StateError when the writer is broken or closed or DuckDB rejects the op; an exception
        raised by op's own code propagates as it is.
        """
        return await self.submit(op)

    async def flush(self) -> None:
        """Return once everything submitted before this call is committed.

        Raises StateError if the writer is closed or broken.
        """
        await self.submit(_barrier)

    async def aclose(self) -> None:
        """Commit everything queued, close the file and stop the thread; safe to call twice.

        A broken writer closes quietly (its ops already carry the error). Cancelling the
        caller does not interrupt the close.
        """
        self._closing = True
        if self._thread is None or self._stopped is None:
            return
        if not self._stopped.done():
            self._queue.put(_CLOSE)  # a second put is harmless: the thread stops at the first
        await asyncio.shield(self._stopped)
        self._thread.join()  # the thread has signalled its last act, so this returns at once

    def statistics(self) -> WriterStats:
        """Take a snapshot of the queue depth, commit counts and timing."""
        batches = self._batches
        return WriterStats(
            queued=self._submitted - self._settled,
            ops_committed=self._ops_committed,
            batches=batches,
            last_batch_ops=self._last_batch_ops,
            mean_commit_ms=1000.0 * self._commit_seconds / batches if batches else 0.0,
            broken=self._broken,
        )

    # --- writer thread ---------------------------------------------------------------------

    def _main(self, ready: asyncio.Future[None], key: Path) -> None:
        """Open the store, serve the queue until told to close, then close the store."""
        assert self._stopped is not None
        try:
            conn = open_store(self._path, create=self._create, store=self._store)
        except BaseException as exc:
            # Release the path before the caller hears of the failure, so it may retry at once.
            _release(key)
            self._post(_fail_opening, ready, exc)
            self._post(_resolve_opening, self._stopped)
            return
        self._post(_resolve_opening, ready)
        try:
            self._serve(conn)
        finally:
            # Nothing is left to commit here: every op was settled before this point.
            with contextlib.suppress(duckdb.Error):
                conn.close()
            _release(key)
            self._post(_resolve_opening, self._stopped)

    def _serve(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Take ops off the queue batch by batch until the close marker arrives."""
        taken: list[_Pending] = []  # ops off the queue but not yet settled
        while True:
            item = self._queue.get()
            if isinstance(item, _Close):
                return
            taken = [item]
            try:
                if self._broken is None:
                    if self._run_draining(conn, taken):
                        return
                    continue
            except _WriteFailed as exc:
                self._broken = (
                    f"could not write the state database at {self._path}: {exc}. Free disk "
                    "space (or fix the cause) and run the same command again: everything "
                    "committed before this is kept and the run resumes from it."
                )
            except BaseException as exc:  # a bug here must not leave futures hanging
                self._broken = f"the state writer for {self._path} stopped: {exc!r}"
            broken = StateError(self._broken)
            self._settle([(p, False, broken) for p in taken if not p.settled])

    def _run_draining(self, conn: duckdb.DuckDBPyConnection, taken: list[_Pending]) -> bool:
        """Run taken[0] and whatever else is queued in one transaction; True if close was seen.

        Raises _WriteFailed if the file cannot be written.
        """
        started = time.perf_counter()
        _execute(conn, "BEGIN TRANSACTION")
        results: list[Any] = []
        seen_close = False
        while True:
            pending = taken[-1]
            try:
                results.append(pending.op(conn))
            except Exception as exc:
                _execute(conn, "ROLLBACK")
                if len(taken) == 1:
                    self._settle([(pending, False, self._op_error(pending.op, exc))])
                    return seen_close
                # Rerun the ops that succeeded as one transaction, then the faulty op alone,
                # so only its future gets the error (DuckDB has no savepoints).
                self._run_group(conn, taken[:-1])
                self._run_group(conn, taken[-1:])
                return seen_close
            if len(taken) >= self._max_batch_ops:
                break
            if time.perf_counter() - started >= self._max_batch_seconds:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Close):
                seen_close = True
                break
            taken.append(item)
        self._commit(conn, taken, results, started)
        return seen_close

    def _run_group(self, conn: duckdb.DuckDBPyConnection, group: list[_Pending]) -> None:
        """Run group in one transaction; split it around a faulty op until each error is its own.

        Raises _WriteFailed if the file cannot be written.
        """
        if not group:
            return
        started = time.perf_counter()
        _execute(conn, "BEGIN TRANSACTION")
        results: list[Any] = []
        for index, pending in enumerate(group):
            try:
                results.append(pending.op(conn))
            except Exception as exc:
                _execute(conn, "ROLLBACK")
                if len(group) == 1:
                    self._settle([(pending, False, self._op_error(pending.op, exc))])
                    return
                self._run_group(conn, group[:index])
                self._run_group(conn, [pending])
                self._run_group(conn, group[index + 1 :])
                return
        self._commit(conn, group, results, started)

    def _commit(
        self,
        conn: duckdb.DuckDBPyConnection,
        group: list[_Pending],
        results: list[Any],
        started: float,
    ) -> None:
        """Commit the open transaction and settle group's futures with results.

        Raises _WriteFailed if COMMIT fails for any reason but a constraint checked at commit.
        """
        try:
            conn.execute("COMMIT")
        except duckdb.Error as exc:
            if not _is_constraint(exc):
                raise _WriteFailed(str(exc)) from exc
            _rollback_if_open(conn)
            if len(group) == 1:
                self._settle([(group[0], False, self._op_error(group[0].op, exc))])
                return
            for pending in group:
                self._run_group(conn, [pending])
            return
        self._batches += 1
        self._last_batch_ops = len(group)
        self._ops_committed += len(group)
        self._commit_seconds += time.perf_counter() - started
        self._settle([(p, True, r) for p, r in zip(group, results, strict=True)])

    def _op_error(self, op: Op[Any], exc: Exception) -> BaseException:
        """Translate a DuckDB error from op into StateError; let op's own exceptions through."""
        if not isinstance(exc, duckdb.Error):
            return exc
        table = table_for_error(str(exc))
        where = f" on table {table}" if table else ""
        name = getattr(op, "__qualname__", None) or type(op).__name__
        advice = (
            " (the row breaks the table's rules: this is a bug in m2l, please report it)"
            if isinstance(exc, duckdb.ConstraintException)
            else ""
        )
        error = StateError(f"state database {self._path}: {name} failed{where}: {exc}{advice}")
        error.__cause__ = exc
        return error

    def _settle(self, outcomes: list[tuple[_Pending, bool, Any]]) -> None:
        """Hand outcomes to the loop, which resolves their futures; count them as settled."""
        for pending, _, _ in outcomes:
            pending.settled = True
        self._settled += len(outcomes)
        self._post(_resolve_all, [(p.future, ok, value) for p, ok, value in outcomes])

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        """Run callback(*args) on the loop thread; drop it if the loop is gone (nobody waits)."""
        assert self._loop is not None
        # A closed loop raises RuntimeError: no one is left to await these futures.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)


def _barrier(conn: duckdb.DuckDBPyConnection) -> None:
    """Do nothing; flush() waits for this op to be committed, hence for everything before it."""


def _execute(conn: duckdb.DuckDBPyConnection, statement: str) -> None:
    """Run a transaction-control statement; raises _WriteFailed if DuckDB refuses it."""
    try:
        conn.execute(statement)
    except duckdb.Error as exc:
        raise _WriteFailed(str(exc)) from exc


def _rollback_if_open(conn: duckdb.DuckDBPyConnection) -> None:
    """Roll back after a failed COMMIT, which may or may not have ended the transaction."""
    try:
        conn.execute("ROLLBACK")
    except duckdb.TransactionException:
        pass  # DuckDB already ended it
    except duckdb.Error as exc:
        raise _WriteFailed(str(exc)) from exc


def _release(key: Path) -> None:
    """Let another writer in this process open the file at key."""
    with _open_paths_lock:
        _open_paths.discard(key)


def _is_constraint(exc: duckdb.Error) -> bool:
    """Tell whether a COMMIT failed because of a row's constraint rather than the file."""
    return isinstance(exc, duckdb.ConstraintException) or "constraint" in str(exc).lower()


def _resolve_opening(future: asyncio.Future[None]) -> None:
    """Resolve a lifecycle future on the loop unless its waiter has gone."""
    if not future.done():
        future.set_result(None)


def _fail_opening(future: asyncio.Future[None], exc: BaseException) -> None:
    """Fail the opening future on the loop unless its waiter has gone."""
    if not future.done():
        future.set_exception(exc)


def _resolve_all(outcomes: list[_Outcome]) -> None:
    """Resolve each op's future; a future whose caller was cancelled is left as it is."""
    for future, ok, value in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
