"""Text helpers the filters share: phrase normalization, code stripping and n-gram units.

Nothing here raises.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = [
    "ngrams",
    "normalize_for_match",
    "prose",
    "units",
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

_FENCED = re.compile(r"(?ms)^[ \t]*(```|~~~).*?(^[ \t]*\1[^\n]*$|\Z)")
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"\b(?:https?://|www\.)\S+|\b[\w.+-]+@[\w-]+\.[\w.-]+")


def normalize_for_match(text: str) -> str:
    """Fold ``text`` for phrase matching: no accents or tone marks, one case, one space."""
    if text.isascii():  # nothing to decompose: skip the per-character pass
        return " ".join(text.casefold().translate(_FOLD).split())
    decomposed = unicodedata.normalize("NFKD", text.translate(_FOLD))
    kept = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return " ".join(kept.casefold().translate(_FOLD).split())


def prose(text: str) -> str:
    """``text`` without fenced or inline code, URLs and e-mail addresses."""
    return _URL.sub(" ", _INLINE_CODE.sub(" ", _FENCED.sub(" ", text)))


def units(text: str) -> list[str]:
    """Case-folded words, with every character of an unspaced script (CJK, Thai) its own unit.

    Punctuation, symbols and spaces separate units; combining marks stay inside their word,
    so a Devanagari word with vowel signs is one unit.
    """
    out: list[str] = []
    for raw in text.casefold().split():
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
    return [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
