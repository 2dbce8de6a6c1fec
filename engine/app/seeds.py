"""`m2l seeds inspect FILE`: ingest a seed file in memory and show its language × task counts.

The handler returns an exit code: 0 on success, 2 when the file, its format or the mapping is
wrong (a ConfigError, printed to stderr with what to fix).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from engine.errors import ConfigError
from prompts.languages import LanguageTable, load_languages
from prompts.sources import SourceTasks, load_source_tasks
from prompts.taxonomy import Taxonomy, load_taxonomy
from state._tables import table_width
from state.schema import connect_memory
from state.seeds import MAPPINGS, IngestReport, ingest_seeds, pool_counts
from state.selection import (
    SHORTFALL_MODES,
    LanguageTake,
    SelectionSpec,
    plan_quotas,
    shortfall_summary,
)

__all__ = ["add_seeds_parser", "inspect_seeds", "run_inspect", "takes_table"]

EXIT_CONFIG = 2


def add_seeds_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `seeds inspect` to a CLI; it sets ``func`` to its handler."""
    seeds = subparsers.add_parser("seeds", help="inspect seed files")
    sub = seeds.add_subparsers(dest="seeds_command", required=True, metavar="{inspect}")
    inspect = sub.add_parser(
        "inspect",
        help="count a seed file's usable seeds by language and task",
        description=(
            "Read FILE (Parquet, JSONL or CSV) as ingestion would and print how many seeds "
            "each language × task has, and what was left out (duplicates, empty "
            "instructions, unknown languages)."
        ),
    )
    inspect.add_argument("file", type=Path, metavar="FILE", help="the seed file")
    inspect.add_argument(
        "--mapping",
        choices=["auto", *MAPPINGS],
        default="auto",
        help="which columns hold instruction, language and task (default: auto-detect)",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument(
        "--taxonomy", type=Path, metavar="DIR", help="taxonomy directory (default: built-in)"
    )
    inspect.add_argument(
        "--source-tasks",
        type=Path,
        metavar="TOML",
        help="source dataset → task table (default: prompts/data/source_tasks.toml)",
    )
    inspect.add_argument(
        "--default-task",
        default="general",
        metavar="TASK",
        help="task of rows whose source and task_type are unknown (default: general)",
    )
    quota = inspect.add_mutually_exclusive_group()
    quota.add_argument(
        "--total", type=int, metavar="N", help="also show what N seeds would take per language"
    )
    quota.add_argument(
        "--per-language", type=int, metavar="N", help="same, for N seeds per language"
    )
    inspect.add_argument(
        "--shortfall",
        choices=SHORTFALL_MODES,
        default="redistribute",
        help="with --total: a language short of seeds gives its share to the others "
        "(redistribute, the default) or not (skip)",
    )
    inspect.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    """Handle `m2l seeds inspect`; returns an exit code."""
    try:
        taxonomy = load_taxonomy(args.taxonomy)
        spec = None
        if args.total is not None or args.per_language is not None:
            spec = SelectionSpec(
                total=args.total, per_language=args.per_language, shortfall=args.shortfall
            )
        return inspect_seeds(
            args.file,
            mapping=args.mapping,
            as_json=args.json,
            taxonomy=taxonomy,
            source_tasks=load_source_tasks(taxonomy, args.source_tasks),
            default_task=args.default_task,
            spec=spec,
        )
    except ConfigError as err:
        print(f"m2l: error: {err}", file=sys.stderr)
        return EXIT_CONFIG


def inspect_seeds(
    path: Path,
    *,
    mapping: str = "auto",
    as_json: bool = False,
    console: Console | None = None,
    languages: LanguageTable | None = None,
    taxonomy: Taxonomy | None = None,
    source_tasks: SourceTasks | None = None,
    default_task: str = "general",
    spec: SelectionSpec | None = None,
) -> int:
    """Print the file's ingest report and language × task counts (rich table or JSON).

    Also how tasks were resolved (task_type before, task after the source → task table), and
    with a ``spec``, the seeds asked, available and taken per language. Raises ConfigError for
    the file, its format, the mapping or the spec.
    """
    console = console or Console()
    conn = connect_memory()
    try:
        report = ingest_seeds(
            conn,
            path,
            mapping=mapping,
            languages=languages or load_languages(),
            taxonomy=taxonomy or load_taxonomy(),
            keep_text=False,  # counts need no text: one scan, and memory stays small
            source_tasks=source_tasks,
            default_task=default_task,
        )
        cells = list(pool_counts(conn))
    finally:
        conn.close()
    plan = None
    if spec is not None:
        supply = {(lang, task): n for lang, _, _, task, n in cells}
        langs = sorted({(lang, code, tier) for lang, code, tier, _, _ in cells})
        plan = plan_quotas(supply, langs, spec)
    if as_json:
        doc = _as_json(report, cells)
        doc["task_origins"] = [asdict(o) for o in report.origins]
        if plan is not None:
            doc["quotas"] = {
                "requested": plan.requested,
                "taken": plan.taken,
                "shortfall": plan.shortfall_mode,
                "languages": [asdict(t) for t in plan.languages],
            }
        text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
        console.file.write(text + "\n")
        console.file.flush()
        return 0
    for line in report.lines():
        console.print(line, markup=False, highlight=False)
    grid = _table(report, cells)
    if table_width(grid) <= console.width:
        console.print(grid)
    else:
        # A grid with a column per task does not fit: one row per language listing its tasks,
        # then the tasks' totals.
        console.print(_compact_table(report, cells))
        console.print(_task_totals(cells))
    if report.source_tasks is not None:
        console.print(_origins_table(report))
    if plan is not None:
        console.print(takes_table(plan.languages, plan.requested))
        for line in shortfall_summary(plan.languages, plan.shortfall_mode):
            console.print(line, markup=False, highlight=False)
    return 0


def _origins_table(report: IngestReport) -> Table:
    """Tasks before (task_type alone) and after the source → task table, with row counts."""
    grouped: dict[tuple[str, str, str], tuple[int, dict[str, int]]] = {}
    for o in report.origins:
        key = (o.before or "(none)", o.task, o.via)
        rows, sources = grouped.get(key, (0, {}))
        if o.source is not None:
            sources[o.source] = sources.get(o.source, 0) + o.rows
        grouped[key] = (rows + o.rows, sources)
    table = Table(
        title="tasks: task_type → task after the source dataset table", title_justify="left"
    )
    table.add_column("task_type says")
    table.add_column("task")
    table.add_column("rows", justify="right")
    table.add_column("from")
    table.add_column("source datasets", overflow="fold")
    for (before, task, via), (rows, sources) in sorted(
        grouped.items(), key=lambda item: (-item[1][0], item[0])
    ):
        top = sorted(sources.items(), key=lambda kv: (-kv[1], kv[0]))
        names = ", ".join(name for name, _ in top[:4]) + (" …" if len(top) > 4 else "")
        mark = "" if before == task else " *"
        table.add_row(before, task + mark, str(rows), via, names)
    table.caption = "* the source dataset changed the task"
    return table


def takes_table(takes: Sequence[LanguageTake], requested: int) -> Table:
    """Seeds asked, available and taken per language (short languages first)."""
    table = Table(
        title=f"seeds per language: {sum(t.taken for t in takes)} taken of {requested} asked",
        title_justify="left",
        show_footer=True,
    )
    table.add_column("language", footer="total")
    table.add_column("code")
    table.add_column("asked", justify="right", footer=str(sum(t.asked for t in takes)))
    table.add_column("available", justify="right", footer=str(sum(t.available for t in takes)))
    table.add_column("taken", justify="right", footer=str(sum(t.taken for t in takes)))
    for t in sorted(takes, key=lambda t: (t.available >= t.asked, t.language)):
        short = " (short)" if t.available < t.asked else ""
        table.add_row(
            t.language, t.language_code, str(t.asked), f"{t.available}{short}", str(t.taken)
        )
    return table


Cell = tuple[str, str, str | None, str, int]


def _totals(cells: list[Cell]) -> tuple[dict[str, int], dict[str, int]]:
    by_language: dict[str, int] = {}
    by_task: dict[str, int] = {}
    for language, _, _, task, n in cells:
        by_language[language] = by_language.get(language, 0) + n
        by_task[task] = by_task.get(task, 0) + n
    return by_language, by_task


def _ranked(totals: Mapping[str, int]) -> list[str]:
    return sorted(totals, key=lambda k: (-totals[k], k))


def _table(report: IngestReport, cells: list[Cell]) -> Table:
    by_language, by_task = _totals(cells)
    tasks = _ranked(by_task)
    grid = {(language, task): n for language, _, _, task, n in cells}
    info = {language: (code, tier) for language, code, tier, _, _ in cells}
    table = Table(
        title=f"{report.ingested} seeds in {report.path.name}: "
        f"{len(by_language)} languages × {len(tasks)} tasks",
        show_footer=True,
    )
    table.add_column("language", footer="total")
    table.add_column("code")
    table.add_column("tier")
    for task in tasks:
        table.add_column(task, justify="right", footer=str(by_task[task]))
    table.add_column("total", justify="right", footer=str(report.ingested))
    for language in _ranked(by_language):
        code, tier = info[language]
        counts = [str(grid.get((language, task), "")) for task in tasks]
        table.add_row(language, code, tier or "", *counts, str(by_language[language]))
    return table


def _compact_table(report: IngestReport, cells: list[Cell]) -> Table:
    by_language, by_task = _totals(cells)
    tasks_of: dict[str, list[tuple[str, int]]] = {}
    info = {language: (code, tier) for language, code, tier, _, _ in cells}
    for language, _, _, task, n in cells:
        tasks_of.setdefault(language, []).append((task, n))
    table = Table(
        title=f"{report.ingested} seeds in {report.path.name}: "
        f"{len(by_language)} languages × {len(by_task)} tasks",
        show_footer=True,
    )
    table.add_column("language", footer="total")
    table.add_column("code")
    table.add_column("tier")
    table.add_column("seeds", justify="right", footer=str(report.ingested))
    table.add_column("tasks", overflow="fold")
    for language in _ranked(by_language):
        code, tier = info[language]
        listed = sorted(tasks_of[language], key=lambda tn: (-tn[1], tn[0]))
        text = ", ".join(f"{task} {n}" for task, n in listed)
        table.add_row(language, code, tier or "", str(by_language[language]), text)
    return table


def _task_totals(cells: list[Cell]) -> Table:
    _, by_task = _totals(cells)
    table = Table(title="seeds per task")
    table.add_column("task")
    table.add_column("seeds", justify="right")
    table.add_column("languages", justify="right")
    languages_of: dict[str, int] = {}
    for _, _, _, task, _ in cells:
        languages_of[task] = languages_of.get(task, 0) + 1
    for task in _ranked(by_task):
        table.add_row(task, str(by_task[task]), str(languages_of[task]))
    return table


def _as_json(report: IngestReport, cells: list[Cell]) -> dict[str, Any]:
    by_language, by_task = _totals(cells)
    rows: dict[str, dict[str, Any]] = {}
    for language, code, tier, task, n in cells:
        row = rows.setdefault(
            language,
            {
                "language": language,
                "language_code": code,
                "tier": tier,
                "total": by_language[language],
                "tasks": {},
            },
        )
        row["tasks"][task] = n
    return {
        "file": str(report.path),
        "format": report.format,
        "mapping": {"name": report.mapping_name, "columns": report.mapping.named()},
        "rows_read": report.rows_read,
        "ingested": report.ingested,
        "duplicates": report.duplicates,
        "empty_instruction": report.empty_instruction,
        "unknown_language": report.unknown_language,
        "unknown_language_top": [list(pair) for pair in report.unknown_language_top],
        "unknown_task": report.unknown_task,
        "unknown_task_top": [list(pair) for pair in report.unknown_task_top],
        "languages": [rows[language] for language in _ranked(by_language)],
        "tasks": {task: by_task[task] for task in _ranked(by_task)},
    }
