"""Tasks from the source dataset: the table as data, real-shaped Aya files, unknown names shown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from engine.errors import ConfigError
from prompts.languages import LanguageTable, load_languages
from prompts.sources import load_source_tasks, source_key
from prompts.taxonomy import Taxonomy, load_taxonomy
from state.seeds import ingest_seeds
from tests import ayafiles


@pytest.fixture(scope="module")
def languages() -> LanguageTable:
    return load_languages()


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


@pytest.fixture
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect(":memory:")
    yield c
    c.close()


def test_source_key_matches_translated_and_templated_spellings() -> None:
    """One key covers a dataset's subset name, its dataset_name and its "(T)" variant."""
    assert source_key("translated_dolly") == source_key("Dolly") == "dolly"
    assert source_key("Dolly-v2 (T)") == "dolly_v2"
    assert source_key("Flan-CoT-submix") == source_key("templated_flan_cot") == "flan_cot"
    assert source_key("Xlel_wd-inst") == "xlel_wd"
    assert source_key("aya_dataset") == "aya_dataset"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_aya_collection_tasks_come_from_the_source_dataset(
    tmp_path: Path,
    conn: duckdb.DuckDBPyConnection,
    languages: LanguageTable,
    taxonomy: Taxonomy,
    suffix: str,
) -> None:
    """24 Aya Collection datasets in 6 languages: QA, CoT, cloze and humor keep their own task."""
    path = ayafiles.write(tmp_path / f"collection{suffix}", ayafiles.collection_rows(per_cell=2))
    report = ingest_seeds(conn, path, languages=languages, taxonomy=taxonomy)
    assert report.mapping_name == "aya-collection"
    assert report.ingested == 6 * len(ayafiles.COLLECTION_DATASETS) * 2
    got = dict(conn.execute("SELECT DISTINCT source, task FROM seed_pool").fetchall())
    assert got == {name: task for name, _, task in ayafiles.COLLECTION_DATASETS}
    # The eight QA datasets no longer collapse into one task.
    qa = {t for n, tt, t in ayafiles.COLLECTION_DATASETS if tt == "question-answering"}
    assert qa >= {"extractive_qa", "multihop_qa", "conversational_qa", "open_qa"}
    assert len({t for _, t in got.items()}) >= 14
    # Languages resolve from the Collection's ISO 639-3 codes.
    langs = dict(conn.execute("SELECT DISTINCT language_code, language FROM seed_pool").fetchall())
    assert langs["ary"] == "Moroccan Arabic" and langs["arb"] == "Arabic"
    assert langs["yor"] == "Yoruba"
    # Unknown names are counted and shown, most rows first.
    assert report.unknown_source == 3 * 6 * 2
    assert {name for name, _ in report.unknown_source_top} == set(ayafiles.UNKNOWN_SOURCES)
    assert report.changed_by_source() > 0
    text = str(report)
    assert "'NTX-LLM' (12)" in text and "source datasets not in the table" in text
    before = {(o.source, o.before, o.task) for o in report.origins}
    assert ("Flan-CoT-submix", "general", "chain_of_thought") in before
    assert ("HotpotQA", "open_qa", "multihop_qa") in before


def test_unknown_source_and_task_go_to_the_configured_default(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """A name the table lacks with an unusable task_type gets default_task, and is counted."""
    path = ayafiles.write(tmp_path / "c.jsonl", ayafiles.collection_rows(1, codes=["yor"]))
    report = ingest_seeds(
        conn, path, languages=languages, taxonomy=taxonomy, default_task="creative_writing"
    )
    got = dict(conn.execute("SELECT DISTINCT source, task FROM seed_pool").fetchall())
    assert got["NTX-LLM"] == got["Ukranian GEC"] == "creative_writing"
    assert got["Thai USEmbassy"] == "translation"  # its task_type still says something
    assert report.unknown_task == 2 and report.default_task == "creative_writing"
    with pytest.raises(ConfigError, match="unknown task 'poetry_slam'"):
        ingest_seeds(conn, path, languages=languages, taxonomy=taxonomy, default_task="poetry_slam")


def test_a_user_table_replaces_the_built_in_one(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """The user's own table decides; names it does not list fall back to task_type."""
    table = tmp_path / "mine.toml"
    table.write_text('[datasets]\nntx_llm = "ner"\nhotpotqa = "open-domain-qa"\n', "utf-8")
    sources = load_source_tasks(taxonomy, table)
    path = ayafiles.write(tmp_path / "c.parquet", ayafiles.collection_rows(1, codes=["arb"]))
    report = ingest_seeds(conn, path, languages=languages, taxonomy=taxonomy, source_tasks=sources)
    got = dict(conn.execute("SELECT DISTINCT source, task FROM seed_pool").fetchall())
    assert got["NTX-LLM"] == "ner" and got["HotpotQA"] == "open_qa"
    assert got["Flan-CoT-submix"] == "general"  # task_type "generation" → general
    assert report.source_tasks == table
    assert report.unknown_source == len(ayafiles.COLLECTION_DATASETS) - 2


def test_aya_dataset_shape_has_no_source_and_gets_the_default_task(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """The Aya Dataset's language names ("Standard Arabic", "Moroccan Arabic") and codes resolve."""
    path = ayafiles.write(tmp_path / "aya.parquet", ayafiles.dataset_rows(3))
    report = ingest_seeds(conn, path, languages=languages, taxonomy=taxonomy)
    assert report.mapping_name == "aya-dataset"
    assert report.ingested == 3 * len(ayafiles.LANGUAGES)
    assert report.source_tasks is None and report.unknown_source == 0
    rows = conn.execute("SELECT DISTINCT language, language_code, task FROM seed_pool").fetchall()
    assert ("Moroccan Arabic", "ary", "general") in rows and ("Yoruba", "yor", "general") in rows
    assert ("Arabic", "arb", "general") in rows


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[datasets]\nhotpotqa = "multi_hop"\n', "unknown task 'multi_hop'"),
        ('[datasets]\nHotpotQA = "open_qa"\nhotpotqa = "multihop_qa"\n', "both read as"),
        ("[tasks]\n", "unknown key"),
        ("[datasets]\nx = 3\n", "expected a task id string"),
        ("[datasets\n", "invalid TOML"),
    ],
)
def test_bad_tables_name_the_file_and_key(
    tmp_path: Path, taxonomy: Taxonomy, text: str, message: str
) -> None:
    """A malformed table is a ConfigError naming the file and what to fix."""
    path = tmp_path / "t.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(ConfigError, match=message) as err:
        load_source_tasks(taxonomy, path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_source_tasks(taxonomy, tmp_path / "missing.toml")


def test_cli_inspect_shows_tasks_before_and_after_and_each_languages_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`m2l seeds inspect F --total N`: task_type → task table and asked/available/taken."""
    import argparse

    monkeypatch.setenv("COLUMNS", "160")
    import json

    from engine.app.seeds import add_seeds_parser

    rows = ayafiles.collection_rows(2, codes=["arb", "ary", "eng"])
    rows += ayafiles.collection_rows(1, codes=["yor"])[:6]
    path = ayafiles.write(tmp_path / "aya.parquet", rows)
    parser = argparse.ArgumentParser()
    add_seeds_parser(parser.add_subparsers())
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        args = parser.parse_args(["seeds", "inspect", str(path), "--total", "120"])
        assert args.func(args) == 0
    text = buffer.getvalue()
    assert "task_type says" in text and "chain_of_thought *" in text and "Flan-CoT-submix" in text
    assert "120 taken of 120 asked" in text
    assert "Yoruba" in text and "6 (short)" in text
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        args = parser.parse_args(
            ["seeds", "inspect", str(path), "--total", "120", "--shortfall", "skip", "--json"]
        )
        assert args.func(args) == 0
    doc = json.loads(buffer.getvalue())
    takes = {t["language_code"]: t for t in doc["quotas"]["languages"]}
    assert takes["yor"] == {
        "language": "Yoruba", "language_code": "yor", "asked": 30, "available": 6, "taken": 6
    }  # fmt: skip
    assert doc["quotas"]["taken"] == 3 * 30 + 6 and doc["quotas"]["shortfall"] == "skip"
    origins = {(o["source"], o["before"], o["task"]) for o in doc["task_origins"]}
    assert ("HotpotQA", "open_qa", "multihop_qa") in origins


def test_the_language_split_release_of_the_collection_is_recognised(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """aya_collection_language_split names the code column language_code: auto mapping finds it."""
    rows = ayafiles.collection_rows(1, codes=["ary", "yor"])
    for row in rows:
        row["language_code"] = row.pop("language")
    path = ayafiles.write(tmp_path / "split.parquet", rows)
    report = ingest_seeds(conn, path, languages=languages, taxonomy=taxonomy)
    assert report.mapping_name == "aya-collection-split"
    got = dict(conn.execute("SELECT DISTINCT source, task FROM seed_pool").fetchall())
    assert got["HotpotQA"] == "multihop_qa" and report.ingested == len(rows)
