"""The run's journal: the store operations behind conversations (the request log's are in
``state.requestlog``).

Each public function either reads (call it on the writer thread through ``writer.run``), returns
an op for the writer's group commit, or (``write_*``) writes many rows of one kind inside the
current transaction. A step's message row and its conversation's progress are written by one op,
so they commit together: a crash leaves either both or neither.

Why the ``write_*`` functions take lists: one row per statement made checkpointing cost three
times the CPU of the rest of a step (bench/conversations.py); see ``state._bulk``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import duckdb
import orjson

from engine.chat import Message
from engine.records import Conversation, Plan, Status, Step, StepKind, step_kind
from state import _bulk
from state._bulk import columns, marks, unnest
from state.requestlog import AttemptStatus, status_is

__all__ = [
    "adaptive_caps",
    "count_by_status",
    "failed_by_reason",
    "load_conversations",
    "mark_active",
    "mark_final",
    "meta_object",
    "read_meta",
    "record_rejection",
    "record_step",
    "retry_failed",
    "write_active",
    "write_meta",
    "write_steps",
]

Conn = duckdb.DuckDBPyConnection


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


def retry_failed(conn: Conn) -> int:
    """Put every failed conversation back to work from its last accepted step; how many.

    A conversation with accepted steps becomes active (the scheduler resumes those first), one
    without becomes pending; its reason is cleared, its earlier attempts stay in the request
    log with their cost. run_meta counts how often this was done and how many it took back.
    """
    # Runs inside the writer's transaction: the reset and its count commit together.
    row = conn.execute(
        """UPDATE conversations
           SET status = CASE WHEN steps_done > 0 THEN 'active' ELSE 'pending' END,
               error = NULL, regenerations = 0, finished_at = NULL
           WHERE status = 'failed'"""
    ).fetchone()
    count = int(row[0]) if row else 0
    meta = read_meta(conn)
    times = int(meta.get("retry_failed_times", "0")) + 1
    total = int(meta.get("retry_failed_conversations", "0")) + count
    write_meta({"retry_failed_times": str(times), "retry_failed_conversations": str(total)})(conn)
    return count


def read_meta(conn: Conn) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM run_meta").fetchall())


def meta_object(meta: Mapping[str, str], key: str) -> dict[str, Any]:
    """The JSON object stored under ``key`` in ``meta`` (as read_meta gives it); empty when it
    is missing or unreadable: a damaged record costs only the figures read from it."""
    try:
        data = orjson.loads(meta.get(key) or "{}")
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def adaptive_caps(meta: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """How many first tries the run's sessions sent per step kind and cap source (adaptive
    max_tokens' "adaptive_caps" in ``meta``, as read_meta gives it); none if unreadable."""
    data = meta_object(meta, "adaptive_caps")
    return {
        str(kind): {str(k): int(v) for k, v in counts.items() if isinstance(v, int)}
        for kind, counts in data.items()
        if isinstance(counts, dict)
    }


def count_by_status(conn: Conn) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM conversations GROUP BY status").fetchall()
    return {str(status): int(n) for status, n in rows}


def failed_by_reason(conn: Conn) -> dict[str, int]:
    """Failed conversations by their stored reason (the error text, "" when none)."""
    rows = conn.execute(
        "SELECT coalesce(error, ''), count(*) FROM conversations WHERE status = 'failed' GROUP BY 1"
    ).fetchall()
    return {str(reason): int(n) for reason, n in rows}


_CONV_COLUMNS = """c.conv_id, c.seed_id, s.instruction, c.language, c.language_code, c.task,
    c.evol_type, c.turns_planned, c.followup_types, c.status, c.regenerations, c.room,
    s.target"""


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
    for conv_id, index, role, content, tokens, prompt_id, prompt, finish, stamp in conn.execute(
        """SELECT conv_id, step, role, content, tokens, evol_type, prompt, finish_reason,
               gate_check
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
                    gate_check=stamp,
                )
            )
    out = []
    for (
        conv_id, seed_id, seed, lang, code, task, evol, turns, followups, status, regen, room,
        target,
    ) in rows:  # fmt: skip
        plan = Plan(conv_id, seed_id, seed, lang, code, task, evol, turns, tuple(followups), target)
        done = tuple(steps[conv_id])
        if [s.index for s in done] != list(range(len(done))):
            raise ValueError(f"conversation {conv_id} has a gap in its stored steps")
        out.append(Conversation(plan, done, Status(status), regen, room=room))
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
    now = _bulk.now()
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
        conn.execute(f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES ({marks(12)})", messages[0])
        conv_id, status, steps, finished = progress[0]
        conn.execute(
            """UPDATE conversations SET status = ?, steps_done = ?, regenerations = 0, room = 0,
               finished_at = ? WHERE conv_id = ?""",
            [status, steps, finished, conv_id],
        )
        return
    conn.execute(
        f"INSERT INTO messages ({_MESSAGE_COLUMNS}) SELECT {unnest(_MESSAGE_TYPES)}",
        columns(messages),
    )
    conn.execute(
        f"""UPDATE conversations SET status = v.status, steps_done = v.steps, regenerations = 0,
            room = 0, finished_at = v.finished
            FROM (SELECT {unnest(("BIGINT", "VARCHAR", "SMALLINT", "TIMESTAMP"))}) AS
                 v(conv_id, status, steps, finished)
            WHERE conversations.conv_id = v.conv_id""",
        columns(progress),
    )


_MESSAGE_COLUMNS = (
    "conv_id, step, turn, role, kind, content, tokens, evol_type, prompt, finish_reason, "
    "created_at, gate_check"
)
_MESSAGE_TYPES = (
    "BIGINT", "SMALLINT", "SMALLINT", "VARCHAR", "VARCHAR", "VARCHAR", "INTEGER", "VARCHAR",
    "VARCHAR", "VARCHAR", "TIMESTAMP", "BIGINT",
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
        step.gate_check,
    )


# The answered attempt whose cost a dropped step carries into the rejections table.
_SETTLED = status_is(AttemptStatus.OK, column="q.status")


def mark_final(conv: Conversation) -> Callable[[Conn], None]:
    """An op that stores a final conversation's status and reason.

    A conversation cut to its good turns (DONE with a reason, see engine.conversation) also
    gets its made turns recorded, and the accepted steps it dropped move from ``messages`` to
    ``rejections`` (reason "unanswered"), so no thrown-away output goes unrecorded.
    """
    column = "filter_reason" if conv.status is Status.FILTERED else "error"
    conv_id = conv.plan.conv_id

    def op(conn: Conn) -> None:
        now = _bulk.now()
        for step in conv.dropped:
            conn.execute(
                f"""INSERT INTO rejections (conv_id, step, regeneration, kind, reason, detail,
                       content, finish_reason, prompt_tokens, completion_tokens, cost_usd,
                       created_at)
                   SELECT m.conv_id, m.step,
                       (SELECT coalesce(max(regeneration) + 1, 0) FROM rejections r
                        WHERE r.conv_id = m.conv_id AND r.step = m.step),
                       m.kind, 'unanswered', ?, m.content, m.finish_reason, NULL, m.tokens,
                       (SELECT q.cost_usd FROM requests q WHERE q.conv_id = m.conv_id
                        AND q.step = m.step AND {_SETTLED}
                        ORDER BY q.request_id DESC LIMIT 1), ?
                   FROM messages m WHERE m.conv_id = ? AND m.step = ?
                   ON CONFLICT DO NOTHING""",
                ["dropped with the failed turn it opened", now, conv_id, step.index],
            )
            conn.execute(
                "DELETE FROM messages WHERE conv_id = ? AND step = ?", [conv_id, step.index]
            )
        conn.execute(
            f"""UPDATE conversations SET status = ?, {column} = ?, regenerations = ?, room = ?,
                steps_done = ?, finished_at = ? WHERE conv_id = ?""",
            [
                conv.status.value,
                conv.reason,
                conv.regenerations,
                conv.room,
                len(conv.steps),
                now,
                conv_id,
            ],
        )

    return op


def record_rejection(
    conv: Conversation, *, prompt_tokens: int | None, completion_tokens: int | None, cost: float
) -> Callable[[Conn], None]:
    """An op that stores the output ``conv`` just threw away and the step's new try count.

    The count and the room are written with the output, so a restart resumes the step at the
    same try (same sampling seed, same max_tokens) and never exceeds its bound. An output that
    ended the conversation (its last try) is written with that end (``mark_final``): committed
    apart, a kill between the two left the step active at its last try, and the restart paid
    for that try again.
    """
    rejected = conv.rejected
    assert rejected is not None, "record_rejection needs a conversation that rejected an output"
    conv_id = conv.plan.conv_id
    end = mark_final(conv) if conv.status.final else None

    def op(conn: Conn) -> None:
        conn.execute(
            """INSERT INTO rejections (conv_id, step, regeneration, kind, reason, detail,
                   content, finish_reason, prompt_tokens, completion_tokens, cost_usd,
                   created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
            [
                conv_id,
                rejected.step,
                rejected.regeneration,
                rejected.kind.value,
                rejected.reason,
                rejected.detail[:500],
                rejected.text,
                rejected.finish_reason,
                prompt_tokens,
                completion_tokens,
                cost,
                _bulk.now(),
            ],
        )
        if end is not None:
            end(conn)
        else:
            conn.execute(
                "UPDATE conversations SET regenerations = ?, room = ? WHERE conv_id = ?",
                [conv.regenerations, conv.room, conv_id],
            )

    return op
