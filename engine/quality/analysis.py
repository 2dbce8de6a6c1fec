"""One output's text analysed once: what every quality check reads of it, made on first use.

The checks used to tokenize the same text again and again (units for repetition, again for
cross-turn overlap, again for every later turn it was compared with, again for duplicates),
and to run the language identifier on each sentence it had already read whole. An
``Analysis`` holds each derived value the first time a check asks, so the inline gate and
``m2l filter`` pay for each once per text: units and their n-grams, the prose that is evidence
of the language with its letter counts, its sentences, and the identifier's ranking of each
string it was asked about. ``rank_ahead`` has the identifier read, in one pass, the strings
the checks are about to ask about (``m2l filter`` does it for a batch of conversations).

The language checks read a bounded sample of a long text's sentences (``sample_segments``):
the identifier reads at most ``Py3LangidDetector.max_chars`` characters of the whole text,
and at most ``SAMPLE_LETTERS`` letters of sentences, spread over the text, so a 20,000-character
reply costs what a 3,000-character one does. Nothing here raises.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.quality.scripts import script_counts, weighted_count
from engine.quality.text import (
    ngrams,
    normalize_for_match,
    normalize_lines,
    prose,
    prose_language,
    segments,
    units,
    unquoted,
)

__all__ = [
    "SAMPLE_LETTERS",
    "Analysis",
    "AnalysisCache",
    "Segment",
    "analyse",
    "joined_units",
    "rank_ahead",
    "sample_segments",
]

# Letters of sentences the language checks read at most per text, spread over the text: a
# sample this size judges the share of foreign sentences to within a few percent, and no
# reply in the language corpus (tests/data) is longer.
SAMPLE_LETTERS = 3000


class _Ranker(Protocol):
    def rank(self, text: str) -> Sequence[tuple[str, float]]: ...


@dataclass(frozen=True, slots=True)
class Segment:
    """A sentence or line of a text, with its letters by script and their weighted count."""

    text: str
    counts: Counter[str]
    letters: int


class Analysis:
    """A text and what the checks derive from it, each computed once, on first use.

    Not thread-safe: one Analysis belongs to the check (or conversation) that made it.
    """

    __slots__ = (
        "_body",
        "_body_segments",
        "_counts",
        "_folded_lines",
        "_letters",
        "_ngram_sets",
        "_prose",
        "_quoted_free_segments",
        "_ranks",
        "_units",
        "text",
    )

    def __init__(self, text: str) -> None:
        self.text = text
        self._units: list[str] | None = None
        self._ngram_sets: dict[int, set[tuple[str, ...]]] = {}
        self._prose: str | None = None
        self._folded_lines: str | None = None
        self._body: str | None = None
        self._counts: Counter[str] | None = None
        self._letters: int | None = None
        self._body_segments: list[Segment] | None = None
        self._quoted_free_segments: list[Segment] | None = None
        self._ranks: dict[tuple[int, str], Sequence[tuple[str, float]]] = {}  # (detector, text)

    @property
    def units(self) -> list[str]:
        """``engine.quality.text.units`` of the text."""
        if self._units is None:
            self._units = units(self.text)
        return self._units

    def ngram_total(self, n: int) -> int:
        """How many ``n``-grams of units the text has."""
        return max(0, len(self.units) - n + 1)

    def ngram_set(self, n: int) -> set[tuple[str, ...]]:
        """The distinct ``n``-grams of units (callers must not change the set)."""
        found = self._ngram_sets.get(n)
        if found is None:
            items = self.units
            # zip's tuples go straight into the set (ngrams would list them first).
            found = self._ngram_sets[n] = (
                set(zip(*(items[k:] for k in range(n)), strict=False))
                if n >= 1
                else set(ngrams(items, n))
            )
        return found

    @property
    def prose(self) -> str:
        """The text without code, URLs and e-mail addresses (``text.prose``)."""
        if self._prose is None:
            self._prose = prose(self.text)
        return self._prose

    @property
    def folded_lines(self) -> str:
        """``text.normalize_lines`` of ``prose``: what the marker patterns read."""
        if self._folded_lines is None:
            self._folded_lines = normalize_lines(self.prose)
        return self._folded_lines

    def folded_head(self, window: int | None) -> str:
        """``text.normalize_for_match`` of the text's first ``window`` characters after its
        leading white space: what the refusal phrases are looked for in.

        Folding maps each character on its own and every line break is white space, so
        when the text is all prose and fits the window this is ``folded_lines`` with its
        white space made single spaces: the text is folded once for both checks.
        """
        head = self.text.lstrip()
        if window is not None and len(head) > window:
            return normalize_for_match(head[:window])
        if self.prose != self.text:
            return normalize_for_match(head)
        return " ".join(self.folded_lines.split())

    @property
    def body(self) -> str:
        """What of the text is evidence of its language (``text.language_prose``)."""
        if self._body is None:
            self._body = prose_language(self.prose)
        return self._body

    @property
    def counts(self) -> Counter[str]:
        """Letters of ``body`` by script (callers must not change the counter)."""
        if self._counts is None:
            self._counts = script_counts(self.body)
        return self._counts

    @property
    def letters(self) -> int:
        """Letters of ``body``, East Asian characters weighted as the letters they stand for."""
        if self._letters is None:
            self._letters = weighted_count(self.counts)
        return self._letters

    def segments(self, *, quotes: bool = True) -> list[Segment]:
        """The sentences and lines of ``body``; without ``quotes``, of ``body`` with quoted
        spans removed (a quotation is the quoted language's, not the writer's)."""
        if quotes:
            if self._body_segments is None:
                parts = segments(self.body)
                if len(parts) == 1 and parts[0] == self.body.strip():
                    # One sentence, the whole body: its letters are the body's (white space
                    # holds none), counted already.
                    self._body_segments = [Segment(parts[0], self.counts, self.letters)]
                else:
                    self._body_segments = [_segment(part) for part in parts]
            return self._body_segments
        if self._quoted_free_segments is None:
            free = unquoted(self.body)
            same = free == self.body  # nothing quoted: the same sentences
            self._quoted_free_segments = (
                self.segments() if same else [_segment(part) for part in segments(free)]
            )
        return self._quoted_free_segments

    def rank(self, detector: _Ranker, text: str) -> Sequence[tuple[str, float]]:
        """``detector.rank(text)``, asked once per string (a sentence that is the whole body
        is ranked once, not twice)."""
        key = (id(detector), text)
        found = self._ranks.get(key)
        if found is None:
            found = self._ranks[key] = detector.rank(text)
        return found

    def rank_ahead(self, detector: _Ranker, texts: Sequence[str]) -> None:
        """Rank together those of ``texts`` not ranked yet, when ``detector`` can rank many
        at once (the same rankings, made faster); later ``rank`` calls find them."""
        rank_ahead(((self, text) for text in texts), detector)


class AnalysisCache:
    """Recent texts' analyses, for a gate that meets a conversation's earlier turns again at
    each later step; bounded by the characters of the texts held (oldest dropped first).

    Not thread-safe: one cache belongs to one validator.
    """

    __slots__ = ("_chars", "_held", "max_chars")

    def __init__(self, max_chars: int = 1_000_000) -> None:
        self.max_chars = max_chars
        self._held: dict[str, Analysis] = {}
        self._chars = 0

    def get(self, text: str) -> Analysis:
        """The Analysis of ``text``: the one held, or a new one, then held."""
        found = self._held.get(text)
        if found is not None:
            return found
        found = self._held[text] = Analysis(text)
        self._chars += len(text)
        while self._chars > self.max_chars and len(self._held) > 1:
            oldest = next(iter(self._held))
            del self._held[oldest]
            self._chars -= len(oldest)
        return found

    def __len__(self) -> int:
        return len(self._held)


def rank_ahead(wanted: Iterable[tuple[Analysis, str]], detector: _Ranker) -> None:
    """Rank each (analysis, text) pair's text with ``detector`` together, for ``rank`` to find
    later: what a check is about to ask for, made in one ``rank_many`` call. Does nothing for a
    detector without ``rank_many``."""
    rank_many = getattr(detector, "rank_many", None)
    if rank_many is None:
        return
    ident = id(detector)
    pending: dict[str, list[Analysis]] = {}
    for analysis, text in wanted:
        if (ident, text) not in analysis._ranks:
            pending.setdefault(text, []).append(analysis)
    if len(pending) < 2:
        return  # nothing to gain over ranking it when asked
    texts = list(pending)
    for text, ranking in zip(texts, rank_many(texts), strict=True):
        for analysis in pending[text]:
            analysis._ranks[(ident, text)] = ranking


def analyse(text: str | Analysis) -> Analysis:
    """``text``'s Analysis: the one given, or a new one."""
    return text if isinstance(text, Analysis) else Analysis(text)


def joined_units(parts: Sequence[Analysis]) -> list[str]:
    """``units`` of the parts' texts joined by line breaks, from the units each part has.

    The same list as tokenizing the joined text, except where a part opens with a combining
    mark before any letter: ``units`` may attach that mark to the previous part's last Thai or
    CJK character, so such a joined text is tokenized whole.
    """
    if any(_opens_with_mark(part.text) for part in parts):
        return units("\n".join(part.text for part in parts))
    out: list[str] = []
    for part in parts:
        out.extend(part.units)
    return out


def _opens_with_mark(text: str) -> bool:
    for ch in text:
        if ch.isalnum() or ch == "'":
            return False
        if unicodedata.category(ch)[0] == "M":
            return True
    return False


def sample_segments(found: Sequence[Segment], min_letters: int) -> list[Segment]:
    """The segments of at least ``min_letters`` letters, or an evenly spread sample of them
    holding about ``SAMPLE_LETTERS`` letters when there are more.

    Every segment is kept while they fit; beyond that, every k-th one from the first, so the
    start, middle and end of a long reply are all read.
    """
    kept = [seg for seg in found if seg.letters >= min_letters]
    total = sum(seg.letters for seg in kept)
    if total <= SAMPLE_LETTERS:
        return kept
    step = -(-total // SAMPLE_LETTERS)  # ceil: keep about one in ``step``
    return kept[::step]


def _segment(part: str) -> Segment:
    counts = script_counts(part)
    return Segment(part, counts, weighted_count(counts))
