"""The state store's tables, its schema version, and opening a run's DuckDB file safely.

Raises StateError (engine.errors) for a missing run, a file another process holds, a damaged
file, or a file written with another schema version; an existing file is never modified
before it has passed these checks.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from engine._typed_toml import from_table
from engine.config import StoreConfig
from engine.errors import ConfigError, StateError
from engine.version import __version__ as M2L_VERSION
from state.requestlog import ensure_totals
from state.tempfiles import remove_stale_temp_files

__all__ = [
    "ADDED_COLUMNS",
    "ADDED_TABLES",
    "PRIMARY_KEYS",
    "SCHEMA_VERSION",
    "STATE_FILE",
    "TABLES",
    "TEMP_DIRECTORY",
    "StoreLocked",
    "check_schema",
    "compact",
    "connect_memory",
    "create_schema",
    "damaged",
    "duckdb_settings",
    "has_added_columns",
    "is_damage",
    "memory_cap",
    "open_error",
    "open_existing",
    "open_read_only",
    "open_store",
    "release_cache",
    "spill_directory",
    "stored_store_config",
    "table_for_error",
]

SCHEMA_VERSION = 1

# The state file's name inside a run directory.
STATE_FILE = "state.duckdb"

# Where DuckDB spills inside the run directory unless [store] temp_directory says otherwise.
TEMP_DIRECTORY = "duckdb.tmp"

# No secondary indexes: every lookup the engine makes goes through a primary key (or its
# prefix, conv_id for messages), and DuckDB's ART indexes slow every insert on the hot path.
TABLES: dict[str, str] = {
    "run_meta": """
        CREATE TABLE run_meta(key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)""",
    "seeds": """
        CREATE TABLE seeds(seed_id BIGINT PRIMARY KEY, source_row BIGINT,
            instruction VARCHAR NOT NULL, target VARCHAR, language VARCHAR NOT NULL,
            language_code VARCHAR NOT NULL, task VARCHAR NOT NULL, source VARCHAR,
            instruction_tokens INTEGER)""",
    "conversations": """
        CREATE TABLE conversations(conv_id BIGINT PRIMARY KEY, seed_id BIGINT NOT NULL,
            evol_type VARCHAR NOT NULL, turns_planned SMALLINT NOT NULL,
            followup_types VARCHAR[] NOT NULL, language VARCHAR NOT NULL,
            language_code VARCHAR NOT NULL, task VARCHAR NOT NULL,
            status VARCHAR NOT NULL DEFAULT 'pending', steps_done SMALLINT NOT NULL DEFAULT 0,
            regenerations SMALLINT NOT NULL DEFAULT 0, error VARCHAR, filter_reason VARCHAR,
            created_at TIMESTAMP, finished_at TIMESTAMP, room SMALLINT NOT NULL DEFAULT 0)""",
    "messages": """
        CREATE TABLE messages(conv_id BIGINT NOT NULL, step SMALLINT NOT NULL,
            turn SMALLINT NOT NULL, role VARCHAR NOT NULL, kind VARCHAR NOT NULL,
            content VARCHAR NOT NULL, tokens INTEGER NOT NULL, evol_type VARCHAR,
            prompt VARCHAR, finish_reason VARCHAR, created_at TIMESTAMP,
            gate_check BIGINT, PRIMARY KEY(conv_id, step))""",
    # Every output thrown away: a rejected or truncated try (regeneration = its index among the
    # step's tries), or an accepted user turn dropped with the failed turn it opened.
    "rejections": """
        CREATE TABLE rejections(conv_id BIGINT NOT NULL, step SMALLINT NOT NULL,
            regeneration SMALLINT NOT NULL, kind VARCHAR NOT NULL, reason VARCHAR NOT NULL,
            detail VARCHAR, content VARCHAR NOT NULL, finish_reason VARCHAR,
            prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd DOUBLE,
            created_at TIMESTAMP, PRIMARY KEY(conv_id, step, regeneration))""",
    "requests": """
        CREATE TABLE requests(request_id BIGINT PRIMARY KEY, conv_id BIGINT, step SMALLINT,
            attempt SMALLINT NOT NULL, status VARCHAR NOT NULL, error_class VARCHAR,
            error VARCHAR, prompt_tokens INTEGER NOT NULL, max_tokens INTEGER NOT NULL,
            completion_tokens INTEGER, cached_tokens INTEGER, latency_ms DOUBLE,
            reserved_usd DOUBLE NOT NULL DEFAULT 0, cost_usd DOUBLE, model VARCHAR,
            sent_at TIMESTAMP, finished_at TIMESTAMP, reasoning_tokens INTEGER,
            service_tier VARCHAR, reasoning_usd DOUBLE, cache_saved_usd DOUBLE,
            endpoint VARCHAR)""",
    # `m2l requests`: each input line's result line (line = its index among the input's lines).
    "request_lines": """
        CREATE TABLE request_lines(line BIGINT PRIMARY KEY, ok BOOLEAN NOT NULL,
            output VARCHAR NOT NULL, finished_at TIMESTAMP)""",
    # Running totals of the request log (state/requestlog.py keeps them in the transactions
    # that write the rows): one row per store, so stores' figures add up; money in nano-USD.
    "log_totals": """
        CREATE TABLE log_totals(store VARCHAR PRIMARY KEY, sent BIGINT NOT NULL,
            ok BIGINT NOT NULL, charged_tokens BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL, cost_nano BIGINT NOT NULL,
            reserved_nano BIGINT NOT NULL, unknown_nano BIGINT NOT NULL, unknown BIGINT NOT NULL,
            rate_limited BIGINT NOT NULL, spend_nano BIGINT NOT NULL,
            spend_tokens BIGINT NOT NULL, spend_requests BIGINT NOT NULL,
            first_sent TIMESTAMP, last_finished TIMESTAMP)""",
}

PRIMARY_KEYS: dict[tuple[str, ...], str] = {
    ("key",): "run_meta",
    ("seed_id",): "seeds",
    ("conv_id",): "conversations",
    ("conv_id", "step"): "messages",
    ("conv_id", "step", "regeneration"): "rejections",
    ("request_id",): "requests",
    ("line",): "request_lines",
    ("store",): "log_totals",
}

# DuckDB names the key's columns ("conv_id: 1, step: 2") but not the table; the primary keys
# above are distinct, so the columns identify it.
_DUPLICATE_KEY = re.compile(r'Duplicate key "([^"]*)" violates primary key')
_NOT_NULL = re.compile(r"NOT NULL constraint failed: (\w+)\.")
_LOCK_PID = re.compile(r"\(PID (\d+)\)")


def table_for_error(message: str) -> str | None:
    """Name the m2l table a DuckDB constraint error message is about, or None if it does not say."""
    if match := _NOT_NULL.search(message):
        return match.group(1)
    if match := _DUPLICATE_KEY.search(message):
        columns = tuple(part.split(":", 1)[0].strip() for part in match.group(1).split(","))
        return PRIMARY_KEYS.get(columns)
    return None


def create_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create every table and record the schema version, all in one transaction.

    Raises duckdb.Error if a table already exists (the caller checks the file first).
    """
    # One transaction: a crash mid-way leaves an empty file, never a file with tables but no
    # schema_version that later looks like some other program's database.
    conn.execute("BEGIN TRANSACTION")
    try:
        for ddl in TABLES.values():
            conn.execute(ddl)
        ensure_totals(conn)
        conn.executemany(
            "INSERT INTO run_meta VALUES (?, ?)",
            [
                ["schema_version", str(SCHEMA_VERSION)],
                ["m2l_version", M2L_VERSION],
                ["created_at", datetime.now(UTC).isoformat(timespec="seconds")],
            ],
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def check_schema(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Check that the open file at path is an m2l state file of SCHEMA_VERSION; it only reads.

    Raises StateError when run_meta or its schema_version is missing or is another version.
    """
    has_meta = conn.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'run_meta'"
    ).fetchone()
    rows: dict[str, str] = {}
    if has_meta is not None and has_meta[0]:
        rows = dict(
            conn.execute(
                "SELECT key, value FROM run_meta WHERE key IN ('schema_version', 'm2l_version')"
            ).fetchall()
        )
    found = rows.get("schema_version")
    if found is None:
        raise StateError(
            f"state file {path} has no m2l schema version: it is not an m2l state file. "
            "Use another run name, or move the file away to start afresh"
        )
    if found != str(SCHEMA_VERSION):
        writer = rows.get("m2l_version", "unknown version")
        raise StateError(
            f"state file {path} was written by m2l schema v{found} (m2l {writer}); "
            f"this m2l reads v{SCHEMA_VERSION}: use a matching m2l or a new run name"
        )


def spill_directory(store: StoreConfig, run_dir: Path) -> Path:
    """Where DuckDB spills for the run in ``run_dir``: ``store.temp_directory``, else
    ``duckdb.tmp`` inside the run directory."""
    return store.temp_directory if store.temp_directory is not None else run_dir / TEMP_DIRECTORY


def duckdb_settings(store: StoreConfig, run_dir: Path | None) -> dict[str, Any]:
    """DuckDB's connection settings for ``store``: memory cap, threads, spill directory, and
    how many row-group merges a checkpoint may do.

    The spill directory is ``spill_directory``'s, else (no run: an in-memory database) the
    system's temporary folder.
    """
    temp = Path(tempfile.gettempdir()) if run_dir is None else spill_directory(store, run_dir)
    return {
        "memory_limit": f"{store.memory_limit_mb}MB",
        "threads": store.threads,
        "temp_directory": str(temp),
        "max_vacuum_tasks": store.vacuum_tasks,
    }


def release_cache(conn: duckdb.DuckDBPyConnection, store: StoreConfig) -> None:
    """Make DuckDB drop the table blocks it keeps cached, then give it ``store``'s cap back.

    DuckDB keeps every block it has read or written cached until ``memory_limit`` forces it
    out, so a run's process (and an export's) grows with the store up to that limit. Lowering
    the limit for a moment (``memory_cap``) evicts what is not in use (those blocks are on disk
    already) and returns the memory to the system. Raises duckdb.Error only if the connection
    is closed.
    """
    with memory_cap(conn, store, _RELEASE_MB):
        pass


@contextlib.contextmanager
def memory_cap(conn: duckdb.DuckDBPyConnection, store: StoreConfig, mb: int) -> Iterator[None]:
    """DuckDB's ``memory_limit`` at ``mb`` while the block runs, then ``store``'s again.

    Set on a cursor of its own: DuckDB refuses a limit below what is pinned, and that refusal
    would abort a transaction open on ``conn`` (the writer's); here it only means the block
    runs under a higher limit. So does a spill directory that cannot be made (a read-only run
    directory): blocks of TEMP tables, which have no file of their own, then stay.
    """
    cursor = conn.cursor()
    try:
        with contextlib.suppress(duckdb.OutOfMemoryException, duckdb.IOException):
            cursor.execute(f"SET memory_limit = '{mb}MB'")
        yield
    finally:
        try:
            cursor.execute(f"SET memory_limit = '{store.memory_limit_mb}MB'")
        finally:
            cursor.close()


# What DuckDB may keep while its cache is released: below anything a query holds.
_RELEASE_MB = 8


def compact(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Rewrite ``table`` (a name of TABLES) into as few row groups as its rows need, when it is
    spread over many more; True when it was. Run it in the writer's transaction.

    Checkpoints do not merge row groups (``max_vacuum_tasks`` 0: a merge lifted a run's
    memory by hundreds of MB), so a table that gains a few rows between checkpoints keeps one
    small row group per checkpoint: a 10^5 run's 235 rejected outputs lay in 52, and every
    scan of them read 52 groups' blocks (+15 MB for `m2l stats`, against a 10^4 run's 7).
    """
    row = conn.execute(
        f"SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('{table}')"
    ).fetchone()
    total = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    groups, rows = (int(row[0]) if row else 0), (int(total[0]) if total else 0)
    if groups <= rows // _ROW_GROUP_ROWS + 1 + _SPREAD_SLACK:
        return False
    conn.execute(f"ALTER TABLE {table} RENAME TO {table}_spread")
    conn.execute(TABLES[table])
    # BY NAME: an older store's table may lack columns added since (they read as NULL).
    conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {table}_spread")
    conn.execute(f"DROP TABLE {table}_spread")
    return True


_ROW_GROUP_ROWS = 122_880  # DuckDB's default row group size
_SPREAD_SLACK = 4  # row groups beyond the fewest a table may keep before it is compacted


def connect_memory(store: StoreConfig | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database with ``store``'s caps (default ones when None)."""
    return duckdb.connect(":memory:", config=duckdb_settings(store or StoreConfig(), None))


def open_store(
    path: Path, *, create: bool, store: StoreConfig | None = None
) -> duckdb.DuckDBPyConnection:
    """Open the run's DuckDB file, creating it with the schema when new; call it off the loop.

    ``store`` caps DuckDB's memory and threads (default: ``StoreConfig()``).

    Raises StateError when create is False and there is no file, when another process holds
    the file, when the file is not a DuckDB database or is damaged, or when check_schema fails.
    """
    store = store or StoreConfig()
    exists = path.exists()
    if not exists and not create:
        raise StateError(
            f"there is no run at {path.parent} (no state file {path.name}): check the output "
            "directory and the run name, or start a new run"
        )
    # What a process killed while it spilled left behind (state.tempfiles).
    remove_stale_temp_files(spill_directory(store, path.parent))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A memory cap makes DuckDB spill big ingests and exports to disk (inside the run
        # directory) instead of growing with the seed file or the store: a 1M-row pool stays
        # under ~400 MB (bench/selection_memory.py), a 10^6-conversation export too.
        conn = duckdb.connect(str(path), config=duckdb_settings(store, path.parent))
    except OSError as exc:
        raise StateError(
            f"could not create the run directory {path.parent}: {exc.strerror or exc}; "
            "check the output path and its permissions"
        ) from exc
    except duckdb.Error as exc:
        raise open_error(path, exc) from exc
    try:
        # A file with no tables at all is one whose creation was interrupted before its first
        # commit: nothing was ever stored in it, so finishing the creation loses nothing.
        if exists and not (create and _is_empty(conn)):
            check_schema(conn, path)
            _add_columns(conn)
            ensure_totals(conn)  # one scan, once, for a store made before the totals
        else:
            create_schema(conn)
    except duckdb.Error as exc:
        conn.close()
        raise open_error(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


# Columns added to a table after schema v1 shipped, added in place when an older file is opened
# (nullable, so old rows read as "not recorded"): no schema version bump for an addition.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("requests", "reasoning_tokens", "INTEGER"),
    ("requests", "service_tier", "VARCHAR"),
    ("requests", "reasoning_usd", "DOUBLE"),
    ("requests", "cache_saved_usd", "DOUBLE"),
    ("conversations", "room", "SMALLINT DEFAULT 0"),
    ("requests", "endpoint", "VARCHAR"),  # the endpoint each attempt went to
    ("messages", "gate_check", "BIGINT"),  # the run's gate's stamp (engine.gatecheck)
)
# Added columns no reader's figure needs (m2l filter reads the stamps where it finds them): a
# store without them is not "older" for has_added_columns.
_NOT_FIGURES = frozenset({("messages", "gate_check")})
# Tables added after schema v1 shipped, created in place when an older file is opened.
ADDED_TABLES = ("rejections", "request_lines", "log_totals")


def has_added_columns(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the open store has every ADDED_COLUMNS column a figure reads (an older file
    opened read-only, never resumed by this version, lacks them: readers then count those
    figures as zero)."""
    present = {
        (table, column)
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
        ).fetchall()
    }
    tables = {table for table, _ in present}
    return all(
        (table, column) in present
        for table, column, _ in ADDED_COLUMNS
        if (table, column) not in _NOT_FIGURES
    ) and all(table in tables for table in ADDED_TABLES)


def _add_columns(conn: duckdb.DuckDBPyConnection) -> None:
    for table, column, kind in ADDED_COLUMNS:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
    for table in ADDED_TABLES:
        conn.execute(TABLES[table].replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))


def _is_empty(conn: duckdb.DuckDBPyConnection) -> bool:
    """Tell whether the open database holds no tables and no views."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM duckdb_tables()) + (SELECT count(*) FROM duckdb_views() "
        "WHERE NOT internal)"
    ).fetchone()
    return row is not None and row[0] == 0


class StoreLocked(StateError):
    """Another process holds the store open for writing (DuckDB allows one writer, no readers)."""

    def __init__(self, message: str, *, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def open_read_only(path: Path, *, action: str) -> duckdb.DuckDBPyConnection:
    """Open the run's store at ``path`` with no chance of writing to it; see ``open_existing``.

    Raises StoreLocked while another process writes the store, and StateError when there is
    no store, it is damaged, or it is not an m2l store of this schema version.
    """
    return open_existing(path, action=action, read_only=True)


def open_existing(path: Path, *, action: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the existing store at ``path`` for an offline command, checking its schema.

    Read-write only for a command that changes the store (``m2l filter``). DuckDB's caps are
    the run's own ``[store]`` settings, as stored with its config. ``action``
    ends the message when the store is busy ("export", "filter it", ...). Raises StoreLocked
    while another process writes the store, and StateError when there is no store, it is
    damaged, or it is not an m2l store of this schema version.
    """
    if not path.is_file():
        raise StateError(
            f"there is no run at {path.parent} (no {path.name}): check the run directory, "
            "e.g. runs/<run name>"
        )
    try:
        conn = duckdb.connect(
            str(path), read_only=read_only, config=duckdb_settings(StoreConfig(), path.parent)
        )
    except duckdb.Error as exc:
        raise open_error(path, exc, action=action) from exc
    try:
        check_schema(conn, path)
        stored = stored_store_config(conn, path)
        remove_stale_temp_files(spill_directory(stored, path.parent))  # as open_store does
        if stored != StoreConfig():
            for name, value in duckdb_settings(stored, path.parent).items():
                conn.execute(f"SET {name} = {_setting_literal(value)}")
    except duckdb.Error as exc:
        conn.close()
        raise open_error(path, exc, action=action) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def stored_store_config(conn: duckdb.DuckDBPyConnection, path: Path) -> StoreConfig:
    """The ``[store]`` settings of the config the run at ``path`` was started with.

    A store written before ``[store]`` existed gets the defaults. Raises StateError when the
    stored settings are not valid.
    """
    row = conn.execute("SELECT value FROM run_meta WHERE key = 'config_json'").fetchone()
    section = orjson.loads(row[0]).get("store") if row else None
    if not isinstance(section, dict):
        return StoreConfig()
    # A snapshot writes an unset optional as null, which TOML (and so from_table) has no
    # word for: leaving the key out means the same.
    section = {key: value for key, value in section.items() if value is not None}
    try:
        return from_table(StoreConfig, section, source=f"{path} (stored config)", base_dir=None)
    except ConfigError as exc:
        raise StateError(f"{exc}; the run's stored [store] settings cannot be used") from exc


def _setting_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def open_error(path: Path, exc: duckdb.Error, *, action: str = "try again") -> StateError:
    """Translate DuckDB's refusal to open path into a StateError that says what to do (a
    StoreLocked when another process holds the file; ``action`` ends that message)."""
    reason = str(exc)
    # The one place a lock is recognised: DuckDB says "Could not set lock on file ...:
    # Conflicting lock is held in <program> (PID n)", for a reader as for a writer.
    if "Could not set lock" in reason or "Conflicting lock" in reason:
        found = _LOCK_PID.search(reason)
        pid = int(found.group(1)) if found else None
        holder = f"pid {pid}" if pid else "pid unknown"
        return StoreLocked(
            f"run directory {path.parent} is in use by a running m2l process ({holder}); "
            f"wait for it to finish or stop it (Ctrl-C), then {action}; `m2l status "
            f"{path.parent}` shows how it is doing",
            pid=pid,
        )
    if "different configuration" in reason:
        return StateError(
            f"run directory {path.parent} is already open in this m2l process; {action} "
            "through that connection instead"
        )
    if is_damage(exc):
        return damaged(path, exc)
    return StateError(
        f"could not open the state file {path}: {_short(reason, path)}; check the path and "
        "its permissions"
    )


# What DuckDB says when a file's bytes are not what it wrote: cut short, overwritten, or never
# a DuckDB file. Its checksums catch overwritten blocks; short reads catch truncation.
_DAMAGE_SIGNS = (
    "not a valid DuckDB database",
    "Corrupt database",
    "Could not read enough bytes",
    "checksum",
    "Failed to read database header",
    "Serialization Error",
    "INTERNAL Error",
)


def is_damage(exc: BaseException) -> bool:
    """Whether a DuckDB error says the state file itself is damaged (not busy, not forbidden)."""
    if isinstance(exc, duckdb.SerializationException | duckdb.InternalException):
        return True
    text = str(exc)
    return isinstance(exc, duckdb.Error) and any(sign in text for sign in _DAMAGE_SIGNS)


def damaged(path: Path, exc: BaseException) -> StateError:
    """The one-line StateError for a damaged state file: which file, why, and the way out."""
    return StateError(
        f"state file {path} is damaged (truncated, overwritten or not a DuckDB file: "
        f"{_short(str(exc), path)}); m2l cannot read it. Restore it from a backup, or move it "
        "away and run the config again to start the run afresh"
    )


def _short(reason: str, path: Path) -> str:
    """DuckDB's message on one line, without the path (the message names it already)."""
    text = " ".join(reason.split())
    text = text.replace(f'file "{path}"', "file").replace(f'"{path}"', "it")
    return text if len(text) <= 160 else text[:159] + "…"
