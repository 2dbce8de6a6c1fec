"""`m2l prompts list` and `m2l prompts show`: inspect a taxonomy, render a prompt with a seed.

Handlers return an exit code: 0 on success, 2 when the taxonomy, seed file or an argument is
wrong (a ConfigError, printed to stderr with what to fix).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.errors import ConfigError
from prompts.languages import load_languages
from prompts.taxonomy import KINDS, PromptEntry, Taxonomy, load_taxonomy

__all__ = ["add_prompts_parser", "read_seed_row", "render_with_seed", "run_list", "run_show"]

EXIT_CONFIG = 2


def add_prompts_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `prompts list` and `prompts show` to a CLI; each sets ``func`` to its handler."""
    prompts = subparsers.add_parser("prompts", help="inspect the Evol taxonomy (prompt types)")
    sub = prompts.add_subparsers(dest="prompts_command", required=True, metavar="{list,show}")
    taxonomy_help = "taxonomy directory (default: the built-in one)"

    lst = sub.add_parser("list", help="list prompt types, or tasks with --kind task")
    lst.add_argument("--taxonomy", type=Path, metavar="DIR", help=taxonomy_help)
    lst.add_argument("--kind", choices=[*KINDS, "task"], help="only this kind of entry")
    lst.add_argument("--task", metavar="T", help="only types that apply to this task id or alias")
    lst.set_defaults(func=run_list)

    show = sub.add_parser("show", help="show one prompt type, rendered with a seed if given")
    show.add_argument("id", metavar="ID", help="prompt type id, e.g. ADD_CONSTRAINT")
    show.add_argument("--taxonomy", type=Path, metavar="DIR", help=taxonomy_help)
    show.add_argument("--seed-file", type=Path, metavar="F", help="seeds as JSON Lines or Parquet")
    show.add_argument(
        "--row", type=int, default=0, metavar="N", help="0-based row of F (default 0)"
    )
    show.add_argument(
        "--language", metavar="L", help="render in this language instead of the row's"
    )
    show.set_defaults(func=run_show)


def _fail(err: ConfigError) -> int:
    Console(stderr=True).print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
    return EXIT_CONFIG


def run_list(args: argparse.Namespace) -> int:
    """Print the taxonomy's entries (or tasks) as a table; returns an exit code."""
    try:
        taxonomy = load_taxonomy(args.taxonomy)
        if args.kind == "task":
            _print_tasks(taxonomy)
            return 0
        entries = list(taxonomy.entries)
        if args.task is not None:
            task_id = taxonomy.task(args.task).id
            entries = [e for e in entries if e.applies_to(task_id)]
    except ConfigError as err:
        return _fail(err)
    if args.kind is not None:
        entries = [e for e in entries if e.kind == args.kind]
    console = Console()
    title = f"{len(entries)} prompt types in {taxonomy.source}"
    if console.is_terminal and console.width >= _TABLE_WIDTH:
        table = Table(title=title)
        for column in ("id", "kind", "family"):
            table.add_column(column, no_wrap=True)
        table.add_column("tasks")
        table.add_column("description", ratio=1)
        for e in entries:
            table.add_row(e.id, e.kind, e.family, ", ".join(e.tasks), e.description)
        console.print(table)
    else:
        _print_list(entries, title, console.width if console.is_terminal else 80)
    return 0


# Below this a five-column table squeezes the descriptions into one word a line.
_TABLE_WIDTH = 130


def _print_list(entries: list[PromptEntry], title: str, width: int) -> None:
    """The entries grouped by kind and family, each id on its line and its text wrapped below.

    Plain text with no box drawing, so it reads the same in a narrow terminal, a pager or a
    file; ``grep ID`` finds an entry's line.
    """
    out = [title]
    group: tuple[str, str] | None = None
    for e in entries:
        if (e.kind, e.family) != group:
            group = (e.kind, e.family)
            out += ["", f"{e.kind} / {e.family}"]
        tasks = "" if e.tasks == ("*",) else f"  [tasks: {', '.join(e.tasks)}]"
        out.append(f"  {e.id}")
        out += textwrap.wrap(
            e.description + tasks, width=max(40, width - 1), initial_indent="      ",
            subsequent_indent="      ", break_on_hyphens=False,
        )  # fmt: skip
    sys.stdout.write("\n".join(out) + "\n")


def _print_tasks(taxonomy: Taxonomy) -> None:
    console = Console()
    title = f"{len(taxonomy.tasks)} tasks in {taxonomy.source}"
    if not console.is_terminal or console.width < _TABLE_WIDTH:
        width = max(40, (console.width if console.is_terminal else 80) - 1)
        out = [title]
        for task in taxonomy.tasks.values():
            n_evols = len(taxonomy.evol_types(task.id))
            out += ["", f"  {task.id}  ({n_evols} evol types)", f"      {task.name}"]
            if task.aliases:
                out += textwrap.wrap(
                    "aliases: " + ", ".join(task.aliases), width=width,
                    initial_indent="      ", subsequent_indent="        ",
                    break_on_hyphens=False,
                )  # fmt: skip
        sys.stdout.write("\n".join(out) + "\n")
        return
    table = Table(title=title)
    table.add_column("id", no_wrap=True)
    table.add_column("name")
    table.add_column("evol types", justify="right")
    table.add_column("aliases", ratio=1)
    for task in taxonomy.tasks.values():
        count = str(len(taxonomy.evol_types(task.id)))
        table.add_row(task.id, task.name, count, ", ".join(task.aliases))
    console.print(table)


def read_seed_row(path: Path, row: int) -> dict[str, Any]:
    """Row ``row`` (0-based) of a JSON Lines or Parquet seed file; raises ConfigError."""
    if row < 0:
        raise ConfigError(f"--row must be 0 or more, got {row}")
    if path.suffix.lower() == ".parquet":
        return _read_parquet_row(path, row)
    try:
        with path.open(encoding="utf-8") as fh:
            lines = (line for line in fh if line.strip())
            for i, line in enumerate(lines):
                if i == row:
                    value = json.loads(line)
                    if not isinstance(value, dict):
                        raise ConfigError(f"{path}: row {row} is not a JSON object")
                    return value
    except FileNotFoundError:
        raise ConfigError(f"{path}: seed file not found; check --seed-file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: row {row} is not valid JSON Lines ({exc})") from None
    raise ConfigError(f"{path}: has no row {row} (rows are counted from 0); lower --row")


def _read_parquet_row(path: Path, row: int) -> dict[str, Any]:
    import duckdb  # imported here: only Parquet seeds need it, and it is slow to import

    from state.schema import connect_memory

    if not path.is_file():
        raise ConfigError(f"{path}: seed file not found; check --seed-file")
    try:
        cursor = connect_memory().execute(
            "SELECT * FROM read_parquet(?) LIMIT 1 OFFSET ?", [str(path), row]
        )
        found = cursor.fetchone()
    except duckdb.Error as exc:
        raise ConfigError(f"{path}: cannot read as Parquet ({exc})") from None
    if found is None:
        raise ConfigError(f"{path}: has no row {row} (rows are counted from 0); lower --row")
    return dict(zip([d[0] for d in cursor.description or []], found, strict=True))


def render_with_seed(
    entry: PromptEntry, taxonomy: Taxonomy, seed: Mapping[str, Any], language: str | None = None
) -> str:
    """Render an entry with a seed row in the Aya shape; raises ConfigError if it lacks a field."""
    inputs = seed.get("inputs")
    if not isinstance(inputs, str) or not inputs.strip():
        raise ConfigError("the seed row has no 'inputs' text; seeds need the Aya Dataset shape")
    lang_key = language or seed.get("language") or seed.get("language_code")
    if not isinstance(lang_key, str):
        raise ConfigError("the seed row names no 'language' or 'language_code'; pass --language")
    lang = load_languages().lookup(lang_key)
    task = taxonomy.task(str(seed.get("task_type") or "general"))
    targets = str(seed.get("targets") or "")
    # The transcript format is the one the conversation engine uses for {conversation}.
    values = {
        "seed": inputs,
        "language": lang.name,
        "task": task.name,
        "conversation": f"User: {inputs}\n\nAssistant: {targets}",
        "last_user": inputs,
        "last_assistant": targets,
    }
    return entry.render(**values)


def run_show(args: argparse.Namespace) -> int:
    """Print one entry's metadata and its template, rendered with a seed row if one is given."""
    console = Console()
    try:
        taxonomy = load_taxonomy(args.taxonomy)
        entry = taxonomy.get(args.id)
        rendered, task_id = None, None
        if args.seed_file is not None:
            seed = read_seed_row(args.seed_file, args.row)
            rendered = render_with_seed(entry, taxonomy, seed, args.language)
            task_id = taxonomy.task(str(seed.get("task_type") or "general")).id
    except ConfigError as err:
        return _fail(err)
    meta = Table.grid(padding=(0, 2))
    meta.add_column(style="bold")
    meta.add_column(overflow="fold")
    for key, value in (
        ("id", entry.id),
        ("kind", entry.kind),
        ("family", entry.family),
        ("description", entry.description),
        ("tasks", ", ".join(entry.tasks)),
        ("placeholders", ", ".join("{" + p + "}" for p in sorted(entry.placeholders()))),
    ):
        meta.add_row(key, value)
    console.print(meta)
    console.print()
    if rendered is None:
        console.rule("template (pass --seed-file to render it)")
        console.print(entry.template, markup=False, highlight=False, soft_wrap=True)
        return 0
    console.rule(f"rendered with row {args.row} of {args.seed_file}")
    if task_id is not None and not entry.applies_to(task_id):
        note = f"note: {entry.id} is not listed for this seed's task {task_id!r}"
        console.print(note, markup=False, soft_wrap=True)
    console.print(rendered, markup=False, highlight=False, soft_wrap=True)
    return 0
