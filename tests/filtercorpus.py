"""A fixed set of conversations in many languages for comparing the post-hoc filter's verdicts.

Made from the hand-written language corpus (tests/data/language_corpus.toml: each text in the
conversation it describes, the texts of each language chained into multi-turn conversations,
and exact and near copies of some) and from 167 conversations of a run of the embedded
simulator in 41 languages (tests/data/sim_conversations.jsonl). tests/data/filter_verdicts.json
holds what m2l's filter said of each before its text analysis was shared between the checks;
the three code-mixed translation cases added later were recorded when they were added (the
verdicts of every other conversation stayed as they were).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from engine.posthoc import StoredConversation

DATA = Path(__file__).parent / "data"
VERDICTS = DATA / "filter_verdicts.json"
_GENERIC = "Explain the topic in detail, with examples."


def corpus_conversations() -> list[StoredConversation]:
    """The fixed conversations, in conv_id order."""
    cases: list[dict[str, Any]] = tomllib.loads(
        (DATA / "language_corpus.toml").read_text(encoding="utf-8")
    )["case"]
    made: list[tuple[str, tuple[tuple[str, str], ...], dict[str, Any]]] = []
    for case in cases:
        text = case["text"].strip()
        instruction = case.get("instruction", _GENERIC)
        if case["kind"] == "evolve":
            steps: tuple[tuple[str, str], ...] = (("evolve", text),)
        elif case["kind"] == "answer":
            steps = (("evolve", instruction), ("answer", text))
        else:
            steps = (("evolve", instruction), ("answer", "..."), ("follow_up", text))
        made.append((case["language"], steps, case))
    by_language: dict[str, list[str]] = {}
    for case in cases:
        if case.get("pure"):
            by_language.setdefault(case["language"], []).append(case["text"].strip())
    for language, texts in by_language.items():
        if len(texts) >= 2:  # evolve, answer, follow_up, answer, ...
            kinds = ["evolve"] + ["answer" if i % 2 else "follow_up" for i in range(1, len(texts))]
            made.append((language, tuple(zip(kinds, texts, strict=True)), {}))
    for language, steps, case in list(made[::5]):
        made.append((language, steps, case))  # an exact copy
        near = tuple((kind, text.replace(" ", "  ", 1) + " ok") for kind, text in steps)
        made.append((language, near, case))  # a near copy
    for line in (DATA / "sim_conversations.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        made.append((row["language"], tuple((k, c) for k, c in row["steps"]), row))
    return [
        StoredConversation(
            conv_id,
            language,
            steps,
            case.get("task", "general"),
            case.get("evol_type", "DEEPEN"),
            case.get("seed", ""),
            case.get("seed_target"),
        )
        for conv_id, (language, steps, case) in enumerate(made, start=1)
    ]


def verdict_rows(findings: list[Any]) -> list[list[Any] | None]:
    """Findings (or None) as JSON rows: [conv_id, reason, step, detail]."""
    return [None if f is None else [f.conv_id, f.reason, f.step, f.detail] for f in findings]
