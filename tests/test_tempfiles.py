"""Temp files left by a killed process are removed on the next start; live ones are kept."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.app.run import execute_run
from engine.config import load_config
from state.schema import TEMP_DIRECTORY, open_read_only, open_store
from state.tempfiles import remove_stale_temp_files
from tests.runfixtures import write_config


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_a_dead_process_are_removed(tmp_path: Path) -> None:
    """.messages.jsonl.PID.tmp, .part, .partN and .status.json.PID.tmp of a dead pid go."""
    export = tmp_path / "export"
    export.mkdir()
    pid = dead_pid()
    stale = [
        export / f".messages.jsonl.{pid}.tmp",
        export / f".release.parquet.{pid}.part",
        export / f".release.parquet.{pid}.part3",
        tmp_path / f".status.json.{pid}.tmp",
    ]
    mine = tmp_path / f".status.json.{os.getpid()}.tmp"  # a live process's: kept
    keep = [mine, tmp_path / "status.json", export / "messages.jsonl", tmp_path / ".hidden.tmp"]
    for path in stale + keep:
        path.write_text("x")
    removed = remove_stale_temp_files(tmp_path, export, tmp_path / "missing")
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_a_run_start_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    """`m2l run` tidies the run and export folders of a dead process's temp files first."""
    config = load_config(write_config(tmp_path))
    pid = dead_pid()
    (config.run_dir / "export").mkdir(parents=True)
    left = [
        config.run_dir / f".status.json.{pid}.tmp",
        config.run_dir / "export" / f".messages.jsonl.{pid}.tmp",
        config.run_dir / "export" / f".messages.jsonl.{pid}.part",
    ]
    for path in left:
        path.write_text("half written")
    asyncio.run(execute_run(config, env={}))
    assert not any(path.exists() for path in left)


# Opens a store whose DuckDB may hold 64 MB, fills a TEMP table of ~100 MB (spilled to the
# run's spill directory), says so and waits to be killed.
_SPILLING = """
import sys
from pathlib import Path
from engine.config import StoreConfig
from state.schema import open_store
conn = open_store(Path(sys.argv[1]), create=True, store=StoreConfig(memory_limit_mb=64))
conn.execute("CREATE TEMP TABLE t AS SELECT repeat('x', 100) || i AS s FROM range(1000000) r(i)")
print("spilled", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("opener", ["open_store", "open_read_only"])
def test_spill_files_of_a_killed_process_go_when_its_store_is_opened_again(
    tmp_path: Path, opener: str
) -> None:
    """DuckDB's spill files, left by a process SIGKILLed mid-spill, are removed by the next
    open of the store (a run's start or any command); a live process's are kept."""
    path = tmp_path / "run" / "state.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SPILLING, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"spilled\n"
    spill = tmp_path / "run" / TEMP_DIRECTORY
    left = [p for p in spill.iterdir() if p.name.startswith(f"duckdb_temp_{proc.pid}_")]
    assert sum(p.stat().st_size for p in left) > 10 << 20, "the child did not spill"
    proc.kill()
    proc.communicate(timeout=30)
    live = spill / f"duckdb_temp_{os.getpid()}_0_owner"  # a live process's file: kept
    live.write_text("")
    if opener == "open_store":
        open_store(path, create=False).close()
    else:
        open_read_only(path, action="read it").close()
    assert [p.name for p in spill.iterdir()] == [live.name]
