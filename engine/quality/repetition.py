"""N-gram repetition inside one text and overlap with earlier turns (M2Lingual's post-hoc filter).

Units are words, or single characters in unspaced scripts (CJK, Thai), so one measure works for
Latin, Devanagari and Chinese alike. Nothing here raises.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from operator import itemgetter

from engine.quality.text import ngrams, units

__all__ = [
    "cross_turn_overlap",
    "most_repeated_sentence",
    "ngram_total",
    "repetition_ratio",
    "repetition_stats",
]

# Sentence ends in the scripts m2l targets: Latin/Cyrillic/Greek, CJK, Devanagari danda,
# Arabic and Urdu question mark and full stop, Ethiopic, Sinhala kunddaliya, plus line breaks.
_SENTENCE_END = re.compile(r"[.!?;\n。！？；।॥؟۔።෴]+")


def repetition_ratio(text: str, n: int = 3) -> float:
    """The share of ``text``'s n-grams that repeat an earlier one (0 = none, near 1 = a loop).

    This is Welleck et al.'s rep-n ("1 - distinct n-grams / n-grams"); it is 0.0 for a text
    with no n-grams.
    """
    return repetition_stats(text, n)[1]


def repetition_stats(text: str, n: int = 3) -> tuple[int, float]:
    """(number of n-grams, ``repetition_ratio``) of ``text``, tokenizing it once."""
    grams = ngrams(units(text), n)
    if not grams:
        return 0, 0.0
    return len(grams), 1.0 - len(set(grams)) / len(grams)


def ngram_total(text: str, n: int = 3) -> int:
    """How many n-grams ``text`` has (units minus n plus one, at least 0)."""
    return max(0, len(units(text)) - n + 1)


def most_repeated_sentence(text: str, *, min_units: int = 4, at_least: int = 0) -> tuple[int, str]:
    """How often the most frequent sentence of at least ``min_units`` units occurs, and it.

    Short sentences ("Yes.", "Example:") recur in honest replies and are not counted.
    Returns (0, "") when no sentence is long enough, or when ``text`` has fewer than
    ``at_least`` sentences (no sentence can then occur ``at_least`` times: callers that only
    ask whether one does skip tokenizing them).
    """
    sentences = _SENTENCE_END.split(text)
    if len(sentences) < at_least:
        return 0, ""
    counts: Counter[tuple[str, ...]] = Counter()
    for sentence in sentences:
        key = tuple(units(sentence))
        if len(key) >= min_units:
            counts[key] += 1
    if not counts:
        return 0, ""
    # The first of the most frequent, as counts.most_common(1) picks it, without its heap.
    key, count = max(counts.items(), key=itemgetter(1))
    return count, " ".join(key)


def cross_turn_overlap(text: str, previous: Iterable[str], n: int = 4) -> float:
    """The share of ``text``'s distinct n-grams already present in earlier turns ``previous``.

    1.0 means the text copies earlier turns (one of them, or pieces of several); 0.0 when
    ``text`` has no n-grams or there is no earlier turn.
    """
    mine = set(ngrams(units(text), n))
    if not mine:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    for earlier in previous:
        seen.update(ngrams(units(earlier), n))
    return len(mine & seen) / len(mine)
