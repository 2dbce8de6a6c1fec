"""The run's journal: the store operations behind conversations and the request log.

Each public function either reads (call it on the writer thread through ``writer.run``), returns
an op for the writer's group commit, or (``write_*``) writes many rows of one kind inside the
current transaction. A step's message row and its conversation's progress are written by one op,
so they commit together: a crash leaves either both or neither.

Why the ``write_*`` functions take lists: a DuckDB statement costs about 0.7 ms of CPU however
small, so one row per statement made checkpointing cost three times the CPU of the rest of a
step (bench/conversations.py). Many rows go in one statement (lists unnested into rows, ~10 µs
a row); a single row keeps its plain statement, which is cheaper than the unnesting one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import duckdb

from engine.chat import Message
from engine.records import Conversation, Plan, Status, Step, StepKind, step_kind

__all__ = [
    "FinishedRow",
    "RequestRow",
    "count_by_status",
    "load_conversations",
    "mark_active",
    "mark_final",
    "read_meta",
    "record_step",
    "write_active",
    "write_finished",
    "write_meta",
    "write_reserved",
    "write_steps",
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
        write_active(conn, ids)

    return op


def write_active(conn: Conn, conv_ids: Sequence[int]) -> None:
    """Mark these conversations active if they are still pending."""
    if len(conv_ids) == 1:
        conn.execute(
            "UPDATE conversations SET status = 'active' WHERE conv_id = ? AND status = 'pending'",
            [conv_ids[0]],
        )
    elif conv_ids:
        conn.execute(
            """UPDATE conversations SET status = 'active'
               WHERE conv_id IN (SELECT unnest($1::BIGINT[])) AND status = 'pending'""",
            [list(conv_ids)],
        )


def record_step(conv: Conversation) -> Callable[[Conn], None]:
    """An op that stores the conversation's newest step and its progress, atomically."""

    def op(conn: Conn) -> None:
        write_steps(conn, [conv])

    return op


def write_steps(conn: Conn, convs: Sequence[Conversation]) -> None:
    """Store each conversation's newest step and its progress (one step per conversation)."""
    if not convs:
        return
    if len({c.plan.conv_id for c in convs}) < len(convs):
        # Two steps of one conversation: the bulk UPDATE would apply only one of them.
        for conv in convs:
            write_steps(conn, [conv])
        return
    now = _now()
    messages = [_message_row(conv, now) for conv in convs]
    progress = [
        (
            conv.plan.conv_id,
            conv.status.value,
            len(conv.steps),
            now if conv.status is Status.DONE else None,
        )
        for conv in convs
    ]
    if len(convs) == 1:
        conn.execute(
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES ({_marks(11)})", messages[0]
        )
        conv_id, status, steps, finished = progress[0]
        conn.execute(
            """UPDATE conversations SET status = ?, steps_done = ?, regenerations = 0,
               finished_at = ? WHERE conv_id = ?""",
            [status, steps, finished, conv_id],
        )
        return
    conn.execute(
        f"INSERT INTO messages ({_MESSAGE_COLUMNS}) SELECT {_unnest(_MESSAGE_TYPES)}",
        _columns(messages),
    )
    conn.execute(
        f"""UPDATE conversations SET status = v.status, steps_done = v.steps, regenerations = 0,
            finished_at = v.finished
            FROM (SELECT {_unnest(("BIGINT", "VARCHAR", "SMALLINT", "TIMESTAMP"))}) AS
                 v(conv_id, status, steps, finished)
            WHERE conversations.conv_id = v.conv_id""",
        _columns(progress),
    )


_MESSAGE_COLUMNS = (
    "conv_id, step, turn, role, kind, content, tokens, evol_type, prompt, finish_reason, created_at"
)
_MESSAGE_TYPES = (
    "BIGINT", "SMALLINT", "SMALLINT", "VARCHAR", "VARCHAR", "VARCHAR", "INTEGER", "VARCHAR",
    "VARCHAR", "VARCHAR", "TIMESTAMP",
)  # fmt: skip


def _message_row(conv: Conversation, now: dt.datetime) -> tuple[object, ...]:
    step = conv.steps[-1]
    return (
        conv.plan.conv_id,
        step.index,
        step.turn,
        step.message.role,
        step.kind.value,
        step.message.content,
        step.message.tokens,
        step.prompt_id if step.kind is not StepKind.ANSWER else None,
        step.prompt,
        step.finish_reason,
        now,
    )


def _marks(n: int) -> str:
    return ", ".join("?" for _ in range(n))


def _unnest(types: Sequence[str]) -> str:
    """``unnest($1::T1[]), unnest($2::T2[]), ...``: parallel lists read back as rows.

    The casts give every column its type even when a whole list is NULLs.
    """
    return ", ".join(f"unnest(${i}::{t}[])" for i, t in enumerate(types, start=1))


def _columns(rows: Sequence[Sequence[object]]) -> list[list[object]]:
    """Rows turned into one list per column, the shape ``_unnest`` reads."""
    return [list(column) for column in zip(*rows, strict=True)]


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


_RESERVED_TYPES = (
    "BIGINT", "BIGINT", "SMALLINT", "SMALLINT", "INTEGER", "INTEGER", "DOUBLE", "VARCHAR",
)  # fmt: skip


def write_reserved(conn: Conn, rows: Sequence[RequestRow]) -> None:
    """Log these attempts as sent with their costs reserved (status 'reserved')."""
    if not rows:
        return
    values = [
        (
            r.request_id,
            r.conv_id,
            r.step,
            r.attempt,
            r.prompt_tokens,
            r.max_tokens,
            r.reserved_usd,
            r.model,
        )
        for r in rows
    ]
    head = """INSERT INTO requests (request_id, conv_id, step, attempt, prompt_tokens, max_tokens,
              reserved_usd, model, status, sent_at)"""
    if len(values) == 1:
        conn.execute(f"{head} VALUES ({_marks(8)}, 'reserved', ?)", [*values[0], _now()])
        return
    conn.execute(
        f"{head} SELECT {_unnest(_RESERVED_TYPES)}, 'reserved', $9::TIMESTAMP",
        [*_columns(values), _now()],
    )


@dataclass(frozen=True, slots=True)
class FinishedRow:
    """How one attempt ended: ``ok`` with usage and cost, ``error`` or ``rejected``."""

    request_id: int
    status: str
    completion_tokens: int | None = None
    prompt_tokens: int | None = None  # None keeps the count logged when it was reserved
    cached_tokens: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    error_class: str | None = None
    error: str | None = None


_FINISHED_TYPES = (
    "BIGINT", "VARCHAR", "INTEGER", "INTEGER", "INTEGER", "DOUBLE", "DOUBLE", "VARCHAR", "VARCHAR",
)  # fmt: skip


def write_finished(conn: Conn, rows: Sequence[FinishedRow]) -> None:
    """Settle these attempts (each request_id at most once per call, or they go one by one)."""
    if not rows:
        return
    if len(rows) > 1 and len({r.request_id for r in rows}) < len(rows):
        for row in rows:
            write_finished(conn, [row])
        return
    values = [
        (
            r.request_id,
            r.status,
            r.completion_tokens,
            r.prompt_tokens,
            r.cached_tokens,
            r.latency_ms,
            r.cost_usd,
            r.error_class,
            r.error,
        )
        for r in rows
    ]
    if len(values) == 1:
        request_id, *rest = values[0]
        conn.execute(
            """UPDATE requests SET status = ?, completion_tokens = ?,
               prompt_tokens = coalesce(?, prompt_tokens), cached_tokens = ?, latency_ms = ?,
               cost_usd = ?, error_class = ?, error = ?, finished_at = ? WHERE request_id = ?""",
            [*rest, _now(), request_id],
        )
        return
    conn.execute(
        f"""UPDATE requests SET status = v.status, completion_tokens = v.completion_tokens,
            prompt_tokens = coalesce(v.prompt_tokens, requests.prompt_tokens),
            cached_tokens = v.cached_tokens, latency_ms = v.latency_ms, cost_usd = v.cost_usd,
            error_class = v.error_class, error = v.error, finished_at = $10::TIMESTAMP
            FROM (SELECT {_unnest(_FINISHED_TYPES)}) AS v(request_id, status, completion_tokens,
                 prompt_tokens, cached_tokens, latency_ms, cost_usd, error_class, error)
            WHERE requests.request_id = v.request_id""",
        [*_columns(values), _now()],
    )
