"""The run's journal: the store operations behind conversations and the request log.

Each public function either reads (call it on the writer thread through ``writer.run``) or returns
an op for the writer's group commit. A step's message row and its conversation's progress are
written by one op, so they commit together: a crash leaves either both or neither.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import duckdb

from engine.chat import Message
from engine.conversation import Conversation, Plan, Status, Step, StepKind, step_kind

__all__ = [
    "RequestRow",
    "count_by_status",
    "load_conversations",
    "mark_active",
    "mark_final",
    "read_meta",
    "record_step",
    "request_finished",
    "request_reserved",
    "write_meta",
]

Conn = duckdb.DuckDBPyConnection


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def write_meta(items: Mapping[str, str]) -> Callable[[Conn], None]:
    """An op that upserts run_meta keys."""
    rows = [(k, v) for k, v in items.items()]

    def op(conn: Conn) -> None:
        conn.executemany(
            "INSERT INTO run_meta VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            rows,
        )

    return op


def read_meta(conn: Conn) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM run_meta").fetchall())


def count_by_status(conn: Conn) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM conversations GROUP BY status").fetchall()
    return {str(status): int(n) for status, n in rows}


_CONV_COLUMNS = """c.conv_id, c.seed_id, s.instruction, c.language, c.language_code, c.task,
    c.evol_type, c.turns_planned, c.followup_types, c.status, c.regenerations"""


def load_conversations(
    conn: Conn, *, statuses: Sequence[str], after: int, limit: int
) -> list[Conversation]:
    """Up to ``limit`` conversations with these statuses and conv_id > ``after``, oldest first,
    each with the steps already committed."""
    marks = ", ".join("?" for _ in statuses)
    rows = conn.execute(
        f"""SELECT {_CONV_COLUMNS} FROM conversations c JOIN seeds s USING (seed_id)
            WHERE c.status IN ({marks}) AND c.conv_id > ? ORDER BY c.conv_id LIMIT ?""",
        [*statuses, after, limit],
    ).fetchall()
    if not rows:
        return []
    ids = [r[0] for r in rows]
    steps: dict[int, list[Step]] = {i: [] for i in ids}
    lo, hi = ids[0], ids[-1]
    for conv_id, index, role, content, tokens, prompt_id, prompt, finish in conn.execute(
        """SELECT conv_id, step, role, content, tokens, evol_type, prompt, finish_reason
           FROM messages WHERE conv_id BETWEEN ? AND ? ORDER BY conv_id, step""",
        [lo, hi],
    ).fetchall():
        if conv_id in steps:
            steps[conv_id].append(
                Step(
                    index=index,
                    kind=step_kind(index),
                    message=Message(role, content, tokens),
                    prompt_id=prompt_id,
                    prompt=prompt,
                    finish_reason=finish or "stop",
                )
            )
    out = []
    for conv_id, seed_id, seed, lang, code, task, evol, turns, followups, status, regen in rows:
        plan = Plan(conv_id, seed_id, seed, lang, code, task, evol, turns, tuple(followups))
        done = tuple(steps[conv_id])
        if [s.index for s in done] != list(range(len(done))):
            raise ValueError(f"conversation {conv_id} has a gap in its stored steps")
        out.append(Conversation(plan, done, Status(status), regen))
    return out


def mark_active(conv_ids: Iterable[int]) -> Callable[[Conn], None]:
    """An op that marks pending conversations active (they were admitted)."""
    ids = list(conv_ids)

    def op(conn: Conn) -> None:
        conn.executemany(
            "UPDATE conversations SET status = 'active' WHERE conv_id = ? AND status = 'pending'",
            [(i,) for i in ids],
        )

    return op


def record_step(conv: Conversation) -> Callable[[Conn], None]:
    """An op that stores the conversation's newest step and its progress, atomically."""
    step = conv.steps[-1]
    finished = _now() if conv.status is Status.DONE else None
    prompt_id = step.prompt_id if step.kind is not StepKind.ANSWER else None

    def op(conn: Conn) -> None:
        conn.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                conv.plan.conv_id,
                step.index,
                step.turn,
                step.message.role,
                step.kind.value,
                step.message.content,
                step.message.tokens,
                prompt_id,
                step.prompt,
                step.finish_reason,
                _now(),
            ],
        )
        conn.execute(
            """UPDATE conversations SET status = ?, steps_done = ?, regenerations = 0,
               finished_at = ? WHERE conv_id = ?""",
            [conv.status.value, len(conv.steps), finished, conv.plan.conv_id],
        )

    return op


def mark_final(conv: Conversation) -> Callable[[Conn], None]:
    """An op that stores a failed or filtered conversation's status and reason."""
    column = "filter_reason" if conv.status is Status.FILTERED else "error"

    def op(conn: Conn) -> None:
        conn.execute(
            f"""UPDATE conversations SET status = ?, {column} = ?, regenerations = ?,
                finished_at = ? WHERE conv_id = ?""",
            [conv.status.value, conv.reason, conv.regenerations, _now(), conv.plan.conv_id],
        )

    return op


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One attempt in the request log."""

    request_id: int
    conv_id: int | None
    step: int | None
    attempt: int
    prompt_tokens: int
    max_tokens: int
    reserved_usd: float
    model: str


def request_reserved(row: RequestRow) -> Callable[[Conn], None]:
    """An op that logs an attempt as sent with its cost reserved (outcome unknown until settled)."""

    def op(conn: Conn) -> None:
        conn.execute(
            """INSERT INTO requests (request_id, conv_id, step, attempt, status, prompt_tokens,
               max_tokens, reserved_usd, model, sent_at)
               VALUES (?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?)""",
            [
                row.request_id,
                row.conv_id,
                row.step,
                row.attempt,
                row.prompt_tokens,
                row.max_tokens,
                row.reserved_usd,
                row.model,
                _now(),
            ],
        )

    return op


def request_finished(
    request_id: int,
    *,
    status: str,
    completion_tokens: int | None = None,
    prompt_tokens: int | None = None,
    cached_tokens: int | None = None,
    latency_ms: float | None = None,
    cost_usd: float | None = None,
    error_class: str | None = None,
    error: str | None = None,
) -> Callable[[Conn], None]:
    """An op that settles an attempt: ``ok`` with usage and cost, ``error`` or ``rejected``."""

    def op(conn: Conn) -> None:
        conn.execute(
            """UPDATE requests SET status = ?, completion_tokens = ?,
               prompt_tokens = coalesce(?, prompt_tokens), cached_tokens = ?, latency_ms = ?,
               cost_usd = ?, error_class = ?, error = ?, finished_at = ? WHERE request_id = ?""",
            [
                status,
                completion_tokens,
                prompt_tokens,
                cached_tokens,
                latency_ms,
                cost_usd,
                error_class,
                error,
                _now(),
                request_id,
            ],
        )

    return op
