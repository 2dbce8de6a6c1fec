"""py3langid's model scored without its per-call overheads, and the ranking it returns.

py3langid's own ``rank`` spends more time around the model than in it: it multiplies a float32
vector by rows of its float16 table (numpy converts them one call at a time), and it sorts all
139 labels into a new list of tuples although a check reads the top label and the probability
of a few others. ``NaiveBayes`` does the same arithmetic in the same order on the same model
(its float16 table widened to float32 once, which is exact: 57 MB instead of 28 MB), so its
probabilities are bit for bit py3langid's (tests/test_quality_ranker.py compares them), about
twice as fast; ``Ranking`` sorts only when a caller walks the whole list.

``rank_many`` ranks many texts at once with the same results: py3langid walks a DFA over each
text's bytes in Python (about 0.2 µs a byte, the largest part of a short text's cost). That DFA
is an Aho-Corasick automaton whose state after each byte is the longest suffix of the text read
so far that is a node of its trie (at most 6 bytes; checked for every state and byte), so the
state at a byte depends on the 6 bytes up to it only: texts are cut into short pieces, each
walked from a few bytes before it, and all pieces are walked together, one array gather per
byte position.

Nothing here raises.
"""

from __future__ import annotations

import itertools
import math
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["NaiveBayes", "Ranking"]


class Ranking(Sequence[tuple[str, float]]):
    """Labels with probabilities, most likely first (ties in the model's label order).

    ``top`` and ``mass`` read the probabilities directly; indexing past the first entry or
    iterating sorts them once.
    """

    __slots__ = ("_best", "_index", "_labels", "_order", "_probs")

    def __init__(
        self,
        labels: Sequence[str],
        index: dict[str, int],
        probs: npt.NDArray[np.float32],
        best: tuple[str, float] | None = None,
    ) -> None:
        self._labels = labels
        self._index = index  # label -> position in labels and probs
        self._probs = probs
        self._order: list[tuple[str, float]] | None = None
        self._best = best  # top(), when the maker found it already

    def top(self) -> tuple[str, float]:
        """The most likely label and its probability."""
        if self._best is None:
            best = int(self._probs.argmax())  # the first of equal maxima, as a stable sort has it
            self._best = self._labels[best], float(self._probs[best])
        return self._best

    def mass(self, labels: frozenset[str] | set[str]) -> float:
        """The summed probability of ``labels``, added in rank order as a walk would add it
        (floating-point sums depend on their order)."""
        at = sorted(i for label in labels if (i := self._index.get(label)) is not None)
        if not at:
            return 0.0
        values = self._probs[at].tolist()
        # Most likely first, ties in label order: the order of the sorted list.
        ordered = sorted(zip(values, at, strict=True), key=lambda item: (-item[0], item[1]))
        total: float = sum(value for value, _ in ordered)
        return total

    def _sorted(self) -> list[tuple[str, float]]:
        if self._order is None:
            import numpy as np

            order = np.argsort(-self._probs, kind="stable").tolist()
            values = self._probs[order].tolist()
            self._order = [(self._labels[i], v) for i, v in zip(order, values, strict=True)]
        return self._order

    @overload
    def __getitem__(self, index: int) -> tuple[str, float]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, float]]: ...

    def __getitem__(self, index: int | slice) -> tuple[str, float] | Sequence[tuple[str, float]]:
        if isinstance(index, int) and index == 0:
            return self.top()
        return self._sorted()[index]

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return iter(self._sorted())

    def __len__(self) -> int:
        return len(self._labels)

    def __bool__(self) -> bool:
        return bool(self._labels)


class NaiveBayes:
    """py3langid's byte n-gram Naive Bayes model with normalized probabilities.

    Built from a loaded ``py3langid.langid.LanguageIdentifier`` (its public model arrays);
    ``rank`` reads at most ``max_chars`` characters of a text.
    """

    __slots__ = (
        "_alias",
        "_index",
        "_keep",
        "_labels",
        "_nextmove",
        "_np_nextmove",
        "_np_output",
        "_np_rowbase",
        "_output",
        "_pc",
        "_ptc",
        "_rowbase",
    )

    def __init__(self, identifier: Any) -> None:
        import numpy as np

        classes = list(identifier.nb_classes)
        first: dict[str, int] = {}
        alias: list[tuple[int, int]] = []
        for i, label in enumerate(classes):
            if label in first:
                alias.append((first[label], i))  # a script alias (srl -> sr) of an earlier label
            else:
                first[label] = i
        self._alias = alias
        self._keep = np.array(sorted(first.values()), dtype=np.intp)
        self._labels = [classes[i] for i in self._keep.tolist()]
        self._index = {label: i for i, label in enumerate(self._labels)}
        self._nextmove = identifier.tk_nextmove
        self._output = identifier.tk_output
        self._rowbase = [row << 8 for row in identifier.tk_row]
        # numpy widens float16 one element at a time on every product: widened once here,
        # a product of 80 rows costs 4 µs instead of 30.
        self._ptc = np.asarray(identifier.nb_ptc, dtype=np.float32)
        self._pc = np.asarray(identifier.nb_pc, dtype=np.float32)
        # The same automaton as arrays, for rank_many (a view of the table, not a copy).
        self._np_nextmove = np.asarray(self._nextmove)
        # 32-bit: half the memory traffic of the walk (states < 2**17, rows << 8 < 2**24).
        self._np_rowbase = np.asarray(self._rowbase, dtype=np.int32)
        self._np_output = np.asarray(self._output, dtype=np.int32)

    @property
    def labels(self) -> frozenset[str]:
        """The distinct labels the model can return."""
        return frozenset(self._labels)

    def rank(self, text: str, max_chars: int) -> Ranking:
        """The model's labels for the first ``max_chars`` characters of ``text``."""
        return self._rank_encoded(_encoded(text, max_chars))

    def _rank_encoded(self, raw: bytes) -> Ranking:
        import numpy as np

        features = self._features(raw)
        if features:
            counts = Counter(features)
            idx = np.fromiter(counts.keys(), dtype=np.intp, count=len(counts))
            weights = np.log1p(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))
            scores = weights @ self._ptc.take(idx, axis=0) + self._pc
        else:
            scores = np.zeros(len(self._pc), dtype=np.float32)
        # Temperature sqrt(bytes), as py3langid calibrates across lengths.
        scores *= 1.0 / math.sqrt(len(raw) or 1)
        np.exp(scores - scores.max(), out=scores)
        scores /= scores.sum()
        for first, dupe in self._alias:  # a script alias (srl -> sr) folds into its label
            scores[first] += scores[dupe]
        return Ranking(self._labels, self._index, scores[self._keep])

    def rank_many(self, texts: Sequence[str], max_chars: int) -> list[Ranking]:
        """``[rank(text, max_chars) for text in texts]``, the same floats, made together.

        Each step that py3langid takes per text is taken here for all texts at once, except
        the product of a text's feature weights with its rows of the table, which stays one
        product per text so that its sums are added in the same order (floating-point sums
        depend on their order). Texts are taken about ``_CHUNK_BYTES`` bytes at a time, so the
        arrays stay a few MB whatever the number of texts.
        """
        raws = [_encoded(text, max_chars) for text in texts]
        out: list[Ranking] = []
        start = size = 0
        for i, raw in enumerate(raws):
            size += len(raw)
            if size >= _CHUNK_BYTES:
                out += self._rank_chunk(raws[start : i + 1])
                start, size = i + 1, 0
        out += self._rank_chunk(raws[start:])
        return out

    def _rank_chunk(self, raws: list[bytes]) -> list[Ranking]:
        import numpy as np

        if not raws:
            return []
        if sum(map(len, raws)) < _MANY_BYTES:
            return [self._rank_encoded(raw) for raw in raws]
        sizes = np.fromiter(map(len, raws), dtype=np.intp, count=len(raws))
        feature, owner = self._features_many(b"".join(raws), sizes)
        scores = np.zeros((len(raws), len(self._pc)), dtype=np.float32)
        if len(feature):
            features, weights, texts_of = _first_seen_counts(feature, owner, len(raws))
            bounds = np.searchsorted(texts_of, np.arange(len(raws) + 1)).tolist()
            ptc = self._ptc
            present = []
            for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
                if hi > lo:
                    present.append(i)
                    np.matmul(weights[lo:hi], ptc.take(features[lo:hi], axis=0), out=scores[i])
            # A text without features keeps scores of 0, as a single ranking has it.
            scores[present] += self._pc
        temperature = np.array([1.0 / math.sqrt(len(raw) or 1) for raw in raws], dtype=np.float32)
        scores *= temperature[:, None]
        np.exp(scores - scores.max(axis=1, keepdims=True), out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        for first_col, dupe in self._alias:
            scores[:, first_col] += scores[:, dupe]
        kept = scores[:, self._keep]
        # Each text's top label for all texts at once (argmax takes the first of equal maxima,
        # as top() does; tolist gives the floats float() would).
        best = kept.argmax(axis=1)
        best_p = kept[np.arange(len(kept)), best].tolist()
        labels, index = self._labels, self._index
        return [
            Ranking(labels, index, row, (labels[b], p))
            for row, b, p in zip(kept, best.tolist(), best_p, strict=True)
        ]

    def _features(self, raw: bytes) -> list[int]:
        # The model's tokenizer: a DFA over bytes whose accepting states name n-gram features.
        nextmove, rowbase, output = self._nextmove, self._rowbase, self._output
        state = 0
        found: list[int] = []
        append = found.append
        for byte in raw:
            state = nextmove[rowbase[state] + byte]
            feature = output[state]
            if feature >= 0:
                append(feature)
        return found

    def _features_many(
        self, data: bytes, sizes: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """The walk's features of texts joined in ``data`` (``sizes`` bytes each), in the
        order the walk meets them, and the index of the text each belongs to.

        The state after a byte is the longest trie node ending there, so it depends on the
        last ``_MAX_DEPTH`` bytes only: each text is cut into pieces of ``_PIECE_BYTES``, and each
        piece is walked from up to ``_MAX_DEPTH - 1`` bytes before it (those bytes' states are its
        neighbour's). All pieces step together, one array gather per byte position: one
        read of the 39 MB table per byte, where a walk level by level read it once per level.
        """
        import numpy as np

        empty = np.zeros(0, dtype=np.intp)
        if len(data) == 0:
            return empty, empty
        nextmove, rowbase = self._np_nextmove, self._np_rowbase
        ends = np.cumsum(sizes)
        text_starts = ends - sizes
        pieces = -(-sizes // _PIECE_BYTES)  # an empty text has none
        text_of = np.repeat(np.arange(len(sizes), dtype=np.intp), pieces)
        nth = np.arange(len(text_of)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        first = text_starts[text_of] + nth * _PIECE_BYTES  # the piece's first byte
        end = np.minimum(first + _PIECE_BYTES, ends[text_of])
        begin = np.maximum(first - (_MAX_DEPTH - 1), text_starts[text_of])
        # Longest walks first, so the walks still going at any step are a prefix.
        order = np.argsort(begin - end, kind="stable")
        length = (end - begin)[order]
        going = np.searchsorted(-length, -np.arange(int(length[0])), side="left").tolist()
        text_bytes = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
        at = begin[order]
        states = np.zeros((len(going), len(order)), dtype=np.int32)
        state = states[0]
        for step, k in enumerate(going):
            state = nextmove[rowbase[state[:k]] + text_bytes[at[:k] + step]]
            states[step, :k] = state
        # Back to text order, position by position, without each piece's lead-in.
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        steps = np.arange(len(going))
        kept = (steps >= (first - begin)[:, None]) & (steps < (end - begin)[:, None])
        output = self._np_output[states.T[back]]
        found = kept & (output >= 0)
        owner = np.broadcast_to(text_of[:, None], found.shape)[found]
        return output[found].astype(np.intp), owner


# The deepest node of py3langid 0.4's trie: 6 bytes (tests/test_quality_ranker.py finds it
# from the automaton; a walk that starts 5 bytes early reaches every state a whole walk does).
# pyproject pins py3langid below 0.5, whose model this is.
_MAX_DEPTH = 6

# Bytes of a text each walk reads (plus the lead-in from the piece before): short pieces
# keep all walks stepping together; each piece re-reads at most 5 bytes of the one before.
_PIECE_BYTES = 64

# Bytes of text walked together at most: about 15 MB of temporary arrays.
_CHUNK_BYTES = 1 << 18

# Below this many bytes in all, array operations cost more than walking each text in Python.
_MANY_BYTES = 800


def _first_seen_counts(
    feature: npt.NDArray[np.intp], owner: npt.NDArray[np.intp], texts: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    """Each text's distinct features in the order they first occur (the order a Counter of
    the walk's features holds them in), their weights log1p(count), and the text of each.

    One sort of (text, feature, position) packed in an integer finds the groups; the first
    occurrences are then read back in position order, so no second sort is needed.
    """
    import numpy as np

    n = len(feature)
    width = int(feature.max()) + 1
    pos_bits = n.bit_length()
    if (texts * width).bit_length() + pos_bits > 62:  # too many to pack: sort the slow way
        order = np.lexsort((np.arange(n), feature, owner))
        packed_keys = owner[order] * width + feature[order]
        positions = order
    else:
        packed = ((owner * width + feature) << pos_bits) | np.arange(n)
        packed.sort()
        packed_keys = packed >> pos_bits
        positions = packed & ((1 << pos_bits) - 1)
    starts = np.flatnonzero(np.concatenate(([True], packed_keys[1:] != packed_keys[:-1])))
    counts_at = np.zeros(n, dtype=np.intp)
    counts_at[positions[starts]] = np.diff(starts, append=n)
    firsts = np.flatnonzero(counts_at)  # ascending: the walk's order
    weights = np.log1p(counts_at[firsts].astype(np.float32))
    return feature[firsts], weights, owner[firsts]


def _encoded(text: str, max_chars: int) -> bytes:
    """The bytes py3langid reads of ``text``: its first ``max_chars`` characters, lowercased
    when all upper case, NFC."""
    data = text[:max_chars]
    if data.isupper():
        data = data.lower()
    return unicodedata.normalize("NFC", data).encode("utf8", errors="surrogatepass")
