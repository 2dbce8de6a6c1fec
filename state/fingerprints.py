"""The duplicate fingerprints of one `m2l filter` pass, kept in DuckDB instead of in memory.

A pass judges a run's conversations a batch at a time; each clean conversation's fingerprint
(engine.quality.dedup.Fingerprint: its exact key, its LSH band keys, its b-bit signature) is
appended here with one statement per batch. When every batch is judged, SQL finds the
conversations that share their exact key or a band key with another one (GROUP BY ... HAVING
count(*) > 1): only those can be, or lead to, a duplicate, and only they are handed back, in
conv_id order and a chunk at a time, for the caller's sequential index to settle. What the
pass holds in memory is then the run's duplicated texts, not its size.

The rows live in TEMP tables of the pass's own connection rather than in a scratch database
file: they work on a store opened read-only (a dry run), DuckDB spills their blocks to the
store's spill directory when its cache is released (state.schema.release_cache, which the pass
calls every few batches), and they and their spilled blocks go when the tables are dropped or
the connection closes, also after an error or Ctrl-C (only a SIGKILL leaves DuckDB's spill
files, as it does for any query killed while spilling); the store's own tables are never
touched. (A scratch file with its own 64 MB cap peaked at 160 MB for 10^6 fingerprints and took
50% more CPU, against 99 MB for these tables.) The collision queries run under a small memory
cap, a slice of the key space at a time, so DuckDB spills their hash tables instead of growing
with the run. Raises duckdb.Error if the connection fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import duckdb

from engine.config import StoreConfig
from state._bulk import columns, unnest
from state.schema import memory_cap, release_cache

__all__ = ["FingerprintRow", "RunFingerprints"]

# (conv_id, exact key, band keys, b-bit signature bytes); every key a signed 64-bit integer.
FingerprintRow = tuple[int, int, Sequence[int], bytes]

_ROWS = "m2l_filter_fingerprints"
_FOUND = "m2l_filter_colliding_found"
_COLLIDING = "m2l_filter_colliding"

# DuckDB's memory cap while the collisions are found: its hash tables spill past it. Measured
# on 10^6 random fingerprints: a 64 MB cap and slices of 50,000 conversations kept the process
# within ~70 MB of where it was; the store's own 512 MB let it grow by 500 MB.
_COLLIDE_MEMORY_MB = 64
# Fingerprints per slice of the key space: each slice's GROUP BY holds about 12 band keys of
# this many conversations.
_SLICE_ROWS = 50_000
# Chunks handed back between two releases of DuckDB's cache while they are read.
_RELEASE_EVERY = 8


class RunFingerprints:
    """A pass's fingerprints on ``conn`` (TEMP tables), found colliding at the end; use it as
    a context manager (or call ``close``) so the tables go with the pass."""

    __slots__ = ("_conn", "_made", "_slice_rows", "_store")

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        store: StoreConfig,
        *,
        slice_rows: int = _SLICE_ROWS,
    ) -> None:
        """``store``: the run's DuckDB caps, given back after the collision queries;
        ``slice_rows``: fingerprints per slice of the key space the collisions are found in."""
        self._conn = conn
        self._store = store
        self._slice_rows = slice_rows
        self._made = False

    def __enter__(self) -> RunFingerprints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, rows: Sequence[FingerprintRow]) -> None:
        """Append one batch's fingerprints, in one statement (conv_ids ascending across calls)."""
        if not rows:
            return
        if not self._made:
            self._conn.execute(
                f"CREATE OR REPLACE TEMP TABLE {_ROWS}"
                "(conv_id BIGINT, exact BIGINT, bands BIGINT[], sig BLOB)"
            )
            self._made = True
        self._conn.execute(
            f"INSERT INTO {_ROWS} SELECT {unnest(('BIGINT', 'BIGINT', 'BIGINT[]', 'BLOB'))}",
            columns([(cid, exact, list(bands), sig) for cid, exact, bands, sig in rows]),
        )

    def colliding(self, chunk: int = 2000) -> Iterator[list[FingerprintRow]]:
        """The fingerprints sharing their exact key or a band key with another one, in
        conv_id order, ``chunk`` at a time; call it once, after the last ``add``.

        A fingerprint left out shares no key with any other: an index fed every fingerprint
        in order would have looked its keys up for nobody and found nobody for it.
        """
        if not self._made:
            return
        self._find_colliding()
        conn = self._conn
        after: int | None = None
        read = 0
        while True:
            ids = conn.execute(
                f"""SELECT conv_id FROM {_COLLIDING} WHERE $after IS NULL OR conv_id > $after
                    ORDER BY conv_id LIMIT $n""",
                {"after": after, "n": chunk},
            ).fetchall()
            if not ids:
                return
            lo, hi = int(ids[0][0]), int(ids[-1][0])
            # Both tables are in conv_id order: the range reads a row group or two of each.
            rows = conn.execute(
                f"""SELECT conv_id, exact, bands, sig FROM {_ROWS}
                    WHERE conv_id BETWEEN $lo AND $hi AND conv_id IN
                        (SELECT conv_id FROM {_COLLIDING} WHERE conv_id BETWEEN $lo AND $hi)
                    ORDER BY conv_id""",
                {"lo": lo, "hi": hi},
            ).fetchall()
            read += 1
            if read % _RELEASE_EVERY == 0:
                release_cache(conn, self._store)
            yield [(int(c), int(e), b, bytes(s)) for c, e, b, s in rows]
            after = hi

    def close(self) -> None:
        """Drop the tables (a closed connection has dropped them already)."""
        if not self._made:
            return
        self._made = False
        with contextlib.suppress(duckdb.ConnectionException):
            for table in (_COLLIDING, _FOUND, _ROWS):
                self._conn.execute(f"DROP TABLE IF EXISTS temp.{table}")

    def _find_colliding(self) -> None:
        conn = self._conn
        row = conn.execute(f"SELECT count(*) FROM {_ROWS}").fetchone()
        slices = max(1, -(-(int(row[0]) if row else 0) // self._slice_rows))
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {_FOUND}(conv_id BIGINT)")
        release_cache(conn, self._store)  # what the batches left cached, before the cap
        # Refused when more is pinned than the cap, or when what must go cannot be spilled (no
        # spill directory can be made): the queries then run under the store's cap.
        with memory_cap(conn, self._store, _COLLIDE_MEMORY_MB):
            # Exact keys and band keys are looked up in separate maps by the index, so each
            # is grouped on its own; the band index is mixed into every band key already.
            for part in range(slices):
                mine = "hash(key) % $slices = $part"
                conn.execute(
                    f"""INSERT INTO {_FOUND}
                        SELECT conv_id FROM (SELECT conv_id, unnest(bands) AS key FROM {_ROWS})
                        WHERE {mine} AND key IN (
                            SELECT key FROM (SELECT unnest(bands) AS key FROM {_ROWS})
                            WHERE {mine} GROUP BY key HAVING count(*) > 1)
                        UNION ALL
                        SELECT conv_id FROM {_ROWS}
                        WHERE hash(exact) % $slices = $part AND exact IN (
                            SELECT exact FROM {_ROWS} WHERE hash(exact) % $slices = $part
                            GROUP BY exact HAVING count(*) > 1)""",
                    {"slices": slices, "part": part},
                )
            conn.execute(
                f"""CREATE OR REPLACE TEMP TABLE {_COLLIDING} AS
                    SELECT DISTINCT conv_id FROM {_FOUND} ORDER BY conv_id"""
            )
            conn.execute(f"DROP TABLE {_FOUND}")
