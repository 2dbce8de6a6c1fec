"""The ``m2l status`` command, and the ``--progress`` options ``m2l run`` shares.

Handlers return an exit code: 0 when the directory holds a run, 1 when it holds none or its
state cannot be read (the message says which and what to do).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.text import Text

from engine.errors import StateError
from engine.progress.dashboard import STATE_STYLES, Dashboard
from engine.progress.display import MODES
from engine.progress.status import StatusReport, read_run_status
from engine.progress.summary import render_summary

__all__ = [
    "add_progress_options",
    "add_status_parser",
    "progress_options",
    "show_status",
    "status_command",
]


def add_status_parser(
    # argparse's subparsers type is private but typeshed names it, so the call stays checked;
    # it is not subscriptable at runtime, which the lazy annotations make harmless.
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``m2l status RUN_DIR [--json]`` to the CLI; it sets ``func`` to status_command."""
    parser = subparsers.add_parser(
        "status",
        help="show a run's state and figures, while it runs or after it ended",
        description=(
            "Show whether a run is running, finished, interrupted or stopped at its budget cap, "
            "with its figures. Works from another terminal while the run is going (it reads "
            "the run's status.json) and after it ended (it reads the store read-only)."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run's directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(func=status_command)


def add_progress_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--progress MODE``, ``--quiet`` and ``--progress-interval S`` to a run command."""
    group = parser.add_argument_group("progress")
    group.add_argument(
        "--progress",
        choices=MODES,
        default="auto",
        help="rich dashboard, plain log lines, JSON lines, or nothing "
        "(default: auto, the dashboard on a terminal, else plain lines)",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", help="show no progress (same as --progress quiet)"
    )
    group.add_argument(
        "--progress-interval",
        type=float,
        metavar="SECONDS",
        default=None,
        help="seconds between plain or JSON lines (default 10 and 5; the dashboard draws 4/s)",
    )


def progress_options(args: argparse.Namespace) -> tuple[str, float | None]:
    """The display mode and interval the options of add_progress_options ask for."""
    mode = "quiet" if args.quiet else str(args.progress)
    interval = args.progress_interval
    return mode, None if interval is None else float(interval)


def status_command(args: argparse.Namespace) -> int:
    """``m2l status``: print the run's state and figures; the exit code says if a run was found."""
    return show_status(Path(args.run_dir), as_json=bool(args.json), console=Console())


def show_status(
    run_dir: Path, *, as_json: bool, console: Console, errors: TextIO | None = None
) -> int:
    """Print a run's status to ``console`` (or JSON to its file); 2 if there is no readable run
    (bad input, as for every command)."""
    try:
        status = read_run_status(run_dir)
    except StateError as exc:
        (errors or sys.stderr).write(f"m2l status: {exc}\n")
        return 2
    if as_json:
        console.file.write(json.dumps(status.as_dict(), ensure_ascii=False, indent=2) + "\n")
        return 0
    _print_status(status, console)
    return 0


def _print_status(status: StatusReport, console: Console) -> None:
    style = STATE_STYLES.get(status.state, "white")
    headline = Text.assemble(
        (str(status.run_dir), "bold"),
        ": ",
        (status.state.replace("_", " "), f"bold {style}"),
        f" — {status.note}",
    )
    console.print(headline)
    console.print(Text(f"figures from {status.source}", style="dim"))
    if status.state in ("starting", "running", "stopping", "stalled"):
        console.print(Dashboard(status.snapshot))
    else:
        render_summary(status.snapshot, run_dir=status.run_dir, console=console)
