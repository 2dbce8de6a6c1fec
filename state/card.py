"""The dataset card of an export directory: README.md with Hugging Face YAML, kept up to date.

Each export records its file in ``.m2l-export.json`` beside it; the card is then written again
from that record for every file still there, so ``datasets.load_dataset("<export dir>",
"<config>")`` loads any of them. A README.md m2l did not write is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import orjson

from prompts.languages import load_languages
from state.release import SUBSETS, features_yaml, quality_fields, release_schema

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "CARD_MARKER",
    "MANIFEST",
    "Entry",
    "format_features",
    "record_export",
    "render_card",
    "run_facts",
]

MANIFEST = ".m2l-export.json"
CARD = "README.md"
# The second line of every card m2l writes (a YAML comment: the card must open with "---");
# a README.md without it is the user's own.
CARD_MARKER = "# dataset card written by m2l; it is rewritten on each export"
_CARD_START = f"---\n{CARD_MARKER}\n"


@dataclass(frozen=True, slots=True)
class Entry:
    """One exported file of the directory: its format, subset, row count and record types."""

    file: str
    format: str
    subset: str | None
    include_filtered: bool
    rows: int
    multiturn_types: list[str] = field(default_factory=list)
    quality_fields: bool = False  # the rows carry the --quality-fields columns

    @property
    def stem(self) -> str:
        """The file's name without its suffix, as a config id ("release_with_filtered")."""
        return self.file.split(".", 1)[0].replace("-", "_")


def _config_names(entries: Sequence[Entry]) -> dict[str, str]:
    """file → config name: the stem, with the suffix added where two files share a stem."""
    stems = [e.stem for e in entries]
    names = {}
    for e in entries:
        suffix = e.file.split(".", 1)[1] if "." in e.file else ""
        clash = stems.count(e.stem) > 1 and suffix != "parquet"
        names[e.file] = f"{e.stem}_{suffix.replace('.', '_')}" if clash else e.stem
    return names


def format_features(entry: Entry) -> pa.Schema:
    """The schema of the file an entry describes."""
    import pyarrow as pa  # on first use, as in state.release

    if entry.format.startswith("release"):
        schema = release_schema(tuple(entry.multiturn_types))
    elif entry.format == "messages-jsonl":
        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        schema = pa.schema([("messages", pa.list_(message))])
    else:
        turn = pa.struct([("from", pa.string()), ("value", pa.string())])
        schema = pa.schema(
            [
                ("id", pa.string()),
                ("language", pa.string()),
                ("task", pa.string()),
                ("conversations", pa.list_(turn)),
            ]
        )
    if entry.include_filtered:
        schema = schema.append(pa.field("filter_reason", pa.string()))
    if entry.quality_fields:
        for extra in quality_fields():
            schema = schema.append(extra)
    return schema


def record_export(output: Path, entry: Entry, facts: dict[str, Any]) -> Path | None:
    """Record ``entry`` in its directory's manifest and write the card; the card's path.

    ``facts`` are the run's (``run_facts``). Returns None when the directory holds a README.md
    that m2l did not write (it is left alone). Raises OSError when the directory cannot be
    written.
    """
    directory = output.parent
    entries = {e.file: e for e in _read_manifest(directory)}
    entries[entry.file] = entry
    kept = [e for name, e in sorted(entries.items()) if (directory / name).is_file()]
    _write_atomically(
        directory / MANIFEST,
        orjson.dumps([asdict(e) for e in kept], option=orjson.OPT_INDENT_2),
    )
    path = directory / CARD
    if path.is_file() and not path.read_text("utf-8", errors="replace").startswith(_CARD_START):
        return None
    _write_atomically(path, render_card(kept, facts).encode("utf-8"))
    return path


def _read_manifest(directory: Path) -> list[Entry]:
    try:
        raw = orjson.loads((directory / MANIFEST).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []  # none yet, or damaged: the card is rebuilt from this export on
    entries = []
    for item in raw if isinstance(raw, list) else []:
        with contextlib.suppress(TypeError, KeyError):
            entries.append(Entry(**item))
    return entries


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def run_facts(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Languages (card codes), run name, model and m2l version, from the store."""
    meta = dict(conn.execute("SELECT key, value FROM run_meta").fetchall())
    try:
        config = orjson.loads(meta.get("config_json", "{}"))
    except orjson.JSONDecodeError:
        config = {}
    table = load_languages()
    codes = []
    for (code,) in conn.execute(
        "SELECT DISTINCT language_code FROM conversations WHERE status IN ('done', 'filtered') "
        "ORDER BY 1"
    ).fetchall():
        lang = table.get(str(code))
        codes.append((lang.iso639_1 or lang.iso639_3) if lang else str(code))
    return {
        "languages": sorted(set(codes)),
        "run": (config.get("run") or {}).get("name"),
        "model": (config.get("provider") or {}).get("model"),
        "m2l_version": meta.get("m2l_version"),
    }


def _size_category(rows: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")]
    bounds += [(1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]
    return next((name for limit, name in bounds if rows < limit), "10M<n<100M")


def _default_config(names: Sequence[str]) -> str | None:
    for wanted in ("full_data", "release", "messages"):
        if wanted in names:
            return wanted
    return names[0] if names else None


def _kind(entry: Entry) -> str:
    return "parquet" if entry.file.endswith(".parquet") else "json"


def render_card(entries: Sequence[Entry], facts: dict[str, Any]) -> str:
    """The README.md text: HF YAML (languages, size, configs, features) and a short guide.

    ``datasets`` reads every config of a folder with the builder of its first config, so the
    configs are the files of the default config's kind (Parquet or JSON lines), default first;
    files of the other kind are listed with the line that loads them.
    """
    names = _config_names(entries)
    default = _default_config(list(names.values()))
    main = next((e for e in entries if names[e.file] == default), None)
    kind = _kind(main) if main is not None else "parquet"
    configured = sorted(
        (e for e in entries if _kind(e) == kind), key=lambda e: names[e.file] != default
    )
    others = [e for e in entries if _kind(e) != kind]
    lines = ["---", CARD_MARKER]
    languages = facts.get("languages") or []
    if languages:
        lines += ["language:", *(f"- {code}" for code in languages)]
    lines += ["multilinguality:", "- multilingual" if len(languages) > 1 else "- monolingual"]
    lines += ["task_categories:", "- text-generation"]
    largest = max((e.rows for e in entries), default=0)
    lines += ["size_categories:", f"- {_size_category(largest)}"]
    lines.append("configs:")
    for e in configured:
        lines += [f"- config_name: {names[e.file]}", f"  data_files: {_quote(e.file)}"]
        if names[e.file] == default:
            lines.append("  default: true")
    lines.append("dataset_info:")
    for e in configured:
        lines += [f"- config_name: {names[e.file]}", "  features:"]
        lines += features_yaml(format_features(e), indent=2)
        lines += ["  splits:", "  - name: train", f"    num_examples: {e.rows}"]
    lines.append("---")
    run = facts.get("run") or "an m2l run"
    lines += [
        "",
        f"# {run}",
        "",
        "Multilingual, multi-turn instruction data in the M2Lingual format "
        "(ServiceNow-AI/M2Lingual), generated by m2l"
        + (f" {facts['m2l_version']}" if facts.get("m2l_version") else "")
        + (f" with {facts['model']}" if facts.get("model") else "")
        + ".",
        "",
        "| config | file | rows | holds |",
        "| --- | --- | ---: | --- |",
    ]
    for e in configured:
        lines.append(f"| {names[e.file]} | {e.file} | {e.rows} | {_holds(e)} |")
    for e in others:
        lines.append(f"| (see below) | {e.file} | {e.rows} | {_holds(e)} |")
    lines += [
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("path/to/this/folder", "{default or "release"}", split="train")',
    ]
    other_kind = "json" if kind == "parquet" else "parquet"
    lines += [
        f'ds = load_dataset("{other_kind}", data_files="path/to/this/folder/{e.file}", '
        'split="train")'
        for e in others
    ]
    lines += [
        "```",
        "",
        "Row ids (int32) are stable across re-exports of the run: a seed row's id is its seed "
        "id; an evolved pair is S + conversation id; a whole conversation is S + C + "
        "conversation id (S, C: the run's largest seed and conversation ids). "
        "`multiturn_evol_prompt` holds one {TYPE: prompt} record per follow-up turn "
        "(in Parquet, a struct with that one type's field set).",
        "",
    ]
    return "\n".join(lines)


def _holds(entry: Entry) -> str:
    if entry.subset is not None:
        text = SUBSETS[entry.subset]
    elif entry.format.startswith("release"):
        text = "one row per conversation, release columns"
    elif entry.format == "messages-jsonl":
        text = "OpenAI chat fine-tuning lines"
    else:
        text = "ShareGPT conversations (human/gpt)"
    return text + (
        "; filtered conversations too, with filter_reason" if entry.include_filtered else ""
    )


def _quote(text: str) -> str:
    return orjson.dumps(text).decode()
