"""Refusals: multilingual phrases an assistant uses to decline, loaded from TOML data.

Loading raises ConfigError naming the file, the language key and the problem; matching never
raises.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError
from engine.quality.text import normalize_for_match

__all__ = [
    "DEFAULT_REFUSALS_PATH",
    "RefusalMatch",
    "RefusalPhrases",
    "default_refusals",
    "load_refusals",
]

DEFAULT_REFUSALS_PATH = Path(__file__).parent / "refusals.toml"

_KEY = re.compile(r"^[a-z]{2,3}$")
_HEAD = 3  # characters of a phrase's start that a text must hold for the phrase to be in it
# A phrase starting inside a word is no refusal ("...iI can't"), except in unspaced scripts,
# where every character borders a word.
_SPACED_START = re.compile(r"[^\W\d_]")
_UNSPACED_START = re.compile("[\u0e00-\u0eff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


@dataclass(frozen=True, slots=True)
class RefusalMatch:
    """A refusal phrase found in a text, and the language whose list it came from."""

    language: str
    phrase: str


class RefusalPhrases:
    """Refusal phrases by language code, folded once for fast substring search."""

    __slots__ = ("_bounded", "_by_first", "_firsts", "_lookup", "_ordered", "by_language")

    def __init__(self, by_language: Mapping[str, tuple[str, ...]]) -> None:
        self.by_language: Mapping[str, tuple[str, ...]] = dict(by_language)
        self._lookup: dict[str, RefusalMatch] = {}
        for code, phrases in self.by_language.items():
            for phrase in phrases:
                folded = normalize_for_match(phrase)
                if folded:
                    self._lookup.setdefault(folded, RefusalMatch(code, phrase))
        # Longest first, so the most specific phrase is the one reported. Plain substring
        # search per phrase is ~20x faster here than one regex alternation of 200 phrases.
        self._ordered = sorted(self._lookup, key=len, reverse=True)
        self._bounded = frozenset(p for p in self._ordered if _needs_boundary(p))
        # Phrases grouped by their first _HEAD characters (positions in _ordered): a text is
        # searched only for the phrases whose head it holds, ~100 heads for ~200 phrases.
        by_head: dict[str, list[int]] = {}
        for i, phrase in enumerate(self._ordered):
            by_head.setdefault(phrase[:_HEAD], []).append(i)
        # Heads by their first character: a text is searched only for the heads that start
        # with one of its characters (one set intersection in C), so a text in a script no
        # phrase is written in costs no substring search at all.
        by_first: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for head, places in by_head.items():
            by_first.setdefault(head[0], []).append((head, tuple(places)))
        self._by_first = {first: tuple(heads) for first, heads in by_first.items()}
        self._firsts = frozenset(self._by_first)

    def find(self, text: str, *, window: int | None = None) -> RefusalMatch | None:
        """The first refusal phrase in the first ``window`` characters of ``text``, if any."""
        head = text.lstrip()
        return self.find_folded(normalize_for_match(head if window is None else head[:window]))

    def find_folded(self, folded: str) -> RefusalMatch | None:
        """``find`` in a window already folded by ``normalize_for_match``."""
        by_first = self._by_first
        held = [
            i
            for first in self._firsts.intersection(folded)
            for head, places in by_first[first]
            if head in folded
            for i in places
        ]
        ordered = self._ordered
        for phrase in [ordered[i] for i in sorted(held)]:  # longest first, as listed
            at = folded.find(phrase)
            while at >= 0:
                if phrase not in self._bounded or at == 0 or not folded[at - 1].isalnum():
                    return self._lookup[phrase]
                at = folded.find(phrase, at + 1)
        return None

    def __len__(self) -> int:
        return len(self._lookup)

    def __repr__(self) -> str:
        return f"RefusalPhrases({len(self.by_language)} languages, {len(self)} phrases)"


def _needs_boundary(folded: str) -> bool:
    return bool(_SPACED_START.match(folded)) and not _UNSPACED_START.match(folded)


def load_refusals(path: Path | None = None) -> RefusalPhrases:
    """Read refusal phrases from TOML (``[code] phrases = [...]``); raises ConfigError."""
    if path is None:
        return default_refusals()
    return _read(path)


@functools.cache
def default_refusals() -> RefusalPhrases:
    """The bundled phrase list (41+ languages), read once."""
    return _read(DEFAULT_REFUSALS_PATH)


def _read(path: Path) -> RefusalPhrases:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: refusal phrase list not found; check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the syntax") from None
    if not data:
        raise ConfigError(f"{path}: no languages; add tables like [en] phrases = [...]")
    out: dict[str, tuple[str, ...]] = {}
    for code, table in data.items():
        where = f"{path}: [{code}]"
        if not _KEY.match(code):
            raise ConfigError(f"{where}: the key must be an ISO 639-1 or 639-3 code, e.g. [es]")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table with a phrases list")
        unknown = set(table) - {"name", "phrases"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        phrases = table.get("phrases")
        if (
            not isinstance(phrases, list)
            or not phrases
            or not all(isinstance(p, str) and p.strip() for p in phrases)
        ):
            raise ConfigError(f"{where}: phrases must be a non-empty list of non-empty strings")
        out[code] = tuple(phrases)
    return RefusalPhrases(out)
