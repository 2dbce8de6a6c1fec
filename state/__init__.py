"""The run's DuckDB store: schema, the group-commit writer, the journal of conversations and
requests, seed ingestion and selection, export, statistics and the post-hoc filter pass."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_getattr

if TYPE_CHECKING:
    from state.batcher import LINGER_S, JournalBatcher
    from state.export import FORMATS, ExportReport, export_run, export_with, open_run
    from state.requestlog import CostModel, Guard, RequestLog, Ticket
    from state.schema import SCHEMA_VERSION, STATE_FILE, check_schema, create_schema, open_store
    from state.seeds import MAPPINGS, ColumnMapping, IngestReport, ingest_seeds
    from state.selection import (
        ConversationPlan,
        SelectionReport,
        SelectionSpec,
        plan_conversations,
        select_seeds,
        write_plans,
    )
    from state.setup import SetupReport, plan_run
    from state.stats import RunStats, compute_stats
    from state.store import RunStore
    from state.writer import GroupCommitWriter, Op, WriterStats

# Loaded on first use, not with the package: `import state.requestlog` (the dispatcher's request
# keys) must not import the export's pyarrow and the rest, about 100 MB and a second of CPU.
_HOMES: dict[str, str] = {
    "ColumnMapping": "state.seeds",
    "ConversationPlan": "state.selection",
    "CostModel": "state.requestlog",
    "ExportReport": "state.export",
    "FORMATS": "state.export",
    "GroupCommitWriter": "state.writer",
    "Guard": "state.requestlog",
    "IngestReport": "state.seeds",
    "JournalBatcher": "state.batcher",
    "LINGER_S": "state.batcher",
    "MAPPINGS": "state.seeds",
    "Op": "state.writer",
    "RequestLog": "state.requestlog",
    "RunStats": "state.stats",
    "RunStore": "state.store",
    "SCHEMA_VERSION": "state.schema",
    "STATE_FILE": "state.schema",
    "SelectionReport": "state.selection",
    "SelectionSpec": "state.selection",
    "SetupReport": "state.setup",
    "Ticket": "state.requestlog",
    "WriterStats": "state.writer",
    "check_schema": "state.schema",
    "compute_stats": "state.stats",
    "create_schema": "state.schema",
    "export_run": "state.export",
    "export_with": "state.export",
    "ingest_seeds": "state.seeds",
    "open_run": "state.export",
    "open_store": "state.schema",
    "plan_conversations": "state.selection",
    "plan_run": "state.setup",
    "select_seeds": "state.selection",
    "write_plans": "state.selection",
}


__getattr__ = lazy_getattr("state", _HOMES)


__all__ = [
    "FORMATS",
    "LINGER_S",
    "MAPPINGS",
    "SCHEMA_VERSION",
    "STATE_FILE",
    "ColumnMapping",
    "ConversationPlan",
    "CostModel",
    "ExportReport",
    "GroupCommitWriter",
    "Guard",
    "IngestReport",
    "JournalBatcher",
    "Op",
    "RequestLog",
    "RunStats",
    "RunStore",
    "SelectionReport",
    "SelectionSpec",
    "SetupReport",
    "Ticket",
    "WriterStats",
    "check_schema",
    "compute_stats",
    "create_schema",
    "export_run",
    "export_with",
    "ingest_seeds",
    "open_run",
    "open_store",
    "plan_conversations",
    "plan_run",
    "select_seeds",
    "write_plans",
]
