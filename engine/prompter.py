"""Renders each step's messages from the taxonomy, counting every new text's tokens once.

The conversation's own messages keep the counts they were given when accepted, so an answer
request at turn 6 costs no more tokenizer work than one at turn 1.
"""

from __future__ import annotations

from engine.chat import Message
from engine.config import StepTokens
from engine.conversation import Conversation, Rendered, StepKind
from engine.tokens import TokenCounter
from prompts.taxonomy import Taxonomy

__all__ = ["TaxonomyPrompter", "transcript"]


def transcript(conv: Conversation) -> str:
    """The conversation so far as "User: ...\\n\\nAssistant: ..." for follow-up prompts."""
    parts = []
    for step in conv.steps:
        speaker = "User" if step.message.role == "user" else "Assistant"
        parts.append(f"{speaker}: {step.message.content}")
    return "\n\n".join(parts)


class TaxonomyPrompter:
    """The Prompter the engine uses: templates from a Taxonomy, tokens from a TokenCounter."""

    __slots__ = ("_counter", "_max_tokens", "_systems", "_taxonomy")

    def __init__(self, taxonomy: Taxonomy, counter: TokenCounter, max_tokens: StepTokens) -> None:
        self._taxonomy = taxonomy
        self._counter = counter
        self._max_tokens = max_tokens
        # One answer system prompt per (language, task), counted once for the whole run.
        self._systems: dict[tuple[str, str], Message] = {}

    def message(self, role: str, content: str) -> Message:
        return self._counter.message(role, content)

    def max_tokens(self, kind: StepKind) -> int:
        return int(getattr(self._max_tokens, kind.value))

    def render(self, conv: Conversation, kind: StepKind) -> Rendered:
        plan = conv.plan
        task_name = self._taxonomy.task(plan.task).name
        if kind is StepKind.EVOLVE:
            entry = self._taxonomy.get(plan.evol_type)
            text = entry.render(seed=plan.seed_text, language=plan.language, task=task_name)
            return Rendered((self._counter.message("user", text),), entry.id, text)
        if kind is StepKind.ANSWER:
            key = (plan.language, plan.task)
            system = self._systems.get(key)
            if system is None:
                entry = self._taxonomy.answer_system()
                text = entry.render(language=plan.language, task=task_name)
                system = self._systems[key] = self._counter.message("system", text)
            history = tuple(step.message for step in conv.steps)
            return Rendered((system, *history), None, None)
        turn = conv.next_step // 2 + 1  # the user turn this follow-up creates (2..6)
        entry = self._taxonomy.get(plan.followup_types[turn - 2])
        last_user = conv.steps[-2].message.content
        last_assistant = conv.steps[-1].message.content
        text = entry.render(
            conversation=transcript(conv),
            last_user=last_user,
            last_assistant=last_assistant,
            language=plan.language,
            task=task_name,
        )
        return Rendered((self._counter.message("user", text),), entry.id, text)
