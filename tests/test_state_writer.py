"""Tests for state.writer.GroupCommitWriter on real DuckDB files in tmp_path."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest

from engine.errors import StateError
from state.writer import GroupCommitWriter

Conn = duckdb.DuckDBPyConnection


def state_path(tmp_path: Path) -> Path:
    """Return where a run named r1 keeps its state file."""
    return tmp_path / "out" / "r1" / "state.duckdb"


def insert_seed(seed_id: int) -> Callable[[Conn], int]:
    """Return an op that inserts one seed and returns its transaction id."""

    def op(conn: Conn) -> int:
        conn.execute(
            "INSERT INTO seeds (seed_id, instruction, language, language_code, task) "
            "VALUES (?, 'Explain tides', 'Yoruba', 'yo', 'qa')",
            [seed_id],
        )
        row = conn.execute("SELECT txid_current()").fetchone()
        assert row is not None
        return int(row[0])

    return op


def count_seeds(conn: Conn) -> int:
    """Return how many seeds the store holds."""
    row = conn.execute("SELECT count(*) FROM seeds").fetchone()
    assert row is not None
    return int(row[0])


def stored_seed_ids(path: Path) -> list[int]:
    """Read the seed ids committed to the file at path with an independent connection."""
    conn = duckdb.connect(str(path), read_only=True)
    try:
        return [int(r[0]) for r in conn.execute("SELECT seed_id FROM seeds ORDER BY 1").fetchall()]
    finally:
        conn.close()


class Gate:
    """An op that holds the writer thread until released, so later ops pile up in the queue."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def __call__(self, conn: Conn) -> None:
        self._event.wait(timeout=60)

    def release(self) -> None:
        self._event.set()


@pytest.mark.anyio
async def test_ops_commit_in_order_and_survive_reopen(tmp_path: Path) -> None:
    """Ops run and resolve in submission order, and their rows are in the file after close."""
    path = state_path(tmp_path)
    resolved: list[int] = []
    async with GroupCommitWriter(path) as writer:
        futures = []
        for i in range(30):
            futures.append(writer.submit(insert_seed(i)))
            count = writer.submit(count_seeds)
            count.add_done_callback(lambda f: resolved.append(f.result()))
            futures.append(count)
        await asyncio.gather(*futures)
    assert resolved == list(range(1, 31))
    assert stored_seed_ids(path) == list(range(30))


@pytest.mark.anyio
async def test_concurrent_submits_share_transactions(tmp_path: Path) -> None:
    """Ops queued while the writer is busy commit together: fewer transactions than ops."""
    gate = Gate()
    # A generous time cap keeps this test about grouping, whatever the machine's load.
    async with GroupCommitWriter(state_path(tmp_path), max_batch_seconds=60) as writer:
        held = writer.submit(gate)
        futures = [writer.submit(insert_seed(i)) for i in range(200)]
        assert writer.statistics().queued == 201
        gate.release()
        txids = await asyncio.gather(*futures)
        await held
        stats = writer.statistics()
    assert len(set(txids)) == 1
    assert stats.batches == 1
    assert stats.last_batch_ops == 201
    assert stats.ops_committed == 201
    assert stats.queued == 0
    assert stats.broken is None
    assert stats.mean_commit_ms > 0


@pytest.mark.anyio
async def test_a_batch_never_exceeds_max_batch_ops(tmp_path: Path) -> None:
    """With max_batch_ops=8, no transaction holds more than 8 ops."""
    gate = Gate()
    path = state_path(tmp_path)
    async with GroupCommitWriter(path, max_batch_ops=8, max_batch_seconds=60) as writer:
        held = writer.submit(gate)
        futures = [writer.submit(insert_seed(i)) for i in range(40)]
        gate.release()
        txids = await asyncio.gather(*futures)
        await held
        assert writer.statistics().batches == 6
        assert writer.statistics().last_batch_ops == 1
    # The gate shares the first transaction with 7 inserts; then 8 at a time.
    assert sorted(collections.Counter(txids).values()) == [1, 7, 8, 8, 8, 8]


@pytest.mark.anyio
async def test_a_batch_stops_taking_ops_after_its_time_cap(tmp_path: Path) -> None:
    """With max_batch_seconds=0 each op gets its own transaction, however many are queued."""
    gate = Gate()
    async with GroupCommitWriter(state_path(tmp_path), max_batch_seconds=0) as writer:
        held = writer.submit(gate)
        futures = [writer.submit(insert_seed(i)) for i in range(10)]
        gate.release()
        txids = await asyncio.gather(*futures)
        await held
        assert writer.statistics().batches == 11
    assert len(set(txids)) == 10


@pytest.mark.anyio
async def test_submit_returns_while_the_writer_thread_is_busy(tmp_path: Path) -> None:
    """submit() only queues: it returns pending futures while the thread is held by an op."""
    gate = Gate()
    async with GroupCommitWriter(state_path(tmp_path)) as writer:
        held = writer.submit(gate)
        futures = [writer.submit(insert_seed(i)) for i in range(5)]
        assert not any(f.done() for f in futures)
        assert writer.statistics().queued == 6
        gate.release()
        await asyncio.gather(held, *futures)


@pytest.mark.anyio
async def test_a_failing_op_fails_only_itself(tmp_path: Path) -> None:
    """A duplicate key and an op's own exception fail only their futures; the rest commit."""
    path = state_path(tmp_path)

    def broken_op(conn: Conn) -> None:
        raise ValueError("op code bug")

    gate = Gate()
    async with GroupCommitWriter(path) as writer:
        held = writer.submit(gate)
        first = writer.submit(insert_seed(1))
        duplicate = writer.submit(insert_seed(1))
        second = writer.submit(insert_seed(2))
        own_error = writer.submit(broken_op)
        third = writer.submit(insert_seed(3))
        gate.release()
        await asyncio.gather(held, first, second, third)
        with pytest.raises(StateError) as caught:
            await duplicate
        with pytest.raises(ValueError, match="op code bug"):
            await own_error
        assert writer.statistics().broken is None
        assert await writer.run(count_seeds) == 3
    message = str(caught.value)
    assert str(path) in message
    assert "on table seeds" in message
    assert "seed_id: 1" in message
    assert isinstance(caught.value.__cause__, duckdb.ConstraintException)
    assert stored_seed_ids(path) == [1, 2, 3]


@pytest.mark.anyio
async def test_failed_commit_breaks_the_writer_and_keeps_earlier_commits(tmp_path: Path) -> None:
    """When COMMIT cannot write, pending and later ops fail with StateError naming the path."""
    path = state_path(tmp_path)
    async with GroupCommitWriter(path) as writer:
        await writer.run(insert_seed(1))
    wal = path.with_name(path.name + ".wal")
    assert not wal.exists()  # closing checkpointed; the next commit must create the WAL again
    gate = Gate()
    async with GroupCommitWriter(path, max_batch_ops=1) as writer:
        # A directory where DuckDB must create its write-ahead log makes COMMIT fail for real,
        # as a full disk or a vanished directory would.
        wal.mkdir()
        held = writer.submit(gate)
        pending = [writer.submit(insert_seed(i)) for i in range(2, 5)]
        gate.release()
        await held  # it wrote nothing, so its commit did not need the WAL
        # pending[0] fails in its own commit; the others fail while still queued behind it.
        for future in pending:
            with pytest.raises(StateError) as caught:
                await future
            message = str(caught.value)
            assert f"could not write the state database at {path}:" in message
            assert "Free disk space (or fix the cause) and run the same command again" in message
        with pytest.raises(StateError, match="could not write the state database"):
            writer.submit(insert_seed(9))
        with pytest.raises(StateError, match="could not write the state database"):
            await writer.flush()
        stats = writer.statistics()
        assert stats.broken is not None and str(path) in stats.broken
        assert stats.queued == 0
    wal.rmdir()
    assert stored_seed_ids(path) == [1]


@pytest.mark.anyio
async def test_aclose_flushes_and_is_idempotent(tmp_path: Path) -> None:
    """aclose commits everything queued, can be called again, and later submits are refused."""
    path = state_path(tmp_path)
    writer = GroupCommitWriter(path)
    await writer.open()
    futures = [writer.submit(insert_seed(i)) for i in range(25)]
    await writer.aclose()
    assert all(f.done() and f.exception() is None for f in futures)
    await writer.aclose()
    with pytest.raises(StateError, match="is closed"):
        writer.submit(count_seeds)
    assert stored_seed_ids(path) == list(range(25))


@pytest.mark.anyio
async def test_flush_waits_for_earlier_ops(tmp_path: Path) -> None:
    """After flush() returns, every op submitted before it has committed."""
    gate = Gate()
    async with GroupCommitWriter(state_path(tmp_path)) as writer:
        held = writer.submit(gate)
        futures = [writer.submit(insert_seed(i)) for i in range(10)]
        flushing = asyncio.ensure_future(writer.flush())
        await asyncio.sleep(0)
        assert not flushing.done()
        gate.release()
        await flushing
        assert held.done()
        assert all(f.done() for f in futures)


@pytest.mark.anyio
async def test_cancelled_caller_still_commits_its_op(tmp_path: Path) -> None:
    """Cancelling the task awaiting run(op) does not skip the op: it is committed anyway."""
    path = state_path(tmp_path)
    gate = Gate()
    async with GroupCommitWriter(path) as writer:
        held = writer.submit(gate)
        task = asyncio.create_task(writer.run(insert_seed(7)))
        await asyncio.sleep(0)  # let the task submit its op
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.release()
        await held
        await writer.flush()
        assert await writer.run(count_seeds) == 1
    assert stored_seed_ids(path) == [7]


@pytest.mark.anyio
async def test_cancelled_aclose_still_closes(tmp_path: Path) -> None:
    """Cancelling aclose() does not interrupt the close; a second aclose() finishes it."""
    path = state_path(tmp_path)
    gate = Gate()
    writer = GroupCommitWriter(path)
    await writer.open()
    writer.submit(gate)
    last = writer.submit(insert_seed(3))
    closing = asyncio.create_task(writer.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    gate.release()
    await writer.aclose()
    assert last.done()
    assert stored_seed_ids(path) == [3]


@pytest.mark.anyio
async def test_noop_mode_resolves_at_once_and_touches_nothing(tmp_path: Path) -> None:
    """noop=True resolves each future with None at once, never runs ops, creates no file."""
    path = state_path(tmp_path)
    ran: list[int] = []

    def op(conn: Conn) -> int:
        ran.append(1)
        return 1

    async with GroupCommitWriter(path, noop=True) as writer:
        future = writer.submit(op)
        assert future.done() and future.result() is None
        assert await writer.run(op) is None
        await writer.flush()
        assert writer.statistics().queued == 0
    assert ran == []
    assert not path.parent.exists()


@pytest.mark.anyio
async def test_submit_before_open_is_refused(tmp_path: Path) -> None:
    """submit() on a writer that was never opened raises StateError at once."""
    writer = GroupCommitWriter(state_path(tmp_path))
    with pytest.raises(StateError, match="use it inside `async with`"):
        writer.submit(count_seeds)
    await writer.aclose()


@pytest.mark.anyio
async def test_second_writer_in_this_process_is_refused(tmp_path: Path) -> None:
    """A second writer on the same file in this process is refused until the first closes."""
    path = state_path(tmp_path)
    async with GroupCommitWriter(path):
        with pytest.raises(StateError, match="already open in this m2l process"):
            async with GroupCommitWriter(path):
                pass
    async with GroupCommitWriter(path) as writer:
        assert await writer.run(count_seeds) == 0


@pytest.mark.anyio
async def test_corrupt_file_is_refused_unmodified(tmp_path: Path) -> None:
    """Opening a writer on garbage bytes raises the damaged-file StateError and writes nothing."""
    path = state_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(5000))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    mtime = path.stat().st_mtime_ns
    with pytest.raises(StateError, match="is damaged"):
        async with GroupCommitWriter(path):
            pass
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    # The path was released: the same writer class can report the same error again.
    with pytest.raises(StateError, match="is damaged"):
        await GroupCommitWriter(path).open()


@pytest.fixture
def held_by_other_process(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """Yield a state file and the pid of a real subprocess that holds it open for writing."""
    path = state_path(tmp_path)
    path.parent.mkdir(parents=True)
    code = (
        "import sys, duckdb\n"
        "conn = duckdb.connect(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield path, child.pid
    finally:
        child.communicate(timeout=60)


@pytest.mark.anyio
async def test_file_held_by_another_process_is_in_use(
    held_by_other_process: tuple[Path, int],
) -> None:
    """A file another process holds is refused as in use, naming the run directory and pid."""
    path, pid = held_by_other_process
    with pytest.raises(StateError) as caught:
        async with GroupCommitWriter(path):
            pass
    message = str(caught.value)
    assert f"run directory {path.parent} is in use by a running m2l process (pid {pid})" in message
    assert "wait for it to finish" in message and f"`m2l status {path.parent}`" in message


@pytest.mark.anyio
async def test_a_lone_failing_op_runs_once_and_the_writer_carries_on(tmp_path: Path) -> None:
    """An op failing in its own transaction is not rerun, and later ops still commit."""
    calls: list[int] = []

    def missing_table(conn: Conn) -> None:
        calls.append(1)
        conn.execute("SELECT * FROM no_such_table")

    async with GroupCommitWriter(state_path(tmp_path)) as writer:
        with pytest.raises(StateError, match="missing_table failed") as caught:
            await writer.run(missing_table)
        assert isinstance(caught.value.__cause__, duckdb.CatalogException)
        assert calls == [1]
        await writer.run(insert_seed(1))
        assert await writer.run(count_seeds) == 1
        assert writer.statistics().broken is None
