"""engine.quality.ranker: py3langid's probabilities, bit for bit, without its overheads."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any

import pytest

from engine.quality.langid import default_detector
from engine.quality.ranker import NaiveBayes, Ranking

CORPUS = Path(__file__).parent / "data" / "language_corpus.toml"
TEXTS = [case["text"] for case in tomllib.loads(CORPUS.read_text(encoding="utf-8"))["case"]]
EDGES = ["", "   ", "1234 5678", "HELLO WORLD IN CAPITALS", "x" * 3000, "ß ǅ Ǆ ﬁ", "日本語です。"]


@pytest.fixture(scope="module")
def reference() -> Any:
    """py3langid's own identifier, normalized probabilities (what m2l used before)."""
    module = importlib.import_module("py3langid.langid")
    return module.LanguageIdentifier.from_model_file(module.MODEL_FILE, norm_probs=True)


@pytest.mark.parametrize("max_chars", [2000, 50])
def test_rankings_equal_py3langid_exactly(reference: Any, max_chars: int) -> None:
    """Same labels, same order, same floats as py3langid's rank, on the corpus and edge cases."""
    model = NaiveBayes(reference)
    for text in TEXTS + EDGES:
        assert list(model.rank(text, max_chars)) == reference.rank(text[:max_chars]), text[:40]


def test_top_and_mass_agree_with_the_sorted_list(reference: Any) -> None:
    """top() is the list's first entry; mass() the list's sum over the labels, same order."""
    model = NaiveBayes(reference)
    labels = frozenset({"en", "fr", "sw", "hi", "zh", "ar", "sr", "nonexistent"})
    for text in TEXTS[:30] + EDGES:
        ranking = model.rank(text, 2000)
        listed = reference.rank(text[:2000])
        assert ranking.top() == listed[0] == ranking[0]
        assert ranking.mass(labels) == sum(p for label, p in listed if label in labels)
        assert ranking.mass(frozenset()) == 0.0
        assert ranking[1:3] == listed[1:3] and len(ranking) == len(listed)


def test_the_default_detector_ranks_with_it() -> None:
    """The shared detector returns a Ranking and reads at most max_chars characters."""
    ranking = default_detector().rank("Das ist ein ganz normaler deutscher Satz. " * 200)
    assert isinstance(ranking, Ranking)
    assert ranking.top()[0] == "de"
