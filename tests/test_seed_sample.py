"""The bundled seed sample: Aya Dataset shape, exactly the 41 languages, counts, and it renders."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.app.prompts import render_with_seed
from prompts.languages import load_languages
from prompts.taxonomy import load_taxonomy

SEEDS = Path(__file__).resolve().parents[1] / "examples" / "seeds.jsonl"

# Other engineers (the simulator's word lists) rely on exactly this list.
LANGUAGES = [
    "English", "Spanish", "French", "German", "Portuguese", "Italian", "Dutch", "Swedish",
    "Polish", "Turkish", "Indonesian", "Swahili", "Yoruba", "Hausa", "Zulu", "Wolof", "Somali",
    "Vietnamese", "Finnish", "Haitian Creole", "Russian", "Ukrainian", "Serbian (Cyrillic)",
    "Arabic", "Persian", "Urdu", "Moroccan Arabic", "Hindi", "Marathi", "Nepali", "Bengali",
    "Tamil", "Telugu", "Chinese", "Japanese", "Korean", "Greek", "Amharic", "Gujarati",
    "Punjabi (Gurmukhi)", "Sinhala",
]  # fmt: skip

# Prefixes of Unicode character names for each script in the language table.
SCRIPT_PREFIXES = {
    "Latin": ("LATIN",),
    "Cyrillic": ("CYRILLIC",),
    "Arabic": ("ARABIC",),
    "Devanagari": ("DEVANAGARI",),
    "Bengali": ("BENGALI",),
    "Tamil": ("TAMIL",),
    "Telugu": ("TELUGU",),
    "Han": ("CJK UNIFIED",),
    "Japanese": ("HIRAGANA", "KATAKANA", "CJK UNIFIED"),
    "Hangul": ("HANGUL",),
    "Greek": ("GREEK",),
    "Ethiopic": ("ETHIOPIC",),
    "Gujarati": ("GUJARATI",),
    "Gurmukhi": ("GURMUKHI",),
    "Sinhala": ("SINHALA",),
}


def _rows() -> list[dict[str, Any]]:
    lines = SEEDS.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


ROWS = _rows()


def test_sample_has_at_least_160_rows_in_the_aya_shape() -> None:
    """At least 160 rows, each with exactly the five Aya-shaped keys as non-empty strings."""
    assert len(ROWS) >= 160
    keys = {"inputs", "targets", "language", "language_code", "task_type"}
    for row in ROWS:
        assert set(row) == keys, row
        assert all(isinstance(row[k], str) and row[k].strip() for k in keys), row


def test_sample_covers_exactly_the_41_languages_at_least_3_each() -> None:
    """Languages are exactly the agreed 41, each with at least three seeds."""
    table = load_languages()
    expected = {table.lookup(name).name for name in LANGUAGES}
    assert len(expected) == 41
    counts = Counter(row["language"] for row in ROWS)
    assert set(counts) == expected
    assert min(counts.values()) >= 3


def test_every_row_language_and_code_resolve_consistently() -> None:
    """Each row's English name and ISO 639-3 code resolve to the same table entry."""
    table = load_languages()
    for row in ROWS:
        by_name = table.lookup(row["language"])
        assert by_name.name == row["language"], row
        assert by_name.iso639_3 == row["language_code"], row
        assert table.lookup(row["language_code"]) == by_name


def test_sample_spans_15_scripts_and_12_tasks_spread_over_languages() -> None:
    """The sample covers 15 scripts and at least 12 tasks, none confined to one language."""
    table = load_languages()
    tax = load_taxonomy()
    assert len({table.lookup(row["language"]).script for row in ROWS}) == 15
    tasks = Counter(row["task_type"] for row in ROWS)
    assert len(tasks) >= 12
    assert all(row["task_type"] in tax.tasks for row in ROWS)  # our ids, not aliases
    for task_id in tasks:
        assert len({r["language"] for r in ROWS if r["task_type"] == task_id}) >= 3, task_id
    for language in {row["language"] for row in ROWS}:
        assert len({r["task_type"] for r in ROWS if r["language"] == language}) >= 3, language


def test_seed_text_is_written_in_the_languages_script() -> None:
    """Most letters of each instruction belong to its language's script (e.g. Serbian Cyrillic)."""
    table = load_languages()
    for row in ROWS:
        prefixes = SCRIPT_PREFIXES[table.lookup(row["language"]).script]
        letters = [ch for ch in row["inputs"] if ch.isalpha()]
        native = sum(unicodedata.name(ch, "").startswith(prefixes) for ch in letters)
        assert native / len(letters) > 0.6, row["inputs"]


def test_seeds_are_distinct() -> None:
    """No instruction appears twice."""
    assert len({row["inputs"] for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("kind", ["evol", "multiturn"])
def test_every_seed_renders_with_every_type_that_applies(kind: str) -> None:
    """Every seed renders with each evol type of its task and each multi-turn type."""
    tax = load_taxonomy()
    for row in ROWS:
        task_id = row["task_type"]
        entries = tax.evol_types(task_id) if kind == "evol" else tax.multiturn_types(task=task_id)
        for entry in entries:
            text = render_with_seed(entry, tax, row)
            assert f"Target language: {row['language']}" in text.splitlines()
            assert row["inputs"] in text
