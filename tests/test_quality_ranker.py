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


HELDOUT = Path(__file__).parent / "data" / "language_heldout.toml"
HELDOUT_TEXTS = [c["text"] for c in tomllib.loads(HELDOUT.read_text(encoding="utf-8"))["case"]]


@pytest.mark.parametrize("max_chars", [2000, 50])
def test_ranking_many_texts_together_gives_the_same_floats(reference: Any, max_chars: int) -> None:
    """rank_many's array walk finds the features the DFA walk finds, in the same order, so
    every probability is bit for bit rank's (and so py3langid's), whatever the batch size."""
    model = NaiveBayes(reference)
    texts = TEXTS + HELDOUT_TEXTS + EDGES + [t * 5 for t in TEXTS[:20]] + ["a", "\ud800 x"]
    one = [list(model.rank(text, max_chars)) for text in texts]
    many = model.rank_many(texts, max_chars)
    assert [list(r) for r in many] == one
    # The top label found for all texts at once is the one a single ranking finds.
    assert [r.top() for r in many] == [model.rank(text, max_chars).top() for text in texts]
    for size in (1, 2, 7):  # small batches take the per-text walk, larger ones the arrays
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        assert [list(r) for chunk in chunks for r in model.rank_many(chunk, max_chars)] == one
    assert model.rank_many([], max_chars) == []


@pytest.mark.parametrize("piece", [64, 1, 5, 6, 7, 13])
def test_the_array_walk_meets_each_feature_where_the_dfa_does(
    reference: Any, piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Features and the text they belong to, position by position, across text boundaries
    (no text's walk may start from the previous text's state) and across the pieces a text
    is walked in (each piece starts from the bytes before it, as short as one byte)."""
    import numpy as np

    from engine.quality import ranker
    from engine.quality.ranker import _encoded

    monkeypatch.setattr(ranker, "_PIECE_BYTES", piece)
    model = NaiveBayes(reference)
    raws = [_encoded(text, 2000) for text in TEXTS + EDGES + ["", "zz", ""]]
    features, owners = model._features_many(b"".join(raws), np.array([len(r) for r in raws]))
    expected = [(f, i) for i, raw in enumerate(raws) for f in model._features(raw)]
    assert list(zip(features.tolist(), owners.tolist(), strict=True)) == expected


def test_many_texts_are_ranked_in_chunks_with_the_same_floats(
    reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Texts past the chunk size are walked in several passes; rankings are unchanged."""
    from engine.quality import ranker

    model = NaiveBayes(reference)
    texts = TEXTS + HELDOUT_TEXTS
    one = [list(model.rank(text, 2000)) for text in texts]
    monkeypatch.setattr(ranker, "_CHUNK_BYTES", 3000)
    assert [list(r) for r in model.rank_many(texts, 2000)] == one


def test_no_trie_node_is_deeper_than_the_walk_assumes(reference: Any) -> None:
    """Every state of the automaton stands for at most _MAX_DEPTH bytes (its distance from the
    start, level by level), and a move from a state goes at most one level deeper: so the
    state after a byte depends on the _MAX_DEPTH bytes up to it only."""
    import numpy as np

    from engine.quality.ranker import _MAX_DEPTH

    nextmove = np.asarray(reference.tk_nextmove)
    rowbase = np.asarray(reference.tk_row, dtype=np.intp) << 8
    depth = np.full(len(rowbase), -1, dtype=np.int16)
    depth[0] = 0
    frontier = np.zeros(1, dtype=np.intp)
    level = 0
    every_byte = np.arange(256, dtype=np.intp)
    while len(frontier):
        level += 1
        for lo in range(0, len(frontier), 4096):
            reached = nextmove[(rowbase[frontier[lo : lo + 4096], None] + every_byte).ravel()]
            depth[reached[depth[reached] < 0]] = level
        frontier = np.flatnonzero(depth == level)
    assert depth.min() >= 0  # every state is reached from the start
    assert depth.max() == _MAX_DEPTH
    for lo in range(0, len(rowbase), 4096):
        rows = np.arange(lo, min(lo + 4096, len(rowbase)))
        moved = nextmove[(rowbase[rows, None] + every_byte).ravel()].reshape(len(rows), 256)
        assert (depth[moved] <= depth[rows, None] + 1).all()


@pytest.mark.parametrize("texts", [50, 1 << 60])  # the packed sort, and the lexsort past 62 bits
def test_first_seen_counts_are_a_counter_per_text_in_walk_order(texts: int) -> None:
    """Each text's distinct features in the order a Counter of its walk holds them, with
    log1p of their counts in float32, and the text of each."""
    from collections import Counter

    import numpy as np

    from engine.quality.ranker import _first_seen_counts

    rng = np.random.default_rng(1)
    owner = np.sort(rng.integers(0, 50, 5000)).astype(np.intp)
    feature = rng.integers(0, 300, 5000).astype(np.intp)
    features, weights, texts_of = _first_seen_counts(feature, owner, texts)
    expected = [
        (f, np.log1p(np.float32(k)), i)
        for i in range(50)
        for f, k in Counter(feature[owner == i].tolist()).items()
    ]
    assert features.tolist() == [f for f, _, _ in expected]
    assert weights.tobytes() == np.array([w for _, w, _ in expected], dtype=np.float32).tobytes()
    assert texts_of.tolist() == [i for _, _, i in expected]
