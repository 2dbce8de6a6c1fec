"""Exporting a run's conversations from its DuckDB store as release Parquet/JSONL or chat JSONL.

DuckDB writes every file (``COPY (SELECT ...) TO``), one range of conversations at a time, so
memory stays bounded whatever the run's size (JSON lines are appended; Parquet parts are joined
by their bytes); the file appears at its path only once complete.
The release formats follow ServiceNow-AI/M2Lingual exactly (state.release) and can be written
as the release's three subsets; every export directory gets a dataset card (state.card).
Raises StateError for a missing, busy, damaged or foreign store and ConfigError for an unknown
format or an impossible combination of options.

Row ids are int32, unique within an export and the same in every re-export of a run: a seed row
is its seed_id; an evolved pair is S + conv_id; a whole conversation is S + C + conv_id, where S
and C are the run's largest seed_id and conv_id (both fixed when the run was planned).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from engine.config import StoreConfig
from engine.errors import ConfigError, StateError
from state import card
from state._parquet_concat import ParquetConcatError, concat_parquet
from state.release import SUBSETS, multiturn_types_for, quality_fields, release_schema
from state.schema import (
    STATE_FILE,
    has_added_columns,
    open_existing,
    release_cache,
    stored_store_config,
)
from state.shards import ensure_merged
from state.tempfiles import remove_stale_temp_files

__all__ = [
    "CHUNK_CONVERSATIONS",
    "FORMATS",
    "SUBSETS",
    "ExportFormat",
    "ExportReport",
    "default_output",
    "export_run",
    "export_subsets",
    "export_with",
    "open_run",
]

_INT32_MAX = 2**31 - 1


# Conversations per COPY unless [store] export_chunk says otherwise: DuckDB's ORDER BY does
# not spill rows holding long nested lists, so each range must fit in memory (about 20 kB per
# conversation in the release schema: ~20 MB).
CHUNK_CONVERSATIONS = StoreConfig().export_chunk

# Rows per Parquet row group: the writer buffers one group, so this bounds its memory too. A
# release file holds each range's rows as its own row group(s), so its groups have
# [store] export_chunk rows when that is the smaller.
_ROW_GROUP_ROWS = 2000


@dataclass(frozen=True, slots=True)
class ExportFormat:
    """One export format: its CLI name, what DuckDB writes, and the default file name."""

    name: str
    copy_format: str  # DuckDB COPY's FORMAT: "parquet" or "json" (newline-delimited)
    stem: str
    suffix: str
    can_mark_filtered: bool  # the rows may carry a filter_reason field


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("release-parquet", "parquet", "release", ".parquet", True),
        ExportFormat("release-jsonl", "json", "release", ".jsonl", True),
        # OpenAI's fine-tuning validator rejects any key besides "messages", so these lines
        # cannot say which conversations were filtered.
        ExportFormat("messages-jsonl", "json", "messages", ".jsonl", False),
        ExportFormat("sharegpt-jsonl", "json", "sharegpt", ".jsonl", True),
    )
}


@dataclass(frozen=True, slots=True)
class ExportReport:
    """Where an export was written, how many rows (or lines) it holds, and its dataset card."""

    path: Path
    rows: int
    card: Path | None = None  # None when a README.md not written by m2l was left alone


def open_run(run_dir: Path, *, action: str, write: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a run's store for an offline command: read-only, or exclusively when ``write``.

    ``action`` completes the busy message ("export", "filter it", ...). Raises StateError when
    there is no store, when a running m2l process holds it (StoreLocked), or when it is damaged
    or foreign.
    """
    ensure_merged(run_dir)  # a sharded run whose last session ended unmerged (driver killed)
    return open_existing(run_dir / STATE_FILE, action=action, read_only=not write)


def default_output(
    run_dir: Path, fmt: str, *, include_filtered: bool = False, subset: str | None = None
) -> Path:
    """``<run_dir>/export/<stem><suffix>``, with ``-with-filtered`` before the suffix if asked.

    A subset of a release format is named after the subset (``full_data.parquet``). Raises
    ConfigError for an unknown format or subset.
    """
    spec = _check_options(fmt, include_filtered, subset)
    extra = "-with-filtered" if include_filtered else ""
    return run_dir / "export" / f"{subset or spec.stem}{extra}{spec.suffix}"


def export_run(
    run_dir: Path,
    fmt: str,
    *,
    output: Path | None = None,
    include_filtered: bool = False,
    subset: str | None = None,
    quality_fields: bool = False,
    exclude_partial: bool = False,
) -> ExportReport:
    """Export the run at ``run_dir``, opening its store read-only; see ``export_with``.

    Raises StateError when the store is missing, busy or damaged, ConfigError for bad options,
    and OSError when the output cannot be written.
    """
    _check_options(fmt, include_filtered, subset, quality_fields)
    target = output or default_output(
        run_dir, fmt, include_filtered=include_filtered, subset=subset
    )
    conn = open_run(run_dir, action="export")
    try:
        return export_with(
            conn,
            fmt,
            target,
            include_filtered,
            subset=subset,
            quality_fields=quality_fields,
            exclude_partial=exclude_partial,
        )
    finally:
        conn.close()


def export_subsets(
    run_dir: Path,
    fmt: str,
    *,
    directory: Path | None = None,
    include_filtered: bool = False,
    quality_fields: bool = False,
    exclude_partial: bool = False,
) -> list[ExportReport]:
    """Write the release's three subsets (seed_data, seed_evol_data, full_data) of a run.

    They go to ``directory`` (default ``<run_dir>/export``) named after the subset. Raises
    ConfigError for a format that is not a release format or for ``quality_fields`` (a subset
    mirrors a released file), and as ``export_run`` does.
    """
    _check_options(fmt, include_filtered, next(iter(SUBSETS)), quality_fields)
    target = directory or run_dir / "export"
    reports = []
    conn = open_run(run_dir, action="export")
    try:
        for subset in SUBSETS:
            spec = _check_options(fmt, include_filtered, subset)
            extra = "-with-filtered" if include_filtered else ""
            path = target / f"{subset}{extra}{spec.suffix}"
            reports.append(
                export_with(
                    conn,
                    fmt,
                    path,
                    include_filtered,
                    subset=subset,
                    exclude_partial=exclude_partial,
                )
            )
    finally:
        conn.close()
    return reports


def export_with(
    conn: duckdb.DuckDBPyConnection,
    fmt: str,
    output: Path,
    include_filtered: bool = False,
    *,
    chunk_size: int | None = None,
    subset: str | None = None,
    quality_fields: bool = False,
    exclude_partial: bool = False,
) -> ExportReport:
    """Write the run's done (and, if asked, filtered) conversations to ``output`` atomically.

    ``quality_fields`` (JSONL formats that may carry more fields) adds to each row its planned
    and made turns, why it is short if it is (a late turn failed and the good turns were
    kept), and every output thrown away while making it (``rejected``: step, regeneration,
    kind, reason, content). ``exclude_partial`` leaves out conversations kept with fewer turns
    than planned.

    Rows are in conv_id order, written ``chunk_size`` conversations per COPY (default: the
    run's ``[store] export_chunk``); a release
    ``subset`` writes that subset's rows instead (see SUBSETS). The file is built beside
    ``output`` and moved into place at the end, so a failure leaves any earlier file there
    untouched; then the directory's dataset card is brought up to date. Raises ConfigError for
    bad options, StateError when the run's ids do not fit int32, OSError when the folder cannot
    be written, and duckdb.Error if DuckDB fails.
    """
    spec = _check_options(fmt, include_filtered, subset, quality_fields)
    if quality_fields and not has_added_columns(conn):
        raise ConfigError(
            "--quality-fields needs the run's record of rejected outputs, which this store "
            "(made by an older m2l) does not have yet: resume the run once, or export without it"
        )
    store = stored_store_config(conn, output)
    if chunk_size is None:
        chunk_size = store.export_chunk
    if chunk_size < 1:
        raise ConfigError(f"chunk_size = {chunk_size}: expected 1 or more conversations")
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(output.parent)  # what an export killed mid-write left behind
    statuses = ("done", "filtered") if include_filtered else ("done",)
    bounds = _chunk_bounds(conn, statuses, chunk_size, exclude_partial)
    # A run with nothing to export still gets a file: one unbounded range with no rows.
    ranges = list(_ranges(bounds)) or [(None, None)]
    shape = _shape(conn, spec) if spec.stem == "release" else None
    # Read before the ranges, whose cache is let go after each: at the end, the scan would add
    # its blocks to what the file's check and the card hold.
    facts = card.run_facts(conn)
    extra = _Extra(quality_fields, exclude_partial)
    selects = _selects(spec, statuses, include_filtered, ranges, shape, subset, extra)
    # What the connection read before (at the end of a run: the writer's blocks) is let go
    # first, so the export's memory takes the place of that cache instead of adding to it.
    release_cache(conn, store)
    with _scratch(output) as scratch:
        temp = scratch(".tmp")
        if spec.copy_format == "parquet":
            assert shape is not None  # the release formats are the only Parquet ones

            def check(part: Path, shape: _Shape = shape) -> None:
                _check_release_file(part, shape, include_filtered, quality_fields)

            rows = _parquet_in_parts(conn, spec, selects, temp, scratch, store, check)
        else:
            rows = _jsonl_in_parts(conn, spec, selects, temp, scratch, store)
        _fsync(temp)
        os.replace(temp, output)
    written = card.record_export(
        output,
        card.Entry(
            file=output.name,
            format=spec.name,
            subset=subset,
            include_filtered=include_filtered,
            rows=rows,
            multiturn_types=list(shape.types) if shape is not None else [],
            quality_fields=quality_fields,
        ),
        facts,
    )
    return ExportReport(output, rows, written)


def _format(fmt: str) -> ExportFormat:
    spec = FORMATS.get(fmt)
    if spec is None:
        raise ConfigError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    return spec


def _check_options(
    fmt: str, include_filtered: bool, subset: str | None = None, quality_fields: bool = False
) -> ExportFormat:
    spec = _format(fmt)
    if quality_fields and not spec.can_mark_filtered:
        raise ConfigError(
            f"--quality-fields cannot be used with {fmt}: OpenAI's fine-tuning validator "
            'rejects any key besides "messages"; use release-parquet, release-jsonl or '
            "sharegpt-jsonl"
        )
    if quality_fields and subset:
        raise ConfigError(
            f"--quality-fields cannot be used with the {subset} subset: a subset mirrors one of "
            "M2Lingual's released files row for row, and its seed rows have no conversation for "
            "the fields to describe; export the whole release (no --subsets) with them"
        )
    if subset is not None:
        if subset not in SUBSETS:
            raise ConfigError(f"unknown subset {subset!r}: use one of {', '.join(SUBSETS)}")
        if spec.stem != "release":
            raise ConfigError(
                f"the {subset} subset is a release format's: use release-parquet or "
                f"release-jsonl, not {fmt}"
            )
    if include_filtered and not spec.can_mark_filtered:
        raise ConfigError(
            f"--include-filtered cannot be used with {fmt}: its lines may only hold "
            '"messages", so filtered conversations could not be told apart; use '
            "sharegpt-jsonl or release-jsonl, which carry a filter_reason field"
        )
    return spec


@dataclass(frozen=True, slots=True)
class _Extra:
    """Export options beyond the format: quality fields, leaving out shortened conversations."""

    quality_fields: bool = False
    exclude_partial: bool = False


# The --quality-fields list of thrown-away outputs, typed as state.release.quality_fields says.
_REJECTED_TYPE = (
    "STRUCT(step BIGINT, regeneration BIGINT, kind VARCHAR, reason VARCHAR, content VARCHAR)[]"
)


def _partial(alias: str = "") -> str:
    """SQL: the conversation is done with fewer turns than planned (a late turn failed)."""
    a = f"{alias}." if alias else ""
    return f"({a}status = 'done' AND {a}steps_done < 2 * {a}turns_planned)"


def _chunk_bounds(
    conn: duckdb.DuckDBPyConnection, statuses: Sequence[str], size: int, exclude_partial: bool
) -> list[int]:
    """The first conv_id of each run of ``size`` exported conversations, ascending."""
    partial = f" AND NOT {_partial()}" if exclude_partial else ""
    rows = conn.execute(
        f"""SELECT conv_id FROM conversations WHERE status IN ({_in(statuses)}){partial}
            QUALIFY (row_number() OVER (ORDER BY conv_id) - 1) % {int(size)} = 0
            ORDER BY conv_id"""
    ).fetchall()
    return [int(r[0]) for r in rows]


def _in(values: Sequence[str]) -> str:
    return ", ".join(_literal(v) for v in values)


def _literal(text: str) -> str:
    # COPY takes no prepared parameters, so values are inlined; only our own constants and
    # paths reach here, quoted the SQL way.
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a release export's rows depend on: the record types and the id offsets."""

    types: tuple[str, ...]
    seeds: int  # S: the run's largest seed_id
    conversations: int  # C: the run's largest conv_id


def _shape(conn: duckdb.DuckDBPyConnection, spec: ExportFormat) -> _Shape:
    """The run's multi-turn types and id offsets; raises StateError when ids overflow int32."""
    used = [
        str(r[0])
        for r in conn.execute(
            "SELECT DISTINCT evol_type FROM messages WHERE kind = 'follow_up' "
            "AND evol_type IS NOT NULL"
        ).fetchall()
    ]
    row = conn.execute(
        "SELECT (SELECT coalesce(max(seed_id), 0) FROM seeds), "
        "(SELECT coalesce(max(conv_id), 0) FROM conversations)"
    ).fetchone()
    seeds, convs = (int(row[0]), int(row[1])) if row else (0, 0)
    if seeds + 2 * convs > _INT32_MAX:
        raise StateError(
            f"this run has {seeds} seeds and {convs} conversations: its {spec.name} row ids "
            "would not fit the release's int32 id; export messages-jsonl or sharegpt-jsonl"
        )
    return _Shape(multiturn_types_for(used), seeds, convs)


def _selects(
    spec: ExportFormat,
    statuses: Sequence[str],
    include_filtered: bool,
    ranges: Sequence[tuple[int | None, int | None]],
    shape: _Shape | None,
    subset: str | None,
    extra: _Extra = _Extra(),
) -> list[str]:
    """The SELECTs whose rows, in order, make the file."""
    if shape is None:
        return [_select(spec, statuses, include_filtered, lo, hi, extra=extra) for lo, hi in ranges]
    parts: list[str] = []
    json_records = spec.copy_format == "json"
    if subset in ("seed_data", "full_data"):
        parts.append(_seed_select(statuses, include_filtered, shape, json_records))
    wanted = {
        None: ("conversation",),
        "seed_data": (),
        "seed_evol_data": ("evol",),
        "full_data": ("evol", "multi_turn"),
    }[subset]
    for part in wanted:
        parts += [
            _select(spec, statuses, include_filtered, lo, hi, shape=shape, part=part, extra=extra)
            for lo, hi in ranges
        ]
    return parts


def _select(
    spec: ExportFormat,
    statuses: Sequence[str],
    include_filtered: bool,
    lo: int | None,
    hi: int | None,
    *,
    shape: _Shape | None = None,
    part: str = "conversation",
    extra: _Extra = _Extra(),
) -> str:
    """The SELECT for one format over conversations with lo <= conv_id < hi (None: no bound).

    A release ``part`` is "conversation" (whole conversations), "evol" (each conversation's
    evolved pair) or "multi_turn" (whole conversations of two or more turns).
    """
    # Messages are gathered unordered and sorted afterwards: DuckDB spills a plain list()
    # aggregate to disk but not an ordered one. Step is the struct's first field, so
    # list_sort orders by it (it is unique within a conversation).
    turns = " AND c.turns_planned > 1" if part == "multi_turn" else ""
    first_pair = " AND step < 2" if part == "evol" else ""
    partial = f" AND NOT {_partial('c')}" if extra.exclude_partial else ""
    base = f"""WITH conv AS (
        SELECT c.conv_id, c.language, c.task, c.filter_reason, s.instruction AS seed_prompt,
            c.turns_planned, CASE WHEN {_partial("c")} THEN c.error END AS kept_reason
        FROM conversations c JOIN seeds s USING (seed_id)
        WHERE c.status IN ({_in(statuses)}){turns}{_between("c.conv_id", lo, hi)}{partial}),
    steps AS (
        SELECT conv_id, list_sort(list({{'step': step, 'role': role, 'kind': kind,
            'content': content, 'evol_type': evol_type, 'prompt': prompt}})) AS ms
        FROM messages WHERE conv_id IN (SELECT conv_id FROM conv){first_pair}
            {_between("conv_id", lo, hi)}
        GROUP BY conv_id)"""
    if shape is None:
        columns = _COLUMNS[spec.stem]
    else:
        columns = _release_columns(part, shape, spec.copy_format == "json")
    if include_filtered:
        columns += ",\n        filter_reason"
    join = ""
    if extra.quality_fields:
        base += f""",
    thrown AS (
        SELECT conv_id, CAST(list_sort(list({{'step': step, 'regeneration': regeneration,
            'kind': kind, 'reason': reason, 'content': content}})) AS {_REJECTED_TYPE}) AS rejected
        FROM rejections WHERE conv_id IN (SELECT conv_id FROM conv){_between("conv_id", lo, hi)}
        GROUP BY conv_id)"""
        columns += f""",
        CAST(turns_planned AS BIGINT) AS turns_planned,
        CAST(len([m FOR m IN ms IF m.role = 'user']) AS BIGINT) AS turns_made,
        kept_reason,
        coalesce(rejected, CAST([] AS {_REJECTED_TYPE})) AS rejected"""
        join = " LEFT JOIN thrown USING (conv_id)"
    return f"{base}\nSELECT {columns}\nFROM conv JOIN steps USING (conv_id){join} ORDER BY conv_id"


def _records(shape: _Shape, json_records: bool, evol_type: str, prompt: str) -> str:
    """One multiturn_evol_prompt record: {TYPE: prompt} in JSON, a struct in Parquet."""
    if json_records:
        return f"MAP {{{evol_type}: {prompt}}}"
    fields = ", ".join(
        f"{_ident(t)} := CASE WHEN {evol_type} = {_literal(t)} THEN {prompt} END"
        for t in shape.types
    )
    return f"struct_pack({fields})"


def _record_type(shape: _Shape, json_records: bool) -> str:
    if json_records:
        return "MAP(VARCHAR, VARCHAR)"
    return "STRUCT(" + ", ".join(f"{_ident(t)} VARCHAR" for t in shape.types) + ")"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _release_columns(part: str, shape: _Shape, json_records: bool) -> str:
    """The release columns, in the card's order, for one part (see ``_select``)."""
    record = _records(shape, json_records, "m.evol_type", "m.prompt")
    if part == "evol":
        row_id = f"{shape.seeds} + conv_id"
        followups = "[m FOR m IN ms IF false]"
        chat = "ms[1:2]"
    else:
        row_id = f"{shape.seeds + shape.conversations} + conv_id"
        followups = "[m FOR m IN ms IF m.kind = 'follow_up']"
        chat = "ms"
    return f"""CAST({row_id} AS INTEGER) AS id,
        ms[1].evol_type AS task_evol_type,
        ms[1].prompt AS task_evol_prompt,
        seed_prompt,
        ms[2].content AS output_assistant_reply,
        ms[1].content AS evolved_user_prompt,
        CAST([m.evol_type FOR m IN {followups}] AS VARCHAR[]) AS multiturn_evol_type,
        CAST([{record} FOR m IN {followups}] AS {_record_type(shape, json_records)}[])
            AS multiturn_evol_prompt,
        CAST(len([m FOR m IN {chat} IF m.role = 'user']) AS INTEGER) AS no_of_turns,
        language,
        task,
        CAST([m.content FOR m IN {followups}] AS VARCHAR[]) AS evolved_multiturn_prompt,
        [{{'role': m.role, 'content': m.content}} FOR m IN {chat}] AS conversation"""


def _seed_select(
    statuses: Sequence[str], include_filtered: bool, shape: _Shape, json_records: bool
) -> str:
    """seed_data rows: each seed with an exported conversation and a source response."""
    record = _record_type(shape, json_records)
    filtered = ",\n        CAST(NULL AS VARCHAR) AS filter_reason" if include_filtered else ""
    return f"""SELECT CAST(s.seed_id AS INTEGER) AS id,
        CAST(NULL AS VARCHAR) AS task_evol_type,
        CAST(NULL AS VARCHAR) AS task_evol_prompt,
        s.instruction AS seed_prompt,
        s.target AS output_assistant_reply,
        CAST(NULL AS VARCHAR) AS evolved_user_prompt,
        CAST([] AS VARCHAR[]) AS multiturn_evol_type,
        CAST([] AS {record}[]) AS multiturn_evol_prompt,
        CAST(1 AS INTEGER) AS no_of_turns,
        s.language,
        s.task,
        CAST([] AS VARCHAR[]) AS evolved_multiturn_prompt,
        [{{'role': 'user', 'content': s.instruction}},
         {{'role': 'assistant', 'content': s.target}}] AS conversation{filtered}
    FROM seeds s
    WHERE nullif(trim(s.target), '') IS NOT NULL
      AND EXISTS (SELECT 1 FROM conversations c
                  WHERE c.seed_id = s.seed_id AND c.status IN ({_in(statuses)}))
    ORDER BY s.seed_id"""


def _check_release_file(
    path: Path, shape: _Shape, include_filtered: bool, quality: bool = False
) -> None:
    """Raise StateError if the Parquet file written does not have the release schema."""
    import pyarrow as pa  # on first use, as in state.release
    import pyarrow.parquet as pq

    found = pq.read_schema(path).remove_metadata()
    wanted = release_schema(shape.types)
    if include_filtered:
        wanted = wanted.append(pa.field("filter_reason", pa.string()))
    if quality:
        for extra in quality_fields():
            wanted = wanted.append(extra)
    if not found.equals(wanted):
        raise StateError(
            f"internal error: the export's schema differs from the release schema:\n{found}\n"
            f"expected:\n{wanted}\nplease report this; nothing was written"
        )


def _between(column: str, lo: int | None, hi: int | None) -> str:
    # The bounds are repeated on messages so DuckDB skips its row groups by their min/max
    # conv_id instead of scanning the whole table for every range.
    low = f" AND {column} >= {int(lo)}" if lo is not None else ""
    high = f" AND {column} < {int(hi)}" if hi is not None else ""
    return low + high


_COLUMNS: dict[str, str] = {
    "messages": "[{'role': m.role, 'content': m.content} FOR m IN ms] AS messages",
    # ShareGPT as Axolotl reads it: "human" and "gpt" turns under "conversations".
    "sharegpt": """CAST(conv_id AS VARCHAR) AS id,
        language,
        task,
        [{'from': CASE m.role WHEN 'user' THEN 'human' WHEN 'assistant' THEN 'gpt'
            ELSE m.role END, 'value': m.content} FOR m IN ms] AS conversations""",
}


def _copy_options(spec: ExportFormat) -> str:
    if spec.copy_format == "parquet":
        return f"FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {_ROW_GROUP_ROWS}"
    return "FORMAT json"


def _copy(conn: duckdb.DuckDBPyConnection, select: str, spec: ExportFormat, path: Path) -> int:
    """COPY the rows of ``select`` to ``path`` in the format's file type; returns the count."""
    row = conn.execute(
        f"COPY ({select}) TO {_literal(str(path))} ({_copy_options(spec)})"
    ).fetchone()
    return int(row[0]) if row else 0


def _ranges(bounds: Sequence[int]) -> Iterator[tuple[int | None, int | None]]:
    for i, lo in enumerate(bounds):
        yield lo, bounds[i + 1] if i + 1 < len(bounds) else None


class _Scratch:
    """Temporary files beside an output, each removed at the end unless moved away."""

    def __init__(self, output: Path) -> None:
        self._prefix = output.parent / f".{output.name}.{os.getpid()}"
        self.paths: list[Path] = []

    def __call__(self, suffix: str) -> Path:
        path = Path(f"{self._prefix}{suffix}")
        self.paths.append(path)
        return path


@contextlib.contextmanager
def _scratch(output: Path) -> Iterator[_Scratch]:
    scratch = _Scratch(output)
    try:
        yield scratch
    finally:
        for path in scratch.paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _parquet_in_parts(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportFormat,
    selects: Sequence[str],
    temp: Path,
    scratch: _Scratch,
    store: StoreConfig,
    check: Callable[[Path], None],
) -> int:
    """Write each range to its own Parquet part, then join the parts' bytes into one file.

    ``check`` raises if a part's schema is not the file's (it is called on the first part).

    DuckDB cannot append to a Parquet file, and reading every part back into one COPY held a
    little more for each part and row group written (hundreds at 10^5 conversations), so the
    export grew with the run. Joining the parts' bytes under one footer (state._parquet_concat)
    decodes nothing: each range's row group is in the file as DuckDB wrote it.
    """
    parts = []
    # Without statistics propagation every column is written nullable: otherwise DuckDB marks
    # a column "required" whenever a range happens to hold no NULL in it, so the parts' schemas
    # would differ (they cannot be joined) and the file's would vary with the data.
    with _settings(conn, disabled_optimizers="statistics_propagation"):
        for i, select in enumerate(selects):
            part = scratch(f".part{i}")
            _copy(conn, select, spec, part)
            # Else DuckDB keeps every block of the store it read, and the export grows with it.
            release_cache(conn, store)
            parts.append(part)
    # The file's schema is the first part's (every part's must be the same to be joined): read
    # from its small footer, not from the file's, which holds every row group's metadata.
    check(parts[0])
    try:
        with temp.open("wb") as out, scratch(".groups").open("w+b") as spill:
            return concat_parquet(parts, out, spill)
    except ParquetConcatError as e:
        raise StateError(
            f"internal error: the export's parts could not be joined ({e}); please report "
            "this; nothing was written"
        ) from e


@contextlib.contextmanager
def _settings(conn: duckdb.DuckDBPyConnection, **values: str) -> Iterator[None]:
    """Set DuckDB settings for a block, then restore them (the connection may be the run's)."""
    saved = {}
    for name, value in values.items():
        row = conn.execute(f"SELECT current_setting({_literal(name)})").fetchone()
        saved[name] = "" if row is None or row[0] is None else str(row[0])
        conn.execute(f"SET {name} = {_literal(value)}")
    try:
        yield
    finally:
        for name, value in saved.items():
            conn.execute(f"SET {name} = {_literal(value)}")


def _jsonl_in_parts(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportFormat,
    selects: Sequence[str],
    temp: Path,
    scratch: _Scratch,
    store: StoreConfig,
) -> int:
    """Write each range as JSON lines and append it to ``temp`` (one part on disk at a time)."""
    rows = 0
    part = scratch(".part")
    with temp.open("wb") as out:
        for select in selects:
            rows += _copy(conn, select, spec, part)
            release_cache(conn, store)  # what the range read: the export stays one range big
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
    return rows


def _fsync(path: Path) -> None:
    # The rename must not reach the disk before the data: else a power cut could leave an
    # empty or short file under the final name.
    with path.open("rb") as f:
        os.fsync(f.fileno())
