"""Seed files that cannot be used say exactly why: empty, or not UTF-8 (naming the line)."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import duckdb
import pytest

from engine.app.run import execute_run
from engine.config import load_config
from engine.errors import ConfigError
from prompts.languages import load_languages
from prompts.taxonomy import load_taxonomy
from state.seeds import ingest_seeds
from tests.runfixtures import write_config


def ingest(path: Path) -> None:
    with duckdb.connect() as conn:
        ingest_seeds(conn, path, languages=load_languages(), taxonomy=load_taxonomy(None))


@pytest.mark.parametrize("name", ["seeds.jsonl", "seeds.csv", "seeds.parquet", "seeds.jsonl.gz"])
def test_an_empty_seed_file_says_it_is_empty(tmp_path: Path, name: str) -> None:
    """A zero-byte (or blank) seed file is named as empty, in every format."""
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(b"\n  \n"))
    else:
        path.write_bytes(b"")
    with pytest.raises(ConfigError, match="the seed file is empty") as info:
        ingest(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_seed_file_that_is_not_utf8_names_the_line(tmp_path: Path, suffix: str) -> None:
    """A Latin-1 byte on line 3 is reported as not UTF-8, with the line and what to do."""
    path = tmp_path / f"seeds{suffix}"
    if suffix == ".csv":
        lines = [b"inputs,language,task_type", b'"hello there",English,open_qa']
        lines.append('"café au lait",French,open_qa'.encode("latin-1"))
    else:
        lines = [b'{"inputs": "hello there", "language": "English"}'] * 2
        lines.append('{"inputs": "café", "language": "French"}'.encode("latin-1"))
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ConfigError) as info:
        ingest(path)
    message = str(info.value)
    assert "line 3 is not UTF-8" in message and "0xe9" in message and "UTF-8" in message


def test_seeds_mapping_accepts_an_explicit_column_table(tmp_path: Path) -> None:
    """`seeds.mapping = { instruction = ..., language = ..., task = ... }` is what the error
    message suggests for columns no ready-made mapping knows, and a run plans from it."""
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(
        "prompt,lang,category\n"
        '"Explain why the sky looks blue at noon and red at sunset.",English,open_qa\n'
        '"¿Cuáles son las causas principales de la inflación?",Spanish,open_qa\n'
    )
    with pytest.raises(ConfigError, match=r"seeds\.mapping = \{ instruction = "):
        ingest(seeds)
    path = write_config(tmp_path)
    text = path.read_text().replace('file = "seeds.jsonl"', 'file = "seeds.csv"')
    text = text.replace(
        "[seeds]",
        '[seeds]\nmapping = { instruction = "prompt", language = "lang", task = "category" }',
    )
    path.write_text(text)
    config = load_config(path)
    report = asyncio.run(execute_run(config, env={}))
    assert report.setup is not None and sum(report.counts.values()) == 2
    bad = text.replace('language = "lang"', 'langauge = "lang"')
    path.write_text(bad)
    with pytest.raises(ConfigError, match="langauge"):
        load_config(path)
