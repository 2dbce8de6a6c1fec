"""Tests for state.schema: the tables, the version check, and opening a run's file safely."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import duckdb
import pytest

from engine.errors import StateError
from engine.version import __version__
from state.schema import (
    ADDED_COLUMNS,
    ADDED_TABLES,
    PRIMARY_KEYS,
    SCHEMA_VERSION,
    TABLES,
    check_schema,
    compact,
    create_schema,
    open_read_only,
    open_store,
    table_for_error,
)

EXPECTED_COLUMNS = {
    "run_meta": ["key", "value"],
    "seeds": [
        "seed_id",
        "source_row",
        "instruction",
        "target",
        "language",
        "language_code",
        "task",
        "source",
        "instruction_tokens",
    ],
    "conversations": [
        "conv_id",
        "seed_id",
        "evol_type",
        "turns_planned",
        "followup_types",
        "language",
        "language_code",
        "task",
        "status",
        "steps_done",
        "regenerations",
        "error",
        "filter_reason",
        "created_at",
        "finished_at",
        "room",
    ],
    "rejections": [
        "conv_id",
        "step",
        "regeneration",
        "kind",
        "reason",
        "detail",
        "content",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "created_at",
    ],
    "messages": [
        "conv_id",
        "step",
        "turn",
        "role",
        "kind",
        "content",
        "tokens",
        "evol_type",
        "prompt",
        "finish_reason",
        "created_at",
        "gate_check",
    ],
    "requests": [
        "request_id",
        "conv_id",
        "step",
        "attempt",
        "status",
        "error_class",
        "error",
        "prompt_tokens",
        "max_tokens",
        "completion_tokens",
        "cached_tokens",
        "latency_ms",
        "reserved_usd",
        "cost_usd",
        "model",
        "sent_at",
        "finished_at",
        "reasoning_tokens",
        "service_tier",
        "reasoning_usd",
        "cache_saved_usd",
        "endpoint",
    ],
    "request_lines": ["line", "ok", "output", "finished_at"],
    "log_totals": [
        "store",
        "sent",
        "ok",
        "charged_tokens",
        "prompt_tokens",
        "completion_tokens",
        "cost_nano",
        "reserved_nano",
        "unknown_nano",
        "unknown",
        "rate_limited",
        "spend_nano",
        "spend_tokens",
        "spend_requests",
        "first_sent",
        "last_finished",
    ],
}


def fingerprint(directory: Path) -> dict[str, tuple[str, int]]:
    """Return each file's sha256 and mtime in directory, to prove nothing was touched."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.iterdir())
    }


def make_file(path: Path, statements: list[str]) -> None:
    """Write a DuckDB file at path by running statements, then close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(str(path))
    for statement in statements:
        conn.execute(statement)
    conn.close()


def test_create_schema_makes_the_documented_tables() -> None:
    """create_schema creates the six tables with their documented columns, in order."""
    conn = duckdb.connect()
    create_schema(conn)
    for table, columns in EXPECTED_COLUMNS.items():
        found = [
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position",
                [table],
            ).fetchall()
        ]
        assert found == columns, table
    assert set(TABLES) == set(EXPECTED_COLUMNS)


def test_create_schema_records_version_and_defaults_apply() -> None:
    """run_meta holds the schema and m2l versions, and column defaults fill new rows."""
    conn = duckdb.connect()
    create_schema(conn)
    meta = dict(conn.execute("SELECT key, value FROM run_meta").fetchall())
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["m2l_version"] == __version__
    assert meta["created_at"]
    conn.execute(
        "INSERT INTO conversations (conv_id, seed_id, evol_type, turns_planned, followup_types,"
        " language, language_code, task) VALUES (1, 1, 'deepen', 3, ['CLARIFICATION'],"
        " 'Swahili', 'sw', 'qa')"
    )
    row = conn.execute("SELECT status, steps_done, regenerations FROM conversations").fetchone()
    assert row == ("pending", 0, 0)


def test_primary_keys_map_matches_the_tables() -> None:
    """PRIMARY_KEYS names each table's real primary key columns."""
    conn = duckdb.connect()
    create_schema(conn)
    rows = conn.execute(
        "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
        "WHERE constraint_type = 'PRIMARY KEY'"
    ).fetchall()
    assert {tuple(columns): table for table, columns in rows} == PRIMARY_KEYS


def test_table_for_error_names_the_table_from_real_duckdb_messages() -> None:
    """table_for_error finds the table in DuckDB's duplicate-key and NOT NULL messages."""
    conn = duckdb.connect()
    create_schema(conn)
    conn.execute(
        "INSERT INTO seeds (seed_id, instruction, language, language_code, task) "
        "VALUES (1, 'x', 'Hindi', 'hi', 'qa')"
    )
    conn.execute(
        "INSERT INTO messages (conv_id, step, turn, role, kind, content, tokens) "
        "VALUES (1, 0, 1, 'user', 'evolve', 'x', 1)"
    )
    cases = {
        "INSERT INTO seeds (seed_id, instruction, language, language_code, task) "
        "VALUES (1, 'y', 'Hindi', 'hi', 'qa')": "seeds",
        "INSERT INTO messages (conv_id, step, turn, role, kind, content, tokens) "
        "VALUES (1, 0, 1, 'user', 'evolve', 'y', 1)": "messages",
        "INSERT INTO requests (request_id, attempt, status, prompt_tokens, max_tokens) "
        "VALUES (1, 1, 'ok', NULL, 5)": "requests",
        "INSERT INTO run_meta VALUES ('schema_version', '1')": "run_meta",
    }
    for statement, table in cases.items():
        with pytest.raises(duckdb.ConstraintException) as caught:
            conn.execute(statement)
        assert table_for_error(str(caught.value)) == table, str(caught.value)
    assert table_for_error("Constraint Error: something else") is None


def test_open_store_creates_directory_and_schema_then_reopens(tmp_path: Path) -> None:
    """open_store makes the run directory and a fresh schema, and a second open accepts it."""
    path = tmp_path / "out" / "run1" / "state.duckdb"
    conn = open_store(path, create=True)
    conn.execute("INSERT INTO run_meta VALUES ('status', 'running')")
    conn.close()
    again = open_store(path, create=False)
    assert again.execute("SELECT value FROM run_meta WHERE key = 'status'").fetchone() == (
        "running",
    )
    again.close()


def test_open_store_without_create_refuses_a_missing_run(tmp_path: Path) -> None:
    """create=False on a missing file says there is no run there and creates nothing."""
    path = tmp_path / "out" / "nope" / "state.duckdb"
    with pytest.raises(StateError, match=r"there is no run at .*nope"):
        open_store(path, create=False)
    assert not (tmp_path / "out").exists()


def test_wrong_schema_version_is_refused_without_modification(tmp_path: Path) -> None:
    """A file of another schema version is refused with both versions named, bytes untouched."""
    path = tmp_path / "run" / "state.duckdb"
    make_file(
        path,
        [
            "CREATE TABLE run_meta(key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
            "INSERT INTO run_meta VALUES ('schema_version', '99'), ('m2l_version', '9.9.9')",
        ],
    )
    before = fingerprint(path.parent)
    with pytest.raises(StateError) as caught:
        open_store(path, create=True)
    message = str(caught.value)
    assert f"state file {path} was written by m2l schema v99 (m2l 9.9.9)" in message
    assert f"this m2l reads v{SCHEMA_VERSION}" in message
    assert "new run name" in message
    assert fingerprint(path.parent) == before


def test_check_schema_accepts_current_and_refuses_missing_version(tmp_path: Path) -> None:
    """check_schema passes a fresh schema and refuses a database without run_meta."""
    conn = duckdb.connect()
    create_schema(conn)
    check_schema(conn, tmp_path / "state.duckdb")
    other = duckdb.connect()
    other.execute("CREATE TABLE t(x INTEGER)")
    with pytest.raises(StateError, match="has no m2l schema version"):
        check_schema(other, tmp_path / "state.duckdb")


def test_foreign_duckdb_file_is_refused_without_modification(tmp_path: Path) -> None:
    """A DuckDB file made by something else is refused as not an m2l state file, untouched."""
    path = tmp_path / "run" / "state.duckdb"
    make_file(path, ["CREATE TABLE t AS SELECT 1 AS x"])
    before = fingerprint(path.parent)
    with pytest.raises(StateError, match="not an m2l state file"):
        open_store(path, create=True)
    assert fingerprint(path.parent) == before


def test_corrupt_file_is_refused_without_modification(tmp_path: Path) -> None:
    """Garbage bytes are refused as not a DuckDB database, and the file is left as it was."""
    path = tmp_path / "run" / "state.duckdb"
    path.parent.mkdir()
    path.write_bytes(os.urandom(3000) + b"not a database" * 100)
    before = fingerprint(path.parent)
    with pytest.raises(StateError) as caught:
        open_store(path, create=True)
    message = str(caught.value)
    assert f"state file {path} is damaged" in message
    assert "Restore it from a backup, or move it away" in message
    assert fingerprint(path.parent) == before


def test_file_left_empty_by_an_interrupted_creation_gets_the_schema(tmp_path: Path) -> None:
    """A DuckDB file with no tables at all (creation cut short) is completed, not refused."""
    path = tmp_path / "run" / "state.duckdb"
    make_file(path, [])
    conn = open_store(path, create=True)
    check_schema(conn, path)
    conn.close()


def test_the_read_only_opener_refuses_what_it_cannot_read_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """open_read_only: a missing store, a foreign DuckDB file and garbage are refused with a
    StateError naming the file; a good store opens, refuses writes, and stays byte-identical."""
    missing = tmp_path / "nope" / "state.duckdb"
    with pytest.raises(StateError, match=r"there is no run at .*nope"):
        open_read_only(missing, action="export")
    assert not missing.parent.exists()

    foreign = tmp_path / "foreign" / "state.duckdb"
    make_file(foreign, ["CREATE TABLE t AS SELECT 1 AS x"])
    with pytest.raises(StateError, match="not an m2l state file"):
        open_read_only(foreign, action="export")

    garbage = tmp_path / "garbage" / "state.duckdb"
    garbage.parent.mkdir()
    garbage.write_bytes(os.urandom(3000) + b"not a database" * 100)
    with pytest.raises(StateError, match="is damaged"):
        open_read_only(garbage, action="export")

    good = tmp_path / "good" / "state.duckdb"
    open_store(good, create=True).close()
    before = fingerprint(good.parent)
    conn = open_read_only(good, action="export")
    try:
        assert conn.execute("SELECT count(*) FROM conversations").fetchone() == (0,)
        with pytest.raises(duckdb.Error, match="read-only"):
            conn.execute("DELETE FROM conversations")
    finally:
        conn.close()
    assert fingerprint(good.parent) == before


def _make_older(path: Path) -> None:
    """A v1 store as written before the added columns and tables existed."""
    conn = open_store(path, create=True)
    for table, column, _kind in ADDED_COLUMNS:
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    for table in ADDED_TABLES:
        conn.execute(f"DROP TABLE {table}")
    conn.close()


def test_an_older_state_file_gains_the_new_request_columns(tmp_path: Path) -> None:
    """A v1 file written before the reasoning and cache columns, the conversations' room and
    the rejections table existed opens, and gains them."""
    path = tmp_path / "run" / "state.duckdb"
    _make_older(path)
    conn = open_store(path, create=False)
    names = {
        (table, column)
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
        ).fetchall()
    }
    conn.close()
    assert {(table, column) for table, column, _kind in ADDED_COLUMNS} <= names
    assert {table for table, _ in names} >= set(ADDED_TABLES)


def test_an_older_store_read_only_reads_reasoning_and_cache_as_zero(tmp_path: Path) -> None:
    """m2l stats and status on a store from before the added columns (never resumed since, so
    opened read-only) work, counting reasoning and cache savings as zero."""
    from engine.progress.store import store_snapshot
    from state.stats import compute_stats

    path = tmp_path / "run" / "state.duckdb"
    _make_older(path)
    conn = duckdb.connect(str(path), read_only=True)
    try:
        assert compute_stats(conn, run="run").total.reasoning_tokens == 0
        assert compute_stats(conn, run="run").rejections == ()
        assert store_snapshot(conn, run="run").tokens_reasoning == 0
    finally:
        conn.close()


def test_a_table_spread_over_small_row_groups_is_compacted(tmp_path: Path) -> None:
    """Rejected outputs written a few between checkpoints (as a run writes them, checkpoints
    merging nothing) lie in one row group each; compact rewrites them into one, rows, key and
    all, and leaves a table that needs no compaction alone."""
    path = tmp_path / "run" / "state.duckdb"
    conn = open_store(path, create=True)
    for batch in range(12):
        conn.executemany(
            "INSERT INTO rejections (conv_id, step, regeneration, kind, reason, content, "
            "cost_usd) VALUES (?, ?, 0, 'answer', 'wrong_language', ?, 0.001)",
            [[batch, step, f"Texte rejeté {batch}-{step}"] for step in range(3)],
        )
        conn.execute("CHECKPOINT")

    def groups() -> int:
        row = conn.execute(
            "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('rejections')"
        ).fetchone()
        return int(row[0]) if row else 0

    before = conn.execute("SELECT * FROM rejections ORDER BY ALL").fetchall()
    assert groups() == 12
    conn.execute("BEGIN TRANSACTION")
    assert compact(conn, "rejections") is True
    conn.execute("COMMIT")
    conn.execute("CHECKPOINT")
    assert groups() == 1
    assert conn.execute("SELECT * FROM rejections ORDER BY ALL").fetchall() == before
    with pytest.raises(duckdb.ConstraintException):  # the key came back with the table
        conn.execute(
            "INSERT INTO rejections (conv_id, step, regeneration, kind, reason, content) "
            "VALUES (0, 0, 0, 'answer', 'again', 'x')"
        )
    assert compact(conn, "rejections") is False
    conn.close()
    check = open_read_only(path, action="read it")  # still an m2l store
    assert check.execute("SELECT count(*) FROM rejections").fetchone() == (36,)
    check.close()
