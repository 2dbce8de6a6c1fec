"""The quality gate on a labelled corpus of real-looking outputs in many languages.

tests/data/language_corpus.toml holds texts written by hand the way a model writes them, each
labelled with what the gate must do: keep correct translations, cross-lingual instructions,
code-mixed text, any script of a multi-script language, and text with code, URLs, numbers, math
and tables; reject replies in another language and right-script-wrong-language text. Each text
runs through the engine's own validator with the conversation it belongs to.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from engine.chat import Message
from engine.conversation import Conversation, Plan, Status, Step, StepKind
from engine.quality import Verdict
from engine.validation import QualityValidator
from prompts.languages import load_languages

CORPUS = Path(__file__).parent / "data" / "language_corpus.toml"
CASES: list[dict[str, Any]] = tomllib.loads(CORPUS.read_text(encoding="utf-8"))["case"]
CASE_KINDS = {
    "plain",
    "translation",
    "unknowable",
    "cross_lingual",
    "code_mixing",
    "multi_script",
    "code",
    "wrong_language",
    "right_script_wrong_language",
}
VALIDATOR = QualityValidator(load_languages())
# For each kind of output that must be kept, texts of the same kind that must still be rejected.
REJECTED_NEIGHBOURS = {
    "translation": ["pt-translation-wrong-target", "tr-translation-not-translated"],
    "cross_lingual": ["hi-crosslingual-all-english"],
    "code_mixing": ["hi-codemix-all-english", "sw-codemix-translation-wrong-target"],
    "code": ["hi-code-english-prose"],
    "multi_script": ["sr-answered-russian"],
}


def judge(case: dict[str, Any]) -> Verdict:
    """The validator's verdict on the case's text, in the conversation the case describes."""
    language = load_languages().lookup(case["language"])
    plan = Plan(
        1,
        1,
        case.get("seed", "Explain the topic."),
        language.name,
        language.iso639_3,
        case.get("task", "general"),
        case.get("evol_type", "DEEPEN"),
        2,
        ("CLARIFICATION",),
        case.get("seed_target"),
    )
    kind = StepKind(case["kind"])
    instruction = case.get("instruction", "Explain the topic in detail, with examples.")
    steps: list[Step] = []
    if kind is not StepKind.EVOLVE:
        steps.append(
            Step(0, StepKind.EVOLVE, Message("user", instruction, 1), "DEEPEN", None, "stop")
        )
    if kind is StepKind.FOLLOW_UP:
        steps.append(Step(1, StepKind.ANSWER, Message("assistant", "...", 1), None, None, "stop"))
    conv = Conversation(plan, tuple(steps), Status.ACTIVE)
    return VALIDATOR.check(conv, kind, case["text"].strip())


def test_the_corpus_covers_what_the_gate_must_handle() -> None:
    """At least 60 texts in 20 languages, every case in both directions where it has two."""
    assert len(CASES) >= 60
    assert len({load_languages().lookup(c["language"]).iso639_3 for c in CASES}) >= 20
    assert {c["case"] for c in CASES} == CASE_KINDS
    assert len({c["id"] for c in CASES}) == len(CASES)
    rejected = {c["case"] for c in CASES if c["expect"] == "reject"}
    kept = {c["case"] for c in CASES if c["expect"] == "pass"}
    assert {"wrong_language", "right_script_wrong_language", "multi_script"} <= rejected | kept
    assert sum(c["expect"] == "reject" for c in CASES) >= 20
    # Each kind of output the gate must keep has texts next to it that must still be rejected.
    by_id = {c["id"]: c for c in CASES}
    for kept_case, rejected_ids in REJECTED_NEIGHBOURS.items():
        assert kept_case in kept, kept_case
        assert all(by_id[i]["expect"] == "reject" for i in rejected_ids), kept_case


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_corpus_text(case: dict[str, Any]) -> None:
    """Texts labelled pass are kept; texts labelled reject fail as wrong_language."""
    verdict = judge(case)
    if case["expect"] == "pass":
        assert verdict.ok, f"{case['id']} ({case['case']}): falsely rejected: {verdict}"
    else:
        assert verdict.reason == "wrong_language", f"{case['id']} ({case['case']}): {verdict}"
