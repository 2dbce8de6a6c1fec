"""Text analysis the checks share, in one place: phrase normalization, what is prose (code,
URLs, math and tables are not), sentences, similarity and n-gram units.

Nothing here raises.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Sequence

__all__ = [
    "language_prose",
    "ngrams",
    "normalize_for_match",
    "normalize_lines",
    "prose",
    "prose_language",
    "segments",
    "similarity",
    "unit_similarity",
    "units",
    "unquoted",
    "without_refrains",
]

# Scripts written without spaces between words: every character is its own unit, so that
# "the same phrase again and again" in Chinese or Thai still makes repeated n-grams.
_UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u2e80-\u2fdf\u3005-\u3007\u3040-\u30ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]"
)

# Letters an LLM (or a keyboard) often writes without their hook or with a look-alike:
# folding both sides lets one phrase in the data match either spelling.
_FOLD = str.maketrans(
    {
        "ƙ": "k",
        "Ƙ": "k",
        "ɓ": "b",
        "Ɓ": "b",
        "ɗ": "d",
        "Ɗ": "d",
        "ƴ": "y",
        "Ƴ": "y",
        "ŋ": "n",
        "Ŋ": "n",
        "ɛ": "e",
        "ɔ": "o",
        "’": "'",
        "‘": "'",
        "ʼ": "'",
        "´": "'",
        "`": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "«": '"',
        "»": '"',
        "ي": "ی",  # Arabic yeh / Persian yeh: the same letter to a reader
        "ى": "ی",
        "ك": "ک",
        "ۀ": "ه",
        "ة": "ه",
        "\u200c": "",  # ZWNJ and ZWJ: Persian and Indic spellings use them inconsistently
        "\u200d": "",
        "\u00ad": "",
    }
)

# Any character _FOLD changes: most texts hold none, and str.translate with a dict costs a
# lookup per character, so texts without one skip it.
_FOLDABLE = re.compile("[" + "".join(re.escape(chr(code)) for code in _FOLD) + "]")

_FENCED = re.compile(r"(?ms)^[ \t]*(```|~~~).*?(^[ \t]*\1[^\n]*$|\Z)")
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"\b(?:https?://|www\.)\S+|\b[\w.+-]+@[\w-]+\.[\w.-]+")
# Display math, and inline math that looks like math (a backslash, ^, _, = or a brace), so that
# "costs $5 and $10" keeps its words.
_MATH = re.compile(r"(?s)\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\$(?=[^$\n]*[\\^_={}])[^$\n]+\$")
# Markdown table rows: their cells are labels, figures and names, not sentences.
_TABLE_ROW = re.compile(r"(?m)^[ \t]*\|.*\|[ \t]*$")
# Paired quotation marks of many languages around a span of at most 400 characters.
_QUOTED = re.compile(
    r'„[^“”"\n]{1,400}[“”"]|“[^”\n]{1,400}”|"[^"\n]{1,400}"|«[^»\n]{1,400}»|「[^」]{1,400}」|『[^』]{1,400}』'
)
# Sentence ends of many scripts: Latin, Devanagari danda, Arabic/Urdu, CJK, Ethiopic, Myanmar,
# Armenian, Khmer; and line breaks.
_SENTENCE_END = re.compile(r"(?<=[。！？])\s*|(?<=[.!?।॥۔؟።။։៕])\s+|\n+")


# Characters met so far, classified once each, so that str.translate does the per-character
# work in C: separators of units (mapped to a space) and non-spacing marks (mapped to nothing).
# Texts hold a few thousand distinct characters at most; past _MAX_SEEN, new ones are
# classified on every call instead of remembered.
_MAX_SEEN = 1 << 16


class _Classified(dict[int, str | None]):
    """A str.translate table that classifies each character the first time a text holds it
    (``__missing__``), so a text is translated in one call with no set of its characters made
    first and no lookup that fails (each failed lookup raises KeyError inside translate)."""

    __slots__ = ("_classify",)

    def __init__(self, classify: Callable[[str], str | None]) -> None:
        super().__init__()
        self._classify = classify

    def __missing__(self, code: int) -> str | None:
        value = self._classify(chr(code))
        if len(self) < _MAX_SEEN:
            self[code] = value
        return value


def _is_unit_char(ch: str) -> bool:
    return ch.isalnum() or ch == "'" or unicodedata.category(ch)[0] == "M"


# Separators of units become a space; every other character stays.
_SEPARATORS = _Classified(lambda ch: ch if _is_unit_char(ch) else " ")
# Non-spacing marks are dropped; every other character stays.
_NONSPACING = _Classified(lambda ch: None if unicodedata.category(ch) == "Mn" else ch)


def normalize_for_match(text: str) -> str:
    """Fold ``text`` for phrase matching: no accents or tone marks, one case, one space."""
    if text.isascii():  # nothing to decompose: skip the per-character pass
        # The one ASCII character _FOLD changes is the backtick.
        return " ".join(text.casefold().replace("`", "'").split())
    decomposed = unicodedata.normalize("NFKD", _fold(text))
    kept = decomposed.translate(_NONSPACING)  # without Mn marks
    return " ".join(_fold(kept.casefold()).split())


def normalize_lines(text: str) -> str:
    """``normalize_for_match`` of each line of ``text``, joined by line breaks.

    The text is folded whole, then cut into lines: every step (the fold table, NFKD, dropping
    Mn marks, case folding) maps characters within a line and never makes or removes a line
    break (tests/test_quality_analysis.py checks every code point). Two things differ from
    folding line by line, and are put back: a last line folded to nothing leaves no line, and
    a dropped character between "\r" and "\n" would join two breaks into one (such a text is
    folded line by line).
    """
    if "\r" in text:
        return "\n".join(normalize_for_match(line) for line in text.splitlines())
    if text.isascii():
        folded = text.casefold().replace("`", "'")
    else:
        decomposed = unicodedata.normalize("NFKD", _fold(text))
        folded = _fold(decomposed.translate(_NONSPACING).casefold())
    if _LINE_BREAK.search(text) is None:
        # One line (or none), and folding makes no line break: that line, or nothing.
        return " ".join(folded.split())
    lines = [" ".join(line.split()) for line in folded.splitlines()]
    if len(lines) < len(text.splitlines()):
        lines.append("")  # the last line was only characters folded away
    return "\n".join(lines)


# Every character str.splitlines breaks a line at.
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _fold(text: str) -> str:
    """``text.translate(_FOLD)``, skipped when no character would change."""
    return text.translate(_FOLD) if _FOLDABLE.search(text) else text


def prose(text: str) -> str:
    """``text`` without fenced or inline code, URLs and e-mail addresses."""
    # Each pattern needs a character most texts lack (a backtick or "~~~", "://", "www." or
    # "@"): a substring test in C spares the regex scan.
    if "`" in text or "~~~" in text:
        text = _INLINE_CODE.sub(" ", _FENCED.sub(" ", text))
    if "://" in text or "www." in text or "@" in text:
        text = _URL.sub(" ", text)
    return text


def language_prose(text: str) -> str:
    """What of ``text`` is evidence of its language: ``prose`` without math and table rows."""
    return prose_language(prose(text))


def prose_language(prose_text: str) -> str:
    """``language_prose`` of a text from its ``prose``."""
    # Math needs a "$" or a backslash, a table row a "|" (as in ``prose``).
    if "$" in prose_text or "\\" in prose_text:
        prose_text = _MATH.sub(" ", prose_text)
    if "|" in prose_text:
        prose_text = _TABLE_ROW.sub(" ", prose_text)
    return prose_text


def unquoted(text: str) -> str:
    """``text`` without quoted spans: a quotation is the quoted language's, not the writer's."""
    return _QUOTED.sub(" ", text)


def without_refrains(text: str) -> str:
    """``text`` with repeats of a refrain removed: a stanza (a block between blank lines) of at
    most four lines that recurs between other, different stanzas, as a song's chorus does.

    A block repeated back to back, or a text that is nothing but the same block, is left alone:
    that is a loop, not a refrain.
    """
    if "\n" not in text:  # one line: one stanza at most, nothing to remove
        return text
    stanzas = [block for block in re.split(r"\n[ \t]*\n", text) if block.strip()]
    if len(stanzas) < 4:
        return text
    keys = [" ".join(normalize_for_match(line) for line in block.splitlines()) for block in stanzas]
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    kept: list[str] = []
    seen: set[str] = set()
    for i, (key, block) in enumerate(zip(keys, stanzas, strict=True)):
        refrain = (
            counts[key] > 1
            and len(block.strip().splitlines()) <= 4
            and len(counts) > counts[key]  # other stanzas exist besides it
            and (i == 0 or keys[i - 1] != key)  # not repeated back to back
        )
        if refrain and key in seen:
            continue
        seen.add(key)
        kept.append(block)
    return "\n\n".join(kept)


def segments(text: str) -> list[str]:
    """``text`` cut into sentences and lines (non-empty, stripped)."""
    return [part.strip() for part in _SENTENCE_END.split(text) if part and part.strip()]


def similarity(a: str, b: str) -> float:
    """How alike two texts are, 0 to 1: matching runs of their units (difflib's ratio)."""
    return unit_similarity(units(a), units(b))


def unit_similarity(left: Sequence[str], right: Sequence[str]) -> float:
    """``similarity`` of two texts from their units."""
    if not left and not right:
        return 1.0
    return difflib.SequenceMatcher(None, left, right, autojunk=False).ratio()


def units(text: str) -> list[str]:
    """Case-folded words, with every character of an unspaced script (CJK, Thai) its own unit.

    Punctuation, symbols and spaces separate units; combining marks stay inside their word,
    so a Devanagari word with vowel signs is one unit.
    """
    folded = text.casefold()
    if _UNSPACED.search(folded) is None:
        # No unspaced script: a unit is a run of letters, digits, apostrophes and marks, and
        # every other character separates (the same list as _walk_units, made in C).
        spaced = folded.translate(_SEPARATORS)
        if "'" not in spaced:  # nothing to strip: the words as split
            return spaced.split()
        return [u.strip("'") for u in spaced.split() if u.strip("'")]
    return _walk_units(folded)


def _walk_units(folded: str) -> list[str]:
    """``units`` of a case-folded text, character by character."""
    out: list[str] = []
    for raw in folded.split():
        start = 0
        for i, ch in enumerate(raw):
            if ch.isalnum() or ch == "'":
                if not ch.isascii() and _UNSPACED.match(ch):
                    if i > start:
                        out.append(raw[start:i])
                    out.append(ch)
                    start = i + 1
                continue
            if unicodedata.category(ch)[0] == "M":
                if i == start and out and _UNSPACED.match(out[-1][0]):
                    out[-1] += ch  # a Thai tone mark belongs to the letter before it
                    start = i + 1
                continue
            if i > start:
                out.append(raw[start:i])
            start = i + 1
        if len(raw) > start:
            out.append(raw[start:])
    return [u.strip("'") for u in out if u.strip("'")]


def ngrams(items: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The consecutive ``n``-tuples of ``items`` (none when there are fewer than ``n``)."""
    if n < 1:
        return [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
    # zip builds the tuples in C: the same list, several times faster than slicing.
    return list(zip(*(items[k:] for k in range(n)), strict=False))
