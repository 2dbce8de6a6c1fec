"""py3langid's model scored without its per-call overheads, and the ranking it returns.

py3langid's own ``rank`` spends more time around the model than in it: it multiplies a float32
vector by rows of its float16 table (numpy converts them one call at a time), and it sorts all
139 labels into a new list of tuples although a check reads the top label and the probability
of a few others. ``NaiveBayes`` does the same arithmetic in the same order on the same model
(its float16 table widened to float32 once, which is exact: 57 MB instead of 28 MB), so its
probabilities are bit for bit py3langid's (tests/test_quality_ranker.py compares them), about
twice as fast; ``Ranking`` sorts only when a caller walks the whole list.

Nothing here raises.
"""

from __future__ import annotations

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

    __slots__ = ("_index", "_labels", "_order", "_probs")

    def __init__(
        self, labels: Sequence[str], index: dict[str, int], probs: npt.NDArray[np.float32]
    ) -> None:
        self._labels = labels
        self._index = index  # label -> position in labels and probs
        self._probs = probs
        self._order: list[tuple[str, float]] | None = None

    def top(self) -> tuple[str, float]:
        """The most likely label and its probability."""
        best = int(self._probs.argmax())  # the first of equal maxima, as a stable sort puts it
        return self._labels[best], float(self._probs[best])

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

    @property
    def labels(self) -> frozenset[str]:
        """The distinct labels the model can return."""
        return frozenset(self._labels)

    def rank(self, text: str, max_chars: int) -> Ranking:
        """The model's labels for the first ``max_chars`` characters of ``text``."""
        import numpy as np

        data = text[:max_chars]
        if data.isupper():
            data = data.lower()
        raw = unicodedata.normalize("NFC", data).encode("utf8", errors="surrogatepass")
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
