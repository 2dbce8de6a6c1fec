"""The quality filters on one generated text: each a pure function returning a Verdict.

``check_reply`` and ``check_instruction`` run the filters in order, cheapest and most specific
first, and return the first failure; the engine regenerates a step whose verdict failed, and a
post-hoc pass can call the single filters it wants. Each takes a text or its
``Analysis`` (engine.quality.analysis): given the Analysis, the checks share one tokenization
and one language identification of the text. Raises ConfigError only when a configured
data file (refusals, markers) is missing or malformed, or py3langid is not installed.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from engine.quality.analysis import Analysis, analyse
from engine.quality.config import DEFAULT_FILTER_CONFIG, FilterConfig
from engine.quality.langid import (
    Expectation,
    LanguageDetector,
    LanguageLike,
    default_detector,
    judge_expected,
)
from engine.quality.markers import Markers, load_markers
from engine.quality.refusal import RefusalPhrases, load_refusals
from engine.quality.repetition import most_repeated_sentence
from engine.quality.text import unit_similarity, units, without_refrains
from engine.quality.verdict import Verdict

__all__ = [
    "check_cross_turn",
    "check_evolved",
    "check_instruction",
    "check_language",
    "check_length",
    "check_markers",
    "check_refusal",
    "check_repetition",
    "check_reply",
]

_PASS = Verdict.passed()


def check_length(text: str | Analysis, min_chars: int) -> Verdict:
    """Fail blank text as "empty", and text under ``min_chars`` non-space ones as "too_short"."""
    text = text.text if isinstance(text, Analysis) else text
    size = len("".join(text.split()))  # characters that are not white space
    if size == 0:
        return Verdict.failed("empty", "no text")
    if size < min_chars:
        return Verdict.failed("too_short", f"{size} characters, fewer than {min_chars}")
    return _PASS


def check_repetition(text: str | Analysis, config: FilterConfig = DEFAULT_FILTER_CONFIG) -> Verdict:
    """Fail as "repetition" when n-grams or whole sentences repeat beyond the limits.

    A song's chorus or a poem's refrain is counted once (engine.quality.text.without_refrains).
    """
    analysis = analyse(text)
    free = without_refrains(analysis.text)
    if free is not analysis.text:  # refrains were removed: a text of its own
        analysis = Analysis(free)
    n = config.ngram_size
    total = analysis.ngram_total(n)
    # rep-n, as engine.quality.repetition.repetition_ratio computes it (read only when the
    # text has enough n-grams to judge, so only then made)
    if (
        total >= config.min_ngrams
        and (ratio := 1.0 - len(analysis.ngram_set(n)) / total if total else 0.0)
        > config.max_ngram_repeat_ratio
    ):
        return Verdict.failed(
            "repetition",
            f"{ratio:.0%} of {n}-grams repeat (limit {config.max_ngram_repeat_ratio:.0%})",
        )
    count, sentence = most_repeated_sentence(free, at_least=config.max_sentence_repeats + 1)
    if count > config.max_sentence_repeats:
        shown = sentence if len(sentence) <= 60 else sentence[:57] + "..."
        return Verdict.failed("repetition", f"sentence repeated {count} times: {shown!r}")
    return _PASS


def check_cross_turn(
    text: str | Analysis,
    previous: Sequence[str | Analysis],
    config: FilterConfig = DEFAULT_FILTER_CONFIG,
) -> Verdict:
    """Fail as "cross_turn_repetition" when ``text`` mostly copies earlier turns.

    The overlap is engine.quality.repetition.cross_turn_overlap's, over shared n-gram sets.
    """
    n = config.cross_turn_ngram_size
    analysis = analyse(text)
    if not previous or analysis.ngram_total(n) < config.min_ngrams:
        return _PASS
    mine = analysis.ngram_set(n)
    if not mine:
        return _PASS
    seen: set[tuple[str, ...]] = set()
    for earlier in previous:
        seen.update(analyse(earlier).ngram_set(n))
    overlap = len(mine & seen) / len(mine)
    if overlap > config.cross_turn_overlap:
        return Verdict.failed(
            "cross_turn_repetition",
            f"{overlap:.0%} of {n}-grams already in earlier turns "
            f"(limit {config.cross_turn_overlap:.0%})",
        )
    return _PASS


def check_refusal(text: str | Analysis, config: FilterConfig = DEFAULT_FILTER_CONFIG) -> Verdict:
    """Fail as "refusal" when the opening of ``text`` holds a refusal phrase (any language)."""
    refusals = _refusals(config.refusals_path)
    if isinstance(text, Analysis):
        found = refusals.find_folded(text.folded_head(config.refusal_window))
    else:
        found = refusals.find(text, window=config.refusal_window)
    if found is None:
        return _PASS
    return Verdict.failed("refusal", f"{found.language}: {found.phrase!r}")


def check_markers(
    text: str | Analysis, config: FilterConfig = DEFAULT_FILTER_CONFIG, *, instruction: bool = False
) -> Verdict:
    """Fail as "leaked_markers" on template text, chat tokens, disclaimers or role labels, and,
    in an ``instruction``, on output labels ("New instruction:", "Maagizo mapya:")."""
    markers = _markers(config.markers_path, config.extra_markers)
    if isinstance(text, Analysis):
        found = markers.find(
            text.text,
            role_labels=config.role_labels,
            labels=instruction,
            folded_lines=text.folded_lines,
        )
    else:
        found = markers.find(text, role_labels=config.role_labels, labels=instruction)
    if found is None:
        return _PASS
    return Verdict.failed("leaked_markers", f"{found.kind} {found.text!r}")


def check_language(
    text: str | Analysis,
    language: LanguageLike | Expectation,
    config: FilterConfig = DEFAULT_FILTER_CONFIG,
    detector: LanguageDetector | None = None,
) -> Verdict:
    """Fail as "wrong_language" when ``text`` is confidently not in the expected language.

    ``language`` is the conversation's language (strictly), or an Expectation saying which
    languages the output may be in and how (see engine.quality.expect).
    """
    expect = language if isinstance(language, Expectation) else Expectation.of(language)
    check = judge_expected(
        text,
        expect,
        detector=detector if detector is not None else default_detector(),
        min_chars=config.language_min_chars,
        script_min_share=config.script_min_share,
        min_confidence=config.language_min_confidence,
        accept_share=config.language_accept_share,
        foreign_confidence=config.foreign_confidence,
        max_foreign_share=config.language_max_foreign_share,
    )
    if check.ok:
        return Verdict.passed(check.detail)
    return Verdict.failed("wrong_language", check.detail)


def check_evolved(
    text: str | Analysis, seed: str, seed_target: str | None, config: FilterConfig
) -> Verdict:
    """Fail as "not_evolved" when an evolved instruction is its seed again, or its answer.

    Similarity is difflib's ratio over units (engine.quality.text.similarity).
    """
    if not config.not_evolved:
        return Verdict.passed()
    limit = config.evolved_max_similarity
    mine = analyse(text).units
    ratio = _similarity_from(mine, units(seed), limit)
    if ratio >= limit:
        return Verdict.failed(
            "not_evolved", f"{ratio:.0%} the same as the seed (limit {limit:.0%})"
        )
    if seed_target and (ratio := _similarity_from(mine, units(seed_target), limit)) >= limit:
        return Verdict.failed(
            "not_evolved", f"{ratio:.0%} the same as the seed's answer: answered, not rewritten"
        )
    return Verdict.passed()


def _similarity_from(left: Sequence[str], right: Sequence[str], limit: float) -> float:
    """``unit_similarity(left, right)`` when it may reach ``limit``; below it, a bound that
    is below it too. difflib's ratio is at most its quick_ratio (the units the two have in
    common, order aside), which is at most its real_quick_ratio (from the lengths alone):
    both are worked out here as difflib does, for a fraction of finding the matching runs."""
    total = len(left) + len(right)
    if total:
        bound = 2.0 * min(len(left), len(right)) / total
        if bound < limit:
            return bound
        bound = 2.0 * sum((Counter(left) & Counter(right)).values()) / total
        if bound < limit:
            return bound
    return unit_similarity(left, right)


def check_reply(
    text: str | Analysis,
    *,
    language: LanguageLike | Expectation,
    previous: Sequence[str | Analysis] = (),
    config: FilterConfig = DEFAULT_FILTER_CONFIG,
    detector: LanguageDetector | None = None,
) -> Verdict:
    """The first failing filter for an assistant reply, or a pass.

    ``previous`` holds the conversation's earlier turns (replies, and user turns if echoing
    them should count too). Order: length, leaked markers, refusal, repetition, cross-turn
    repetition, language.
    """
    analysis = analyse(text)
    verdict = check_length(analysis.text, config.min_reply_chars)
    if not verdict.ok:
        return verdict
    return _common(analysis, language, previous, config, detector, instruction=False)


def check_instruction(
    text: str | Analysis,
    *,
    language: LanguageLike | Expectation,
    config: FilterConfig = DEFAULT_FILTER_CONFIG,
    detector: LanguageDetector | None = None,
) -> Verdict:
    """The first failing filter for an evolved or follow-up instruction, or a pass.

    The same filters as a reply, with ``min_instruction_chars`` and no cross-turn check.
    """
    analysis = analyse(text)
    verdict = check_length(analysis.text, config.min_instruction_chars)
    if not verdict.ok:
        return verdict
    return _common(analysis, language, (), config, detector, instruction=True)


def _common(
    text: Analysis,
    language: LanguageLike | Expectation,
    previous: Sequence[str | Analysis],
    config: FilterConfig,
    detector: LanguageDetector | None,
    *,
    instruction: bool,
) -> Verdict:
    if config.markers:
        verdict = check_markers(text, config, instruction=instruction)
        if not verdict.ok:
            return verdict
    if config.refusal:
        verdict = check_refusal(text, config)
        if not verdict.ok:
            return verdict
    if config.repetition:
        verdict = check_repetition(text, config)
        if not verdict.ok:
            return verdict
    if config.cross_turn:
        verdict = check_cross_turn(text, previous, config)
        if not verdict.ok:
            return verdict
    if config.check_language:
        return check_language(text, language, config, detector)
    return _PASS


@functools.lru_cache(maxsize=8)
def _refusals(path: Path | None) -> RefusalPhrases:
    return load_refusals(path)


@functools.lru_cache(maxsize=8)
def _markers(path: Path | None, extra: tuple[str, ...]) -> Markers:
    return load_markers(path).with_extra(extra)
