"""Offline commands on a finished (or stopped) run: `m2l export`, `m2l stats`, `m2l filter`.

Each ``add_*_parser`` adds one subcommand whose ``func`` returns an exit code (0). Errors are
raised, not printed: engine.app.cli maps StateError (no run, run in use, damaged store) and
ConfigError (bad options) to exit code 2 with their message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.posthoc import (
    MAX_DEFAULT_WORKERS,
    FilterReport,
    Finding,
    default_workers,
    filter_run,
)
from state.export import FORMATS, export_run, export_subsets, open_run
from state.report_html import write_report
from state.samples import run_metadata, sample_conversations
from state.stats import compute_stats, print_stats, stats_json

__all__ = [
    "add_export_parser",
    "add_filter_parser",
    "add_stats_parser",
    "export_command",
    "filter_command",
    "print_filter_report",
    "stats_command",
]


def add_export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``m2l export RUN_DIR``; it sets ``func`` to its handler."""
    p = sub.add_parser(
        "export",
        help="write a run's conversations as a dataset file",
        description=(
            "Write the run's done conversations as release Parquet/JSONL (the "
            "ServiceNow-AI/M2Lingual schema), OpenAI messages JSONL or ShareGPT JSONL. With "
            "--subsets a release format writes the release's three subsets: seed_data (the "
            "seeds and their source responses), seed_evol_data (one evolved pair per "
            "conversation) and full_data (both, plus the multi-turn conversations). Files "
            "appear only once complete, and the folder's dataset card (README.md) is brought up "
            "to date so datasets.load_dataset(folder, config) loads them. The run must not be "
            "running."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run's directory")
    p.add_argument(
        "--format",
        choices=list(FORMATS),
        default="release-parquet",
        help="file format (default: release-parquet)",
    )
    p.add_argument(
        "--include-filtered",
        action="store_true",
        help="also write filtered conversations, with a filter_reason field "
        "(not with messages-jsonl, whose lines may only hold messages)",
    )
    p.add_argument(
        "--quality-fields",
        action="store_true",
        help="add to each row turns_planned, turns_made, kept_reason (why a conversation kept "
        "fewer turns than planned) and rejected (every output thrown away while making it); "
        "not with messages-jsonl or --subsets",
    )
    p.add_argument(
        "--exclude-partial",
        action="store_true",
        help="leave out conversations kept with fewer turns than planned after a late failure",
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="PATH",
        help="where to write (default: RUN_DIR/export/<kind>.<ext>); with --subsets, a folder",
    )
    p.add_argument(
        "--subsets",
        action="store_true",
        help="write seed_data, seed_evol_data and full_data (release formats only)",
    )
    p.set_defaults(func=export_command)


def add_stats_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``m2l stats RUN_DIR``; it sets ``func`` to its handler."""
    p = sub.add_parser(
        "stats",
        help="tables of what a run made, filtered and cost",
        description=(
            "Show conversations by language × task, turns, evol types, filter reasons, and "
            "tokens and cost by language, task and step kind. The run must not be running."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run's directory")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write a self-contained HTML report with charts to FILE",
    )
    p.set_defaults(func=stats_command)


def add_filter_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``m2l filter RUN_DIR``; it sets ``func`` to its handler."""
    p = sub.add_parser(
        "filter",
        help="apply the quality filters to every done conversation of a run",
        description=(
            "Check every done conversation (repetition, cross-turn repetition, refusals, "
            "leaked markers, wrong language, exact and near duplicates across the run) and "
            "mark the failing ones 'filtered' with their reason; nothing is deleted, and "
            "running it again changes nothing more. It uses the [quality] settings the run "
            "was made with. The run must not be running."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run's directory")
    p.add_argument(
        "--dry-run", action="store_true", help="count what would be filtered, change nothing"
    )
    p.add_argument(
        "--include-rejected",
        action="store_true",
        help="also count the outputs the run threw away inline (failed checks, truncated "
        "replies, turns dropped with a failed turn), by reason",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="processes judging the conversations' turns (default: the CPUs m2l may use, at "
        f"most {MAX_DEFAULT_WORKERS}; 1 = all in this process). Duplicates across the run are "
        "still settled in conversation order, so the verdicts do not depend on N",
    )
    p.add_argument(
        "--recheck",
        action="store_true",
        help="check every conversation's turns again. By default a conversation whose every "
        "message the run's own checks accepted, with the same m2l version, [quality] settings "
        "and data files, and whose text is unchanged since (each message carries their stamp), "
        "is only checked for duplicates: its turn checks would pass again",
    )
    p.set_defaults(func=filter_command)


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return value


def export_command(args: argparse.Namespace, console: Console | None = None) -> int:
    """``m2l export``: write the file and say where; raises StateError or ConfigError."""
    out = console or Console()
    if getattr(args, "subsets", False):
        reports = export_subsets(
            Path(args.run_dir),
            str(args.format),
            directory=args.output,
            include_filtered=bool(args.include_filtered),
            quality_fields=bool(getattr(args, "quality_fields", False)),
            exclude_partial=bool(getattr(args, "exclude_partial", False)),
        )
        for report in reports:
            out.print(f"wrote {report.rows:,} rows to {escape(str(report.path))}")
    else:
        reports = [
            export_run(
                Path(args.run_dir),
                str(args.format),
                output=args.output,
                include_filtered=bool(args.include_filtered),
                quality_fields=bool(getattr(args, "quality_fields", False)),
                exclude_partial=bool(getattr(args, "exclude_partial", False)),
            )
        ]
        out.print(f"wrote {reports[0].rows:,} conversations to {escape(str(reports[0].path))}")
    card = reports[-1].card
    if card is not None:
        out.print(f"dataset card: {escape(str(card))}")
    else:
        out.print(
            f"left {escape(str(reports[-1].path.parent / 'README.md'))} alone (not written by "
            "m2l): no dataset card for this folder"
        )
    return 0


def stats_command(args: argparse.Namespace, console: Console | None = None) -> int:
    """``m2l stats``: print tables or JSON, and write the HTML report if asked."""
    out = console or Console()
    run_dir = Path(args.run_dir)
    conn = open_run(run_dir, action="read its stats")
    try:
        stats = compute_stats(conn, run=run_dir.name)
        samples = sample_conversations(conn) if args.html is not None else ()
        metadata = run_metadata(conn) if args.html is not None else ()
    finally:
        conn.close()
    if args.json:
        out.file.write(stats_json(stats).decode() + "\n")
    else:
        print_stats(stats, out)
    if args.html is not None:
        path = write_report(stats, Path(args.html), samples=samples, metadata=metadata)
        # With --json, stdout must stay one JSON document.
        note = Console(file=sys.stderr) if args.json else out
        note.print(f"wrote the HTML report to {escape(str(path))}")
    return 0


def filter_command(args: argparse.Namespace, console: Console | None = None) -> int:
    """``m2l filter``: run the post-hoc pass and print counts by reason."""
    out = console or Console()
    report = filter_run(
        Path(args.run_dir),
        dry_run=bool(args.dry_run),
        include_rejected=bool(getattr(args, "include_rejected", False)),
        workers=getattr(args, "workers", None) or default_workers(),
        recheck=bool(getattr(args, "recheck", False)),
    )
    print_filter_report(report, out)
    return 0


def print_filter_report(report: FilterReport, console: Console) -> None:
    """Print a pass's counts by reason and a few examples of each."""
    verb = "would filter" if report.dry_run else "filtered"
    console.print(
        f"checked {report.checked:,} done conversations; {verb} {report.filtered:,}"
        + (" (dry run: nothing changed)" if report.dry_run else "")
    )
    if report.checked:
        console.print(
            f"turn checks: {report.checked - report.on_gate:,} conversations checked in full, "
            f"{report.on_gate:,} taken on the run's own checks (stamped by them, unchanged "
            "since; their duplicates still checked)"
        )
    if report.rejected:
        thrown = sum(n for _, n in report.rejected)
        listed = ", ".join(f"{reason} {n:,}" for reason, n in report.rejected)
        console.print(f"outputs thrown away during the run: {thrown:,} ({escape(listed)})")
    if not report.by_reason:
        return
    table = Table(title="by reason", title_justify="left")
    table.add_column("reason")
    table.add_column("conversations", justify="right")
    table.add_column("for example")
    examples: dict[str, Finding] = {}
    for sample in report.samples:
        examples.setdefault(sample.reason, sample)
    for reason, n in report.by_reason:
        table.add_row(reason, f"{n:,}", escape(_example(examples.get(reason))))
    console.print(table)


def _example(sample: Finding | None) -> str:
    if sample is None:
        return ""
    where = f"#{sample.conv_id}" + ("" if sample.step is None else f" step {sample.step}")
    return f"{where}: {sample.detail}"
