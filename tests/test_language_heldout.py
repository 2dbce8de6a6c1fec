"""The quality gate on a held-out corpus: real text it was never tuned to.

tests/data/language_heldout.toml was written after the gate was fitted to
tests/data/language_corpus.toml and run once as it stood: 128 texts in 69 languages and
scripts (plain replies, short answers, replies cut at max_tokens, translations, cross-lingual
instructions, code-mixed text, transliterations, code) gave 0 false rejections of 95 texts to keep
and 2 misses of 33 to reject. The misses are listed in KNOWN_MISSES with why the gate cannot see
them; any other verdict that changes fails, and so does a known miss that starts being caught
(then take it off the list).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from prompts.languages import load_languages
from tests.test_language_corpus import judge

HELDOUT = Path(__file__).parent / "data" / "language_heldout.toml"
CASES: list[dict[str, Any]] = tomllib.loads(HELDOUT.read_text(encoding="utf-8"))["case"]
# Measured on the first run, before anything was changed for this corpus.
KNOWN_MISSES = {
    # py3langid has no Tigrinya; both are Ethiopic script, so only the script is checked.
    "ti-answered-amharic": "Tigrinya is unknown to the identifier; Amharic shares its script",
    # The identifier cannot tell Standard Malay from Indonesian (same words, different spelling
    # conventions), so the pair is accepted as confusable.
    "ms-answered-indonesian": "Malay and Indonesian are accepted as confusable",
}
KNOWN_FALSE_REJECTIONS: dict[str, str] = {}


def test_the_heldout_corpus_is_broad() -> None:
    """Over 100 texts in over 40 languages, kept and rejected texts of every hard kind."""
    codes = {load_languages().lookup(c["language"]).iso639_3 for c in CASES}
    assert len(CASES) >= 100 and len(codes) >= 40
    assert len({c["id"] for c in CASES}) == len(CASES)
    kinds = {c["case"] for c in CASES}
    assert {"short_answer", "truncated", "translation", "code_mixing", "multi_script"} <= kinds
    assert sum(c["expect"] == "reject" for c in CASES) >= 25
    assert set(KNOWN_MISSES) | set(KNOWN_FALSE_REJECTIONS) <= {c["id"] for c in CASES}


def _marks(case: dict[str, Any]) -> list[pytest.MarkDecorator]:
    why = KNOWN_MISSES.get(case["id"]) or KNOWN_FALSE_REJECTIONS.get(case["id"])
    return [pytest.mark.xfail(reason=why, strict=True)] if why else []


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"], marks=_marks(c)) for c in CASES])
def test_heldout_text(case: dict[str, Any]) -> None:
    """Texts labelled pass are kept; texts labelled reject fail as wrong_language."""
    verdict = judge(case)
    if case["expect"] == "pass":
        assert verdict.ok, f"{case['id']} ({case['case']}): falsely rejected: {verdict}"
    else:
        assert verdict.reason == "wrong_language", f"{case['id']} ({case['case']}): {verdict}"
