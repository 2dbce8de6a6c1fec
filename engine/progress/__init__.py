"""Progress: the event-fed model, the live dashboard, log and JSON lines, the run status file,
``m2l status`` and the end-of-run summary.

The engine feeds a ``ProgressModel`` (an EventHook) and wraps the run in ``progress_display``;
everything else here reads the model's snapshots, a status file, or a store read-only.
"""

from __future__ import annotations

from engine.progress.dashboard import Dashboard
from engine.progress.display import (
    MODES,
    Display,
    JsonDisplay,
    PlainDisplay,
    QuietDisplay,
    RichDisplay,
    make_display,
    progress_display,
    resolve_mode,
)
from engine.progress.lines import progress_json, progress_line
from engine.progress.model import ProgressModel
from engine.progress.rates import SlidingCounter
from engine.progress.snapshot import FINAL_STATES, LanguageProgress, ProgressSnapshot
from engine.progress.status import NoRun, StatusReport, judge_status_file, read_run_status
from engine.progress.statusfile import (
    HEARTBEAT_FRESH_S,
    STATUS_FILE,
    StatusFile,
    StatusFileWriter,
    pid_alive,
    read_status_file,
)
from engine.progress.store import STATE_DB, read_store, store_snapshot
from engine.progress.summary import export_command, render_summary, summary_text

__all__ = [
    "FINAL_STATES",
    "HEARTBEAT_FRESH_S",
    "MODES",
    "STATE_DB",
    "STATUS_FILE",
    "Dashboard",
    "Display",
    "JsonDisplay",
    "LanguageProgress",
    "NoRun",
    "PlainDisplay",
    "ProgressModel",
    "ProgressSnapshot",
    "QuietDisplay",
    "RichDisplay",
    "SlidingCounter",
    "StatusFile",
    "StatusFileWriter",
    "StatusReport",
    "export_command",
    "judge_status_file",
    "make_display",
    "pid_alive",
    "progress_display",
    "progress_json",
    "progress_line",
    "read_run_status",
    "read_status_file",
    "read_store",
    "render_summary",
    "resolve_mode",
    "store_snapshot",
    "summary_text",
]
