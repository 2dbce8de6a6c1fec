"""Unicode writing systems of letters, and how much of a text is written in an expected one.

A hand-written table of Unicode block ranges stands in for the Script property, which the
standard library does not expose; it covers the scripts of every language m2l is likely to
target and calls the rest "Other". Nothing here raises.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections import Counter
from dataclasses import dataclass

__all__ = [
    "ScriptShare",
    "expected_scripts",
    "script_counts",
    "script_of",
    "script_share",
    "share_of",
    "weighted_count",
]

# (first code point, last code point, script); sorted and non-overlapping. Letters outside
# every range count as "Other", so an unlisted script can never look like an expected one.
_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x005A, "Latin"),
    (0x0061, 0x007A, "Latin"),
    (0x00AA, 0x00AA, "Latin"),
    (0x00BA, 0x00BA, "Latin"),
    (0x00C0, 0x024F, "Latin"),  # Latin-1 letters and Extended-A/B (Hausa ƙ ɓ ɗ live here)
    (0x0250, 0x02AF, "Latin"),  # IPA letters: Wolof/Yoruba ŋ ɛ ɔ
    (0x0370, 0x03FF, "Greek"),
    (0x0400, 0x052F, "Cyrillic"),
    (0x0530, 0x058F, "Armenian"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"),
    (0x0700, 0x074F, "Syriac"),
    (0x0750, 0x077F, "Arabic"),
    (0x0780, 0x07BF, "Thaana"),
    (0x07C0, 0x07FF, "Nko"),
    (0x0870, 0x08FF, "Arabic"),
    (0x0900, 0x097F, "Devanagari"),
    (0x0980, 0x09FF, "Bengali"),
    (0x0A00, 0x0A7F, "Gurmukhi"),
    (0x0A80, 0x0AFF, "Gujarati"),
    (0x0B00, 0x0B7F, "Oriya"),
    (0x0B80, 0x0BFF, "Tamil"),
    (0x0C00, 0x0C7F, "Telugu"),
    (0x0C80, 0x0CFF, "Kannada"),
    (0x0D00, 0x0D7F, "Malayalam"),
    (0x0D80, 0x0DFF, "Sinhala"),
    (0x0E00, 0x0E7F, "Thai"),
    (0x0E80, 0x0EFF, "Lao"),
    (0x0F00, 0x0FFF, "Tibetan"),
    (0x1000, 0x109F, "Myanmar"),
    (0x10A0, 0x10FF, "Georgian"),
    (0x1100, 0x11FF, "Hangul"),
    (0x1200, 0x139F, "Ethiopic"),
    (0x13A0, 0x13FF, "Cherokee"),
    (0x1400, 0x167F, "Canadian_Aboriginal"),
    (0x1780, 0x17FF, "Khmer"),
    (0x1800, 0x18AF, "Mongolian"),
    (0x1C50, 0x1C7F, "Ol_Chiki"),
    (0x1C80, 0x1C8F, "Cyrillic"),
    (0x1C90, 0x1CBF, "Georgian"),
    (0x1D00, 0x1DBF, "Latin"),  # phonetic extensions
    (0x1E00, 0x1EFF, "Latin"),  # Latin Extended Additional: Vietnamese and Yoruba precomposed
    (0x1F00, 0x1FFF, "Greek"),
    (0x2C60, 0x2C7F, "Latin"),
    (0x2D00, 0x2D2F, "Georgian"),
    (0x2D30, 0x2D7F, "Tifinagh"),
    (0x2D80, 0x2DDF, "Ethiopic"),
    (0x2DE0, 0x2DFF, "Cyrillic"),
    (0x2E80, 0x2FDF, "Han"),
    (0x3005, 0x3007, "Han"),  # 々 〆 〇 are written inside Han text
    (0x3021, 0x3029, "Han"),
    (0x3038, 0x303B, "Han"),
    (0x3040, 0x309F, "Hiragana"),
    (0x30A0, 0x30FF, "Katakana"),
    (0x3100, 0x312F, "Bopomofo"),
    (0x3130, 0x318F, "Hangul"),
    (0x31A0, 0x31BF, "Bopomofo"),
    (0x31F0, 0x31FF, "Katakana"),
    (0x3400, 0x4DBF, "Han"),
    (0x4E00, 0x9FFF, "Han"),
    (0xA000, 0xA4CF, "Yi"),
    (0xA500, 0xA63F, "Vai"),
    (0xA640, 0xA69F, "Cyrillic"),
    (0xA6A0, 0xA6FF, "Bamum"),
    (0xA720, 0xA7FF, "Latin"),
    (0xA8E0, 0xA8FF, "Devanagari"),
    (0xA960, 0xA97F, "Hangul"),
    (0xA980, 0xA9DF, "Javanese"),
    (0xAB00, 0xAB2F, "Ethiopic"),
    (0xAB30, 0xAB6F, "Latin"),
    (0xAC00, 0xD7FF, "Hangul"),
    (0xF900, 0xFAFF, "Han"),
    (0xFB1D, 0xFB4F, "Hebrew"),
    (0xFB50, 0xFDFF, "Arabic"),
    (0xFE70, 0xFEFF, "Arabic"),
    (0xFF21, 0xFF3A, "Latin"),
    (0xFF41, 0xFF5A, "Latin"),
    (0xFF66, 0xFF9F, "Katakana"),
    (0xFFA0, 0xFFDC, "Hangul"),
    (0x1E900, 0x1E95F, "Adlam"),
    (0x20000, 0x3134F, "Han"),
)
_STARTS = [start for start, _, _ in _RANGES]

# The script field of the language table may hold an ISO 15924 code or an English name;
# composite codes (Jpan, Kore) name every script a normal text of that language mixes.
_SCRIPT_NAMES: dict[str, frozenset[str]] = {}


def _alias(scripts: tuple[str, ...], *names: str) -> None:
    for name in names:
        _SCRIPT_NAMES[name] = frozenset(scripts)


for _script, _code in (
    ("Latin", "latn"),
    ("Greek", "grek"),
    ("Cyrillic", "cyrl"),
    ("Armenian", "armn"),
    ("Hebrew", "hebr"),
    ("Arabic", "arab"),
    ("Syriac", "syrc"),
    ("Thaana", "thaa"),
    ("Nko", "nkoo"),
    ("Devanagari", "deva"),
    ("Bengali", "beng"),
    ("Gurmukhi", "guru"),
    ("Gujarati", "gujr"),
    ("Oriya", "orya"),
    ("Tamil", "taml"),
    ("Telugu", "telu"),
    ("Kannada", "knda"),
    ("Malayalam", "mlym"),
    ("Sinhala", "sinh"),
    ("Thai", "thai"),
    ("Lao", "laoo"),
    ("Tibetan", "tibt"),
    ("Myanmar", "mymr"),
    ("Georgian", "geor"),
    ("Hangul", "hang"),
    ("Ethiopic", "ethi"),
    ("Cherokee", "cher"),
    ("Canadian_Aboriginal", "cans"),
    ("Khmer", "khmr"),
    ("Mongolian", "mong"),
    ("Ol_Chiki", "olck"),
    ("Tifinagh", "tfng"),
    ("Hiragana", "hira"),
    ("Katakana", "kana"),
    ("Bopomofo", "bopo"),
    ("Yi", "yiii"),
    ("Vai", "vaii"),
    ("Bamum", "bamu"),
    ("Javanese", "java"),
    ("Adlam", "adlm"),
):
    _alias((_script,), _code, _script.casefold().replace("_", " "))
_alias(("Arabic",), "aran", "nastaliq", "perso-arabic", "shahmukhi")
_alias(("Bengali",), "bangla", "bengali-assamese")
_alias(("Oriya",), "odia")
_alias(("Myanmar",), "burmese")
_alias(("Ethiopic",), "ge'ez", "geez", "fidel")
_alias(("Han",), "hani", "hans", "hant", "han", "han (simplified)", "han (traditional)")
_alias(("Han",), "simplified chinese", "traditional chinese", "chinese", "hanzi")
_alias(("Hiragana", "Katakana"), "hrkt")
_alias(("Han", "Hiragana", "Katakana"), "jpan", "japanese", "kanji and kana")
_alias(("Hangul", "Han"), "kore", "korean")


def script_of(char: str) -> str:
    """The writing system of one character ("Latin", "Han", ...), or "Other" if unlisted."""
    code = ord(char)
    i = bisect.bisect_right(_STARTS, code) - 1
    if i >= 0:
        start, end, script = _RANGES[i]
        if start <= code <= end:
            return script
    return "Other"


def _is_letter(char: str) -> bool:
    # Combining marks count: Indic vowel signs are marks, and a Devanagari word without them
    # would look far shorter than it is. Marks shared by all scripts (U+0300-036F) fall in no
    # range and would dilute the share, so they are skipped.
    if char.isalpha():
        return True
    return unicodedata.category(char)[0] == "M" and not 0x0300 <= ord(char) <= 0x036F


# Characters classified and remembered at most (texts hold a few thousand distinct ones);
# past it, new ones are classified on every call.
_MAX_SEEN = 1 << 16


def _letter_script(char: str) -> str:
    if char.isascii():
        return "Latin" if char.isalpha() else ""
    return script_of(char) if _is_letter(char) else ""


class _ScriptTable(dict[int, str | None]):
    """A str.translate table from each letter to a one-character code of its script (an ASCII
    character, so an ASCII text takes translate's fast path) and from other characters to
    nothing, filled as characters are met (``__missing__``)."""

    __slots__ = ("codes", "names")

    def __init__(self) -> None:
        super().__init__()
        self.codes: dict[str, str] = {}  # script -> its code
        self.names: dict[str, str] = {}  # code -> its script

    def __missing__(self, code: int) -> str | None:
        script = _letter_script(chr(code))
        value = None
        if script:
            value = self.codes.get(script)
            if value is None:
                # Scripts are a few dozen (_RANGES and "Other"): printable ASCII has room.
                value = self.codes[script] = chr(0x21 + len(self.codes))
                self.names[value] = script
        if len(self) < _MAX_SEEN:
            self[code] = value
        return value


_SCRIPTS = _ScriptTable()


def script_counts(text: str) -> Counter[str]:
    """How many letters (and script-specific combining marks) of ``text`` each script has,
    scripts in the order their first letter occurs."""
    # Each letter becomes its script's code in one translate call, and the codes are counted
    # in C: a text's per-character work stays out of Python.
    coded = text.translate(_SCRIPTS)
    names = _SCRIPTS.names
    counts: Counter[str] = Counter()
    if coded:
        n = coded.count(coded[0])
        if n == len(coded):  # one script, as most texts are: counted without a Counter pass
            counts[names[coded[0]]] = n
        else:
            counts.update({names[code]: n for code, n in Counter(coded).items()})
    return counts


# A Han or kana character carries about a short word, a Hangul syllable about two letters: a
# minimum length means "enough text to judge" in every script.
_WEIGHTS = {"Han": 3, "Hiragana": 3, "Katakana": 3, "Hangul": 2}


def weighted_count(counts: Counter[str]) -> int:
    """Letters counted by ``script_counts``, East Asian characters as the 2-3 letters they
    stand for."""
    return sum(n * _WEIGHTS.get(script, 1) for script, n in counts.items())


def expected_scripts(script: str) -> frozenset[str] | None:
    """The scripts a language-table ``script`` value allows, or None when it is not known."""
    key = " ".join(script.replace("_", " ").split()).casefold()
    found = _SCRIPT_NAMES.get(key)
    if found is None and " " in key:
        # "Latin (with diacritics)" or "Cyrillic script": the first word names the script.
        found = _SCRIPT_NAMES.get(key.split(" ", 1)[0])
    return found


@dataclass(frozen=True, slots=True)
class ScriptShare:
    """Letters counted, the share written in the expected scripts, and the main script seen."""

    letters: int
    share: float
    dominant: str | None


def script_share(text: str, scripts: frozenset[str]) -> ScriptShare:
    """How much of the letters of ``text`` are in ``scripts``, and which script has the most."""
    return share_of(script_counts(text), scripts)


def share_of(counts: Counter[str], scripts: frozenset[str]) -> ScriptShare:
    """``script_share`` from letter counts already made by ``script_counts``."""
    if len(counts) == 1:  # one script, as most texts are: the same values, without the sums
        ((name, letters),) = counts.items()
        if letters:
            return ScriptShare(letters, 1.0 if name in scripts else 0.0, name)
    letters = sum(counts.values())
    if letters == 0:
        return ScriptShare(0, 0.0, None)
    inside = sum(n for name, n in counts.items() if name in scripts)
    # The first of the largest counts, as counts.most_common(1) picks it, without its heap.
    dominant = max(counts, key=counts.__getitem__)
    return ScriptShare(letters, inside / letters, dominant)
