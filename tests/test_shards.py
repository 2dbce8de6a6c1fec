"""A sharded run's stores (state/shards.py) and its shards on the dashboard: the plan splits by
conversation with nothing lost or doubled, a merge brings the run's store up to date (again and
again, as sessions go), a resumed run keeps its number of shards, and the driver's figures of
each shard reach the dashboard and status.json."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from engine.app.run import execute_run, prepare_store
from engine.clock import FakeClock
from engine.config import load_config
from engine.errors import ConfigError, StateError
from engine.events import Hooks, ShardsUpdate
from engine.progress.dashboard import Dashboard
from engine.progress.model import ProgressModel
from engine.progress.snapshot import ProgressSnapshot
from state.export import open_run
from state.schema import STATE_FILE, open_store
from state.shards import (
    REQUEST_ID_SPAN,
    ensure_merged,
    merge_shards,
    shard_progress,
    split_run,
)
from tests.runfixtures import write_config


async def planned(tmp_path: Path) -> Path:
    """A run planned in its store (24 conversations), not run."""
    config = load_config(write_config(tmp_path, evols_per_seed=3))
    await prepare_store(config, env={}, hooks=Hooks())
    return config.run_dir


def count(path: Path, sql: str) -> int:
    with duckdb.connect(str(path), read_only=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.anyio
async def test_the_plan_splits_by_conversation_with_nothing_lost_or_doubled(
    tmp_path: Path,
) -> None:
    """Each conversation goes to exactly one shard (conv_id modulo the shards), every shard
    has the run's meta and seeds, and the run remembers its number of shards."""
    run_dir = await planned(tmp_path)
    conn = open_store(run_dir / STATE_FILE, create=False)
    try:
        dirs = split_run(conn, run_dir, 3)
        assert shard_progress(conn, 3) == [(0, 8), (0, 8), (0, 8)]
    finally:
        conn.close()
    seen: list[int] = []
    for k, folder in enumerate(dirs):
        with duckdb.connect(str(folder / STATE_FILE), read_only=True) as shard:
            ids = [int(c) for (c,) in shard.execute("SELECT conv_id FROM conversations").fetchall()]
            assert ids and all(c % 3 == k for c in ids)
            seen += ids
            assert shard.execute("SELECT count(*) FROM seeds").fetchone() == (8,)
            meta = dict(shard.execute("SELECT key, value FROM run_meta").fetchall())
            assert "config_json" in meta and "shards" not in meta
    assert sorted(seen) == list(range(1, 25))
    # Resuming with another number of shards is refused, naming the one to use.
    conn = open_store(run_dir / STATE_FILE, create=False)
    try:
        with pytest.raises(StateError, match="--shards 3"):
            split_run(conn, run_dir, 2)
        assert split_run(conn, run_dir, 3) == dirs  # the same shards, left as they are
    finally:
        conn.close()


@pytest.mark.anyio
async def test_a_merge_brings_the_runs_store_up_to_date_every_session(tmp_path: Path) -> None:
    """What the shards wrote replaces the run's rows of their conversations; a second merge
    after more work neither loses nor doubles a row."""
    run_dir = await planned(tmp_path)
    conn = open_store(run_dir / STATE_FILE, create=False)
    try:
        dirs = split_run(conn, run_dir, 2)
    finally:
        conn.close()

    def work(folder: Path, k: int, steps: int) -> None:
        with duckdb.connect(str(folder / STATE_FILE)) as shard:
            conv = shard.execute("SELECT min(conv_id) FROM conversations").fetchone()
            assert conv is not None
            for step in range(steps):
                shard.execute(
                    "INSERT INTO messages (conv_id, step, turn, role, kind, content, tokens) "
                    "VALUES (?, ?, 0, 'user', 'evolve', 'x', 1) ON CONFLICT DO NOTHING",
                    [conv[0], step],
                )
                shard.execute(
                    "INSERT INTO requests (request_id, conv_id, step, attempt, status, "
                    "prompt_tokens, max_tokens) VALUES (?, ?, ?, 1, 'ok', 1, 1) "
                    "ON CONFLICT DO NOTHING",
                    [k * REQUEST_ID_SPAN + step + 1, conv[0], step],
                )
            shard.execute(
                "UPDATE conversations SET status = 'active', steps_done = ? WHERE conv_id = ?",
                [steps, conv[0]],
            )

    main = run_dir / STATE_FILE
    for steps in (1, 2):  # two sessions
        for k, folder in enumerate(dirs):
            work(folder, k, steps)
        conn = open_store(main, create=False)
        try:
            assert merge_shards(conn, run_dir) == 2
            assert shard_progress(conn, 2) == [(0, 12), (0, 12)]
        finally:
            conn.close()
        assert count(main, "SELECT count(*) FROM messages") == 2 * steps
        assert count(main, "SELECT count(*) FROM requests") == 2 * steps
        # The running totals the ledger and status read agree with the merged log.
        assert count(main, "SELECT sum(sent) FROM log_totals") == 2 * steps
        assert count(main, "SELECT count(*) FROM conversations") == 24
        assert count(main, "SELECT sum(steps_done) FROM conversations") == 2 * steps


@pytest.mark.anyio
async def test_a_command_merges_what_a_killed_driver_left_unmerged(tmp_path: Path) -> None:
    """The driver was killed before its end-of-run merge: the next command that reads the run
    merges first, so it sees the shards' work; once merged, no command merges again."""
    run_dir = await planned(tmp_path)
    conn = open_store(run_dir / STATE_FILE, create=False)
    try:
        dirs = split_run(conn, run_dir, 2)
    finally:
        conn.close()
    with duckdb.connect(str(dirs[1] / STATE_FILE)) as shard:
        shard.execute("UPDATE conversations SET status = 'failed', error = 'x' WHERE conv_id = 1")
    conn = open_run(run_dir, action="export")
    try:
        row = conn.execute("SELECT status FROM conversations WHERE conv_id = 1").fetchone()
    finally:
        conn.close()
    assert row == ("failed",)
    assert not ensure_merged(run_dir)


@pytest.mark.anyio
async def test_a_sharded_run_is_not_resumed_by_one_process(tmp_path: Path) -> None:
    """Its work is in the shards' stores: `m2l run CONFIG` without --ray refuses, naming the
    command that resumes it, and changes nothing."""
    config = load_config(write_config(tmp_path, evols_per_seed=3))
    await prepare_store(config, env={}, hooks=Hooks())
    conn = open_store(config.run_dir / STATE_FILE, create=False)
    try:
        split_run(conn, config.run_dir, 2)
    finally:
        conn.close()
    with pytest.raises(ConfigError, match="--ray --shards 2"):
        await execute_run(config, env={})
    assert count(config.run_dir / STATE_FILE, "SELECT count(*) FROM requests") == 0


def test_the_driver_s_shard_figures_reach_the_dashboard_and_status_file() -> None:
    """A ShardsUpdate shows each shard on the dashboard (finished/planned, share, restarts),
    and the figures survive status.json's round trip."""
    model = ProgressModel(FakeClock())
    model.on_event(ShardsUpdate((3, 12), (12, 12), (0, 1), (50, 50), 0.0))
    snapshot = model.snapshot()
    assert snapshot.shards == ((3, 12, 0, 50), (12, 12, 1, 50))
    assert ProgressSnapshot.from_dict(snapshot.as_dict()).shards == snapshot.shards
    console = Console(record=True, width=100, force_terminal=True)
    console.print(Dashboard(snapshot))
    text = console.export_text()
    line = next(line for line in text.splitlines() if "shards" in line)
    assert "00 3/12 50%" in line and "01 12/12 done ↻1" in line
    # A run in one process has no shards line.
    console = Console(record=True, width=100, force_terminal=True)
    console.print(Dashboard(ProgressModel(FakeClock()).snapshot()))
    assert "shards" not in console.export_text()
