"""The post-hoc filter's verdicts on a fixed multilingual set, before and after the text
analysis was shared between the checks (tests/filtercorpus.py says how the set is made)."""

from __future__ import annotations

import json

from engine.posthoc import PosthocFilter
from prompts.languages import load_languages
from tests.filtercorpus import VERDICTS, corpus_conversations, verdict_rows


def test_verdicts_are_the_ones_recorded_before_analysis_was_shared() -> None:
    """Every conversation gets the verdict (reason, step and detail) recorded before."""
    conversations = corpus_conversations()
    expected = json.loads(VERDICTS.read_text(encoding="utf-8"))
    checker = PosthocFilter(load_languages())
    got = verdict_rows([checker.check(conv) for conv in conversations])
    assert len(got) == len(expected) == len(conversations)
    differing = [(old, new) for old, new in zip(expected, got, strict=True) if old != new]
    assert differing == []
    assert got == expected


def test_the_set_exercises_every_kind_of_verdict() -> None:
    """The recorded verdicts hold passes and each reason the filter gives on this set."""
    expected = json.loads(VERDICTS.read_text(encoding="utf-8"))
    reasons = {row[1] for row in expected if row is not None}
    assert {"wrong_language", "not_evolved", "exact_duplicate", "near_duplicate"} <= reasons
    assert sum(row is None for row in expected) >= 150
    assert len({conv.language_code for conv in corpus_conversations()}) >= 40
