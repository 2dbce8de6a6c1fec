"""The journal's batched writes: bulk statements equal row-by-row ones, and the batcher commits
many writes in one op without giving up durability-before-return."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from engine.chat import Message
from engine.conversation import Conversation, Plan, Status, Step, step_kind
from engine.records import Rejection
from state import journal, requestlog
from state.batcher import JournalBatcher, flush_delay
from state.schema import open_store
from state.store import RunStore
from state.writer import GroupCommitWriter
from tests.virtualtime import run_virtual

pytestmark = pytest.mark.anyio

TABLES = {
    "requests": "SELECT * EXCLUDE (sent_at, finished_at), sent_at IS NULL, finished_at IS NULL "
    "FROM requests ORDER BY ALL",
    "messages": "SELECT * EXCLUDE (created_at), created_at IS NULL FROM messages ORDER BY ALL",
    "conversations": "SELECT * EXCLUDE (finished_at, created_at), finished_at IS NULL "
    "FROM conversations ORDER BY ALL",
}


def _store(path: Path, conversations: int = 10) -> duckdb.DuckDBPyConnection:
    conn = open_store(path, create=True)
    conn.execute(
        f"""INSERT INTO conversations (conv_id, seed_id, evol_type, turns_planned, followup_types,
            language, language_code, task)
            SELECT i, i, 'x', 2, ['a'], 'English', 'eng', 'open_qa'
            FROM range(1, {conversations + 1}) t(i)"""
    )
    return conn


def _conv(conv_id: int, steps: int, status: Status) -> Conversation:
    plan = Plan(conv_id, conv_id, "seed", "English", "eng", "open_qa", "x", 2, ("a",))
    done = tuple(
        Step(
            k,
            step_kind(k),
            Message("user" if k % 2 == 0 else "assistant", f"text {conv_id}/{k} 'quoted' ☃", 9 + k),
            "p" if k % 2 == 0 else None,
            None if k % 2 else f"prompt {k}",
            "length" if k == 0 else "stop",
        )
        for k in range(steps)
    )
    return Conversation(plan, done, status)


def test_bulk_writes_store_what_row_by_row_writes_store(tmp_path: Path) -> None:
    """Many rows per statement leave the same tables as one statement per row."""
    reserved = [
        requestlog.RequestRow(100 + i, i if i % 3 else None, i % 4 if i % 3 else None, 1 + i % 2,
                           50 + i, 128, 0.001 * i, "m")
        for i in range(1, 9)
    ]  # fmt: skip
    finished = [
        requestlog.FinishedRow(100 + i, "ok" if i % 2 else "error", 5 if i % 2 else None,
                            60 + i if i % 3 else None, None if i % 2 else 3,
                            12.5 if i % 2 else None, 0.002, None if i % 2 else "server_error",
                            None if i % 2 else "boom 'x'")
        for i in range(1, 8)
    ]  # fmt: skip
    convs = [_conv(i, 1 + i % 4, Status.DONE if i % 4 == 3 else Status.ACTIVE) for i in range(1, 8)]
    bulk, single = _store(tmp_path / "a.duckdb"), _store(tmp_path / "b.duckdb")
    journal.write_active(bulk, [1, 2, 3, 9])
    requestlog.write_reserved(bulk, reserved)
    requestlog.write_finished(bulk, finished)
    journal.write_steps(bulk, convs)
    journal.mark_active([1, 2, 3, 9])(single)
    for row in reserved:
        requestlog.write_reserved(single, [row])
    for f in finished:
        requestlog.write_finished(single, [f])
    for conv in convs:
        journal.record_step(conv)(single)
    for table, sql in TABLES.items():
        assert bulk.execute(sql).fetchall() == single.execute(sql).fetchall(), table


async def test_writes_of_one_loop_pass_commit_in_one_op(tmp_path: Path) -> None:
    """Steps recorded together are one writer op, and each is committed when its await returns."""
    _store(tmp_path / "s.duckdb").close()
    async with GroupCommitWriter(tmp_path / "s.duckdb", create=False) as writer:
        store = RunStore(writer, JournalBatcher(writer, linger_s=0.05))
        before = writer.statistics().ops_committed
        await asyncio.gather(*(store.record_step(_conv(i, 1, Status.ACTIVE)) for i in range(1, 9)))
        assert writer.statistics().ops_committed == before + 1
        rows = await writer.run(lambda c: c.execute("SELECT count(*) FROM messages").fetchall())
        assert rows == [(8,)]


async def test_flush_commits_writes_nobody_awaits(tmp_path: Path) -> None:
    """A settlement submitted without awaiting is committed by flush, before the writer closes."""
    _store(tmp_path / "s.duckdb").close()
    async with GroupCommitWriter(tmp_path / "s.duckdb", create=False) as writer:
        batcher = JournalBatcher(writer, linger_s=10.0)  # its timer would never fire in time
        await asyncio.shield(batcher.reserved(requestlog.RequestRow(1, 1, 0, 1, 10, 20, 0.0, "m")))
        batcher.finished(requestlog.FinishedRow(1, "ok", completion_tokens=7))
        await RunStore(writer, batcher).flush()
    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT status, completion_tokens FROM requests").fetchall() == [
            ("ok", 7)
        ]


async def test_a_cancelled_writer_leaves_the_others_of_its_flush_alone(tmp_path: Path) -> None:
    """Cancelling one awaiting caller neither cancels the flush nor drops its row."""
    _store(tmp_path / "s.duckdb").close()
    async with GroupCommitWriter(tmp_path / "s.duckdb", create=False) as writer:
        store = RunStore(writer, JournalBatcher(writer))
        doomed = asyncio.create_task(store.record_step(_conv(1, 1, Status.ACTIVE)))
        other = asyncio.create_task(store.record_step(_conv(2, 1, Status.ACTIVE)))
        await asyncio.sleep(0)
        doomed.cancel()
        await other
        await store.flush()
        rows = await writer.run(lambda c: c.execute("SELECT conv_id FROM messages").fetchall())
        assert sorted(rows) == [(1,), (2,)]


async def test_a_last_try_thrown_away_commits_with_its_conversations_end(tmp_path: Path) -> None:
    """The rejection of a step's last try is one commit with the conversation's end: a kill
    right after it leaves nothing to resume, where a restart would pay for that try again."""
    _store(tmp_path / "s.duckdb", conversations=2).close()
    failed = replace(
        _conv(1, 1, Status.FAILED),
        regenerations=2,
        reason="wrong_language after 3 tries",
        rejected=Rejection(1, step_kind(1), 2, "wrong_language", "detected vi", "hola", "stop"),
    )
    # keep_partial: turn 2's answer failed, so the turn's question is dropped and 1 turn kept.
    whole = _conv(2, 3, Status.ACTIVE)
    cut = replace(
        whole,
        steps=whole.steps[:2],
        dropped=whole.steps[2:],
        status=Status.DONE,
        reason="kept 1 of 2 turns: turn 2 failed: wrong_language after 3 tries",
        regenerations=2,
        rejected=Rejection(3, step_kind(3), 2, "wrong_language", "detected vi", "hola", "stop"),
    )
    async with GroupCommitWriter(tmp_path / "s.duckdb", create=False) as writer:
        store = RunStore(writer, JournalBatcher(writer))
        await store.record_step(_conv(1, 1, Status.ACTIVE))
        for made in range(1, 4):
            await store.record_step(replace(whole, steps=whole.steps[:made]))
        for conv in (failed, cut):
            await store.record_rejection(conv, prompt_tokens=9, completion_tokens=4, cost=0.01)
        # Nothing else is written, as if the process were killed here.
    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as conn:
        assert not journal.load_conversations(
            conn, statuses=("pending", "active"), after=0, limit=10
        )
        assert conn.execute(
            "SELECT conv_id, status, error, steps_done FROM conversations ORDER BY 1"
        ).fetchall() == [(1, "failed", failed.reason, 1), (2, "done", cut.reason, 2)]
        assert conn.execute(
            "SELECT conv_id, step, regeneration, reason FROM rejections ORDER BY 1, 2"
        ).fetchall() == [
            (1, 1, 2, "wrong_language"),
            (2, 2, 0, "unanswered"),
            (2, 3, 2, "wrong_language"),
        ]
        assert conn.execute("SELECT conv_id, step FROM messages ORDER BY 1, 2").fetchall() == [
            (1, 0),
            (2, 0),
            (2, 1),
        ]


def test_a_flush_waits_the_busy_linger_while_the_run_is_busy(tmp_path: Path) -> None:
    """While pace_by's signal says busy, flushes are busy_linger_s apart, else linger_s."""
    busy = True

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        async with GroupCommitWriter(tmp_path / "s.duckdb", noop=True) as writer:
            batcher = JournalBatcher(writer, linger_s=0.05, busy_linger_s=0.25)
            batcher.pace_by(lambda: busy)
            times = []
            await batcher.step(_conv(1, 1, Status.ACTIVE))  # after a quiet spell: at once
            times.append(loop.time())
            await batcher.step(_conv(1, 2, Status.ACTIVE))  # busy: a busy linger later
            times.append(loop.time())
            nonlocal busy
            busy = False
            await batcher.step(_conv(1, 3, Status.ACTIVE))  # not busy: a linger later
            times.append(loop.time())
            await asyncio.sleep(1.0)
            await batcher.step(_conv(1, 4, Status.ACTIVE))  # quiet again: at once
            times.append(loop.time())
            return times

    times, _ = run_virtual(scenario())
    assert times == pytest.approx([0.0, 0.25, 0.30, 1.30])


def test_a_flush_goes_before_its_linger_once_flush_when_says_it_is_full(tmp_path: Path) -> None:
    """With flush_when, the flush holding enough reserved attempts goes at once; one holding
    fewer waits out its linger as before."""

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        async with GroupCommitWriter(tmp_path / "s.duckdb", noop=True) as writer:
            batcher = JournalBatcher(writer, linger_s=0.1)
            batcher.flush_when(lambda reserved: reserved >= 3)
            times = []
            await batcher.step(_conv(1, 1, Status.ACTIVE))  # after a quiet spell: at once
            times.append(loop.time())

            def row(i: int) -> requestlog.RequestRow:
                return requestlog.RequestRow(i, i, 0, 1, 10, 20, 0.0, "m")

            await asyncio.gather(batcher.reserved(row(1)), batcher.reserved(row(2)))  # 2 < 3
            times.append(loop.time())
            await asyncio.sleep(0.02)
            await asyncio.gather(*(batcher.reserved(row(i)) for i in range(3, 6)))  # full
            times.append(loop.time())
            return times

    times, _ = run_virtual(scenario())
    assert times == pytest.approx([0.0, 0.1, 0.12])


def test_flush_delay_counts_from_the_last_flush() -> None:
    """The next flush may start linger_s after the last one, never before now."""
    assert flush_delay(10.0, 10.1, 0.25) == pytest.approx(0.15)
    assert flush_delay(10.0, 11.0, 0.25) == 0.0
    assert flush_delay(float("-inf"), 0.0, 0.05) == 0.0
