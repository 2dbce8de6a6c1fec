"""Renders each step's messages from the taxonomy, counting every new text's tokens once, and
gives each step its max_tokens.

The conversation's own messages keep the counts they were given when accepted, so an answer
request at turn 6 costs no more tokenizer work than one at turn 1. Every request starts with
the taxonomy's system prompt for its step kind. A step's max_tokens is made by
``engine.modelprofile.StepCaps``: the visible reply's configured room, scaled by what the
conversation's language costs in tokens (prompts.tokencost), grown by
``quality.max_tokens_growth`` for each truncated try, never above ``quality.max_tokens_ceiling``
(nor below the configured value); then a reasoning model's reasoning room, and at most the
model's ``max_output``. With a ``LengthLearner`` (adaptive max_tokens), the first try of a step
sends the cap learned for its step kind and language or script, never above that cap; a try
after a cut reply grows from the configured cap as above.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Literal

from engine.chat import Message
from engine.config import QualityConfig, StepTokens
from engine.conversation import Conversation, Rendered, StepKind
from engine.maxtokens import LengthLearner
from engine.modelprofile import StepCaps
from engine.records import step_kind
from engine.tokens import TokenCounter
from prompts.languages import LanguageTable, UnknownLanguage, load_languages
from prompts.taxonomy import Taxonomy
from prompts.tokencost import LanguageFactors, TokenCosts, load_token_costs

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

    __slots__ = (
        "_by_script",
        "_caps",
        "_counter",
        "_factors",
        "_groups",
        "_languages",
        "_lengths",
        "_quality",
        "_systems",
        "_taxonomy",
    )

    def __init__(
        self,
        taxonomy: Taxonomy,
        counter: TokenCounter,
        max_tokens: StepTokens | StepCaps,
        quality: QualityConfig | None = None,
        *,
        languages: LanguageTable | None = None,
        costs: TokenCosts | None = None,
        lengths: LengthLearner | None = None,
        group_by: Literal["language", "script"] = "language",
    ) -> None:
        """``max_tokens``: the visible reply's room per step kind, or the model's StepCaps
        (which add reasoning room and the model's max_output). ``lengths``: learn each step
        kind's reply lengths per language (or script) and send the caps they call for."""
        self._taxonomy = taxonomy
        self._counter = counter
        self._caps = max_tokens if isinstance(max_tokens, StepCaps) else StepCaps(max_tokens)
        self._quality = quality or QualityConfig()
        self._languages = languages or load_languages()
        self._lengths = lengths
        self._by_script = group_by == "script"
        self._groups: dict[str, str] = {}
        self._factors = LanguageFactors(
            self._languages,
            costs or load_token_costs(),
            counter.encoding_name,
            enabled=self._quality.scale_max_tokens,
        )
        # One system prompt per (step kind, language, task), counted once for the whole run.
        self._systems: dict[tuple[StepKind, str, str], Message] = {}

    def message(self, role: str, content: str) -> Message:
        return self._counter.message(role, content)

    def language_factor(self, language_code: str) -> float:
        """How many times English's tokens this language needs (1.0 when scaling is off)."""
        return self._factors.factor(language_code)

    def group(self, language_code: str) -> str:
        """The group a language's replies are learned in: its code, or its script."""
        found = self._groups.get(language_code)
        if found is None:
            found = language_code
            if self._by_script:
                with contextlib.suppress(UnknownLanguage):
                    found = self._languages.lookup(language_code).script
            self._groups[language_code] = found
        return found

    def max_tokens(
        self, conv: Conversation, kind: StepKind, room: int, prompt_tokens: int | None = None
    ) -> int:
        quality = self._quality
        code = conv.plan.language_code
        cap = self._caps.cap(
            kind.value,
            factor=self.language_factor(code),
            growth=quality.max_tokens_growth ** min(room, 64),
            ceiling=quality.max_tokens_ceiling,
        )
        if room > 0 or prompt_tokens is None or self._lengths is None:
            return cap
        # A cut reply is asked again with the next room: that try's charge is part of the price.
        redo = self.max_tokens(conv, kind, 1)
        return self._lengths.cap(
            kind.value,
            self.group(code),
            prompt=prompt_tokens,
            full=cap,
            redo=redo,
            factor=self.language_factor(code),
        )

    def observe(
        self, conv: Conversation, kind: StepKind, max_tokens: int, completion_tokens: int
    ) -> None:
        if self._lengths is not None:
            code = conv.plan.language_code
            self._lengths.observe(
                kind.value,
                self.group(code),
                completion_tokens,
                max_tokens,
                factor=self.language_factor(code),
            )

    def learn(self, replies: Iterable[tuple[int, str, int, int]]) -> None:
        """Feed the learner earlier replies: (step, language code, completion tokens, cap)."""
        if self._lengths is None:
            return
        for step, code, completion, cap in replies:
            kind = step_kind(step).value
            factor = self.language_factor(code)
            self._lengths.observe(kind, self.group(code), completion, cap, factor=factor)

    def _system(self, kind: StepKind, language: str, task: str) -> Message:
        key = (kind, language, task)
        system = self._systems.get(key)
        if system is None:
            text = self._taxonomy.system(kind.value).render(language=language, task=task)
            system = self._systems[key] = self._counter.message("system", text)
        return system

    def render(self, conv: Conversation, kind: StepKind) -> Rendered:
        plan = conv.plan
        task_name = self._taxonomy.task(plan.task).name
        system = self._system(kind, plan.language, task_name)
        if kind is StepKind.EVOLVE:
            entry = self._taxonomy.get(plan.evol_type)
            text = entry.render(seed=plan.seed_text, language=plan.language, task=task_name)
            return Rendered((system, self._counter.message("user", text)), entry.id, text)
        if kind is StepKind.ANSWER:
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
        return Rendered((system, self._counter.message("user", text)), entry.id, text)
