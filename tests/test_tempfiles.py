"""Temp files left by a killed process are removed on the next start; live ones are kept."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from engine.app.run import execute_run
from engine.config import load_config
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
