"""Setting up a new run: ingest the seed file, select seeds, plan conversations, record the
config — in one op, so one transaction: a run killed during set-up has committed nothing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import duckdb

from engine.config import Config
from engine.errors import ConfigError
from prompts.languages import LanguageTable
from prompts.sources import load_source_tasks
from prompts.taxonomy import Taxonomy
from state import journal
from state.seeds import IngestReport, column_mapping, ingest_seeds
from state.selection import (
    SelectionReport,
    SelectionSpec,
    plan_conversations,
    select_seeds,
    write_plans,
)

__all__ = ["SetupReport", "plan_run", "selection_spec"]


@dataclass(frozen=True, slots=True)
class SetupReport:
    """What set-up found and made."""

    ingest: IngestReport
    selection: SelectionReport
    conversations: int


def selection_spec(config: Config) -> SelectionSpec:
    """The selection settings of a config, as seed selection takes them."""
    seeds = config.seeds
    return SelectionSpec(
        total=seeds.total,
        per_language=seeds.per_language,
        language_weights=seeds.language_weights,
        tier_weights=seeds.tier_weights,
        task_weights=seeds.task_weights,
        evols_per_seed=seeds.evols_per_seed,
        turn_weights=seeds.turn_weights,
        max_turns=config.generation.max_turns,
        multiturn=seeds.multiturn,
        seed=config.run.seed,
        shortfall=seeds.shortfall,
        evol_mix=seeds.evol_mix,
    )


def plan_run(
    config: Config, taxonomy: Taxonomy, languages: LanguageTable, meta: Mapping[str, str]
) -> Callable[[duckdb.DuckDBPyConnection], SetupReport]:
    """An op that sets up a new run; raises ConfigError when the seed file yields nothing."""
    spec = selection_spec(config)
    sources = load_source_tasks(taxonomy, config.seeds.source_tasks)

    def op(conn: duckdb.DuckDBPyConnection) -> SetupReport:
        ingest = ingest_seeds(
            conn,
            config.seeds.file,
            mapping=column_mapping(config.seeds.mapping),
            languages=languages,
            taxonomy=taxonomy,
            keep_text=False,  # keys only: the chosen seeds' text is read back from the file
            source_tasks=sources,
            default_task=config.seeds.default_task,
        )
        selection = select_seeds(conn, spec)
        planned = sum(
            write_plans(conn, batch) for batch in plan_conversations(conn, spec, taxonomy)
        )
        if planned == 0:
            raise ConfigError(
                f"{config.seeds.file}: no conversations could be planned from it "
                f"({ingest.ingested} usable seeds of {ingest.rows_read} rows); check the seed "
                "file and the [seeds] quotas"
            )
        journal.write_meta(meta)(conn)
        return SetupReport(ingest, selection, planned)

    return op
