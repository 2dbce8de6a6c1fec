"""Which language each output should be in: the conversation's, a translation's target, or a mix.

A translation's answer is in the target language its instruction names ("Traduza para o
inglês"): the target is read from the instruction with the language-name data
(prompts/data/language_names.toml), or else from the language of the seed's reference answer;
where neither says, any language passes. CROSS_LINGUAL_CONTEXT instructions (and translation
instructions) may quote a passage in another language; CODE_MIXING conversations mix by design.
Everything else is strictly the conversation's language. Nothing here raises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from engine.quality.langid import Expectation, LanguageDetector, LanguageLike, weighted_letters
from engine.quality.text import normalize_for_match
from prompts.languages import Language, LanguageTable

__all__ = ["LanguageNames", "expect_language"]

CODE_MIXING = "CODE_MIXING"
CROSS_LINGUAL = "CROSS_LINGUAL_CONTEXT"
TRANSLATION = "translation"
# How sure the identifier must be of a seed's reference answer to take its language as the
# translation's target, and how long the answer must be.
_TARGET_CONFIDENCE = 0.9
_TARGET_MIN_LETTERS = 15


class LanguageNames:
    """Finds the languages an instruction names, in any of the languages the data covers."""

    __slots__ = ("_by_name", "_spaced", "_table", "_unspaced")

    def __init__(self, names: Mapping[str, Sequence[str]], table: LanguageTable) -> None:
        self._table = table
        self._by_name: dict[str, str] = {}
        for code, forms in names.items():
            for form in forms:
                folded = normalize_for_match(form)
                if len(folded) >= (4 if folded.isascii() else 2):
                    self._by_name.setdefault(folded, code)
        ordered = sorted(self._by_name, key=len, reverse=True)
        spaced = [n for n in ordered if " " in n or n.isascii() or _spaced_script(n)]
        unspaced = [n for n in ordered if n not in set(spaced)]
        # A name starts a word ("ingilizceye" holds "ingilizce"); CJK names stand anywhere.
        self._spaced = _alternation(spaced, r"(?<!\w)")
        self._unspaced = _alternation(unspaced, "")

    def mentioned(self, text: str) -> set[str]:
        """ISO 639-3 codes of the languages ``text`` names."""
        folded = normalize_for_match(text)
        found: set[str] = set()
        for pattern in (self._spaced, self._unspaced):
            if pattern is not None:
                found.update(self._by_name[m.group(0)] for m in pattern.finditer(folded))
        return found

    def language(self, code: str) -> Language | None:
        return self._table.get(code)


def _spaced_script(name: str) -> bool:
    return not any("\u2e80" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" for ch in name)


def _alternation(names: Sequence[str], prefix: str) -> re.Pattern[str] | None:
    if not names:
        return None
    return re.compile(prefix + "(?:" + "|".join(re.escape(n) for n in names) + ")")


def expect_language(
    *,
    language: Language,
    kind: str,
    task: str,
    evol_type: str,
    turn: int,
    instruction: str | None,
    seed_target: str | None,
    names: LanguageNames,
    detector: LanguageDetector,
) -> Expectation:
    """What language the output of step ``kind`` ("evolve", "answer", "follow_up") should be in.

    ``instruction`` is the user turn an answer answers; ``turn`` its number (1 for the first).
    """
    translation = task == TRANSLATION
    mentioned: set[str] = set()
    targets: list[LanguageLike] = []
    if kind == "answer" and translation:
        mentioned = names.mentioned(instruction or "")
        targets = _targets(language, mentioned, seed_target, names, detector)
    if evol_type == CODE_MIXING:
        # A code-mixed request to translate is still answered with the translation: a text
        # wholly in the target language is what was asked for.
        return Expectation((language, *targets), "mixed", why="code-mixing by design")
    if kind == "evolve" and (translation or evol_type == CROSS_LINGUAL):
        why = "a translation's source text" if translation else "cross-lingual context"
        return Expectation((language,), "passage", why=why)
    if kind == "follow_up" and translation:
        return Expectation((language,), "passage", why="a translation quoted")
    if kind != "answer" or not translation:
        return _strictly(language)
    if not targets:
        return Expectation((), "any", why="the translation's target language is not named")
    require: LanguageLike | None = None
    if turn == 1 and language.iso639_3 not in mentioned and len(targets) == 1:
        require = targets[0]
    names_of = "/".join(t.iso639_3 for t in targets)
    return Expectation(
        (language, *targets), "strict", require, why=f"a translation into {names_of}"
    )


# Expectation.of(language) for each language met, made once: an Expectation is a frozen value,
# and the same one (its languages tuple too) lets the checks find the language's facts by
# identity. Each entry keeps its language, so a reused id is told apart.
_STRICTLY: dict[int, Expectation] = {}


def _strictly(language: Language) -> Expectation:
    found = _STRICTLY.get(id(language))
    if found is None or found.languages[0] is not language:
        found = Expectation((language,))
        if len(_STRICTLY) < 4096:
            _STRICTLY[id(language)] = found
    return found


def _targets(
    language: Language,
    mentioned: set[str],
    seed_target: str | None,
    names: LanguageNames,
    detector: LanguageDetector,
) -> list[LanguageLike]:
    """A translation's target languages other than the conversation's: those its instruction
    names (``mentioned``), and the language of the seed's reference answer."""
    targets: list[LanguageLike] = [
        found
        for code in sorted(mentioned - {language.iso639_3})
        if (found := names.language(code)) is not None
    ]
    from_seed = _seed_target(seed_target, detector, names)
    if from_seed is not None and from_seed.iso639_3 == language.iso639_3:
        from_seed = None
    if from_seed is not None and all(t.iso639_3 != from_seed.iso639_3 for t in targets):
        targets.append(from_seed)
    return targets


def _seed_target(
    text: str | None, detector: LanguageDetector, names: LanguageNames
) -> Language | None:
    """The language of a seed's reference answer, when the identifier is sure of it."""
    if not text or weighted_letters(text) < _TARGET_MIN_LETTERS:
        return None
    ranking = detector.rank(text)
    if not ranking or ranking[0][1] < _TARGET_CONFIDENCE:
        return None
    return names.language(ranking[0][0])
