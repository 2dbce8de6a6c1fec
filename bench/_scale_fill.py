"""Fill a store of N conversations through the real writer by copying a finished run's rows.

Used by ``bench/scale.py --fill``: each copy of the source's conversations (with their
messages and requests) gets new ids, one transaction per copy through ``GroupCommitWriter``,
so the store is laid out as a run writes it, with realistic text and costs.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from state.requestlog import rebuild_totals
from state.schema import STATE_FILE
from state.writer import GroupCommitWriter

__all__ = ["fill_store"]


async def fill_store(source_dir: str, target_dir: str, n: int) -> None:
    """Copy the finished conversations of ``source_dir`` into a new store until it holds n."""
    source = str(Path(source_dir) / STATE_FILE)
    async with GroupCommitWriter(Path(target_dir) / STATE_FILE, create=True) as writer:

        def prepare(conn: duckdb.DuckDBPyConnection) -> tuple[int, int, int]:
            conn.execute(f"ATTACH '{source}' AS src (READ_ONLY)")
            conn.execute("DELETE FROM run_meta")
            conn.execute("INSERT INTO run_meta BY NAME SELECT * FROM src.run_meta")
            conn.execute("INSERT INTO seeds BY NAME SELECT * FROM src.seeds")
            row = conn.execute(
                "SELECT count(*), max(conv_id) + 1, (SELECT max(request_id) + 1 FROM "
                "src.requests) FROM src.conversations WHERE status IN ('done', 'filtered')"
            ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1]), int(row[2])

        per_copy, conv_span, request_span = await writer.run(prepare)
        copies = -(-n // per_copy)
        for k in range(copies):
            limit = min(per_copy, n - k * per_copy)

            def copy(conn: duckdb.DuckDBPyConnection, k: int = k, limit: int = limit) -> None:
                conv_offset, request_offset = k * conv_span, k * request_span
                conn.execute(
                    f"""CREATE OR REPLACE TEMP TABLE picked AS
                    SELECT conv_id FROM src.conversations
                    WHERE status IN ('done', 'filtered') ORDER BY conv_id LIMIT {limit}"""
                )
                conn.execute(
                    f"""INSERT INTO conversations BY NAME SELECT * REPLACE (conv_id + {conv_offset}
                    AS conv_id) FROM src.conversations WHERE conv_id IN (SELECT * FROM picked)"""
                )
                conn.execute(
                    f"""INSERT INTO messages BY NAME SELECT * REPLACE (conv_id + {conv_offset}
                    AS conv_id) FROM src.messages WHERE conv_id IN (SELECT * FROM picked)
                    ORDER BY conv_id, step"""
                )
                conn.execute(
                    f"""INSERT INTO requests BY NAME SELECT * REPLACE (request_id + {request_offset}
                    AS request_id, conv_id + {conv_offset} AS conv_id) FROM src.requests
                    WHERE conv_id IN (SELECT * FROM picked) ORDER BY request_id"""
                )

            await writer.run(copy)
            if k % 20 == 0:
                print(f"copied {min(n, (k + 1) * per_copy):,} of {n:,}", flush=True)
        # The requests were copied past the request log: count its running totals afresh.
        await writer.run(rebuild_totals)
