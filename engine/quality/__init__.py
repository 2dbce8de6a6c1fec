"""Quality filters for generated conversations: length, repetition, refusals, leaked markers,
language identification, and exact/near-duplicate detection across a run."""

from __future__ import annotations

from engine.quality.config import DEFAULT_FILTER_CONFIG, FilterConfig, FilterConfigError
from engine.quality.dedup import DuplicateMatch, MinHasher, NearDuplicateIndex, exact_key, lsh_bands
from engine.quality.filters import (
    check_cross_turn,
    check_evolved,
    check_instruction,
    check_language,
    check_length,
    check_markers,
    check_refusal,
    check_repetition,
    check_reply,
)
from engine.quality.langid import (
    Expectation,
    LanguageCheck,
    LanguageDetector,
    LanguageLike,
    Py3LangidDetector,
    accepted_codes,
    default_detector,
    judge_expected,
    judge_language,
    language_codes,
    weighted_letters,
)
from engine.quality.markers import MarkerMatch, Markers, default_markers, load_markers
from engine.quality.refusal import RefusalMatch, RefusalPhrases, default_refusals, load_refusals
from engine.quality.repetition import (
    cross_turn_overlap,
    most_repeated_sentence,
    ngram_total,
    repetition_ratio,
    repetition_stats,
)
from engine.quality.scripts import ScriptShare, expected_scripts, script_of, script_share
from engine.quality.verdict import REASONS, Reason, Verdict

__all__ = [
    "DEFAULT_FILTER_CONFIG",
    "REASONS",
    "DuplicateMatch",
    "Expectation",
    "FilterConfig",
    "FilterConfigError",
    "LanguageCheck",
    "LanguageDetector",
    "LanguageLike",
    "MarkerMatch",
    "Markers",
    "MinHasher",
    "NearDuplicateIndex",
    "Py3LangidDetector",
    "Reason",
    "RefusalMatch",
    "RefusalPhrases",
    "ScriptShare",
    "Verdict",
    "accepted_codes",
    "check_cross_turn",
    "check_evolved",
    "check_instruction",
    "check_language",
    "check_length",
    "check_markers",
    "check_refusal",
    "check_repetition",
    "check_reply",
    "cross_turn_overlap",
    "default_detector",
    "default_markers",
    "default_refusals",
    "exact_key",
    "expected_scripts",
    "judge_expected",
    "judge_language",
    "language_codes",
    "load_markers",
    "load_refusals",
    "lsh_bands",
    "most_repeated_sentence",
    "ngram_total",
    "repetition_ratio",
    "repetition_stats",
    "script_of",
    "script_share",
    "weighted_letters",
]
