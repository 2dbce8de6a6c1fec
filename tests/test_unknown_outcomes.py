"""Attempts a kill left reserved are settled on the next start as unknown, at their worst case,
and shown apart as money held for unknown outcomes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb

from budgets.ledger import spend_from_log
from engine.app.run import execute_run
from engine.config import load_config
from engine.progress.store import store_snapshot
from engine.progress.summary import summary_text
from state.requestlog import RequestRow, write_reserved
from tests.runfixtures import write_config


def test_reserved_rows_left_by_a_kill_become_unknown_at_worst_case(tmp_path: Path) -> None:
    """Three attempts logged and never finished: unknown after the next start, held apart."""
    config = load_config(write_config(tmp_path))
    asyncio.run(execute_run(config, env={}))
    state = config.run_dir / "state.duckdb"
    with duckdb.connect(str(state)) as conn:
        before = spend_from_log(conn)
        last = conn.execute("SELECT max(request_id) FROM requests").fetchone()
        assert last is not None
        rows = [
            RequestRow(int(last[0]) + i, 1, 1, 9, 100, 128, 0.0005, "gpt-4o-mini")
            for i in range(1, 4)
        ]
        write_reserved(conn, rows)  # what a SIGKILL between reserve and settle leaves
    asyncio.run(execute_run(config, env={}))  # the next start (nothing left to generate)
    with duckdb.connect(str(state), read_only=True) as conn:
        statuses = conn.execute(
            "SELECT status, count(*) FROM requests WHERE attempt = 9 GROUP BY 1"
        ).fetchall()
        after = spend_from_log(conn)
        snapshot = store_snapshot(conn)
    assert statuses == [("unknown", 3)]
    assert after.nano - before.nano == 1_500_000  # at their worst case, once each
    assert round(snapshot.unknown_usd, 9) == 0.0015 and snapshot.reserved_usd == 0.0
    text = summary_text(snapshot, run_dir=config.run_dir)
    assert "$0.0015 of it held for unknown outcomes" in text
