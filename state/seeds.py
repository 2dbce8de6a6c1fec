"""Seed ingestion: read a Parquet, JSONL or CSV file through DuckDB into a deduplicated pool.

The file is scanned by DuckDB (never loaded into Python), languages and tasks are resolved once
per distinct value, and duplicates are found on normalised text (NFKC, casefold, collapsed
whitespace). Raises ConfigError for a missing or unreadable file, an unknown format, a mapping
that names a column the file lacks, or a malformed JSONL line.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, cast

import duckdb
import orjson

from engine.config import SeedColumns
from engine.errors import ConfigError, StateError
from prompts.languages import LanguageTable
from prompts.sources import SourceTasks, load_source_tasks
from prompts.taxonomy import Taxonomy
from state.schema import connect_memory

__all__ = [
    "GENERAL_TASK",
    "MAPPINGS",
    "POOL_COLUMNS",
    "ColumnMapping",
    "IngestReport",
    "PoolSource",
    "TaskOrigin",
    "column_mapping",
    "detect_format",
    "file_columns",
    "ingest_seeds",
    "normalize_text",
    "pool_counts",
    "pool_source",
    "resolve_mapping",
    "text_key",
]

GENERAL_TASK = "general"

# The pool has the columns of the run's `seeds` table plus norm_key (md5 hex of the normalised
# instruction) and tier (so selection can weight by resource tier on its own); without
# keep_text it lacks instruction, target, source and instruction_tokens.
POOL_COLUMNS = (
    "seed_id",
    "source_row",
    "instruction",
    "target",
    "language",
    "language_code",
    "task",
    "source",
    "instruction_tokens",
    "norm_key",
    "tier",
)

_TOP_UNKNOWN = 10
_FIX_BATCH = 20_000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The pool is created with CREATE OR REPLACE: it must never be given a run table's name.
_RUN_TABLES = frozenset({"run_meta", "seeds", "conversations", "messages", "requests"})


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """Which columns of a seed file hold the instruction, language, task, target and source.

    Raises ConfigError when neither a language nor a language_code column is named.
    """

    instruction: str
    language: str | None = None
    language_code: str | None = None
    task: str | None = None
    target: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.language is None and self.language_code is None:
            raise ConfigError(
                f"column mapping for instruction column {self.instruction!r} names no language "
                "column: set language (English name) or language_code (ISO 639) or both"
            )

    def named(self) -> dict[str, str]:
        """The mapping's roles that name a column, role -> column."""
        roles = {
            "instruction": self.instruction,
            "language": self.language,
            "language_code": self.language_code,
            "task": self.task,
            "target": self.target,
            "source": self.source,
        }
        return {role: column for role, column in roles.items() if column is not None}


MAPPINGS: Mapping[str, ColumnMapping] = MappingProxyType(
    {
        # The shape of examples/seeds.jsonl: the Aya Dataset's columns plus a task_type.
        "m2l": ColumnMapping(
            instruction="inputs",
            target="targets",
            language="language",
            language_code="language_code",
            task="task_type",
        ),
        # The Aya Collection: `language` holds ISO 639-3 codes; `dataset_name` says which source
        # dataset a row came from, and so its task (prompts/data/source_tasks.toml).
        "aya-collection": ColumnMapping(
            instruction="inputs",
            target="targets",
            language="language",
            task="task_type",
            source="dataset_name",
        ),
        # Its language-split release names the code column `language_code`.
        "aya-collection-split": ColumnMapping(
            instruction="inputs",
            target="targets",
            language_code="language_code",
            task="task_type",
            source="dataset_name",
        ),
        "aya-dataset": ColumnMapping(
            instruction="inputs",
            target="targets",
            language="language",
            language_code="language_code",
        ),
    }
)


@dataclass(frozen=True, slots=True)
class TaskOrigin:
    """How many kept rows got ``task``, and from where: their source dataset, task_type or default.

    ``before`` is the task their task_type alone gives (None when it names no known task), so a
    row whose source dataset says more than its task_type shows the change.
    """

    source: str | None
    raw_task: str | None
    before: str | None
    task: str
    via: str  # "source", "task_type" or "default"
    rows: int


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What ingestion read, kept and left out; rows_read = ingested + every kind left out."""

    path: Path
    format: str
    mapping_name: str
    mapping: ColumnMapping
    rows_read: int
    ingested: int
    duplicates: int
    empty_instruction: int
    unknown_language: int
    unknown_language_top: tuple[tuple[str, int], ...]
    unknown_task: int  # ingested with the default task because the task value was not known
    unknown_task_top: tuple[tuple[str, int], ...]
    default_task: str = GENERAL_TASK
    # Kept rows whose source dataset name the source → task table does not list.
    unknown_source: int = 0
    unknown_source_top: tuple[tuple[str, int], ...] = ()
    origins: tuple[TaskOrigin, ...] = ()
    source_tasks: Path | None = None  # the table used, when the file has a source column

    def changed_by_source(self) -> int:
        """Kept rows whose task comes from their source dataset and differs from task_type's."""
        return sum(o.rows for o in self.origins if o.via == "source" and o.before != o.task)

    def lines(self) -> list[str]:
        """The report as short human-readable lines."""
        out = [
            f"{self.path}: rows read {self.rows_read} ({self.format}, mapping {self.mapping_name})",
            f"ingested {self.ingested}",
            f"left out: duplicates {self.duplicates}, no instruction {self.empty_instruction}, "
            f"unknown language {self.unknown_language}",
        ]
        if self.unknown_language_top:
            out.append("unknown languages: " + _top_text(self.unknown_language_top))
        if self.unknown_task:
            out.append(
                f"unknown tasks (ingested as {self.default_task!r}): {self.unknown_task} rows: "
                + _top_text(self.unknown_task_top)
            )
        if self.source_tasks is not None:
            by_source = sum(o.rows for o in self.origins if o.via == "source")
            out.append(
                f"task from the source dataset for {by_source} rows ({self.changed_by_source()} "
                f"differ from task_type), table {self.source_tasks}"
            )
        if self.unknown_source:
            out.append(
                f"source datasets not in the table (task from task_type, else "
                f"{self.default_task!r}): {self.unknown_source} rows: "
                + _top_text(self.unknown_source_top)
            )
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _top_text(top: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{value!r} ({count})" for value, count in top)


# --- normalisation ----------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """The dedup form of a text: NFKC, casefolded, whitespace runs as one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_key(text: str) -> str | None:
    """The norm_key the pool stores for a text (md5 hex of its normal form), None if empty."""
    norm = normalize_text(text)
    if not norm:
        return None
    return hashlib.md5(norm.encode("utf-8")).hexdigest()


def _char_class(code_points: Sequence[int]) -> str:
    """An RE2 character class matching exactly these code points (sorted, as ranges)."""
    parts: list[str] = []
    start = prev = -2
    for cp in [*code_points, -1]:
        if cp == prev + 1:
            prev = cp
            continue
        if start >= 0:
            parts.append(f"\\x{{{start:x}}}" + (f"-\\x{{{prev:x}}}" if prev > start else ""))
        start = prev = cp
    return "[" + "".join(parts) + "]"


@functools.cache
def _sql_classes() -> tuple[str, str]:
    """(special, whitespace) RE2 classes for the SQL fast path of normalize_text.

    DuckDB has NFC and lower() but no NFKC or casefold. Outside the "special" characters
    (those whose NFKD differs from NFD, or whose casefold differs from DuckDB's lower()),
    lower(nfc_normalize(s)) equals the casefolded NFKC form, so only rows holding a special
    character need Python. The table is built against this DuckDB build's lower().
    """
    probe = connect_memory()
    try:
        lowered = dict(
            probe.execute(
                "SELECT i, lower(chr(i::INTEGER)) FROM range(1114112) t(i) "
                "WHERE (i < 55296 OR i > 57343) AND lower(chr(i::INTEGER)) <> chr(i::INTEGER)"
            ).fetchall()
        )
    finally:
        probe.close()
    special: list[int] = []
    space: list[int] = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if ch.isspace():
            space.append(cp)
        if unicodedata.normalize("NFKD", ch) != unicodedata.normalize(
            "NFD", ch
        ) or ch.casefold() != lowered.get(cp, ch):
            special.append(cp)
    return _char_class(special), _char_class(space) + "+"


# --- reading the file -------------------------------------------------------------------------

_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
}
_COMPRESSION = (".gz", ".zst")


def detect_format(path: Path) -> str:
    """The seed file's format from its name: parquet, jsonl, json, csv or tsv.

    Raises ConfigError for any other suffix.
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (fmt == "parquet" and path.suffix.lower() in _COMPRESSION):
        raise ConfigError(
            f"{path}: unknown seed file format {''.join(path.suffixes) or '(no suffix)'!r}; "
            "name it .parquet, .jsonl, .ndjson, .json, .csv or .tsv (JSON and CSV may end in "
            ".gz or .zst)"
        )
    return fmt


def _reader(fmt: str, columns: Sequence[str] | None = None) -> str:
    """The DuckDB table function reading a file of this format; `?` is the path."""
    if fmt == "parquet":
        return "read_parquet(?)"
    if fmt in ("csv", "tsv"):
        # all_varchar: a seed file's text must not be turned into numbers or dates by sniffing.
        delim = ", delim = '\t'" if fmt == "tsv" else ""
        return f"read_csv(?, header = true, all_varchar = true{delim})"
    shape = "newline_delimited" if fmt == "jsonl" else "auto"
    if columns is None:
        return f"read_json(?, format = '{shape}')"
    # Naming the columns makes DuckDB extract only those keys, each as text (numbers and nested
    # values keep their JSON spelling), so a stray type in row 900k cannot fail the read.
    wanted = ", ".join(f"{_sql_string(c)}: 'VARCHAR'" for c in columns)
    return f"read_json(?, format = '{shape}', columns = {{{wanted}}})"


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _open_binary(path: Path) -> BinaryIO:
    if path.suffix.lower() == ".gz":
        return cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")


def _first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """Line number and reason of the first line of a JSONL file that is not a JSON object."""
    if path.suffix.lower() == ".zst":
        return None  # no zstd reader in the standard library; DuckDB's message must do
    with _open_binary(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                return number, str(exc)
            if not isinstance(value, dict):
                return number, f"expected a JSON object, got {type(value).__name__}"
    return None


def _first_non_utf8_line(path: Path) -> tuple[int, int, int] | None:
    """(line, column, byte) of the first byte of a text file that is not UTF-8, if any."""
    if path.suffix.lower() == ".zst":
        return None
    with _open_binary(path) as fh:
        for number, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = len(line[: exc.start].decode("utf-8", "replace")) + 1
                return number, column, line[exc.start]
    return None


def _is_blank(path: Path) -> bool:
    """Whether a seed file holds nothing but whitespace (a zero-byte file included)."""
    if path.stat().st_size == 0:
        return True
    if path.suffix.lower() in (".parquet", ".zst"):
        return False
    with _open_binary(path) as fh:
        while chunk := fh.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _file_error(path: Path, fmt: str, exc: duckdb.Error) -> ConfigError:
    """Translate a DuckDB error raised while reading the seed file into a ConfigError."""
    reason = str(exc).split("\n", 1)[0]
    if fmt != "parquet" and isinstance(exc, duckdb.InvalidInputException):
        bad_text = _first_non_utf8_line(path)
        if bad_text is not None:
            line, column, byte = bad_text
            return ConfigError(
                f"{path}: line {line} is not UTF-8 text (byte 0x{byte:02x} at column {column}); "
                "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT` for a Latin-1 "
                "file)"
            )
    if fmt == "jsonl" and isinstance(exc, duckdb.InvalidInputException):
        # DuckDB's own line number drifts on large files read in parallel; find it exactly.
        bad = _first_bad_json_line(path)
        if bad is not None:
            return ConfigError(
                f"{path}: line {bad[0]} is not valid JSON ({bad[1]}); every line must be one "
                "JSON object: fix or remove that line"
            )
    return ConfigError(f"{path}: cannot read it as {fmt} ({reason}); check the file and its format")


def file_columns(conn: duckdb.DuckDBPyConnection, path: Path, fmt: str) -> tuple[str, ...]:
    """The column names DuckDB sees in the seed file.

    Raises ConfigError when the file is missing or cannot be read as fmt.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: seed file not found; check the path")
    if _is_blank(path):
        raise ConfigError(
            f"{path}: the seed file is empty; put seed instructions in it (see "
            "examples/seeds.jsonl for the shape)"
        )
    try:
        rows = conn.execute(f"DESCRIBE SELECT * FROM {_reader(fmt)}", [str(path)]).fetchall()
    except duckdb.Error as exc:
        raise _file_error(path, fmt, exc) from exc
    return tuple(str(row[0]) for row in rows)


def column_mapping(mapping: str | SeedColumns) -> str | ColumnMapping:
    """The config's ``seeds.mapping`` as ingestion takes it: a name, or the column table."""
    if isinstance(mapping, str):
        return mapping
    return ColumnMapping(
        instruction=mapping.instruction,
        language=mapping.language,
        language_code=mapping.language_code,
        task=mapping.task,
        target=mapping.target,
        source=mapping.source,
    )


def resolve_mapping(
    mapping: ColumnMapping | str, columns: Sequence[str], path: Path
) -> tuple[str, ColumnMapping]:
    """The mapping to use (name, mapping), checked against the file's columns.

    "auto" picks the preset that names the most of the file's columns, keeping only the
    optional columns that exist. Raises ConfigError for an unknown preset name, for a named
    mapping whose column the file lacks, and when no preset fits in "auto" mode.
    """
    present = set(columns)
    shown = ", ".join(columns) or "(none)"
    if mapping == "auto":
        best: tuple[tuple[int, bool], str, ColumnMapping] | None = None
        for name, preset in MAPPINGS.items():
            fitted = _fit(preset, present)
            if fitted is not None:
                # Most columns used first; on a tie, a preset whose columns are all there.
                score = (len(fitted.named()), fitted == preset)
                if best is None or score > best[0]:
                    best = (score, name, fitted)
        if best is None:
            raise ConfigError(
                f"{path}: no ready-made column mapping fits its columns ({shown}); name the "
                f"mapping ({', '.join(MAPPINGS)}) or give the columns in the config, e.g. "
                'seeds.mapping = { instruction = "prompt", language = "lang", task = "category" '
                "} (language: English names; or language_code: ISO codes)"
            )
        return best[1], best[2]
    if isinstance(mapping, str):
        if mapping not in MAPPINGS:
            raise ConfigError(
                f"unknown column mapping {mapping!r}; use auto, {', '.join(MAPPINGS)}, or a "
                'column table: { instruction = "...", language = "...", task = "..." }'
            )
        name, chosen = mapping, MAPPINGS[mapping]
    else:
        name, chosen = "custom", mapping
    missing = [f"{c!r} ({role})" for role, c in chosen.named().items() if c not in present]
    if missing:
        what = "a column" if len(missing) == 1 else "columns"
        raise ConfigError(
            f"{path}: column mapping {name!r} names {what} the file lacks: "
            f"{', '.join(missing)}; its columns are {shown}"
        )
    return name, chosen


def _fit(preset: ColumnMapping, present: set[str]) -> ColumnMapping | None:
    """The preset reduced to the columns present, or None without instruction and language."""
    language = preset.language if preset.language in present else None
    code = preset.language_code if preset.language_code in present else None
    if preset.instruction not in present or (language is None and code is None):
        return None
    return ColumnMapping(
        instruction=preset.instruction,
        language=language,
        language_code=code,
        task=preset.task if preset.task in present else None,
        target=preset.target if preset.target in present else None,
        source=preset.source if preset.source in present else None,
    )


# --- ingestion --------------------------------------------------------------------------------


def ingest_seeds(
    conn: duckdb.DuckDBPyConnection,
    path: Path,
    *,
    mapping: ColumnMapping | str = "auto",
    languages: LanguageTable,
    taxonomy: Taxonomy,
    table: str = "seed_pool",
    temporary: bool = True,
    keep_text: bool = True,
    source_tasks: SourceTasks | None = None,
    default_task: str = GENERAL_TASK,
) -> IngestReport:
    """Read a seed file into `table` (replaced if it exists): resolved, normalised, deduplicated.

    Rows with no instruction or an unknown language are left out and counted; duplicates keep
    their first row. A row's task comes from its source dataset when source_tasks (the built-in
    table by default) lists it, else from its task value, else it is default_task; unknown task
    values and source names are counted. keep_text=False leaves
    instruction, target and source out of the pool and records the file in `<table>_source`
    instead: select_seeds then reads the text of the chosen rows only, so memory no longer
    grows with the file's text. Raises ConfigError for the file, its format, the mapping or a
    malformed line, and StateError for a bad table name.
    """
    if not _IDENT.match(table):
        raise StateError(f"pool table name {table!r} is not a plain SQL identifier; use [A-Za-z_]")
    if table.lower() in _RUN_TABLES:
        raise StateError(f"pool table name {table!r} is one of the run's own tables; pick another")
    general = taxonomy.task(default_task).id
    fmt = detect_format(path)
    columns = file_columns(conn, path, fmt)
    mapping_name, chosen = resolve_mapping(mapping, columns, path)
    table_of_sources = None
    if chosen.source is not None:
        table_of_sources = source_tasks or load_source_tasks(taxonomy)
    # The first scan keeps only keys and labels (tens of bytes a row); with keep_text a second
    # scan copies the kept rows' text straight into the pool, so the text is held once, never
    # as a staging copy plus a pool copy.
    stat = path.stat()
    try:
        _scan_keys(conn, path, fmt, chosen)
        _fix_special(conn)
        _map_languages(conn, languages)
        _map_tasks(conn, taxonomy, table_of_sources, general)
        counts = _count(conn)
        _keep_firsts(conn)
        kind = "TEMP TABLE" if temporary else "TABLE"
        if keep_text:
            _build_pool(conn, table, kind, path, fmt, chosen, general)
            conn.execute(f"DROP TABLE IF EXISTS {_quote(table + '_source')}")
        else:
            conn.execute(
                f"CREATE OR REPLACE {kind} {_quote(table)} AS "
                "SELECT source_row + 1 AS seed_id, source_row, language, language_code, "
                "coalesce(task, ?) AS task, norm_key, tier FROM _m2l_keep",
                [general],
            )
            source = PoolSource(
                path, fmt, chosen.instruction, chosen.target, chosen.source, stat.st_size,
                stat.st_mtime_ns,
            )  # fmt: skip
            _record_source(conn, table + "_source", kind, source)
        ingested = _scalar(conn, f"SELECT count(*) FROM {_quote(table)}")
        unknown_tasks = conn.execute(
            "SELECT raw_task, count(*) AS n FROM _m2l_keep WHERE raw_task IS NOT NULL "
            "AND before IS NULL AND via <> 'source' GROUP BY ALL ORDER BY n DESC, raw_task"
        ).fetchall()
        unknown_sources = conn.execute(
            "SELECT raw_source, count(*) AS n FROM _m2l_keep WHERE raw_source IS NOT NULL "
            "AND NOT source_known GROUP BY ALL ORDER BY n DESC, raw_source"
        ).fetchall()
        origins = tuple(
            TaskOrigin(src, raw, before, str(task), str(via), int(n))
            for src, raw, before, task, via, n in conn.execute(
                "SELECT raw_source, raw_task, before, task, via, count(*) AS n FROM _m2l_keep "
                "GROUP BY ALL ORDER BY n DESC, raw_source NULLS FIRST, raw_task NULLS FIRST"
            ).fetchall()
        )
    finally:
        for temp in ("_m2l_raw", "_m2l_fix", "_m2l_langmap", "_m2l_taskmap", "_m2l_keep"):
            conn.execute(f"DROP TABLE IF EXISTS temp.{temp}")
    rows_read, empty, unknown_language, valid, top_languages = counts
    return IngestReport(
        path=path,
        format=fmt,
        mapping_name=mapping_name,
        mapping=chosen,
        rows_read=rows_read,
        ingested=ingested,
        duplicates=valid - ingested,
        empty_instruction=empty,
        unknown_language=unknown_language,
        unknown_language_top=top_languages,
        unknown_task=sum(int(n) for _, n in unknown_tasks),
        unknown_task_top=tuple((str(v), int(n)) for v, n in unknown_tasks[:_TOP_UNKNOWN]),
        default_task=general,
        unknown_source=sum(int(n) for _, n in unknown_sources),
        unknown_source_top=tuple((str(v), int(n)) for v, n in unknown_sources[:_TOP_UNKNOWN]),
        origins=origins,
        source_tasks=table_of_sources.path if table_of_sources is not None else None,
    )


def _text(column: str | None) -> str:
    return f"CAST({_quote(column)} AS VARCHAR)" if column else "CAST(NULL AS VARCHAR)"


def _trimmed(column: str | None) -> str:
    return f"nullif(trim({_text(column)}), '')"


def _scan_keys(
    conn: duckdb.DuckDBPyConnection, path: Path, fmt: str, mapping: ColumnMapping
) -> None:
    """First scan: labels and the SQL norm_key of every row into _m2l_raw, no text kept.

    A row holding a character SQL cannot normalise exactly keeps its instruction in
    special_text for _fix_special; every other row's key is computed here.
    """
    special, space = _sql_classes()
    wanted = [
        mapping.instruction,
        mapping.language,
        mapping.language_code,
        mapping.task,
        mapping.source,
    ]
    used = list(dict.fromkeys(c for c in wanted if c is not None))
    norm = f"trim(regexp_replace(lower(nfc), '{space}', ' ', 'g'))"
    sql = f"""
        CREATE OR REPLACE TEMP TABLE _m2l_raw AS
        WITH src AS (
            SELECT ordinality - 1 AS source_row,
                nfc_normalize({_text(mapping.instruction)}) AS nfc,
                {_trimmed(mapping.language)} AS raw_language,
                {_trimmed(mapping.language_code)} AS raw_code,
                {_trimmed(mapping.task)} AS raw_task,
                {_trimmed(mapping.source)} AS raw_source
            FROM {_reader(fmt, used)} WITH ORDINALITY),
        k AS (SELECT * EXCLUDE (nfc), coalesce(regexp_matches(nfc, '{special}'), false) AS special,
                     {norm} AS norm, nfc FROM src)
        SELECT source_row, raw_language, raw_code, raw_task, raw_source, special,
            CASE WHEN special THEN nfc END AS special_text,
            CASE WHEN special OR norm IS NULL OR norm = '' THEN NULL ELSE md5(norm) END AS norm_key
        FROM k"""
    try:
        conn.execute(sql, [str(path)])
    except duckdb.Error as exc:
        raise _file_error(path, fmt, exc) from exc


def _fix_special(conn: duckdb.DuckDBPyConnection) -> None:
    """Compute norm_key in Python for the rows SQL cannot normalise exactly (see _sql_classes)."""
    conn.execute("CREATE OR REPLACE TEMP TABLE _m2l_fix(source_row BIGINT, norm_key VARCHAR)")
    last = -1
    while True:
        # Keyset pages: each page is its own query, so the inserts below do not cut a cursor.
        rows = conn.execute(
            "SELECT source_row, special_text FROM _m2l_raw WHERE special AND source_row > ? "
            "ORDER BY source_row LIMIT ?",
            [last, _FIX_BATCH],
        ).fetchall()
        if not rows:
            break
        conn.execute(
            "INSERT INTO _m2l_fix SELECT unnest(?::BIGINT[]), unnest(?::VARCHAR[])",
            [[row[0] for row in rows], [text_key(row[1]) for row in rows]],
        )
        last = rows[-1][0]
    # The text was only needed for this; drop it before the joins that follow.
    conn.execute("ALTER TABLE _m2l_raw DROP COLUMN special_text")


def _map_languages(conn: duckdb.DuckDBPyConnection, languages: LanguageTable) -> None:
    """Resolve each distinct (language, code) pair once; the code wins when both resolve."""
    pairs = conn.execute("SELECT DISTINCT raw_language, raw_code FROM _m2l_raw").fetchall()
    cols: list[list[str | None]] = [[], [], [], [], []]
    for raw_language, raw_code in pairs:
        found = (languages.get(raw_code) if raw_code else None) or (
            languages.get(raw_language) if raw_language else None
        )
        values = (
            raw_language,
            raw_code,
            found.name if found else None,
            found.iso639_3 if found else None,
            found.tier if found else None,
        )
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE _m2l_langmap AS SELECT unnest(?::VARCHAR[]) AS raw_language,"
        " unnest(?::VARCHAR[]) AS raw_code, unnest(?::VARCHAR[]) AS language,"
        " unnest(?::VARCHAR[]) AS language_code, unnest(?::VARCHAR[]) AS tier",
        cols,
    )


def _map_tasks(
    conn: duckdb.DuckDBPyConnection,
    taxonomy: Taxonomy,
    sources: SourceTasks | None,
    default: str,
) -> None:
    """Resolve each distinct (task value, source name) pair once.

    The source dataset wins when the table lists it (it says more than a coarse task_type);
    otherwise the task value through the taxonomy's ids and aliases; otherwise the default.
    """
    pairs = conn.execute("SELECT DISTINCT raw_task, raw_source FROM _m2l_raw").fetchall()
    cols: list[list[object]] = [[], [], [], [], [], []]
    for raw_task, raw_source in pairs:
        before: str | None = None
        if raw_task is not None:
            try:
                before = taxonomy.task(raw_task).id
            except ConfigError:
                before = None  # unknown: counted, and the default task unless the source says
        by_source = sources.task_for(raw_source) if sources and raw_source is not None else None
        if by_source is not None:
            task, via = by_source, "source"
        elif before is not None:
            task, via = before, "task_type"
        else:
            task, via = default, "default"
        for col, value in zip(
            cols, (raw_task, raw_source, before, task, via, by_source is not None), strict=True
        ):
            col.append(value)
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE _m2l_taskmap AS "
        "SELECT unnest(?::VARCHAR[]) AS raw_task, unnest(?::VARCHAR[]) AS raw_source, "
        "unnest(?::VARCHAR[]) AS before, unnest(?::VARCHAR[]) AS task, "
        "unnest(?::VARCHAR[]) AS via, unnest(?::BOOLEAN[]) AS source_known",
        cols,
    )


_JOINED = """
    FROM _m2l_raw r
    JOIN _m2l_langmap m ON m.raw_language IS NOT DISTINCT FROM r.raw_language
                       AND m.raw_code IS NOT DISTINCT FROM r.raw_code
    LEFT JOIN _m2l_fix f ON f.source_row = r.source_row"""
_KEY = "CASE WHEN r.special THEN f.norm_key ELSE r.norm_key END"


def _count(
    conn: duckdb.DuckDBPyConnection,
) -> tuple[int, int, int, int, tuple[tuple[str, int], ...]]:
    """(rows read, empty instruction, unknown language, valid rows, top unknown languages)."""
    row = conn.execute(
        f"SELECT count(*), count(*) FILTER ({_KEY} IS NULL),"
        f" count(*) FILTER ({_KEY} IS NOT NULL AND m.language IS NULL),"
        f" count(*) FILTER ({_KEY} IS NOT NULL AND m.language IS NOT NULL) {_JOINED}"
    ).fetchone()
    assert row is not None  # an aggregate without GROUP BY always returns one row
    top = conn.execute(
        "SELECT CASE WHEN r.raw_language IS NOT NULL AND r.raw_code IS NOT NULL"
        " THEN r.raw_language || ' (' || r.raw_code || ')'"
        " ELSE coalesce(r.raw_language, r.raw_code, '(none)') END AS shown, count(*) AS n"
        f" {_JOINED} WHERE {_KEY} IS NOT NULL AND m.language IS NULL"
        " GROUP BY ALL ORDER BY n DESC, shown LIMIT ?",
        [_TOP_UNKNOWN],
    ).fetchall()
    return (
        int(row[0]),
        int(row[1]),
        int(row[2]),
        int(row[3]),
        tuple((str(v), int(n)) for v, n in top),
    )


def _keep_firsts(conn: duckdb.DuckDBPyConnection) -> None:
    """_m2l_keep: the valid rows, the first of each normalised text, with their labels."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _m2l_keep AS
        SELECT r.source_row, m.language, m.language_code, m.tier, r.raw_task, r.raw_source,
               t.before, t.task, t.via, t.source_known, {_KEY} AS norm_key
        {_JOINED}
        JOIN _m2l_taskmap t ON t.raw_task IS NOT DISTINCT FROM r.raw_task
                           AND t.raw_source IS NOT DISTINCT FROM r.raw_source
        WHERE {_KEY} IS NOT NULL AND m.language IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY {_KEY} ORDER BY r.source_row) = 1"""
    )


def _text_scan(fmt: str, instruction: str, target: str | None, source: str | None) -> str:
    """A subquery of (source_row, instruction, target, source) over the file; `?` is the path."""
    used = list(dict.fromkeys(c for c in (instruction, target, source) if c))
    return f"""(
        SELECT ordinality - 1 AS source_row, {_text(instruction)} AS instruction,
               {_text(target)} AS target, {_trimmed(source)} AS source
        FROM {_reader(fmt, used)} WITH ORDINALITY)"""


def _build_pool(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    kind: str,
    path: Path,
    fmt: str,
    mapping: ColumnMapping,
    general: str,
) -> None:
    """Second scan: copy the kept rows' text from the file into the pool table."""
    scan = _text_scan(fmt, mapping.instruction, mapping.target, mapping.source)
    sql = f"""
        CREATE OR REPLACE {kind} {_quote(table)} AS
        SELECT k.source_row + 1 AS seed_id, k.source_row, s.instruction, s.target, k.language,
               k.language_code, coalesce(k.task, ?) AS task, coalesce(s.source, ?) AS source,
               CAST(NULL AS INTEGER) AS instruction_tokens, k.norm_key, k.tier
        FROM {scan} s JOIN _m2l_keep k ON k.source_row = s.source_row"""
    try:
        conn.execute(sql, [general, path.name, str(path)])
    except duckdb.Error as exc:
        raise _file_error(path, fmt, exc) from exc


@dataclass(frozen=True, slots=True)
class PoolSource:
    """Where the text of a pool ingested with keep_text=False lives: its file and columns."""

    path: Path
    format: str
    instruction: str
    target: str | None
    source: str | None
    size: int
    mtime_ns: int

    def text_scan(self) -> tuple[str, list[str]]:
        """SQL subquery (source_row, instruction, target, source) over the file, and its params.

        Raises StateError when the file is gone or changed since it was ingested, since its
        row numbers may then point at other rows.
        """
        try:
            stat = self.path.stat()
        except OSError:
            stat = None
        if stat is None or (stat.st_size, stat.st_mtime_ns) != (self.size, self.mtime_ns):
            state = "is gone" if stat is None else "changed"
            raise StateError(
                f"seed file {self.path} {state} since it was ingested; ingest it again "
                "before selecting seeds"
            )
        return _text_scan(self.format, self.instruction, self.target, self.source), [str(self.path)]

    def read_error(self, exc: duckdb.Error) -> ConfigError:
        """The ConfigError for a DuckDB error met while reading the file's text."""
        return _file_error(self.path, self.format, exc)


def _record_source(
    conn: duckdb.DuckDBPyConnection, table: str, kind: str, source: PoolSource
) -> None:
    conn.execute(
        f"CREATE OR REPLACE {kind} {_quote(table)}(path VARCHAR, format VARCHAR, "
        "instruction VARCHAR, target VARCHAR, source VARCHAR, size BIGINT, mtime_ns BIGINT)"
    )
    conn.execute(
        f"INSERT INTO {_quote(table)} VALUES (?, ?, ?, ?, ?, ?, ?)",
        [str(source.path), source.format, source.instruction, source.target, source.source,
         source.size, source.mtime_ns],
    )  # fmt: skip


def pool_source(conn: duckdb.DuckDBPyConnection, table: str = "seed_pool") -> PoolSource | None:
    """The file a keys-only pool reads its text from, or None if the pool holds its text."""
    if not _IDENT.match(table):
        raise StateError(f"pool table name {table!r} is not a plain SQL identifier; use [A-Za-z_]")
    try:
        row = conn.execute(f"SELECT * FROM {_quote(table + '_source')}").fetchone()
    except duckdb.CatalogException:
        return None
    if row is None:
        return None
    path, fmt, instruction, target, source, size, mtime_ns = row
    return PoolSource(Path(path), fmt, instruction, target, source, size, mtime_ns)


def _scalar(conn: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row is not None else 0


def pool_counts(
    conn: duckdb.DuckDBPyConnection, table: str = "seed_pool"
) -> Iterator[tuple[str, str, str | None, str, int]]:
    """(language, language_code, tier, task, seeds) for every cell of the pool, sorted."""
    if not _IDENT.match(table):
        raise StateError(f"pool table name {table!r} is not a plain SQL identifier; use [A-Za-z_]")
    rows = conn.execute(
        f"SELECT language, language_code, tier, task, count(*) FROM {_quote(table)} "
        "GROUP BY ALL ORDER BY language, task"
    ).fetchall()
    for language, code, tier, task, n in rows:
        yield str(language), str(code), tier, str(task), int(n)
