"""``m2l status``'s answer: is the run running, finished, interrupted or stopped at its cap.

``read_run_status`` raises NoRun (a StateError) when the directory holds no run, and
StateError when its store cannot be read and there is no status file to fall back on.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import StateError
from engine.formats import ago, duration
from engine.progress.snapshot import FINAL_STATES, ProgressSnapshot
from engine.progress.statusfile import (
    HEARTBEAT_FRESH_S,
    STATUS_FILE,
    StatusFile,
    pid_alive,
    read_status_file,
)
from engine.progress.store import STATE_DB, read_store
from engine.progress.summary import budget_next_step
from state.schema import StoreLocked

__all__ = ["NoRun", "StatusReport", "judge_status_file", "read_run_status"]

_RESUME = "run the same command to resume"
# What a fresh status file of a live process says, as `m2l status` reports it.
_LIVE = {"starting": "starting", "running": "running", "stopping": "stopping"}


class NoRun(StateError):
    """The directory holds neither a store nor a status file."""


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A run's state, one sentence on why we believe it, and its figures."""

    run_dir: Path
    # starting | running | stopping | stalled | finished | interrupted | budget_exhausted |
    # failed | unknown
    state: str
    note: str
    source: str  # where the figures come from, in words
    snapshot: ProgressSnapshot
    pid: int | None = None
    heartbeat_age_s: float | None = None

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-able data for ``m2l status --json``."""
        return {
            "run_dir": str(self.run_dir),
            "state": self.state,
            "note": self.note,
            "source": self.source,
            "pid": self.pid,
            "heartbeat_age_s": self.heartbeat_age_s,
            "snapshot": self.snapshot.as_dict(),
        }


def judge_status_file(status: StatusFile, *, now: float, alive: bool | None) -> tuple[str, str]:
    """The state a status file supports, and why; ``alive`` is None when the pid cannot be
    checked (the writer ran on another host).

    A run is running only if the file says so, its pid is alive and its heartbeat is fresh.
    """
    age = status.age_s(now)
    if status.state not in ("running", "starting", "stopping"):
        snap = status.snapshot
        return status.state, _ended_note(status.state, snap.message, snap.config_path)
    beat = f"last heartbeat {ago(age)}"
    if alive is False:
        return "interrupted", f"the process is gone (pid {status.pid}, {beat}); {_RESUME}"
    if age < HEARTBEAT_FRESH_S:
        where = "" if alive else f" on {status.host}"
        # A live process loading seeds or in its Ctrl-C grace period says so: "stopping" tells
        # the user their interrupt was heard and the run will end by itself.
        doing = {"starting": "is starting", "stopping": "is stopping"}.get(
            status.state, "is writing"
        )
        return _LIVE.get(status.state, "running"), f"pid {status.pid}{where} {doing} ({beat})"
    if alive is None:
        return "interrupted", (
            f"no heartbeat from pid {status.pid} on {status.host} ({beat}); if that process is "
            f"gone, {_RESUME}"
        )
    return "stalled", (
        f"pid {status.pid} is alive but silent ({beat}): it may be hung, or the pid reused; "
        f"stop it, then {_RESUME}"
    )


@dataclass(frozen=True, slots=True)
class _FileView:
    """A status file and what it supports: state, why, and how old it is."""

    file: StatusFile
    state: str
    note: str
    age_s: float

    def status(self, run_dir: Path, source: str, state: str | None = None) -> StatusReport:
        """A StatusReport with this file's figures (and state, unless another is given)."""
        state = state or self.state
        snapshot = _with_state(self.file.snapshot, state)
        return StatusReport(run_dir, state, self.note, source, snapshot, self.file.pid, self.age_s)


def read_run_status(
    run_dir: Path,
    *,
    now: Callable[[], float] = time.time,
    alive: Callable[[int], bool] = pid_alive,
) -> StatusReport:
    """Read a run's state and figures from its status file and, when it is free, its store.

    Raises NoRun when ``run_dir`` holds neither ``state.duckdb`` nor ``status.json``, and
    StateError when the store is unreadable and no status file can stand in for it.
    """
    run_dir = Path(run_dir)
    store_path = run_dir / STATE_DB
    damaged = ""
    try:
        file = read_status_file(run_dir)
    except StateError:
        if not store_path.exists():
            raise
        file, damaged = None, f"; {STATUS_FILE} is damaged and was ignored"
    if file is None and not store_path.exists():
        raise NoRun(
            f"{run_dir} holds no run: there is no {STATE_DB} or {STATUS_FILE} in it; check the "
            "path (a run directory is <output_dir>/<run name>)"
        )
    view = None
    if file is not None:
        wall = now()
        same_host = file.host in ("", socket.gethostname())
        state, note = judge_status_file(
            file, now=wall, alive=alive(file.pid) if same_host else None
        )
        view = _FileView(file, state, note, file.age_s(wall))
        if state in _LIVE:
            # The writer holds the store; its status file is the only view while it runs.
            return view.status(run_dir, f"{STATUS_FILE}, written {ago(view.age_s)}")
        if not store_path.exists():
            return view.status(run_dir, f"{STATUS_FILE} (there is no {STATE_DB} yet)")
    try:
        snapshot = read_store(store_path)
    except StoreLocked as exc:
        holder = f"pid {exc.pid}" if exc.pid else "another process"
        if view is None:
            note = f"{holder} holds the store and has written no status file yet"
            empty = ProgressSnapshot(run=run_dir.name, state="running")
            return StatusReport(run_dir, "running", note, "nothing yet", empty, exc.pid)
        age = duration(view.age_s)
        return view.status(run_dir, f"{STATUS_FILE}, {age} old: the store is locked by {holder}")
    return _from_store(run_dir, snapshot, view, damaged)


def _from_store(
    run_dir: Path, snapshot: ProgressSnapshot, view: _FileView | None, damaged: str
) -> StatusReport:
    """The status of a run nobody is running, with the store's figures."""
    message = view.file.snapshot.message if view is not None else snapshot.message
    if view is not None and view.state in FINAL_STATES:
        state, note = view.state, view.note
    elif view is not None or snapshot.state in ("running", "starting", "stopping", "unknown"):
        # Nobody holds the store, so nobody is running the run, whatever was last recorded:
        # the process ended without recording its end (killed, crashed, machine down).
        state, note, message = "interrupted", f"the process is gone; {_RESUME}", ""
    else:
        state, note = snapshot.state, _ended_note(snapshot.state, message, snapshot.config_path)
    snapshot = replace(snapshot, state=state, message=message or snapshot.message)
    if view is not None:
        # The store keeps no queue times: the last status file's figures stand in for them.
        last = view.file.snapshot
        snapshot = replace(
            snapshot,
            queued_mean_s=last.queued_mean_s,
            server_mean_s=last.server_mean_s,
            concurrency_limit=last.concurrency_limit,
        )
    pid, age = (view.file.pid, view.age_s) if view is not None else (None, None)
    return StatusReport(
        run_dir, state, note, f"{STATE_DB} (read-only){damaged}", snapshot, pid, age
    )


def _ended_note(state: str, message: str, config_path: str = "") -> str:
    """One sentence on a run that nobody is running, by how it ended."""
    why = f" ({message})" if message else ""
    if state == "interrupted":
        return f"stopped before the end{why}; {_RESUME}"
    if state == "budget_exhausted":
        return f"stopped at the budget cap{why}; {budget_next_step(message, config_path)}"
    if state == "failed":
        return f"stopped on an error{why}: fix it, then {_RESUME}"
    if state == "finished":
        return "every conversation reached a final state"
    return f"the store records the state '{state}'"


def _with_state(snapshot: ProgressSnapshot, state: str) -> ProgressSnapshot:
    return snapshot if snapshot.state == state else replace(snapshot, state=state)
