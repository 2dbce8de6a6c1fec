"""The batch store: every Batch API submission of a run and which attempt each of its lines is.

A submission is written with all its lines *before* its file is uploaded, its file id right
after the upload, and its batch id right after the create call; the create call carries the run's
tag and the submission id as batch metadata, so a batch created just before a kill is found again
(``state = 'uploaded'`` with no batch id: look it up by metadata). A line names the attempt it
carries by ``request_id`` (the request log's row, reserved before the line was written), so the
money a line holds and whether its outcome is known are read from the request log.

Submission states: ``planned`` (lines durable, nothing sent) → ``uploaded`` (file id known) →
``created`` (batch id known) → ``collected`` (its results applied), or ``abandoned`` (no batch
was ever created for it). The tables are created on first use, so online runs and state files
written before batch mode existed are unchanged. Functions ending in an op return a function of
the connection for the run's writer; the others read. Nothing here raises but duckdb.Error.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import duckdb

from state.requestlog import AttemptStatus, status_is

__all__ = [
    "AWAITED_REQUESTS",
    "CLOSED",
    "OPEN",
    "BatchSummary",
    "LineRow",
    "Submission",
    "batch_created",
    "batch_seen",
    "batch_summary",
    "ensure_tables",
    "file_uploaded",
    "has_tables",
    "next_submission_id",
    "open_lines",
    "open_submissions",
    "run_tag",
    "submission_closed",
    "submission_planned",
]

Conn = duckdb.DuckDBPyConnection

OPEN: Final = ("planned", "uploaded", "created")
CLOSED: Final = ("collected", "abandoned")

_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS batch_submissions(sub_id BIGINT PRIMARY KEY,
        state VARCHAR NOT NULL, file_id VARCHAR, batch_id VARCHAR, lines INTEGER NOT NULL,
        bytes BIGINT NOT NULL, batch_status VARCHAR, completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0, created_at TIMESTAMP NOT NULL,
        submitted_at TIMESTAMP, closed_at TIMESTAMP, error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS batch_lines(sub_id BIGINT NOT NULL,
        custom_id VARCHAR NOT NULL, conv_id BIGINT NOT NULL, step SMALLINT NOT NULL,
        request_id BIGINT NOT NULL, PRIMARY KEY(sub_id, custom_id))""",
)
_TAG_KEY: Final = "batch_run_tag"
# Lines whose attempt's outcome the request log does not know yet.
_UNSETTLED: Final = status_is(AttemptStatus.RESERVED, column="r.status")


@dataclass(frozen=True, slots=True)
class LineRow:
    """One request line of a submission and the attempt (request log row) it carries."""

    sub_id: int
    custom_id: str
    conv_id: int
    step: int
    request_id: int
    # What the request log counts for the attempt while its outcome is unknown (read back by
    # open_lines; 0 for lines being written): nano-dollars and tokens at its worst case.
    held_nano: int = 0
    held_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Submission:
    """One input file and the batch made from it."""

    sub_id: int
    state: str
    file_id: str | None
    batch_id: str | None
    lines: int
    bytes: int
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What ``m2l status`` and the displays show about a run's batches."""

    by_status: dict[str, int]  # provider status as last seen ("" when not created yet)
    open_batches: int
    requests_done: int  # lines answered (completed + failed) in open and collected batches
    requests_total: int
    oldest_open_age_s: float | None
    held_usd: float  # worst cases reserved by lines whose outcome is not known yet


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def ensure_tables(conn: Conn) -> None:
    """Create the batch tables if this state file has none yet."""
    for ddl in _TABLES:
        conn.execute(ddl)


# The request_ids batch mode settles itself when it collects a batch: a line's outcome comes
# from the provider's batch, even after the process that wrote it is gone.
AWAITED_REQUESTS: Final = "SELECT request_id FROM batch_lines"


def has_tables(conn: Conn) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'batch_submissions'"
    ).fetchone()
    return bool(row and row[0])


def run_tag(conn: Conn) -> str:
    """The run's batch tag (made once, kept in run_meta): batch metadata names the run by it."""
    row = conn.execute("SELECT value FROM run_meta WHERE key = ?", [_TAG_KEY]).fetchone()
    if row is not None:
        return str(row[0])
    tag = uuid.uuid4().hex[:16]
    conn.execute("INSERT INTO run_meta VALUES (?, ?)", [_TAG_KEY, tag])
    return tag


def next_submission_id(conn: Conn) -> int:
    row = conn.execute("SELECT coalesce(max(sub_id), 0) + 1 FROM batch_submissions").fetchone()
    return int(row[0]) if row else 1


def submission_planned(sub_id: int, lines: Sequence[LineRow], size: int) -> Callable[[Conn], None]:
    """An op that records a submission and all its lines, before anything is uploaded."""
    created = _now()

    def op(conn: Conn) -> None:
        conn.execute(
            "INSERT INTO batch_submissions (sub_id, state, lines, bytes, created_at) "
            "VALUES (?, 'planned', ?, ?, ?)",
            [sub_id, len(lines), size, created],
        )
        if lines:
            conn.execute(
                "INSERT INTO batch_lines SELECT * FROM (SELECT unnest($1::BIGINT[]), "
                "unnest($2::VARCHAR[]), unnest($3::BIGINT[]), unnest($4::SMALLINT[]), "
                "unnest($5::BIGINT[]))",
                [
                    [r.sub_id for r in lines],
                    [r.custom_id for r in lines],
                    [r.conv_id for r in lines],
                    [r.step for r in lines],
                    [r.request_id for r in lines],
                ],
            )

    return op


def file_uploaded(sub_id: int, file_id: str) -> Callable[[Conn], None]:
    """An op that records the uploaded input file's id (before the batch is created)."""

    def op(conn: Conn) -> None:
        conn.execute(
            "UPDATE batch_submissions SET state = 'uploaded', file_id = ? WHERE sub_id = ?",
            [file_id, sub_id],
        )

    return op


def batch_created(sub_id: int, batch_id: str, status: str) -> Callable[[Conn], None]:
    """An op that records the batch made from the submission's file."""
    submitted = _now()

    def op(conn: Conn) -> None:
        conn.execute(
            "UPDATE batch_submissions SET state = 'created', batch_id = ?, batch_status = ?, "
            "submitted_at = ? WHERE sub_id = ?",
            [batch_id, status, submitted, sub_id],
        )

    return op


def batch_seen(sub_id: int, status: str, completed: int, failed: int) -> Callable[[Conn], None]:
    """An op that records a poll: the batch's status and request counts."""

    def op(conn: Conn) -> None:
        conn.execute(
            "UPDATE batch_submissions SET batch_status = ?, completed = ?, failed = ? "
            "WHERE sub_id = ?",
            [status, completed, failed, sub_id],
        )

    return op


def submission_closed(
    sub_id: int, state: str, *, error: str | None = None
) -> Callable[[Conn], None]:
    """An op that ends a submission: ``collected`` (results applied) or ``abandoned``."""
    if state not in CLOSED:
        raise ValueError(f"a submission closes as one of {CLOSED}, not {state!r}")
    closed = _now()

    def op(conn: Conn) -> None:
        conn.execute(
            "UPDATE batch_submissions SET state = ?, closed_at = ?, error = ? WHERE sub_id = ?",
            [state, closed, error, sub_id],
        )

    return op


def open_submissions(conn: Conn) -> list[Submission]:
    """Submissions not yet collected or abandoned, oldest first."""
    if not has_tables(conn):
        return []
    rows = conn.execute(
        "SELECT sub_id, state, file_id, batch_id, lines, bytes, created_at "
        "FROM batch_submissions WHERE state IN (?, ?, ?) ORDER BY sub_id",
        list(OPEN),
    ).fetchall()
    return [Submission(int(r[0]), r[1], r[2], r[3], int(r[4]), int(r[5]), r[6]) for r in rows]


def open_lines(conn: Conn, sub_ids: Sequence[int]) -> list[LineRow]:
    """The lines of these submissions whose attempt's outcome the request log does not know."""
    if not sub_ids:
        return []
    rows = conn.execute(
        "SELECT l.sub_id, l.custom_id, l.conv_id, l.step, l.request_id, "
        # The worst case as state.requestlog.spend_total counts an unsettled row.
        "CAST(floor(r.reserved_usd * 1e9 + 0.5) AS BIGINT), r.prompt_tokens + r.max_tokens "
        "FROM batch_lines l JOIN requests r USING (request_id) "
        "WHERE l.sub_id IN (SELECT unnest(?::BIGINT[])) "
        f"AND {_UNSETTLED} ORDER BY l.sub_id, l.request_id",
        [list(sub_ids)],
    ).fetchall()
    return [
        LineRow(int(a), str(b), int(c), int(d), int(e), int(f), int(g))
        for a, b, c, d, e, f, g in rows
    ]


def batch_summary(conn: Conn) -> BatchSummary | None:
    """The run's batches at a glance, or None for a run that never used batch mode."""
    if not has_tables(conn):
        return None
    by_status = {
        str(status or ""): int(n)
        for status, n in conn.execute(
            "SELECT batch_status, count(*) FROM batch_submissions WHERE state <> 'abandoned' "
            "GROUP BY ALL ORDER BY 1"
        ).fetchall()
    }
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE state IN ('planned', 'uploaded', 'created')), "
        "coalesce(sum(completed + failed), 0), coalesce(sum(lines), 0), "
        "min(created_at) FILTER (WHERE state IN ('planned', 'uploaded', 'created')) "
        "FROM batch_submissions WHERE state <> 'abandoned'"
    ).fetchone()
    assert row is not None
    held = conn.execute(
        "SELECT coalesce(sum(r.reserved_usd), 0) FROM batch_lines l "
        "JOIN batch_submissions s USING (sub_id) JOIN requests r USING (request_id) "
        f"WHERE s.state IN ('planned', 'uploaded', 'created') AND {_UNSETTLED}"
    ).fetchone()
    oldest = row[3]
    age = None if oldest is None else max(0.0, (_now() - oldest).total_seconds())
    return BatchSummary(
        by_status=by_status,
        open_batches=int(row[0]),
        requests_done=int(row[1]),
        requests_total=int(row[2]),
        oldest_open_age_s=age,
        held_usd=float(held[0]) if held else 0.0,
    )
