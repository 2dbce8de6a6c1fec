"""The run status file: a small JSON file the running engine replaces atomically every second.

DuckDB lets one process write a store and locks out readers meanwhile, so ``m2l status`` in
another terminal reads this file instead. ``StatusFileWriter.write`` raises OSError when the
run directory cannot be written; ``read_status_file`` raises StateError for a damaged file.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.errors import StateError
from engine.progress.lines import iso_time
from engine.progress.snapshot import ProgressSnapshot
from engine.version import __version__

__all__ = [
    "HEARTBEAT_FRESH_S",
    "STATUS_FILE",
    "StatusFile",
    "StatusFileWriter",
    "pid_alive",
    "read_status_file",
]

STATUS_FILE = "status.json"
HEARTBEAT_FRESH_S = 10.0  # the writer beats every second; ten missed beats is not a hiccup
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class StatusFile:
    """What a status file says: who wrote it, when, the run's state and its figures."""

    pid: int
    host: str
    heartbeat: float  # wall clock (time.time()), comparable across processes
    state: str
    snapshot: ProgressSnapshot
    m2l_version: str = ""

    def age_s(self, now: float) -> float:
        """Seconds since the last heartbeat (never negative, whatever the clocks did)."""
        return max(now - self.heartbeat, 0.0)


class StatusFileWriter:
    """Writes ``<run_dir>/status.json`` atomically: a temp file, then ``os.replace``."""

    __slots__ = ("_host", "_pid", "_tmp", "_wall", "path")

    def __init__(
        self,
        run_dir: Path,
        *,
        pid: int | None = None,
        host: str | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(run_dir) / STATUS_FILE
        self._pid = os.getpid() if pid is None else pid
        self._host = socket.gethostname() if host is None else host
        self._wall = wall
        # Per-pid temp name: a second process pointed at the same directory by mistake must
        # not interleave its bytes with ours (DuckDB's lock stops it soon after anyway).
        self._tmp = self.path.with_name(f".{STATUS_FILE}.{self._pid}.tmp")

    def write(self, snapshot: ProgressSnapshot) -> None:
        """Replace the status file with this snapshot and a fresh heartbeat; raises OSError."""
        now = self._wall()
        record: dict[str, Any] = {
            "format": _FORMAT,
            "pid": self._pid,
            "host": self._host,
            "heartbeat": now,
            "heartbeat_at": iso_time(now),
            "state": snapshot.state,
            "m2l_version": __version__,
            "snapshot": snapshot.as_dict(),
        }
        # orjson: the stdlib's indented dump of 70 languages costs more than a dashboard frame.
        data = orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No fsync: the file is advisory and rewritten every second, and a reader treats a
        # damaged file as unreadable; an fsync per second would cost more than the display.
        self._tmp.write_bytes(data)
        os.replace(self._tmp, self.path)


def read_status_file(run_dir: Path) -> StatusFile | None:
    """The run's status file, or None when there is none; raises StateError when it is damaged."""
    path = Path(run_dir) / STATUS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read the status file {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
        return StatusFile(
            pid=int(data["pid"]),
            host=str(data.get("host", "")),
            heartbeat=float(data["heartbeat"]),
            state=str(data["state"]),
            snapshot=ProgressSnapshot.from_dict(data["snapshot"]),
            m2l_version=str(data.get("m2l_version", "")),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise StateError(
            f"the status file {path} is damaged ({type(exc).__name__}: {exc}); the run's "
            "store still has every figure: try again once the run has stopped"
        ) from exc


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    try:
        # A killed child that its parent has not reaped yet still answers signal 0.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust the signal
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
