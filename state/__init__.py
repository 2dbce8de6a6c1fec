"""The run's DuckDB store: schema, the group-commit writer, the journal of conversations and
requests, seed ingestion and selection, export, statistics and the post-hoc filter pass."""

from __future__ import annotations

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
