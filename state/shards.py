"""A sharded run's stores: the run's planned store split into one store per shard, and the
shards' work merged back into it, so every command reads a sharded run as one run.

Layout: ``<run_dir>/state.duckdb`` is the run's store as a single-process run has it (the plan,
and after each merge every row the shards wrote); ``<run_dir>/shards/NN/state.duckdb`` is shard
NN's own store: the run's meta and seeds, the conversations whose ``conv_id % shards == NN``
with their rows, and request ids from ``NN * REQUEST_ID_SPAN + 1`` on, so that ids stay unique
when merged. A conversation's rows live in one shard, so merging replaces them whole.

Functions take an open DuckDB connection to the run's store; they raise duckdb.Error when a
shard's file cannot be read (busy, damaged), and StateError for a shard count that does not
match the run's.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from engine.errors import StateError
from state.requestlog import rebuild_totals
from state.schema import STATE_FILE, create_schema, open_existing

__all__ = [
    "REQUEST_ID_SPAN",
    "SHARDS_DIR",
    "ensure_merged",
    "merge_shards",
    "shard_count",
    "shard_dirs",
    "shard_progress",
    "split_run",
]

SHARDS_DIR = "shards"
# Request ids of shard NN start above NN * this: a shard would need 10^12 attempts to overlap.
REQUEST_ID_SPAN = 10**12
# The tables that hold a conversation's rows (by conv_id), besides the conversation itself.
_CONV_TABLES = ("conversations", "messages", "rejections")
_META_KEY = "shards"
_MERGED_KEY = "shards_merged"  # "false" from a split until the next merge


def shard_dirs(run_dir: Path, shards: int) -> list[Path]:
    """The folders of a run's shards, ``<run_dir>/shards/00`` ..."""
    return [run_dir / SHARDS_DIR / f"{k:02d}" for k in range(shards)]


def shard_count(conn: duckdb.DuckDBPyConnection) -> int | None:
    """How many shards the run's store was split into, None for a run never sharded."""
    row = conn.execute("SELECT value FROM run_meta WHERE key = ?", [_META_KEY]).fetchone()
    return int(row[0]) if row is not None else None


def shard_progress(conn: duckdb.DuckDBPyConnection, shards: int) -> list[tuple[int, int]]:
    """Each shard's conversations as the run's store has them: (finished, planned)."""
    rows = conn.execute(
        "SELECT conv_id % ?, count(*) FILTER (WHERE status IN ('done', 'failed', 'filtered')), "
        "count(*) FROM conversations GROUP BY 1",
        [shards],
    ).fetchall()
    found = {int(k): (int(finished), int(total)) for k, finished, total in rows}
    return [found.get(k, (0, 0)) for k in range(shards)]


def split_run(conn: duckdb.DuckDBPyConnection, run_dir: Path, shards: int) -> list[Path]:
    """Give each shard its store (made only where none exists yet); return the shard folders.

    Raises StateError when the run was split into another number of shards before.
    """
    stored = shard_count(conn)
    if stored is not None and stored != shards:
        raise StateError(
            f"the run at {run_dir} was started with {stored} shards, not {shards}: resume it "
            f"with --shards {stored} (each shard resumes from its own store)"
        )
    dirs = shard_dirs(run_dir, shards)
    for k, folder in enumerate(dirs):
        path = folder / STATE_FILE
        if path.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name and renamed: a kill mid-split leaves no half store.
        partial = folder / (STATE_FILE + ".split")
        partial.unlink(missing_ok=True)
        shard_conn = duckdb.connect(str(partial))
        try:
            create_schema(shard_conn)
        finally:
            shard_conn.close()
        conn.execute(f"ATTACH '{_quoted(partial)}' AS shard")
        try:
            _copy_into_shard(conn, k, shards)
        finally:
            conn.execute("DETACH shard")
        # Its attempts were copied past the request log: count its running totals again (the
        # shard's ledger and status read them).
        shard_conn = duckdb.connect(str(partial))
        try:
            rebuild_totals(shard_conn)
        finally:
            shard_conn.close()
        partial.rename(path)
    # The shards are about to work: until the next merge the run's store is behind them.
    _set_meta(conn, {_META_KEY: str(shards), _MERGED_KEY: "false"})
    return dirs


def _set_meta(conn: duckdb.DuckDBPyConnection, items: dict[str, str]) -> None:
    conn.executemany(
        "INSERT INTO run_meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        list(items.items()),
    )


def ensure_merged(run_dir: Path) -> bool:
    """Merge a sharded run's stores into the run's store if its last session ended before it
    could (its driver was killed); whether a merge was done. Every command that reads a run
    calls this first, so it reads what the shards wrote.

    Raises StateError (StoreLocked) while a running m2l holds the run's store, and duckdb.Error
    when a shard's store is held by a shard still running or is damaged.
    """
    path = run_dir / STATE_FILE
    if not (run_dir / SHARDS_DIR).is_dir() or not path.is_file():
        return False
    conn = open_existing(path, action="read it", read_only=True)
    try:
        row = conn.execute("SELECT value FROM run_meta WHERE key = ?", [_MERGED_KEY]).fetchone()
    finally:
        conn.close()
    if row is None or row[0] != "false":
        return False
    conn = open_existing(path, action="merge its shards", read_only=False)
    try:
        merge_shards(conn, run_dir)
    finally:
        conn.close()
    return True


def _copy_into_shard(conn: duckdb.DuckDBPyConnection, k: int, shards: int) -> None:
    conn.execute("BEGIN")
    try:
        # The schema's own rows (its version) are already there; the run's meta joins them.
        conn.execute(
            "INSERT INTO shard.run_meta SELECT * FROM run_meta "
            "WHERE key NOT IN (SELECT key FROM shard.run_meta)"
        )
        conn.execute("INSERT INTO shard.seeds BY NAME SELECT * FROM seeds")
        for table in _CONV_TABLES:
            conn.execute(
                f"INSERT INTO shard.{table} BY NAME SELECT * FROM {table} WHERE conv_id % ? = ?",
                [shards, k],
            )
        # A run resumed with --ray after a single-process session: its attempts go with their
        # conversations (attempts of no conversation to shard 0).
        conn.execute(
            "INSERT INTO shard.requests BY NAME SELECT * FROM requests "
            "WHERE coalesce(conv_id, 0) % ? = ?",
            [shards, k],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def merge_shards(conn: duckdb.DuckDBPyConnection, run_dir: Path) -> int:
    """Bring the run's store up to date with every shard's store, in one transaction; return
    the number of shards merged (0 for a run never sharded).

    Raises duckdb.Error when a shard's store is held by a running shard or is damaged.
    """
    shards = shard_count(conn)
    if shards is None:
        return 0
    paths = [f / STATE_FILE for f in shard_dirs(run_dir, shards) if (f / STATE_FILE).exists()]
    # DuckDB attaches outside a transaction; the merge itself is one, writing only the run's
    # store, so a kill mid-merge leaves the last merge as it was.
    names = []
    try:
        for k, path in enumerate(paths):
            conn.execute(f"ATTACH '{_quoted(path)}' AS shard{k} (READ_ONLY)")
            names.append(f"shard{k}")
        conn.execute("BEGIN")
        try:
            for name in names:
                _merge_one(conn, name)
            rebuild_totals(conn)  # the shards' attempts came in past the request log
            _set_meta(conn, {_MERGED_KEY: "true"})
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        for name in names:
            conn.execute(f"DETACH {name}")
    return len(paths)


def _merge_one(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    for table in _CONV_TABLES:
        conn.execute(
            f"DELETE FROM {table} WHERE conv_id IN (SELECT conv_id FROM {name}.conversations)"
        )
        conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {name}.{table}")
    conn.execute(
        f"DELETE FROM requests WHERE request_id IN (SELECT request_id FROM {name}.requests)"
    )
    conn.execute(f"INSERT INTO requests BY NAME SELECT * FROM {name}.requests")


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")
