"""Temporary files a killed m2l process left behind, found and removed on the next start.

Every file m2l writes atomically goes through a hidden sibling named for the writing process,
``.NAME.PID.tmp`` or ``.NAME.PID.part`` / ``.partN`` (state/export.py, the status file, the
HTML report), then an ``os.replace``. A SIGKILL between the two leaves the sibling; its PID says
whether the process that owned it is gone.

DuckDB's spill files are named for their process too (``duckdb_temp_PID_N_storage_...``,
``duckdb_temp_PID_N_owner``): DuckDB deletes them when its connection closes, but a SIGKILL
while a query spilled leaves them (180 MB for one spilled TEMP table), and DuckDB does not
remove another process's on its next open. Left alone, every kill of a spilling run or filter
would keep its share of disk in the run's spill directory for good.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

__all__ = ["remove_stale_temp_files"]

_TEMP = re.compile(r"^\..+\.(\d+)\.(?:tmp|part\d*)$")
_SPILL = re.compile(r"^duckdb_temp_(\d+)_")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temp_files(*folders: Path) -> list[Path]:
    """Remove the temp files (and DuckDB spill files) of dead processes in ``folders`` (not
    recursive); the removed.

    A folder that does not exist or cannot be listed is skipped: this is tidying, never a
    reason to fail a command.
    """
    removed = []
    for folder in folders:
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for path in entries:
            match = _TEMP.match(path.name) or _SPILL.match(path.name)
            if match is None or _alive(int(match.group(1))) or not path.is_file():
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed
