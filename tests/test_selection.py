"""Seed selection by quotas and conversation plans: exact quotas, shortfalls, determinism."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pytest

from engine.errors import ConfigError, StateError
from prompts.languages import LanguageTable, load_languages
from prompts.taxonomy import Taxonomy, load_taxonomy
from state.seeds import ingest_seeds
from state.selection import (
    ConversationPlan,
    SelectionSpec,
    Shortfall,
    apportion,
    compute_quotas,
    plan_conversations,
    select_seeds,
    write_plans,
)

# The run store's tables as state/schema.py defines them (that module owns the DDL).
SEEDS_DDL = """
    CREATE TABLE seeds(seed_id BIGINT PRIMARY KEY, source_row BIGINT,
        instruction VARCHAR NOT NULL, target VARCHAR, language VARCHAR NOT NULL,
        language_code VARCHAR NOT NULL, task VARCHAR NOT NULL, source VARCHAR,
        instruction_tokens INTEGER)"""
CONVERSATIONS_DDL = """
    CREATE TABLE conversations(conv_id BIGINT PRIMARY KEY, seed_id BIGINT NOT NULL,
        evol_type VARCHAR NOT NULL, turns_planned SMALLINT NOT NULL,
        followup_types VARCHAR[] NOT NULL, language VARCHAR NOT NULL,
        language_code VARCHAR NOT NULL, task VARCHAR NOT NULL,
        status VARCHAR NOT NULL DEFAULT 'pending', steps_done SMALLINT NOT NULL DEFAULT 0,
        regenerations SMALLINT NOT NULL DEFAULT 0, error VARCHAR, filter_reason VARCHAR,
        created_at TIMESTAMP, finished_at TIMESTAMP)"""

# (language code, task_type as the file spells it) -> rows in the seed file.
SUPPLY = {
    ("fra", "qa"): 50,
    ("fra", "summarization"): 50,
    ("swh", "qa"): 30,
    ("swh", "summarization"): 4,
    ("wol", "qa"): 12,
    ("eng", None): 200,
}


@pytest.fixture(scope="module")
def languages() -> LanguageTable:
    return load_languages()


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    lines = []
    for (code, task), n in SUPPLY.items():
        for i in range(n):
            row = {"inputs": f"{code} {task} instruction {i}", "targets": f"t{i}",
                   "language": None, "language_code": code, "task_type": task}  # fmt: skip
            lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def make_store(seed_file: Path, languages: LanguageTable, taxonomy: Taxonomy) -> Any:
    conn = duckdb.connect(":memory:")
    conn.execute(SEEDS_DDL)
    conn.execute(CONVERSATIONS_DDL)
    ingest_seeds(conn, seed_file, languages=languages, taxonomy=taxonomy)
    return conn


@pytest.fixture
def store(
    seed_file: Path, languages: LanguageTable, taxonomy: Taxonomy
) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = make_store(seed_file, languages, taxonomy)
    yield conn
    conn.close()


def selected(conn: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], int]:
    rows = conn.execute("SELECT language, task, count(*) FROM seeds GROUP BY ALL").fetchall()
    return {(lang, task): n for lang, task, n in rows}


# --- quotas (pure) ----------------------------------------------------------------------------


def test_apportion_is_exact_proportional_and_deterministic() -> None:
    """Shares sum to the total, follow the weights, and ties go to the first key."""
    assert apportion(10, {"b": 1.0, "a": 1.0, "c": 1.0}) == {"a": 4, "b": 3, "c": 3}
    assert apportion(7, {"x": 3.0, "y": 1.0, "z": 0.0}) == {"x": 5, "y": 2, "z": 0}
    assert apportion(0, {"x": 1.0}) == {"x": 0}
    shares = apportion(1000, {str(i): float(i + 1) for i in range(13)})
    assert sum(shares.values()) == 1000


def test_compute_quotas_fills_tasks_within_a_language_and_reports_shortfalls() -> None:
    """A task short of seeds gives its rest to the language's other tasks; a short language
    is reported with what it has."""
    supply = {("Swahili", "open_qa"): 30, ("Swahili", "summarization"): 4, ("Wolof", "open_qa"): 12}
    langs = [("Swahili", "swh", "low"), ("Wolof", "wol", "low")]
    quotas, requested, shortfalls = compute_quotas(supply, langs, SelectionSpec(per_language=20))
    assert quotas == {
        ("Swahili", "open_qa"): 16,
        ("Swahili", "summarization"): 4,
        ("Wolof", "open_qa"): 12,
    }
    assert requested == 40
    assert [str(s) for s in shortfalls] == [
        "Swahili / summarization: 4 seeds for a quota of 10",
        "Wolof: 12 seeds for a quota of 20",
    ]


def test_compute_quotas_total_tier_and_explicit_weights() -> None:
    """total splits by weight; tier weights apply per tier; named languages absent are short."""
    supply = {("English", "general"): 500, ("Wolof", "general"): 500, ("French", "general"): 500}
    langs = [("English", "eng", "high"), ("French", "fra", "high"), ("Wolof", "wol", "low")]
    by_tier = SelectionSpec(total=100, language_weights="tier", tier_weights={"high": 2, "low": 1})
    quotas, requested, short = compute_quotas(supply, langs, by_tier)
    assert quotas == {
        ("English", "general"): 40,
        ("French", "general"): 40,
        ("Wolof", "general"): 20,
    }
    assert (requested, short) == (100, ())
    named = SelectionSpec(per_language=10, language_weights={"fra": 3, "English": 1, "Zulu": 1})
    quotas, requested, short = compute_quotas(supply, langs, named)
    assert quotas == {("French", "general"): 30, ("English", "general"): 10}
    assert requested == 50
    assert short == (Shortfall("Zulu", None, 0, 10),)


def test_compute_quotas_without_total_or_per_language_takes_everything() -> None:
    """With no quota at all every seed is taken; with both, total caps the per-language sum."""
    supply = {("English", "general"): 7, ("Wolof", "open_qa"): 3}
    langs = [("English", "eng", "high"), ("Wolof", "wol", "low")]
    quotas, requested, short = compute_quotas(supply, langs, SelectionSpec())
    assert quotas == supply and requested == 10 and short == ()
    capped = SelectionSpec(per_language=5, total=6)
    quotas, requested, _ = compute_quotas(supply, langs, capped)
    assert requested == 6 and quotas == {("English", "general"): 3, ("Wolof", "open_qa"): 3}


def test_selection_spec_rejects_bad_values() -> None:
    """Out-of-range numbers, weights and names are ConfigErrors naming the setting."""
    with pytest.raises(ConfigError, match="per_language = 0"):
        SelectionSpec(per_language=0)
    with pytest.raises(ConfigError, match=r"language_weights\['fra'\] = -1"):
        SelectionSpec(total=5, language_weights={"fra": -1})
    with pytest.raises(ConfigError, match="unknown tier 'top'"):
        SelectionSpec(total=5, tier_weights={"top": 1})
    with pytest.raises(ConfigError, match="no weight > 0 for 1 to max_turns=2"):
        SelectionSpec(total=5, turn_weights=(0, 0, 1), max_turns=2)
    with pytest.raises(ConfigError, match="multiturn = 'random'"):
        SelectionSpec(total=5, multiturn="random")  # type: ignore[arg-type]


# --- selection (SQL) --------------------------------------------------------------------------


def test_select_meets_quotas_exactly_where_supply_allows(store: duckdb.DuckDBPyConnection) -> None:
    """Each language gets its quota, split over its tasks; short languages give all they have."""
    report = select_seeds(store, SelectionSpec(per_language=50, evols_per_seed=3))
    assert selected(store) == {
        ("French", "open_qa"): 25,
        ("French", "summarization"): 25,
        ("English", "general"): 50,
        ("Swahili", "open_qa"): 30,
        ("Swahili", "summarization"): 4,
        ("Wolof", "open_qa"): 12,
    }
    assert (report.requested, report.selected_seeds, report.conversations) == (200, 146, 438)
    assert [str(s) for s in report.shortfalls] == [
        "Swahili / summarization: 4 seeds for a quota of 25",
        "Swahili: 34 seeds for a quota of 50",
        "Wolof: 12 seeds for a quota of 50",
    ]
    assert "selected 146 of 200 requested seeds" in str(report)


def test_explicit_task_weights_move_quota_to_tasks_that_exist(
    store: duckdb.DuckDBPyConnection,
) -> None:
    """A weighted task no seed has is reported once; its share goes to the language's others."""
    spec = SelectionSpec(
        per_language=40,
        language_weights={"French": 1, "English": 1},
        task_weights={"open_qa": 3, "summarization": 1, "nli": 1},
    )
    report = select_seeds(store, spec)
    assert selected(store) == {("French", "open_qa"): 30, ("French", "summarization"): 10}
    assert [str(s) for s in report.shortfalls] == [
        "English / open_qa: 0 seeds for a quota of 24",
        "English / summarization: 0 seeds for a quota of 8",
        "English: 0 seeds for a quota of 40",
        "task nli: 0 seeds for a quota of 16",
    ]


def _seeds_table(conn: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM seeds ORDER BY seed_id").fetchall()


def test_selection_is_deterministic_for_a_seed(
    seed_file: Path, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """The same spec over the same data selects the same seeds with the same ids; another
    seed value picks differently."""
    runs = []
    for seed in (11, 11, 12):
        conn = make_store(seed_file, languages, taxonomy)
        select_seeds(conn, SelectionSpec(per_language=20, seed=seed))
        runs.append(_seeds_table(conn))
        conn.close()
    assert runs[0] == runs[1]
    assert [r[1] for r in runs[0]] != [r[1] for r in runs[2]]


def test_seed_ids_are_dense_and_interleave_languages(store: duckdb.DuckDBPyConnection) -> None:
    """seed_id runs 1..n and any prefix holds each language in about its final share."""
    select_seeds(store, SelectionSpec(per_language=50))
    rows = store.execute("SELECT seed_id, language FROM seeds ORDER BY seed_id").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    final = Counter(lang for _, lang in rows)
    half = Counter(lang for _, lang in rows[: len(rows) // 2])
    for lang, n in final.items():
        assert abs(half[lang] - n / 2) <= 2, (lang, half[lang], n)


def test_select_twice_or_without_pool_is_a_state_error(
    store: duckdb.DuckDBPyConnection,
) -> None:
    """Selection runs once per run, and needs an ingested pool with text."""
    select_seeds(store, SelectionSpec(per_language=1))
    with pytest.raises(StateError, match="already holds 4 seeds"):
        select_seeds(store, SelectionSpec(per_language=1))
    with pytest.raises(StateError, match=r"no table 'other_pool'.*ingest"):
        select_seeds(store, SelectionSpec(per_language=1), source_table="other_pool")


def test_keys_only_pool_reads_the_chosen_text_from_the_file(
    seed_file: Path, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """A pool ingested with keep_text=False selects exactly what a pool with text selects."""
    spec = SelectionSpec(per_language=20, seed=4)
    tables = []
    for keep_text in (True, False):
        conn = duckdb.connect()
        conn.execute(SEEDS_DDL)
        ingest_seeds(conn, seed_file, languages=languages, taxonomy=taxonomy, keep_text=keep_text)
        select_seeds(conn, spec)
        tables.append(_seeds_table(conn))
        conn.close()
    assert tables[0] == tables[1]
    assert len(tables[0]) == 20 * 3 + 12 and tables[0][0][7] == "seeds.jsonl"


def test_keys_only_pool_refuses_a_file_changed_since_ingestion(
    tmp_path: Path, seed_file: Path, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """If the seed file changed, its row numbers may point elsewhere: selection stops."""
    path = tmp_path / "copy.jsonl"
    path.write_bytes(seed_file.read_bytes())
    conn = duckdb.connect()
    conn.execute(SEEDS_DDL)
    ingest_seeds(conn, path, languages=languages, taxonomy=taxonomy, keep_text=False)
    with path.open("a") as fh:
        fh.write('{"inputs": "late", "language_code": "eng"}\n')
    with pytest.raises(StateError, match=r"copy\.jsonl changed since it was ingested"):
        select_seeds(conn, SelectionSpec(per_language=5))
    assert _seeds_table(conn) == []
    conn.close()


# --- conversation plans ------------------------------------------------------------------------


def all_plans(
    conn: duckdb.DuckDBPyConnection, spec: SelectionSpec, taxonomy: Taxonomy, batch_size: int = 7
) -> list[ConversationPlan]:
    return [
        p
        for batch in plan_conversations(conn, spec, taxonomy, batch_size=batch_size)
        for p in batch
    ]


def test_plans_have_dense_ids_and_distinct_evol_types_per_seed(
    store: duckdb.DuckDBPyConnection, taxonomy: Taxonomy
) -> None:
    """conv_id is dense in (seed_id, evol index) order; a seed's evol types differ while the
    task has enough, then repeat; every one applies to the seed's task."""
    n_general = len(taxonomy.evol_types("general"))
    spec = SelectionSpec(per_language=10, evols_per_seed=n_general + 2)
    select_seeds(store, spec)
    plans = all_plans(store, spec, taxonomy)
    seeds = store.execute("SELECT seed_id, task FROM seeds ORDER BY seed_id").fetchall()
    assert len(plans) == len(seeds) * spec.evols_per_seed
    assert [p.conv_id for p in plans] == list(range(1, len(plans) + 1))
    assert [p.seed_id for p in plans] == [s for s, _ in seeds for _ in range(spec.evols_per_seed)]
    for seed_id, task in seeds:
        types = [p.evol_type for p in plans if p.seed_id == seed_id]
        allowed = [e.id for e in taxonomy.evol_types(task)]
        assert set(types) <= set(allowed)
        assert len(set(types[: len(allowed)])) == min(len(allowed), len(types))
        if task == "general":
            assert types[n_general:] == types[:2]


def test_turns_and_followups_follow_the_spec(
    store: duckdb.DuckDBPyConnection, taxonomy: Taxonomy
) -> None:
    """Turn counts come only from weighted values; follow-ups number turns - 1, apply to the
    task, come from the weighted families and do not repeat within a conversation."""
    family = taxonomy.families()[1]
    spec = SelectionSpec(
        per_language=20, evols_per_seed=4, turn_weights=(0, 1, 0, 0, 0, 3), multiturn={family: 1}
    )
    select_seeds(store, spec)
    plans = all_plans(store, spec, taxonomy)
    assert Counter(p.turns for p in plans).keys() == {2, 6}
    for p in plans:
        assert len(p.followup_types) == p.turns - 1
        allowed = {e.id for e in taxonomy.multiturn_types(family, task=p.task)}
        assert set(p.followup_types) <= allowed
        assert len(set(p.followup_types)) == len(p.followup_types)
    capped = SelectionSpec(per_language=20, evols_per_seed=4, max_turns=3)
    assert {p.turns for p in all_plans(store, capped, taxonomy)} == {1, 2, 3}


def test_followups_repeat_only_after_every_type_was_used(
    store: duckdb.DuckDBPyConnection, taxonomy: Taxonomy
) -> None:
    """With fewer types than follow-ups, all are used before one repeats, never twice in a row."""
    family = taxonomy.families()[-1]
    spec = SelectionSpec(
        per_language=3, turn_weights=(0, 0, 0, 0, 0, 1), multiturn={family: 1}, seed=3
    )
    select_seeds(store, spec)
    for p in all_plans(store, spec, taxonomy):
        allowed = {e.id for e in taxonomy.multiturn_types(family, task=p.task)}
        assert len(allowed) < 5
        assert set(p.followup_types[: len(allowed)]) == allowed
        assert all(a != b for a, b in zip(p.followup_types, p.followup_types[1:], strict=False))


def test_unknown_family_is_a_config_error(
    store: duckdb.DuckDBPyConnection, taxonomy: Taxonomy
) -> None:
    """A family weight the taxonomy does not know names it and the known families."""
    spec = SelectionSpec(per_language=2, multiturn={"smalltalk": 1})
    with pytest.raises(ConfigError, match=r"unknown multi-turn family 'smalltalk'.*follow_up"):
        all_plans(store, spec, taxonomy)


def test_plans_are_deterministic_across_runs_and_batch_sizes(
    seed_file: Path, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """Two runs over the same data plan identical conversations, whatever the batch size."""
    spec = SelectionSpec(per_language=15, evols_per_seed=3, seed=5)
    results = []
    for batch_size in (1, 1000):
        conn = make_store(seed_file, languages, taxonomy)
        select_seeds(conn, spec)
        results.append(all_plans(conn, spec, taxonomy, batch_size=batch_size))
        conn.close()
    assert results[0] == results[1]
    other = SelectionSpec(per_language=15, evols_per_seed=3, seed=6)
    conn = make_store(seed_file, languages, taxonomy)
    select_seeds(conn, other)
    assert all_plans(conn, other, taxonomy) != results[0]
    conn.close()


def _conversations(conn: duckdb.DuckDBPyConnection) -> Mapping[int, tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT conv_id, seed_id, evol_type, turns_planned, followup_types, language, "
        "language_code, task, status, created_at IS NOT NULL FROM conversations"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_write_plans_inserts_pending_rows_once_between_batches(
    store: duckdb.DuckDBPyConnection, taxonomy: Taxonomy
) -> None:
    """Writing each batch while planning stores every plan once; writing again adds nothing."""
    spec = SelectionSpec(per_language=8, evols_per_seed=2)
    select_seeds(store, spec)
    written = sum(
        write_plans(store, b) for b in plan_conversations(store, spec, taxonomy, batch_size=3)
    )
    plans = all_plans(store, spec, taxonomy)
    assert written == len(plans) > 0
    assert write_plans(store, plans) == 0
    stored = _conversations(store)
    assert stored == {
        p.conv_id: (p.seed_id, p.evol_type, p.turns, list(p.followup_types), p.language,
                    p.language_code, p.task, "pending", True)
        for p in plans
    }  # fmt: skip


def _kinds(plans: list[ConversationPlan], taxonomy: Taxonomy) -> list[str]:
    return [taxonomy.get(p.evol_type).kind for p in plans]


def test_evol_mix_splits_each_seeds_evols_between_the_two_kinds(
    store: duckdb.DuckDBPyConnection, taxonomy: Taxonomy
) -> None:
    """evols_per_seed = 4 with an even mix: two task-agnostic and two task-specific, distinct."""
    spec = SelectionSpec(per_language=10, evols_per_seed=4, seed=9)
    select_seeds(store, spec)
    plans = all_plans(store, spec, taxonomy)
    by_seed: dict[int, list[ConversationPlan]] = {}
    for plan in plans:
        by_seed.setdefault(plan.seed_id, []).append(plan)
    for group in by_seed.values():
        kinds = _kinds(group, taxonomy)
        assert sorted(kinds) == ["evol_general"] * 2 + ["evol_task"] * 2
        assert len({p.evol_type for p in group}) == 4


@pytest.mark.parametrize(("specific", "low", "high"), [(3.0, 0.68, 0.82), (0.0, 0.0, 0.0)])
def test_evol_mix_holds_on_average_at_one_evol_per_seed(
    store: duckdb.DuckDBPyConnection,
    taxonomy: Taxonomy,
    specific: float,
    low: float,
    high: float,
) -> None:
    """One evol per seed: the share of task-specific ones follows the weights (3:1 → 75%)."""
    spec = SelectionSpec(evol_mix={"agnostic": 1.0, "specific": specific}, seed=2)
    select_seeds(store, spec)
    kinds = _kinds(all_plans(store, spec, taxonomy), taxonomy)
    share = kinds.count("evol_task") / len(kinds)
    assert len(kinds) > 150 and low <= share <= high


def test_evol_mix_is_validated() -> None:
    """Unknown kinds and all-zero weights are ConfigErrors naming the key."""
    with pytest.raises(ConfigError, match="unknown kind 'general'"):
        SelectionSpec(evol_mix={"general": 1.0})
    with pytest.raises(ConfigError, match="evol_mix"):
        SelectionSpec(evol_mix={"agnostic": 0.0, "specific": 0.0})
