"""The batch store on a real DuckDB file: submissions, lines, and what a resume reads back."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from state import batchstore as bs
from state import requestlog as rl
from state.schema import open_store


def _store(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    conn = open_store(tmp_path / "state.duckdb", create=True)
    bs.ensure_tables(conn)
    return conn


def _reserve(conn: duckdb.DuckDBPyConnection, request_id: int, conv: int, usd: float) -> None:
    rl.write_reserved(conn, [rl.RequestRow(request_id, conv, 0, 1, 100, 50, usd, "gpt-4o-sim")])


def _lines(sub_id: int, convs: range, first_request: int) -> list[bs.LineRow]:
    return [
        bs.LineRow(sub_id, f"{c}:0:{first_request + i}", c, 0, first_request + i)
        for i, c in enumerate(convs)
    ]


def test_a_submission_is_durable_before_upload_and_found_again_after_reopening(
    tmp_path: Path,
) -> None:
    """Lines written with the submission survive a close; state moves planned→uploaded→created."""
    conn = _store(tmp_path)
    for i in range(3):
        _reserve(conn, 10 + i, i, 0.01)
    sub = bs.next_submission_id(conn)
    assert sub == 1
    bs.submission_planned(sub, _lines(sub, range(3), 10), size=300)(conn)
    conn.close()

    conn = open_store(tmp_path / "state.duckdb", create=False)
    (planned,) = bs.open_submissions(conn)
    assert (planned.state, planned.file_id, planned.batch_id, planned.lines) == (
        "planned", None, None, 3,
    )  # fmt: skip
    bs.file_uploaded(sub, "file-abc")(conn)
    assert bs.open_submissions(conn)[0].state == "uploaded"
    bs.batch_created(sub, "batch_xyz", "validating")(conn)
    (created,) = bs.open_submissions(conn)
    assert (created.state, created.file_id, created.batch_id) == (
        "created",
        "file-abc",
        "batch_xyz",
    )
    assert [line.request_id for line in bs.open_lines(conn, [sub])] == [10, 11, 12]
    assert bs.next_submission_id(conn) == 2


def test_only_lines_whose_outcome_is_unknown_stay_open(tmp_path: Path) -> None:
    """A line whose request row was settled is no longer open; its money is no longer held."""
    conn = _store(tmp_path)
    for i in range(4):
        _reserve(conn, 1 + i, i, 0.25)
    bs.submission_planned(1, _lines(1, range(4), 1), size=400)(conn)
    bs.batch_created(1, "batch_1", "in_progress")(conn)
    rl.write_finished(conn, [rl.FinishedRow(2, rl.AttemptStatus.OK, 10, cost_usd=0.01)])
    assert [line.request_id for line in bs.open_lines(conn, [1])] == [1, 3, 4]
    summary = bs.batch_summary(conn)
    assert summary is not None
    assert summary.held_usd == pytest.approx(0.75)
    assert summary.open_batches == 1 and summary.by_status == {"in_progress": 1}


def test_summary_counts_statuses_requests_and_the_oldest_open_batch(tmp_path: Path) -> None:
    """Counts by provider status, lines answered of all lines, age of the oldest open batch."""
    conn = _store(tmp_path)
    for sub in (1, 2, 3):
        bs.submission_planned(sub, [], size=0)(conn)
    conn.execute("UPDATE batch_submissions SET lines = 10")
    bs.batch_created(1, "batch_a", "completed")(conn)
    bs.batch_seen(1, "completed", 9, 1)(conn)
    bs.submission_closed(1, "collected")(conn)
    bs.batch_created(2, "batch_b", "in_progress")(conn)
    bs.batch_seen(2, "in_progress", 4, 0)(conn)
    bs.submission_closed(3, "abandoned", error="never created")(conn)
    summary = bs.batch_summary(conn)
    assert summary is not None
    assert summary.by_status == {"completed": 1, "in_progress": 1}
    assert (summary.requests_done, summary.requests_total) == (14, 20)
    assert summary.open_batches == 1
    assert summary.oldest_open_age_s is not None and summary.oldest_open_age_s < 60
    assert [s.sub_id for s in bs.open_submissions(conn)] == [2]


def test_a_run_without_batches_has_no_summary_and_no_tables(tmp_path: Path) -> None:
    """Online runs are untouched: no batch tables, no summary, no open submissions."""
    conn = open_store(tmp_path / "state.duckdb", create=True)
    assert bs.batch_summary(conn) is None
    assert bs.open_submissions(conn) == []


def test_the_run_tag_is_made_once(tmp_path: Path) -> None:
    """The tag batch metadata carries stays the same for the run's life."""
    conn = _store(tmp_path)
    tag = bs.run_tag(conn)
    assert len(tag) == 16 and bs.run_tag(conn) == tag


def test_a_submission_closes_only_as_collected_or_abandoned() -> None:
    with pytest.raises(ValueError, match="collected"):
        bs.submission_closed(1, "created")
