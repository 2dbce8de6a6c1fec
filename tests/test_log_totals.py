"""Running totals of the request log: kept in the transactions that write the rows, equal to a
scan of the log after any mix of writes, rolled back with them, made once for an older store."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from engine.errors import RateLimited, RequestTimeout, ServerError
from state import requestlog
from state.requestlog import (
    AttemptStatus,
    FinishedRow,
    RequestRow,
    attempt_summary,
    read_totals,
    rebuild_totals,
    settle_unknown,
    spend_total,
    write_attempts,
    write_finished,
    write_reserved,
)
from state.schema import open_read_only, open_store

NANO = 1_000_000_000


def scanned(conn: duckdb.DuckDBPyConnection) -> tuple[requestlog.AttemptSummary, tuple[int, ...]]:
    """attempt_summary and spend_total computed by scanning the log (totals hidden)."""
    conn.execute("ALTER TABLE log_totals RENAME TO hidden_totals")
    try:
        return attempt_summary(conn), spend_total(conn, per_usd=NANO)
    finally:
        conn.execute("ALTER TABLE hidden_totals RENAME TO log_totals")


def assert_totals_match(conn: duckdb.DuckDBPyConnection) -> None:
    """Figures from the running totals equal the scan's (money to the nano-dollar per row)."""
    assert read_totals(conn) is not None
    kept, kept_spend = attempt_summary(conn), spend_total(conn, per_usd=NANO)
    scan, scan_spend = scanned(conn)
    assert kept_spend == scan_spend
    rows = max(scan.sent, 1) + 1
    for name in ("cost_usd", "reserved_usd", "unknown_usd", "span_s"):
        assert getattr(kept, name) == pytest.approx(getattr(scan, name), abs=rows * 1e-9), name
    loose = ("cost_usd", "reserved_usd", "unknown_usd", "span_s")
    assert replace(kept, **{n: 0.0 for n in loose}) == replace(scan, **{n: 0.0 for n in loose})


def random_finished(rng: random.Random, request_id: int) -> FinishedRow:
    """How one attempt may end: every status and kind of error class the totals tell apart."""
    kind = rng.choice(["ok", "ok", "ok-no-cost", "error", "billed", "unclassed", "rejected", "429"])
    if kind == "ok":
        return FinishedRow(
            request_id,
            AttemptStatus.OK,
            rng.randint(1, 500),
            rng.choice([None, rng.randint(5, 900)]),
            cost_usd=rng.random() / 9,
        )
    if kind == "ok-no-cost":  # counted at its reservation
        return FinishedRow(request_id, AttemptStatus.OK, rng.choice([None, 40]))
    if kind == "429":
        return FinishedRow(
            request_id, AttemptStatus.ERROR, error_class=RateLimited.error_class, error="x"
        )
    if kind == "error":
        return FinishedRow(
            request_id, AttemptStatus.ERROR, error_class=ServerError.error_class, error="5xx"
        )
    if kind == "billed":
        return FinishedRow(
            request_id, AttemptStatus.ERROR, error_class=RequestTimeout.error_class, error="t"
        )
    if kind == "unclassed":  # no class: may have been billed
        return FinishedRow(request_id, AttemptStatus.ERROR, completion_tokens=3, cost_usd=0.01)
    return FinishedRow(request_id, AttemptStatus.REJECTED, error_class="cancelled")


def random_writes(
    conn: duckdb.DuckDBPyConnection,
    rng: random.Random,
    *,
    first_id: int,
    open_ids: list[int] | None = None,
    together: bool = False,
) -> int:
    """A flush-like mix: new attempts reserved, some settled ok, failed, rejected, 429s; with
    ``open_ids``, also attempts reserved by earlier flushes (the usual case), and some settled
    again; ``together``: both kinds in one call, as a flush writes them (write_attempts)."""
    ids = list(range(first_id, first_id + rng.randint(1, 12)))
    reserved = [
        RequestRow(
            i,
            i // 3,
            i % 3,
            1 + i % 2,
            rng.randint(10, 900),
            rng.randint(16, 512),
            rng.random() / 7,
            "m",
        )
        for i in ids
    ]
    if not together:
        write_reserved(conn, reserved)
    pool = ids if open_ids is None else open_ids + ids
    chosen = rng.sample(pool, rng.randint(0, len(pool)))
    if open_ids is not None:
        open_ids[:] = [i for i in pool if i not in chosen or rng.random() < 0.1]
    finished = [random_finished(rng, i) for i in chosen]
    if together:
        write_attempts(conn, reserved, finished)
    else:
        write_finished(conn, finished)
    return ids[-1] + 1


def test_totals_equal_a_scan_after_any_mix_of_writes(tmp_path: Path) -> None:
    """Reserve, settle in bulk and one by one (apart and in one write_attempts, as a flush does),
    a crash's settle_unknown: totals = scan."""
    rng = random.Random(7)
    conn = open_store(tmp_path / "state.duckdb", create=True)
    next_id = 1
    open_ids: list[int] = []
    for round_no in range(40):
        next_id = random_writes(
            conn,
            rng,
            first_id=next_id,
            open_ids=open_ids if round_no % 2 else None,
            together=round_no % 4 >= 2,
        )
        assert_totals_match(conn)
    write_finished(conn, [random_finished(rng, 2), random_finished(rng, 2)])  # one id twice
    write_finished(conn, [random_finished(rng, 10**6)])  # no such attempt: nothing counted
    assert_totals_match(conn)
    settle_unknown(conn)  # what a restart does with attempts a kill left reserved
    assert_totals_match(conn)
    assert attempt_summary(conn).unknown > 0
    conn.close()


def test_totals_roll_back_with_the_rows_they_count(tmp_path: Path) -> None:
    """A flush that fails midway leaves neither its rows nor their totals."""
    conn = open_store(tmp_path / "state.duckdb", create=True)
    random_writes(conn, random.Random(1), first_id=1)
    before = read_totals(conn)
    conn.execute("BEGIN TRANSACTION")
    write_reserved(conn, [RequestRow(1000, 1, 0, 1, 50, 60, 0.5, "m")])
    conn.execute("ROLLBACK")
    assert read_totals(conn) == before
    assert_totals_match(conn)
    conn.close()


def test_an_older_store_gets_its_totals_once_when_opened_for_writing(tmp_path: Path) -> None:
    """Without totals a store is scanned; opened for writing, it gains them from one scan."""
    path = tmp_path / "state.duckdb"
    conn = open_store(path, create=True)
    random_writes(conn, random.Random(3), first_id=1)
    expected = read_totals(conn)
    conn.execute("DROP TABLE log_totals")  # as an older m2l wrote it
    conn.close()
    reader = open_read_only(path, action="read it")
    assert read_totals(reader) is None and expected is not None
    assert attempt_summary(reader).sent == expected.sent  # counted by a scan
    reader.close()
    conn = open_store(path, create=False)
    assert read_totals(conn) == expected
    random_writes(conn, random.Random(4), first_id=500)
    assert_totals_match(conn)
    conn.close()


def test_stores_add_up_and_a_rebuild_recounts(tmp_path: Path) -> None:
    """Rows of several stores (a sharded run's) are summed; rebuild_totals counts afresh."""
    conn = open_store(tmp_path / "state.duckdb", create=True)
    random_writes(conn, random.Random(5), first_id=1)
    own = read_totals(conn)
    assert own is not None
    conn.execute(
        "INSERT INTO log_totals SELECT 'shard-02' AS store, * EXCLUDE (store) FROM log_totals"
    )
    doubled = read_totals(conn)
    assert doubled is not None and doubled.sent == 2 * own.sent
    assert doubled.spend_nano == 2 * own.spend_nano
    rebuild_totals(conn)
    assert read_totals(conn) == own
    conn.close()
