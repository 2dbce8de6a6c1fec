"""Seed ingestion through DuckDB: formats, mappings, normalised dedup, reports and bad input."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from rich.console import Console

from engine.app.seeds import add_seeds_parser, inspect_seeds
from engine.errors import ConfigError, StateError
from prompts.languages import LanguageTable, load_languages
from prompts.taxonomy import Taxonomy, load_taxonomy
from state.seeds import (
    MAPPINGS,
    ColumnMapping,
    IngestReport,
    detect_format,
    ingest_seeds,
    normalize_text,
    pool_counts,
    pool_source,
    text_key,
)


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


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def row(
    inputs: str | None, language: str | None = "English", code: str | None = "eng", **extra: Any
) -> dict[str, Any]:
    return {
        "inputs": inputs,
        "targets": f"answer to {inputs}",
        "language": language,
        "language_code": code,
        **extra,
    }


def pool(conn: duckdb.DuckDBPyConnection, columns: str = "*") -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {columns} FROM seed_pool ORDER BY source_row").fetchall()


def ingest(
    conn: duckdb.DuckDBPyConnection, path: Path, langs: LanguageTable, tax: Taxonomy, **kw: Any
) -> IngestReport:
    return ingest_seeds(conn, path, languages=langs, taxonomy=tax, **kw)


# --- normalisation ----------------------------------------------------------------------------


def test_normalize_text_folds_width_case_and_whitespace() -> None:
    """NFKC, casefold and whitespace collapsing make variants of a text equal."""
    assert normalize_text("  Ｓtraße\u00a0\tIS\n big ") == "strasse is big"
    assert normalize_text("ﬁne") == normalize_text("FINE")
    assert normalize_text(" \u3000 ") == ""
    assert text_key(" \t") is None


def _tricky_texts(n: int) -> list[str]:
    # Characters on both sides of the SQL/Python split: ASCII, accents (composed and not),
    # full-width forms, ligatures, ß, Turkish İ, Greek sigma, Cherokee, Arabic presentation
    # forms, Hangul compatibility jamo, CJK, emoji and every kind of whitespace.
    alphabet = (
        "abcXYZ019 éÉe\u0301I\u0307İıßẞΣσςᏚꮪ\ufb01\uff21\uff41\uff10\uff0c\u3002"
        "\ufe8d\ufee1\u3131가漢字😀\u00a0\u2003\u3000\t\n\x0b\x1c\u0085\u2028 Ωω"
    )
    rng = random.Random(7)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def test_sql_norm_key_matches_python_normalisation(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """The key DuckDB computes (SQL or Python path) equals md5 of normalize_text for every row."""
    texts = _tricky_texts(400)
    path = write_jsonl(tmp_path / "s.jsonl", [row(t) for t in texts])
    report = ingest(conn, path, languages, taxonomy)
    got = dict(conn.execute("SELECT source_row, norm_key FROM seed_pool").fetchall())
    expected_firsts: dict[str, int] = {}
    for i, text in enumerate(texts):
        key = text_key(text)
        if key is not None:
            expected_firsts.setdefault(key, i)
    assert {row_: key for key, row_ in expected_firsts.items()} == got
    assert report.empty_instruction == sum(text_key(t) is None for t in texts)


# --- ingestion --------------------------------------------------------------------------------


def test_duplicates_empty_and_unknown_languages_are_counted_not_dropped_silently(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """Every row read is either ingested or counted under exactly one reason."""
    rows = [
        row("What is the capital of Kenya?", "Swahili", "swh"),
        row("what  is the CAPITAL of kenya?", "Swahili", "swh"),
        row("Ｗhat is the capital of Kenya？", "Swahili", "swh"),
        row("   ", "English", "eng"),
        row(None, "English", "eng"),
        row("Hello", "Klingon", "tlh"),
        row("Hi", "Klingon", "tlh"),
        row("Hey", "Elvish", None),
        row("Bonjour", "French", "fra"),
    ]
    report = ingest(conn, write_jsonl(tmp_path / "s.jsonl", rows), languages, taxonomy)
    assert (report.rows_read, report.ingested) == (9, 2)
    assert (report.duplicates, report.empty_instruction, report.unknown_language) == (2, 2, 3)
    assert report.unknown_language_top == (("Klingon (tlh)", 2), ("Elvish", 1))
    assert [r[0] for r in pool(conn, "instruction")] == ["What is the capital of Kenya?", "Bonjour"]
    assert "unknown language 3" in str(report)


def test_language_code_wins_and_names_or_tags_resolve(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """A known code beats a conflicting name; names, aliases and BCP 47 tags resolve too."""
    rows = [
        row("a", "English", "fra"),
        row("b", "Swahili", None),
        row("c", "Farsi", "xx-unknown"),
        row("d", None, "pt-BR"),
    ]
    ingest(conn, write_jsonl(tmp_path / "s.jsonl", rows), languages, taxonomy)
    assert pool(conn, "language, language_code, tier") == [
        ("French", "fra", "high"),
        ("Swahili", "swh", languages.lookup("swh").tier),
        ("Persian", "pes", "high"),
        ("Portuguese", "por", "high"),
    ]


def test_tasks_map_through_aliases_and_unknown_tasks_become_general(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """task_type aliases map to our ids; missing ones are general; unknown ones are counted."""
    rows = [
        row("a", task_type="question-answering"),
        row("b", task_type="Summarisation"),
        row("c", task_type=None),
        row("d", task_type="weird-task"),
        row("e", task_type="weird-task"),
        row("f", task_type="odd"),
    ]
    report = ingest(conn, write_jsonl(tmp_path / "s.jsonl", rows), languages, taxonomy)
    assert [r[0] for r in pool(conn, "task")] == [
        "open_qa", "summarization", "general", "general", "general", "general",
    ]  # fmt: skip
    assert report.unknown_task == 3
    assert report.unknown_task_top == (("weird-task", 2), ("odd", 1))


def test_file_with_no_task_column_is_all_general(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """The Aya Dataset shape has no task column: every seed is general, none counted unknown."""
    path = write_jsonl(tmp_path / "aya.jsonl", [row("a"), row("b")])
    report = ingest(conn, path, languages, taxonomy)
    assert report.mapping_name == "aya-dataset"
    assert {r[0] for r in pool(conn, "task")} == {"general"}
    assert report.unknown_task == 0


def _same_rows_in_every_format(tmp_path: Path) -> list[Path]:
    src = write_jsonl(
        tmp_path / "src.jsonl",
        [row(f"question {i}, with a comma", task_type="qa") for i in range(5)]
        + [row("Ünïcode “quotes” and\ttabs", "German", "deu", task_type="nli")],
    )
    c = duckdb.connect()
    out = []
    for name, options in [
        ("s.parquet", "FORMAT parquet"),
        ("s.csv", "FORMAT csv, HEADER"),
        ("s.tsv", "FORMAT csv, HEADER, DELIMITER '\t'"),
        ("s.json", "FORMAT json, ARRAY true"),
    ]:
        c.execute(f"COPY (FROM read_json('{src}')) TO '{tmp_path / name}' ({options})")
        out.append(tmp_path / name)
    c.close()
    gz = tmp_path / "s.jsonl.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    return [src, gz, *out]


def test_every_format_gives_the_same_pool(
    tmp_path: Path, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """JSONL, gzipped JSONL, JSON array, Parquet, CSV and TSV ingest to identical pools."""
    pools = []
    for path in _same_rows_in_every_format(tmp_path):
        c = duckdb.connect()
        report = ingest(c, path, languages, taxonomy)
        assert report.ingested == 6, path
        pools.append(pool(c, "source_row, instruction, target, language, task, norm_key"))
        c.close()
    assert all(p == pools[0] for p in pools[1:])
    assert pools[0][5][1:5] == (
        "Ünïcode “quotes” and\ttabs", "answer to Ünïcode “quotes” and\ttabs", "German", "nli",
    )  # fmt: skip


def test_custom_mapping_and_source_column(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """A ColumnMapping picks any columns; source comes from its column, else the file name."""
    rows: list[dict[str, Any]] = [
        {"prompt": "p1", "lang": "sw", "kind": "qa", "origin": "set-a", "answer": "x"},
        {"prompt": "p2", "lang": "sw", "kind": "qa", "origin": None, "answer": "y"},
    ]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    mapping = ColumnMapping(
        instruction="prompt", language_code="lang", task="kind", target="answer", source="origin"
    )
    report = ingest(conn, path, languages, taxonomy, mapping=mapping)
    assert report.mapping_name == "custom"
    assert pool(conn, "instruction, target, language, task, source") == [
        ("p1", "x", "Swahili", "open_qa", "set-a"),
        ("p2", "y", "Swahili", "open_qa", "custom.jsonl"),
    ]


def test_auto_mapping_prefers_the_preset_naming_most_columns(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """auto picks aya-collection when dataset_name and task_type are there, m2l for the sample."""
    coll = write_jsonl(
        tmp_path / "c.jsonl",
        [{"inputs": "a", "targets": "b", "language": "Hausa", "task_type": "qa",
          "dataset_name": "xP3"}],
    )  # fmt: skip
    report = ingest(conn, coll, languages, taxonomy)
    assert report.mapping_name == "aya-collection"
    assert pool(conn, "source, task") == [("xP3", "open_qa")]
    sample = write_jsonl(tmp_path / "m.jsonl", [row("a", task_type="qa")])
    assert ingest(conn, sample, languages, taxonomy).mapping_name == "m2l"
    assert set(MAPPINGS) == {"aya-dataset", "aya-collection", "aya-collection-split", "m2l"}


def test_keep_text_false_holds_keys_and_records_the_file(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """Without text the pool still counts language × task cells and names its file."""
    path = write_jsonl(tmp_path / "s.jsonl", [row("a", task_type="qa"), row("b"), row("B ")])
    report = ingest(conn, path, languages, taxonomy, keep_text=False)
    assert report.ingested == 2
    assert list(pool_counts(conn)) == [
        ("English", "eng", "high", "general", 1),
        ("English", "eng", "high", "open_qa", 1),
    ]
    columns = {d[0] for d in conn.execute("SELECT * FROM seed_pool LIMIT 0").description or []}
    assert "instruction" not in columns
    source = pool_source(conn)
    assert source is not None and (source.path, source.format) == (path, "jsonl")
    assert (source.instruction, source.target, source.source) == ("inputs", "targets", None)


def test_temporary_tables_are_dropped_even_after_an_error(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """Ingestion leaves only the pool table behind, and nothing when it fails mid-way."""
    ingest(conn, write_jsonl(tmp_path / "s.jsonl", [row("a")]), languages, taxonomy)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"inputs": "a", "language": "English"}\n' * 3 + "{broken\n", "utf-8")
    with pytest.raises(ConfigError):
        ingest(conn, bad, languages, taxonomy, table="other_pool")
    names = {r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert names == {"seed_pool"}


# --- bad input --------------------------------------------------------------------------------


def test_missing_file_is_a_config_error_naming_it(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """A missing seed file names the path."""
    with pytest.raises(ConfigError, match=r"nope\.jsonl: seed file not found"):
        ingest(conn, tmp_path / "nope.jsonl", languages, taxonomy)


def test_unknown_format_is_a_config_error_listing_formats(tmp_path: Path) -> None:
    """A suffix m2l cannot read names the file and the formats it can."""
    with pytest.raises(ConfigError, match=r"seeds\.txt: unknown seed file format '\.txt'.*parquet"):
        detect_format(tmp_path / "seeds.txt")
    assert detect_format(Path("a.CSV.gz")) == "csv"


def test_mapping_naming_a_missing_column_names_file_column_and_columns(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """A mapping column the file lacks: the error names the file, the column and what exists."""
    path = write_jsonl(tmp_path / "s.jsonl", [{"inputs": "a", "language": "English"}])
    with pytest.raises(ConfigError) as err:
        ingest(conn, path, languages, taxonomy, mapping="aya-collection")
    message = str(err.value)
    assert str(path) in message
    assert "lacks: 'task_type' (task), 'targets' (target), 'dataset_name' (source)" in message
    assert "its columns are inputs, language" in message


def test_malformed_jsonl_line_names_file_and_line(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """A broken JSONL line is reported with the file and its 1-based line number."""
    path = tmp_path / "s.jsonl"
    good = json.dumps(row("fine"))
    path.write_text(f'{good}\n\n{good}\n{{"inputs": "x", language: 1}}\n{good}\n', "utf-8")
    with pytest.raises(ConfigError, match=rf"{path}: line 4 is not valid JSON"):
        ingest(conn, path, languages, taxonomy)


def test_other_bad_mappings_are_config_errors(
    tmp_path: Path, conn: duckdb.DuckDBPyConnection, languages: LanguageTable, taxonomy: Taxonomy
) -> None:
    """Unknown preset, nothing auto can fit, no language column, bad table name: clear errors."""
    path = write_jsonl(tmp_path / "s.jsonl", [{"text": "a", "lang": "en"}])
    with pytest.raises(ConfigError, match="unknown column mapping 'aya'"):
        ingest(conn, path, languages, taxonomy, mapping="aya")
    with pytest.raises(ConfigError, match=r"no ready-made column mapping fits .*\(text, lang\)"):
        ingest(conn, path, languages, taxonomy)
    with pytest.raises(ConfigError, match="names no language column"):
        ColumnMapping(instruction="text")
    with pytest.raises(StateError, match="not a plain SQL identifier"):
        ingest(conn, path, languages, taxonomy, table="x; DROP TABLE seeds")
    with pytest.raises(StateError, match="one of the run's own tables"):
        ingest(conn, path, languages, taxonomy, table="seeds")


# --- m2l seeds inspect ------------------------------------------------------------------------


def _sample(tmp_path: Path) -> Path:
    rows = [row(f"q{i}", "Swahili", "swh", task_type="qa") for i in range(3)]
    rows += [row(f"s{i}", "French", "fra", task_type="summarization") for i in range(2)]
    rows += [row("q0", "Swahili", "swh", task_type="qa"), row("x", "Klingon", "tlh")]
    return write_jsonl(tmp_path / "sample.jsonl", rows)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")[1:-1]]


def test_inspect_prints_language_by_task_table(tmp_path: Path, taxonomy: Taxonomy) -> None:
    """The table has a row per language with its per-task counts and the report above it."""
    console = Console(file=io.StringIO(), width=200, color_system=None)
    assert inspect_seeds(_sample(tmp_path), console=console, taxonomy=taxonomy) == 0
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "rows read 7" in out and "duplicates 1," in out and "'Klingon (tlh)' (1)" in out
    lines = out.splitlines()
    header = next(line for line in lines if "language" in line and "┃" in line)
    assert [c.strip() for c in header.split("┃")[1:-1]] == [
        "language", "code", "tier", "open_qa", "summarization", "total",
    ]  # fmt: skip
    rows = [_cells(line) for line in lines if line.startswith("│")]
    assert rows == [
        ["Swahili", "swh", "low", "3", "", "3"],
        ["French", "fra", "high", "", "2", "2"],
        ["total", "", "", "3", "2", "5"],
    ]


def test_inspect_lists_tasks_per_language_when_the_grid_is_too_wide(
    tmp_path: Path, taxonomy: Taxonomy
) -> None:
    """On a narrow terminal each language's row lists its tasks, and task totals follow."""
    console = Console(file=io.StringIO(), width=56, color_system=None)
    inspect_seeds(_sample(tmp_path), console=console, taxonomy=taxonomy)
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    rows = [_cells(line) for line in lines if line.startswith("│")]
    assert rows == [
        ["Swahili", "swh", "low", "3", "open_qa 3"],
        ["French", "fra", "high", "2", "summarization 2"],
        ["total", "", "", "5", ""],
        ["open_qa", "3", "1"],
        ["summarization", "2", "1"],
    ]


def test_inspect_json_has_counts_per_language_and_task(tmp_path: Path, taxonomy: Taxonomy) -> None:
    """--json prints one JSON document with the report and the language × task counts."""
    console = Console(file=io.StringIO(), width=200)
    inspect_seeds(_sample(tmp_path), as_json=True, console=console, taxonomy=taxonomy)
    data = orjson.loads(console.file.getvalue())  # type: ignore[attr-defined]
    assert data["ingested"] == 5 and data["duplicates"] == 1 and data["unknown_language"] == 1
    assert data["languages"] == [
        {"language": "Swahili", "language_code": "swh", "tier": "low", "total": 3,
         "tasks": {"open_qa": 3}},
        {"language": "French", "language_code": "fra", "tier": "high", "total": 2,
         "tasks": {"summarization": 2}},
    ]  # fmt: skip
    assert data["tasks"] == {"open_qa": 3, "summarization": 2}
    assert data["mapping"]["name"] == "m2l"


def test_cli_inspect_reports_bad_input_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`m2l seeds inspect` on a missing file prints the error to stderr and exits 2."""
    parser = argparse.ArgumentParser()
    add_seeds_parser(parser.add_subparsers())
    args = parser.parse_args(["seeds", "inspect", str(tmp_path / "none.parquet"), "--json"])
    assert args.func(args) == 2
    assert "none.parquet: seed file not found" in capsys.readouterr().err
