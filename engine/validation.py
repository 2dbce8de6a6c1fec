"""Inline validation of step outputs: the quality filters that a regeneration can fix.

User turns (evolved instructions, follow-ups) are checked as instructions; answers as replies,
against the conversation's earlier answers for cross-turn repetition. Checks that only make
sense over the whole run (near-duplicates) are left to ``m2l filter``.
"""

from __future__ import annotations

from engine.conversation import Conversation, StepKind
from engine.quality import FilterConfig, Verdict, check_instruction, check_reply
from prompts.languages import Language, LanguageTable

__all__ = ["QualityValidator"]


class QualityValidator:
    """The engine's Validator, backed by ``engine.quality``."""

    __slots__ = ("_config", "_languages", "_resolved")

    def __init__(self, languages: LanguageTable, config: FilterConfig | None = None) -> None:
        self._languages = languages
        self._config = config or FilterConfig()
        self._resolved: dict[str, Language] = {}

    def _language(self, conv: Conversation) -> Language:
        code = conv.plan.language_code
        language = self._resolved.get(code)
        if language is None:
            language = self._languages.lookup(code)
            self._resolved[code] = language
        return language

    def check(self, conv: Conversation, kind: StepKind, text: str) -> Verdict:
        language = self._language(conv)
        if kind is StepKind.ANSWER:
            previous = [s.message.content for s in conv.steps if s.kind is StepKind.ANSWER]
            return check_reply(text, language=language, previous=previous, config=self._config)
        return check_instruction(text, language=language, config=self._config)
