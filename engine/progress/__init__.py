"""Progress: the event-fed model, the live dashboard, log and JSON lines, the run status file,
``m2l status`` and the end-of-run summary.

The engine feeds a ``ProgressModel`` (an EventHook) and wraps the run in ``progress_display``;
everything else here reads the model's snapshots, a status file, or a store read-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_getattr

if TYPE_CHECKING:
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

# Loaded on first use, not with the package: `m2l status` reads a store or a status file and
# must not import the live display, the model and everything they pull in.
_HOMES: dict[str, str] = {
    "Dashboard": "engine.progress.dashboard",
    "Display": "engine.progress.display",
    "FINAL_STATES": "engine.progress.snapshot",
    "HEARTBEAT_FRESH_S": "engine.progress.statusfile",
    "JsonDisplay": "engine.progress.display",
    "LanguageProgress": "engine.progress.snapshot",
    "MODES": "engine.progress.display",
    "NoRun": "engine.progress.status",
    "PlainDisplay": "engine.progress.display",
    "ProgressModel": "engine.progress.model",
    "ProgressSnapshot": "engine.progress.snapshot",
    "QuietDisplay": "engine.progress.display",
    "RichDisplay": "engine.progress.display",
    "STATE_DB": "engine.progress.store",
    "STATUS_FILE": "engine.progress.statusfile",
    "SlidingCounter": "engine.progress.rates",
    "StatusFile": "engine.progress.statusfile",
    "StatusFileWriter": "engine.progress.statusfile",
    "StatusReport": "engine.progress.status",
    "export_command": "engine.progress.summary",
    "judge_status_file": "engine.progress.status",
    "make_display": "engine.progress.display",
    "pid_alive": "engine.progress.statusfile",
    "progress_display": "engine.progress.display",
    "progress_json": "engine.progress.lines",
    "progress_line": "engine.progress.lines",
    "read_run_status": "engine.progress.status",
    "read_status_file": "engine.progress.statusfile",
    "read_store": "engine.progress.store",
    "render_summary": "engine.progress.summary",
    "resolve_mode": "engine.progress.display",
    "store_snapshot": "engine.progress.store",
    "summary_text": "engine.progress.summary",
}


__getattr__ = lazy_getattr("engine.progress", _HOMES)


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
