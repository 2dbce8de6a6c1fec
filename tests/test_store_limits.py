"""[store]: DuckDB's memory cap, threads and spill folder, set on every connection m2l opens."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
import pytest

from engine.config import StoreConfig, load_config
from engine.errors import ConfigError, StateError
from state.export import open_run
from state.schema import STATE_FILE, connect_memory, open_read_only, open_store, release_cache
from state.writer import GroupCommitWriter


def _settings(conn: duckdb.DuckDBPyConnection) -> tuple[str, int, str]:
    row = conn.execute(
        "SELECT current_setting('memory_limit'), current_setting('threads'), "
        "current_setting('temp_directory')"
    ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1]), str(row[2])


def _limit_text(mb: int) -> str:
    """How DuckDB shows a memory limit of ``mb`` MB (it prints MiB)."""
    probe = duckdb.connect(":memory:", config={"memory_limit": f"{mb}MB"})
    try:
        return _settings(probe)[0]
    finally:
        probe.close()


def _config(tmp_path: Path, store: str) -> Path:
    (tmp_path / "seeds.jsonl").write_text('{"inputs": "x", "language": "English"}\n')
    path = tmp_path / "m2l.toml"
    path.write_text(f'[run]\nname = "t"\n[seeds]\nfile = "seeds.jsonl"\n{store}')
    return path


def test_store_section_is_loaded_and_defaults_are_small(tmp_path: Path) -> None:
    """Without [store] DuckDB gets 512 MB and 2 threads, not its 80%-of-RAM default."""
    default = load_config(_config(tmp_path, "")).store
    assert (default.memory_limit_mb, default.threads, default.temp_directory) == (512, 2, None)
    set_ = load_config(
        _config(tmp_path, '[store]\nmemory_limit_mb = 300\nthreads = 1\ntemp_directory = "spill"')
    ).store
    assert set_ == StoreConfig(300, 1, tmp_path / "spill")


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("memory_limit_mb = 16", r"store\.memory_limit_mb: must be at least 64, found 16"),
        ("threads = 0", r"store\.threads: must be between 1 and 256, found 0"),
        ("vacuum_tasks = -1", r"store\.vacuum_tasks: must be between 0 and 1000, found -1"),
        ("memory_limit = '1GB'", r"unknown key 'store\.memory_limit'; did you mean"),
    ],
)
def test_bad_store_values_are_refused_at_load(tmp_path: Path, store: str, message: str) -> None:
    """A wrong [store] value is a ConfigError naming the key, before any file is created."""
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, f"[store]\n{store}\n"))


def test_the_run_store_gets_its_caps_and_spills_inside_the_run(tmp_path: Path) -> None:
    """open_store sets memory_limit and threads from [store], temp files go to the run dir."""
    path = tmp_path / "run" / STATE_FILE
    conn = open_store(path, create=True, store=StoreConfig(memory_limit_mb=200, threads=1))
    try:
        assert _settings(conn) == (_limit_text(200), 1, str(tmp_path / "run" / "duckdb.tmp"))
    finally:
        conn.close()


@pytest.mark.anyio
async def test_the_writer_opens_its_store_with_the_configured_caps(tmp_path: Path) -> None:
    """The run's GroupCommitWriter passes [store] to the one connection it opens."""
    store = StoreConfig(memory_limit_mb=128, threads=1, temp_directory=tmp_path / "spill")
    async with GroupCommitWriter(tmp_path / STATE_FILE, store=store) as writer:
        seen = await writer.run(_settings)
    assert seen == (_limit_text(128), 1, str(tmp_path / "spill"))


def _store_with_config(tmp_path: Path, store: dict[str, object] | None) -> Path:
    path = tmp_path / STATE_FILE
    conn = open_store(path, create=True)
    snapshot = {"run": {"name": "t"}} | ({"store": store} if store is not None else {})
    conn.execute(
        "INSERT INTO run_meta VALUES ('config_json', ?)", [orjson.dumps(snapshot).decode()]
    )
    conn.close()
    return path


def test_offline_commands_use_the_runs_stored_store_settings(tmp_path: Path) -> None:
    """The read-only opener (status, stats, export) and the filter's writable one apply the
    [store] settings the run was started with."""
    path = _store_with_config(
        tmp_path, {"memory_limit_mb": 256, "threads": 1, "temp_directory": None}
    )
    expected = (_limit_text(256), 1, str(tmp_path / "duckdb.tmp"))
    for open_ in (
        lambda: open_read_only(path, action="read it"),
        lambda: open_run(tmp_path, action="x", write=True),
    ):
        conn = open_()
        try:
            assert _settings(conn) == expected
        finally:
            conn.close()


def test_a_store_from_before_the_section_gets_the_defaults(tmp_path: Path) -> None:
    """A run whose stored config has no [store] is read with the default caps."""
    path = _store_with_config(tmp_path, None)
    conn = open_read_only(path, action="read it")
    try:
        assert _settings(conn) == (_limit_text(512), 2, str(tmp_path / "duckdb.tmp"))
    finally:
        conn.close()


def test_damaged_stored_store_settings_are_a_clear_error(tmp_path: Path) -> None:
    """A stored [store] that no longer validates is a StateError naming the settings."""
    path = _store_with_config(tmp_path, {"memory_limit_mb": 1, "threads": 1})
    with pytest.raises(
        StateError,
        match=r"memory_limit_mb: must be at least 64, found 1.*stored \[store\] settings",
    ):
        open_read_only(path, action="read it")


def test_in_memory_connections_are_capped_too() -> None:
    """Seed reports and estimates use in-memory DuckDB databases with the same caps."""
    conn = connect_memory(StoreConfig(memory_limit_mb=100, threads=1))
    try:
        limit, threads, _ = _settings(conn)
        assert (limit, threads) == (_limit_text(100), 1)
    finally:
        conn.close()


def _cached_mb(conn: duckdb.DuckDBPyConnection) -> float:
    row = conn.execute(
        "SELECT coalesce(sum(memory_usage_bytes), 0) / 1e6 FROM duckdb_memory() "
        "WHERE tag = 'BASE_TABLE'"
    ).fetchone()
    assert row is not None
    return float(row[0])


def test_release_cache_drops_cached_blocks_and_restores_the_cap(tmp_path: Path) -> None:
    """Blocks a query read stay cached until release_cache evicts them; the cap is then the
    store's again (a run calls it at each batch, an export after each range)."""
    store = StoreConfig(memory_limit_mb=300, threads=1)
    conn = open_store(tmp_path / STATE_FILE, create=True, store=store)
    try:
        conn.execute(
            "CREATE TABLE big AS SELECT range AS i, md5(range::VARCHAR) || md5((-range)::VARCHAR) "
            "|| md5((range + 7)::VARCHAR) AS s FROM range(400000)"
        )
        conn.execute("CHECKPOINT")
        conn.execute("SELECT count(*) FROM big WHERE s LIKE '%Z%'").fetchall()
        assert _cached_mb(conn) > 20
        release_cache(conn, store)
        assert _cached_mb(conn) < 10
        assert _settings(conn)[0] == _limit_text(300)
    finally:
        conn.close()


def test_release_cache_leaves_an_open_transaction_intact(tmp_path: Path) -> None:
    """When DuckDB cannot go down to the release floor (a transaction pins its rows), the
    release gives up quietly and the writer's transaction still commits."""
    store = StoreConfig(memory_limit_mb=300, threads=1)
    conn = open_store(tmp_path / STATE_FILE, create=True, store=store)
    try:
        conn.execute("CREATE TABLE keyed(i BIGINT PRIMARY KEY, s VARCHAR)")
        conn.execute("BEGIN TRANSACTION")
        conn.execute("INSERT INTO keyed SELECT range, md5(range::VARCHAR) FROM range(1000000)")
        release_cache(conn, store)
        conn.execute("COMMIT")
        assert conn.execute("SELECT count(*) FROM keyed").fetchone() == (1000000,)
        assert _settings(conn)[0] == _limit_text(300)
    finally:
        conn.close()


def test_release_cache_keeps_temp_tables_when_it_cannot_spill(tmp_path: Path) -> None:
    """A TEMP table's blocks can only go to the spill directory: when none can be made there
    (a read-only run directory), the release keeps them, and the cap is the store's again."""
    (tmp_path / "a-file").write_text("")
    store = StoreConfig(memory_limit_mb=300, threads=1, temp_directory=tmp_path / "a-file" / "x")
    conn = connect_memory(store)
    try:
        conn.execute(
            "CREATE TEMP TABLE t AS SELECT range AS i, md5(range::VARCHAR) AS s FROM range(300000)"
        )
        release_cache(conn, store)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (300000,)
        assert _settings(conn)[0] == _limit_text(300)
    finally:
        conn.close()


def _row_groups_after_checkpoints(path: Path, store: StoreConfig) -> int:
    """Append 4 x 1,000 messages, one checkpoint after each; the row groups they end in."""
    conn = open_store(path, create=True, store=store)
    try:
        for k in range(4):
            conn.execute(
                "INSERT INTO messages (conv_id, step, turn, role, kind, content, tokens) "
                "SELECT range, 0, 0, 'assistant', 'answer', repeat('text ', 20), 20 "
                "FROM range(?, ?)",
                [k * 1000, k * 1000 + 1000],
            )
            conn.execute("CHECKPOINT")
        row = conn.execute(
            "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('messages')"
        ).fetchone()
        assert row is not None
        return int(row[0])
    finally:
        conn.close()


def test_checkpoints_merge_no_row_groups_unless_asked(tmp_path: Path) -> None:
    """By default a checkpoint writes what was added as a row group of its own: merging row
    groups (DuckDB's vacuum) rewrites every text in them, which at 10^5 conversations lifted
    a run's RSS by hundreds of MB. ``vacuum_tasks`` lets DuckDB merge them again."""
    assert StoreConfig().vacuum_tasks == 0
    assert _row_groups_after_checkpoints(tmp_path / "a" / STATE_FILE, StoreConfig()) == 4
    merged = StoreConfig(vacuum_tasks=100)
    assert _row_groups_after_checkpoints(tmp_path / "b" / STATE_FILE, merged) == 1
