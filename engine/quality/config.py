"""Thresholds of the quality filters, as one frozen value checked once at construction.

Construction raises FilterConfigError (a ConfigError and a ValueError) naming the field, its
value and the allowed range.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from engine.errors import ConfigError

__all__ = ["DEFAULT_FILTER_CONFIG", "FilterConfig", "FilterConfigError"]


class FilterConfigError(ConfigError, ValueError):
    """A filter threshold is out of range.

    A ValueError too, so the TOML config loader adds the file and section to the message.
    """


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """Quality-filter switches and thresholds; the defaults are tuned on real replies.

    Repetition: ``repetition_ratio`` with n = 3 is 0.00-0.05 on natural prose in English,
    Spanish, Hindi, Chinese and Japanese, about 0.3 on a parallel list ("X is the capital of
    Y" five times) and above 0.8 on a degenerate loop, so 0.4 keeps lists and catches loops.
    Texts with fewer than ``min_ngrams`` n-grams are too short for the ratio to mean anything.
    A sentence of four or more units occurring more than ``max_sentence_repeats`` times catches
    the loop that starts after an honest first half (ratio only ~0.25 there).

    Cross-turn: a follow-up answer that reuses more than ``cross_turn_overlap`` of its 4-grams
    from earlier turns is a copy; a rewrite ("make it formal") keeps well under 0.8.

    Language: see engine.quality.langid.judge_language for the meaning of each threshold;
    ``language_min_chars`` counts letters with Han/kana as 3 and Hangul as 2.

    Near-duplicates: estimated Jaccard similarity of word 3-gram shingles (character 3-grams in
    CJK) across the run; three changed words in 150 still leave a copy at about 0.88.
    """

    min_reply_chars: int = 2
    min_instruction_chars: int = 5
    ngram_size: int = 3
    max_ngram_repeat_ratio: float = 0.4
    min_ngrams: int = 8
    max_sentence_repeats: int = 3
    cross_turn_ngram_size: int = 4
    cross_turn_overlap: float = 0.8
    check_language: bool = True
    language_min_chars: int = 20
    script_min_share: float = 0.5
    language_min_confidence: float = 0.5
    language_accept_share: float = 0.1
    foreign_confidence: float = 0.98
    refusal: bool = True
    refusal_window: int = 300
    refusals_path: Path | None = None
    markers: bool = True
    role_labels: bool = True
    extra_markers: tuple[str, ...] = ()
    markers_path: Path | None = None
    near_dup_threshold: float = 0.85
    dedup_num_perm: int = 128
    dedup_shingle_size: int = 3
    dedup_seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "max_ngram_repeat_ratio",
            "cross_turn_overlap",
            "script_min_share",
            "language_min_confidence",
            "language_accept_share",
            "foreign_confidence",
            "near_dup_threshold",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FilterConfigError(f"{name} = {value}: expected a number from 0 to 1")
        for name in ("ngram_size", "cross_turn_ngram_size", "dedup_shingle_size"):
            value = getattr(self, name)
            if not 1 <= value <= 20:
                raise FilterConfigError(f"{name} = {value}: expected an integer from 1 to 20")
        for name in (
            "min_reply_chars",
            "min_instruction_chars",
            "min_ngrams",
            "max_sentence_repeats",
            "language_min_chars",
            "refusal_window",
            "dedup_seed",
        ):
            value = getattr(self, name)
            if value < 0:
                raise FilterConfigError(f"{name} = {value}: expected 0 or more")
        if not 16 <= self.dedup_num_perm <= 1024:
            raise FilterConfigError(
                f"dedup_num_perm = {self.dedup_num_perm}: expected 16 to 1024 hash functions"
            )
        if any(not isinstance(m, str) or not m.strip() for m in self.extra_markers):
            raise FilterConfigError("extra_markers: expected a list of non-empty strings")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of every setting, for config templates and error hints."""
        return tuple(f.name for f in fields(cls))


DEFAULT_FILTER_CONFIG = FilterConfig()
